//! Cluster configuration as the command line states it: this node, its peers, what memory each
//! contributes, and the digest every node computes from it so that nodes whose views differ
//! refuse each other at connection setup.
//!
//! The guest address space is the nodes' contributions laid end to end in node-id order, so
//! every node derives the same layout from the same list.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Most nodes in one cluster (sharer sets are 64-bit masks).
pub const MAX_NODES: usize = 64;
/// The page size the data plane serves.
pub const PAGE_SIZE: u64 = 4096;

/// A configuration mistake, with what to change.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size string is malformed.
    #[error("bad size {0:?}: use a number with an optional K, M, G or T suffix (e.g. 64M)")]
    BadSize(String),
    /// A size is not a whole number of pages.
    #[error("size {0} is not a multiple of the {PAGE_SIZE}-byte page size")]
    Unaligned(u64),
    /// A peer address does not resolve.
    #[error("cannot resolve the address of peer {id} ({addr}): {why}")]
    Unresolvable {
        /// The peer's node id.
        id: u16,
        /// The address as written.
        addr: String,
        /// The resolver's error.
        why: String,
    },
    /// A node id is out of range.
    #[error("node id {0} is out of range: node ids go from 0 to {max}", max = MAX_NODES - 1)]
    NodeIdRange(u32),
    /// Two entries use the same node id (a peer with our own id, or a duplicate peer).
    #[error("node id {0} appears twice: every node (this one and each --peer) needs its own id")]
    DuplicateNode(u16),
    /// The cluster has no memory at all.
    #[error("no node contributes memory: give at least one node a non-zero --memory")]
    NoMemory,
    /// The address space would not fit in 64 bits.
    #[error("the nodes' memory adds up to more than the address space can hold")]
    TooLarge,
}

/// Parses `64M`, `1G`, `4096`, `2T` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let bad = || ConfigError::BadSize(s.to_string());
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node id (< [`MAX_NODES`]).
    pub id: u16,
    /// Where it listens (for this node: the `--listen` address).
    pub addr: SocketAddr,
    /// Bytes of guest memory it contributes (a multiple of the page size; may be 0).
    pub memory: u64,
}

/// Validates a node id.
pub fn node_id(id: u32) -> Result<u16, ConfigError> {
    if (id as usize) < MAX_NODES {
        Ok(id as u16)
    } else {
        Err(ConfigError::NodeIdRange(id))
    }
}

/// Resolves `HOST:PORT` to its first address.
pub fn resolve(id: u16, addr: &str) -> Result<SocketAddr, ConfigError> {
    let err = |why: String| ConfigError::Unresolvable {
        id,
        addr: addr.to_string(),
        why,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no addresses".to_string()))
}

/// The whole cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This node's id.
    pub me: u16,
    /// Every node, this one included, sorted by id.
    pub nodes: Vec<NodeSpec>,
}

impl ClusterSpec {
    /// Builds and checks the cluster from this node and its peers.
    pub fn new(me: NodeSpec, peers: Vec<NodeSpec>) -> Result<Self, ConfigError> {
        let my_id = me.id;
        let mut nodes = peers;
        nodes.push(me);
        nodes.sort_by_key(|n| n.id);
        for w in nodes.windows(2) {
            if w[0].id == w[1].id {
                return Err(ConfigError::DuplicateNode(w[0].id));
            }
        }
        let mut total = 0u64;
        for n in &nodes {
            if n.memory % PAGE_SIZE != 0 {
                return Err(ConfigError::Unaligned(n.memory));
            }
            total = total.checked_add(n.memory).ok_or(ConfigError::TooLarge)?;
        }
        if total == 0 {
            return Err(ConfigError::NoMemory);
        }
        Ok(Self { me: my_id, nodes })
    }

    /// This node's entry.
    pub fn my_node(&self) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.id == self.me)
            .expect("constructor includes this node")
    }

    /// Total bytes of the address space.
    pub fn total_memory(&self) -> u64 {
        self.nodes.iter().map(|n| n.memory).sum()
    }

    /// `(node id, first page, page count)` for every node, in node-id order.
    pub fn ranges(&self) -> Vec<(u16, u64, u64)> {
        let mut first = 0;
        self.nodes
            .iter()
            .map(|n| {
                let r = (n.id, first, n.memory / PAGE_SIZE);
                first += n.memory / PAGE_SIZE;
                r
            })
            .collect()
    }

    /// The layout digest: SHA-256 over the page size and every node's id and contribution.
    /// Addresses are not part of it (a node may be reached under several names).
    pub fn digest(&self) -> LayoutDigest {
        let mut h = Sha256::new();
        h.update(b"ssi-dp layout v1\0");
        h.update(PAGE_SIZE.to_le_bytes());
        h.update((self.nodes.len() as u32).to_le_bytes());
        for n in &self.nodes {
            h.update(n.id.to_le_bytes());
            h.update(n.memory.to_le_bytes());
        }
        LayoutDigest(h.finalize().into())
    }

    /// A one-line description (`0:64M 1:64M 2:0`), for logs and mismatch messages.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}:{}", n.id, Size(n.memory)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// SHA-256 of the layout; see [`ClusterSpec::digest`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LayoutDigest(pub [u8; 32]);

impl fmt::Debug for LayoutDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for LayoutDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A byte count printed with a binary unit when exact (`64M`, `1G`, `12345`).
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u16, port: u16, memory: u64) -> NodeSpec {
        NodeSpec {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            memory,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "12Q", "-1", "1.5G", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(Size(64 << 20).to_string(), "64M");
        assert_eq!(Size(12345).to_string(), "12345");
    }

    #[test]
    fn layout_is_contributions_in_id_order() {
        let c = ClusterSpec::new(node(1, 2, 8192), vec![node(2, 3, 0), node(0, 1, 4096)]).unwrap();
        assert_eq!(c.ranges(), vec![(0, 0, 1), (1, 1, 2), (2, 3, 0)]);
        assert_eq!(c.total_memory(), 12288);
        assert_eq!(c.my_node().id, 1);
        assert_eq!(c.describe(), "0:4K 1:8K 2:0");
    }

    #[test]
    fn digest_depends_on_layout_not_addresses() {
        let a = ClusterSpec::new(node(0, 1, 4096), vec![node(1, 2, 4096)]).unwrap();
        let b = ClusterSpec::new(node(1, 9, 4096), vec![node(0, 8, 4096)]).unwrap();
        let c = ClusterSpec::new(node(0, 1, 4096), vec![node(1, 2, 8192)]).unwrap();
        assert_eq!(a.digest(), b.digest(), "same layout seen from two nodes");
        assert_ne!(a.digest(), c.digest(), "different contributions");
    }

    #[test]
    fn misconfigurations_are_refused() {
        assert_eq!(
            ClusterSpec::new(node(0, 1, 4096), vec![node(0, 2, 4096)]),
            Err(ConfigError::DuplicateNode(0))
        );
        assert_eq!(
            ClusterSpec::new(node(0, 1, 0), vec![node(1, 2, 0)]),
            Err(ConfigError::NoMemory)
        );
        assert_eq!(
            ClusterSpec::new(node(0, 1, 100), vec![]),
            Err(ConfigError::Unaligned(100))
        );
    }
}
