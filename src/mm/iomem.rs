//! The physical resource tree behind `/proc/iomem`.

use alloc::vec::Vec;
use core::fmt::{self, Write};

use super::addr::{PhysAddr, PhysRange};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub range: PhysRange,
    pub name: &'static str,
    pub children: Vec<Resource>,
}

#[derive(Default, Debug)]
pub struct IoMem {
    top: Vec<Resource>,
}

impl IoMem {
    /// Adds a top-level resource; `false` (and nothing added) if it overlaps.
    pub fn insert(&mut self, range: PhysRange, name: &'static str) -> bool {
        if self.top.iter().any(|r| r.range.overlaps(&range)) {
            return false;
        }
        let at = self.top.partition_point(|r| r.range.base < range.base);
        self.top.insert(
            at,
            Resource {
                range,
                name,
                children: Vec::new(),
            },
        );
        true
    }

    /// Room for `n` more top-level resources, so that as many
    /// [`insert`](Self::insert)s do not allocate.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), alloc::collections::TryReserveError> {
        self.top.try_reserve(n)
    }

    /// Room for one more child of the top-level resource that contains
    /// `range`, if one does, so that [`insert_child`](Self::insert_child)
    /// does not allocate.
    pub fn try_reserve_child(
        &mut self,
        range: PhysRange,
    ) -> Result<(), alloc::collections::TryReserveError> {
        match self.top.iter_mut().find(|r| r.range.covers(&range)) {
            Some(parent) => parent.children.try_reserve(1),
            None => Ok(()),
        }
    }

    /// No spare room: the next insert must allocate (fault-injection tests,
    /// which run on the 4K host build).
    #[cfg(all(test, not(any(feature = "granule-16k", feature = "granule-64k"))))]
    pub(in crate::mm) fn shrink_to_fit(&mut self) {
        self.top.shrink_to_fit()
    }

    /// Adds a child to the top-level resource that contains it.
    pub fn insert_child(&mut self, range: PhysRange, name: &'static str) {
        if let Some(parent) = self.top.iter_mut().find(|r| r.range.covers(&range)) {
            let at = parent
                .children
                .partition_point(|c| c.range.base < range.base);
            parent.children.insert(
                at,
                Resource {
                    range,
                    name,
                    children: Vec::new(),
                },
            );
        }
    }

    /// Removes the top-level resource starting at `start`.
    pub fn remove(&mut self, start: PhysAddr) -> Option<Resource> {
        let i = self.top.iter().position(|r| r.range.base == start)?;
        Some(self.top.remove(i))
    }

    /// Removes the resource of exactly `range` and `name`, top-level or a
    /// child (RAM inside a device's resource).
    pub fn remove_named(&mut self, range: PhysRange, name: &'static str) -> Option<Resource> {
        let is = |r: &Resource| r.range == range && r.name == name;
        if let Some(i) = self.top.iter().position(is) {
            return Some(self.top.remove(i));
        }
        self.top.iter_mut().find_map(|p| {
            let i = p.children.iter().position(is)?;
            Some(p.children.remove(i))
        })
    }

    /// The top-level resource that holds all of `range`.
    pub fn find(&self, range: PhysRange) -> Option<&Resource> {
        self.top.iter().find(|r| r.range.covers(&range))
    }

    /// Linux's format: `start-end : name`, children indented by two.
    pub fn show(&self, out: &mut dyn Write) -> fmt::Result {
        fn show(r: &Resource, depth: usize, out: &mut dyn Write) -> fmt::Result {
            writeln!(
                out,
                "{:indent$}{:08x}-{:08x} : {}",
                "",
                r.range.base,
                r.range.end() - 1,
                r.name,
                indent = depth * 2
            )?;
            r.children.iter().try_for_each(|c| show(c, depth + 1, out))
        }
        self.top.iter().try_for_each(|r| show(r, 0, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange::from_bounds(PhysAddr::new(start), PhysAddr::new(end))
    }

    #[test]
    fn prints_like_linux_and_refuses_overlaps() {
        let mut io = IoMem::default();
        assert!(io.insert(range(0x4000_0000, 0x8000_0000), "System RAM"));
        assert!(io.insert(
            range(0x9000_0000, 0xa000_0000),
            "Persistent Memory (legacy)"
        ));
        assert!(!io.insert(range(0x7000_0000, 0x9000_0000), "System RAM"));
        io.insert_child(range(0x4020_0000, 0x4030_0000), "Kernel code");
        let mut s = String::new();
        io.show(&mut s).unwrap();
        assert_eq!(
            s,
            "40000000-7fffffff : System RAM\n  40200000-402fffff : Kernel code\n90000000-9fffffff : Persistent Memory (legacy)\n"
        );
        assert!(io.remove(PhysAddr::new(0x9000_0000)).is_some());
        assert!(io.find(range(0x9000_0000, 0x9000_1000)).is_none());
    }
}
