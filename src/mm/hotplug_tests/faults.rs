//! Fault injection at every allocation, and the buddy allocator running
//! dry: a failure is ENOMEM and changes nothing.

use super::*;
use crate::mm::hotplug::vmemmap_pages_per_block;
use crate::mm::vmemmap::vmemmap_backing;

/// What happened when the n-th allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The operation failed with ENOMEM and changed nothing.
    Failed,
    /// It got round the failure (a vmemmap block fell back to base pages).
    Survived,
}

/// Runs `op` with the n-th allocation failing, for n = 0, 1, ... until an
/// n beyond the operation's last allocation. A failure must be ENOMEM with
/// nothing changed; a success is checked with `check`, undone with `undo`,
/// and must then be back at the start. Returns the outcome for each n that
/// hit an allocation.
fn every_nth_allocation_fails(
    fx: &mut Fx,
    op: &dyn Fn(&mut Fx) -> Result<()>,
    check: &dyn Fn(&Fx, &Snap),
    undo: &dyn Fn(&mut Fx),
) -> Vec<Outcome> {
    let base = snap(&fx.mm);
    let mut outcomes = Vec::new();
    for n in 0.. {
        assert!(n < 2000, "the operation never got past its allocations");
        let events = fx.mm.events;
        fx.mm.fail_nth_alloc = Some(n);
        let r = op(fx);
        let fired = fx.mm.fail_nth_alloc.is_none();
        fx.mm.fail_nth_alloc = None;
        match r {
            Err(e) => {
                assert!(fired, "n={n}: failed without an injected failure: {e:?}");
                assert_eq!(e.errno, Errno::ENOMEM, "n={n}");
                assert_same(&format!("n={n}: failed"), &snap(&fx.mm), &base);
                assert_eq!(fx.mm.events, events, "n={n}: events after a failure");
                outcomes.push(Outcome::Failed);
            }
            Ok(()) => {
                check(fx, &base);
                undo(fx);
                assert_same(&format!("n={n}: done and undone"), &snap(&fx.mm), &base);
                if !fired {
                    return outcomes;
                }
                outcomes.push(Outcome::Survived);
            }
        }
    }
    unreachable!()
}

fn probe_under_fault_injection(first: u64, n: u64, memmap_on_memory: bool) -> Vec<Outcome> {
    let mut fx = boot();
    fx.mm.memmap_on_memory = memmap_on_memory;
    let (start, size) = (start_of(first), n * BLOCK);
    let new_tables = u64::from(start + size > GIB2);
    every_nth_allocation_fails(
        &mut fx,
        &|fx| fx.mm.add_memory(start, size),
        &|fx, base| {
            let mi = fx.mm.meminfo();
            for id in first..first + n {
                assert_eq!(block_state(&fx.mm, id), Some(BlockState::Offline));
                let a = fx.mm.blocks[&id].altmap.as_ref();
                assert_eq!(
                    a.map(|a| a.alloc),
                    memmap_on_memory.then(vmemmap_pages_per_block)
                );
            }
            let memmap = n * MEMMAP_PER_BLOCK;
            if memmap_on_memory {
                assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
                assert_eq!(mi.vmemmap_altmap, memmap);
                assert_eq!(fx.mm.pt.stats.tables, base.tables + new_tables);
                assert_eq!(mi.free, base.meminfo.free - new_tables * PAGE_SIZE);
            } else {
                // Base pages where a block could not be had: maybe a PTE
                // table more per block, never a page of struct pages more.
                assert_eq!(mi.vmemmap, base.meminfo.vmemmap + memmap);
                let tables = fx.mm.pt.stats.tables - base.tables;
                assert!((new_tables..=new_tables + n).contains(&tables));
                assert_eq!(mi.free, base.meminfo.free - memmap - tables * PAGE_SIZE);
            }
            assert_eq!(mi.total, base.meminfo.total);
        },
        &|fx| fx.mm.remove_memory(start, size).expect("remove"),
    )
}

#[test]
fn probe_fails_cleanly_at_every_allocation() {
    use Outcome::*;
    // In the first GiB nothing but struct pages is allocated: losing the
    // 2 MiB block falls back to base pages.
    assert_eq!(probe_under_fault_injection(9, 1, false), [Survived]);
    assert_eq!(probe_under_fault_injection(9, 1, true), []);
    // The second GiB's PMD table comes first.
    assert_eq!(
        probe_under_fault_injection(16, 1, false),
        [Failed, Survived]
    );
    assert_eq!(probe_under_fault_injection(16, 1, true), [Failed]);
    // Three blocks across the GiB line: the linear map of all three comes
    // first (the second GiB's table), then each block's struct pages.
    // (A later block failing after earlier ones are in is the heap fault
    // tests' case.)
    assert_eq!(
        probe_under_fault_injection(15, 3, false),
        [Failed, Survived, Survived, Survived]
    );
    assert_eq!(probe_under_fault_injection(15, 3, true), [Failed]);
}

fn devmem_under_fault_injection(kind: DevMapKind) -> Vec<Outcome> {
    let mut fx = boot();
    every_nth_allocation_fails(
        &mut fx,
        &|fx| fx.mm.memremap_pages(fx.dev, kind),
        &|fx, base| {
            let mi = fx.mm.meminfo();
            assert_eq!(mi.device_mem, DEV_SIZE);
            match kind {
                DevMapKind::Dev => {
                    assert_eq!(mi.vmemmap, base.meminfo.vmemmap);
                    assert_eq!(mi.vmemmap_altmap, DEV_SIZE / 64);
                }
                DevMapKind::Mem => {
                    assert_eq!(mi.vmemmap, base.meminfo.vmemmap + DEV_SIZE / 64);
                    assert_eq!(mi.vmemmap_altmap, 0);
                }
            }
        },
        &|fx| fx.mm.memunmap_pages(fx.dev).expect("unmap"),
    )
}

#[test]
fn devmem_map_fails_cleanly_at_every_allocation() {
    use Outcome::*;
    assert_eq!(devmem_under_fault_injection(DevMapKind::Dev), [Failed]);
    assert_eq!(
        devmem_under_fault_injection(DevMapKind::Mem),
        [Failed, Survived, Survived]
    );
}

/// `arch_add_memory` far from everything (64 GiB up), so that the linear
/// map and the vmemmap each need a fresh PMD table: a failure at any
/// allocation, vmemmap tables included, leaves nothing behind, with and
/// without an altmap.
#[test]
fn arch_add_memory_with_fresh_tables_fails_cleanly() {
    const FAR: PhysAddr = PhysAddr::new(64 << 30);
    let (spfn, epfn) = (Pfn::down(FAR), Pfn::down(FAR + 2 * BLOCK));
    for with_altmap in [false, true] {
        let fresh = VmemAltmap::new(spfn, epfn, 0, 2 * vmemmap_pages_per_block());
        let altmap = std::cell::RefCell::new(fresh.clone());
        let mut fx = boot();
        let outcomes = every_nth_allocation_fails(
            &mut fx,
            &|fx| {
                let mut a = altmap.borrow_mut();
                let r = fx
                    .mm
                    .arch_add_memory(FAR, 2 * BLOCK, with_altmap.then_some(&mut *a));
                if r.is_err() {
                    assert_eq!(*a, fresh, "the altmap after a failure");
                }
                r
            },
            &|fx, base| {
                let mi = fx.mm.meminfo();
                let tables = fx.mm.pt.stats.tables - base.tables;
                // Linear and vmemmap PMD tables, maybe PTE tables for base
                // pages.
                assert!((2..=4).contains(&tables), "{tables} new tables");
                // An altmap the system does not know of: meminfo counts its
                // pages as Vmemmap, the free pages tell them apart.
                assert_eq!(mi.vmemmap, base.meminfo.vmemmap + 2 * MEMMAP_PER_BLOCK);
                if with_altmap {
                    assert_eq!(altmap.borrow().alloc, 2 * vmemmap_pages_per_block());
                    assert_eq!(mi.free, base.meminfo.free - tables * PAGE_SIZE);
                } else {
                    let memmap = 2 * MEMMAP_PER_BLOCK;
                    assert_eq!(mi.free, base.meminfo.free - memmap - tables * PAGE_SIZE);
                }
            },
            &|fx| {
                let mut a = altmap.borrow_mut();
                fx.mm
                    .arch_remove_memory(FAR, 2 * BLOCK, with_altmap.then_some(&mut *a));
                assert_eq!(a.alloc, 0);
                assert_eq!(a.next_pfn(), spfn);
            },
        );
        assert!(outcomes.contains(&Outcome::Failed), "{outcomes:?}");
        assert!(outcomes.contains(&Outcome::Survived), "{outcomes:?}");
    }
}

/// The buddy allocator really running dry rather than one allocation
/// failing: with only `k` free Normal pages, none of them a 2 MiB block,
/// probing memory17 (struct pages in RAM) needs its linear-map table, the
/// PTE table of base-page struct pages and 512 pages for them. Below that
/// it must fail partway through the base pages and give back every one of
/// them; at exactly that it must succeed and go back exactly.
#[test]
fn probe_under_memory_pressure_rolls_back() {
    let mut fx = boot();
    let booted = snap(&fx.mm);
    let start = start_of(17);
    // Take every free page, then free every other one of k of them: single
    // pages whose buddies stay taken, so nothing coalesces.
    let mut held = Vec::new();
    while let Some(pfn) = fx.mm.buddy.lock().alloc(0, Zone::Normal) {
        held.push(pfn);
    }
    held.sort_unstable();
    let (odd, mut even): (Vec<Pfn>, Vec<Pfn>) = held.iter().partition(|&&p| p.as_u64() % 2 == 1);
    let needed = 1 + 1 + vmemmap_pages_per_block();
    assert!(even.len() as u64 > needed);
    let mut given = 0;
    for k in 0..=needed {
        while given < k {
            assert!(fx.mm.buddy.lock().free(even.pop().unwrap(), 0));
            given += 1;
        }
        assert_eq!(fx.mm.buddy.lock().nr_free(Zone::Normal), k);
        let base = snap(&fx.mm);
        let r = fx.mm.add_memory(start, BLOCK);
        if k < needed {
            assert_eq!(errno(r), Errno::ENOMEM, "k={k}");
            assert_same(&format!("k={k}"), &snap(&fx.mm), &base);
        } else {
            r.unwrap();
            assert_eq!(fx.mm.buddy.lock().nr_free(Zone::Normal), 0);
            assert_eq!(
                fx.mm.meminfo().vmemmap,
                base.meminfo.vmemmap + MEMMAP_PER_BLOCK
            );
            let (_, size) = vmemmap_backing(&fx.mm.pt, Pfn::down(start)).unwrap();
            assert_eq!(size, PAGE_SIZE, "base pages");
            fx.mm.remove_memory(start, BLOCK).unwrap();
            assert_same("done and undone", &snap(&fx.mm), &base);
        }
    }
    // With memmap_on_memory the struct pages cost no RAM: the table is all
    // a probe needs.
    fx.mm.memmap_on_memory = true;
    let mut spare = Vec::new();
    while let Some(pfn) = fx.mm.buddy.lock().alloc(0, Zone::Normal) {
        spare.push(pfn);
    }
    let base = snap(&fx.mm);
    assert_eq!(errno(fx.mm.add_memory(start, BLOCK)), Errno::ENOMEM);
    assert_same("memmap_on_memory without RAM", &snap(&fx.mm), &base);
    assert!(fx.mm.buddy.lock().free(spare.pop().unwrap(), 0));
    fx.mm.add_memory(start, BLOCK).unwrap();
    assert_eq!(fx.mm.buddy.lock().nr_free(Zone::Normal), 0);
    fx.mm.remove_memory(start, BLOCK).unwrap();
    for pfn in spare.into_iter().chain(even).chain(odd) {
        assert!(fx.mm.buddy.lock().free(pfn, 0));
    }
    assert_same("everything given back", &snap(&fx.mm), &booted);
}
