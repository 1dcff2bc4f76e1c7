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

/// Pages per shard granule: the address space is dealt to a node's shards in runs of this
/// many pages (16 MiB), round-robin. Each shard owns whole granules, so it can have a
/// userfaultfd of its own registered over exactly its pages (a registration covers whole
/// VMAs, one per granule), and a prefetch window (at most 16 aligned pages) never spans two
/// shards. The same constant on every node: peers route messages by it.
pub const SHARD_GRANULE_PAGES: u64 = 4096;

/// The shard of `count` that owns `page` (the same rule on every node).
#[inline]
pub fn shard_of(page: u64, count: u32) -> u32 {
    ((page / SHARD_GRANULE_PAGES) % u64::from(count)) as u32
}

/// The page after `page` among those shard `shard_of(page, count)` owns: the next page of
/// the granule, or the first page of the shard's next granule.
#[inline]
pub fn next_owned(page: u64, count: u32) -> u64 {
    let next = page + 1;
    if next % SHARD_GRANULE_PAGES == 0 {
        next + (u64::from(count) - 1) * SHARD_GRANULE_PAGES
    } else {
        next
    }
}

/// The page before `page` among those its shard owns, if there is one.
#[inline]
pub fn prev_owned(page: u64, count: u32) -> Option<u64> {
    if page % SHARD_GRANULE_PAGES == 0 {
        page.checked_sub((u64::from(count) - 1) * SHARD_GRANULE_PAGES + 1)
    } else {
        Some(page - 1)
    }
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
        let g = SHARD_GRANULE_PAGES;
        assert_eq!(p.route(n3, 10), Some(peer_id(n3, 0)));
        assert_eq!(p.route(n3, 6 * g + 10), Some(peer_id(n3, 2)));
        assert_eq!(shard_of(10, 1), 0);
        assert_eq!(shard_of(g - 1, 3), 0, "a granule belongs to one shard");
        assert_eq!(shard_of(g, 3), 1);
        assert_eq!(shard_of(4 * g + 7, 3), 1, "granules are dealt round-robin");
        // A shard's pages in order: within a granule, then on in its next granule.
        assert_eq!(next_owned(5, 3), 6);
        assert_eq!(next_owned(g - 1, 3), 3 * g);
        assert_eq!(next_owned(g - 1, 1), g);
        assert_eq!(prev_owned(3 * g, 3), Some(g - 1));
        assert_eq!(prev_owned(g, 1), Some(g - 1));
        assert_eq!(prev_owned(g, 3), None, "shard 1's first page");
        assert_eq!(prev_owned(0, 3), None);
        for count in 1..4u32 {
            for page in [0, 3, g - 1, g, 5 * g + 9, 6 * g - 1] {
                let n = next_owned(page, count);
                assert_eq!(shard_of(n, count), shard_of(page, count));
                assert_eq!(prev_owned(n, count), Some(page));
            }
        }
        // The protocol instances own what the routing sends them.
        for count in 1..4u32 {
            for index in 0..count {
                let part = coherence::Partition::granular(index, count, g).unwrap();
                for page in [0, 1, g - 1, g, 2 * g + 3, 7 * g, 9 * g - 1] {
                    assert_eq!(part.owns(page), shard_of(page, count) == index);
                }
            }
        }
    }
}
