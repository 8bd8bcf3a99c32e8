//! Memory that really comes and goes: a virtio-mem-pci device (2 GiB
//! region at 0x80000000, starting unplugged) and a 256 MiB ivshmem-plain BAR
//! backed by a host file, driven from the host through QMP
//! (`scripts/run-devices` in a test).
//!
//! - virtio-mem, on GICv2 and GICv3: `requested-size` 0 -> 1 GiB -> 512 MiB
//!   -> 0 from QMP; the guest follows on the config-change interrupt alone
//!   (nothing is typed until QMP's `size` has reached the request), MemTotal
//!   and Vmemmap change by exactly the plugged size (and size / 64),
//!   `/proc/iomem` has a `System RAM (virtio_mem)` line per plugged block,
//!   QMP's `size` matches the guest's report, and at 0 `/proc/meminfo` and
//!   `/proc/iomem` are back to their boot text; `remove` refuses a
//!   virtio-mem block (EBUSY) and changes nothing; shrinking while pinned
//!   pages sit in the device's memory unplugs every other block, reports the
//!   busy ones (QMP agrees), keeps them mapped, and once unpinned the retry
//!   timer unplugs the rest with nothing typed;
//! - ivshmem: `devmem map --map=dev` keeps Vmemmap and puts the struct pages
//!   in the BAR's first 4 MiB (seen in the host file), `--map=mem` grows
//!   Vmemmap by size / 64; a store through the guest's linear map lands in
//!   the host file and a store into the host file is read by the guest, and
//!   survives unmap / remap; unmapped, the range faults; `/proc/meminfo` is
//!   back to its boot text after each unmap;
//! - `virtio_mem_resize_latency` prints how long +1 GiB and -1 GiB take from
//!   `qom-set` to QMP's `size` and to the guest's log line (`--nocapture`).
//!
//! The driver logs asynchronously (between console commands, so possibly
//! inside the echo of one being typed): console commands here go through
//! [`run`], which takes such log lines out.

mod common;

use common::{Opts, Qemu, Qmp, MISUSE_COUNTERS};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LINEAR: u64 = 0xffff_0000_0000_0000;
const BLOCK: u64 = 0x800_0000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The virtio-mem device's region (2 GiB after the 1 GiB of boot RAM).
const VM_BASE: u64 = 0x8000_0000;
const VM_SIZE: u64 = 2 * GIB;
const SHM_SIZE: u64 = 256 * MIB;
const RESOURCE: &str = "System RAM (virtio_mem)";
/// The driver's log prefix for vm0 (each device's names its region).
const VM0: &str = "virtio_mem 0x80000000: ";
const REMOVE: &str = "/sys/devices/system/memory/remove";
/// Bytes in kB, for meminfo deltas.
fn kb(bytes: u64) -> i64 {
    (bytes >> 10) as i64
}

/// How long the guest may take to follow a request.
const FOLLOW: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The machine: QEMU with both devices, its QMP socket and shared file.

/// Files removed when the test ends, however it ends.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

struct Rig {
    q: Qemu,
    qmp: Qmp,
    /// The ivshmem backing file.
    shm: PathBuf,
    /// Dropped last, after QEMU is gone.
    _files: TempFiles,
}

impl Rig {
    /// Boots `-machine virt{machine}` with the devices, and connects QMP.
    fn boot(name: &str, machine: &str) -> Rig {
        Rig::boot_with(name, machine, &[("vm0", "2G", "")], |o| o)
    }

    /// Boots with the virtio-mem devices `vms` (id, backend size, more
    /// `-device` properties), the ivshmem device and QMP; `more` adds to
    /// the options.
    fn boot_with(
        name: &str,
        machine: &str,
        vms: &[(&str, &str, &str)],
        more: impl FnOnce(Opts) -> Opts,
    ) -> Rig {
        let tag = format!("hpk-devices-{name}-{}", std::process::id());
        let dir = std::env::temp_dir();
        let sock = dir.join(format!("{tag}.qmp"));
        let shm = dir.join(format!("{tag}.shm"));
        let files = TempFiles(vec![sock.clone(), shm.clone()]);
        for f in &files.0 {
            let _ = std::fs::remove_file(f);
        }
        let mut args: Vec<String> = Vec::new();
        for (id, size, props) in vms {
            args.extend([
                "-object".into(),
                format!("memory-backend-ram,id=mem-{id},size={size}"),
                "-device".into(),
                format!("virtio-mem-pci,id={id},memdev=mem-{id},requested-size=0{props}"),
            ]);
        }
        args.extend([
            "-object".into(),
            format!(
                "memory-backend-file,id=shm0,size=256M,mem-path={},share=on",
                shm.display()
            ),
            "-device".into(),
            "ivshmem-plain,id=shm,memdev=shm0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock.display()),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let opts = Opts::new()
            .mem("1G,maxmem=4G")
            .machine(machine)
            .timeout(Duration::from_secs(20))
            .args(&args);
        let mut opts = more(opts);
        // Hot-added memory is onlined movable, as these tests (and Linux
        // distributions) expect, unless a test says otherwise; the
        // kernel's default, as Linux's, leaves it offline.
        let append = opts.append.take().unwrap_or_default();
        if !append.contains("memhp_default_state=") {
            opts.append = Some(format!("memhp_default_state=online_movable {append}"));
        } else {
            opts.append = Some(append);
        }
        let mut q = Qemu::boot(opts);
        let qmp = match Qmp::connect(&sock, Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => q.fail(&e),
        };
        Rig {
            q,
            qmp,
            shm,
            _files: files,
        }
    }

    /// A QMP result, or the test fails with the console log.
    #[track_caller]
    fn qmp_ok<T>(&mut self, r: Result<T, String>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => self.q.fail(&e),
        }
    }

    /// QMP's view of vm0: (`size` plugged, `requested-size`).
    #[track_caller]
    fn vm_size(&mut self) -> (u64, u64) {
        self.vm_size_of("vm0")
    }

    /// QMP's view of device `id`: (`size` plugged, `requested-size`).
    #[track_caller]
    fn vm_size_of(&mut self, id: &str) -> (u64, u64) {
        let r = self.qmp.memory_device(id);
        let data = self.qmp_ok(r);
        let field = |k: &str| data.get(k).and_then(|v| v.as_u64());
        match (field("size"), field("requested-size")) {
            (Some(s), Some(r)) => (s, r),
            _ => self.q.fail(&format!("query-memory-devices {id}: {data:?}")),
        }
    }

    /// `qom-set vm0 requested-size BYTES`.
    #[track_caller]
    fn request(&mut self, bytes: u64) {
        self.request_of("vm0", bytes)
    }

    /// `qom-set ID requested-size BYTES`.
    #[track_caller]
    fn request_of(&mut self, id: &str, bytes: u64) {
        let r = self.qmp.qom_set(id, "requested-size", &bytes.to_string());
        self.qmp_ok(r);
    }

    /// Polls QMP only (nothing goes to the console) until vm0's plugged
    /// size is `want`; returns how long it took.
    #[track_caller]
    fn wait_plugged(&mut self, want: u64, timeout: Duration) -> Duration {
        self.wait_plugged_of("vm0", want, timeout)
    }

    /// [`Rig::wait_plugged`] for device `id`.
    #[track_caller]
    fn wait_plugged_of(&mut self, id: &str, want: u64, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let (size, requested) = self.vm_size_of(id);
            if size == want {
                return t0.elapsed();
            }
            if t0.elapsed() > timeout {
                self.q.fail(&format!(
                    "QMP: {id} size is {size:#x} (requested {requested:#x}) after {timeout:?}, \
                     want {want:#x}"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (without typing anything) for the driver's report that
    /// `plugged` of `requested` MiB are plugged; returns the rest of the
    /// line (`""`, or `"; N MiB busy, ..."`).
    #[track_caller]
    fn wait_report(&mut self, plugged: u64, requested: u64) -> String {
        self.wait_report_of(VM0, plugged, requested)
    }

    /// [`Rig::wait_report`] for the device whose log lines start `prefix`.
    #[track_caller]
    fn wait_report_of(&mut self, prefix: &str, plugged: u64, requested: u64) -> String {
        let pat = format!("{prefix}plugged {plugged} MiB of {requested} MiB requested");
        self.q.wait_for(&pat, FOLLOW);
        let rest = self.q.wait_for("\n", FOLLOW);
        skip_details(rest.trim_end_matches('\n')).to_string()
    }

    /// Reads `N` bytes of the ivshmem backing file at `offset`.
    fn shm_read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let r = std::fs::File::open(&self.shm).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf)?;
            Ok(buf)
        });
        match r {
            Ok(b) => b,
            Err(e) => self.q.fail(&format!(
                "reading {} at {offset:#x}: {e}",
                self.shm.display()
            )),
        }
    }

    fn shm_u64(&mut self, offset: u64) -> u64 {
        let b = self.shm_read(offset, 8);
        u64::from_le_bytes(b.try_into().unwrap())
    }

    fn shm_write_u64(&mut self, offset: u64, value: u64) {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.shm)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                f.write_all(&value.to_le_bytes())?;
                f.flush()
            });
        if let Err(e) = r {
            self.q.fail(&format!(
                "writing {} at {offset:#x}: {e}",
                self.shm.display()
            ));
        }
    }

    fn poweroff(self) {
        let Rig { q, qmp, _files, .. } = self;
        drop(qmp);
        q.poweroff();
        drop(_files);
    }
}

// ---------------------------------------------------------------------------
// The console, with the driver's asynchronous log lines taken out.

/// Length (newline included) of a driver log line starting `s`, if one does.
fn log_line_len(s: &str) -> Option<usize> {
    let memory_n = s.strip_prefix("memory").is_some_and(|r| {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && r[digits..].starts_with(": ")
    });
    if !(s.starts_with("virtio_mem ") || memory_n) {
        return None;
    }
    s.find('\n').map(|i| i + 1)
}

/// Splits what came between two prompts into `cmd`'s echo and its output.
/// The driver logs only between commands, i.e. after a prompt and before
/// the line typed next is complete: whole log lines there, even inside the
/// echo, are taken out. `None` if `seg` is not `cmd`'s echo and output.
fn strip_logs(cmd: &str, seg: &str) -> Option<String> {
    let mut rest = seg;
    let mut echoed = 0;
    loop {
        if echoed == cmd.len() && rest.starts_with('\n') {
            return Some(rest[1..].to_string());
        }
        if let Some(n) = log_line_len(rest) {
            rest = &rest[n..];
            continue;
        }
        let c = rest.chars().next()?;
        if !cmd[echoed..].starts_with(c) {
            return None;
        }
        echoed += c.len_utf8();
        rest = &rest[c.len_utf8()..];
    }
}

/// Whether `seg` is driver output that interrupted the prompt: what had
/// been typed of `cmd` so far, a line break, then only log lines (the
/// console then prints the prompt and the typed part again).
fn interrupted_prompt(cmd: &str, seg: &str) -> bool {
    let typed = cmd
        .char_indices()
        .map(|(i, _)| i)
        .chain([cmd.len()])
        .rev()
        .find(|&i| seg.starts_with(&cmd[..i]));
    let Some(mut rest) = typed.map(|i| &seg[i..]) else {
        return false;
    };
    // The break before the log lines; a wait for a log line may have
    // consumed it along with them, leaving nothing before the prompt.
    if typed != Some(0) || rest.starts_with('\n') {
        let Some(r) = rest.strip_prefix('\n') else {
            return false;
        };
        rest = r;
    }
    while let Some(n) = log_line_len(rest) {
        rest = &rest[n..];
    }
    rest.is_empty()
}

/// Runs `cmd` and returns its output, driver log lines taken out.
fn run(q: &mut Qemu, cmd: &str) -> String {
    q.send_bytes(format!("{cmd}\n").as_bytes());
    loop {
        let seg = q.wait_prompt();
        if let Some(out) = strip_logs(cmd, &seg) {
            return out;
        }
        if !interrupted_prompt(cmd, &seg) {
            q.fail(&format!(
                "`{cmd}`: cannot tell its echo from the output in {seg:?}"
            ));
        }
    }
}

#[test]
fn log_lines_inside_the_echo_are_taken_out() {
    let log = "memory23: removed 0xb8000000-0xbfffffff\n\
               virtio_mem 0x80000000: plugged 0 MiB of 0 MiB requested (device requests 1 us)\n";
    let cmd = "cat /sys/devices/system/memory/memory16/state";
    for at in 0..=cmd.len() {
        let seg = format!("{}{log}{}\nonline\n", &cmd[..at], &cmd[at..]);
        assert_eq!(
            strip_logs(cmd, &seg).as_deref(),
            Some("online\n"),
            "{seg:?}"
        );
    }
    // Output that looks like a log line is output.
    let seg = format!("dmesg\n{log}");
    assert_eq!(strip_logs("dmesg", &seg).as_deref(), Some(log));
    // Log lines that interrupted the prompt, with or without a partly typed
    // command before them, are skipped whole.
    assert!(interrupted_prompt("dmesg", &format!("\n{log}")));
    assert!(interrupted_prompt("dmesg", &format!("dm\n{log}")));
    assert!(!interrupted_prompt("dmesg", "dm\nnot a log line\n"));
    assert!(interrupted_prompt("dmesg", ""));
    // Another command's echo, or an unknown line inside the echo, is not.
    assert_eq!(strip_logs("dmesg", "unpin\n"), None);
    assert_eq!(strip_logs("dmesg", "dmEIO: oops\nesg\n"), None);
}

/// Runs `cmd`, which must not print an `error:` line.
fn ok(q: &mut Qemu, cmd: &str) -> String {
    let out = run(q, cmd);
    if out.lines().any(|l| l.starts_with("error: ")) {
        q.fail(&format!("`{cmd}` failed: {out:?}"));
    }
    out
}

/// Runs `cmd`, which must fail with exactly one `error: ERRNO: ...` line;
/// returns the message.
fn refused(q: &mut Qemu, cmd: &str, errno: &str) -> String {
    let out = run(q, cmd);
    q.expect_error(&format!("`{cmd}`"), &out, errno)
}

fn read(q: &mut Qemu, path: &str) -> String {
    ok(q, &format!("cat {path}"))
}

/// `/proc/meminfo` as text and as name -> kB.
fn meminfo(q: &mut Qemu) -> (String, BTreeMap<String, u64>) {
    let text = read(q, "/proc/meminfo");
    let map = q.parse_meminfo(&text);
    (text, map)
}

/// Page-table growth from `base` to `now` in kB, which must be small.
fn table_growth(
    q: &mut Qemu,
    base: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
    when: &str,
) -> i64 {
    let tables =
        q.meminfo_field(now, "PageTables") as i64 - q.meminfo_field(base, "PageTables") as i64;
    if !(0..=64).contains(&tables) {
        q.fail(&format!("{when}: PageTables changed by {tables} kB"));
    }
    tables
}

/// The `System RAM (virtio_mem)` ranges of `/proc/iomem` as memory block
/// ids; every other line must be as in `base`.
fn virtio_blocks(q: &mut Qemu, base: &str) -> Vec<u64> {
    let now = read(q, "/proc/iomem");
    let mut ids = Vec::new();
    let mut others = String::new();
    for line in now.lines() {
        let Some(range) = line.strip_suffix(&format!(" : {RESOURCE}")) else {
            others += line;
            others.push('\n');
            continue;
        };
        let parsed = range.split_once('-').and_then(|(s, e)| {
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()? + 1,
            ))
        });
        match parsed {
            Some((s, e))
                if s % BLOCK == 0 && e - s == BLOCK && s >= VM_BASE && e <= VM_BASE + VM_SIZE =>
            {
                ids.push(s / BLOCK)
            }
            _ => q.fail(&format!("/proc/iomem: bad {RESOURCE} line {line:?}")),
        }
    }
    if others != base {
        q.fail(&format!(
            "/proc/iomem outside virtio-mem is\n{others}not\n{base}"
        ));
    }
    ids
}

fn vmstat_warnings(q: &mut Qemu, when: &str) {
    let text = read(q, "/proc/vmstat");
    for w in MISUSE_COUNTERS {
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(w)?.strip_prefix(' ')?.parse::<u64>().ok());
        match v {
            Some(0) => {}
            Some(v) => q.fail(&format!("/proc/vmstat {w} is {v} {when}")),
            None => q.fail(&format!("no {w} in /proc/vmstat:\n{text}")),
        }
    }
}

fn expect_touch(q: &mut Qemu, va: u64) -> u64 {
    let out = ok(q, &format!("touch {va:#x}"));
    let value = out
        .strip_suffix('\n')
        .filter(|l| !l.contains('\n'))
        .and_then(|l| l.strip_prefix(&format!("{va:#018x}: 0x")))
        .and_then(|v| u64::from_str_radix(v, 16).ok());
    match value {
        Some(v) => v,
        None => q.fail(&format!("touch {va:#x} printed {out:?}")),
    }
}

fn expect_fault(q: &mut Qemu, va: u64) {
    let msg = refused(q, &format!("touch {va:#x}"), "EFAULT");
    if !msg.contains(&format!("{va:016x}")) {
        q.fail(&format!(
            "touch {va:#x}: fault message {msg:?} names another address"
        ));
    }
}

// ---------------------------------------------------------------------------
// virtio-mem

/// The whole virtio-mem story on `-machine virt{machine}`.
fn virtio_mem_follows_requests(name: &str, machine: &str) {
    let mut r = Rig::boot(name, machine);
    let dmesg = ok(&mut r.q, "dmesg");
    for line in [
        "virtio_mem 0x80000000: region 0x80000000-0xffffffff, device block size 0x200000\n",
        "ivshmem: device memory 0 at ",
    ] {
        if !dmesg.contains(line) {
            r.q.fail(&format!("dmesg lacks {line:?}"));
        }
    }
    let (base_text, base) = meminfo(&mut r.q);
    let base_iomem = read(&mut r.q, "/proc/iomem");
    if base_iomem.contains(RESOURCE) {
        r.q.fail("virtio-mem memory in /proc/iomem before any request");
    }
    if r.vm_size() != (0, 0) {
        let s = r.vm_size();
        r.q.fail(&format!("QMP: vm0 (size, requested) at boot is {s:?}"));
    }

    // 0 -> 1 GiB. Nothing is typed until QMP shows the guest has plugged it
    // all: the config-change interrupt alone must get the driver going.
    r.request(GIB);
    r.wait_plugged(GIB, FOLLOW);
    let tail = r.wait_report(1024, 1024);
    if !tail.is_empty() {
        r.q.fail(&format!("report after 1 GiB ends {tail:?}"));
    }
    let (_, grown) = meminfo(&mut r.q);
    let tables = table_growth(&mut r.q, &base, &grown, "1 GiB plugged");
    r.q.expect_meminfo_deltas(
        &base,
        &grown,
        &[
            ("MemTotal", kb(GIB)),
            ("Vmemmap", kb(GIB / 64)),
            ("VmemmapAltmap", 0),
            ("DeviceMem", 0),
            ("MemFree", kb(GIB) - kb(GIB / 64) - tables),
        ],
        "requested-size 1 GiB",
    );
    let ids = virtio_blocks(&mut r.q, &base_iomem);
    if ids.len() as u64 != GIB / BLOCK {
        r.q.fail(&format!("1 GiB plugged, /proc/iomem has blocks {ids:?}"));
    }
    for &id in &ids {
        let state = read(
            &mut r.q,
            &format!("/sys/devices/system/memory/memory{id}/state"),
        );
        let zones = read(
            &mut r.q,
            &format!("/sys/devices/system/memory/memory{id}/valid_zones"),
        );
        if state != "online\n" || zones != "Movable\n" {
            r.q.fail(&format!(
                "memory{id}: state {state:?}, valid_zones {zones:?}"
            ));
        }
        expect_touch(&mut r.q, LINEAR + id * BLOCK);
    }
    expect_touch(&mut r.q, LINEAR + (ids[ids.len() - 1] + 1) * BLOCK - 8);
    if !ids.contains(&(VM_BASE / BLOCK)) {
        r.q.fail(&format!("blocks {ids:?} plugged, not the first"));
    }

    // The console's `remove` is refused: the driver manages these blocks.
    let (text, _) = meminfo(&mut r.q);
    let iomem = read(&mut r.q, "/proc/iomem");
    refused(&mut r.q, &format!("echo {VM_BASE:#x} > {REMOVE}"), "EBUSY");
    refused(
        &mut r.q,
        &format!("echo {VM_BASE:#x} {GIB:#x} > {REMOVE}"),
        "EBUSY",
    );
    let (text2, _) = meminfo(&mut r.q);
    let iomem2 = read(&mut r.q, "/proc/iomem");
    let first = VM_BASE / BLOCK;
    let state = read(
        &mut r.q,
        &format!("/sys/devices/system/memory/memory{first}/state"),
    );
    if text2 != text || iomem2 != iomem || state != "online\n" {
        r.q.fail(&format!(
            "a refused remove changed things: meminfo\n{text}->\n{text2}iomem\n{iomem}->\n{iomem2}\
             memory{first} {state:?}"
        ));
    }
    if r.vm_size() != (GIB, GIB) {
        let s = r.vm_size();
        r.q.fail(&format!("QMP after refused remove: {s:?}"));
    }

    // 1 GiB -> 512 MiB.
    r.request(GIB / 2);
    r.wait_plugged(GIB / 2, FOLLOW);
    let tail = r.wait_report(512, 512);
    if !tail.is_empty() {
        r.q.fail(&format!("report after 512 MiB ends {tail:?}"));
    }
    let (_, half) = meminfo(&mut r.q);
    let tables = table_growth(&mut r.q, &base, &half, "512 MiB plugged");
    r.q.expect_meminfo_deltas(
        &base,
        &half,
        &[
            ("MemTotal", kb(GIB / 2)),
            ("Vmemmap", kb(GIB / 2 / 64)),
            ("VmemmapAltmap", 0),
            ("DeviceMem", 0),
            ("MemFree", kb(GIB / 2) - kb(GIB / 2 / 64) - tables),
        ],
        "requested-size 512 MiB",
    );
    let half_ids = virtio_blocks(&mut r.q, &base_iomem);
    if half_ids.len() as u64 != GIB / 2 / BLOCK || half_ids.iter().any(|id| !ids.contains(id)) {
        r.q.fail(&format!(
            "512 MiB plugged of {ids:?}, /proc/iomem has {half_ids:?}"
        ));
    }
    for &id in ids.iter().filter(|id| !half_ids.contains(id)) {
        expect_fault(&mut r.q, LINEAR + id * BLOCK);
    }
    if r.vm_size() != (GIB / 2, GIB / 2) {
        let s = r.vm_size();
        r.q.fail(&format!("QMP at 512 MiB: {s:?}"));
    }

    // 512 MiB -> 0: back to the boot state, to the kB.
    r.request(0);
    r.wait_plugged(0, FOLLOW);
    let tail = r.wait_report(0, 0);
    if !tail.is_empty() {
        r.q.fail(&format!("report after 0 ends {tail:?}"));
    }
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!(
            "/proc/meminfo after requested-size 0 is\n{text}not\n{base_text}"
        ));
    }
    let iomem = read(&mut r.q, "/proc/iomem");
    if iomem != base_iomem {
        r.q.fail(&format!(
            "/proc/iomem after requested-size 0 is\n{iomem}not\n{base_iomem}"
        ));
    }
    for &id in &half_ids {
        expect_fault(&mut r.q, LINEAR + id * BLOCK);
    }

    // Shrinking while pages on the device are in use: 1 GiB, pin 64 MiB
    // (movable first, so on the device), ask for 0.
    r.request(GIB);
    r.wait_plugged(GIB, FOLLOW);
    r.wait_report(1024, 1024);
    let out = ok(&mut r.q, "pin 64M");
    if out != "pinned 65536 KiB in all\n" {
        r.q.fail(&format!("pin 64M printed {out:?}"));
    }
    r.request(0);
    // The first pass unplugs what it can and reports the rest.
    let tail = r.wait_report_busy();
    let (busy_mib, busy_ids) = match parse_busy(&tail) {
        Some(b) => b,
        None => r.q.fail(&format!("busy report {tail:?} not understood")),
    };
    eprintln!("{name}: asked for 0 with 64 MiB pinned: {tail}");
    let (size, requested) = r.vm_size();
    if requested != 0 || size == 0 || size != busy_mib * MIB || size >= GIB {
        r.q.fail(&format!(
            "after shrinking to 0 with 64 MiB pinned: QMP size {size:#x} requested {requested:#x}, \
             guest reports {busy_mib} MiB busy {busy_ids:?}"
        ));
    }
    // Busy blocks keep only their busy device blocks (Linux's sub-block
    // mode): at most the whole blocks stay plugged.
    if busy_ids.len() as u64 * BLOCK < size || busy_ids.iter().any(|id| !ids.contains(id)) {
        r.q.fail(&format!(
            "busy blocks {busy_ids:?} cannot hold the {size:#x} bytes plugged (of {ids:?})"
        ));
    }
    // The retry timer keeps trying (and failing) without any input.
    let again = r.wait_report_busy();
    if parse_busy(&again) != Some((busy_mib, busy_ids.clone())) {
        r.q.fail(&format!("retry reports {again:?} after {tail:?}"));
    }
    let (size2, _) = r.vm_size();
    if size2 != size {
        r.q.fail(&format!(
            "QMP size went {size:#x} -> {size2:#x} while pinned"
        ));
    }
    let dmesg = ok(&mut r.q, "dmesg");
    let reported = r.q.parse_dmesg(&dmesg).iter().any(|l| {
        l.strip_prefix(VM0)
            .and_then(parse_busy)
            .is_some_and(|b| b == (busy_mib, busy_ids.clone()))
    });
    if !reported {
        r.q.fail("dmesg does not report the busy blocks");
    }
    let (_, pinned) = meminfo(&mut r.q);
    let tables = table_growth(&mut r.q, &base, &pinned, "busy blocks plugged");
    let memmap = kb(busy_ids.len() as u64 * BLOCK / 64);
    r.q.expect_meminfo_deltas(
        &base,
        &pinned,
        &[
            ("MemTotal", kb(size)),
            ("Vmemmap", memmap),
            ("VmemmapAltmap", 0),
            ("DeviceMem", 0),
            ("MemFree", kb(size) - memmap - tables - kb(64 * MIB)),
        ],
        "busy blocks plugged, 64 MiB pinned",
    );
    let now_ids = virtio_blocks(&mut r.q, &base_iomem);
    if now_ids != busy_ids {
        r.q.fail(&format!(
            "busy {busy_ids:?} but /proc/iomem has {now_ids:?}"
        ));
    }
    // Removed blocks are unmapped (busy ones stay mapped; their unplugged
    // parts must not be touched).
    for &id in ids.iter().filter(|id| !busy_ids.contains(id)) {
        expect_fault(&mut r.q, LINEAR + id * BLOCK);
    }
    vmstat_warnings(&mut r.q, "with busy virtio-mem blocks");

    // Unpinned, the retry timer finishes the job; nothing more is typed.
    let out = ok(&mut r.q, "unpin");
    if !out.is_empty() {
        r.q.fail(&format!("unpin printed {out:?}"));
    }
    let took = r.wait_plugged(0, Duration::from_secs(5));
    r.wait_report(0, 0);
    eprintln!("{name}: busy blocks unplugged {took:.1?} after unpin");
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!(
            "/proc/meminfo after unpin and requested-size 0 is\n{text}not\n{base_text}"
        ));
    }
    let iomem = read(&mut r.q, "/proc/iomem");
    if iomem != base_iomem {
        r.q.fail(&format!(
            "/proc/iomem after unpin and requested-size 0 is\n{iomem}not\n{base_iomem}"
        ));
    }
    for &id in &busy_ids {
        expect_fault(&mut r.q, LINEAR + id * BLOCK);
    }
    vmstat_warnings(&mut r.q, "after virtio-mem requests");
    if r.vm_size() != (0, 0) {
        let s = r.vm_size();
        r.q.fail(&format!("QMP at the end: {s:?}"));
    }
    if std::env::var_os("DUMP").is_some() {
        r.q.fail("dump");
    }
    r.poweroff();
}

impl Rig {
    /// Waits (without typing) for a report with busy blocks, with requested
    /// size 0; returns it from `plugged`.
    #[track_caller]
    fn wait_report_busy(&mut self) -> String {
        let seen = self.q.wait_for(" MiB busy, stays plugged: ", FOLLOW);
        let rest = self.q.wait_for("\n", FOLLOW);
        let start = match seen.rfind(&format!("{VM0}plugged ")) {
            Some(i) => i + VM0.len(),
            None => self
                .q
                .fail(&format!("busy report not understood: {seen:?}")),
        };
        format!("{}{}", &seen[start..], rest.trim_end_matches('\n'))
    }
}

/// The driver's report after `plugged X MiB of Y MiB requested`, without
/// the parenthesised details (timings) that may come first.
fn skip_details(tail: &str) -> &str {
    match tail.strip_prefix(" (").and_then(|t| t.split_once(')')) {
        Some((_, rest)) => rest,
        None => tail,
    }
}

/// `plugged X MiB of 0 MiB requested[ (...)]; X MiB busy, stays plugged:
/// {a, b}`: (X, [a, b]), when both X agree.
fn parse_busy(report: &str) -> Option<(u64, Vec<u64>)> {
    let rest = report.strip_prefix("plugged ")?;
    let (plugged, rest) = rest.split_once(" MiB of 0 MiB requested")?;
    let rest = skip_details(rest).strip_prefix("; ")?;
    let (busy, rest) = rest.split_once(" MiB busy, stays plugged: ")?;
    if plugged != busy {
        return None;
    }
    let ids = rest
        .strip_prefix('{')?
        .strip_suffix('}')?
        .split(", ")
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((plugged.parse().ok()?, ids))
}

#[test]
fn virtio_mem_follows_requested_size_gicv2() {
    virtio_mem_follows_requests("gicv2", "");
}

#[test]
fn virtio_mem_follows_requested_size_gicv3() {
    virtio_mem_follows_requests("gicv3", ",gic-version=3");
}

/// From `qom-set` to (QMP's `size` = the request, the guest's log line).
fn time_resize(r: &mut Rig, from: u64, to: u64) -> (Duration, Duration) {
    let pat = format!(
        "{VM0}plugged {} MiB of {} MiB requested",
        to >> 20,
        to >> 20
    );
    let seen = r.q.log().len();
    let t0 = Instant::now();
    r.request(to);
    let (mut qmp, mut log) = (None, None);
    while qmp.is_none() || log.is_none() {
        if t0.elapsed() > FOLLOW {
            r.q.fail(&format!(
                "{:#x} -> {to:#x} not done after {FOLLOW:?} (QMP {qmp:?}, log {log:?})",
                from
            ));
        }
        if qmp.is_none() && r.vm_size().0 == to {
            qmp = Some(t0.elapsed());
        }
        if log.is_none() && r.q.log()[seen..].contains(&pat) {
            log = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    r.wait_report(to >> 20, to >> 20);
    (qmp.unwrap(), log.unwrap())
}

/// Not a pass/fail test beyond sanity: prints the latency of +1 GiB and
/// -1 GiB on both GICs, for BENCHMARKS.md (`--nocapture`).
#[test]
fn virtio_mem_resize_latency() {
    const ROUNDS: usize = 3;
    for (name, machine) in [("gicv2", ""), ("gicv3", ",gic-version=3")] {
        let mut r = Rig::boot(&format!("latency-{name}"), machine);
        let (base_text, _) = meminfo(&mut r.q);
        let mut grow = Vec::new();
        let mut shrink = Vec::new();
        for _ in 0..ROUNDS {
            grow.push(time_resize(&mut r, 0, GIB));
            shrink.push(time_resize(&mut r, GIB, 0));
        }
        let (text, _) = meminfo(&mut r.q);
        if text != base_text {
            r.q.fail(&format!(
                "/proc/meminfo after the rounds is\n{text}not\n{base_text}"
            ));
        }
        for (what, times) in [("+1 GiB", &mut grow), ("-1 GiB", &mut shrink)] {
            let list = |v: &[(Duration, Duration)], f: fn(&(Duration, Duration)) -> Duration| {
                let mut ms: Vec<f64> = v.iter().map(|t| f(t).as_secs_f64() * 1e3).collect();
                ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let all: Vec<String> = ms.iter().map(|m| format!("{m:.1}")).collect();
                format!("median {:.1} ms ({} ms)", ms[ms.len() / 2], all.join(", "))
            };
            eprintln!(
                "virtio-mem {what} on virt{machine}: qom-set -> QMP size {}; -> guest log {}",
                list(times, |t| t.0),
                list(times, |t| t.1)
            );
            for t in times.iter() {
                if t.0 > FOLLOW || t.1 > FOLLOW {
                    r.q.fail(&format!("{what}: {t:?}"));
                }
            }
        }
        r.poweroff();
    }
}

// ---------------------------------------------------------------------------
// ivshmem

/// `devmem list`'s ivshmem line: (first, last) byte.
fn ivshmem_range(q: &mut Qemu, state: &str) -> (u64, u64) {
    let list = ok(q, "devmem list");
    let parsed = list
        .strip_prefix("0 0x")
        .and_then(|l| l.strip_suffix(&format!(" ivshmem {state}\n")))
        .and_then(|l| l.split_once("-0x"))
        .and_then(|(s, e)| {
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        });
    match parsed {
        Some((s, e)) if e + 1 - s == SHM_SIZE => (s, e),
        _ => q.fail(&format!(
            "devmem list is {list:?}, want `0 <256 MiB range> ivshmem {state}`"
        )),
    }
}

#[test]
fn ivshmem_map_dev_and_mem_share_data_with_the_host() {
    let mut r = Rig::boot("ivshmem", "");
    let (bar, last) = ivshmem_range(&mut r.q, "unmapped");
    let dmesg = ok(&mut r.q, "dmesg");
    if !dmesg.contains(&format!("ivshmem: device memory 0 at {bar:#x}-{last:#x}\n")) {
        r.q.fail("dmesg does not report the ivshmem BAR as in devmem list");
    }
    match std::fs::metadata(&r.shm) {
        Ok(m) if m.len() == SHM_SIZE => {}
        m => {
            let shm = r.shm.display().to_string();
            r.q.fail(&format!("{shm}: {m:?}"))
        }
    }
    let (base_text, base) = meminfo(&mut r.q);
    let base_iomem = read(&mut r.q, "/proc/iomem");
    if !base_iomem.contains(&format!("{bar:x}-{last:x} : ivshmem\n")) {
        r.q.fail("/proc/iomem lacks the ivshmem BAR");
    }
    // Offsets in the BAR: past the struct pages of --map=dev (4 MiB).
    let (off_guest, off_host, off_mem) = (200 * MIB, 201 * MIB + 8, 202 * MIB + 16);
    let (v_guest, v_host, v_mem) = (
        0x5eed_0001_dead_beef_u64,
        0xc0ff_ee00_1234_5678_u64,
        0x0123_4567_89ab_cdef_u64,
    );
    let va = |off: u64| LINEAR + bar + off;
    expect_fault(&mut r.q, va(off_guest));
    if r.shm_read(0, 4 << 20).iter().any(|&b| b != 0) {
        r.q.fail("the ivshmem file is not zero before any mapping");
    }

    // --map=dev: struct pages on the device, Vmemmap unchanged.
    ok(&mut r.q, "devmem map 0 --map=dev");
    ivshmem_range(&mut r.q, "mapped(dev)");
    let (_, dev) = meminfo(&mut r.q);
    let tables = table_growth(&mut r.q, &base, &dev, "devmem map 0 --map=dev");
    r.q.expect_meminfo_deltas(
        &base,
        &dev,
        &[
            ("MemTotal", 0),
            ("Vmemmap", 0),
            ("VmemmapAltmap", kb(SHM_SIZE / 64)),
            ("DeviceMem", kb(SHM_SIZE)),
            ("MemFree", -tables),
        ],
        "devmem map 0 --map=dev",
    );
    if dev["DeviceMem"] != 262144 {
        r.q.fail(&format!("DeviceMem after map=dev: {dev:?}"));
    }
    // The struct pages are in the host file: the first and the last of the
    // 65536 (64 bytes each, 4 MiB).
    let memmap = SHM_SIZE / 4096 * 64;
    for off in [0, memmap - 64] {
        if r.shm_read(off, 64).iter().all(|&b| b == 0) {
            r.q.fail(&format!(
                "map=dev: no struct page at offset {off:#x} of the ivshmem file"
            ));
        }
    }
    // Guest -> host.
    ok(&mut r.q, &format!("poke {:#x} {v_guest:#x}", va(off_guest)));
    let got = r.shm_u64(off_guest);
    if got != v_guest {
        r.q.fail(&format!(
            "poke {:#x} {v_guest:#x}: the host file has {got:#x} at {off_guest:#x}",
            va(off_guest)
        ));
    }
    // Host -> guest.
    r.shm_write_u64(off_host, v_host);
    for (off, want) in [(off_host, v_host), (off_guest, v_guest)] {
        let got = expect_touch(&mut r.q, va(off));
        if got != want {
            r.q.fail(&format!(
                "map=dev: touch at BAR offset {off:#x} read {got:#x}, want {want:#x}"
            ));
        }
    }
    ok(&mut r.q, "devmem unmap 0");
    ivshmem_range(&mut r.q, "unmapped");
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!(
            "/proc/meminfo after unmap (dev) is\n{text}not\n{base_text}"
        ));
    }
    expect_fault(&mut r.q, va(off_guest));
    expect_fault(&mut r.q, va(off_host));

    // --map=mem: struct pages in RAM; the data is still there.
    ok(&mut r.q, "devmem map 0 --map=mem");
    ivshmem_range(&mut r.q, "mapped(mem)");
    let (_, mem) = meminfo(&mut r.q);
    let tables = table_growth(&mut r.q, &base, &mem, "devmem map 0 --map=mem");
    let memmap_kb = kb(SHM_SIZE / 64);
    r.q.expect_meminfo_deltas(
        &base,
        &mem,
        &[
            ("MemTotal", 0),
            ("Vmemmap", memmap_kb),
            ("VmemmapAltmap", 0),
            ("DeviceMem", kb(SHM_SIZE)),
            ("MemFree", -memmap_kb - tables),
        ],
        "devmem map 0 --map=mem",
    );
    for (off, want) in [(off_guest, v_guest), (off_host, v_host)] {
        let got = expect_touch(&mut r.q, va(off));
        if got != want {
            r.q.fail(&format!(
                "map=mem after remap: touch at BAR offset {off:#x} read {got:#x}, want {want:#x}"
            ));
        }
    }
    ok(&mut r.q, &format!("poke {:#x} {v_mem:#x}", va(off_mem)));
    let got = r.shm_u64(off_mem);
    if got != v_mem {
        r.q.fail(&format!(
            "map=mem: poke {v_mem:#x}: the host file has {got:#x} at {off_mem:#x}"
        ));
    }
    ok(&mut r.q, "devmem unmap 0");
    ivshmem_range(&mut r.q, "unmapped");
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!(
            "/proc/meminfo after unmap (mem) is\n{text}not\n{base_text}"
        ));
    }
    let iomem = read(&mut r.q, "/proc/iomem");
    if iomem != base_iomem {
        r.q.fail(&format!(
            "/proc/iomem after unmap is\n{iomem}not\n{base_iomem}"
        ));
    }
    expect_fault(&mut r.q, va(off_mem));
    // What the guest wrote stays on the device.
    for (off, want) in [(off_guest, v_guest), (off_host, v_host), (off_mem, v_mem)] {
        let got = r.shm_u64(off);
        if got != want {
            r.q.fail(&format!(
                "the host file has {got:#x} at {off:#x} at the end, want {want:#x}"
            ));
        }
    }
    vmstat_warnings(&mut r.q, "after ivshmem map/unmap");
    r.poweroff();
}

/// Requests that are not whole memory blocks: the driver plugs device
/// blocks (2 MiB) and onlines only those, like Linux's sub-block mode;
/// unplugged parts of a block stay out of MemTotal. With memmap_on_memory
/// a block's first device block holds its struct pages.
#[test]
fn virtio_mem_follows_requests_in_device_blocks() {
    for memmap_on_memory in ["N", "Y"] {
        let mut r = Rig::boot(&format!("subblocks-{memmap_on_memory}"), "");
        ok(
            &mut r.q,
            &format!(
                "echo {memmap_on_memory} > /sys/module/memory_hotplug/parameters/memmap_on_memory"
            ),
        );
        let (base_text, base) = meminfo(&mut r.q);
        let struct_pages = |blocks: u64| kb(blocks * BLOCK / 64);
        // (requested MiB, memory blocks added)
        for (mib, blocks) in [(300, 3), (100, 1), (130, 2), (2, 1), (0, 0)] {
            r.request(mib * MIB);
            r.wait_plugged(mib * MIB, FOLLOW);
            r.wait_report(mib, mib);
            let (_, now) = meminfo(&mut r.q);
            let tables = table_growth(&mut r.q, &base, &now, "device blocks");
            let (total, vmemmap, altmap) = if memmap_on_memory == "Y" {
                // The first 2 MiB of each block are its struct pages.
                (
                    kb(mib * MIB) - struct_pages(blocks),
                    0,
                    struct_pages(blocks),
                )
            } else {
                (kb(mib * MIB), struct_pages(blocks), 0)
            };
            r.q.expect_meminfo_deltas(
                &base,
                &now,
                &[
                    ("MemTotal", total),
                    ("Vmemmap", vmemmap),
                    ("VmemmapAltmap", altmap),
                    ("MemFree", total - vmemmap - tables),
                ],
                &format!("requested {mib} MiB, memmap_on_memory={memmap_on_memory}"),
            );
            let iomem = read(&mut r.q, "/proc/iomem");
            let added = iomem.lines().filter(|l| l.ends_with(RESOURCE)).count() as u64;
            if added != blocks {
                r.q.fail(&format!(
                    "{mib} MiB: {added} virtio-mem blocks in /proc/iomem, want {blocks}"
                ));
            }
        }
        let (text, _) = meminfo(&mut r.q);
        if text != base_text {
            r.q.fail(&format!("meminfo after 0 MiB:\n{text}\nwant\n{base_text}"));
        }
        vmstat_warnings(&mut r.q, "after device-block requests");
        r.poweroff();
    }
}

// ---------------------------------------------------------------------------
// virtio-mem: several devices, small device blocks, user actions, random
// sequences (issue 9)

/// `virtio_mem ADDR: region A-B, ...` lines of dmesg: (log prefix, A, B + 1).
fn vm_regions(q: &mut Qemu) -> Vec<(String, u64, u64)> {
    let dmesg = ok(q, "dmesg");
    let mut found = Vec::new();
    for line in q.parse_dmesg(&dmesg) {
        let Some((prefix, rest)) = line.split_once(": region 0x") else {
            continue;
        };
        let range = rest.split_once(", ").and_then(|(r, _)| r.split_once("-0x"));
        let parsed = range.and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()? + 1,
            ))
        });
        if let (Some((a, b)), true) = (parsed, prefix.starts_with("virtio_mem ")) {
            found.push((format!("{prefix}: "), a, b));
        }
    }
    found
}

fn delta_kb(q: &mut Qemu, base: &BTreeMap<String, u64>, field: &str) -> i64 {
    let (_, now) = meminfo(q);
    q.meminfo_field(&now, field) as i64 - q.meminfo_field(base, field) as i64
}

#[track_caller]
fn expect_memtotal(r: &mut Rig, base: &BTreeMap<String, u64>, bytes: u64, when: &str) {
    let got = delta_kb(&mut r.q, base, "MemTotal");
    if got != kb(bytes) {
        r.q.fail(&format!(
            "{when}: MemTotal grew by {got} kB, want {} kB",
            kb(bytes)
        ));
    }
}

impl Rig {
    /// Waits (without consuming, so that reports of several devices may
    /// come in any order) for the report `prefix plugged X MiB of Y MiB
    /// requested` in the log from byte `mark` on.
    #[track_caller]
    fn wait_logged(&mut self, mark: usize, prefix: &str, plugged: u64, requested: u64) {
        let pat = format!("{prefix}plugged {plugged} MiB of {requested} MiB requested");
        let t0 = Instant::now();
        while !self.q.log()[mark..].contains(&pat) {
            if t0.elapsed() > FOLLOW {
                self.q.fail(&format!("no {pat:?} after {FOLLOW:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Three devices, each with its own region, state and interrupt: 64 MiB
/// (no whole memory block: said once, nothing plugged), 1 GiB (a region
/// not aligned to the memory block: first block rounded up, last down)
/// and 512 MiB; resized at the same time and one by one.
#[test]
fn several_virtio_mem_devices_resize_independently() {
    let vms = [("vm0", "64M", ""), ("vm1", "1G", ""), ("vm2", "512M", "")];
    let mut r = Rig::boot_with("multi", "", &vms, |o| o);
    let regions = vm_regions(&mut r.q);
    let by_size = |size: u64| regions.iter().find(|(_, a, b)| b - a == size).cloned();
    let (Some(d0), Some(d1), Some(d2)) = (by_size(64 * MIB), by_size(GIB), by_size(GIB / 2)) else {
        r.q.fail(&format!(
            "three virtio-mem regions expected, dmesg has {regions:?}"
        ));
    };
    if d1.1 % BLOCK == 0 {
        r.q.fail(&format!(
            "vm1's region {:#x} is aligned: nothing tested",
            d1.1
        ));
    }
    // Whole memory blocks of a region.
    let cap = |(_, a, b): &(String, u64, u64)| {
        (b / BLOCK * BLOCK).saturating_sub(a.div_ceil(BLOCK) * BLOCK)
    };
    let (cap1, cap2) = (cap(&d1), cap(&d2));
    let (base_text, base) = meminfo(&mut r.q);
    let base_iomem = read(&mut r.q, "/proc/iomem");

    // All three at once.
    let mark = r.q.log().len();
    r.request_of("vm0", 64 * MIB);
    r.request_of("vm1", 512 * MIB);
    r.request_of("vm2", 256 * MIB);
    r.wait_plugged_of("vm1", 512 * MIB, FOLLOW);
    r.wait_plugged_of("vm2", 256 * MIB, FOLLOW);
    r.wait_logged(mark, &d0.0, 0, 64);
    r.wait_logged(mark, &d1.0, 512, 512);
    r.wait_logged(mark, &d2.0, 256, 256);
    expect_memtotal(&mut r, &base, 768 * MIB, "vm1 512 MiB, vm2 256 MiB");
    let iomem = read(&mut r.q, "/proc/iomem");
    for line in iomem.lines().filter(|l| l.ends_with(RESOURCE)) {
        let start = u64::from_str_radix(line.split('-').next().unwrap_or(""), 16).unwrap_or(0);
        let inside =
            |(_, a, b): &(String, u64, u64)| start >= a.div_ceil(BLOCK) * BLOCK && start < *b;
        if start % BLOCK != 0 || !(inside(&d1) || inside(&d2)) {
            r.q.fail(&format!(
                "/proc/iomem: {line:?} outside the whole blocks of vm1, vm2"
            ));
        }
    }
    // More than vm1's whole blocks hold: all of them, and no retries.
    r.request_of("vm1", GIB);
    r.wait_plugged_of("vm1", cap1, FOLLOW);
    r.wait_logged(mark, &d1.0, cap1 >> 20, 1024);
    // vm2 down on its own.
    r.request_of("vm2", 0);
    r.wait_plugged_of("vm2", 0, FOLLOW);
    r.wait_logged(mark, &d2.0, 0, 0);
    expect_memtotal(&mut r, &base, cap1, "vm1 full, vm2 0");
    if r.vm_size_of("vm1").0 != cap1 || r.vm_size_of("vm0").0 != 0 {
        r.q.fail("QMP sizes changed on their own");
    }
    // Nothing is repeated: the 64 MiB device said once that it cannot
    // plug, vm1 reported once that it holds all it can.
    std::thread::sleep(Duration::from_millis(1500));
    let dmesg = ok(&mut r.q, "dmesg");
    for (what, n) in [
        (format!("{}the region holds no whole memory block", d0.0), 1),
        (format!("{}plugged 0 MiB of 64 MiB requested", d0.0), 1),
        (
            format!("{}plugged {} MiB of 1024 MiB requested", d1.0, cap1 >> 20),
            1,
        ),
    ] {
        if count(&dmesg, &what) != n {
            r.q.fail(&format!(
                "dmesg has {what:?} {} times, want {n}",
                count(&dmesg, &what)
            ));
        }
    }
    // vm2 grows while vm1 shrinks.
    let mark = r.q.log().len();
    r.request_of("vm2", cap2);
    r.request_of("vm1", 128 * MIB);
    r.wait_plugged_of("vm2", cap2, FOLLOW);
    r.wait_plugged_of("vm1", 128 * MIB, FOLLOW);
    r.wait_logged(mark, &d2.0, cap2 >> 20, cap2 >> 20);
    r.wait_logged(mark, &d1.0, 128, 128);
    expect_memtotal(&mut r, &base, cap2 + 128 * MIB, "vm1 128 MiB, vm2 full");
    let mark = r.q.log().len();
    for id in ["vm0", "vm1", "vm2"] {
        r.request_of(id, 0);
    }
    r.wait_plugged_of("vm1", 0, FOLLOW);
    r.wait_plugged_of("vm2", 0, FOLLOW);
    r.wait_logged(mark, &d1.0, 0, 0);
    r.wait_logged(mark, &d2.0, 0, 0);
    let (text, _) = meminfo(&mut r.q);
    let iomem = read(&mut r.q, "/proc/iomem");
    if text != base_text || iomem != base_iomem {
        r.q.fail(&format!(
            "at 0: meminfo\n{text}iomem\n{iomem}not\n{base_text}{base_iomem}"
        ));
    }
    vmstat_warnings(&mut r.q, "after three devices");
    r.poweroff();
}

/// `block-size=1M` with memmap_on_memory: a memory block's 2 MiB of struct
/// pages do not fit one device block, so they stay in system RAM (Linux's
/// sub-block mode); MemTotal follows the plugged size to the kB.
#[test]
fn virtio_mem_1m_device_blocks_with_memmap_on_memory() {
    let vms = [("vm0", "2G", ",block-size=1M")];
    let mut r = Rig::boot_with("1m", "", &vms, |o| {
        o.append("memory_hotplug.memmap_on_memory=1")
    });
    let dmesg = ok(&mut r.q, "dmesg");
    if !dmesg.contains(&format!(
        "{VM0}region 0x80000000-0xffffffff, device block size 0x100000\n"
    )) {
        r.q.fail("no 1 MiB device blocks in dmesg");
    }
    if read(
        &mut r.q,
        "/sys/module/memory_hotplug/parameters/memmap_on_memory",
    ) != "Y\n"
    {
        r.q.fail("memmap_on_memory is not on");
    }
    let (base_text, base) = meminfo(&mut r.q);
    // (requested MiB, memory blocks present)
    for (mib, blocks) in [(1, 1), (3, 1), (1, 1), (130, 2), (129, 2), (2, 1), (0, 0)] {
        r.request(mib * MIB);
        r.wait_plugged(mib * MIB, FOLLOW);
        r.wait_report(mib, mib);
        let (_, now) = meminfo(&mut r.q);
        let tables = table_growth(&mut r.q, &base, &now, "1 MiB device blocks");
        let memmap = kb(blocks * BLOCK / 64);
        r.q.expect_meminfo_deltas(
            &base,
            &now,
            &[
                ("MemTotal", kb(mib * MIB)),
                ("Vmemmap", memmap),
                ("VmemmapAltmap", 0),
                ("MemFree", kb(mib * MIB) - memmap - tables),
            ],
            &format!("requested {mib} MiB in 1 MiB device blocks"),
        );
        let vmemmap = read(&mut r.q, "/sys/kernel/debug/vmemmap");
        if vmemmap.contains("altmap") {
            r.q.fail(&format!("struct pages on device memory:\n{vmemmap}"));
        }
    }
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!("meminfo at 0:\n{text}want\n{base_text}"));
    }
    vmstat_warnings(&mut r.q, "after 1 MiB device blocks");
    r.poweroff();
}

/// A user offlines and onlines a partly plugged block between resizes:
/// only plugged memory ever comes online (issue 9: 64 MiB plugged, offline,
/// online_movable gives +64 MiB, not +128 MiB); the driver plugs into and
/// unplugs from the offline block without onlining it.
#[test]
fn virtio_mem_blocks_offlined_and_onlined_by_the_user() {
    let mut r = Rig::boot("user", "");
    let (base_text, base) = meminfo(&mut r.q);
    let m16 = "/sys/devices/system/memory/memory16";
    let m17 = "/sys/devices/system/memory/memory17";
    let resize = |r: &mut Rig, mib: u64| {
        r.request(mib * MIB);
        r.wait_plugged(mib * MIB, FOLLOW);
        r.wait_report(mib, mib);
    };
    resize(&mut r, 64);
    expect_memtotal(&mut r, &base, 64 * MIB, "64 MiB plugged");
    ok(&mut r.q, &format!("echo offline > {m16}/state"));
    expect_memtotal(&mut r, &base, 0, "64 MiB plugged, offline");
    ok(&mut r.q, &format!("echo online_movable > {m16}/state"));
    expect_memtotal(&mut r, &base, 64 * MIB, "offline then online_movable");
    resize(&mut r, 100);
    expect_memtotal(&mut r, &base, 100 * MIB, "100 MiB, onlined by the user");
    ok(&mut r.q, &format!("echo offline > {m16}/state"));
    // Unplug from and plug into the offline block.
    resize(&mut r, 40);
    expect_memtotal(&mut r, &base, 0, "40 MiB, offline");
    resize(&mut r, 90);
    expect_memtotal(&mut r, &base, 0, "90 MiB, offline");
    if read(&mut r.q, &format!("{m16}/state")) != "offline\n" {
        r.q.fail("the driver onlined a block the user offlined");
    }
    ok(&mut r.q, &format!("echo 1 > {m16}/online"));
    expect_memtotal(&mut r, &base, 90 * MIB, "90 MiB, echo 1 > online");
    resize(&mut r, 200);
    expect_memtotal(&mut r, &base, 200 * MIB, "200 MiB");
    ok(&mut r.q, &format!("echo 0 > {m17}/online"));
    expect_memtotal(&mut r, &base, 128 * MIB, "200 MiB, memory17 offline");
    refused(&mut r.q, &format!("echo 0x88000000 > {REMOVE}"), "EBUSY");
    ok(&mut r.q, &format!("echo online > {m17}/state"));
    expect_memtotal(&mut r, &base, 200 * MIB, "200 MiB, memory17 online");
    ok(&mut r.q, &format!("echo offline > {m17}/state"));
    resize(&mut r, 0);
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!("meminfo at 0:\n{text}want\n{base_text}"));
    }
    vmstat_warnings(&mut r.q, "after user actions");
    r.poweroff();
}

/// `memhp_default_state=` and `auto_online_blocks` decide where plugged
/// memory goes: Normal at boot's word, then offline, then Movable, as the
/// file is written; a bad word changes nothing.
#[test]
fn virtio_mem_follows_auto_online_blocks() {
    let mut r = Rig::boot_with("auto-online", "", &[("vm0", "2G", "")], |o| {
        o.append("memhp_default_state=online_kernel")
    });
    let auto = "/sys/devices/system/memory/auto_online_blocks";
    let mem = |id: u64, f: &str| format!("/sys/devices/system/memory/memory{id}/{f}");
    if read(&mut r.q, auto) != "online_kernel\n" {
        r.q.fail("memhp_default_state=online_kernel not in auto_online_blocks");
    }
    let (_, base) = meminfo(&mut r.q);
    let resize = |r: &mut Rig, mib: u64| {
        r.request(mib * MIB);
        r.wait_plugged(mib * MIB, FOLLOW);
        r.wait_report(mib, mib);
    };
    // (auto_online_blocks, plugged MiB after, the new block, its
    // state and valid_zones, MemTotal growth in MiB)
    let steps = [
        (None, 128, 16, "online\n", "Normal\n", 128),
        (
            Some("offline"),
            256,
            17,
            "offline\n",
            "Normal Movable\n",
            128,
        ),
        (
            Some("online_movable"),
            384,
            18,
            "online\n",
            "Movable\n",
            256,
        ),
    ];
    for (word, mib, id, state, zones, total) in steps {
        if let Some(w) = word {
            ok(&mut r.q, &format!("echo {w} > {auto}"));
            if read(&mut r.q, auto) != format!("{w}\n") {
                r.q.fail(&format!("auto_online_blocks is not {w}"));
            }
        }
        resize(&mut r, mib);
        let got = (
            read(&mut r.q, &mem(id, "state")),
            read(&mut r.q, &mem(id, "valid_zones")),
        );
        if got != (state.to_string(), zones.to_string()) {
            r.q.fail(&format!(
                "memory{id} after {word:?}: {got:?}, want {state:?} {zones:?}"
            ));
        }
        expect_memtotal(&mut r, &base, total * MIB, &format!("{mib} MiB plugged"));
    }
    refused(&mut r.q, &format!("echo movable > {auto}"), "EINVAL");
    if read(&mut r.q, auto) != "online_movable\n" {
        r.q.fail("a refused write changed auto_online_blocks");
    }
    r.poweroff();
}

/// A seeded random walk of 2 MiB-step sizes with pins and unpins, on two
/// CPUs: after each step MemTotal is boot memory plus what QMP says is
/// plugged; it ends exactly at the start. `HPK_SEED` picks the walk.
#[test]
fn virtio_mem_random_sizes_with_pins_on_two_cpus() {
    let seed: u64 = std::env::var("HPK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234);
    eprintln!("virtio_mem random walk: HPK_SEED={seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut r = Rig::boot_with("random", "", &[("vm0", "2G", "")], |o| o.smp(2));
    let (base_text, base) = meminfo(&mut r.q);
    let (mut requested, mut pinned) = (0u64, false);
    for step in 0..24 {
        let what = match next() % 6 {
            0 if !pinned => {
                ok(&mut r.q, "pin 16M");
                pinned = true;
                "pin".to_string()
            }
            1 if pinned => {
                ok(&mut r.q, "unpin");
                pinned = false;
                // The retry timer takes back what the pins held.
                r.wait_plugged(requested, FOLLOW);
                "unpin".to_string()
            }
            _ => {
                let mut size = requested;
                while size == requested {
                    size = next() % 257 * 2 * MIB;
                }
                let (before, _) = r.vm_size();
                r.request(size);
                requested = size;
                if pinned && size < before {
                    // Pinned memory may stay plugged: wait for the report.
                    r.q.wait_for(&format!(" MiB of {} MiB requested", size >> 20), FOLLOW);
                } else {
                    r.wait_plugged(size, FOLLOW);
                }
                format!("{} MiB", size >> 20)
            }
        };
        let (plugged, _) = r.vm_size();
        if !pinned && plugged != requested {
            r.q.fail(&format!(
                "step {step} ({what}): QMP size {plugged:#x}, requested {requested:#x}"
            ));
        }
        expect_memtotal(
            &mut r,
            &base,
            plugged,
            &format!("step {step} ({what}), seed {seed}"),
        );
    }
    if pinned {
        ok(&mut r.q, "unpin");
    }
    r.request(0);
    r.wait_plugged(0, FOLLOW);
    r.wait_report(0, 0);
    let (text, _) = meminfo(&mut r.q);
    if text != base_text {
        r.q.fail(&format!(
            "meminfo at the end (seed {seed}):\n{text}want\n{base_text}"
        ));
    }
    vmstat_warnings(&mut r.q, "after the random walk");
    r.poweroff();
}
