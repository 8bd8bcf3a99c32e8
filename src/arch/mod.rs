//! The seam between the portable mm core and the CPU. Off target (host
//! tests) every instruction is a no-op, but the decisions, and so the
//! counts of TLB invalidations, are the same; and [`trace`] checks their
//! order: no page is freed while a TLB may still reach it.

#[cfg(target_os = "none")]
pub mod aarch64;
pub mod esr;
pub mod lock;

#[cfg(target_os = "none")]
use aarch64::insn;

#[cfg(not(target_os = "none"))]
mod insn {
    use super::trace::{record, Flush};

    pub fn dsb_ishst() {}
    pub fn dsb_ish_isb() {}
    /// Recorded by its caller, once per range ([`super::tlb::flush_kernel_range`]).
    pub fn tlbi_vaale1is(_va: u64) {}
    pub fn tlbi_vaae1is(va: u64) {
        record(Flush::AllLevels(va));
    }
    pub fn tlbi_vmalle1is() {
        record(Flush::All);
    }
}

/// Break-before-make bookkeeping: the walker reports each descriptor it
/// clears, the TLB seam each invalidation, and every free of a page asks
/// whether a cleared descriptor that reached it is still unflushed. On the
/// target all of it compiles away; on the host an unflushed free panics, so
/// "invalidate before free" is asserted by every test that frees a page.
pub mod trace {
    /// What a cleared descriptor pointed at.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Cleared {
        /// A leaf: a TLB entry for any VA in its span may map the output.
        Leaf,
        /// A table: walk caches for its span may still point into it, and
        /// only an all-levels invalidation drops them.
        Table,
    }

    /// One TLBI, by what it drops.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Flush {
        /// `TLBI VAALE1IS` for every page of `[start, end)`: last-level
        /// entries for those VAs (one record per range invalidation).
        LastLevelRange(u64, u64),
        /// `TLBI VAAE1IS`: every level's entries for one VA.
        AllLevels(u64),
        /// `TLBI VMALLE1IS`: everything.
        All,
    }

    #[cfg(test)]
    pub use host::{
        check_free, cleared, invalidations, record, tables_zeroed, unflushed, zeroed_barriers,
    };

    /// Counts the barriers that publish zeroed table pages (host tests
    /// assert one per map call, however many tables it adds).
    #[cfg(not(test))]
    #[inline(always)]
    pub fn tables_zeroed() {}

    #[cfg(not(test))]
    #[inline(always)]
    pub fn cleared(_va: u64, _span: u64, _out: u64, _out_len: u64, _kind: Cleared) {}

    #[cfg(not(test))]
    #[inline(always)]
    pub fn record(_f: Flush) {}

    #[cfg(not(test))]
    #[inline(always)]
    pub fn check_free(_pa: u64, _len: u64) {}

    #[cfg(test)]
    mod host {
        use super::{Cleared, Flush};
        use std::cell::RefCell;

        /// A descriptor cleared and not yet flushed.
        struct Pending {
            va: u64,
            span: u64,
            out: u64,
            out_len: u64,
            kind: Cleared,
        }

        std::thread_local! {
            static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
            static INVALIDATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
            static ZEROED_BARRIERS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }

        pub fn tables_zeroed() {
            ZEROED_BARRIERS.with(|n| n.set(n.get() + 1));
        }

        /// `barrier::tables_zeroed` calls on this thread so far.
        pub fn zeroed_barriers() -> u64 {
            ZEROED_BARRIERS.with(|n| n.get())
        }

        /// Invalidations recorded on this thread so far: one per range (a
        /// whole `flush_kernel_range`, however many pages), per VA, or of
        /// everything. Tests count them where TLBI instructions cannot
        /// tell one range from one call per page.
        pub fn invalidations() -> u64 {
            INVALIDATIONS.with(|n| n.get())
        }

        pub fn cleared(va: u64, span: u64, out: u64, out_len: u64, kind: Cleared) {
            PENDING.with(|p| {
                p.borrow_mut().push(Pending {
                    va,
                    span,
                    out,
                    out_len,
                    kind,
                })
            });
        }

        pub fn record(f: Flush) {
            INVALIDATIONS.with(|n| n.set(n.get() + 1));
            PENDING.with(|p| {
                p.borrow_mut().retain(|c| {
                    let inside = |va: u64| c.va <= va && va - c.va < c.span;
                    // Whether a page of [start, end) lies in the span: the
                    // pages are aligned, so the range meets the span.
                    let meets = |start: u64, end: u64| start < c.va + c.span && c.va < end;
                    let dropped = match f {
                        Flush::All => true,
                        Flush::AllLevels(va) => inside(va),
                        Flush::LastLevelRange(start, end) => {
                            c.kind == Cleared::Leaf && meets(start, end)
                        }
                    };
                    !dropped
                })
            });
        }

        /// Cleared descriptors on this thread not yet invalidated.
        pub fn unflushed() -> usize {
            PENDING.with(|p| p.borrow().len())
        }

        pub fn check_free(pa: u64, len: u64) {
            PENDING.with(|p| {
                if let Some(c) = p
                    .borrow()
                    .iter()
                    .find(|c| c.out < pa + len && pa < c.out + c.out_len)
                {
                    panic!(
                        "page {pa:#x}+{len:#x} freed while a cleared {:?} descriptor for \
                         {:#x}+{:#x} (output {:#x}) has not been invalidated",
                        c.kind, c.va, c.span, c.out
                    );
                }
            });
        }
    }
}

/// Stores 64 bytes as four register pairs: how the memmap is written. LLVM
/// would turn the zero words of a struct page into a call to memset.
///
/// # Safety
/// `dst` is 16-byte aligned and writable for 64 bytes.
#[inline(always)]
pub unsafe fn store_64_bytes(dst: *mut u64, w: [u64; 8]) {
    #[cfg(target_os = "none")]
    // SAFETY: the caller's promise: 64 writable, 16-byte aligned bytes.
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

/// CPUs the kernel runs at most.
#[cfg(target_os = "none")]
pub use aarch64::smp::MAX_CPUS;
#[cfg(not(target_os = "none"))]
pub const MAX_CPUS: usize = 16;

/// The index of the CPU this runs on, `0..MAX_CPUS` (Linux's
/// `smp_processor_id`); 0 on the host, whose tests name CPUs explicitly.
pub fn cpu_id() -> usize {
    #[cfg(target_os = "none")]
    return aarch64::smp::cpu_id();
    #[cfg(not(target_os = "none"))]
    0
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
    /// Zeroed table pages are visible to the table walker before any entry
    /// that points at them (Linux's `dsb(ishst)` in `pgd_pgtable_alloc`).
    pub fn tables_zeroed() {
        super::insn::dsb_ishst();
        super::trace::tables_zeroed();
    }

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
            let first = start & !(page - 1);
            let mut va = first;
            while va < end {
                insn::tlbi_vaale1is(va);
                va += page;
            }
            super::trace::record(super::trace::Flush::LastLevelRange(first, end));
            pages
        };
        insn::dsb_ish_isb();
        ops
    }

    /// Invalidates every kernel TLB entry and walk cache, all CPUs: one
    /// instruction where a detached subtree holds several table pages.
    pub fn flush_kernel_all() -> u64 {
        insn::dsb_ishst();
        insn::tlbi_vmalle1is();
        insn::dsb_ish_isb();
        1
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
