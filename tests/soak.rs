//! A seeded soak of the console: thousands of random lines (known commands
//! with wrong arguments, reads of every file, writes of junk to writable
//! files, raw bytes of every kind: control characters, escape sequences,
//! editing keys that recall and change earlier lines, bytes that are not
//! UTF-8) must each be answered with a prompt, and
//! the kernel must end alive with `/proc/meminfo` and the misuse counters
//! as they started. `HPK_SEED` picks another sequence.

mod common;

use common::{boot_blocks, Opts, Qemu};

/// xorshift64*: small, seedable, enough to pick words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

const FILES: &[&str] = &[
    "/proc/meminfo",
    "/proc/iomem",
    "/proc/buddyinfo",
    "/proc/vmstat",
    "/sys/devices/system/cpu/online",
    "/sys/devices/system/memory/block_size_bytes",
    "/sys/devices/system/memory/probe",
    "/sys/devices/system/memory/remove",
    "/sys/module/memory_hotplug/parameters/memmap_on_memory",
    "/sys/kernel/debug/vmemmap",
    "/sys/kernel/debug/fail_nth_alloc",
    "/sys/devices/system/memory",
    "/proc",
    "/",
    "/nope",
    "/proc/meminfo/x",
    "//sys/../proc/./meminfo",
];

/// Values no writable file accepts.
const JUNK: &[&str] = &[
    "bogus",
    "0x1",
    "-1",
    "0x",
    "1 2 3",
    "online_bogus",
    "maybe",
    "\u{e9}t\u{e9}",
    "''",
    "0xffffffffffffffffff",
    "9999999999999999999999",
    "0x40001000",
];

/// No `crash` nor `stress`: a raw line can recall an earlier line from the
/// history and cut its arguments away (`crash stack` would then crash the
/// kernel on purpose).
const COMMANDS: &[&str] = &[
    "cat", "ls", "echo", "help", "dmesg", "devmem", "page", "touch", "unpin", "frob", "bench",
];

/// Escape sequences: the cursor keys in both forms, Home, End, Delete,
/// keys without a use, and broken ones.
const ESCAPES: &[&[u8]] = &[
    b"\x1b[A",
    b"\x1b[B",
    b"\x1b[C",
    b"\x1b[D",
    b"\x1bOA",
    b"\x1bOB",
    b"\x1bOC",
    b"\x1bOD",
    b"\x1b[H",
    b"\x1b[F",
    b"\x1b[1~",
    b"\x1b[4~",
    b"\x1b[3~",
    b"\x1b[1;5C",
    b"\x1b[15~",
    b"\x1bOP",
    b"\x1bx",
    b"\x1b",
    b"\x1b[",
    b"\x1b[99999999999999999999999999999999999999Z",
    b"\x1b\x1b[",
];

/// Control characters: the editing keys (Ctrl-A, -B, -E, -F, -K, -N, -P,
/// -U, -W, BS, DEL) and others (NUL, Ctrl-D, BEL, TAB, Ctrl-L, Ctrl-Z, ...).
const CONTROLS: &[u8] = &[
    0x01, 0x02, 0x05, 0x06, 0x0b, 0x0e, 0x10, 0x15, 0x17, 0x08, 0x7f, 0x00, 0x04, 0x07, 0x09, 0x0c,
    0x1a, 0x1f,
];

/// Bytes that are not UTF-8 (a stray continuation, a lone lead byte, a
/// surrogate, an overlong form, 0xff) and a C1 control (CSI, U+009B).
const NOT_UTF8: &[&[u8]] = &[
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xff",
    b"\xc2\x9b",
];

const ARGS: &[&str] = &[
    "",
    "0",
    "1",
    "x",
    "-1",
    "0x0",
    "0xffffffffffffffff",
    "list",
    "map",
    "unmap",
    "7",
    "--map=dev",
    "--map=nvme",
    "hotplug",
    "0x40000000",
    "stack",
    "99",
    "\"unterminated",
    "'single",
    ">",
    ">>",
    "> /nope",
];

/// One random line, without its end. Never `#` (a line starting with the
/// prompt would be taken for one) nor line ends or Ctrl-C in raw bytes.
fn line(rng: &mut Rng, blocks: &std::ops::Range<u64>) -> Vec<u8> {
    let block = blocks.start + rng.next() % (blocks.end - blocks.start + 2);
    match rng.below(5) {
        0 => format!("cat {}", rng.pick(FILES)).into_bytes(),
        1 => {
            let file = match rng.below(3) {
                0 => rng.pick(FILES).to_string(),
                1 => format!("/sys/devices/system/memory/memory{block}/state"),
                _ => format!("/sys/devices/system/memory/memory{block}/online"),
            };
            format!("echo {} > {file}", rng.pick(JUNK)).into_bytes()
        }
        2 => {
            let cmd = rng.pick(COMMANDS);
            let a = rng.pick(ARGS);
            // `bench` only with arguments that make it fail before it does
            // anything.
            let b = if cmd == "bench" {
                "bogus"
            } else {
                rng.pick(ARGS)
            };
            format!("{cmd} {a} {b}").into_bytes()
        }
        3 => format!("ls {}", rng.pick(FILES)).into_bytes(),
        _ => raw(rng),
    }
}

/// Raw bytes of every kind: random ones, escape sequences, control
/// characters, bytes that are not UTF-8, words; now and then a run past
/// the longest line.
fn raw(rng: &mut Rng) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rng.below(16) {
        match rng.below(6) {
            0 => bytes.extend((0..rng.below(8)).map(|_| loop {
                let b = rng.next() as u8;
                if !matches!(b, b'\r' | b'\n' | 0x03 | b'#') {
                    break b;
                }
            })),
            1 => bytes.extend_from_slice(ESCAPES[rng.below(ESCAPES.len())]),
            2 => bytes.push(CONTROLS[rng.below(CONTROLS.len())]),
            3 => bytes.extend_from_slice(NOT_UTF8[rng.below(NOT_UTF8.len())]),
            4 => bytes.extend_from_slice(rng.pick(ARGS).as_bytes()),
            _ => bytes.extend_from_slice(rng.pick(FILES).as_bytes()),
        }
    }
    if rng.below(50) == 0 {
        bytes.extend(std::iter::repeat_n(b'x', 300));
    }
    bytes
}

#[test]
fn thousands_of_random_lines_change_nothing() {
    let seed = std::env::var("HPK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_u64);
    let mut rng = Rng(seed | 1);
    let mut q = Qemu::boot(Opts::new().mem("2G").append("mem=1G"));
    let blocks = boot_blocks(1 << 30);
    let before = q.meminfo();
    for i in 0..3000 {
        let mut l = line(&mut rng, &blocks);
        let shown = String::from_utf8_lossy(&l).into_owned();
        // Most lines end with Enter, some are cancelled with Ctrl-C.
        l.push(if rng.below(10) == 0 { 0x03 } else { b'\n' });
        q.send_bytes(&l);
        let _ = q.wait_prompt();
        if i % 500 == 0 {
            let out = q.run("echo alive");
            if out != "alive\n" {
                q.fail(&format!(
                    "after line {i} ({shown:?}, seed {seed:#x}): {out:?}"
                ));
            }
        }
    }
    let after = q.meminfo();
    if after != before {
        q.fail(&format!("seed {seed:#x}: meminfo {before:?} -> {after:?}"));
    }
    q.assert_no_misuse("after the soak");
    q.poweroff();
}
