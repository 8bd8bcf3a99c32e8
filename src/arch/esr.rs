//! Decoding of ESR_EL1 (Arm ARM D24.2.48) for fault reports; portable so it
//! is tested on the host.

/// The exception class and its name, as Linux's `esr_class_str`.
pub fn class_name(esr: u64) -> &'static str {
    match ec(esr) {
        0x00 => "Unknown/Uncategorized",
        0x01 => "WFI/WFE",
        0x07 => "SVE/ASIMD/FP",
        0x0e => "PSTATE.IL",
        0x15 => "SVC (AArch64)",
        0x16 => "HVC (AArch64)",
        0x17 => "SMC (AArch64)",
        0x18 => "MSR/MRS (AArch64)",
        0x20 => "IABT (lower EL)",
        0x21 => "IABT (current EL)",
        0x22 => "PC Alignment",
        0x24 => "DABT (lower EL)",
        0x25 => "DABT (current EL)",
        0x26 => "SP Alignment",
        0x2f => "SError",
        0x3c => "BRK (AArch64)",
        _ => "UNRECOGNIZED EC",
    }
}

pub fn ec(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

pub fn is_abort(esr: u64) -> bool {
    matches!(ec(esr), 0x20 | 0x21 | 0x24 | 0x25)
}

pub fn is_write(esr: u64) -> bool {
    ec(esr) & !1 == 0x24 && esr & (1 << 6) != 0
}

/// The fault status code of an abort, Linux's `fault_info` names.
pub fn fault_name(esr: u64) -> &'static str {
    match esr & 0x3f {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x09..=0x0b => "access flag fault",
        0x0d..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        0x30 => "TLB conflict abort",
        _ => "unknown fault",
    }
}

/// The translation level a fault status names, when it names one.
pub fn fault_level(esr: u64) -> Option<u64> {
    matches!(esr & 0x3c, 0x00 | 0x04 | 0x08 | 0x0c).then_some(esr & 3)
}

/// `FSC = 0x07: level 3 translation fault` style description.
pub fn describe(esr: u64, out: &mut impl core::fmt::Write) -> core::fmt::Result {
    write!(
        out,
        "ESR = {:#018x}, EC = {:#04x}: {}",
        esr,
        ec(esr),
        class_name(esr)
    )?;
    if is_abort(esr) {
        write!(out, ", FSC = {:#04x}: ", esr & 0x3f)?;
        if let Some(level) = fault_level(esr) {
            write!(out, "level {level} ")?;
        }
        write!(
            out,
            "{}, {}",
            fault_name(esr),
            if is_write(esr) { "write" } else { "read" }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_level_3_translation_fault_on_read() {
        let esr = (0x25 << 26) | (1 << 25) | 0x07;
        let mut s = String::new();
        describe(esr, &mut s).unwrap();
        assert_eq!(s, "ESR = 0x0000000096000007, EC = 0x25: DABT (current EL), FSC = 0x07: level 3 translation fault, read");
        assert_eq!(fault_level((0x25 << 26) | 0x0e), Some(2));
        assert_eq!(fault_level((0x25 << 26) | 0x21), None);
    }
}
