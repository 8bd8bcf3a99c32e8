//! The seam between the portable mm core and the CPU. Off target (host
//! tests) every instruction is a no-op, but the decisions, and so the
//! counts of TLB invalidations, are the same.

#[cfg(target_os = "none")]
pub mod aarch64;
pub mod esr;

#[cfg(target_os = "none")]
use aarch64::insn;

#[cfg(not(target_os = "none"))]
mod insn {
    pub fn dsb_ishst() {}
    pub fn dsb_ish_isb() {}
    pub fn tlbi_vaale1is(_va: u64) {}
    pub fn tlbi_vaae1is(_va: u64) {}
    pub fn tlbi_vmalle1is() {}
}

/// Stores 64 bytes as four register pairs: how the memmap is written. LLVM
/// would turn the zero words of a struct page into a call to memset.
///
/// # Safety
/// `dst` is 16-byte aligned and writable for 64 bytes.
#[inline(always)]
pub unsafe fn store_64_bytes(dst: *mut u64, w: [u64; 8]) {
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "stp {0}, {1}, [{d}]",
            "stp {2}, {3}, [{d}, #16]",
            "stp {4}, {5}, [{d}, #32]",
            "stp {6}, {7}, [{d}, #48]",
            in(reg) w[0], in(reg) w[1], in(reg) w[2], in(reg) w[3],
            in(reg) w[4], in(reg) w[5], in(reg) w[6], in(reg) w[7],
            d = in(reg) dst,
            options(nostack, preserves_flags)
        )
    }
    #[cfg(not(target_os = "none"))]
    for (i, word) in w.iter().enumerate() {
        // SAFETY: the caller's promise.
        unsafe { dst.add(i).write_volatile(*word) };
    }
}

/// The generic timer's count (0 on the host, where time is not modelled).
pub fn counter() -> u64 {
    #[cfg(target_os = "none")]
    return aarch64::counter();
    #[cfg(not(target_os = "none"))]
    0
}

/// The generic timer's ticks per second.
pub fn counter_freq() -> u64 {
    #[cfg(target_os = "none")]
    return aarch64::counter_freq();
    #[cfg(not(target_os = "none"))]
    1_000_000
}

pub mod barrier {
    /// New descriptors are visible to the table walker before any access
    /// that may use them (Linux's `dsb(ishst); isb()` after kernel mappings).
    pub fn tables_written() {
        super::insn::dsb_ishst();
        super::insn::dsb_ish_isb();
    }
}

pub mod tlb {
    use super::insn;

    /// Past this many pages one whole-TLB invalidation is cheaper
    /// (Linux's MAX_DVM_OPS = PTRS_PER_PTE).
    pub const MAX_TLBI_OPS: u64 = 512;

    /// Invalidates last-level entries for kernel VAs `[start, end)`, all
    /// CPUs. Returns the number of TLBI instructions issued.
    pub fn flush_kernel_range(start: u64, end: u64, page_shift: u32) -> u64 {
        let page = 1u64 << page_shift;
        let pages = (end - start).div_ceil(page);
        insn::dsb_ishst();
        let ops = if pages > MAX_TLBI_OPS {
            insn::tlbi_vmalle1is();
            1
        } else {
            let mut va = start & !(page - 1);
            while va < end {
                insn::tlbi_vaale1is(va);
                va += page;
            }
            pages
        };
        insn::dsb_ish_isb();
        ops
    }

    /// Invalidates every level's cached entries for `va`, walk caches
    /// included: needed before freeing a table page.
    pub fn flush_kernel_pgtable(va: u64, _page_shift: u32) -> u64 {
        insn::dsb_ishst();
        insn::tlbi_vaae1is(va);
        insn::dsb_ish_isb();
        1
    }
}
