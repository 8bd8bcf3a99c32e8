//! The kernel's error: a Linux errno with a message. Typed errors of the
//! layers above (`MapError`, `AltmapError`, ...) convert into it where they
//! are defined.
//!
//! Every failure the console reports is one line, `error: <ERRNO>: <msg>`
//! (`console.md`). [`Error`]'s `Display` produces exactly that line, without
//! the trailing newline, whatever `msg` contains: control characters
//! (newlines included) become spaces and an empty message is replaced by the
//! errno's `strerror` text.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The errno values the kernel reports, named and numbered as on Linux.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    EPERM,
    ENOENT,
    EIO,
    ENXIO,
    E2BIG,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENOSPC,
    ERANGE,
    ENOSYS,
    ENOTEMPTY,
    EOPNOTSUPP,
    ETIMEDOUT,
}

impl Errno {
    /// Every value, in Linux number order.
    pub const ALL: [Errno; 21] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::EIO,
        Errno::ENXIO,
        Errno::E2BIG,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::ENODEV,
        Errno::ENOTDIR,
        Errno::EISDIR,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::ERANGE,
        Errno::ENOSYS,
        Errno::ENOTEMPTY,
        Errno::EOPNOTSUPP,
        Errno::ETIMEDOUT,
    ];

    /// The name, as Linux spells it (`"EINVAL"`).
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::EIO => "EIO",
            Errno::ENXIO => "ENXIO",
            Errno::E2BIG => "E2BIG",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::ENODEV => "ENODEV",
            Errno::ENOTDIR => "ENOTDIR",
            Errno::EISDIR => "EISDIR",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::ENOSYS => "ENOSYS",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::ETIMEDOUT => "ETIMEDOUT",
        }
    }

    /// Linux's number for it (asm-generic/errno*.h), positive.
    pub const fn code(self) -> i32 {
        match self {
            Errno::EPERM => 1,
            Errno::ENOENT => 2,
            Errno::EIO => 5,
            Errno::ENXIO => 6,
            Errno::E2BIG => 7,
            Errno::EAGAIN => 11,
            Errno::ENOMEM => 12,
            Errno::EACCES => 13,
            Errno::EFAULT => 14,
            Errno::EBUSY => 16,
            Errno::EEXIST => 17,
            Errno::ENODEV => 19,
            Errno::ENOTDIR => 20,
            Errno::EISDIR => 21,
            Errno::EINVAL => 22,
            Errno::ENOSPC => 28,
            Errno::ERANGE => 34,
            Errno::ENOSYS => 38,
            Errno::ENOTEMPTY => 39,
            Errno::EOPNOTSUPP => 95,
            Errno::ETIMEDOUT => 110,
        }
    }

    /// glibc's `strerror` text, used when an error carries no message.
    pub const fn description(self) -> &'static str {
        match self {
            Errno::EPERM => "Operation not permitted",
            Errno::ENOENT => "No such file or directory",
            Errno::EIO => "Input/output error",
            Errno::ENXIO => "No such device or address",
            Errno::E2BIG => "Argument list too long",
            Errno::EAGAIN => "Resource temporarily unavailable",
            Errno::ENOMEM => "Cannot allocate memory",
            Errno::EACCES => "Permission denied",
            Errno::EFAULT => "Bad address",
            Errno::EBUSY => "Device or resource busy",
            Errno::EEXIST => "File exists",
            Errno::ENODEV => "No such device",
            Errno::ENOTDIR => "Not a directory",
            Errno::EISDIR => "Is a directory",
            Errno::EINVAL => "Invalid argument",
            Errno::ENOSPC => "No space left on device",
            Errno::ERANGE => "Numerical result out of range",
            Errno::ENOSYS => "Function not implemented",
            Errno::ENOTEMPTY => "Directory not empty",
            Errno::EOPNOTSUPP => "Operation not supported",
            Errno::ETIMEDOUT => "Connection timed out",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An errno with a human explanation: what failed and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub errno: Errno,
    pub msg: String,
}

/// The kernel's result type.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// An error with `msg`, copied as [`from_args`](Self::from_args)
    /// does: never an abort when the heap is out.
    pub fn new(errno: Errno, msg: impl fmt::Display) -> Self {
        Self::from_args(errno, format_args!("{msg}"))
    }

    /// What [`err!`](crate::err) expands to. The message is written as far
    /// as the heap has room (errors are made when memory is short too, and
    /// the errno is what matters then): never an abort.
    pub fn from_args(errno: Errno, args: fmt::Arguments<'_>) -> Self {
        let mut msg = FallibleString::new();
        let _ = fmt::write(&mut msg, args);
        Error { errno, msg: msg.s }
    }

    /// The error for a command nobody knows: `ENOENT: <name>: command not
    /// found` (what `System::command` returns for names it does not handle).
    pub fn unknown_command(name: &str) -> Self {
        crate::err!(ENOENT, "{}: command not found", name)
    }
}

/// A `String` that grows fallibly: a write the heap has no room for fails,
/// and so does every later one (the failure is sticky, so a caller that
/// ignores one `push` still learns of it from [`failed`](Self::failed)).
/// Output collected on a path a user drives goes through it, so that heap
/// exhaustion is an `ENOMEM`, never an abort.
#[derive(Debug, Default)]
pub struct FallibleString {
    s: String,
    failed: bool,
}

impl FallibleString {
    pub const fn new() -> Self {
        FallibleString {
            s: String::new(),
            failed: false,
        }
    }

    /// Appends `s`, or marks the string failed.
    pub fn push_str(&mut self, s: &str) {
        let _ = fmt::Write::write_str(self, s);
    }

    /// Appends `c`, or marks the string failed.
    pub fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    /// Some write found the heap out.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// What was written; `ENOMEM` (with `strerror`'s text, which needs
    /// no heap) if any write failed.
    pub fn into_result(self) -> Result<String> {
        if self.failed {
            return Err(Error::from(Errno::ENOMEM));
        }
        Ok(self.s)
    }
}

impl core::ops::Deref for FallibleString {
    type Target = str;

    fn deref(&self) -> &str {
        &self.s
    }
}

impl fmt::Write for FallibleString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.failed || self.s.try_reserve(s.len()).is_err() {
            self.failed = true;
            return Err(fmt::Error);
        }
        self.s.push_str(s);
        Ok(())
    }
}

/// `format!` for paths a user drives: `ENOMEM` when the heap is out,
/// never an abort.
pub fn try_format(args: fmt::Arguments<'_>) -> Result<String> {
    let mut s = FallibleString::new();
    let _ = fmt::write(&mut s, args);
    s.into_result()
}

/// `v.push(x)` for paths a user drives: `ENOMEM` when the heap has no
/// room, `v` unchanged.
pub fn try_push<T>(v: &mut Vec<T>, x: T) -> Result<()> {
    v.try_reserve(1).map_err(|_| Error::from(Errno::ENOMEM))?;
    v.push(x);
    Ok(())
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Self {
        Error {
            errno,
            msg: String::new(),
        }
    }
}

/// `?` on `write!` in `System` implementations. Writing into the shell's
/// output buffer fails only when the heap is out, and the shell then
/// reports `ENOMEM` instead of this.
impl From<fmt::Error> for Error {
    fn from(_: fmt::Error) -> Self {
        Error::new(Errno::EIO, "output error")
    }
}

/// `error: EINVAL: <msg>`, always a single line of printable text.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}: ", self.errno.name())?;
        let msg = self
            .msg
            .trim_matches(|c: char| c.is_whitespace() || c.is_control());
        if msg.is_empty() {
            return f.write_str(self.errno.description());
        }
        let mut rest = msg;
        while let Some(i) = rest.find(|c: char| c.is_control()) {
            f.write_str(&rest[..i])?;
            f.write_str(" ")?;
            let c_len = rest[i..].chars().next().map_or(1, char::len_utf8);
            rest = &rest[i + c_len..];
        }
        f.write_str(rest)
    }
}

impl core::error::Error for Error {}

/// Builds an [`Error`]: `err!(EINVAL, "bad address {:#x}", a)`, or
/// `err!(EBUSY)` for the bare errno.
#[macro_export]
macro_rules! err {
    ($errno:ident) => {
        $crate::error::Error::from($crate::error::Errno::$errno)
    };
    ($errno:ident, $($arg:tt)+) => {
        $crate::error::Error::from_args(
            $crate::error::Errno::$errno,
            ::core::format_args!($($arg)+),
        )
    };
}

/// `return Err(err!(...))`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)+) => {
        return ::core::result::Result::Err($crate::err!($($arg)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn display_is_one_line() {
        let e = crate::err!(EINVAL, "bad address {:#x}", 0x1000);
        assert_eq!(e.to_string(), "error: EINVAL: bad address 0x1000");
        let e = Error::new(Errno::EBUSY, "two\nlines\r\nhere\tand\x1b[0m");
        assert_eq!(e.to_string(), "error: EBUSY: two lines  here and [0m");
        let e = Error::new(Errno::ENOMEM, "trailing\n");
        assert_eq!(e.to_string(), "error: ENOMEM: trailing");
    }

    #[test]
    fn empty_message_uses_description() {
        assert_eq!(
            crate::err!(ENOENT).to_string(),
            "error: ENOENT: No such file or directory"
        );
        assert_eq!(
            Error::new(Errno::EIO, " \n ").to_string(),
            "error: EIO: Input/output error"
        );
    }

    #[test]
    fn names_and_codes() {
        for e in Errno::ALL {
            assert!(e.name().starts_with('E'));
            assert_eq!(format!("{e}"), e.name());
            assert!(e.code() > 0);
        }
        assert_eq!(Errno::EINVAL.code(), 22);
        assert_eq!(Errno::E2BIG.name(), "E2BIG");
    }

    #[test]
    fn bail_returns() {
        fn f(x: u32) -> Result<u32> {
            if x > 3 {
                crate::bail!(ERANGE, "{} is over 3", x);
            }
            Ok(x)
        }
        assert_eq!(f(2), Ok(2));
        assert_eq!(f(7).unwrap_err().to_string(), "error: ERANGE: 7 is over 3");
    }

    #[test]
    fn unknown_command() {
        assert_eq!(
            Error::unknown_command("frob").to_string(),
            "error: ENOENT: frob: command not found"
        );
    }
}
