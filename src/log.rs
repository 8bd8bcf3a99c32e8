//! The kernel log: a ring buffer read by `dmesg`, each line stamped with
//! Linux's `[    0.123456]` time since boot, and echoed (unstamped) to the
//! console once one is registered, for levels below `loglevel=` as Linux
//! does. The `log` facade lands here too, so messages of every crate
//! (virtio-drivers' included) reach `dmesg`.

use core::fmt::{self, Write};
use spin::Mutex;

const LOG_SIZE: usize = 64 * 1024;

struct Ring {
    buf: [u8; LOG_SIZE],
    /// Total bytes ever written; the buffer holds the last LOG_SIZE.
    written: usize,
}

static LOG: Mutex<Ring> = Mutex::new(Ring {
    buf: [0; LOG_SIZE],
    written: 0,
});
static SINK: Mutex<Option<fn(&str)>> = Mutex::new(None);
/// Linux's `console_loglevel`: lines of a lower level are echoed.
static LEVEL: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(7);
/// Time since boot in microseconds, once init provides a clock.
static CLOCK: Mutex<Option<fn() -> u64>> = Mutex::new(None);

impl Write for Ring {
    /// In at most two copies (the end of the buffer, then its start): a
    /// line is logged inside hotplug, where a byte at a time showed.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            let at = self.written % LOG_SIZE;
            let n = bytes.len().min(LOG_SIZE - at);
            self.buf[at..at + n].copy_from_slice(&bytes[..n]);
            self.written += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// Linux's `[    0.123456] ` for `us` microseconds, without `core::fmt`'s
/// padding machinery (a third of a short line's cost).
fn stamp(us: u64, out: &mut [u8; 32]) -> &str {
    let mut i = out.len();
    let mut put = |b: u8, i: &mut usize| {
        *i -= 1;
        out[*i] = b;
    };
    put(b' ', &mut i);
    put(b']', &mut i);
    let (mut secs, mut frac) = (us / 1_000_000, us % 1_000_000);
    for _ in 0..6 {
        put(b'0' + (frac % 10) as u8, &mut i);
        frac /= 10;
    }
    put(b'.', &mut i);
    let mut digits = 0;
    loop {
        put(b'0' + (secs % 10) as u8, &mut i);
        secs /= 10;
        digits += 1;
        if secs == 0 {
            break;
        }
    }
    while digits < 5 {
        put(b' ', &mut i);
        digits += 1;
    }
    put(b'[', &mut i);
    // Only ASCII digits, spaces and brackets were written.
    core::str::from_utf8(&out[i..]).unwrap_or("")
}

/// Where log lines are echoed as they are written (the console).
pub fn set_sink(sink: fn(&str)) {
    *SINK.lock() = Some(sink);
}

/// Lines of `level` and above (Linux's `loglevel=`) are kept but not
/// echoed. `log`'s trace messages are recorded only from `loglevel=9` on.
pub fn set_console_level(level: u8) {
    LEVEL.store(level, core::sync::atomic::Ordering::Relaxed);
    log::set_max_level(if level > TRACE {
        log::LevelFilter::Trace
    } else {
        log::LevelFilter::Debug
    });
}

/// The clock that stamps lines: microseconds since boot.
pub fn set_clock(us_since_boot: fn() -> u64) {
    *CLOCK.lock() = Some(us_since_boot);
}

/// Linux's levels for `log`'s (trace has none there: one past debug).
const TRACE: u8 = 8;

fn level_of(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug => 7,
        log::Level::Trace => TRACE,
    }
}

struct KernelLogger;

impl log::Log for KernelLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let target = record.target();
        let module = target.split("::").next().unwrap_or(target);
        log(
            level_of(record.level()),
            format_args!("{module}: {}", record.args()),
        );
    }

    fn flush(&self) {}
}

static LOGGER: KernelLogger = KernelLogger;

/// Makes the ring the `log` facade's logger (once; later calls do nothing).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

pub fn log(level: u8, args: fmt::Arguments) {
    emit(level, |out| {
        let _ = out.write_fmt(args);
    });
}

/// Logs a line built by [`LineBuf`], which skips `core::fmt`.
pub fn log_line(level: u8, line: &LineBuf) {
    emit(level, |out| {
        let _ = out.write_str(line.as_str());
    });
}

/// Stamps a line, lets `body` write it, ends it, echoing if `level` is.
fn emit(level: u8, body: impl FnOnce(&mut dyn Write)) {
    struct Line<'a>(&'a mut Ring, Option<fn(&str)>);
    impl Write for Line<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if let Some(sink) = self.1 {
                sink(s);
            }
            self.0.write_str(s)
        }
    }
    let echo = level < LEVEL.load(core::sync::atomic::Ordering::Relaxed);
    let sink = if echo { *SINK.lock() } else { None };
    let us = CLOCK.lock().map_or(0, |clock| clock());
    let mut ring = LOG.lock();
    let _ = ring.write_str(stamp(us, &mut [0; 32]));
    let mut line = Line(&mut ring, sink);
    body(&mut line);
    let _ = line.write_str("\n");
}

/// A log line of strings and numbers written without `core::fmt`: the
/// lines hotplug logs on every add and remove, where formatting two
/// addresses cost 1.5 us, as much as the rest of adding 1 GiB on 64K.
/// What does not fit is cut off.
pub struct LineBuf {
    buf: [u8; 120],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuf {
    pub const fn new() -> Self {
        Self {
            buf: [0; 120],
            len: 0,
        }
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes());
        self
    }

    /// `n` as `{}` writes it.
    pub fn dec(&mut self, mut n: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&tmp[i..]);
        self
    }

    /// `n` as `{:#x}` writes it.
    pub fn hex(&mut self, n: u64) -> &mut Self {
        let mut tmp = *b"0x0000000000000000";
        let digits = (16 - n.leading_zeros() as usize / 4).max(1);
        for (i, d) in tmp[2..2 + digits].iter_mut().rev().enumerate() {
            *d = b"0123456789abcdef"[(n >> (4 * i)) as usize & 0xf];
        }
        self.bytes(&tmp[..2 + digits]);
        self
    }

    fn bytes(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    pub fn as_str(&self) -> &str {
        // A `str` cut off mid-character loses that character.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// Calls `f` with the retained log, oldest first, in at most two pieces.
pub fn for_each_chunk(mut f: impl FnMut(&[u8])) {
    let ring = LOG.lock();
    if ring.written <= LOG_SIZE {
        f(&ring.buf[..ring.written]);
    } else {
        let at = ring.written % LOG_SIZE;
        f(&ring.buf[at..]);
        f(&ring.buf[..at]);
    }
}

#[macro_export]
macro_rules! pr_info {
    ($($arg:tt)*) => { $crate::log::log(6, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! pr_warn {
    ($($arg:tt)*) => { $crate::log::log(4, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! pr_err {
    ($($arg:tt)*) => { $crate::log::log(3, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn ring_text() -> String {
        let mut text = String::new();
        for_each_chunk(|b| text.push_str(&String::from_utf8_lossy(b)));
        text
    }

    /// The line of the ring that ends with `msg`.
    fn line_with(msg: &str) -> Option<String> {
        ring_text()
            .lines()
            .find(|l| l.ends_with(msg))
            .map(String::from)
    }

    #[test]
    fn every_log_level_reaches_the_ring_with_a_timestamp() {
        init();
        set_clock(|| 12_345_678);
        log::set_max_level(log::LevelFilter::Trace);
        let stamped = |msg: &str| {
            let line = line_with(msg).unwrap_or_else(|| panic!("{msg:?} not in the ring"));
            assert!(line.starts_with("[   12.345678] "), "{line:?}");
            // `log` records carry their crate's name, as Linux's pr_fmt does.
            if msg.contains(" pr_") {
                assert!(line.ends_with(&alloc::format!("] {msg}")), "{line:?}");
            } else {
                assert!(line.ends_with(&alloc::format!("] hpk: {msg}")), "{line:?}");
            }
        };
        log::error!("ring test error 4c1");
        stamped("ring test error 4c1");
        log::warn!("ring test warn 4c1");
        stamped("ring test warn 4c1");
        log::info!("ring test info 4c1");
        stamped("ring test info 4c1");
        log::debug!("ring test debug 4c1");
        stamped("ring test debug 4c1");
        log::trace!("ring test trace 4c1");
        stamped("ring test trace 4c1");
        crate::pr_info!("ring test pr_info 4c1");
        stamped("ring test pr_info 4c1");
    }

    #[test]
    fn stamps_are_linux_format() {
        for us in [
            0,
            5,
            999_999,
            1_000_000,
            12_345_678,
            99_999_999_999,
            123_456_789_012_345,
            u64::MAX,
        ] {
            let want = alloc::format!("[{:5}.{:06}] ", us / 1_000_000, us % 1_000_000);
            assert_eq!(stamp(us, &mut [0; 32]), want);
        }
    }

    #[test]
    fn the_ring_wraps_in_place() {
        let mut ring = Ring {
            buf: [0; LOG_SIZE],
            written: LOG_SIZE - 3,
        };
        ring.write_str("abcdef").unwrap();
        assert_eq!(ring.written, LOG_SIZE + 3);
        assert_eq!(&ring.buf[LOG_SIZE - 3..], b"abc");
        assert_eq!(&ring.buf[..3], b"def");
        let long = "x".repeat(LOG_SIZE + 5);
        ring.write_str(&long).unwrap();
        assert!(ring.buf.iter().all(|&b| b == b'x'));
        assert_eq!(ring.written, 2 * LOG_SIZE + 8);
    }

    #[test]
    fn a_line_buf_writes_as_core_fmt_does() {
        for n in [0, 1, 9, 10, 0xf, 0x10, 0x8000_0000, 1 << 40, u64::MAX] {
            let mut line = LineBuf::new();
            line.str("memory").dec(n).str(": ").hex(n);
            assert_eq!(line.as_str(), alloc::format!("memory{n}: {n:#x}"));
        }
        let mut cut = LineBuf::new();
        cut.str(&"é".repeat(100)).dec(12345);
        assert_eq!(cut.as_str(), "é".repeat(60));
        let mut full = LineBuf::new();
        full.str(&"x".repeat(118)).hex(0xabc);
        assert_eq!(full.as_str(), alloc::format!("{}0x", "x".repeat(118)));
        let mut line = LineBuf::new();
        line.str("line buf test ").hex(0x7b3);
        log_line(6, &line);
        assert!(line_with("] line buf test 0x7b3").is_some());
    }

    #[test]
    fn levels_map_to_linux() {
        assert_eq!(level_of(log::Level::Error), 3);
        assert_eq!(level_of(log::Level::Warn), 4);
        assert_eq!(level_of(log::Level::Info), 6);
        assert_eq!(level_of(log::Level::Debug), 7);
    }
}
