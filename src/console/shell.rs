//! Command parsing and dispatch: the shell behind the prompt.
//!
//! A line is split into words at ASCII whitespace. `"..."` quotes (with `\"`
//! and `\\` inside), `'...'` quotes literally, an unquoted `#` at the start
//! of a word begins a comment, and an unquoted `>` or `>>` (attached or not:
//! `echo 1 >/path`, `echo online>state`) redirects the command's output to a
//! file. `>>` is the same as `>`: kernel files take writes, not appends.
//!
//! Built-ins: `cat PATH...`, `echo [-n] [WORDS]`, `ls [PATH...]`, `help`.
//! Everything else goes to [`System::command`] (`dmesg`, `poweroff`,
//! `devmem`, ...).
//!
//! A command's output is collected and printed only if it succeeds; a
//! failure prints exactly one line, `error: <ERRNO>: <msg>`, and nothing
//! else. `cmd > PATH` writes the output, minus one trailing newline, with one
//! [`System::write`] call, so `echo WORDS > PATH` hands `PATH` exactly
//! `WORDS`.
//!
//! Paths given to `cat`, `ls` and `>` reach the [`System`] absolute and
//! normalised (see [`normalize_path`]): there is no working directory, a
//! relative path is taken from `/`.
//!
//! The shell does not rewrite what a [`System`] prints: keeping output lines
//! from starting with the prompt `# ` (console.md) is up to the files and
//! commands themselves. The built-ins' own text never does (`echo '# x'`
//! prints what it was asked to).

use crate::error::{try_push, Errno, Error, FallibleString, Result};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// What the kernel provides to the shell: its files and its commands.
pub trait System {
    /// Read a file's whole content into `out`.
    fn read(&mut self, path: &str, out: &mut dyn Write) -> Result<()>;
    /// Write `data` (the text after `echo`, without the trailing newline) to
    /// `path`.
    fn write(&mut self, path: &str, data: &str) -> Result<()>;
    /// Why `path` cannot be written, if it cannot: what `write` would say
    /// before storing anything. The shell asks it before a redirected
    /// command runs, as a shell opens its target first, so that a command
    /// whose output has nowhere to go changes nothing.
    fn writable(&mut self, path: &str) -> Result<()>;
    /// Entries of a directory (names only; directories end with '/').
    /// `ENOTDIR` for a file makes `ls` print the path itself, as Linux's does.
    fn list(&mut self, path: &str) -> Result<Vec<String>>;
    /// Project commands other than the built-ins (`dmesg`, `poweroff`,
    /// `devmem`, `bench`, ...). `argv[0]` is the command name; unknown names
    /// return [`Error::unknown_command`].
    fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Result<()>;
    /// Writes the lines for `help` describing the project's own commands.
    fn help(&self, out: &mut dyn Write) -> Result<()>;
}

/// A parsed line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// The words; empty for a blank or comment-only line.
    pub argv: Vec<String>,
    /// The target of `>` or `>>`, as typed.
    pub redirect: Option<String>,
}

enum Token {
    Word(String),
    Redirect,
}

/// The heap is out: the shell's allocations fail with this, never abort.
fn enomem() -> Error {
    Error::from(Errno::ENOMEM)
}

/// Appends `c` to the word being built, starting it if there is none.
fn push_char(word: &mut Option<String>, c: char) -> Result<()> {
    let w = word.get_or_insert_with(String::new);
    w.try_reserve(c.len_utf8()).map_err(|_| enomem())?;
    w.push(c);
    Ok(())
}

fn tokenize(line: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {
                if let Some(w) = word.take() {
                    try_push(&mut tokens, Token::Word(w))?;
                }
            }
            '#' if word.is_none() => break,
            '>' => {
                if let Some(w) = word.take() {
                    try_push(&mut tokens, Token::Word(w))?;
                }
                if chars.peek() == Some(&'>') {
                    chars.next();
                }
                try_push(&mut tokens, Token::Redirect)?;
            }
            '"' => {
                // `""` is a word, if an empty one.
                word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(Error::new(Errno::EINVAL, "unterminated \"")),
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&e @ ('"' | '\\')) => {
                                chars.next();
                                push_char(&mut word, e)?;
                            }
                            _ => push_char(&mut word, '\\')?,
                        },
                        Some(c) => push_char(&mut word, c)?,
                    }
                }
            }
            '\'' => {
                word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(Error::new(Errno::EINVAL, "unterminated '")),
                        Some('\'') => break,
                        Some(c) => push_char(&mut word, c)?,
                    }
                }
            }
            c => push_char(&mut word, c)?,
        }
    }
    if let Some(w) = word {
        try_push(&mut tokens, Token::Word(w))?;
    }
    Ok(tokens)
}

/// Splits a line into words and at most one redirection.
pub fn parse(line: &str) -> Result<Command> {
    let mut cmd = Command::default();
    let mut tokens = tokenize(line)?.into_iter();
    while let Some(t) = tokens.next() {
        match t {
            Token::Word(w) => try_push(&mut cmd.argv, w)?,
            Token::Redirect => {
                if cmd.redirect.is_some() {
                    return Err(Error::new(Errno::EINVAL, "more than one '>'"));
                }
                match tokens.next() {
                    Some(Token::Word(path)) if !path.is_empty() => cmd.redirect = Some(path),
                    _ => return Err(Error::new(Errno::EINVAL, "missing file name after '>'")),
                }
            }
        }
    }
    if cmd.argv.is_empty() && cmd.redirect.is_some() {
        return Err(Error::new(Errno::EINVAL, "missing command before '>'"));
    }
    Ok(cmd)
}

/// `path` made absolute and canonical: `//`, `.` and trailing `/` dropped,
/// `..` resolved (never above `/`). `"proc//meminfo/"` is `"/proc/meminfo"`.
/// `ENOMEM` if the heap has no room for it.
pub fn normalize_path(path: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => try_push(&mut parts, c)?,
        }
    }
    // Never longer than `path` with a `/` in front: the pushes below stay
    // within this reservation.
    let mut s = String::new();
    s.try_reserve_exact(path.len() + 1).map_err(|_| enomem())?;
    for p in &parts {
        s.push('/');
        s.push_str(p);
    }
    if s.is_empty() {
        s.push('/');
    }
    Ok(s)
}

const BUILTIN_HELP: &str = "\
Built-in commands:
  cat PATH...             print files
  echo [-n] [WORDS]       print WORDS
  echo WORDS > PATH       write WORDS to a file (>> is the same as >)
  ls [PATH...]            list directories (default /)
  help                    this text
Words are split at spaces; \"...\" and '...' quote; # starts a comment.
";

/// Runs one line, printing its output to `out`; a failure prints its one
/// `error: ...` line instead and returns the errno. A blank line does
/// nothing.
pub fn execute(
    sys: &mut dyn System,
    line: &str,
    out: &mut dyn Write,
) -> core::result::Result<(), Errno> {
    run(sys, line, out).map_err(|e| {
        let _ = writeln!(out, "{e}");
        e.errno
    })
}

/// Like [`execute`], but a failure is returned, not printed; `out` is then
/// untouched. Every allocation between the line and `out` is fallible: a
/// heap too full for the command's output is `ENOMEM`, not an abort.
pub fn run(sys: &mut dyn System, line: &str, out: &mut dyn Write) -> Result<()> {
    let cmd = parse(line)?;
    if cmd.argv.is_empty() {
        return Ok(());
    }
    let mut argv: Vec<&str> = Vec::new();
    argv.try_reserve_exact(cmd.argv.len())
        .map_err(|_| enomem())?;
    argv.extend(cmd.argv.iter().map(String::as_str));
    // Before the command runs: no allocation between a command's change
    // and its output's destination (the heap running out there would leave
    // the change made and report ENOMEM).
    let redirect = cmd.redirect.as_deref().map(normalize_path).transpose()?;
    if let Some(path) = &redirect {
        sys.writable(path)?;
    }
    let mut buf = FallibleString::new();
    let r = dispatch(sys, &argv, &mut buf);
    // A full heap explains any failure that followed it (a `write!` into
    // `buf` turns into EIO otherwise).
    let buf = buf.into_result()?;
    r?;
    match redirect {
        Some(path) => {
            let data = buf.strip_suffix('\n').unwrap_or(&buf);
            sys.write(&path, data)
        }
        None => Ok(out.write_str(&buf)?),
    }
}

fn dispatch(sys: &mut dyn System, argv: &[&str], out: &mut FallibleString) -> Result<()> {
    let (&name, args) = match argv.split_first() {
        Some(x) => x,
        None => return Ok(()),
    };
    match name {
        "cat" => cat(sys, args, out),
        "echo" => {
            let (newline, words) = match args.split_first() {
                Some((&"-n", rest)) => (false, rest),
                _ => (true, args),
            };
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(w);
            }
            if newline {
                out.push('\n');
            }
            Ok(())
        }
        "ls" => ls(sys, args, out),
        "help" => {
            out.push_str(BUILTIN_HELP);
            sys.help(out)?;
            end_line(out);
            Ok(())
        }
        _ => sys.command(argv, out),
    }
}

/// Ends `out` with a newline unless it is empty or already does.
fn end_line(out: &mut FallibleString) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

fn cat(sys: &mut dyn System, paths: &[&str], out: &mut FallibleString) -> Result<()> {
    if paths.is_empty() {
        return Err(Error::new(Errno::EINVAL, "usage: cat PATH..."));
    }
    for p in paths {
        sys.read(&normalize_path(p)?, out)?;
        end_line(out);
    }
    Ok(())
}

fn ls(sys: &mut dyn System, paths: &[&str], out: &mut FallibleString) -> Result<()> {
    let paths = if paths.is_empty() { &["/"][..] } else { paths };
    for (i, p) in paths.iter().enumerate() {
        if paths.len() > 1 {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(p);
            out.push_str(":\n");
        }
        match sys.list(&normalize_path(p)?) {
            Ok(entries) => {
                for e in entries {
                    out.push_str(&e);
                    out.push('\n');
                }
            }
            Err(e) if e.errno == Errno::ENOTDIR => {
                out.push_str(p);
                out.push('\n');
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A `System` for tests: a few files in a map, and three commands.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::ToString;
    use alloc::vec;

    pub(crate) struct FakeSystem {
        pub files: BTreeMap<String, String>,
        pub writes: Vec<(String, String)>,
        pub commands: Vec<Vec<String>>,
    }

    impl FakeSystem {
        pub(crate) fn new() -> Self {
            let files = [
                (
                    "/proc/meminfo",
                    "MemTotal:    1048576 kB\nMemFree:      524288 kB\n",
                ),
                ("/sys/devices/system/memory/block_size_bytes", "8000000"),
                ("/sys/devices/system/memory/memory8/state", "online\n"),
                ("/sys/devices/system/memory/probe", ""),
                ("/proc/empty", ""),
            ];
            FakeSystem {
                files: files
                    .iter()
                    .map(|(p, c)| (p.to_string(), c.to_string()))
                    .collect(),
                writes: vec![],
                commands: vec![],
            }
        }

        fn is_dir(&self, path: &str) -> bool {
            path == "/"
                || self
                    .files
                    .keys()
                    .any(|f| f.starts_with(path) && f[path.len()..].starts_with('/'))
        }
    }

    impl System for FakeSystem {
        fn read(&mut self, path: &str, out: &mut dyn Write) -> Result<()> {
            match self.files.get(path) {
                Some(_) if path.ends_with("/probe") => {
                    Err(crate::err!(EPERM, "{}: write-only", path))
                }
                Some(c) => Ok(out.write_str(c)?),
                None if self.is_dir(path) => Err(crate::err!(EISDIR, "{}: is a directory", path)),
                None => Err(crate::err!(ENOENT, "{}: no such file", path)),
            }
        }

        fn writable(&mut self, path: &str) -> Result<()> {
            if !self.files.contains_key(path) {
                return Err(crate::err!(ENOENT, "{}: no such file", path));
            }
            if path.ends_with("/meminfo") {
                return Err(crate::err!(EPERM, "{}: read-only", path));
            }
            Ok(())
        }

        fn write(&mut self, path: &str, data: &str) -> Result<()> {
            self.writable(path)?;
            if path.ends_with("/state") && !["online", "offline"].contains(&data) {
                return Err(crate::err!(EINVAL, "{:?}: not a state\n(try online)", data));
            }
            self.writes.push((path.to_string(), data.to_string()));
            if !path.ends_with("/probe") {
                self.files
                    .insert(path.to_string(), alloc::format!("{data}\n"));
            }
            Ok(())
        }

        fn list(&mut self, path: &str) -> Result<Vec<String>> {
            if self.files.contains_key(path) {
                return Err(crate::err!(ENOTDIR, "{}: not a directory", path));
            }
            if !self.is_dir(path) {
                return Err(crate::err!(ENOENT, "{}: no such directory", path));
            }
            let prefix = if path == "/" {
                String::from("/")
            } else {
                alloc::format!("{path}/")
            };
            let mut names: Vec<String> = Vec::new();
            for f in self.files.keys() {
                if let Some(rest) = f.strip_prefix(&prefix) {
                    let name = match rest.split_once('/') {
                        Some((dir, _)) => alloc::format!("{dir}/"),
                        None => rest.to_string(),
                    };
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            Ok(names)
        }

        fn command(&mut self, argv: &[&str], out: &mut dyn Write) -> Result<()> {
            self.commands
                .push(argv.iter().map(|s| s.to_string()).collect());
            match argv {
                ["args", rest @ ..] => {
                    for a in rest {
                        writeln!(out, "[{a}]")?;
                    }
                    Ok(())
                }
                ["partial", ..] => {
                    writeln!(out, "half of the output")?;
                    Err(crate::err!(EBUSY, "gave up\nhalfway"))
                }
                ["dmesg"] => Ok(writeln!(out, "[    0.000000] booted")?),
                [name, ..] => Err(Error::unknown_command(name)),
                [] => Ok(()),
            }
        }

        fn help(&self, out: &mut dyn Write) -> Result<()> {
            Ok(out.write_str(
                "  dmesg                   print the kernel log\n  args ARGS...            print each argument",
            )?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSystem;
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn words(line: &str) -> Vec<String> {
        parse(line).unwrap().argv
    }

    /// Runs `line`; returns (output, result).
    fn sh(sys: &mut FakeSystem, line: &str) -> (String, core::result::Result<(), Errno>) {
        let mut out = String::new();
        let r = execute(sys, line, &mut out);
        (out, r)
    }

    fn assert_one_error_line(out: &str, errno: Errno) {
        let prefix = alloc::format!("error: {}: ", errno.name());
        assert!(out.starts_with(&prefix), "{out:?}");
        assert!(out.ends_with('\n'), "{out:?}");
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.len() > prefix.len() + 1, "{out:?}");
    }

    #[test]
    fn tokenizer() {
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words("   \t "), Vec::<String>::new());
        assert_eq!(words("cat  /a\t/b "), ["cat", "/a", "/b"]);
        assert_eq!(words(r#"echo "a  b" c"d e"f"#), ["echo", "a  b", "cd ef"]);
        assert_eq!(words(r#"echo "" '' x"#), ["echo", "", "", "x"]);
        assert_eq!(
            words(r#"echo "say \"hi\" \\ \n""#),
            ["echo", r#"say "hi" \ \n"#]
        );
        assert_eq!(words("echo 'a \"b\" \\'"), ["echo", "a \"b\" \\"]);
        assert_eq!(words("echo a#b # comment"), ["echo", "a#b"]);
        assert_eq!(words("# just a comment"), Vec::<String>::new());
        assert_eq!(
            words("echo \"# not a comment\""),
            ["echo", "# not a comment"]
        );
        assert_eq!(words("echo \"a > b\""), ["echo", "a > b"]);
        assert_eq!(words("dévmem ∑"), ["dévmem", "∑"]);
    }

    #[test]
    fn tokenizer_errors() {
        for bad in ["echo \"abc", "echo 'abc", "echo \"abc\\\""] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.errno, Errno::EINVAL, "{bad}");
        }
    }

    #[test]
    fn redirection_forms() {
        let target = Some("/p".to_string());
        for line in [
            "echo 1 > /p",
            "echo 1 >/p",
            "echo 1> /p",
            "echo 1>/p",
            "echo 1 >> /p",
            "echo 1>>/p",
            "echo > /p 1",
            ">/p echo 1",
        ] {
            let cmd = parse(line).unwrap();
            assert_eq!(cmd.argv, ["echo", "1"], "{line}");
            assert_eq!(cmd.redirect, target, "{line}");
        }
        let cmd = parse("echo \"a>b\" >'/x y'").unwrap();
        assert_eq!(cmd.argv, ["echo", "a>b"]);
        assert_eq!(cmd.redirect.as_deref(), Some("/x y"));
        for bad in [
            "echo 1 >",
            "echo 1 > > /p",
            "echo 1 > /p > /q",
            "> /p",
            "echo >''",
        ] {
            assert_eq!(parse(bad).unwrap_err().errno, Errno::EINVAL, "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("").unwrap(), "/");
        assert_eq!(normalize_path("proc//meminfo/").unwrap(), "/proc/meminfo");
        assert_eq!(
            normalize_path("/sys/./devices/../kernel").unwrap(),
            "/sys/kernel"
        );
        assert_eq!(normalize_path("/../../x").unwrap(), "/x");
    }

    #[test]
    fn echo_writes_exactly_the_words() {
        let mut sys = FakeSystem::new();
        let state = "/sys/devices/system/memory/memory8/state";
        for line in [
            "echo offline > /sys/devices/system/memory/memory8/state",
            "echo offline >/sys/devices/system/memory/memory8/state",
            "echo   offline>>sys/devices/system/memory//memory8/state/",
            "echo -n offline > /sys/devices/system/memory/memory8/state",
        ] {
            let (out, r) = sh(&mut sys, line);
            assert_eq!((out.as_str(), r), ("", Ok(())), "{line}");
            assert_eq!(
                sys.writes.pop(),
                Some((state.to_string(), "offline".to_string()))
            );
        }
        let (out, r) = sh(
            &mut sys,
            "echo 0x48000000 0x10000000 > /sys/devices/system/memory/probe",
        );
        assert_eq!((out.as_str(), r), ("", Ok(())));
        assert_eq!(sys.writes.pop().unwrap().1, "0x48000000 0x10000000");
    }

    #[test]
    fn echo_prints() {
        let mut sys = FakeSystem::new();
        assert_eq!(
            sh(&mut sys, "echo hello   world"),
            ("hello world\n".into(), Ok(()))
        );
        assert_eq!(sh(&mut sys, "echo"), ("\n".into(), Ok(())));
        assert_eq!(sh(&mut sys, "echo -n hi"), ("hi".into(), Ok(())));
        assert_eq!(sh(&mut sys, "echo \"a  b\""), ("a  b\n".into(), Ok(())));
        assert!(sys.writes.is_empty());
    }

    #[test]
    fn failed_write_is_one_error_line_and_changes_nothing() {
        let mut sys = FakeSystem::new();
        let (out, r) = sh(
            &mut sys,
            "echo sideways > /sys/devices/system/memory/memory8/state",
        );
        assert_eq!(r, Err(Errno::EINVAL));
        assert_one_error_line(&out, Errno::EINVAL);
        assert_eq!(
            out,
            "error: EINVAL: \"sideways\": not a state (try online)\n"
        );
        let (out, _) = sh(&mut sys, "cat /sys/devices/system/memory/memory8/state");
        assert_eq!(out, "online\n");
        let (out, r) = sh(&mut sys, "echo 1 > /nope");
        assert_eq!(r, Err(Errno::ENOENT));
        assert_one_error_line(&out, Errno::ENOENT);
    }

    #[test]
    fn cat() {
        let mut sys = FakeSystem::new();
        let (out, r) = sh(&mut sys, "cat /proc/meminfo");
        assert_eq!(r, Ok(()));
        assert_eq!(out, "MemTotal:    1048576 kB\nMemFree:      524288 kB\n");
        // A file without a final newline still ends its line; empty prints nothing.
        let (out, _) = sh(
            &mut sys,
            "cat /sys/devices/system/memory/block_size_bytes /proc/empty /proc/empty",
        );
        assert_eq!(out, "8000000\n");
        // Failure anywhere: only the error line, nothing of the files before.
        let (out, r) = sh(&mut sys, "cat /proc/meminfo /proc/nope /proc/meminfo");
        assert_eq!(r, Err(Errno::ENOENT));
        assert_eq!(out, "error: ENOENT: /proc/nope: no such file\n");
        let (out, r) = sh(&mut sys, "cat /proc");
        assert_eq!(r, Err(Errno::EISDIR));
        assert_one_error_line(&out, Errno::EISDIR);
        let (out, r) = sh(&mut sys, "cat");
        assert_eq!(r, Err(Errno::EINVAL));
        assert_one_error_line(&out, Errno::EINVAL);
    }

    #[test]
    fn ls() {
        let mut sys = FakeSystem::new();
        assert_eq!(sh(&mut sys, "ls"), ("proc/\nsys/\n".into(), Ok(())));
        assert_eq!(sh(&mut sys, "ls /"), ("proc/\nsys/\n".into(), Ok(())));
        let (out, _) = sh(&mut sys, "ls /sys/devices/system/memory/");
        assert_eq!(out, "block_size_bytes\nmemory8/\nprobe\n");
        let (out, _) = sh(&mut sys, "ls /proc/meminfo");
        assert_eq!(out, "/proc/meminfo\n");
        let (out, _) = sh(&mut sys, "ls /proc /sys/devices");
        assert_eq!(out, "/proc:\nempty\nmeminfo\n\n/sys/devices:\nsystem/\n");
        let (out, r) = sh(&mut sys, "ls /nope");
        assert_eq!(r, Err(Errno::ENOENT));
        assert_one_error_line(&out, Errno::ENOENT);
    }

    #[test]
    fn help_lists_builtins_and_system_commands() {
        let mut sys = FakeSystem::new();
        let (out, r) = sh(&mut sys, "help");
        assert_eq!(r, Ok(()));
        for w in [
            "cat PATH",
            "echo WORDS > PATH",
            "ls [PATH",
            "help",
            "dmesg",
            "args ARGS",
        ] {
            assert!(out.contains(w), "{w} missing from {out}");
        }
        assert!(out.ends_with('\n'));
        assert!(out.lines().all(|l| !l.starts_with("# ")));
    }

    #[test]
    fn other_commands_go_to_the_system() {
        let mut sys = FakeSystem::new();
        let (out, r) = sh(&mut sys, "args a \"b c\" d>/proc/empty");
        assert_eq!(r, Ok(()));
        assert_eq!(out, "");
        assert_eq!(
            sys.writes,
            vec![("/proc/empty".to_string(), "[a]\n[b c]\n[d]".to_string())]
        );
        assert_eq!(
            sh(&mut sys, "dmesg"),
            ("[    0.000000] booted\n".into(), Ok(()))
        );
        assert_eq!(sys.commands.last().unwrap(), &["dmesg"]);
    }

    #[test]
    fn unknown_command_is_one_error_line() {
        let mut sys = FakeSystem::new();
        let (out, r) = sh(&mut sys, "frobnicate --now");
        assert_eq!(r, Err(Errno::ENOENT));
        assert_eq!(out, "error: ENOENT: frobnicate: command not found\n");
    }

    #[test]
    fn failing_command_prints_only_its_error() {
        let mut sys = FakeSystem::new();
        let (out, r) = sh(&mut sys, "partial");
        assert_eq!(r, Err(Errno::EBUSY));
        assert_eq!(out, "error: EBUSY: gave up halfway\n");
        // Redirected, nothing is written either.
        let (out, _) = sh(&mut sys, "partial > /proc/empty");
        assert_one_error_line(&out, Errno::EBUSY);
        assert!(sys.writes.is_empty());
    }

    #[test]
    fn blank_and_comment_lines_do_nothing() {
        let mut sys = FakeSystem::new();
        for line in ["", "   ", "# hello", "  # echo hi > /proc/empty"] {
            assert_eq!(sh(&mut sys, line), (String::new(), Ok(())));
        }
        assert!(sys.commands.is_empty());
        assert!(sys.writes.is_empty());
    }

    #[test]
    fn run_returns_errors_without_printing() {
        let mut sys = FakeSystem::new();
        let mut out = String::new();
        let e = run(&mut sys, "cat /nope", &mut out).unwrap_err();
        assert_eq!(e.errno, Errno::ENOENT);
        assert!(out.is_empty());
    }
}
