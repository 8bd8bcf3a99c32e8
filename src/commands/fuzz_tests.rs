//! The shell over a booted host kernel, fed arbitrary lines and bytes: an
//! answer or one error line, never a panic; a command that fails leaves
//! memory as it was.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::tests::shell;
use crate::console::{run, Console, Io, PROMPT};

/// Words the commands and the shell know, and some they do not.
const WORDS: &[&str] = &[
    "cat",
    "echo",
    "ls",
    "help",
    "devmem",
    "list",
    "map",
    "unmap",
    "0",
    "1",
    "7",
    "--map=dev",
    "--map=mem",
    "--map=",
    "pin",
    "unpin",
    "page",
    "frob",
    "4K",
    "1M",
    "100G",
    "0x40000000",
    "0xffffffffffffffff",
    "99999999999999999999",
    "-1",
    ">",
    ">>",
    "\"",
    "'",
    "#",
    "/proc/meminfo",
    "/sys/devices/system/memory/probe",
    "online",
    "offline",
    "..",
    "/",
];

/// Files the lines read and write.
const PATHS: &[&str] = &[
    "/proc/meminfo",
    "/proc/vmstat",
    "/proc/iomem",
    "/sys/devices/system/memory/probe",
    "/sys/devices/system/memory/remove",
    "/sys/devices/system/memory/auto_online_blocks",
    "/sys/devices/system/memory/memory8/online",
    "/sys/devices/system/memory/memory9/state",
    "/sys/devices/system/memory/memory10/state",
    "/sys/module/memory_hotplug/parameters/memmap_on_memory",
    "/sys/kernel/debug/fail_nth_alloc",
    "/sys/devices/system/memory",
    "/nope",
];

/// Values for `echo VALUE > PATH` and command arguments.
const VALUES: &[&str] = &[
    "online",
    "online_movable",
    "offline",
    "1",
    "0",
    "3",
    "Y",
    "N",
    "0x48000000",
    "0x50000000",
    "0x50000000 0x10000000",
    "0x90000000",
    "4K",
    "1M",
    "100G",
    "-1",
    "0x",
    "99999999999999999999",
    "x",
];

fn pick(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(words).prop_map(String::from)
}

/// A line: a command with arguments it may or may not take, a write, or
/// words of any kind.
fn line() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        6 => pick(WORDS),
        1 => "[ -~]{0,12}",
        1 => ".{0,6}",
    ];
    prop_oneof![
        2 => (
            pick(&["list", "map", "unmap", "frob", ""]),
            pick(&["0", "1", "7", "x", "-1", ""]),
            pick(&["--map=dev", "--map=mem", "--map=", "--map=x", ""]),
        )
            .prop_map(|(a, b, c)| format!("devmem {a} {b} {c}")),
        1 => pick(VALUES).prop_map(|v| format!("pin {v}")),
        1 => Just(String::from("unpin")),
        1 => pick(VALUES).prop_map(|v| format!("page {v}")),
        1 => pick(PATHS).prop_map(|p| format!("cat {p}")),
        1 => pick(PATHS).prop_map(|p| format!("ls {p}")),
        3 => (pick(VALUES), pick(&[" > ", " >> ", ">", " "]), pick(PATHS))
            .prop_map(|(v, r, p)| format!("echo {v}{r}{p}")),
        2 => proptest::collection::vec(word, 0..7).prop_map(|w| w.join(" ")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Lines of known and unknown words: no panic; a failure is one
    /// well-formed error and leaves `/proc/meminfo`'s numbers as they were
    /// (but `pin`'s, which keeps what it got, as documented).
    #[test]
    fn any_line_runs_or_fails_cleanly(lines in proptest::collection::vec(line(), 1..12)) {
        let mut s = shell();
        for l in &lines {
            let before = s.kernel.sys.mm.meminfo();
            let mut out = String::new();
            if let Err(e) = run(&mut s, l, &mut out) {
                prop_assert!(out.is_empty(), "{:?} printed {:?} and failed", l, out);
                let text = format!("{e}");
                prop_assert!(text.starts_with("error: E") && !text.contains('\n'), "{:?}", text);
                if !l.trim_start().starts_with("pin ") {
                    prop_assert_eq!(s.kernel.sys.mm.meminfo(), before, "{:?}: {}", l, e);
                }
            }
        }
    }
}

#[derive(Default)]
struct Bytes {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Io for Bytes {
    fn read_byte(&mut self) -> Option<u8> {
        self.input.pop_front()
    }
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![
        3 => line().prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..16),
        2 => proptest::sample::select(alloc::vec![
            &b"\n"[..], b"\r", b"\x03", b"\x1b[A", b"\x1b[B", b"\x1b[D", b"\x1bOA", b"\x01",
            b"\x05", b"\x15", b"\x0b", b"\x17", b"\x7f", "\u{9b}".as_bytes(), b"\xff",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    proptest::collection::vec(chunk, 0..60).prop_map(|c| c.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Arbitrary bytes through the console into the shell: no panic, the
    /// output is text and ends at a prompt.
    #[test]
    fn any_bytes_through_the_console(input in bytes()) {
        let mut s = shell();
        let mut con = Console::new(Bytes::default());
        con.io_mut().input.extend(&input);
        con.io_mut().input.push_back(b'\n');
        con.poll(&mut s);
        let out = String::from_utf8(con.into_io().output);
        prop_assert!(out.is_ok(), "output not UTF-8");
        prop_assert!(out.unwrap_or_default().ends_with(PROMPT));
    }
}
