//! Boot parameters from `/chosen/bootargs`, spelled as Linux spells them.

use super::{PhysAddr, PhysRange};
use crate::mm::online::{OnlineConfig, OnlinePolicy, OnlineType};

pub const MAX_PMEM: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BootParams {
    /// `mem=`: RAM above this much is left for `probe`.
    pub mem: Option<u64>,
    /// `memmap=<size>!<addr>` regions: emulated persistent memory.
    pub pmem: [PhysRange; MAX_PMEM],
    pub nr_pmem: usize,
    /// `memory_hotplug.memmap_on_memory=`
    pub memmap_on_memory: bool,
    /// `memhp_default_state=`, `memory_hotplug.online_policy=`,
    /// `memory_hotplug.auto_movable_ratio=`.
    pub online: OnlineConfig,
    pub loglevel: Option<u8>,
    /// `numa=off`: one node, whatever the DT says.
    pub numa_off: bool,
}

/// Linux's `memparse`: a number (decimal, `0x` hex or `0` octal) with an
/// optional K/M/G/T/P/E suffix. As in Linux the number is read first, so
/// `0x1e` is 30, not 1 EiB. `None` on junk or overflow.
pub fn memparse(s: &str) -> Option<u64> {
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, hex)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let n = u64::from_str_radix(&digits[..end], radix).ok()?;
    let shift = match &digits[end..] {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// A number in C syntax: `0x` hex, leading `0` octal, else decimal.
pub fn parse_u64(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

impl BootParams {
    /// Parses `bootargs`; unknown or malformed parameters are passed to
    /// `ignored` (to be logged) and otherwise ignored.
    pub fn parse(bootargs: &str, mut ignored: impl FnMut(&str)) -> Self {
        let mut p = Self::default();
        for word in bootargs.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let ok = match key {
                "mem" => memparse(value).map(|m| p.mem = Some(m)).is_some(),
                "memmap" => p.parse_memmap(value),
                "memory_hotplug.memmap_on_memory" => match value {
                    "1" | "y" | "Y" | "on" => {
                        p.memmap_on_memory = true;
                        true
                    }
                    "0" | "n" | "N" | "off" => {
                        p.memmap_on_memory = false;
                        true
                    }
                    _ => false,
                },
                "memhp_default_state" => OnlineType::parse(value)
                    .map(|t| p.online.default_type = t)
                    .is_some(),
                "memory_hotplug.online_policy" => OnlinePolicy::parse(value)
                    .map(|o| p.online.policy = o)
                    .is_some(),
                // Linux's parameter is a uint.
                "memory_hotplug.auto_movable_ratio" => value
                    .parse::<u32>()
                    .map(|r| p.online.auto_movable_ratio = r.into())
                    .is_ok(),
                "loglevel" => value.parse().map(|l| p.loglevel = Some(l)).is_ok(),
                "numa" => {
                    p.numa_off = value == "off";
                    p.numa_off
                }
                _ => false,
            };
            if !ok {
                ignored(word);
            }
        }
        p
    }

    fn parse_memmap(&mut self, value: &str) -> bool {
        let Some((size, addr)) = value.split_once('!') else {
            return false;
        };
        match (memparse(size), memparse(addr)) {
            (Some(size), Some(addr)) if size > 0 && self.nr_pmem < MAX_PMEM => {
                self.pmem[self.nr_pmem] = PhysRange::new(PhysAddr::new(addr), size);
                self.nr_pmem += 1;
                true
            }
            _ => false,
        }
    }

    pub fn pmem(&self) -> &[PhysRange] {
        &self.pmem[..self.nr_pmem]
    }
}

/// Why a `memmap=SIZE!ADDR` region cannot be device memory: it must be RAM
/// the device tree describes (one region of it), below `pa_limit` (the CPU's
/// and the linear map's), and clear of what boot already uses (`busy`: the
/// kernel image and the DT).
pub fn check_pmem(
    r: PhysRange,
    ram: &[PhysRange],
    pa_limit: u64,
    busy: &[PhysRange],
) -> Result<(), &'static str> {
    let Some(end) = r.base.checked_add(r.size) else {
        return Err("wraps around the address space");
    };
    if end.as_u64() > pa_limit {
        return Err("beyond the physical address range");
    }
    if !ram.iter().any(|m| m.base <= r.base && end <= m.end()) {
        return Err("not RAM the device tree describes");
    }
    if busy.iter().any(|b| b.overlaps(&r)) {
        return Err("overlaps the kernel image or the device tree");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_linux_parameters() {
        let mut unknown = Vec::new();
        let p = BootParams::parse(
            "console=ttyAMA0 mem=1G memmap=256M!0x90000000 memory_hotplug.memmap_on_memory=1 loglevel=4 mem=junk",
            |w| unknown.push(w.to_string()),
        );
        assert_eq!(p.mem, Some(1 << 30));
        assert_eq!(
            p.pmem(),
            &[PhysRange::new(PhysAddr::new(0x9000_0000), 256 << 20)]
        );
        assert!(p.memmap_on_memory);
        assert_eq!(p.loglevel, Some(4));
        assert_eq!(unknown, ["console=ttyAMA0", "mem=junk"]);
    }

    #[test]
    fn parses_online_parameters() {
        let mut unknown = Vec::new();
        let p = BootParams::parse("", |_| {});
        assert_eq!(p.online, OnlineConfig::default());
        assert_eq!(p.online.default_type, OnlineType::Offline);
        let p = BootParams::parse(
            "memhp_default_state=online_movable memory_hotplug.online_policy=auto-movable \
             memory_hotplug.auto_movable_ratio=20 memhp_default_state=movable \
             memory_hotplug.online_policy=contig memory_hotplug.auto_movable_ratio=-1",
            |w| unknown.push(w.to_string()),
        );
        let want = OnlineConfig {
            default_type: OnlineType::OnlineMovable,
            policy: OnlinePolicy::AutoMovable,
            auto_movable_ratio: 20,
        };
        assert_eq!(p.online, want);
        assert_eq!(
            unknown,
            [
                "memhp_default_state=movable",
                "memory_hotplug.online_policy=contig",
                "memory_hotplug.auto_movable_ratio=-1"
            ]
        );
        for t in OnlineType::ALL {
            let line = alloc::format!("memhp_default_state={}", t.name());
            assert_eq!(BootParams::parse(&line, |_| {}).online.default_type, t);
        }
    }

    #[test]
    fn memparse_rejects_overflow_and_junk() {
        assert_eq!(memparse("16E"), None);
        assert_eq!(memparse("0x10k"), Some(0x4000));
        assert_eq!(memparse("010"), Some(8));
        assert_eq!(memparse(""), None);
        assert_eq!(memparse("12q"), None);
        assert_eq!(memparse("99999999999999999999"), None);
        assert_eq!(memparse("0x1e"), Some(30));
        assert_eq!(memparse("0x1eG"), Some(30 << 30));
        assert_eq!(memparse("2e"), Some(2 << 60));
        assert_eq!(memparse("0x"), None);
    }

    #[test]
    fn pmem_must_be_described_ram_below_the_limit_and_clear_of_boot() {
        let r = |base: u64, size: u64| PhysRange::new(PhysAddr::new(base), size);
        let ram = [r(0x4000_0000, 2 << 30)];
        let busy = [r(0x4020_0000, 0x10_0000), r(0x4000_0000, 0x10_0000)];
        let limit = 1 << 48;
        let check = |x| check_pmem(x, &ram, limit, &busy);
        assert_eq!(check(r(0x9000_0000, 256 << 20)), Ok(()));
        assert_eq!(check(r(0x4800_0000, 128 << 20)), Ok(()));
        assert_eq!(
            check(r(0x2_0000_0000, 256 << 20)),
            Err("not RAM the device tree describes")
        );
        // Straddling the end of RAM.
        assert_eq!(
            check(r(0xb000_0000, 512 << 20)),
            Err("not RAM the device tree describes")
        );
        assert_eq!(
            check(r(0xffff_ffff_f000_0000, 512 << 20)),
            Err("wraps around the address space")
        );
        assert_eq!(
            check(r(1 << 48, 1 << 20)),
            Err("beyond the physical address range")
        );
        assert_eq!(
            check_pmem(r(0x9000_0000, 256 << 20), &ram, 0x8000_0000, &busy),
            Err("beyond the physical address range")
        );
        assert_eq!(
            check(r(0x4000_0000, 128 << 20)),
            Err("overlaps the kernel image or the device tree")
        );
    }

    proptest::proptest! {
        /// Any command line (the DT's bootargs are arbitrary bytes that
        /// happen to be UTF-8) parses without a panic, and every region it
        /// accepts is non-empty.
        #[test]
        fn any_bootargs_parse(args in ".{0,300}", words in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just("mem=".to_string()),
                proptest::strategy::Just("memmap=".to_string()),
                proptest::strategy::Just("loglevel=".to_string()),
                proptest::strategy::Just("memory_hotplug.memmap_on_memory=".to_string()),
                "[0-9a-fxA-FX!@$kKmMgGtTpPeE =\\-]{0,24}",
            ],
            0..40,
        )) {
            let line = alloc::format!("{args} {}", words.concat());
            let p = BootParams::parse(&line, |_| {});
            for r in p.pmem() {
                proptest::prop_assert!(r.size > 0);
            }
            let _ = memparse(&line);
            let _ = parse_u64(&line);
        }
    }
}
