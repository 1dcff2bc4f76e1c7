//! Who is where: peer handles for (node, shard) pairs, each peer node's shard count, which
//! local shard owns a page, and the messages shards pass each other.

use coherence::{Access, NodeId, MAX_NODES};
use wire::PeerId;

/// The transport handle of shard `shard` on node `node`.
#[inline]
pub fn peer_id(node: NodeId, shard: u16) -> PeerId {
    (u32::from(node.get()) << 16) | u32::from(shard)
}

/// The node a transport handle belongs to.
#[inline]
pub fn peer_node(peer: PeerId) -> u16 {
    (peer >> 16) as u16
}

/// The shard of `count` that owns `page` (the same rule on every node).
#[inline]
pub fn shard_of(page: u64, count: u32) -> u32 {
    (page % u64::from(count)) as u32
}

/// A message between the shards of one node (over the bounded SPSC rings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMsg {
    /// A fault read by another shard for a page this shard owns.
    Fault {
        /// Page number.
        page: u64,
        /// The access needed.
        access: Access,
        /// The fault token (read time and kind).
        token: u64,
    },
    /// A peer node is down (its connection to some shard of this node broke).
    NodeDown(u16),
}

/// Every peer node's shard count as learned from the handshakes (0: not a peer).
#[derive(Debug, Clone)]
pub struct PeerShards {
    counts: [u16; MAX_NODES],
}

impl Default for PeerShards {
    fn default() -> Self {
        Self {
            counts: [0; MAX_NODES],
        }
    }
}

impl PeerShards {
    /// Records that `node` runs `count` shards.
    pub fn set(&mut self, node: NodeId, count: u16) {
        self.counts[node.index()] = count;
    }

    /// `node`'s shard count (0 if unknown).
    #[inline]
    pub fn count(&self, node: NodeId) -> u16 {
        self.counts[node.index()]
    }

    /// The peer handle that serves `page` on `node`, if the node is known.
    #[inline]
    pub fn route(&self, node: NodeId, page: u64) -> Option<PeerId> {
        let c = self.count(node);
        (c != 0).then(|| peer_id(node, shard_of(page, u32::from(c)) as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_round_trip_and_routes_follow_the_peer_shard_count() {
        let n3 = NodeId::new(3).unwrap();
        assert_eq!(peer_node(peer_id(n3, 7)), 3);
        assert_eq!(peer_id(n3, 7) & 0xffff, 7);
        let mut p = PeerShards::default();
        assert_eq!(p.route(n3, 10), None);
        p.set(n3, 4);
        assert_eq!(p.route(n3, 10), Some(peer_id(n3, 2)));
        assert_eq!(shard_of(10, 1), 0);
        assert_eq!(shard_of(10, 3), 1);
    }
}
