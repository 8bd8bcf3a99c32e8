//! Starting and bounding QEMU: [`Opts`] say how to start it, a [`Qemu`] owns
//! the process, reader threads collect its stdout and stderr, and every wait
//! on the output is bounded. At most [`MAX_QEMUS`] run at once.

use super::granule::{granule, granule_kernel, kernel_elf, Granule};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bound on every wait.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// QEMU instances allowed to run at the same time (the machine has 2 cores).
pub const MAX_QEMUS: usize = 2;

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

/// Position of the first `needle` in `hay[from..]`, as an index into `hay`.
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

    /// Waits (bounded) until `find` locates a match (a byte range) in the
    /// output from the consumed position on; returns the text before the
    /// match and consumes both.
    #[track_caller]
    pub(super) fn consume_until(
        &mut self,
        what: &str,
        timeout: Duration,
        find: impl FnMut(&[u8], usize) -> Option<Range<usize>>,
    ) -> String {
        let start = self.pos;
        let found = self.wait_until(what, timeout, find);
        self.pos = found.end;
        let out = lock(&self.shared.out);
        String::from_utf8_lossy(&out.buf[start..found.start]).into_owned()
    }

    /// Waits for `pattern` in the output not consumed yet; returns the text
    /// from the consumed position up to and including it, and consumes it.
    #[track_caller]
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        let before = self.consume_until(&format!("{pattern:?}"), timeout, |buf, from| {
            find_bytes(buf, pattern.as_bytes(), from).map(|i| i..i + pattern.len())
        });
        before + pattern
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
