//! `bench hotplug`: the figures of BENCHMARKS.md, measured in the guest with
//! the generic timer (run QEMU with `-icount shift=0,sleep=off` for numbers
//! that repeat exactly).

use core::fmt::Write;

use super::{parse_number, Kernel};
use crate::arch::aarch64 as cpu;
use crate::error::Result;
use crate::mm::addr::{Pfn, PhysAddr};
use crate::mm::layout::*;
use crate::mm::page::{Page, Zone};
use crate::mm::pgtable::Translation;
use crate::mm::system::{block_id, MemorySystem};
use crate::platform::cmdline::memparse;
use crate::{bail, err};

/// `bench hotplug ADDR SIZE`.
pub fn command<K: Kernel>(k: &mut K, argv: &[&str], out: &mut dyn Write) -> Result<()> {
    if argv.get(1) == Some(&"lock") {
        return super::lockbench::command(argv, out);
    }
    if argv.get(1) == Some(&"migrate") {
        return super::memhog::bench(k, argv, out);
    }
    let (start, size) = match (argv.get(1).copied(), argv.get(3)) {
        (Some("hotplug"), Some(s)) => (
            PhysAddr::new(parse_number(argv.get(2), "address")?),
            memparse(s).ok_or_else(|| err!(EINVAL, "bad size {s:?}"))?,
        ),
        _ => bail!(
            EINVAL,
            "usage: bench hotplug ADDR SIZE | bench lock [MS [CPUS]] | bench migrate ADDR"
        ),
    };
    k.with_mm(|mm| hotplug(mm, start, size, out))
}

fn us(ticks: u64) -> u64 {
    ticks * 1_000_000 / cpu::counter_freq()
}

/// `ticks` as microseconds to a tenth, for the steps of a few.
struct Us(u64);

impl core::fmt::Display for Us {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let tenths = self.0 * 10_000_000 / cpu::counter_freq();
        write!(f, "{}.{} us", tenths / 10, tenths % 10)
    }
}

/// Writes `bytes` of fresh struct pages into memory from the buddy
/// allocator: the floor that adding memory cannot beat.
fn plain_struct_page_write<T: Translation>(mm: &mut MemorySystem<T>, bytes: u64) -> Result<u64> {
    let order = crate::mm::frame::get_order(bytes, PAGE_SHIFT).min(MAX_ORDER);
    let chunk = PAGE_SIZE << order;
    let mut held = [Pfn::new(0); 64];
    let n = bytes.div_ceil(chunk) as usize;
    if n > held.len() {
        bail!(EINVAL, "{bytes:#x} is too much struct page memory to time");
    }
    for i in 0..n {
        let Some(pfn) = mm.alloc(order, Zone::Normal) else {
            for &pfn in &held[..i] {
                mm.free(pfn, order);
            }
            bail!(ENOMEM, "no memory for the baseline");
        };
        held[i] = pfn;
    }
    let t0 = cpu::counter();
    for &pfn in &held[..n] {
        let base = pfn.phys().to_virt().as_mut_ptr::<Page>();
        for i in 0..(chunk >> STRUCT_PAGE_SHIFT) as usize {
            // SAFETY: the chunk was just allocated to us and is linear mapped.
            unsafe {
                base.add(i)
                    .write(Page::new(Zone::Normal, Default::default()))
            };
        }
        core::hint::black_box(base);
    }
    let t = cpu::counter() - t0;
    for &pfn in &held[..n] {
        mm.free(pfn, order);
    }
    Ok(t.max(1))
}

/// Takes back what a failed run added: online blocks go offline, then the
/// range is removed. Best effort: a block something else now uses stays,
/// and says so.
fn undo_add<T: Translation>(mm: &mut MemorySystem<T>, start: PhysAddr, size: u64) {
    for id in block_id(start)..block_id(start + size) {
        let _ = mm.offline_block(id);
    }
    if let Err(e) = mm.remove_memory(start, size) {
        crate::pr_warn!("bench: {start:#x}+{size:#x} stays added: {e}");
    }
}

/// Allocates every order-0 page `zone` has, chaining them through their
/// own first word (no memory of its own), then frees them all: the first
/// allocations from new memory, which split its max-order blocks and so
/// write their deferred struct pages. In between, blocks `ids` are
/// isolated and released again with all their pages in use (an offline
/// that waits for every page: the isolation walk's worst case). Returns
/// (first allocation, all of them, freeing, pages, isolation), in timer
/// ticks.
fn first_allocations<T: Translation>(
    mm: &mut MemorySystem<T>,
    zone: Zone,
    ids: core::ops::Range<u64>,
) -> (u64, u64, u64, u64, u64) {
    const END: u64 = u64::MAX;
    let mut chain = END;
    let mut n = 0;
    let mut first = 0;
    let t0 = cpu::counter();
    while let Some(pfn) = mm.alloc(0, zone) {
        if n == 0 {
            first = cpu::counter() - t0;
        }
        // SAFETY: the page was just allocated to us and is linear mapped.
        unsafe { pfn.phys().to_virt().as_mut_ptr::<u64>().write(chain) };
        chain = pfn.as_u64();
        n += 1;
    }
    let t_all = cpu::counter() - t0;
    let t_iso = cpu::counter();
    for id in ids {
        if mm.offline_begin(id).is_ok() {
            mm.offline_abort(id);
        }
    }
    let t_iso = cpu::counter() - t_iso;
    let t1 = cpu::counter();
    while chain != END {
        let pfn = Pfn::new(chain);
        // SAFETY: one of the pages allocated above, still ours.
        chain = unsafe { pfn.phys().to_virt().as_mut_ptr::<u64>().read() };
        mm.free(pfn, 0);
    }
    (first, t_all, cpu::counter() - t1, n, t_iso)
}

/// `t / base` as `N.NNx`.
struct Ratio(u64, u64);

impl core::fmt::Display for Ratio {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let hundredths = self.0 * 100 / self.1;
        write!(f, "{}.{:02}x", hundredths / 100, hundredths % 100)
    }
}

/// Adds, onlines, offlines and removes `[start, start + size)` with struct
/// pages in system RAM and then on the memory itself, first with deferred
/// struct pages (the kernel's way) and then writing them all at online,
/// reporting the system RAM each consumed, the time against a plain write
/// of the struct pages, the first allocations from the new memory, and the
/// TLB invalidations per removed block.
fn hotplug<T: Translation>(
    mm: &mut MemorySystem<T>,
    start: PhysAddr,
    size: u64,
    out: &mut dyn Write,
) -> Result<()> {
    let struct_pages = (size >> PAGE_SHIFT) << STRUCT_PAGE_SHIFT;
    let write = plain_struct_page_write(mm, struct_pages)?;
    writeln!(
        out,
        "plain write of {} KiB of struct pages: {} us",
        struct_pages >> 10,
        us(write)
    )?;
    let (saved_on_memory, saved_deferred) = (mm.memmap_on_memory(), mm.deferred_memmap_init());
    let mut result = Ok(());
    'rounds: for deferred in [true, false] {
        for on_memory in [false, true] {
            mm.set_deferred_memmap_init(deferred);
            mm.set_memmap_on_memory(on_memory);
            result = round(mm, start, size, write, out);
            if result.is_err() {
                break 'rounds;
            }
        }
    }
    mm.set_memmap_on_memory(saved_on_memory);
    mm.set_deferred_memmap_init(saved_deferred);
    result
}

/// One add / online / first allocations / offline / remove round, as
/// [`hotplug`] says.
fn round<T: Translation>(
    mm: &mut MemorySystem<T>,
    start: PhysAddr,
    size: u64,
    write: u64,
    out: &mut dyn Write,
) -> Result<()> {
    let blocks = size / MEMORY_BLOCK_SIZE;
    let before = mm.meminfo();
    let t0 = cpu::counter();
    mm.add_memory(start, size)?;
    let t_add = cpu::counter() - t0;
    let added = mm.meminfo();
    let ids = block_id(start)..block_id(start + size);
    let t1 = cpu::counter();
    if let Err(e) = ids
        .clone()
        .try_for_each(|id| mm.online_block(id, Zone::Movable))
    {
        undo_add(mm, start, size);
        return Err(e);
    }
    let t_online = cpu::counter() - t1;
    let (t_first, t_all, t_free, allocated, t_iso) =
        first_allocations(mm, Zone::Movable, ids.clone());
    let tlbi = mm.page_table().stats.tlbi_ops;
    let t2 = cpu::counter();
    let removed = ids
        .clone()
        .try_for_each(|id| Ok(mm.offline_block(id)?))
        .and_then(|()| mm.remove_memory(start, size));
    if let Err(e) = removed {
        undo_add(mm, start, size);
        return Err(e);
    }
    let t_remove = cpu::counter() - t2;
    let tlbi = mm.page_table().stats.tlbi_ops - tlbi;
    let after = mm.meminfo();
    let consumed = before.free - added.free;
    writeln!(
        out,
        "memmap_on_memory={}, struct pages {}:",
        if mm.memmap_on_memory() { 'Y' } else { 'N' },
        if mm.deferred_memmap_init() {
            "deferred"
        } else {
            "all written at online"
        }
    )?;
    writeln!(
        out,
        "  system RAM consumed by add: {} KiB (struct pages {} KiB, page tables {} KiB); on the altmap {} KiB",
        consumed >> 10,
        (added.vmemmap - before.vmemmap) >> 10,
        (added.page_tables - before.page_tables) >> 10,
        (added.vmemmap_altmap - before.vmemmap_altmap) >> 10
    )?;
    writeln!(
        out,
        "  add {} + online {} = {}: {} the plain write",
        Us(t_add),
        Us(t_online),
        Us(t_add + t_online),
        Ratio(t_add + t_online, write)
    )?;
    writeln!(
        out,
        "  first allocations: the first order-0 page {} us; all {} pages {} us ({} the plain write); freeing them {} us",
        us(t_first),
        allocated,
        us(t_all),
        Ratio(t_all, write),
        us(t_free)
    )?;
    writeln!(
        out,
        "  isolation with every page in use (offline begun and given up): {} us",
        us(t_iso)
    )?;
    writeln!(out, "  offline + remove: {} us", us(t_remove))?;
    writeln!(
        out,
        "  TLB invalidations: {tlbi} for {blocks} blocks ({} per block)",
        tlbi / blocks
    )?;
    if after != before {
        bail!(
            EIO,
            "meminfo did not return to its baseline: {before:?} -> {after:?}"
        );
    }
    Ok(())
}
