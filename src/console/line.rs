//! A byte-at-a-time line editor for a serial console, with the editing keys
//! and history of a Linux shell (readline's emacs bindings).
//!
//! [`LineEditor::feed`] takes one input byte and says what to do about it
//! ([`Event`]). It never panics, whatever the bytes, never waits for more
//! than the end of the line, and allocates nothing but the finished line:
//! the line, the history and each echo live in fixed arrays
//! ([`MAX_LINE`], [`HISTORY_BYTES`], [`ECHO_MAX`]).
//!
//! | input | effect |
//! | --- | --- |
//! | printable ASCII | inserted at the cursor and echoed |
//! | TAB | inserted as a space |
//! | BS (0x08), DEL (0x7f) | removes the character before the cursor |
//! | Ctrl-A, Home (`ESC [ H`, `ESC O H`, `ESC [ 1 ~`) | cursor to the start of the line |
//! | Ctrl-E, End (`ESC [ F`, `ESC O F`, `ESC [ 4 ~`) | cursor to the end of the line |
//! | Ctrl-B, Left (`ESC [ D`, `ESC O D`); Ctrl-F, Right (`ESC [ C`, `ESC O C`) | cursor one character left, right |
//! | Delete (`ESC [ 3 ~`) | removes the character under the cursor |
//! | Ctrl-U | removes everything before the cursor |
//! | Ctrl-K | removes everything from the cursor on |
//! | Ctrl-W | removes the word before the cursor (up to a space) |
//! | Ctrl-P, Up (`ESC [ A`, `ESC O A`); Ctrl-N, Down (`ESC [ B`, `ESC O B`) | the previous, next line of the history; Down past the newest gives back the line being typed |
//! | CR, LF, CR LF | end of line: [`Event::Line`], or [`Event::Error`] if the line is bad |
//! | Ctrl-C (0x03) | discards the line: [`Event::Cancel`] |
//! | other ESC sequences (`ESC [ ... final`, `ESC O x`, `ESC x`) | swallowed |
//! | NUL | ignored (telnet sends CR NUL) |
//! | other control characters | kept and echoed as `^X` (backspace removes them); the line is then rejected with `EINVAL` at its end, so it never runs with bytes the user could not see |
//! | bytes >= 0x80 | collected; a complete valid UTF-8 character is echoed, an invalid byte or a C1 control character (U+0080..U+009F, which a terminal would obey) echoes `?`; a line that is not valid UTF-8 or holds a C1 control is rejected with `EINVAL` |
//! | more than [`MAX_LINE`] bytes | the rest of the line is swallowed unechoed, then the line is rejected with `EINVAL` |
//!
//! Every error is reported once, at the end of the line, so that the console
//! answers each line with exactly one result.
//!
//! The echo redraws with nothing but backspaces, spaces and the characters
//! themselves, which every terminal understands: a change in the middle of
//! the line rewrites its tail, blanks what the tail no longer covers and
//! backs up to the cursor. Each character is taken to be one column wide
//! (`^X` two); a line longer than the terminal is wide is not redrawn
//! across its wrap.
//!
//! The history keeps the lines that ended as [`Event::Line`] (not blank, not
//! a repeat of the newest), at most [`HISTORY_LINES`] of them in
//! [`HISTORY_BYTES`]; the oldest go first. Editing a line recalled from the
//! history changes the line, not the history.

use crate::error::{Errno, Error};
use alloc::string::String;

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 256;

/// Room for the history's lines, in bytes.
pub const HISTORY_BYTES: usize = 4096;

/// Most lines the history holds.
pub const HISTORY_LINES: usize = 64;

/// Longest echo of one byte. A line shows at most `2 * MAX_LINE` columns
/// (every byte a `^X`) in at most as many bytes; the worst redraw backs up
/// over the line, rewrites it, blanks and backs up over what it covered,
/// then backs up to the cursor: at most five times that.
pub const ECHO_MAX: usize = 10 * MAX_LINE;

/// Longest escape sequence swallowed; a longer one is cut short and its
/// remaining bytes are taken as ordinary input.
const MAX_ESC: u8 = 32;

/// What the console should do after a byte.
// The echo stays out of the heap: no allocation per keystroke.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing to show.
    Nothing,
    /// Write these bytes back to the terminal.
    Echo(Echo),
    /// A complete line (without its end), valid UTF-8, no control
    /// characters (C0 or C1).
    Line(String),
    /// The line that just ended is rejected; the editor is ready for the next.
    Error(Error),
    /// Ctrl-C: the line was discarded; print a fresh prompt.
    Cancel,
}

/// Bytes to echo for one input byte (at most [`ECHO_MAX`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Echo {
    buf: [u8; ECHO_MAX],
    len: usize,
}

impl Echo {
    const fn new() -> Self {
        Echo {
            buf: [0; ECHO_MAX],
            len: 0,
        }
    }

    /// Appends `bytes`; what does not fit is dropped (never happens: see
    /// [`ECHO_MAX`]).
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn repeat(&mut self, bytes: &[u8], times: usize) {
        for _ in 0..times {
            self.push(bytes);
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
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
    /// `ESC [`, with `n` parameter bytes so far; `param` is the first
    /// parameter's value, `more` says it has ended.
    Csi {
        n: u8,
        param: u16,
        more: bool,
    },
    /// `ESC O`: one more byte.
    Ss3,
}

/// The keys escape sequences stand for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    Delete,
}

/// What a byte meant to the escape-sequence reader.
enum Escaped {
    /// Not part of a sequence: an ordinary byte.
    No,
    /// Part of a sequence that is not over, or that means nothing here.
    Swallowed,
    /// The end of a key's sequence.
    Key(Key),
}

/// A final byte of `ESC [` or `ESC O` as a cursor key.
fn cursor_key(b: u8) -> Option<Key> {
    Some(match b {
        b'A' => Key::Up,
        b'B' => Key::Down,
        b'C' => Key::Right,
        b'D' => Key::Left,
        b'H' => Key::Home,
        b'F' => Key::End,
        _ => return None,
    })
}

/// One character of the line as the user sees it: `len` bytes of the buffer
/// that take `width` columns when echoed (0 while a UTF-8 sequence is
/// incomplete).
#[derive(Clone, Copy, Default)]
struct Unit {
    len: u8,
    width: u8,
}

/// A line's bytes and the characters they make.
#[derive(Clone, Copy)]
struct Line {
    buf: [u8; MAX_LINE],
    len: usize,
    units: [Unit; MAX_LINE],
    /// Characters in `units`.
    n: usize,
}

impl Line {
    const fn new() -> Self {
        Line {
            buf: [0; MAX_LINE],
            len: 0,
            units: [Unit { len: 0, width: 0 }; MAX_LINE],
            n: 0,
        }
    }

    /// A line of text without control characters (from the history).
    fn from_text(text: &[u8]) -> Self {
        let mut line = Line::new();
        let text = core::str::from_utf8(text).unwrap_or("");
        for c in text.chars() {
            let mut b = [0; 4];
            line.insert(line.n, c.encode_utf8(&mut b).as_bytes(), 1);
        }
        line
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Byte offset of character `i`.
    fn offset(&self, i: usize) -> usize {
        self.units[..i].iter().map(|u| u.len as usize).sum()
    }

    /// Columns of characters `from..to`.
    fn width(&self, from: usize, to: usize) -> usize {
        self.units[from..to].iter().map(|u| u.width as usize).sum()
    }

    fn unit_bytes(&self, i: usize) -> &[u8] {
        let start = self.offset(i);
        &self.buf[start..start + self.units[i].len as usize]
    }

    /// Inserts character `bytes` as character `at`; false if it does not fit.
    fn insert(&mut self, at: usize, bytes: &[u8], width: u8) -> bool {
        let k = bytes.len();
        if self.len + k > MAX_LINE || k > u8::MAX as usize || at > self.n {
            return false;
        }
        let off = self.offset(at);
        self.buf.copy_within(off..self.len, off + k);
        self.buf[off..off + k].copy_from_slice(bytes);
        self.units.copy_within(at..self.n, at + 1);
        self.units[at] = Unit {
            len: k as u8,
            width,
        };
        self.len += k;
        self.n += 1;
        true
    }

    /// Removes characters `from..to`.
    fn remove(&mut self, from: usize, to: usize) {
        let (a, b) = (self.offset(from), self.offset(to));
        self.buf.copy_within(b..self.len, a);
        self.len -= b - a;
        self.units.copy_within(to..self.n, from);
        self.n -= to - from;
    }

    /// Echoes character `i` as it is shown.
    fn show(&self, i: usize, echo: &mut Echo) {
        let u = self.units[i];
        let bytes = self.unit_bytes(i);
        match u.width {
            0 => {}
            2 => echo.push(&[b'^', bytes[0] ^ 0x40]),
            // C1 controls (U+0080..U+009F) would command the terminal.
            _ => match core::str::from_utf8(bytes) {
                Ok(c) if !c.chars().any(char::is_control) => echo.push(bytes),
                _ => echo.push(b"?"),
            },
        }
    }

    /// Whether character `i` is a space (a word boundary for Ctrl-W).
    fn is_space(&self, i: usize) -> bool {
        self.unit_bytes(i) == b" "
    }
}

/// The lines entered, oldest first, packed in a fixed array.
struct History {
    bytes: [u8; HISTORY_BYTES],
    lens: [u16; HISTORY_LINES],
    count: usize,
    used: usize,
}

impl History {
    const fn new() -> Self {
        History {
            bytes: [0; HISTORY_BYTES],
            lens: [0; HISTORY_LINES],
            count: 0,
            used: 0,
        }
    }

    /// Line `i`, 0 the oldest.
    fn get(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count {
            return None;
        }
        let start: usize = self.lens[..i].iter().map(|&l| l as usize).sum();
        self.bytes.get(start..start + self.lens[i] as usize)
    }

    fn push(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace)
            || line.len() > HISTORY_BYTES
            || (self.count > 0 && self.get(self.count - 1) == Some(line))
        {
            return;
        }
        while self.count > 0
            && (self.count == HISTORY_LINES || self.used + line.len() > HISTORY_BYTES)
        {
            let first = self.lens[0] as usize;
            self.bytes.copy_within(first..self.used, 0);
            self.used -= first;
            self.lens.copy_within(1..self.count, 0);
            self.count -= 1;
        }
        self.bytes[self.used..self.used + line.len()].copy_from_slice(line);
        self.lens[self.count] = line.len() as u16;
        self.used += line.len();
        self.count += 1;
    }
}

/// The line being typed, and the history. See the module documentation.
pub struct LineEditor {
    line: Line,
    /// Characters before the cursor.
    cursor: usize,
    /// Continuation bytes the character before the cursor (a UTF-8
    /// sequence) still expects.
    need: u8,
    /// The line went over MAX_LINE: swallow until its end.
    overflow: bool,
    /// The previous byte was CR (an LF right after it is not a second line).
    after_cr: bool,
    esc: Esc,
    history: History,
    /// The history line shown; `history.count` while typing a new line.
    browse: usize,
    /// The new line, kept while the history is shown instead.
    saved: Line,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        LineEditor {
            line: Line::new(),
            cursor: 0,
            need: 0,
            overflow: false,
            after_cr: false,
            esc: Esc::None,
            history: History::new(),
            browse: 0,
            saved: Line::new(),
        }
    }

    /// The line typed so far as it was echoed (control characters as `^X`,
    /// bytes that are not UTF-8 as `?`), the terminal's cursor then backed
    /// up to the editor's: for redrawing the line after output that
    /// interrupted it.
    pub fn redraw(&self) -> Echo {
        let mut echo = Echo::new();
        for i in 0..self.line.n {
            self.line.show(i, &mut echo);
        }
        echo.repeat(b"\x08", self.line.width(self.cursor, self.line.n));
        echo
    }

    /// Whether nothing has been typed on the current line.
    pub fn is_empty(&self) -> bool {
        self.line.len == 0 && !self.overflow
    }

    /// Forgets the current line (not the CR LF pairing nor the history).
    pub fn reset(&mut self) {
        self.line = Line::new();
        self.cursor = 0;
        self.need = 0;
        self.overflow = false;
        self.esc = Esc::None;
        self.browse = self.history.count;
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
        let mut echo = Echo::new();
        match self.escape(b) {
            Escaped::No => {}
            Escaped::Swallowed => return Event::Nothing,
            Escaped::Key(key) => {
                self.close_pending(&mut echo);
                self.key(key, &mut echo);
                return self.echo(echo);
            }
        }
        if !matches!(b, 0x80..=0xbf) {
            self.close_pending(&mut echo);
        }
        match b {
            0x00 => {}
            0x1b => self.esc = Esc::Start,
            0x01 => self.key(Key::Home, &mut echo),
            0x05 => self.key(Key::End, &mut echo),
            0x02 => self.key(Key::Left, &mut echo),
            0x06 => self.key(Key::Right, &mut echo),
            0x10 => self.key(Key::Up, &mut echo),
            0x0e => self.key(Key::Down, &mut echo),
            // Ctrl-U: unix-line-discard.
            0x15 => self.kill(0, self.cursor, &mut echo),
            // Ctrl-K: kill-line.
            0x0b => self.kill(self.cursor, self.line.n, &mut echo),
            // Ctrl-W: unix-word-rubout.
            0x17 => {
                let mut from = self.cursor;
                while from > 0 && self.line.is_space(from - 1) {
                    from -= 1;
                }
                while from > 0 && !self.line.is_space(from - 1) {
                    from -= 1;
                }
                self.kill(from, self.cursor, &mut echo);
            }
            0x08 | 0x7f => self.kill(self.cursor.saturating_sub(1), self.cursor, &mut echo),
            b'\t' => self.insert(b' ', 1, &mut echo),
            // 0x03 (Ctrl-C) never gets here.
            0x03..=0x1f => self.insert(b, 2, &mut echo),
            0x20..=0x7e => self.insert(b, 1, &mut echo),
            0x80..=0xff => self.insert_high(b, &mut echo),
        }
        self.echo(echo)
    }

    fn echo(&self, echo: Echo) -> Event {
        if self.overflow || echo.len == 0 {
            Event::Nothing
        } else {
            Event::Echo(echo)
        }
    }

    /// Advances the escape-sequence state with `b`.
    fn escape(&mut self, b: u8) -> Escaped {
        let state = core::mem::replace(&mut self.esc, Esc::None);
        match (state, b) {
            (Esc::None, _) => Escaped::No,
            (Esc::Start, b'[') => {
                self.esc = Esc::Csi {
                    n: 0,
                    param: 0,
                    more: false,
                };
                Escaped::Swallowed
            }
            (Esc::Start, b'O') => {
                self.esc = Esc::Ss3;
                Escaped::Swallowed
            }
            (Esc::Start, 0x1b) => {
                self.esc = Esc::Start;
                Escaped::Swallowed
            }
            // ESC x (Alt-x and the like).
            (Esc::Start, 0x20..=0x7e) => Escaped::Swallowed,
            (Esc::Csi { n, param, more }, 0x20..=0x3f) if n < MAX_ESC => {
                let (param, more) = match b {
                    b'0'..=b'9' if !more => (
                        param.saturating_mul(10).saturating_add((b - b'0') as u16),
                        false,
                    ),
                    _ => (param, true),
                };
                self.esc = Esc::Csi {
                    n: n + 1,
                    param,
                    more,
                };
                Escaped::Swallowed
            }
            (Esc::Csi { param, .. }, b'~') => match param {
                1 | 7 => Escaped::Key(Key::Home),
                4 | 8 => Escaped::Key(Key::End),
                3 => Escaped::Key(Key::Delete),
                _ => Escaped::Swallowed,
            },
            (Esc::Csi { .. }, 0x40..=0x7e) | (Esc::Ss3, 0x20..=0x7e) => {
                cursor_key(b).map_or(Escaped::Swallowed, Escaped::Key)
            }
            // Not part of a sequence after all: an ordinary byte.
            _ => Escaped::No,
        }
    }

    fn key(&mut self, key: Key, echo: &mut Echo) {
        match key {
            Key::Home => self.move_to(0, echo),
            Key::End => self.move_to(self.line.n, echo),
            Key::Left => self.move_to(self.cursor.saturating_sub(1), echo),
            Key::Right => self.move_to((self.cursor + 1).min(self.line.n), echo),
            Key::Delete => self.kill(self.cursor, (self.cursor + 1).min(self.line.n), echo),
            Key::Up if self.browse > 0 => {
                if self.browse == self.history.count {
                    self.saved = self.line;
                }
                self.browse -= 1;
                let line = Line::from_text(self.history.get(self.browse).unwrap_or(b""));
                self.replace(line, echo);
            }
            Key::Down if self.browse < self.history.count => {
                self.browse += 1;
                let line = match self.history.get(self.browse) {
                    Some(text) => Line::from_text(text),
                    None => self.saved,
                };
                self.replace(line, echo);
            }
            Key::Up | Key::Down => {}
        }
    }

    /// Moves the cursor (and the terminal's) to before character `to`.
    fn move_to(&mut self, to: usize, echo: &mut Echo) {
        if to < self.cursor {
            echo.repeat(b"\x08", self.line.width(to, self.cursor));
        } else {
            for i in self.cursor..to {
                self.line.show(i, echo);
            }
        }
        self.cursor = to;
    }

    /// Rewrites the line from character `from` (where the terminal's cursor
    /// is) to its end, blanks the rest of the `old_tail` columns the old
    /// text covered from there, and backs up to the cursor.
    fn refresh(&self, from: usize, old_tail: usize, echo: &mut Echo) {
        for i in from..self.line.n {
            self.line.show(i, echo);
        }
        let tail = self.line.width(from, self.line.n);
        let blank = old_tail.saturating_sub(tail);
        echo.repeat(b" ", blank);
        echo.repeat(b"\x08", blank + self.line.width(self.cursor, self.line.n));
    }

    /// Shows `line` instead of the current one, the cursor at its end.
    fn replace(&mut self, line: Line, echo: &mut Echo) {
        self.move_to(0, echo);
        let old = self.line.width(0, self.line.n);
        self.line = line;
        self.cursor = self.line.n;
        self.refresh(0, old, echo);
    }

    /// Removes characters `from..to` (`from <= cursor`); the cursor goes to
    /// `from`.
    fn kill(&mut self, from: usize, to: usize, echo: &mut Echo) {
        if from >= to {
            return;
        }
        self.move_to(from, echo);
        let old = self.line.width(from, self.line.n);
        self.line.remove(from, to);
        self.refresh(from, old, echo);
    }

    /// Inserts a character of one byte at the cursor; on overflow the line
    /// is dropped and the rest of it swallowed.
    fn insert_char(&mut self, bytes: &[u8], width: u8, echo: &mut Echo) -> bool {
        let at = self.cursor;
        let old = self.line.width(at, self.line.n);
        if !self.line.insert(at, bytes, width) {
            self.reset();
            self.overflow = true;
            return false;
        }
        self.cursor += 1;
        if width > 0 {
            self.refresh(at, old, echo);
        }
        true
    }

    /// An unfinished UTF-8 sequence followed by something else: it is an
    /// invalid character, shown as `?`.
    fn close_pending(&mut self, echo: &mut Echo) {
        if self.need > 0 && self.cursor > 0 {
            self.need = 0;
            let at = self.cursor - 1;
            self.line.units[at].width = 1;
            let old = self.line.width(self.cursor, self.line.n);
            self.refresh(at, old, echo);
        }
        self.need = 0;
    }

    /// An ASCII byte: printable (`width` 1) or control (`width` 2, `^X`).
    fn insert(&mut self, b: u8, width: u8, echo: &mut Echo) {
        self.insert_char(&[b], width, echo);
    }

    fn insert_high(&mut self, b: u8, echo: &mut Echo) {
        if self.need > 0 && self.cursor > 0 && (0x80..=0xbf).contains(&b) {
            let at = self.cursor - 1;
            let end = self.line.offset(self.cursor);
            if self.line.len + 1 > MAX_LINE {
                self.reset();
                self.overflow = true;
                return;
            }
            self.line.buf.copy_within(end..self.line.len, end + 1);
            self.line.buf[end] = b;
            self.line.len += 1;
            self.line.units[at].len += 1;
            self.need -= 1;
            if self.need == 0 {
                self.line.units[at].width = 1;
                let old = self.line.width(self.cursor, self.line.n);
                self.refresh(at, old, echo);
            }
            return;
        }
        self.close_pending(echo);
        let need = match b {
            0xc2..=0xdf => 1,
            0xe0..=0xef => 2,
            0xf0..=0xf4 => 3,
            _ => 0,
        };
        if self.insert_char(&[b], u8::from(need == 0), echo) {
            self.need = need;
        }
    }

    fn finish(&mut self) -> Event {
        let ev = if self.overflow {
            Event::Error(crate::err!(
                EINVAL,
                "line too long (more than {} bytes)",
                MAX_LINE
            ))
        } else {
            match core::str::from_utf8(self.line.bytes()) {
                Err(_) => Event::Error(Error::new(Errno::EINVAL, "invalid UTF-8 input")),
                Ok(line) => match line.chars().find(|c| c.is_control()) {
                    Some(c) if c.is_ascii() => Event::Error(crate::err!(
                        EINVAL,
                        "control character ^{} (0x{:02x}) in input",
                        (c as u8 ^ 0x40) as char,
                        c as u32
                    )),
                    Some(c) => Event::Error(crate::err!(
                        EINVAL,
                        "control character U+{:04X} in input",
                        c as u32
                    )),
                    None => {
                        let mut s = String::new();
                        match s.try_reserve_exact(line.len()) {
                            Err(_) => {
                                Event::Error(Error::new(Errno::ENOMEM, "no memory for the line"))
                            }
                            Ok(()) => {
                                s.push_str(line);
                                self.history.push(line.as_bytes());
                                Event::Line(s)
                            }
                        }
                    }
                },
            }
        };
        self.reset();
        ev
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

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
        // F1 (SS3), Alt-x, a colour, F5, Insert after a lone ESC, Up and
        // Down with no history.
        let (echo, ev) = run(
            &mut ed,
            b"l\x1bOP\x1bxs\x1b[1;2;3;4m\x1b[15~\x1b\x1b[2~\x1b[A\x1b[B\n",
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
    fn ctrl_a_and_ctrl_e_move_to_the_ends() {
        let mut ed = LineEditor::new();
        let (echo, ev) = run(&mut ed, b"cho hi\x01e\x05!\n");
        assert_eq!(
            echo,
            b"cho hi\x08\x08\x08\x08\x08\x08echo hi\x08\x08\x08\x08\x08\x08cho hi!"
        );
        assert_eq!(ev, vec![line("echo hi!")]);
    }

    #[test]
    fn arrows_move_and_insert_in_the_middle() {
        let mut ed = LineEditor::new();
        // Left twice (CSI and SS3 forms), insert, Right (CSI), Home, End.
        let (echo, ev) = run(&mut ed, b"ct\x1b[D\x1bODa\x1b[C\x1b[H\x1b[F\n");
        assert_eq!(echo, b"ct\x08\x08act\x08\x08c\x08\x08act");
        assert_eq!(ev, vec![line("act")]);
        // Ctrl-B, Ctrl-F; Home and End as `ESC [ 1 ~`, `ESC [ 4 ~`.
        let (_, ev) = run(&mut ed, b"bc\x02\x02a\x06\x06d\x1b[1~>\x1b[4~<\n");
        assert_eq!(ev, vec![line(">abcd<")]);
        // The cursor stops at the ends.
        let (_, ev) = run(&mut ed, b"x\x1b[D\x1b[D\x1b[Dy\x1b[C\x1b[C\x1b[Cz\n");
        assert_eq!(ev, vec![line("yxz")]);
    }

    #[test]
    fn deleting_in_the_middle_redraws_the_tail() {
        let mut ed = LineEditor::new();
        // Backspace before the last two characters: back, tail, blank, back.
        let (echo, ev) = run(&mut ed, b"abXcd\x1b[D\x1b[D\x7f\n");
        assert_eq!(echo, b"abXcd\x08\x08\x08cd \x08\x08\x08");
        assert_eq!(ev, vec![line("abcd")]);
        // Delete takes the character under the cursor.
        let (echo, ev) = run(&mut ed, b"abXcd\x1b[D\x1b[D\x1b[D\x1b[3~\n");
        assert_eq!(echo, b"abXcd\x08\x08\x08cd \x08\x08\x08");
        assert_eq!(ev, vec![line("abcd")]);
        // Delete at the end does nothing.
        let (echo, ev) = run(&mut ed, b"ab\x1b[3~\n");
        assert_eq!(echo, b"ab");
        assert_eq!(ev, vec![line("ab")]);
    }

    #[test]
    fn ctrl_u_ctrl_k_ctrl_w_kill() {
        let mut ed = LineEditor::new();
        // Ctrl-U at the end blanks the whole line.
        let (echo, ev) = run(&mut ed, b"rm x\x15ls\n");
        assert_eq!(echo, b"rm x\x08\x08\x08\x08    \x08\x08\x08\x08ls");
        assert_eq!(ev, vec![line("ls")]);
        // Ctrl-U in the middle keeps what follows the cursor.
        let (_, ev) = run(&mut ed, b"junk ls /\x1b[D\x1b[D\x1b[D\x1b[D\x15\n");
        assert_eq!(ev, vec![line("ls /")]);
        // Ctrl-K keeps what precedes it.
        let (_, ev) = run(&mut ed, b"ls /junk\x01\x06\x06\x06\x06\x0b\n");
        assert_eq!(ev, vec![line("ls /")]);
        // Ctrl-W takes the word before the cursor and the spaces after it.
        let (_, ev) = run(&mut ed, b"cat /proc/meminfo  \x17/proc/iomem\n");
        assert_eq!(ev, vec![line("cat /proc/iomem")]);
        let (_, ev) = run(&mut ed, b"a b\x17\x17\x17c\n");
        assert_eq!(ev, vec![line("c")]);
    }

    #[test]
    fn history_up_and_down() {
        let mut ed = LineEditor::new();
        run(&mut ed, b"ls\ncat /proc/meminfo\n");
        // Up shows the newest: the cursor goes to the start, the line is
        // rewritten, the cursor is left at its end.
        let (echo, ev) = run(&mut ed, b"ec\x1b[A");
        assert_eq!(echo, b"ec\x08\x08cat /proc/meminfo");
        assert!(ev.is_empty());
        // Up again (SS3 form), and once more past the oldest: `ls`, the
        // longer line blanked.
        let (echo, _) = run(&mut ed, b"\x1bOA\x10");
        let mut want = b"\x08".repeat(17);
        want.extend_from_slice(b"ls");
        want.extend_from_slice(&b" ".repeat(15));
        want.extend_from_slice(&b"\x08".repeat(15));
        assert_eq!(echo, want);
        // Down, Down: back to the line being typed; once more does nothing.
        let (_, ev) = run(&mut ed, b"\x1b[B\x0e\x1b[Bho x\n");
        assert_eq!(ev, vec![line("echo x")]);
        // A recalled line runs as is, or edited; the edit is a new entry.
        let (_, ev) = run(&mut ed, b"\x1b[A\n\x1b[A\x1b[A\x17/proc/iomem\n");
        assert_eq!(ev, vec![line("echo x"), line("cat /proc/iomem")]);
        let (_, ev) = run(&mut ed, b"\x1b[A\x1b[A\n");
        assert_eq!(ev, vec![line("echo x")]);
    }

    #[test]
    fn history_keeps_good_lines_once() {
        let mut ed = LineEditor::new();
        // Blank lines, repeats of the newest, rejected lines, cancelled and
        // overlong lines are not kept.
        let mut input = b"one\n  \n\none\none\nbad\x04\n\xff\ntwo\x03".to_vec();
        input.extend(core::iter::repeat_n(b'x', MAX_LINE + 1));
        input.push(b'\n');
        run(&mut ed, &input);
        assert_eq!(ed.history.count, 1);
        let (_, ev) = run(&mut ed, b"\x1b[A\x1b[A\n");
        assert_eq!(ev, vec![line("one")]);
    }

    #[test]
    fn history_is_bounded_and_drops_the_oldest() {
        let mut ed = LineEditor::new();
        for i in 0..1000 {
            let l = alloc::format!("{i:0200}\n");
            run(&mut ed, l.as_bytes());
            assert!(ed.history.count <= HISTORY_LINES);
            assert!(ed.history.used <= HISTORY_BYTES);
        }
        let kept = HISTORY_BYTES / 200;
        assert_eq!(ed.history.count, kept);
        // Up as far as it goes: the oldest line kept.
        let ups = b"\x1b[A".repeat(kept + 5);
        let (_, ev) = run(&mut ed, &[ups.as_slice(), b"\n"].concat());
        assert_eq!(
            ev,
            vec![Event::Line(alloc::format!("{:0200}", 1000 - kept))]
        );
        // Many short lines: bounded by the count.
        for i in 0..200 {
            run(&mut ed, alloc::format!("{i}\n").as_bytes());
        }
        assert_eq!(ed.history.count, HISTORY_LINES);
        let (_, ev) = run(&mut ed, b"\x1b[A\n");
        assert_eq!(ev, vec![line("199")]);
    }

    #[test]
    fn control_characters_reject_the_line() {
        let mut ed = LineEditor::new();
        let (echo, ev) = run(&mut ed, b"ec\x11ho\n");
        assert_eq!(echo, b"ec^Qho");
        assert_eq!(ev.len(), 1);
        assert_eq!(
            error_text(&ev[0]),
            "error: EINVAL: control character ^Q (0x11) in input"
        );
        // Erased, it is forgotten.
        let (echo, ev) = run(&mut ed, b"ls\x1a\x7f\n");
        assert_eq!(echo, b"ls^Z\x08\x08  \x08\x08");
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
        // A C1 control is shown as '?' and rejects the line.
        let (echo, ev) = run(&mut ed, "a\u{9b}1m\n".as_bytes());
        assert_eq!(echo, b"a?1m");
        assert_eq!(
            error_text(&ev[0]),
            "error: EINVAL: control character U+009B in input"
        );
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

    /// A terminal line as a serial terminal shows it: characters
    /// overwrite, BS moves left (not past the start), UTF-8 characters take
    /// one column.
    #[derive(Default)]
    struct Screen {
        row: Vec<char>,
        col: usize,
    }

    impl Screen {
        fn put(&mut self, bytes: &[u8]) {
            let text = core::str::from_utf8(bytes).expect("echo is UTF-8");
            for c in text.chars() {
                match c {
                    '\x08' => self.col = self.col.saturating_sub(1),
                    c => {
                        assert!(!c.is_control(), "echo sends {c:?}");
                        match self.row.get_mut(self.col) {
                            Some(slot) => *slot = c,
                            None => self.row.push(c),
                        }
                        self.col += 1;
                    }
                }
            }
        }

        /// What is shown, without blanks at the end.
        fn text(&self) -> String {
            let s: String = self.row.iter().collect();
            s.trim_end_matches(' ').into()
        }
    }

    fn keys() -> impl Strategy<Value = Vec<u8>> {
        let words: Vec<&'static [u8]> = vec![
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
            b"\x1b",
            b"\x1b[",
            b"\x1bO",
            b"\x01",
            b"\x02",
            b"\x05",
            b"\x06",
            b"\x0b",
            b"\x0e",
            b"\x10",
            b"\x15",
            b"\x17",
            b"\x08",
            b"\x7f",
            b"\x04",
            b"\t",
            b"\0",
            b"\r",
            b"\n",
            b"\x03",
            b" ",
            b"ls",
            b"cat /proc/meminfo",
            "\u{e9}\u{20ac}\u{1f600}".as_bytes(),
            b"\xe2\x82",
            b"\xff",
            b"\xed\xa0\x80",
            b"\xc3",
        ];
        let chunk = prop_oneof![
            4 => proptest::sample::select(words).prop_map(<[u8]>::to_vec),
            2 => proptest::collection::vec(any::<u8>(), 0..8),
            1 => proptest::collection::vec(0x20u8..0x7f, 0..300),
        ];
        proptest::collection::vec(chunk, 0..200).prop_map(|c| c.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any bytes: no panic, no echo near its bound; after every byte
        /// the terminal shows the line exactly as a full redraw would, the
        /// cursor where the editor's is; lines are well formed; the history
        /// stays in its bounds.
        #[test]
        fn any_bytes_keep_the_terminal_in_step(input in keys()) {
            let mut ed = LineEditor::new();
            let mut screen = Screen::default();
            for &b in &input {
                match ed.feed(b) {
                    Event::Nothing => {}
                    Event::Echo(e) => {
                        prop_assert!(e.as_bytes().len() < ECHO_MAX / 2, "{} bytes", e.as_bytes().len());
                        screen.put(e.as_bytes());
                    }
                    Event::Line(l) => {
                        prop_assert!(l.len() <= MAX_LINE);
                        prop_assert!(!l.chars().any(char::is_control), "{:?}", l);
                        screen = Screen::default();
                    }
                    Event::Error(_) | Event::Cancel => screen = Screen::default(),
                }
                if ed.overflow {
                    continue;
                }
                let mut full = Screen::default();
                full.put(ed.redraw().as_bytes());
                prop_assert_eq!(screen.text(), full.text(), "after byte {:#x}", b);
                prop_assert_eq!(screen.col, full.col, "cursor after byte {:#x}", b);
                prop_assert_eq!(full.col, ed.line.width(0, ed.cursor));
                prop_assert!(ed.cursor <= ed.line.n && ed.line.n <= ed.line.len);
                prop_assert_eq!(ed.line.offset(ed.line.n), ed.line.len);
                prop_assert!(ed.history.count <= HISTORY_LINES && ed.history.used <= HISTORY_BYTES);
                prop_assert!(ed.browse <= ed.history.count);
            }
        }
    }

    /// The longest echoes: a full line of control characters, blanked from
    /// its end, or replaced by a history line.
    #[test]
    fn worst_echoes_fit() {
        let mut ed = LineEditor::new();
        let mut longest = 0;
        let mut feed = |ed: &mut LineEditor, bytes: &[u8]| {
            for &b in bytes {
                if let Event::Echo(e) = ed.feed(b) {
                    longest = longest.max(e.as_bytes().len());
                }
            }
        };
        feed(&mut ed, &[b'x'; MAX_LINE]);
        feed(&mut ed, b"\n");
        feed(&mut ed, &[0x1a; MAX_LINE]);
        feed(&mut ed, b"\x1b[D\x15\x05");
        feed(&mut ed, b"\x01\x1b[3~\x05\x10");
        assert!(longest >= 3 * MAX_LINE, "{longest}");
        assert!(longest < ECHO_MAX, "{longest}");
    }
}
