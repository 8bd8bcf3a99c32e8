//! Where hot-added memory goes: Linux's `auto_online_blocks`
//! (`memhp_default_state=`), `memory_hotplug.online_policy=` and
//! `memory_hotplug.auto_movable_ratio=` (`mm/memory_hotplug.c`).

use super::layout::PAGES_PER_SECTION;
use super::page::Zone;
use super::pgtable::Translation;
use super::system::{block_pfns, BlockState, MemorySystem};
use crate::pr_warn;

/// Linux's `MMOP_*`: what `state` and `auto_online_blocks` take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnlineType {
    Offline,
    /// The zone the policy picks.
    Online,
    OnlineKernel,
    OnlineMovable,
}

impl OnlineType {
    pub const ALL: [OnlineType; 4] = [
        OnlineType::Offline,
        OnlineType::Online,
        OnlineType::OnlineKernel,
        OnlineType::OnlineMovable,
    ];

    /// Linux's `online_type_to_str`.
    pub const fn name(self) -> &'static str {
        match self {
            OnlineType::Offline => "offline",
            OnlineType::Online => "online",
            OnlineType::OnlineKernel => "online_kernel",
            OnlineType::OnlineMovable => "online_movable",
        }
    }

    /// Linux's `mhp_online_type_from_str`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// `memory_hotplug.online_policy=`: where `online` puts a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnlinePolicy {
    /// Keep zones contiguous: the zone the block's range already lies in,
    /// else the kernel zone.
    ContigZones,
    /// Movable while Movable stays within `auto_movable_ratio` percent of
    /// boot (kernel) memory, else the kernel zone.
    AutoMovable,
}

impl OnlinePolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "contig-zones" => Some(OnlinePolicy::ContigZones),
            "auto-movable" => Some(OnlinePolicy::AutoMovable),
            _ => None,
        }
    }
}

/// The three knobs, with Linux's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnlineConfig {
    pub default_type: OnlineType,
    pub policy: OnlinePolicy,
    /// Percent (Linux's default 301).
    pub auto_movable_ratio: u64,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            default_type: OnlineType::Offline,
            policy: OnlinePolicy::ContigZones,
            auto_movable_ratio: 301,
        }
    }
}

impl<T: Translation> MemorySystem<T> {
    pub fn online_config(&self) -> OnlineConfig {
        self.online_config
    }

    pub fn set_online_config(&mut self, c: OnlineConfig) {
        self.online_config = c;
    }

    /// Linux's `zone_for_pfn_range`: the zone `online_type` puts block
    /// `id` in; `None` for `Offline`.
    pub fn zone_for(&self, id: u64, online_type: OnlineType) -> Option<Zone> {
        match online_type {
            OnlineType::Offline => None,
            OnlineType::OnlineKernel => Some(Zone::Normal),
            OnlineType::OnlineMovable => Some(Zone::Movable),
            OnlineType::Online => Some(match self.online_config.policy {
                OnlinePolicy::ContigZones => self.contig_zone_for(id),
                OnlinePolicy::AutoMovable => self.auto_movable_zone_for(id),
            }),
        }
    }

    /// Onlines the new blocks `[first, last)` as `auto_online_blocks`
    /// says, in order (each choice sees the ones before). As in Linux a
    /// failed online leaves the block added and offline.
    pub fn auto_online(&mut self, first: u64, last: u64) {
        for id in first..last {
            let Some(zone) = self.zone_for(id, self.online_config.default_type) else {
                return;
            };
            if let Err(e) = self.online_block(id, zone) {
                pr_warn!("memory{id}: not onlined: {e}");
            }
        }
    }

    /// Pfns `[start, end)` that `zone` spans: from its lowest online block
    /// to its highest (Linux's `zone_start_pfn`, `zone_end_pfn`), over
    /// every node.
    pub fn zone_span(&self, zone: Zone) -> Option<(u64, u64)> {
        self.zone_span_node(None, zone)
    }

    /// [`zone_span`](Self::zone_span) of node `nid`'s zone (`None`: all).
    pub fn zone_span_node(&self, nid: Option<usize>, zone: Zone) -> Option<(u64, u64)> {
        let mut ids = self
            .blocks
            .iter()
            .filter(|(_, b)| b.state == BlockState::Online(zone) && nid.is_none_or(|n| n == b.nid))
            .map(|(&id, _)| id);
        let first = ids.next()?;
        let last = ids.next_back().unwrap_or(first);
        Some((block_pfns(first).0.as_u64(), block_pfns(last).1.as_u64()))
    }

    /// Pages of the blocks online in `zone` (Linux's `present_pages`: a
    /// partly plugged virtio-mem block counts whole, as its section is
    /// online); with `boot_only`, only boot memory's (`present_early_pages`).
    pub fn zone_present(&self, zone: Zone, boot_only: bool) -> u64 {
        self.zone_present_node(None, zone, boot_only)
    }

    /// [`zone_present`](Self::zone_present) of node `nid` (`None`: all).
    pub fn zone_present_node(&self, nid: Option<usize>, zone: Zone, boot_only: bool) -> u64 {
        let n = self
            .blocks
            .values()
            .filter(|b| b.state == BlockState::Online(zone) && (b.boot || !boot_only))
            .filter(|b| nid.is_none_or(|n| n == b.nid))
            .count() as u64;
        n * PAGES_PER_SECTION
    }

    /// Linux's `default_zone_for_pfn`: a block inside exactly one zone's
    /// span (of its node) joins it; otherwise the kernel zone.
    fn contig_zone_for(&self, id: u64) -> Zone {
        let (s, e) = block_pfns(id);
        let nid = self.blocks.get(&id).map(|b| b.nid);
        let within = |z| {
            self.zone_span_node(nid, z)
                .is_some_and(|(zs, ze)| s.as_u64() < ze && zs < e.as_u64())
        };
        match (within(Zone::Normal), within(Zone::Movable)) {
            (false, true) => Zone::Movable,
            _ => Zone::Normal,
        }
    }

    /// Linux's `auto_movable_zone_for_pfn` without memory groups (each
    /// block is its own unit): Movable if the block fits within the ratio
    /// of Movable to boot kernel memory.
    fn auto_movable_zone_for(&self, _id: u64) -> Zone {
        let ratio = self.online_config.auto_movable_ratio;
        let kernel_early = self.zone_present(Zone::Normal, true);
        let movable = self.zone_present(Zone::Movable, false) + PAGES_PER_SECTION;
        if ratio != 0 && movable as u128 * 100 <= ratio as u128 * kernel_early as u128 {
            Zone::Movable
        } else {
            Zone::Normal
        }
    }
}
