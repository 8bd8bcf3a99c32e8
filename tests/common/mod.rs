//! A harness that boots the kernel on QEMU and drives its serial console
//! (`console.md`): one [`Qemu`] per test, talking over `-serial stdio`.
//!
//! ```ignore
//! let mut q = Qemu::boot(Opts::new().mem("1G"));
//! assert_eq!(q.read("/sys/devices/system/cpu/online"), "0\n");
//! q.run_err("cat /nope", "ENOENT");
//! q.poweroff();
//! ```
//!
//! Every wait is bounded; a timeout or any failed expectation panics with
//! the whole console log so far (and QEMU's stderr). Dropping a [`Qemu`]
//! kills and reaps the process. At most [`MAX_QEMUS`] instances run at
//! once, whatever the number of test threads.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bound on every wait.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// QEMU instances allowed to run at the same time (the machine has 2 cores).
pub const MAX_QEMUS: usize = 2;

/// The console's prompt, printed at the start of a line when it is ready.
pub const PROMPT: &str = "# ";

/// How to start QEMU. Defaults: `-machine virt -cpu cortex-a72 -m 1G -smp 1`.
#[derive(Clone, Debug)]
pub struct Opts {
    pub cpu: String,
    pub mem: String,
    /// Appended to `virt`, e.g. `",gic-version=3"`, `",virtualization=on"`.
    pub machine: String,
    pub smp: u32,
    /// The kernel command line (`-append`).
    pub append: Option<String>,
    /// Further QEMU arguments.
    pub extra: Vec<String>,
    /// Bound on each wait (boot, each command, exit).
    pub timeout: Duration,
    /// The kernel to boot; `None`: [`kernel_elf`].
    pub kernel: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            cpu: "cortex-a72".into(),
            mem: "1G".into(),
            machine: String::new(),
            smp: 1,
            append: None,
            extra: Vec::new(),
            timeout: TIMEOUT,
            kernel: None,
        }
    }
}

impl Opts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Boots `elf` instead of the default kernel.
    pub fn kernel(mut self, elf: PathBuf) -> Self {
        assert!(
            elf.is_file(),
            "kernel ELF {} not found: scripts/test builds it",
            elf.display()
        );
        self.kernel = Some(elf);
        self
    }

    pub fn cpu(mut self, cpu: &str) -> Self {
        self.cpu = cpu.into();
        self
    }

    pub fn mem(mut self, mem: &str) -> Self {
        self.mem = mem.into();
        self
    }

    /// Machine options after `virt`: `",gic-version=3"`. A missing leading
    /// comma is added.
    pub fn machine(mut self, suffix: &str) -> Self {
        self.machine = if suffix.is_empty() || suffix.starts_with(',') {
            suffix.into()
        } else {
            format!(",{suffix}")
        };
        self
    }

    pub fn smp(mut self, smp: u32) -> Self {
        self.smp = smp;
        self
    }

    pub fn append(mut self, cmdline: &str) -> Self {
        self.append = Some(cmdline.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.into());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `cortex-a72 1G virt,gic-version=3 smp=1`, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} virt{} smp={}",
            self.cpu, self.mem, self.machine, self.smp
        );
        if let Some(a) = &self.append {
            let _ = write!(s, " append={a:?}");
        }
        for e in &self.extra {
            let _ = write!(s, " {e}");
        }
        s
    }
}

/// The `/proc/vmstat` counters that report misuse; they must stay 0.
pub const MISUSE_COUNTERS: [&str; 4] = [
    "altmap_without_free_mapped",
    "hotplug_reserved_page_free",
    "altmap_bad_free",
    "buddy_bad_free",
];

/// The kernel built for `granule` (`4k`, `16k`, `64k`) by `scripts/test`;
/// 4K is the default build.
pub fn granule_kernel(granule: &str) -> PathBuf {
    if granule == "4k" {
        return kernel_elf();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/granule-{granule}/aarch64-unknown-none-softfloat/release/kernel"
    ))
}

// ---------------------------------------------------------------------------
// Granule selection: `HPK_GRANULE`.

/// The translation granule the console tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    K4,
    K16,
    K64,
}

impl Granule {
    /// `4k`, `16k` or `64k`, as in `target/granule-*` and `HPK_GRANULE`.
    pub fn name(self) -> &'static str {
        match self {
            Granule::K4 => "4k",
            Granule::K16 => "16k",
            Granule::K64 => "64k",
        }
    }

    /// `4K`, `16K` or `64K`, as in the boot banner.
    pub fn label(self) -> &'static str {
        match self {
            Granule::K4 => "4K",
            Granule::K16 => "16K",
            Granule::K64 => "64K",
        }
    }

    pub fn page_shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    pub fn page_size(self) -> u64 {
        1 << self.page_shift()
    }

    /// The memory block (and section) size: 128 MiB, 512 MiB with 64K.
    pub fn block_size(self) -> u64 {
        match self {
            Granule::K4 | Granule::K16 => 128 << 20,
            Granule::K64 => 512 << 20,
        }
    }

    /// Translation levels of the 48-bit VA: 4, or 3 with 64K.
    pub fn levels(self) -> u32 {
        match self {
            Granule::K4 | Granule::K16 => 4,
            Granule::K64 => 3,
        }
    }

    /// The size a PMD (level 2) block maps: 2 MiB, 32 MiB, 512 MiB.
    pub fn pmd_block_size(self) -> u64 {
        1 << (2 * self.page_shift() - 3)
    }

    /// Start of the vmemmap: Linux's `VMEMMAP_START` for 48-bit VA and
    /// 64-byte struct pages, `-(1 << (48 - (PAGE_SHIFT - 6)))`.
    pub fn vmemmap_start(self) -> u64 {
        0u64.wrapping_sub(1 << (48 - (self.page_shift() - 6)))
    }
}

/// The granule selected by `HPK_GRANULE`: unset, empty or `4k` is 4K (the
/// kernel of [`kernel_elf`], CPUs as each test asks); `16k` and `64k` boot
/// [`granule_kernel`] with `-cpu max` whatever the test asked for.
pub fn granule() -> Granule {
    match std::env::var("HPK_GRANULE").as_deref() {
        Err(_) | Ok("") | Ok("4k") => Granule::K4,
        Ok("16k") => Granule::K16,
        Ok("64k") => Granule::K64,
        Ok(other) => panic!("HPK_GRANULE={other:?}: want 4k, 16k or 64k"),
    }
}

/// The selected granule's page size in bytes.
pub fn page_size() -> u64 {
    granule().page_size()
}

/// The selected granule's memory block size in bytes
/// (`block_size_bytes`).
pub fn block_size() -> u64 {
    granule().block_size()
}

/// One memory block, in kB.
pub fn block_kb() -> u64 {
    block_size() >> 10
}

/// The struct pages (64 bytes a page) of `bytes` of memory, in kB.
pub fn struct_pages_kb(bytes: u64) -> u64 {
    bytes / page_size() * 64 / 1024
}

/// The struct pages of one memory block, in kB: 2048 (4K), 512 (16K),
/// 512 (64K: 8192 pages in 512 MiB).
pub fn struct_pages_per_block_kb() -> u64 {
    struct_pages_kb(block_size())
}

/// The memory block holding physical address `addr`.
pub fn block_id(addr: u64) -> u64 {
    addr / block_size()
}

/// Where QEMU virt's RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;

/// The memory blocks of boot RAM `[RAM_BASE, RAM_BASE + bytes)`: 8..16 for
/// 1 GiB with 128 MiB blocks, 2..4 with 512 MiB blocks.
pub fn boot_blocks(bytes: u64) -> std::ops::Range<u64> {
    block_id(RAM_BASE)..block_id(RAM_BASE + bytes)
}

/// The virtual address of the struct page of `pfn`.
pub fn vmemmap_va(pfn: u64) -> u64 {
    granule().vmemmap_start() + pfn * 64
}

/// The kernel ELF: `$KERNEL_ELF`, else the release build in this tree.
pub fn kernel_elf() -> PathBuf {
    let path = match std::env::var_os("KERNEL_ELF") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/aarch64-unknown-none-softfloat/release/kernel"),
    };
    assert!(
        path.is_file(),
        "kernel ELF {} not found: build it with `cargo build --release` or set KERNEL_ELF",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------
// A counting semaphore bounding the QEMUs that run at once.

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

struct Permit;

impl Permit {
    fn acquire() -> Permit {
        let mut used = lock(&SLOTS);
        while *used >= MAX_QEMUS {
            used = SLOT_FREED.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *lock(&SLOTS) -= 1;
        SLOT_FREED.notify_one();
    }
}

/// Locks, ignoring poisoning (a panicking test must not take others down).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Output collection.

#[derive(Default)]
struct Output {
    /// Everything QEMU wrote to stdout, with "\r\n" turned into "\n".
    buf: Vec<u8>,
    /// A '\r' just read, not yet known to start "\r\n".
    pending_cr: bool,
    /// stdout reached end of file (QEMU exited or closed it).
    eof: bool,
}

#[derive(Default)]
struct Shared {
    out: Mutex<Output>,
    grew: Condvar,
}

fn reader(mut from: impl Read, shared: Arc<Shared>) {
    let mut chunk = [0u8; 4096];
    loop {
        let n = from.read(&mut chunk).unwrap_or(0);
        let mut out = lock(&shared.out);
        if n == 0 {
            if out.pending_cr {
                out.buf.push(b'\r');
                out.pending_cr = false;
            }
            out.eof = true;
            drop(out);
            shared.grew.notify_all();
            return;
        }
        for &b in &chunk[..n] {
            if out.pending_cr {
                out.pending_cr = false;
                if b != b'\n' {
                    out.buf.push(b'\r');
                }
            }
            if b == b'\r' {
                out.pending_cr = true;
            } else {
                out.buf.push(b);
            }
        }
        drop(out);
        shared.grew.notify_all();
    }
}

fn collect(mut from: impl Read, into: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = from.read(&mut chunk) {
        if n == 0 {
            break;
        }
        lock(&into).extend_from_slice(&chunk[..n]);
    }
}

/// Position of the first prompt at the start of a line in `buf[from..]`
/// (the start of `buf` counts as a line start).
fn find_prompt(buf: &[u8], from: usize) -> Option<usize> {
    let p = PROMPT.as_bytes();
    (from..buf.len().saturating_sub(p.len() - 1))
        .find(|&i| buf[i..].starts_with(p) && (i == 0 || buf[i - 1] == b'\n'))
}

fn find_bytes(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from.min(hay.len()));
    }
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

// ---------------------------------------------------------------------------

/// A running QEMU with the kernel's console on its stdio.
pub struct Qemu {
    opts: Opts,
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
    /// Output before this offset (in the normalised buffer) has been consumed.
    pos: usize,
    status: Option<ExitStatus>,
    started: Instant,
    _permit: Permit,
}

impl Qemu {
    /// Starts QEMU and waits for the first prompt.
    /// With `HPK_GRANULE` `16k` or `64k` and the harness choosing the
    /// kernel, the boot banner must name that granule.
    pub fn boot(opts: Opts) -> Qemu {
        let check_granule = granule() != Granule::K4 && opts.kernel.is_none();
        let mut q = Qemu::spawn(opts);
        q.wait_prompt();
        if check_granule {
            let banner = format!(
                "Booting hotplug-kernel on QEMU virt ({} granule, 48-bit VA)",
                granule().label()
            );
            if !q.log().contains(&banner) {
                q.fail(&format!("HPK_GRANULE={}: no {banner:?}", granule().name()));
            }
        }
        q
    }

    /// Boots the reference configuration (cortex-a72, 1G).
    pub fn boot_default() -> Qemu {
        Qemu::boot(Opts::default())
    }

    /// Starts QEMU without waiting for anything. With `HPK_GRANULE` `16k`
    /// or `64k`, a test that names no kernel boots that granule's kernel,
    /// and every QEMU gets `-cpu max`.
    pub fn spawn(mut opts: Opts) -> Qemu {
        let g = granule();
        if g != Granule::K4 {
            opts.cpu = "max".into();
            if opts.kernel.is_none() {
                opts = opts.kernel(granule_kernel(g.name()));
            }
        }
        let elf = opts.kernel.clone().unwrap_or_else(kernel_elf);
        let permit = Permit::acquire();
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.arg("-machine")
            .arg(format!("virt{}", opts.machine))
            .args(["-cpu", &opts.cpu, "-m", &opts.mem])
            .args(["-smp", &opts.smp.to_string()])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(&elf);
        if let Some(a) = &opts.append {
            cmd.args(["-append", a]);
        }
        cmd.args(&opts.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-aarch64 ({cmd:?}): {e}"));
        let shared = Arc::new(Shared::default());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let errpipe = child.stderr.take().expect("piped stderr");
        let threads = vec![
            {
                let shared = shared.clone();
                std::thread::spawn(move || reader(stdout, shared))
            },
            {
                let stderr = stderr.clone();
                std::thread::spawn(move || collect(errpipe, stderr))
            },
        ];
        Qemu {
            stdin: child.stdin.take(),
            opts,
            child,
            shared,
            stderr,
            threads,
            pos: 0,
            status: None,
            started: Instant::now(),
            _permit: permit,
        }
    }

    pub fn opts(&self) -> &Opts {
        &self.opts
    }

    /// The whole console output so far ("\r\n" normalised to "\n").
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared.out).buf).into_owned()
    }

    /// What QEMU wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Panics with `msg`, the configuration, the console log and stderr.
    #[track_caller]
    pub fn fail(&mut self, msg: &str) -> ! {
        let status = match self.status {
            Some(s) => format!("exited: {s}"),
            None => match self.child.try_wait() {
                Ok(Some(s)) => format!("exited: {s}"),
                _ => "running".to_string(),
            },
        };
        panic!(
            "{msg}\n\
             qemu: {} ({status}, {:.1?} since start)\n\
             ----- console log -----\n{}\n\
             ----- end of console log -----\n\
             ----- qemu stderr -----\n{}----- end of qemu stderr -----",
            self.opts.describe(),
            self.started.elapsed(),
            self.log(),
            self.stderr(),
        )
    }

    /// Waits (bounded) until `f` finds something in the output from the
    /// consumed position on; returns what it found. Fails on timeout or if
    /// QEMU's output ends first.
    #[track_caller]
    fn wait_until<R>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&[u8], usize) -> Option<R>,
    ) -> R {
        let deadline = Instant::now() + timeout;
        let shared = self.shared.clone();
        let mut out = lock(&shared.out);
        loop {
            if let Some(r) = f(&out.buf, self.pos) {
                return r;
            }
            if out.eof {
                drop(out);
                // Let QEMU finish exiting so the message has its status.
                let _ = self.wait_exit_quietly(Duration::from_secs(2));
                self.fail(&format!("QEMU's output ended while waiting for {what}"));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(out);
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            out = shared
                .grew
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for `pattern` in the output not consumed yet; returns the text
    /// from the consumed position up to and including it, and consumes it.
    #[track_caller]
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        let start = self.pos;
        let end = self.wait_until(&format!("{pattern:?}"), timeout, |buf, from| {
            find_bytes(buf, pattern.as_bytes(), from).map(|i| i + pattern.len())
        });
        self.pos = end;
        let out = lock(&self.shared.out);
        String::from_utf8_lossy(&out.buf[start..end]).into_owned()
    }

    /// Waits for the next prompt at the start of a line; returns the output
    /// before it and consumes both.
    #[track_caller]
    pub fn wait_prompt(&mut self) -> String {
        let timeout = self.opts.timeout;
        let start = self.pos;
        let at = self.wait_until(
            "the prompt \"# \" at the start of a line",
            timeout,
            find_prompt,
        );
        self.pos = at + PROMPT.len();
        let out = lock(&self.shared.out);
        String::from_utf8_lossy(&out.buf[start..at]).into_owned()
    }

    /// Writes raw bytes to the console.
    #[track_caller]
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let res = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(bytes).and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin closed")),
        };
        if let Err(e) = res {
            self.fail(&format!("cannot write {bytes:?} to QEMU: {e}"));
        }
    }

    /// Waits for the prompt that answers a line just sent; returns the
    /// output after the echoed line.
    #[track_caller]
    pub fn reply(&mut self) -> String {
        let seg = self.wait_prompt();
        match seg.split_once('\n') {
            Some((_echo, out)) => out.to_string(),
            None => self.fail(&format!("no line end in the answer {seg:?}")),
        }
    }

    /// Sends raw bytes, which must end a line, and returns the answer (the
    /// output after the echoed line, before the next prompt).
    #[track_caller]
    pub fn run_bytes(&mut self, bytes: &[u8]) -> String {
        self.send_bytes(bytes);
        self.reply()
    }

    /// Runs `cmd` (a line without its end); returns its output, without the
    /// echoed command line and the prompt.
    #[track_caller]
    pub fn run(&mut self, cmd: &str) -> String {
        if cmd.contains(['\n', '\r']) {
            self.fail(&format!("run() takes one line, not {cmd:?}"));
        }
        self.run_bytes(format!("{cmd}\n").as_bytes())
    }

    /// Runs `cmd`; fails if a line of its output starts with `error: `.
    #[track_caller]
    pub fn run_ok(&mut self, cmd: &str) -> String {
        let out = self.run(cmd);
        if out.lines().any(|l| l.starts_with("error: ")) {
            self.fail(&format!("`{cmd}` failed: {out:?}"));
        }
        out
    }

    /// Checks that `out` (a command's answer) is exactly one line
    /// `error: <errno>: <message>`; returns the message.
    #[track_caller]
    pub fn expect_error(&mut self, what: &str, out: &str, errno: &str) -> String {
        let prefix = format!("error: {errno}: ");
        let msg = out
            .strip_suffix('\n')
            .filter(|l| !l.contains('\n'))
            .and_then(|l| l.strip_prefix(&prefix))
            .filter(|m| !m.trim().is_empty());
        match msg {
            Some(m) => m.to_string(),
            None => self.fail(&format!(
                "{what}: expected exactly one line `{prefix}...`, got {out:?}"
            )),
        }
    }

    /// Runs `cmd`, which must fail with exactly one line
    /// `error: <errno>: ...`; returns the message after `<errno>: `.
    #[track_caller]
    pub fn run_err(&mut self, cmd: &str, errno: &str) -> String {
        let out = self.run(cmd);
        self.expect_error(&format!("`{cmd}`"), &out, errno)
    }

    /// `cat PATH`, which must succeed.
    #[track_caller]
    pub fn read(&mut self, path: &str) -> String {
        self.run_ok(&format!("cat {path}"))
    }

    /// `echo DATA > PATH`, which must succeed (and print nothing).
    #[track_caller]
    pub fn write(&mut self, path: &str, data: &str) {
        let out = self.run_ok(&format!("echo {data} > {path}"));
        if !out.is_empty() {
            self.fail(&format!("writing {data:?} to {path} printed {out:?}"));
        }
    }

    /// `/proc/meminfo` as name -> kB.
    #[track_caller]
    pub fn meminfo(&mut self) -> BTreeMap<String, u64> {
        let text = self.read("/proc/meminfo");
        self.parse_meminfo(&text)
    }

    /// `/proc/meminfo` text as name -> kB; a malformed line fails the test.
    #[track_caller]
    pub fn parse_meminfo(&mut self, text: &str) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let parsed = line.split_once(':').and_then(|(name, rest)| {
                let n = rest.trim().strip_suffix(" kB")?.trim().parse().ok()?;
                Some((name.to_string(), n))
            });
            match parsed {
                Some((name, n)) => {
                    map.insert(name, n);
                }
                None => self.fail(&format!("bad /proc/meminfo line {line:?} in\n{text}")),
            }
        }
        map
    }

    /// Field `name` of parsed `/proc/meminfo`, failing the test if absent.
    pub fn meminfo_field(&mut self, info: &BTreeMap<String, u64>, name: &str) -> u64 {
        match info.get(name) {
            Some(&v) => v,
            None => self.fail(&format!("no {name} in /proc/meminfo")),
        }
    }

    /// Fails unless each `(field, kB)` of `deltas` is exactly how far
    /// `/proc/meminfo` moved from `base` to `now`.
    pub fn expect_meminfo_deltas(
        &mut self,
        base: &BTreeMap<String, u64>,
        now: &BTreeMap<String, u64>,
        deltas: &[(&str, i64)],
        when: &str,
    ) {
        for &(name, d) in deltas {
            let (Some(&b), Some(&n)) = (base.get(name), now.get(name)) else {
                self.fail(&format!("{when}: no {name} in /proc/meminfo"));
            };
            if n as i64 - b as i64 != d {
                self.fail(&format!(
                    "{when}: {name} went from {b} kB to {n} kB ({:+} kB), want {d:+} kB\n\
                     before: {base:?}\nnow: {now:?}",
                    n as i64 - b as i64
                ));
            }
        }
    }

    /// Fails unless every misuse counter in `/proc/vmstat` reads 0.
    #[track_caller]
    pub fn assert_no_misuse(&mut self, when: &str) {
        let text = self.read("/proc/vmstat");
        for name in MISUSE_COUNTERS {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok());
            if value != Some(0) {
                self.fail(&format!("/proc/vmstat {name} is {value:?} {when}"));
            }
        }
    }

    /// One `/proc/meminfo` value, in kB.
    #[track_caller]
    pub fn meminfo_kb(&mut self, name: &str) -> u64 {
        match self.meminfo().get(name) {
            Some(&v) => v,
            None => self.fail(&format!("no {name} in /proc/meminfo")),
        }
    }

    /// Whether QEMU has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn wait_exit_quietly(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                // Wait (bounded) for the reader to see the last output.
                let shared = self.shared.clone();
                let mut out = lock(&shared.out);
                while !out.eof && Instant::now() < deadline {
                    out = shared
                        .grew
                        .wait_timeout(out, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded by `timeout`) for QEMU to exit; returns its status.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit_quietly(timeout) {
            Some(s) => s,
            None => self.fail(&format!("QEMU did not exit within {timeout:?}")),
        }
    }

    /// `poweroff`: QEMU must exit with status 0 in time.
    #[track_caller]
    pub fn poweroff(mut self) {
        self.send_bytes(b"poweroff\n");
        let status = self.wait_exit(self.opts.timeout);
        if !status.success() {
            self.fail(&format!("poweroff: QEMU exited with {status}, not 0"));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        drop(self.stdin.take());
        // The pipes close with the process, so the threads end.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// QMP: a minimal client over QEMU's `-qmp unix:PATH,server=on,wait=off`.

/// A JSON value, as QMP sends it. Numbers keep their text.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses one JSON document (the whole of `text` but white space).
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing text at byte {} of {text:?}", p.i));
        }
        Ok(v)
    }

    /// Member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

/// Quotes `s` as a JSON string.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return Err("unexpected end of JSON".into());
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.ws();
                    let key = match self.value()? {
                        Json::Str(k) => k,
                        v => return Err(format!("object key {v:?} is not a string")),
                    };
                    self.ws();
                    if !self.eat(":") {
                        return Err(format!("no ':' at byte {}", self.i));
                    }
                    members.push((key, self.value()?));
                    self.ws();
                    if self.eat("}") {
                        return Ok(Json::Obj(members));
                    }
                    if !self.eat(",") {
                        return Err(format!("no ',' or '}}' at byte {}", self.i));
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    if self.eat("]") {
                        return Ok(Json::Arr(items));
                    }
                    if !self.eat(",") {
                        return Err(format!("no ',' or ']' at byte {}", self.i));
                    }
                }
            }
            b'"' => {
                self.i += 1;
                let mut bytes = Vec::new();
                loop {
                    let Some(&b) = self.s.get(self.i) else {
                        return Err("unterminated string".into());
                    };
                    self.i += 1;
                    match b {
                        b'"' => break,
                        b'\\' => {
                            let Some(&e) = self.s.get(self.i) else {
                                return Err("unterminated escape".into());
                            };
                            self.i += 1;
                            let c = match e {
                                b'n' => '\n',
                                b't' => '\t',
                                b'r' => '\r',
                                b'b' => '\u{8}',
                                b'f' => '\u{c}',
                                b'u' => {
                                    let hex = self
                                        .s
                                        .get(self.i..self.i + 4)
                                        .and_then(|h| std::str::from_utf8(h).ok())
                                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                                        .ok_or("bad \\u escape")?;
                                    self.i += 4;
                                    char::from_u32(hex).unwrap_or('\u{fffd}')
                                }
                                other => other as char,
                            };
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        b => bytes.push(b),
                    }
                }
                String::from_utf8(bytes)
                    .map(Json::Str)
                    .map_err(|e| e.to_string())
            }
            b't' if self.eat("true") => Ok(Json::Bool(true)),
            b'f' if self.eat("false") => Ok(Json::Bool(false)),
            b'n' if self.eat("null") => Ok(Json::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                {
                    self.i += 1;
                }
                Ok(Json::Num(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            other => Err(format!("unexpected {:?} at byte {}", other as char, self.i)),
        }
    }
}

/// A QMP connection (`-qmp unix:PATH,server=on,wait=off`). Events that come
/// between replies are kept in [`Qmp::events`].
pub struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    /// Asynchronous events received so far, in order.
    pub events: Vec<Json>,
}

impl Qmp {
    /// Connects (retrying until `timeout` while QEMU creates the socket),
    /// reads the greeting and negotiates capabilities.
    pub fn connect(path: &std::path::Path, timeout: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot connect to QMP at {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: std::io::BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP greeting expected, got {greeting:?}"));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Json, String> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => Json::parse(line.trim_end()).map_err(|e| format!("bad QMP message: {e}")),
            Err(e) => Err(format!("reading QMP: {e}")),
        }
    }

    /// Runs `command` with `arguments` (a JSON object's text, or `None`);
    /// returns the `return` value, or the `error` as text.
    pub fn execute(&mut self, command: &str, arguments: Option<&str>) -> Result<Json, String> {
        let mut msg = format!("{{\"execute\": {}", json_str(command));
        if let Some(a) = arguments {
            let _ = write!(msg, ", \"arguments\": {a}");
        }
        msg.push_str("}\n");
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| format!("writing QMP: {e}"))?;
        loop {
            let reply = self.read_message()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(format!("QMP {command}: {e:?}"));
            }
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            return Err(format!("unexpected QMP message {reply:?}"));
        }
    }

    /// `qom-set PATH PROPERTY VALUE`, VALUE being JSON text.
    pub fn qom_set(&mut self, path: &str, property: &str, value: &str) -> Result<(), String> {
        let args = format!(
            "{{\"path\": {}, \"property\": {}, \"value\": {value}}}",
            json_str(path),
            json_str(property)
        );
        self.execute("qom-set", Some(&args)).map(|_| ())
    }

    /// The `data` of the memory device `id` in `query-memory-devices`.
    pub fn memory_device(&mut self, id: &str) -> Result<Json, String> {
        let devices = self.execute("query-memory-devices", None)?;
        devices
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("data"))
            .find(|d| d.get("id").and_then(Json::as_str) == Some(id))
            .cloned()
            .ok_or_else(|| format!("no memory device {id:?} in {devices:?}"))
    }
}
