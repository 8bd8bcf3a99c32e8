//! The kernel heap running dry on the hotplug paths a user drives (probe,
//! a virtio-mem add, `devmem map`, offlining): every heap allocation they
//! make is fallible, and a failure at any of them is `ENOMEM` with nothing
//! changed ([`heap_faults`] stands in for the kernel heap's exhaustion).

use super::*;
use crate::mm::system::PlugMask;
use crate::mm::testing::heap_faults;

/// Runs `op` with the n-th heap allocation failing, for n = 0, 1, ...
/// until one beyond its last: each failure is ENOMEM with nothing
/// changed; the success is undone and must be back at the start. How many
/// heap allocations the operation makes.
fn every_nth_heap_allocation_fails(
    fx: &mut Fx,
    op: &dyn Fn(&mut Fx) -> Result<()>,
    undo: &dyn Fn(&mut Fx),
) -> u64 {
    let base = snap(&fx.mm);
    for n in 0.. {
        assert!(n < 100, "the operation never got past its allocations");
        let events = fx.mm.events;
        // No spare capacity left from earlier growth: every record the
        // operation adds must allocate.
        fx.mm.blocks.shrink_to_fit();
        fx.mm.iomem.shrink_to_fit();
        heap_faults::fail_nth(Some(n));
        let r = op(fx);
        let fired = heap_faults::fired();
        heap_faults::fail_nth(None);
        match r {
            Err(e) => {
                assert!(fired, "n={n}: failed without an injected failure: {e:?}");
                assert_eq!(e.errno, Errno::ENOMEM, "n={n}: {e:?}");
                assert_same(&format!("n={n}: failed"), &snap(&fx.mm), &base);
                assert_eq!(fx.mm.events, events, "n={n}: events after a failure");
            }
            Ok(()) => {
                assert!(
                    !fired,
                    "n={n}: an allocation failed and the operation went on"
                );
                undo(fx);
                assert_same(&format!("n={n}: done and undone"), &snap(&fx.mm), &base);
                return n;
            }
        }
    }
    unreachable!()
}

#[test]
fn probe_fails_cleanly_at_every_heap_allocation() {
    for memmap_on_memory in [false, true] {
        let mut fx = boot();
        fx.mm.memmap_on_memory = memmap_on_memory;
        let (start, size) = (start_of(HOT_FIRST), 2 * BLOCK);
        let n =
            every_nth_heap_allocation_fails(&mut fx, &|fx| fx.mm.add_memory(start, size), &|fx| {
                fx.mm.remove_memory(start, size).unwrap()
            });
        assert!(
            n >= 2,
            "{n} heap allocations (memmap_on_memory={memmap_on_memory})"
        );
    }
}

#[test]
fn driver_managed_add_fails_cleanly_at_every_heap_allocation() {
    let mut fx = boot();
    let res = "System RAM (virtio_mem)";
    let start = start_of(HOT_END + 2);
    every_nth_heap_allocation_fails(
        &mut fx,
        &|fx| {
            fx.mm
                .add_memory_driver_managed_offline(None, start, BLOCK, res, PlugMask::full())
        },
        &|fx| {
            fx.mm
                .remove_memory_driver_managed(start, BLOCK, res)
                .unwrap()
        },
    );
}

#[test]
fn devmem_map_fails_cleanly_at_every_heap_allocation() {
    for kind in [DevMapKind::Dev, DevMapKind::Mem] {
        let mut fx = boot();
        let dev = fx.dev;
        every_nth_heap_allocation_fails(&mut fx, &|fx| fx.mm.memremap_pages(dev, kind), &|fx| {
            fx.mm.memunmap_pages(dev).unwrap()
        });
    }
}

#[test]
fn offline_begin_fails_cleanly_at_every_heap_allocation() {
    let mut fx = boot();
    fx.mm.add_memory(start_of(HOT_FIRST), BLOCK).unwrap();
    fx.mm.online_block(HOT_FIRST, Zone::Movable).unwrap();
    every_nth_heap_allocation_fails(&mut fx, &|fx| fx.mm.offline_begin(HOT_FIRST), &|fx| {
        fx.mm.offline_abort(HOT_FIRST)
    });
}

/// The error itself is made when memory is short: its message is cut
/// short, never an abort.
#[test]
fn an_error_is_made_without_heap() {
    heap_faults::fail_nth(Some(0));
    let e = crate::err!(ENOMEM, "no memory for {} blocks", 3);
    assert!(heap_faults::fired());
    assert_eq!(e.errno, Errno::ENOMEM);
    assert_eq!(e.msg, "");
    heap_faults::fail_nth(Some(0));
    let e = crate::error::Error::new(Errno::EINVAL, "unterminated \"");
    assert!(heap_faults::fired());
    assert_eq!((e.errno, e.msg.as_str()), (Errno::EINVAL, ""));
}
