//! Talking to the kernel's serial console (`console.md`): the prompt,
//! commands and their answers, `error: ERRNO: ...` lines, and the
//! `/proc/meminfo` and `/proc/vmstat` checks most tests make.

use super::qemu::Qemu;
use std::collections::BTreeMap;

/// The console's prompt, printed at the start of a line when it is ready.
pub const PROMPT: &str = "# ";

/// The `/proc/vmstat` counters that report misuse; they must stay 0.
pub const MISUSE_COUNTERS: [&str; 5] = [
    "altmap_without_free_mapped",
    "hotplug_reserved_page_free",
    "altmap_bad_free",
    "hotplug_partial_leaf_unmap",
    "buddy_bad_free",
];

/// Position of the first prompt at the start of a line in `buf[from..]`
/// (the start of `buf` counts as a line start).
fn find_prompt(buf: &[u8], from: usize) -> Option<usize> {
    let p = PROMPT.as_bytes();
    (from..buf.len().saturating_sub(p.len() - 1))
        .find(|&i| buf[i..].starts_with(p) && (i == 0 || buf[i - 1] == b'\n'))
}

impl Qemu {
    /// Waits for the next prompt at the start of a line; returns the output
    /// before it and consumes both.
    #[track_caller]
    pub fn wait_prompt(&mut self) -> String {
        let timeout = self.opts().timeout;
        self.consume_until(
            "the prompt \"# \" at the start of a line",
            timeout,
            |buf, from| find_prompt(buf, from).map(|at| at..at + PROMPT.len()),
        )
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

    /// `dmesg`, each line without its `[    0.123456] ` stamp. Fails unless
    /// every line has one, in Linux's format, and time never goes back.
    #[track_caller]
    pub fn dmesg(&mut self) -> Vec<String> {
        let text = self.run_ok("dmesg");
        self.parse_dmesg(&text)
    }

    /// The lines of `dmesg` output `text` without their stamps; see [`dmesg`].
    ///
    /// [`dmesg`]: Self::dmesg
    #[track_caller]
    pub fn parse_dmesg(&mut self, text: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut last = 0.0;
        for d in text.lines() {
            let stamp = d
                .strip_prefix('[')
                .and_then(|r| r.split_once("] "))
                .filter(|(t, _)| t.len() == 12 && t.as_bytes()[5] == b'.')
                .and_then(|(t, rest)| Some((t.trim_start().parse::<f64>().ok()?, rest)));
            let Some((t, rest)) = stamp else {
                self.fail(&format!("dmesg line {d:?} has no [%5u.%06u] timestamp"));
            };
            if t < last {
                self.fail(&format!("dmesg time goes back at {d:?}"));
            }
            last = t;
            lines.push(rest.to_string());
        }
        lines
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

    /// `poweroff`: QEMU must exit with status 0 in time.
    #[track_caller]
    pub fn poweroff(mut self) {
        self.send_bytes(b"poweroff\n");
        let status = self.wait_exit(self.opts().timeout);
        if !status.success() {
            self.fail(&format!("poweroff: QEMU exited with {status}, not 0"));
        }
    }
}

/// The number after `what` in a command's output `out` (`stress`'s and
/// `bench`'s figures), or the test fails with the output.
pub fn figure(out: &str, what: &str) -> u64 {
    out.split(what)
        .nth(1)
        .and_then(|s| s.split([',', '\n', '\r']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {out}"))
}
