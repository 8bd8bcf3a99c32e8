//! Fault injection: a map that runs out of table pages at any allocation
//! rolls back to exactly where it was.

use super::*;

pub(super) fn no_memory_at_every_table_rolls_back<G: Granule>() {
    let mut env = Env::<G>::new();
    let p = page::<G>();
    let b = block::<G>();
    let x = top_boundary::<G>();
    // Something already there, so that some tables exist and some do not.
    env.map(
        x + 3 * b + p,
        x + 3 * b + 2 * p,
        PA0,
        Attributes::KERNEL_RW,
        MapHints::pages(),
    )
    .unwrap();
    let (start, end) = (x - p, x + 2 * b + p);
    for hints in [MapHints::pages(), MapHints::blocks(b).with_contiguous()] {
        let before = env.snapshot();
        let mut n = 0;
        loop {
            env.frames.fail_after = Some(n);
            let failed = env.frames.failed;
            let r = env.map(
                start,
                end,
                PA0 + 16 * b - (x - start),
                Attributes::KERNEL_RW,
                hints,
            );
            env.frames.fail_after = None;
            match r {
                Err(MapError::NoMemory) => {
                    assert_eq!(
                        env.frames.failed,
                        failed + 1,
                        "the injected failure was hit"
                    );
                    assert_eq!(
                        env.snapshot(),
                        before,
                        "NoMemory after {n} tables changed something"
                    );
                    n += 1;
                    assert!(n < 32, "never succeeds");
                }
                Ok(()) => {
                    assert_eq!(env.pt.stats.tables - before.stats.tables, n as u64);
                    assert_eq!(env.frames.in_use() - before.in_use, n);
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // Both sides of the boundary needed new tables.
        assert!(n >= 3, "only {n} tables needed");
        for va in [start, x, x + b - p, x + b + 2 * p, end - p] {
            assert!(env.pt.translate(va).is_some());
        }
        env.check_tables(true);
        env.unmap(start, end, false, None);
        env.free_tables(start, end);
        assert_eq!(env.pt.translate(x + b), None);
        assert!(env.pt.translate(x + 3 * b + p).is_some());
        assert_eq!(env.pt.stats.tables, before.stats.tables);
        assert_eq!(env.frames.in_use(), before.in_use);
    }
}
