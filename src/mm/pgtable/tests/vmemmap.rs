//! `vmemmap_populate` over the walker's fixtures, at the kernel's granule
//! (the vmemmap is mapped only in it): a range that is not whole 2 MiB
//! blocks gets base pages, never a block that reaches past it.

use super::*;
use crate::mm::granule::KernelGranule;
use crate::mm::vmemmap::vmemmap_populate;

/// Populates `[start, end)` and checks it is mapped with base pages only,
/// one fresh backing page each, and nothing around it.
fn populate_expecting_base_pages(env: &mut Env<KernelGranule>, start: VirtAddr, end: VirtAddr) {
    let p = page::<KernelGranule>();
    let (in_use, tables) = (env.frames.in_use() as u64, env.pt.stats.tables);
    vmemmap_populate(&mut env.pt, start, end, None, &mut env.frames).unwrap();
    let leaves = env.leaves(start.align_down(4 << 20), end.align_up(4 << 20) + (4 << 20));
    let n = (end - start) / p;
    assert_eq!(leaves.len() as u64, n, "{start:#x}..{end:#x}: {leaves:x?}");
    for (i, &(va, size, level, _)) in leaves.iter().enumerate() {
        assert_eq!((va, size, level), (start + i as u64 * p, p, 3));
    }
    let new_tables = env.pt.stats.tables - tables;
    assert_eq!(env.frames.in_use() as u64, in_use + new_tables + n);
}

/// A block-aligned range shorter than a block, and one that starts off a
/// block boundary and crosses it: both get base pages (the 4K block path
/// needs a whole aligned 2 MiB).
#[test]
fn vmemmap_populate_maps_partial_blocks_with_base_pages() {
    let mut env = Env::<KernelGranule>::new();
    let (p, b) = (page::<KernelGranule>(), 2 << 20);
    populate_expecting_base_pages(&mut env, VA0 + b, VA0 + b + 16 * p);
    populate_expecting_base_pages(&mut env, VA0 + 4 * b - 4 * p, VA0 + 4 * b + 4 * p);
}
