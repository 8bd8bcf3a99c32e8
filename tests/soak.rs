//! A seeded soak of the console: thousands of random lines (known commands
//! with wrong arguments, reads of every file, writes of junk to writable
//! files, raw bytes of every kind) must each be answered with a prompt, and
//! the kernel must end alive with `/proc/meminfo` and the misuse counters
//! as they started. `HPK_SEED` picks another sequence.

mod common;

use common::{boot_blocks, Opts, Qemu};

/// xorshift64*: small, seedable, enough to pick words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

const FILES: &[&str] = &[
    "/proc/meminfo",
    "/proc/iomem",
    "/proc/buddyinfo",
    "/proc/vmstat",
    "/sys/devices/system/cpu/online",
    "/sys/devices/system/memory/block_size_bytes",
    "/sys/devices/system/memory/probe",
    "/sys/devices/system/memory/remove",
    "/sys/module/memory_hotplug/parameters/memmap_on_memory",
    "/sys/kernel/debug/vmemmap",
    "/sys/kernel/debug/fail_nth_alloc",
    "/sys/devices/system/memory",
    "/proc",
    "/",
    "/nope",
    "/proc/meminfo/x",
    "//sys/../proc/./meminfo",
];

/// Values no writable file accepts.
const JUNK: &[&str] = &[
    "bogus",
    "0x1",
    "-1",
    "0x",
    "1 2 3",
    "online_bogus",
    "maybe",
    "\u{e9}t\u{e9}",
    "''",
    "0xffffffffffffffffff",
    "9999999999999999999999",
    "0x40001000",
];

const COMMANDS: &[&str] = &[
    "cat", "ls", "echo", "help", "dmesg", "devmem", "page", "touch", "unpin", "frob", "bench",
    "stress", "crash",
];

const ARGS: &[&str] = &[
    "",
    "0",
    "1",
    "x",
    "-1",
    "0x0",
    "0xffffffffffffffff",
    "list",
    "map",
    "unmap",
    "7",
    "--map=dev",
    "--map=nvme",
    "hotplug",
    "0x40000000",
    "stack",
    "99",
    "\"unterminated",
    "'single",
    ">",
    ">>",
    "> /nope",
];

/// One random line, without its end. Never `#` (a line starting with the
/// prompt would be taken for one) nor line ends or Ctrl-C in raw bytes.
fn line(rng: &mut Rng, blocks: &std::ops::Range<u64>) -> Vec<u8> {
    let block = blocks.start + rng.next() % (blocks.end - blocks.start + 2);
    match rng.below(5) {
        0 => format!("cat {}", rng.pick(FILES)).into_bytes(),
        1 => {
            let file = match rng.below(3) {
                0 => rng.pick(FILES).to_string(),
                1 => format!("/sys/devices/system/memory/memory{block}/state"),
                _ => format!("/sys/devices/system/memory/memory{block}/online"),
            };
            format!("echo {} > {file}", rng.pick(JUNK)).into_bytes()
        }
        2 => {
            let cmd = rng.pick(COMMANDS);
            let a = rng.pick(ARGS);
            // `crash` and `stress` only with arguments that make them fail
            // before they do anything.
            let b = if matches!(cmd, "crash" | "stress" | "bench") {
                "bogus"
            } else {
                rng.pick(ARGS)
            };
            let a = if cmd == "crash" && a != "stack" {
                "x"
            } else {
                a
            };
            let a = if cmd == "crash" { "stack" } else { a };
            format!("{cmd} {a} {b}").into_bytes()
        }
        3 => format!("ls {}", rng.pick(FILES)).into_bytes(),
        _ => (0..rng.below(40))
            .map(|_| loop {
                let b = rng.next() as u8;
                if !matches!(b, b'\r' | b'\n' | 0x03 | b'#') {
                    break b;
                }
            })
            .collect(),
    }
}

#[test]
fn thousands_of_random_lines_change_nothing() {
    let seed = std::env::var("HPK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_u64);
    let mut rng = Rng(seed | 1);
    let mut q = Qemu::boot(Opts::new().mem("2G").append("mem=1G"));
    let blocks = boot_blocks(1 << 30);
    let before = q.meminfo();
    for i in 0..3000 {
        let mut l = line(&mut rng, &blocks);
        // `crash stack` with a CPU that is online would be fatal: keep it
        // to CPUs that do not exist.
        if l.starts_with(b"crash") {
            l = b"crash stack 99".to_vec();
        }
        let shown = String::from_utf8_lossy(&l).into_owned();
        l.push(b'\n');
        q.send_bytes(&l);
        let _ = q.wait_prompt();
        if i % 500 == 0 {
            let out = q.run("echo alive");
            if out != "alive\n" {
                q.fail(&format!(
                    "after line {i} ({shown:?}, seed {seed:#x}): {out:?}"
                ));
            }
        }
    }
    let after = q.meminfo();
    if after != before {
        q.fail(&format!("seed {seed:#x}: meminfo {before:?} -> {after:?}"));
    }
    q.assert_no_misuse("after the soak");
    q.poweroff();
}
