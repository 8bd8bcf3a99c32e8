//! Boot parameters from `/chosen/bootargs`, spelled as Linux spells them.

use super::{PhysAddr, PhysRange};

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
    pub loglevel: Option<u8>,
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
                "loglevel" => value.parse().map(|l| p.loglevel = Some(l)).is_ok(),
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
}
