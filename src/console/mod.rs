//! The serial console (`console.md`): a line editor, a small shell, and the
//! driver that joins them to a byte stream.
//!
//! The machinery here knows nothing of the kernel. The kernel provides its
//! files and commands through [`System`] and its UART through [`Io`], then
//! calls [`Console::poll`] whenever input may have arrived:
//!
//! ```text
//! let mut console = Console::new(uart);
//! loop {
//!     console.poll(&mut kernel_system);
//!     wait_for_interrupt();
//! }
//! ```
//!
//! Output line ends are a bare `"\n"`, like the kernel log's; the [`Io`]
//! implementation (the UART layer) turns them into `"\r\n"` for the
//! terminal. Input lines may end with CR, LF or CR LF.

pub mod line;
pub mod shell;

pub use line::{Event, LineEditor, MAX_LINE};
pub use shell::{execute, normalize_path, parse, run, Command, System};

use core::fmt;

/// The prompt, printed at the start of a line when the console is ready.
pub const PROMPT: &str = "# ";

/// A byte stream to a terminal.
pub trait Io {
    /// The next input byte, or `None` at once if there is none yet (never
    /// blocks).
    fn read_byte(&mut self) -> Option<u8>;
    /// Writes bytes out. Line ends are `"\n"`: an implementation for a real
    /// terminal sends `"\r\n"` for each.
    fn write_bytes(&mut self, bytes: &[u8]);
}

/// The console: reads bytes, edits the line, runs commands, prompts.
///
/// Every line end (and Ctrl-C) is answered by the command's output, or by
/// one `error:` line, and then a prompt at the start of a new line.
pub struct Console<I: Io> {
    io: I,
    editor: LineEditor,
    /// The last byte written was `'\n'` (or nothing was written yet).
    at_line_start: bool,
    /// The first prompt has been printed.
    started: bool,
}

/// Writes through to the `Io`, remembering whether a line is open.
struct Out<'a, I: Io> {
    io: &'a mut I,
    at_line_start: &'a mut bool,
}

impl<I: Io> fmt::Write for Out<'_, I> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(&last) = s.as_bytes().last() {
            self.io.write_bytes(s.as_bytes());
            *self.at_line_start = last == b'\n';
        }
        Ok(())
    }
}

impl<I: Io> Console<I> {
    /// A console on `io`; nothing is printed until [`start`](Self::start)
    /// or the first [`poll`](Self::poll).
    pub const fn new(io: I) -> Self {
        Console {
            io,
            editor: LineEditor::new(),
            at_line_start: true,
            started: false,
        }
    }

    pub fn io(&self) -> &I {
        &self.io
    }

    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    pub fn into_io(self) -> I {
        self.io
    }

    /// Prints the first prompt (once; `poll` does it if this was not called).
    pub fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.prompt();
        }
    }

    /// Prints the prompt at the start of a line, ending the current output
    /// line first if one is open.
    pub fn prompt(&mut self) {
        if !self.at_line_start {
            self.write(b"\n");
        }
        self.write(PROMPT.as_bytes());
    }

    /// Runs `f`, whose output (kernel log lines from a driver) arrives
    /// while no command runs: it starts on a line of its own, and then the
    /// prompt and what was typed so far are printed again.
    pub fn interrupted<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.start();
        if !self.at_line_start {
            self.write(b"\n");
        }
        let r = f();
        self.at_line_start = true;
        self.prompt();
        let typed = self.editor.redraw();
        self.write(typed.as_bytes());
        r
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.io.write_bytes(bytes);
            self.at_line_start = last == b'\n';
        }
    }

    /// Processes every input byte available now, without blocking; returns
    /// how many there were.
    pub fn poll(&mut self, sys: &mut dyn System) -> usize {
        self.start();
        let mut n = 0;
        while let Some(b) = self.io.read_byte() {
            self.feed(sys, b);
            n += 1;
        }
        n
    }

    /// Processes one input byte (for a caller that reads its own bytes, an
    /// interrupt handler's ring for instance).
    pub fn feed(&mut self, sys: &mut dyn System, byte: u8) {
        self.start();
        match self.editor.feed(byte) {
            Event::Nothing => {}
            Event::Echo(e) => self.write(e.as_bytes()),
            Event::Line(line) => {
                self.write(b"\n");
                let mut out = Out {
                    io: &mut self.io,
                    at_line_start: &mut self.at_line_start,
                };
                let _ = execute(sys, &line, &mut out);
                self.prompt();
            }
            Event::Error(e) => {
                self.write(b"\n");
                let mut out = Out {
                    io: &mut self.io,
                    at_line_start: &mut self.at_line_start,
                };
                let _ = fmt::Write::write_fmt(&mut out, format_args!("{e}\n"));
                self.prompt();
            }
            Event::Cancel => {
                self.write(b"^C\n");
                self.prompt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shell::fake::FakeSystem;
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[derive(Default)]
    struct FakeIo {
        input: VecDeque<u8>,
        output: Vec<u8>,
    }

    impl Io for FakeIo {
        fn read_byte(&mut self) -> Option<u8> {
            self.input.pop_front()
        }
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.output.extend_from_slice(bytes);
        }
    }

    /// Runs `input` through a fresh console; returns the whole transcript.
    fn transcript(input: &[u8]) -> String {
        let mut sys = FakeSystem::new();
        let mut con = Console::new(FakeIo::default());
        con.io_mut().input.extend(input);
        con.poll(&mut sys);
        String::from_utf8(con.into_io().output).unwrap()
    }

    #[test]
    fn session() {
        let t = transcript(b"cat /proc/meminfo\r\necho offline > /sys/devices/system/memory/memory8/state\rcat /sys/devices/system/memory/memory8/state\n");
        assert_eq!(
            t,
            "# cat /proc/meminfo\n\
             MemTotal:    1048576 kB\n\
             MemFree:      524288 kB\n\
             # echo offline > /sys/devices/system/memory/memory8/state\n\
             # cat /sys/devices/system/memory/memory8/state\n\
             offline\n\
             # "
        );
    }

    #[test]
    fn driver_output_gets_its_own_lines_and_the_typed_line_comes_back() {
        let mut sys = FakeSystem::new();
        let mut con = Console::new(FakeIo::default());
        con.io_mut().input.extend(b"cat /pr\x04");
        con.poll(&mut sys);
        con.interrupted(|| ());
        con.io_mut().output.clear();
        con.interrupted(|| ());
        // Nothing was logged: the line break, the prompt, the typed text.
        assert_eq!(
            String::from_utf8(con.io().output.clone()).unwrap(),
            "\n# cat /pr^D"
        );
        con.io_mut().output.clear();
        let n = 7;
        let out = con.interrupted(|| n * 6);
        assert_eq!(out, 42);
        con.io_mut().input.extend(b"\x08oc/meminfo\n");
        con.poll(&mut sys);
        let t = String::from_utf8(con.into_io().output).unwrap();
        assert!(t.starts_with("\n# cat /pr^D"), "{t:?}");
        assert!(t.ends_with("\n# "), "{t:?}");
        assert!(t.contains("oc/meminfo\nMemTotal:"), "{t:?}");
    }

    #[test]
    fn prompt_before_any_input() {
        let mut sys = FakeSystem::new();
        let mut con = Console::new(FakeIo::default());
        assert_eq!(con.poll(&mut sys), 0);
        assert_eq!(con.poll(&mut sys), 0);
        assert_eq!(con.io().output, b"# ");
    }

    #[test]
    fn empty_lines_and_output_without_newline() {
        let t = transcript(b"\r\n\necho -n hi\n");
        assert_eq!(t, "# \n# \n# echo -n hi\nhi\n# ");
    }

    #[test]
    fn errors_are_one_line_then_prompt() {
        let t = transcript(b"frob\nls /nope\necho \"open\n");
        assert_eq!(
            t,
            "# frob\nerror: ENOENT: frob: command not found\n\
             # ls /nope\nerror: ENOENT: /nope: no such directory\n\
             # echo \"open\nerror: EINVAL: unterminated \"\n# "
        );
    }

    #[test]
    fn overlong_line_then_next_line_works() {
        let mut input = alloc::vec![b'x'; 5000];
        input.extend_from_slice(b"\r\necho ok\r\n");
        let t = transcript(&input);
        let x = "x".repeat(MAX_LINE);
        assert_eq!(
            t,
            alloc::format!(
                "# {x}\nerror: EINVAL: line too long (more than {MAX_LINE} bytes)\n# echo ok\nok\n# "
            )
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let t = transcript(b"echo \xff\xfe\n");
        assert_eq!(t, "# echo ??\nerror: EINVAL: invalid UTF-8 input\n# ");
    }

    #[test]
    fn backspace_edits() {
        let t = transcript(b"ecjo\x08\x08ho hi\n");
        assert_eq!(t, "# ecjo\x08 \x08\x08 \x08ho hi\nhi\n# ");
    }

    #[test]
    fn ctrl_c_gives_a_fresh_prompt() {
        let t = transcript(b"echo no\x03echo yes\n");
        assert_eq!(t, "# echo no^C\n# echo yes\nyes\n# ");
    }

    #[test]
    fn escape_sequences_are_ignored() {
        let t = transcript(b"echo\x1bOP\x1b[15~ hi\x1b[2~\n");
        assert_eq!(t, "# echo hi\nhi\n# ");
    }

    #[test]
    fn control_character_is_an_error() {
        let t = transcript(b"echo \x04\n");
        assert_eq!(
            t,
            "# echo ^D\nerror: EINVAL: control character ^D (0x04) in input\n# "
        );
    }

    /// `^error: E[A-Z0-9]+: .+$`
    fn is_error_line(l: &str) -> bool {
        let Some(rest) = l.strip_prefix("error: E") else {
            return false;
        };
        let name_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            .count();
        name_len > 0
            && rest[name_len..]
                .strip_prefix(": ")
                .is_some_and(|m| !m.is_empty())
    }

    fn chunk() -> impl Strategy<Value = Vec<u8>> {
        let words: Vec<&'static [u8]> = alloc::vec![
            b"cat ",
            b"echo ",
            b"ls ",
            b"help",
            b"dmesg",
            b"args ",
            b"partial",
            b" > ",
            b">",
            b">>",
            b"\"",
            b"'",
            b"#",
            b"/proc/meminfo",
            b"/sys/devices/system/memory/memory8/state",
            b"/sys/devices/system/memory/",
            b"/proc/empty",
            b"online",
            b" ",
            b"\r",
            b"\n",
            b"\r\n",
            b"\x08",
            b"\x7f",
            b"\x03",
            b"\x1b",
            b"\x1b[",
            b"\x1b[1;5A",
            "é€😀".as_bytes(),
        ];
        prop_oneof![
            4 => proptest::sample::select(words).prop_map(<[u8]>::to_vec),
            2 => proptest::collection::vec(any::<u8>(), 0..8),
            1 => proptest::collection::vec(0x20u8..0x7f, 0..400),
        ]
    }

    fn input() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(chunk(), 0..300).prop_map(|c| c.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary bytes, one at a time: never a panic; between line ends
        /// only echo (no newline); each line end is answered by output or
        /// exactly one well-formed error line, then a prompt at line start.
        #[test]
        fn any_bytes_any_time(input in input()) {
            let mut sys = FakeSystem::new();
            let mut con = Console::new(FakeIo::default());
            con.poll(&mut sys);
            prop_assert_eq!(&con.io().output, b"# ");
            let mut prev = None;
            for &b in &input {
                let before = con.io().output.len();
                con.io_mut().input.push_back(b);
                prop_assert_eq!(con.poll(&mut sys), 1);
                let out = &con.io().output[before..];
                let seg = core::str::from_utf8(out).map_err(|e| TestCaseError::fail(alloc::format!("{e}")))?;
                let line_end = b == b'\r' || (b == b'\n' && prev != Some(b'\r')) || b == 0x03;
                prev = Some(b);
                if !line_end {
                    prop_assert!(!seg.contains('\n'), "output {:?} for byte {:#x}", seg, b);
                    continue;
                }
                prop_assert!(seg.ends_with("\n# "), "no prompt after line end: {:?}", seg);
                if b == 0x03 {
                    prop_assert_eq!(seg, "^C\n# ");
                    continue;
                }
                prop_assert!(seg.starts_with('\n'));
                let body = &seg[1..seg.len() - 2];
                if let Some(i) = body.find("error: ") {
                    prop_assert!(i == 0, "error after output: {:?}", body);
                    prop_assert_eq!(body.matches('\n').count(), 1, "{:?}", body);
                    prop_assert!(is_error_line(body.trim_end_matches('\n')), "{:?}", body);
                }
            }
            let whole = String::from_utf8(con.into_io().output).unwrap();
            for l in whole.lines().filter(|l| l.starts_with("error: ")) {
                prop_assert!(is_error_line(l), "{:?}", l);
            }
            // Fed all at once, the same transcript.
            prop_assert_eq!(transcript(&input), whole);
        }
    }
}
