//! A byte-at-a-time line editor for a serial console.
//!
//! [`LineEditor::feed`] takes one input byte and says what to do about it
//! ([`Event`]). It never panics, whatever the bytes, and never waits for more
//! than the end of the line; memory use is bounded by [`MAX_LINE`].
//!
//! | input | effect |
//! | --- | --- |
//! | printable ASCII | appended and echoed |
//! | TAB | appended as a space |
//! | BS (0x08), DEL (0x7f) | removes the last character, echoes `"\x08 \x08"` per column it used |
//! | CR, LF, CR LF | end of line: [`Event::Line`], or [`Event::Error`] if the line is bad |
//! | Ctrl-C (0x03) | discards the line: [`Event::Cancel`] |
//! | ESC sequences (`ESC [ ... final`, `ESC O x`, `ESC x`) | swallowed (arrow keys and friends do nothing) |
//! | NUL | ignored (telnet sends CR NUL) |
//! | other control characters | kept and echoed as `^X` (backspace removes them); the line is then rejected with `EINVAL` at its end, so it never runs with bytes the user could not see |
//! | bytes >= 0x80 | collected; a complete valid UTF-8 character is echoed, an invalid byte echoes `?`; a line that is not valid UTF-8 is rejected with `EINVAL` |
//! | more than [`MAX_LINE`] bytes | the rest of the line is swallowed unechoed, then the line is rejected with `EINVAL` |
//!
//! Every error is reported once, at the end of the line, so that the console
//! answers each line with exactly one result.

use crate::error::{Errno, Error};
use alloc::string::String;
use alloc::vec::Vec;

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 256;

/// Longest escape sequence swallowed; a longer one is cut short and its
/// remaining bytes are taken as ordinary input.
const MAX_ESC: u8 = 32;

/// What the console should do after a byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing to show.
    Nothing,
    /// Write these bytes back to the terminal.
    Echo(Echo),
    /// A complete line (without its end), valid UTF-8, no control characters.
    Line(String),
    /// The line that just ended is rejected; the editor is ready for the next.
    Error(Error),
    /// Ctrl-C: the line was discarded; print a fresh prompt.
    Cancel,
}

/// Bytes to echo for one input byte (at most 8).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    buf: [u8; 8],
    len: u8,
}

impl Echo {
    const fn new() -> Self {
        Echo {
            buf: [0; 8],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len as usize) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl core::fmt::Debug for Echo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Echo({:?})", self.as_bytes())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    /// Just saw ESC.
    Start,
    /// `ESC [`, with this many parameter bytes so far.
    Csi(u8),
    /// `ESC O`: one more byte.
    Ss3,
}

/// One character of the line as the user sees it: `len` bytes of the buffer
/// that took `width` columns when echoed.
#[derive(Clone, Copy)]
struct Unit {
    len: u8,
    width: u8,
}

/// The line being typed. See the module documentation.
pub struct LineEditor {
    buf: Vec<u8>,
    units: Vec<Unit>,
    /// Continuation bytes the last unit (a UTF-8 sequence) still expects.
    need: u8,
    /// The line went over MAX_LINE: swallow until its end.
    overflow: bool,
    /// The previous byte was CR (an LF right after it is not a second line).
    after_cr: bool,
    esc: Esc,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        LineEditor {
            buf: Vec::new(),
            units: Vec::new(),
            need: 0,
            overflow: false,
            after_cr: false,
            esc: Esc::None,
        }
    }

    /// The line typed so far as it was echoed, for redrawing it after
    /// output that interrupted it (control characters as `^X`, bytes that
    /// are not UTF-8 as `?`).
    pub fn redraw(&self) -> alloc::string::String {
        alloc::string::String::from_utf8_lossy(&self.buf)
            .chars()
            .map(|c| match c {
                '\u{fffd}' => alloc::string::String::from("?"),
                c if (c as u32) < 0x20 => alloc::format!("^{}", (c as u8 + 0x40) as char),
                c => alloc::string::String::from(c),
            })
            .collect()
    }

    /// Whether nothing has been typed on the current line.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && !self.overflow
    }

    /// Forgets the current line (not the CR LF pairing).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.units.clear();
        self.need = 0;
        self.overflow = false;
        self.esc = Esc::None;
    }

    /// Takes one input byte.
    pub fn feed(&mut self, b: u8) -> Event {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        match b {
            b'\n' if after_cr => return Event::Nothing,
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                return self.finish();
            }
            0x03 => {
                self.reset();
                return Event::Cancel;
            }
            _ => {}
        }
        if self.overflow {
            return Event::Nothing;
        }
        if self.swallow_escape(b) {
            return Event::Nothing;
        }
        let mut echo = Echo::new();
        match b {
            0x00 => return Event::Nothing,
            0x1b => {
                self.esc = Esc::Start;
                return Event::Nothing;
            }
            0x08 | 0x7f => self.backspace(&mut echo),
            b'\t' => self.insert(b' ', 1, &mut echo),
            0x01..=0x1f => self.insert(b, 2, &mut echo),
            0x20..=0x7e => self.insert(b, 1, &mut echo),
            0x80..=0xff => self.insert_high(b, &mut echo),
        }
        if self.overflow || echo.len == 0 {
            Event::Nothing
        } else {
            Event::Echo(echo)
        }
    }

    /// Advances the escape-sequence state; true if `b` was part of one.
    fn swallow_escape(&mut self, b: u8) -> bool {
        let state = core::mem::replace(&mut self.esc, Esc::None);
        match (state, b) {
            (Esc::None, _) => false,
            (Esc::Start, b'[') => {
                self.esc = Esc::Csi(0);
                true
            }
            (Esc::Start, b'O') => {
                self.esc = Esc::Ss3;
                true
            }
            (Esc::Start, 0x1b) => {
                self.esc = Esc::Start;
                true
            }
            // ESC x (Alt-x and the like).
            (Esc::Start, 0x20..=0x7e) => true,
            (Esc::Csi(n), 0x20..=0x3f) if n < MAX_ESC => {
                self.esc = Esc::Csi(n + 1);
                true
            }
            (Esc::Csi(_), 0x40..=0x7e) | (Esc::Ss3, 0x20..=0x7e) => true,
            // Not part of a sequence after all: an ordinary byte.
            _ => false,
        }
    }

    /// Makes room for `n` more bytes, or switches to overflow.
    fn reserve(&mut self, n: usize) -> bool {
        if self.buf.len() + n > MAX_LINE {
            self.reset();
            self.overflow = true;
            return false;
        }
        true
    }

    /// An unfinished UTF-8 sequence followed by something else: it is an
    /// invalid character, shown as `?`.
    fn close_pending(&mut self, echo: &mut Echo) {
        if self.need > 0 {
            self.need = 0;
            if let Some(u) = self.units.last_mut() {
                u.width = 1;
                echo.push(b"?");
            }
        }
    }

    /// An ASCII byte: printable (`width` 1) or control (`width` 2, `^X`).
    fn insert(&mut self, b: u8, width: u8, echo: &mut Echo) {
        self.close_pending(echo);
        if !self.reserve(1) {
            return;
        }
        self.buf.push(b);
        self.units.push(Unit { len: 1, width });
        if width == 2 {
            echo.push(&[b'^', b ^ 0x40]);
        } else {
            echo.push(&[b]);
        }
    }

    fn insert_high(&mut self, b: u8, echo: &mut Echo) {
        if self.need > 0 && (0x80..=0xbf).contains(&b) {
            if !self.reserve(1) {
                return;
            }
            self.buf.push(b);
            self.need -= 1;
            let Some(u) = self.units.last_mut() else {
                return;
            };
            u.len += 1;
            if self.need == 0 {
                u.width = 1;
                let start = self.buf.len().saturating_sub(u.len as usize);
                match self.buf.get(start..) {
                    Some(ch) if core::str::from_utf8(ch).is_ok() => echo.push(ch),
                    _ => echo.push(b"?"),
                }
            }
            return;
        }
        self.close_pending(echo);
        if !self.reserve(1) {
            return;
        }
        let need = match b {
            0xc2..=0xdf => 1,
            0xe0..=0xef => 2,
            0xf0..=0xf4 => 3,
            _ => 0,
        };
        self.buf.push(b);
        self.need = need;
        if need == 0 {
            self.units.push(Unit { len: 1, width: 1 });
            echo.push(b"?");
        } else {
            self.units.push(Unit { len: 1, width: 0 });
        }
    }

    fn backspace(&mut self, echo: &mut Echo) {
        if let Some(u) = self.units.pop() {
            let len = self.buf.len().saturating_sub(u.len as usize);
            self.buf.truncate(len);
            self.need = 0;
            for _ in 0..u.width {
                echo.push(b"\x08 \x08");
            }
        }
    }

    fn finish(&mut self) -> Event {
        let overflow = self.overflow;
        let buf = core::mem::take(&mut self.buf);
        self.reset();
        if overflow {
            return Event::Error(crate::err!(
                EINVAL,
                "line too long (more than {} bytes)",
                MAX_LINE
            ));
        }
        match String::from_utf8(buf) {
            Err(_) => Event::Error(Error::new(Errno::EINVAL, "invalid UTF-8 input")),
            Ok(line) => match line.bytes().find(u8::is_ascii_control) {
                Some(c) => Event::Error(crate::err!(
                    EINVAL,
                    "control character ^{} (0x{:02x}) in input",
                    (c ^ 0x40) as char,
                    c
                )),
                None => Event::Line(line),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    /// Feeds `input`; returns everything echoed and the non-echo events.
    fn run(ed: &mut LineEditor, input: &[u8]) -> (Vec<u8>, Vec<Event>) {
        let mut echoed = Vec::new();
        let mut events = Vec::new();
        for &b in input {
            match ed.feed(b) {
                Event::Nothing => {}
                Event::Echo(e) => echoed.extend_from_slice(e.as_bytes()),
                ev => events.push(ev),
            }
        }
        (echoed, events)
    }

    fn line(s: &str) -> Event {
        Event::Line(s.to_string())
    }

    fn error_text(ev: &Event) -> String {
        match ev {
            Event::Error(e) => e.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn plain_line_is_echoed() {
        let mut ed = LineEditor::new();
        let (echo, ev) = run(&mut ed, b"cat /proc/meminfo\r");
        assert_eq!(echo, b"cat /proc/meminfo");
        assert_eq!(ev, vec![line("cat /proc/meminfo")]);
    }

    #[test]
    fn line_ends() {
        let mut ed = LineEditor::new();
        let (_, ev) = run(&mut ed, b"a\r\nb\nc\r\r\nd\n\r");
        assert_eq!(
            ev,
            vec![
                line("a"),
                line("b"),
                line("c"),
                line(""),
                line("d"),
                line("")
            ]
        );
    }

    #[test]
    fn backspace_and_del() {
        let mut ed = LineEditor::new();
        let (echo, ev) = run(&mut ed, b"catt\x08 /x\x7f\x7fy\n");
        assert_eq!(echo, b"catt\x08 \x08 /x\x08 \x08\x08 \x08y");
        assert_eq!(ev, vec![line("cat y")]);
        // Backspace on an empty line does nothing.
        let (echo, ev) = run(&mut ed, b"\x08\x7fls\n");
        assert_eq!(echo, b"ls");
        assert_eq!(ev, vec![line("ls")]);
    }

    #[test]
    fn backspace_removes_whole_utf8_char() {
        let mut ed = LineEditor::new();
        let (echo, ev) = run(&mut ed, "aé€😀".as_bytes());
        assert_eq!(echo, "aé€😀".as_bytes());
        assert!(ev.is_empty());
        let (echo, ev) = run(&mut ed, b"\x7f\x7f\n");
        assert_eq!(echo, b"\x08 \x08\x08 \x08");
        assert_eq!(ev, vec![line("aé")]);
    }

    #[test]
    fn ctrl_c_discards() {
        let mut ed = LineEditor::new();
        let (_, ev) = run(&mut ed, b"rm -rf\x03ls\n");
        assert_eq!(ev, vec![Event::Cancel, line("ls")]);
    }

    #[test]
    fn escape_sequences_are_swallowed() {
        let mut ed = LineEditor::new();
        // Up, Left, Delete, F1 (SS3), Alt-x, a long CSI, a colour.
        let (echo, ev) = run(
            &mut ed,
            b"l\x1b[A\x1b[Ds\x1b[3~\x1bOP\x1bx\x1b[1;2;3;4m\x1b\x1b[B\n",
        );
        assert_eq!(echo, b"ls");
        assert_eq!(ev, vec![line("ls")]);
        // A line end inside a sequence still ends the line.
        let (_, ev) = run(&mut ed, b"ls\x1b[12\r");
        assert_eq!(ev, vec![line("ls")]);
        // An endless CSI gives up; its bytes become ordinary input.
        let mut long = b"\x1b[".to_vec();
        long.extend(core::iter::repeat_n(b'1', 40));
        long.push(b'\n');
        let (_, ev) = run(&mut ed, &long);
        assert_eq!(ev, vec![line("11111111")]);
    }

    #[test]
    fn control_characters_reject_the_line() {
        let mut ed = LineEditor::new();
        let (echo, ev) = run(&mut ed, b"ec\x01ho\n");
        assert_eq!(echo, b"ec^Aho");
        assert_eq!(ev.len(), 1);
        assert_eq!(
            error_text(&ev[0]),
            "error: EINVAL: control character ^A (0x01) in input"
        );
        // Erased, it is forgotten.
        let (echo, ev) = run(&mut ed, b"ls\x02\x7f\n");
        assert_eq!(echo, b"ls^B\x08 \x08\x08 \x08");
        assert_eq!(ev, vec![line("ls")]);
        // Tab is a space, NUL is nothing.
        let (_, ev) = run(&mut ed, b"ls\t/\0\n");
        assert_eq!(ev, vec![line("ls /")]);
    }

    #[test]
    fn overlong_line() {
        let mut ed = LineEditor::new();
        let mut input = vec![b'a'; MAX_LINE];
        let (echo, ev) = run(&mut ed, &input);
        assert_eq!(echo.len(), MAX_LINE);
        assert!(ev.is_empty());
        input.extend_from_slice(b"bbbb\x7f\x7f\x7f\x7f\x7f\x1b[A\n");
        let (echo, ev) = run(&mut ed, &input[MAX_LINE..]);
        assert!(echo.is_empty());
        assert_eq!(ev.len(), 1);
        assert_eq!(
            error_text(&ev[0]),
            "error: EINVAL: line too long (more than 256 bytes)"
        );
        let (_, ev) = run(&mut ed, b"ls\n");
        assert_eq!(ev, vec![line("ls")]);
        // Exactly MAX_LINE is fine.
        let mut input = vec![b'x'; MAX_LINE];
        input.push(b'\r');
        let (_, ev) = run(&mut ed, &input);
        assert_eq!(ev, vec![Event::Line("x".repeat(MAX_LINE))]);
    }

    #[test]
    fn invalid_utf8() {
        let mut ed = LineEditor::new();
        for bad in [
            &b"a\xffb\n"[..],
            b"\xc3\n",
            b"\xe2\x82x\n",
            b"\xed\xa0\x80\n",
            b"\x80\n",
        ] {
            let (echo, ev) = run(&mut ed, bad);
            assert!(core::str::from_utf8(&echo).is_ok());
            assert_eq!(ev.len(), 1, "{bad:?}");
            assert_eq!(error_text(&ev[0]), "error: EINVAL: invalid UTF-8 input");
        }
        // An invalid byte erased is forgotten.
        let (echo, ev) = run(&mut ed, b"l\xfe\x7fs\n");
        assert_eq!(echo, b"l?\x08 \x08s");
        assert_eq!(ev, vec![line("ls")]);
        // An unfinished sequence is shown as '?' once interrupted.
        let (echo, _) = run(&mut ed, b"\xe2a\n");
        assert_eq!(echo, b"?a");
    }

    #[test]
    fn never_panics_on_all_byte_pairs() {
        let mut ed = LineEditor::new();
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                ed.feed(a);
                ed.feed(b);
            }
        }
        ed.feed(b'\n');
        assert!(ed.is_empty());
    }
}
