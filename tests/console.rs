//! Console robustness (`console.md`): bad input of any kind is answered by
//! exactly one line `error: ERRNO: ...`, never a hang or a crash, and
//! changes nothing; backspace edits the line; `help` and `dmesg` work. With
//! `HPK_GRANULE=16k` or `64k` (tests/common) on that granule's kernel.

mod common;

use common::{block_size, boot_blocks, Opts, Qemu};
use std::time::Duration;

const MEM: &str = "/sys/devices/system/memory";
const PROBE: &str = "/sys/devices/system/memory/probe";

/// The memory blocks of the default 1 GiB of boot RAM (memory8..15 with
/// 128 MiB blocks, memory2..3 with 512 MiB ones).
fn boot_ram_blocks() -> std::ops::Range<u64> {
    boot_blocks(1 << 30)
}

/// The first block of boot RAM (memory8 with 128 MiB blocks).
fn first_block() -> u64 {
    boot_ram_blocks().start
}

/// Commands answer in milliseconds: a short bound makes a hang fail fast.
fn boot() -> Qemu {
    Qemu::boot(Opts::new().timeout(Duration::from_secs(10)))
}

/// The console still answers.
fn alive(q: &mut Qemu) {
    let out = q.run("echo alive");
    if out != "alive\n" {
        q.fail(&format!("`echo alive` printed {out:?}"));
    }
}

/// Sends a raw line and expects one `error: ERRNO: ...` line back.
fn bytes_err(q: &mut Qemu, bytes: &[u8], errno: &str) -> String {
    let out = q.run_bytes(bytes);
    q.expect_error(&format!("input {bytes:?}"), &out, errno)
}

/// Runs `cmd`; it must fail with one well-formed error line whose errno is
/// one of `errnos`.
fn run_err_any(q: &mut Qemu, cmd: &str, errnos: &[&str]) -> String {
    let out = q.run(cmd);
    let errno = errnos
        .iter()
        .find(|e| out.starts_with(&format!("error: {e}: ")))
        .copied()
        .unwrap_or(errnos[0]);
    q.expect_error(&format!("`{cmd}` (errno one of {errnos:?})"), &out, errno)
}

// ---------------------------------------------------------------------------
// The cases, each leaving the console at a prompt.

fn unknown_command(q: &mut Qemu) {
    let msg = q.run_err("frobnicate", "ENOENT");
    if !msg.contains("frobnicate") {
        q.fail(&format!("error does not name the command: {msg:?}"));
    }
    q.run_err("frobnicate --all /proc/meminfo", "ENOENT");
    q.run_err("CAT /proc/meminfo", "ENOENT");
    alive(q);
}

fn directories_and_read_only_files(q: &mut Qemu) {
    q.run_err("cat /sys", "EISDIR");
    q.run_err("cat /", "EISDIR");
    let b = first_block();
    q.run_err(&format!("cat {MEM}/memory{b}"), "EISDIR");
    q.run_err("echo x > /proc/meminfo", "EPERM");
    q.run_err("echo 1 > /proc/iomem", "EPERM");
    q.run_err(&format!("echo 1 > {MEM}/block_size_bytes"), "EPERM");
    q.run_err(&format!("echo 1 > {MEM}/memory{b}/removable"), "EPERM");
    alive(q);
}

fn syntax_errors(q: &mut Qemu) {
    q.run_err("cat", "EINVAL");
    q.run_err("echo \"unterminated", "EINVAL");
    q.run_err("echo 'unterminated", "EINVAL");
    q.run_err("echo a > /proc/meminfo > /proc/iomem", "EINVAL");
    q.run_err("> /proc/meminfo", "EINVAL");
    q.run_err("echo x >", "EINVAL");
    alive(q);
}

fn bad_values(q: &mut Qemu) {
    let b = first_block();
    q.run_err(&format!("echo bogus > {MEM}/memory{b}/state"), "EINVAL");
    q.run_err(
        "echo maybe > /sys/module/memory_hotplug/parameters/memmap_on_memory",
        "EINVAL",
    );
    run_err_any(q, "devmem", &["EINVAL"]);
    run_err_any(q, "devmem map", &["EINVAL"]);
    run_err_any(
        q,
        "devmem map 0 --map=bogus",
        &["EINVAL", "ENOENT", "ENODEV"],
    );
    run_err_any(q, "devmem unmap 7", &["EINVAL", "ENOENT", "ENODEV"]);
    alive(q);
}

fn overlong_lines(q: &mut Qemu) {
    let ok = format!("echo {}", "y".repeat(190));
    let out = q.run(&ok);
    if out != format!("{}\n", "y".repeat(190)) {
        q.fail(&format!("a 195-byte line printed {out:?}"));
    }
    let long = format!("cat /proc/meminfo {}", "a".repeat(300));
    q.run_err(&long, "EINVAL");
    alive(q);
    let mut huge = b"echo ".to_vec();
    huge.extend(std::iter::repeat_n(b'z', 5000));
    huge.push(b'\n');
    bytes_err(q, &huge, "EINVAL");
    alive(q);
    // An overlong line of garbage bytes, invalid UTF-8 and control
    // characters included.
    let garbage: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .filter(|&b| b != b'\n' && b != b'\r' && b != 0x03)
        .chain(std::iter::once(b'\n'))
        .collect();
    bytes_err(q, &garbage, "EINVAL");
    alive(q);
}

fn invalid_utf8(q: &mut Qemu) {
    bytes_err(q, b"\xff\xfe\n", "EINVAL");
    alive(q);
    bytes_err(q, b"cat /proc/meminfo\xc3\n", "EINVAL"); // truncated sequence
    bytes_err(q, b"echo \xed\xa0\x80\n", "EINVAL"); // a surrogate
    bytes_err(q, b"echo \xc0\xaf\n", "EINVAL"); // overlong encoding
    bytes_err(q, b"\x80\x80\x80\n", "EINVAL"); // lone continuation bytes
    alive(q);
    // Valid UTF-8 is just text.
    let out = q.run("echo héllo wörld €");
    if out != "héllo wörld €\n" {
        q.fail(&format!("UTF-8 echo printed {out:?}"));
    }
}

fn control_characters(q: &mut Qemu) {
    // The control characters that are no editing key (Ctrl-A, -B, -E, -F,
    // -K, -N, -P, -U, -W are: see `line_editing`).
    for c in [
        0x04u8, 0x07, 0x0c, 0x11, 0x12, 0x13, 0x14, 0x16, 0x18, 0x19, 0x1a, 0x1c, 0x1f,
    ] {
        let line = [b"echo a".as_slice(), &[c], b"b\n"].concat();
        bytes_err(q, &line, "EINVAL");
    }
    alive(q);
    // Ctrl-C discards the line and gives a fresh prompt.
    let out = q.run_bytes(b"echo discarded\x03");
    if !out.is_empty() {
        q.fail(&format!("Ctrl-C printed {out:?}"));
    }
    // Escape sequences of keys without a use (F1, F5, Insert, Alt-x) are
    // swallowed; NUL ignored; TAB is a space.
    let out = q.run_bytes(b"echo\x1bOP\x1b[15~ hi\x1b[2~\x1bx\n");
    let out2 = q.run_bytes(b"ec\x00ho\tthere\n");
    if out != "hi\n" || out2 != "there\n" {
        q.fail(&format!("escape/NUL/TAB input printed {out:?}, {out2:?}"));
    }
    alive(q);
}

fn backspace_editing(q: &mut Qemu) {
    let meminfo = q.read("/proc/meminfo");
    let bs = q.run_bytes(b"cat /proc/memXX\x08\x08info\n");
    let del = q.run_bytes(b"cat /proc/memYY\x7f\x7finfo\n");
    if bs != meminfo || del != meminfo {
        q.fail(&format!(
            "backspace-edited `cat /proc/meminfo` printed {bs:?} and {del:?}, want {meminfo:?}"
        ));
    }
    // Backspace on an empty line does nothing; it removes a control
    // character (then the line is fine) and a whole UTF-8 character.
    let cases: [(&[u8], &str); 3] = [
        (b"\x08\x08\x7fecho one\n", "one\n"),
        (b"echo t\x04\x08wo\n", "two\n"),
        ("echo é\x08three\n".as_bytes(), "three\n"),
    ];
    for (input, want) in cases {
        let out = q.run_bytes(input);
        if out != want {
            q.fail(&format!("input {input:?} printed {out:?}, want {want:?}"));
        }
    }
    // Erasing everything leaves a blank line: no output.
    let out = q.run_bytes(b"ab\x08\x08\n");
    if !out.is_empty() {
        q.fail(&format!("an erased line printed {out:?}"));
    }
}

/// What a serial terminal shows of an echoed line: BS moves left, other
/// characters overwrite and advance.
fn shown(echo: &str) -> String {
    let mut row: Vec<char> = Vec::new();
    let mut col = 0;
    for c in echo.chars() {
        match c {
            '\x08' => col = usize::saturating_sub(col, 1),
            c => {
                match row.get_mut(col) {
                    Some(slot) => *slot = c,
                    None => row.push(c),
                }
                col += 1;
            }
        }
    }
    row.into_iter().collect::<String>().trim_end().to_string()
}

/// Sends `bytes` (ending a line); the terminal must show `want_line` as
/// the line run, and the command print `want_out`.
fn edit(q: &mut Qemu, bytes: &[u8], want_line: &str, want_out: &str) {
    q.send_bytes(bytes);
    let seg = q.wait_prompt();
    let (echo, out) = seg.split_once('\n').unwrap_or((seg.as_str(), ""));
    if shown(echo) != want_line || out != want_out {
        q.fail(&format!(
            "input {bytes:?}: the terminal shows {:?} (echo {echo:?}) and the output is {out:?}; \
             want {want_line:?} and {want_out:?}",
            shown(echo)
        ));
    }
}

/// Readline's keys (`console.md`): Ctrl-A, Ctrl-E, Ctrl-U, the arrows and
/// the history, each redrawn right on a plain serial terminal.
fn line_editing(q: &mut Qemu) {
    edit(q, b"cho one\x01e\x05!\n", "echo one!", "one!\n");
    edit(q, b"rm -rf /\x15echo two\n", "echo two", "two\n");
    // Left twice, insert; Right; Home, Delete, End (CSI and SS3 forms).
    edit(
        q,
        b"echo thee\x1b[D\x1bODr\x1b[C\x1b[Hx\x1b[D\x1b[3~\x1b[F\n",
        "echo three",
        "three\n",
    );
    edit(q, b"echo four junk\x17\x17four\n", "echo four", "four\n");
    edit(
        q,
        b"echo five-\x02\x02\x0b\x06\x06e\n",
        "echo five",
        "five\n",
    );
    // History: Up (CSI, SS3, Ctrl-P) and Down (CSI, Ctrl-N).
    edit(q, b"\x1b[A\n", "echo five", "five\n");
    edit(q, b"\x1bOA\x1bOA\n", "echo four", "four\n");
    edit(q, b"\x10\x10\x10\x0e\n", "echo five", "five\n");
    // Down past the newest gives back the line being typed.
    edit(
        q,
        b"echo si\x1b[A\x1b[A\x1b[B\x1b[Bx\n",
        "echo six",
        "six\n",
    );
    // A recalled line edited: a longer one replaced by a shorter one
    // leaves no trace of it.
    edit(
        q,
        b"echo a much longer line\n",
        "echo a much longer line",
        "a much longer line\n",
    );
    edit(q, b"echo 7\n", "echo 7", "7\n");
    edit(q, b"\x1b[A\x1b[A\x1b[B\x7f8\n", "echo 8", "8\n");
}

/// The history is bounded: after many lines, Up as far as it goes reaches
/// a line no older than the bound (64 lines) allows.
fn history_is_bounded(q: &mut Qemu) {
    for i in 0..100 {
        q.run_ok(&format!("echo h{i}"));
    }
    let ups = b"\x1b[A".repeat(150);
    edit(q, &[ups.as_slice(), b"\n"].concat(), "echo h36", "h36\n");
    alive(q);
}

fn numbers_that_overflow(q: &mut Qemu) {
    q.run_err(&format!("echo 0x1ffffffffffffffffff > {PROBE}"), "EINVAL");
    q.run_err(&format!("echo 99999999999999999999999 > {PROBE}"), "EINVAL");
    q.run_err(
        &format!("echo 0x80000000 0x1ffffffffffffffffff > {PROBE}"),
        "EINVAL",
    );
    q.run_err(&format!("echo 16E > {PROBE}"), "EINVAL");
    q.run_err(&format!("echo 0xfffffffffffffffG > {PROBE}"), "EINVAL");
    // In range, but the end overflows: the last block of the address
    // space (0xfffffffff8000000 with 128 MiB blocks) and two blocks' size.
    let top = 0u64.wrapping_sub(block_size());
    let two = 2 * block_size();
    run_err_any(
        q,
        &format!("echo {top:#x} {two:#x} > {PROBE}"),
        &["EINVAL", "ERANGE"],
    );
    run_err_any(
        q,
        &format!("echo 0x80000000 {top:#x} > {PROBE}"),
        &["EINVAL", "ERANGE"],
    );
    run_err_any(
        q,
        &format!("echo {top:#x} {two:#x} > {MEM}/remove"),
        &["EINVAL", "ERANGE"],
    );
    q.run_err("touch 0x1ffffffffffffffffff", "EINVAL");
    q.run_err("touch 18446744073709551616", "EINVAL");
    q.run_err("crash 0x10000000000000000", "EINVAL");
    q.run_err("devmem map 99999999999999999999999 --map=dev", "EINVAL");
    q.run_err(
        "echo 18446744073709551616 > /sys/kernel/debug/fail_nth_alloc",
        "EINVAL",
    );
    alive(q);
}

fn not_numbers(q: &mut Qemu) {
    q.run_err("touch notanumber", "EINVAL");
    q.run_err("touch", "EINVAL");
    q.run_err("touch 0x", "EINVAL");
    q.run_err("touch 0xZZ", "EINVAL");
    q.run_err("touch -1", "EINVAL");
    q.run_err("touch 09", "EINVAL");
    q.run_err(&format!("echo notanumber > {PROBE}"), "EINVAL");
    q.run_err(&format!("echo 0x80000000 lots > {PROBE}"), "EINVAL");
    q.run_err(
        &format!("echo 0x80000000 0x8000000 extra > {PROBE}"),
        "EINVAL",
    );
    q.run_err(&format!("echo > {PROBE}"), "EINVAL");
    alive(q);
}

/// Files of memory blocks that do not exist, or that a block lacks.
fn missing_block_files(q: &mut Qemu) {
    q.run_err(&format!("cat {MEM}/memory99/state"), "ENOENT");
    let b = first_block();
    q.run_err(&format!("cat {MEM}/memory{b}/nope"), "ENOENT");
    q.run_err(&format!("echo online > {MEM}/memory99/state"), "ENOENT");
    alive(q);
}

/// Other paths that do not exist, for reading, listing and writing.
fn missing_paths(q: &mut Qemu) {
    for cmd in [
        "cat /nope",
        "cat /proc/nope",
        "cat /sys/devices/system/nope",
        "ls /nope",
        "ls /proc/nope",
        "ls /sys/devices/system/memory/memory99",
        "echo x > /nope",
        "echo x > /proc/nope",
    ] {
        q.run_err(cmd, "ENOENT");
    }
    alive(q);
}

// ---------------------------------------------------------------------------
// One QEMU per case.

/// `reboot` resets the machine (PSCI SYSTEM_RESET): the kernel boots
/// again, to a working console; an argument is refused.
#[test]
fn reboot_boots_again() {
    let mut q = boot();
    q.run_err("reboot now", "EINVAL");
    q.send_bytes(b"reboot\n");
    let banner = "Booting hotplug-kernel on QEMU virt";
    let log = q.wait_for(banner, Duration::from_secs(20));
    if !log.contains("reboot") {
        q.fail("no reboot command before the second boot");
    }
    q.wait_prompt();
    alive(&mut q);
    q.poweroff();
}

#[test]
fn unknown_command_is_enoent() {
    let mut q = boot();
    unknown_command(&mut q);
    q.poweroff();
}

#[test]
fn cat_missing_file_is_enoent() {
    let mut q = boot();
    q.run_err("cat /nope", "ENOENT");
    alive(&mut q);
    q.poweroff();
}

#[test]
fn ls_missing_directory_is_enoent() {
    let mut q = boot();
    q.run_err("ls /nope", "ENOENT");
    alive(&mut q);
    q.poweroff();
}

#[test]
fn write_to_missing_file_is_enoent() {
    let mut q = boot();
    q.run_err("echo x > /nope", "ENOENT");
    alive(&mut q);
    q.poweroff();
}

#[test]
fn missing_paths_are_enoent() {
    let mut q = boot();
    missing_paths(&mut q);
    q.poweroff();
}

#[test]
fn missing_block_files_are_enoent() {
    let mut q = boot();
    missing_block_files(&mut q);
    q.poweroff();
}

#[test]
fn directories_and_read_only_files_are_errors() {
    let mut q = boot();
    directories_and_read_only_files(&mut q);
    q.poweroff();
}

#[test]
fn syntax_errors_are_einval() {
    let mut q = boot();
    syntax_errors(&mut q);
    q.poweroff();
}

#[test]
fn bad_values_are_errors() {
    let mut q = boot();
    bad_values(&mut q);
    q.poweroff();
}

#[test]
fn overlong_line_is_an_error_then_next_works() {
    let mut q = boot();
    overlong_lines(&mut q);
    q.poweroff();
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut q = boot();
    invalid_utf8(&mut q);
    q.poweroff();
}

#[test]
fn control_characters_are_errors() {
    let mut q = boot();
    control_characters(&mut q);
    q.poweroff();
}

#[test]
fn backspace_edits_the_line() {
    let mut q = boot();
    backspace_editing(&mut q);
    q.poweroff();
}

#[test]
fn line_editing_keys_and_history() {
    let mut q = boot();
    line_editing(&mut q);
    history_is_bounded(&mut q);
    q.poweroff();
}

#[test]
fn overflowing_numbers_are_einval() {
    let mut q = boot();
    numbers_that_overflow(&mut q);
    q.poweroff();
}

#[test]
fn non_numbers_are_einval() {
    let mut q = boot();
    not_numbers(&mut q);
    q.poweroff();
}

/// What bad input must not change.
fn snapshot(q: &mut Qemu) -> Vec<(String, String)> {
    let mut files = vec![
        "/proc/meminfo".to_string(),
        "/proc/iomem".to_string(),
        "/sys/module/memory_hotplug/parameters/memmap_on_memory".to_string(),
        "/sys/kernel/debug/fail_nth_alloc".to_string(),
        "/sys/kernel/debug/kernel_page_tables".to_string(),
    ];
    files.extend(boot_ram_blocks().map(|n| format!("{MEM}/memory{n}/state")));
    let mut snap: Vec<(String, String)> = files
        .into_iter()
        .map(|f| {
            let v = q.read(&f);
            (f, v)
        })
        .collect();
    let ls = q.run_ok(&format!("ls {MEM}"));
    snap.push((format!("ls {MEM}"), ls));
    snap
}

fn assert_unchanged(q: &mut Qemu, before: &[(String, String)], after_what: &str) {
    let after = snapshot(q);
    for ((f, a), (_, b)) in before.iter().zip(&after) {
        if a != b {
            q.fail(&format!(
                "{f} changed after {after_what}:\nbefore: {a:?}\nafter:  {b:?}"
            ));
        }
    }
}

#[test]
fn bad_input_changes_nothing() {
    let mut q = boot();
    let meminfo = q.read("/proc/meminfo");
    let before = snapshot(&mut q);
    unknown_command(&mut q);
    directories_and_read_only_files(&mut q);
    syntax_errors(&mut q);
    bad_values(&mut q);
    overlong_lines(&mut q);
    invalid_utf8(&mut q);
    control_characters(&mut q);
    backspace_editing(&mut q);
    numbers_that_overflow(&mut q);
    not_numbers(&mut q);
    missing_block_files(&mut q);
    assert_unchanged(&mut q, &before, "bad input");
    missing_paths(&mut q);
    assert_unchanged(&mut q, &before, "reads and writes of missing paths");
    let after = q.read("/proc/meminfo");
    if after != meminfo {
        q.fail(&format!(
            "/proc/meminfo is not byte-identical:\nbefore: {meminfo:?}\nafter:  {after:?}"
        ));
    }
    q.poweroff();
}

// ---------------------------------------------------------------------------
// help and dmesg

const COMMANDS: &[&str] = &[
    "cat", "echo", "ls", "help", "dmesg", "poweroff", "touch", "crash", "devmem",
];

#[test]
fn help_lists_the_commands() {
    let mut q = boot();
    let help = q.run_ok("help");
    for cmd in COMMANDS {
        let listed = help
            .lines()
            .any(|l| l.split_whitespace().next() == Some(cmd));
        if !listed {
            q.fail(&format!("`help` does not list {cmd}"));
        }
    }
    q.poweroff();
}

/// Every entry of `help` is indented like the others.
#[test]
fn help_entries_are_indented_alike() {
    let mut q = boot();
    let help = q.run_ok("help");
    for l in help.lines() {
        let first = l.split_whitespace().next();
        if first.is_some_and(|w| COMMANDS.contains(&w)) && !l.starts_with("  ") {
            q.fail(&format!("`help` entry not indented like the others: {l:?}"));
        }
    }
    q.poweroff();
}

#[test]
fn dmesg_has_the_boot_log() {
    let mut q = boot();
    let boot_log = q.log();
    let boot_log = boot_log.strip_suffix("# ").unwrap_or(&boot_log).to_string();
    let lines = q.dmesg();
    if !lines.iter().any(|l| l.contains("Booting")) {
        q.fail("dmesg lacks \"Booting\"");
    }
    for l in boot_log.lines().filter(|l| !l.is_empty()) {
        if !lines.iter().any(|d| d == l) {
            q.fail(&format!("boot line {l:?} is not in dmesg"));
        }
    }
    q.poweroff();
}
