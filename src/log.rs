//! The kernel log: a ring buffer read by `dmesg`, echoed to the console once
//! one is registered.

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
static LEVEL: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(7);

impl Write for Ring {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.buf[self.written % LOG_SIZE] = b;
            self.written += 1;
        }
        Ok(())
    }
}

/// Where log lines are echoed as they are written (the console).
pub fn set_sink(sink: fn(&str)) {
    *SINK.lock() = Some(sink);
}

/// Lines above `level` (Linux's `loglevel=`) are kept but not echoed.
pub fn set_console_level(level: u8) {
    LEVEL.store(level, core::sync::atomic::Ordering::Relaxed);
}

pub fn log(level: u8, args: fmt::Arguments) {
    struct Line<'a>(&'a mut Ring, Option<fn(&str)>);
    impl Write for Line<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if let Some(sink) = self.1 {
                sink(s);
            }
            self.0.write_str(s)
        }
    }
    let echo = level <= LEVEL.load(core::sync::atomic::Ordering::Relaxed);
    let sink = if echo { *SINK.lock() } else { None };
    let mut ring = LOG.lock();
    let mut line = Line(&mut ring, sink);
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
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
