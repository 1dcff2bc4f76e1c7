//! The two per-page tables: the home's directory entry (16 bytes) and every
//! node's local state (2 bytes). Their encodings are in `docs/protocol.md` §2.

use super::node::{NodeId, NodeSet};

/// A home page's directory state, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Never materialised: contents are zero, nobody holds a copy.
    Zero,
    /// Every member holds a read-only copy; the home is a member.
    Shared(NodeSet),
    /// The only valid copy, writable, is at this node.
    Exclusive(NodeId),
    /// The exclusive owner died with the only copy.
    Lost,
}

const EXCL: u8 = 1 << 0;
const LOST: u8 = 1 << 1;
/// Home migration: whether this node is the page's home is the opposite of what the layout
/// says (a page of its own range moved away, or another node's page moved here).
const FLIP: u8 = 1 << 2;

/// A home page's directory entry: holders, version, active transaction.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirEntry {
    holders: u64,
    version: u32,
    /// 1 + index of the active (head) transaction record; 0 = idle.
    txn: u16,
    flags: u8,
    /// Home migration: 1 + the node this page's home moved to from here, 0 = none.
    moved_to: u8,
}

impl DirEntry {
    /// The decoded state.
    pub fn state(&self) -> DirState {
        if self.flags & LOST != 0 {
            DirState::Lost
        } else if self.flags & EXCL != 0 {
            match NodeSet::from_bits(self.holders).first() {
                Some(o) => DirState::Exclusive(o),
                None => DirState::Lost,
            }
        } else if self.holders == 0 {
            DirState::Zero
        } else {
            DirState::Shared(NodeSet::from_bits(self.holders))
        }
    }

    /// The page's version (incremented by each exclusive grant).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether a transaction is active on the page.
    pub fn busy(&self) -> bool {
        self.txn != 0
    }

    pub(crate) fn head(&self) -> Option<u16> {
        self.txn.checked_sub(1)
    }

    pub(crate) fn set_head(&mut self, idx: Option<u16>) {
        self.txn = idx.map_or(0, |i| i + 1);
    }

    pub(crate) fn set(&mut self, state: DirState) {
        let keep = self.flags & FLIP;
        self.set_state(state);
        self.flags |= keep;
    }

    fn set_state(&mut self, state: DirState) {
        match state {
            DirState::Zero => {
                self.holders = 0;
                self.flags = 0;
            }
            DirState::Shared(s) => {
                self.holders = s.bits();
                self.flags = 0;
            }
            DirState::Exclusive(o) => {
                self.holders = NodeSet::single(o).bits();
                self.flags = EXCL;
            }
            DirState::Lost => {
                self.holders = 0;
                self.flags = LOST;
            }
        }
    }

    pub(crate) fn set_version(&mut self, v: u32) {
        self.version = v;
    }

    /// Whether the home is not where the layout puts it (see `FLIP`).
    pub(crate) fn flipped(&self) -> bool {
        self.flags & FLIP != 0
    }

    /// Records whether the home is where the layout puts it; the other flags are kept.
    pub(crate) fn set_flipped(&mut self, on: bool) {
        if on {
            self.flags |= FLIP;
        } else {
            self.flags &= !FLIP;
        }
    }

    /// Where the page's home went when it last moved away from this node.
    pub fn moved_to(&self) -> Option<NodeId> {
        self.moved_to
            .checked_sub(1)
            .and_then(|n| NodeId::new(u16::from(n)).ok())
    }

    pub(crate) fn set_moved_to(&mut self, node: Option<NodeId>) {
        // Node ids are below 64, so 1 + id fits.
        self.moved_to = node.map_or(0, |n| n.get() as u8 + 1);
    }
}

/// A node's access to one of its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAccess {
    /// Not mapped.
    Invalid,
    /// Mapped read-only.
    ReadOnly,
    /// Mapped writable.
    Writable,
    /// Known lost: faults fail without asking the home.
    Lost,
}

/// Low bits of a version kept in the local state.
pub(crate) const VERSION_BITS: u32 = 13;
pub(crate) const VERSION_MASK: u32 = (1 << VERSION_BITS) - 1;

/// A node's local state for one page (2 bytes): access, and either the index
/// of the page's record or the low 13 bits of the held copy's version.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalState(u16);

impl LocalState {
    /// The access.
    pub fn access(self) -> PageAccess {
        match self.0 & 3 {
            0 => PageAccess::Invalid,
            1 => PageAccess::ReadOnly,
            2 => PageAccess::Writable,
            _ => PageAccess::Lost,
        }
    }

    pub(crate) fn set_access(&mut self, a: PageAccess) {
        let bits = match a {
            PageAccess::Invalid => 0,
            PageAccess::ReadOnly => 1,
            PageAccess::Writable => 2,
            PageAccess::Lost => 3,
        };
        self.0 = (self.0 & !3) | bits;
    }

    /// The attached record's index, if any.
    pub(crate) fn record(self) -> Option<u16> {
        (self.0 & 4 != 0).then_some(self.0 >> 3)
    }

    /// Attaches record `idx` (`< 8192`); the version bits are given up.
    pub(crate) fn attach(&mut self, idx: u16) {
        debug_assert!(u32::from(idx) <= VERSION_MASK);
        self.0 = (self.0 & 3) | 4 | (idx << 3);
    }

    /// Detaches the record, keeping the low version bits of `version`.
    pub(crate) fn detach(&mut self, version: u32) {
        // Masked to 13 bits, so the shift stays within 16 bits.
        self.0 = (self.0 & 3) | (((version & VERSION_MASK) as u16) << 3);
    }

    /// The low version bits (meaningful when no record is attached).
    pub(crate) fn version_bits(self) -> u32 {
        u32::from(self.0 >> 3)
    }
}

/// A per-page table entry whose default value is all zero bits, so that a table of defaults
/// can come from zeroed memory.
///
/// # Safety
/// The type must be plain data (no pointers, no padding that matters, every field an
/// integer) and its `Default` value must be all zero bits.
pub(crate) unsafe trait ZeroDefault: Copy + Default {}

// SAFETY: `#[repr(C)]` of integers (8 + 4 + 2 + 1 + 1 bytes, no padding); the derived
// default is every field zero (`zero_tables_hold_defaults` checks it).
unsafe impl ZeroDefault for DirEntry {}
// SAFETY: `#[repr(transparent)]` over a `u16` whose derived default is 0.
unsafe impl ZeroDefault for LocalState {}

/// A table of `n` default entries taken from zeroed memory: the allocator hands large
/// zeroed blocks out as untouched pages, so a table costs resident memory only where entries
/// are written (a node with a 64 GiB address space no longer writes 288 MiB of defaults at
/// start; docs/benchmarks.md, "Cost as the work grows").
pub(crate) fn zeroed_table<T: ZeroDefault>(n: usize) -> Vec<T> {
    let Ok(layout) = std::alloc::Layout::array::<T>(n) else {
        // Too large to describe: fall back to the allocation that reports it.
        return vec![T::default(); n];
    };
    if layout.size() == 0 {
        return Vec::new();
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[T; n]`, which
    // is what a `Vec<T>` of capacity `n` frees with; its `n` elements are initialised, as
    // zero bits are a valid `T` (the `ZeroDefault` contract) equal to `T::default()`.
    unsafe { Vec::from_raw_parts(ptr, n, n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tables_hold_defaults() {
        let d: Vec<DirEntry> = zeroed_table(1000);
        assert_eq!(d.len(), 1000);
        assert!(d.iter().all(|e| *e == DirEntry::default()));
        assert_eq!(d[999].state(), DirState::Zero);
        let l: Vec<LocalState> = zeroed_table(3);
        assert!(l.iter().all(|s| *s == LocalState::default()));
        assert!(zeroed_table::<DirEntry>(0).is_empty());
    }

    #[test]
    fn per_page_memory_bounds_hold() {
        assert!(std::mem::size_of::<DirEntry>() <= 16);
        assert_eq!(std::mem::size_of::<DirEntry>(), 16);
        assert!(std::mem::size_of::<LocalState>() <= 2);
        assert_eq!(std::mem::size_of::<NodeSet>(), 8);
    }

    #[test]
    fn dir_entry_encodes_every_state() {
        let a = NodeId::new(3).unwrap();
        let b = NodeId::new(63).unwrap();
        let mut e = DirEntry::default();
        assert_eq!(e.state(), DirState::Zero);
        e.set(DirState::Shared(NodeSet::single(a).with(b)));
        assert_eq!(e.state(), DirState::Shared(NodeSet::single(a).with(b)));
        e.set(DirState::Exclusive(b));
        assert_eq!(e.state(), DirState::Exclusive(b));
        e.set(DirState::Lost);
        assert_eq!(e.state(), DirState::Lost);
        e.set_head(Some(u16::MAX - 1));
        assert_eq!(e.head(), Some(u16::MAX - 1));
        assert!(e.busy());
        e.set_head(None);
        assert!(!e.busy());
    }

    #[test]
    fn local_state_keeps_access_record_and_version_apart() {
        let mut s = LocalState::default();
        assert_eq!(s.access(), PageAccess::Invalid);
        for a in [
            PageAccess::ReadOnly,
            PageAccess::Writable,
            PageAccess::Lost,
            PageAccess::Invalid,
        ] {
            s.set_access(a);
            assert_eq!(s.access(), a);
        }
        s.set_access(PageAccess::Writable);
        s.attach(8191);
        assert_eq!(s.record(), Some(8191));
        assert_eq!(s.access(), PageAccess::Writable);
        s.detach(0xabcd_1fff);
        assert_eq!(s.record(), None);
        assert_eq!(s.version_bits(), 0x1fff);
        assert_eq!(s.access(), PageAccess::Writable);
        s.detach(0x2001);
        assert_eq!(s.version_bits(), 1);
    }
}
