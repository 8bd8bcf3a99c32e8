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
    /// Recorded by its caller, once per range ([`super::tlb::flush_kernel_range`]);
    /// each instruction is kept too, for the test of what a range issues.
    pub fn tlbi_vaale1is(_va: u64) {
        #[cfg(test)]
        record_issued(super::tlb::RangeOp::Page(_va));
    }
    pub fn tlbi_vaae1is(va: u64) {
        record(Flush::AllLevels(va));
    }
    pub fn tlbi_vmalle1is() {
        record(Flush::All);
    }
    /// As `tlbi_vaale1is`.
    pub fn tlbi_rvaale1is(_operand: u64) {
        #[cfg(test)]
        record_issued(super::tlb::RangeOp::Range(_operand));
    }

    #[cfg(test)]
    std::thread_local! {
        static RANGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// Kept only once a test asks (`take_issued`): other tests run
        /// with the heap made to fail, and would not want it to grow.
        static ISSUED: std::cell::RefCell<Option<std::vec::Vec<super::tlb::RangeOp>>> =
            const { std::cell::RefCell::new(None) };
    }

    #[cfg(test)]
    fn record_issued(op: super::tlb::RangeOp) {
        ISSUED.with(|i| {
            if let Some(ops) = i.borrow_mut().as_mut() {
                ops.push(op);
            }
        });
    }

    /// The last-level invalidations issued on this thread since the last
    /// call (none before the first, which starts keeping them), in order.
    #[cfg(test)]
    pub fn take_issued() -> std::vec::Vec<super::tlb::RangeOp> {
        ISSUED.with(|i| {
            i.borrow_mut()
                .replace(std::vec::Vec::new())
                .unwrap_or_default()
        })
    }

    /// Host tests choose whether the modelled CPU has `FEAT_TLBIRANGE`
    /// (per thread; off unless a test turns it on); other host builds
    /// have it not.
    pub fn has_tlbi_range() -> bool {
        #[cfg(test)]
        return RANGE.with(|r| r.get());
        #[cfg(not(test))]
        false
    }

    #[cfg(test)]
    pub fn set_tlbi_range(on: bool) {
        RANGE.with(|r| r.set(on));
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

    #[cfg(test)]
    pub use super::insn::set_tlbi_range;

    /// Past this many pages one whole-TLB invalidation is cheaper
    /// (Linux's MAX_DVM_OPS = PTRS_PER_PTE).
    pub const MAX_TLBI_OPS: u64 = 512;

    /// Pages one range invalidation covers at most (`FEAT_TLBIRANGE`: NUM
    /// 31 at SCALE 3), Linux's `MAX_TLBI_RANGE_PAGES`: past it, the whole
    /// TLB is invalidated even where ranges exist.
    pub const MAX_TLBI_RANGE_PAGES: u64 = range_pages(31, 3);

    /// Pages a range operation with `num` and `scale` covers.
    const fn range_pages(num: u64, scale: u64) -> u64 {
        (num + 1) << (5 * scale + 1)
    }

    /// One instruction of a range invalidation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RangeOp {
        /// `TLBI VAALE1IS` of the page at this VA.
        Page(u64),
        /// `TLBI RVAALE1IS` with this operand: TG, SCALE, NUM and the
        /// base VA in pages (bits 36:0; the CPU sign-extends it).
        Range(u64),
    }

    /// The instructions that invalidate the `pages` pages from `start`
    /// (aligned): the largest range operation that fits, again until less
    /// than two pages are left (a range covers an even number), then the
    /// odd page. At most five for any count up to [`MAX_TLBI_RANGE_PAGES`].
    /// Linux's `__flush_tlb_range_op`.
    pub fn for_each_range_op(start: u64, pages: u64, page_shift: u32, mut op: impl FnMut(RangeOp)) {
        // TG: 1, 2, 3 for 4K, 16K, 64K pages.
        let tg = u64::from(page_shift - 12) / 2 + 1;
        let (mut va, mut left) = (start, pages);
        while left > 1 {
            // The largest scale whose unit, 2^(5 * scale + 1) pages, fits.
            let scale = ((u64::from(63 - left.leading_zeros()) - 1) / 5).min(3);
            let num = (left >> (5 * scale + 1)).min(32);
            let base = (va >> page_shift) & ((1 << 37) - 1);
            op(RangeOp::Range(
                base | (num - 1) << 39 | scale << 44 | tg << 46,
            ));
            let covered = range_pages(num - 1, scale);
            va += covered << page_shift;
            left -= covered;
        }
        if left == 1 {
            op(RangeOp::Page(va));
        }
    }

    /// Invalidates last-level entries for kernel VAs `[start, end)`, all
    /// CPUs. Returns the number of TLBI instructions issued: one a page,
    /// or up to five with `FEAT_TLBIRANGE`, or one for everything past
    /// what either reaches.
    pub fn flush_kernel_range(start: u64, end: u64, page_shift: u32) -> u64 {
        let page = 1u64 << page_shift;
        let pages = (end - start).div_ceil(page);
        let range = insn::has_tlbi_range();
        let limit = if range {
            MAX_TLBI_RANGE_PAGES
        } else {
            MAX_TLBI_OPS
        };
        insn::dsb_ishst();
        let ops = if pages > limit {
            insn::tlbi_vmalle1is();
            1
        } else {
            let first = start & !(page - 1);
            let mut ops = 0;
            if range {
                for_each_range_op(first, pages, page_shift, |op| {
                    match op {
                        RangeOp::Page(va) => insn::tlbi_vaale1is(va),
                        RangeOp::Range(operand) => insn::tlbi_rvaale1is(operand),
                    }
                    ops += 1;
                });
            } else {
                let mut va = first;
                while va < end {
                    insn::tlbi_vaale1is(va);
                    va += page;
                }
                ops = pages;
            }
            super::trace::record(super::trace::Flush::LastLevelRange(first, end));
            ops
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

    #[cfg(test)]
    mod tests {
        use super::*;

        /// What a CPU makes of a `TLBI RVAALE1IS` operand, from the Arm
        /// ARM's field list: `(first VA, pages)`, or `None` for a granule
        /// other than `page_shift`'s (the CPU then invalidates nothing).
        fn decode(operand: u64, page_shift: u32) -> Option<(u64, u64)> {
            let tg = operand >> 46 & 3;
            let want = match page_shift {
                12 => 1,
                14 => 2,
                16 => 3,
                _ => return None,
            };
            if tg != want || operand >> 37 & 3 != 0 || operand >> 48 != 0 {
                return None;
            }
            let (scale, num) = (operand >> 44 & 3, operand >> 39 & 31);
            // BaseADDR is VA[48 + (page_shift - 12):page_shift], sign-extended.
            let base = ((operand << 27) as i64 >> 27) as u64;
            Some((base << page_shift, (num + 1) << (5 * scale + 1)))
        }

        /// The pages a run of operations invalidates, in order.
        fn covered(start: u64, pages: u64, page_shift: u32) -> Vec<(u64, u64)> {
            let mut ops = Vec::new();
            for_each_range_op(start, pages, page_shift, |op| {
                ops.push(match op {
                    RangeOp::Page(va) => (va, 1),
                    RangeOp::Range(x) => decode(x, page_shift).expect("a valid operand"),
                })
            });
            ops
        }

        #[test]
        fn range_operations_cover_exactly_the_pages_asked() {
            let counts = (1..=70)
                .chain([511, 512, 513, 1 << 16, (1 << 16) + 3, 0x12345])
                .chain([MAX_TLBI_RANGE_PAGES - 1, MAX_TLBI_RANGE_PAGES]);
            for page_shift in [12, 14, 16] {
                // The vmemmap and the linear map: kernel (sign-extended) VAs.
                for start in [0xffff_0000_8000_0000u64, 0xffff_fc00_0000_0000] {
                    for pages in counts.clone() {
                        let ops = covered(start, pages, page_shift);
                        let mut va = start;
                        for &(first, n) in &ops {
                            assert_eq!(first, va, "{pages} pages of 2^{page_shift}: {ops:x?}");
                            va += n << page_shift;
                        }
                        assert_eq!(va, start + (pages << page_shift), "{pages}: {ops:x?}");
                        assert!(ops.len() <= 5, "{pages} pages in {} operations", ops.len());
                    }
                }
            }
            // A vmemmap block of 16K pages' struct pages: one operation.
            assert_eq!(covered(0xffff_fc00_0000_0000, 28, 14).len(), 1);
            assert_eq!(covered(0xffff_fc00_0000_0000, 29, 14).len(), 2);
            assert_eq!(
                covered(0xffff_0000_0000_0000, MAX_TLBI_RANGE_PAGES, 12).len(),
                1
            );
        }

        #[test]
        fn a_range_flush_takes_range_operations_where_the_cpu_has_them() {
            use crate::arch::trace::invalidations;
            // An odd page first: the operand's base is the page, not 0.
            let start = 0xffff_fc00_0000_4000u64;
            for (range, pages, ops) in [
                (false, 28, 28),
                (true, 28, 1),
                (true, 29, 2),
                (false, 600, 1),
                (true, 600, 2),
                (true, MAX_TLBI_RANGE_PAGES + 1, 1),
            ] {
                set_tlbi_range(range);
                let calls = invalidations();
                let end = start + (pages << 14);
                super::super::insn::take_issued();
                assert_eq!(flush_kernel_range(start, end, 14), ops, "{range} {pages}");
                assert_eq!(invalidations(), calls + 1);
                // What the instructions cover, as the CPU reads them: the
                // pages asked, from the first (none for a whole flush).
                let issued = super::super::insn::take_issued();
                let mut va = start;
                for op in &issued {
                    let (first, n) = match *op {
                        RangeOp::Page(va) => (va, 1),
                        RangeOp::Range(x) => decode(x, 14).expect("a valid operand"),
                    };
                    assert_eq!(first, va, "{range} {pages}: {issued:x?}");
                    va += n << 14;
                }
                let limit = if range {
                    MAX_TLBI_RANGE_PAGES
                } else {
                    MAX_TLBI_OPS
                };
                if pages > limit {
                    assert!(
                        issued.is_empty(),
                        "{range} {pages}: a whole flush, not {issued:x?}"
                    );
                } else {
                    assert_eq!(issued.len() as u64, ops, "{range} {pages}");
                    assert_eq!(va, end, "{range} {pages}: {issued:x?}");
                }
            }
            set_tlbi_range(false);
        }
    }
}
