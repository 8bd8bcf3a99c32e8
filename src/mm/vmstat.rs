//! Per-zone figures for `/proc/zoneinfo`, `MemAvailable:` and
//! `/proc/vmstat`: Linux's watermarks and lowmem reserves
//! (`mm/page_alloc.c`: `init_per_zone_wmark_min`, `__setup_per_zone_wmarks`,
//! `setup_per_zone_lowmem_reserve`, `calculate_totalreserve_pages`) and
//! `si_mem_available` (`fs/proc/meminfo.c`).
//!
//! Nothing here is stored: every figure follows from the zones' managed
//! pages, as Linux recomputes them on each online and offline. The page
//! allocator does not act on them (there is no reclaim to wake); they are
//! what a Linux user reads.

use super::addr::Pfn;
use super::layout::PAGE_SHIFT;
use super::page::Zone;
use super::pgtable::Translation;
use super::system::MemorySystem;

/// Zones of the node, in Linux's order (`Normal`, `Movable`, `Device`).
pub const MAX_NR_ZONES: usize = Zone::ALL.len();

/// Linux's `sysctl_lowmem_reserve_ratio` for our zones: Normal 32, the
/// others 0 (no reserve).
const LOWMEM_RESERVE_RATIO: [u64; MAX_NR_ZONES] = [32, 0, 0];

/// Linux's default `watermark_scale_factor` (in 1/10000 of managed pages).
const WATERMARK_SCALE_FACTOR: u64 = 10;

/// Linux's `SWAP_CLUSTER_MAX`: the smallest min watermark of Movable.
const SWAP_CLUSTER_MAX: u64 = 32;

/// A zone's watermarks, in pages (`min_wmark_pages`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub min: u64,
    pub low: u64,
    pub high: u64,
    pub promo: u64,
}

/// One zone as `/proc/zoneinfo` prints it; counts in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneInfo {
    pub free: u64,
    pub wmark: Watermarks,
    pub spanned: u64,
    pub present: u64,
    pub managed: u64,
    pub start_pfn: u64,
    /// Pages this zone keeps from allocations that could use a higher zone.
    pub lowmem_reserve: [u64; MAX_NR_ZONES],
}

/// `min_free_kbytes` from the kernel zone's pages: `sqrt(16 * kB)`,
/// clamped to 128 kB .. 256 MiB. Linux counts free buffer pages (managed
/// pages above the high watermark then in force); the managed pages are
/// what that converges to.
pub fn min_free_kbytes(lowmem_managed: u64) -> u64 {
    let kbytes = lowmem_managed << (PAGE_SHIFT - 10);
    kbytes.saturating_mul(16).isqrt().clamp(128, 262_144)
}

/// `__setup_per_zone_wmarks` over the managed pages of each zone.
pub fn watermarks(managed: [u64; MAX_NR_ZONES]) -> [Watermarks; MAX_NR_ZONES] {
    watermarks_node(managed, managed)
}

/// `__setup_per_zone_wmarks` for one node's zones (`managed`), given the
/// managed pages of each zone type over all nodes (`all`): the minimum
/// is shared out among every node's lowmem zones.
pub fn watermarks_node(
    managed: [u64; MAX_NR_ZONES],
    all: [u64; MAX_NR_ZONES],
) -> [Watermarks; MAX_NR_ZONES] {
    let normal = Zone::Normal as usize;
    let pages_min = min_free_kbytes(all[normal]) >> (PAGE_SHIFT - 10);
    // Every zone but Movable counts as lowmem (no highmem on arm64).
    let lowmem: u64 = (0..MAX_NR_ZONES)
        .filter(|&z| z != Zone::Movable as usize)
        .map(|z| all[z])
        .sum();
    core::array::from_fn(|z| {
        let share = match lowmem {
            0 => 0,
            l => (pages_min as u128 * managed[z] as u128 / l as u128) as u64,
        };
        let min = if z == Zone::Movable as usize {
            (managed[z] / 1024).clamp(SWAP_CLUSTER_MAX, 128)
        } else {
            share
        };
        let step = (share >> 2).max(managed[z] * WATERMARK_SCALE_FACTOR / 10_000);
        Watermarks {
            min,
            low: min + step,
            high: min + 2 * step,
            promo: min + 3 * step,
        }
    })
}

/// `setup_per_zone_lowmem_reserve`: zone `i` keeps back, against an
/// allocation that may use zone `j > i`, the managed pages of zones
/// `i+1..=j` over its ratio (none if its ratio is 0 or it is empty).
pub fn lowmem_reserve(managed: [u64; MAX_NR_ZONES]) -> [[u64; MAX_NR_ZONES]; MAX_NR_ZONES] {
    core::array::from_fn(|i| {
        let ratio = LOWMEM_RESERVE_RATIO[i];
        let mut upper = 0;
        core::array::from_fn(|j| {
            if j <= i {
                return 0;
            }
            upper += managed[j];
            if ratio == 0 || managed[i] == 0 {
                0
            } else {
                upper / ratio
            }
        })
    })
}

/// `calculate_totalreserve_pages`: per zone its largest reserve plus its
/// high watermark, at most its managed pages.
pub fn totalreserve_pages(managed: [u64; MAX_NR_ZONES]) -> u64 {
    totalreserve_pages_node(managed, managed)
}

/// [`totalreserve_pages`] of one node's zones (`managed`), all nodes'
/// zones managing `all`.
pub fn totalreserve_pages_node(managed: [u64; MAX_NR_ZONES], all: [u64; MAX_NR_ZONES]) -> u64 {
    let (wmark, reserve) = (watermarks_node(managed, all), lowmem_reserve(managed));
    (0..MAX_NR_ZONES)
        .map(|z| {
            let max = reserve[z][z..].iter().copied().max().unwrap_or(0);
            (max + wmark[z].high).min(managed[z])
        })
        .sum()
}

impl<T: Translation> MemorySystem<T> {
    fn managed_pages(&self) -> [u64; MAX_NR_ZONES] {
        let buddy = self.buddy.lock();
        Zone::ALL.map(|z| buddy.managed(z))
    }

    /// Node `nid`'s managed pages per zone (ZONE_DEVICE manages none).
    fn managed_pages_node(&self, nid: usize) -> [u64; MAX_NR_ZONES] {
        let buddy = self.buddy.lock();
        Zone::ALL.map(|z| buddy.managed_node(nid, z))
    }

    /// Pfns `[start, end)` ZONE_DEVICE spans: its mapped regions.
    fn device_span(&self) -> Option<(u64, u64)> {
        let mapped = self.devmem.iter().filter(|d| d.mapping.is_some());
        mapped.fold(None, |span, d| {
            let (s, e) = (Pfn::down(d.range.base), Pfn::down(d.range.end()));
            let (s, e) = (s.as_u64(), e.as_u64());
            Some(span.map_or((s, e), |(a, b): (u64, u64)| (a.min(s), b.max(e))))
        })
    }

    /// Node `nid`'s `zone` as `/proc/zoneinfo` shows it. ZONE_DEVICE is
    /// node 0's (device memory has no node here).
    pub fn zone_info_node(&self, nid: usize, zone: Zone) -> ZoneInfo {
        let managed = self.managed_pages_node(nid);
        let z = zone as usize;
        let span = match zone {
            Zone::Device if nid == 0 => self.device_span(),
            Zone::Device => None,
            _ => self.zone_span_node(Some(nid), zone),
        };
        let (start_pfn, end_pfn) = span.unwrap_or((0, 0));
        let free = self.buddy.lock().nr_free_node(nid, zone);
        ZoneInfo {
            free,
            wmark: watermarks_node(managed, self.managed_pages())[z],
            spanned: end_pfn - start_pfn,
            // ZONE_DEVICE pages are never present (never onlined).
            present: match zone {
                Zone::Device => 0,
                _ => self.zone_present_node(Some(nid), zone, false),
            },
            managed: managed[z],
            start_pfn,
            lowmem_reserve: lowmem_reserve(managed)[z],
        }
    }

    /// `si_mem_available` in pages: free pages above the reserves. There
    /// is no page cache or reclaimable slab to add.
    pub fn mem_available(&self) -> u64 {
        let free = self.nr_free_pages();
        let all = self.managed_pages();
        let reserve: u64 = (0..super::node::MAX_NUMNODES)
            .map(|n| totalreserve_pages_node(self.managed_pages_node(n), all))
            .sum();
        free.saturating_sub(reserve)
    }

    /// Linux 6.11's `nr_memmap_boot_pages` and `nr_memmap_pages`: pages
    /// of struct pages in system RAM from boot (the boot blocks' sections)
    /// and since (hot-added blocks and `devmem map --map=mem`). Struct pages
    /// on an altmap are on the memory they describe, and not counted.
    pub fn memmap_pages(&self) -> (u64, u64) {
        let boot_blocks = self.blocks.values().filter(|b| b.boot).count() as u64;
        let boot = boot_blocks * super::hotplug::vmemmap_pages_per_block();
        let mut in_ram = 0;
        self.for_each_vmemmap_leaf(|_, size, _, owner| {
            if owner.is_none() {
                in_ram += size >> PAGE_SHIFT;
            }
        });
        (boot, in_ram.saturating_sub(boot))
    }

    /// Node `nid`'s zones with present pages, in order (`populated_zone`).
    pub fn populated_zones_node(&self, nid: usize) -> impl Iterator<Item = Zone> + '_ {
        Zone::ALL
            .into_iter()
            .filter(move |&z| z != Zone::Device && self.zone_present_node(Some(nid), z, false) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's figures for a 1 GiB Normal zone with 4K pages
    /// (`min_free_kbytes` 4096: sqrt(16 * 1048576)).
    #[test]
    fn watermarks_follow_linux() {
        let pages_per_gib = (1u64 << 30) >> PAGE_SHIFT;
        assert_eq!(min_free_kbytes(pages_per_gib), 4096);
        assert_eq!(min_free_kbytes(0), 128);
        assert_eq!(min_free_kbytes(u64::MAX >> 20), 262_144);
        let w = watermarks([pages_per_gib, 0, 0]);
        let min = 4096 >> (PAGE_SHIFT - 10);
        let step = (min >> 2).max(pages_per_gib * 10 / 10_000);
        assert_eq!(
            w[0],
            Watermarks {
                min,
                low: min + step,
                high: min + 2 * step,
                promo: min + 3 * step
            }
        );
        // An empty Movable zone still has SWAP_CLUSTER_MAX; Device none.
        assert_eq!(w[1].min, 32);
        assert_eq!(w[1].high, 32);
        assert_eq!(w[2], Watermarks::default());
        // Movable gets no share of min_free_kbytes, Normal keeps all of it.
        let w2 = watermarks([pages_per_gib, 1 << 20, 0]);
        assert_eq!(w2[0].min, min);
        assert_eq!(w2[1].min, 128);
    }

    #[test]
    fn lowmem_reserve_and_totalreserve_follow_linux() {
        let r = lowmem_reserve([1000, 3200, 0]);
        assert_eq!(r[0], [0, 100, 100]);
        assert_eq!(r[1], [0, 0, 0]);
        assert_eq!(r[2], [0, 0, 0]);
        // An empty Normal zone reserves nothing.
        assert_eq!(lowmem_reserve([0, 3200, 0])[0], [0, 0, 0]);
        let managed = [1000, 3200, 0];
        let w = watermarks(managed);
        assert_eq!(
            totalreserve_pages(managed),
            (100 + w[0].high).min(1000) + w[1].high.min(3200)
        );
        assert_eq!(totalreserve_pages([0; 3]), 0);
    }
}
