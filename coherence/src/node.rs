//! Node identities and sets of nodes (the sharer sets of the directory).

use thiserror::Error;

/// Most nodes a cluster can have: sharer sets are 64-bit masks.
pub const MAX_NODES: usize = 64;

/// Errors building a [`NodeId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NodeError {
    /// The id does not fit a 64-bit sharer mask.
    #[error("node id {0} is out of range: ids must be below 64 (renumber the cluster inventory)")]
    OutOfRange(u16),
}

/// A node of the cluster, `0..64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u16);

impl NodeId {
    /// Node 0 (a placeholder for unused records).
    pub(crate) const ZERO: Self = Self(0);

    /// Validates `id < 64`.
    pub const fn new(id: u16) -> Result<Self, NodeError> {
        if (id as usize) < MAX_NODES {
            Ok(Self(id))
        } else {
            Err(NodeError::OutOfRange(id))
        }
    }

    /// The raw id (what the wire header carries).
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The id as an index (`0..64`).
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A set of nodes as a 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct NodeSet(u64);

impl NodeSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// A set from its mask.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The mask.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// `{node}`.
    pub const fn single(node: NodeId) -> Self {
        Self(1 << node.0)
    }

    /// Whether `node` is a member.
    pub const fn contains(self, node: NodeId) -> bool {
        self.0 & (1 << node.0) != 0
    }

    /// Adds `node`.
    pub fn insert(&mut self, node: NodeId) {
        self.0 |= 1 << node.0;
    }

    /// Removes `node`.
    pub fn remove(&mut self, node: NodeId) {
        self.0 &= !(1 << node.0);
    }

    /// `self ∪ {node}`.
    #[must_use]
    pub const fn with(self, node: NodeId) -> Self {
        Self(self.0 | (1 << node.0))
    }

    /// `self ∖ {node}`.
    #[must_use]
    pub const fn without(self, node: NodeId) -> Self {
        Self(self.0 & !(1 << node.0))
    }

    /// `self ∪ other`.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `self ∖ other`.
    #[must_use]
    pub const fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of members.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// The lowest member, if any.
    pub fn first(self) -> Option<NodeId> {
        if self.0 == 0 {
            None
        } else {
            // trailing_zeros < 64 here, so the id is in range.
            Some(NodeId(self.0.trailing_zeros() as u16))
        }
    }

    /// Members in increasing order.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let id = bits.trailing_zeros() as u16;
            bits &= bits - 1;
            Some(NodeId(id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_rejects_64_and_above() {
        assert!(NodeId::new(63).is_ok());
        assert_eq!(NodeId::new(64), Err(NodeError::OutOfRange(64)));
        assert_eq!(NodeId::new(u16::MAX), Err(NodeError::OutOfRange(u16::MAX)));
    }

    #[test]
    fn set_operations() {
        let a = NodeId::new(0).unwrap();
        let b = NodeId::new(5).unwrap();
        let c = NodeId::new(63).unwrap();
        let s = NodeSet::EMPTY.with(a).with(c);
        assert!(s.contains(a) && s.contains(c) && !s.contains(b));
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![a, c]);
        assert_eq!(s.without(a).first(), Some(c));
        assert_eq!(s.minus(NodeSet::single(c)), NodeSet::single(a));
        assert!(NodeSet::EMPTY.first().is_none());
        let mut m = s;
        m.remove(c);
        m.insert(b);
        assert_eq!(
            m.union(NodeSet::single(c)).bits(),
            (1 << 0) | (1 << 5) | (1 << 63)
        );
    }
}
