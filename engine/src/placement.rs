//! Where a page's home should be: the policy of home migration (`--placement on`, issue 19).
//!
//! A home sees every request for its pages; the shard's heat map remembers, for a few
//! hundred recently requested pages (direct-mapped, bounded memory), how many requests each
//! node made, the home's own faults included. When one node other than the home made at
//! least [`Policy::min_requests`] of them and at least [`Policy::share_pct`] percent of all,
//! the home moves the page's home there (`coherence::Input::MoveHome`). The counts start
//! again at the new home, so moving back needs the same evidence there: that is the
//! hysteresis. A page two nodes use about equally never reaches the share and stays where it
//! is.
//!
//! Only nodes that contribute memory can be homes (the protocol's rule: the death of a home
//! stops the cluster, so a compute-only node must never become one).

use crate::stats::Heat;
use coherence::{Layout, NodeId};

/// When a home moves a page (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Requests from the dominant node before a move is considered.
    pub min_requests: u64,
    /// The dominant node's share of all recent requests, in percent.
    pub share_pct: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_requests: 16,
            share_pct: 75,
        }
    }
}

impl Policy {
    /// After a request for `page` (homed at `me`) that brought its requester's recent count
    /// to `count`: the node to move the home to, if any. Looks at the heat map only every
    /// fourth request past the threshold (64 loads each time), so a page that stays put costs
    /// little.
    pub fn decide(
        &self,
        heat: &Heat,
        layout: &Layout,
        page: u64,
        count: u64,
        me: NodeId,
    ) -> Option<NodeId> {
        if count < self.min_requests || count % 4 != 0 {
            return None;
        }
        let (best, best_n, total) = heat.dominant(page)?;
        let best = NodeId::new(best).ok()?;
        if best == me || best_n < self.min_requests || best_n * 100 < total * self.share_pct {
            return None;
        }
        layout.homes().contains(best).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coherence::NodeRange;

    fn layout() -> Layout {
        let r = |n: u16, first, count| NodeRange {
            node: NodeId::new(n).unwrap(),
            first_page: first,
            page_count: count,
        };
        // Nodes 0 and 1 contribute memory, node 2 computes only.
        Layout::new(4096, vec![r(0, 0, 64), r(1, 64, 64), r(2, 128, 0)]).unwrap()
    }

    fn n(i: u16) -> NodeId {
        NodeId::new(i).unwrap()
    }

    #[test]
    fn a_page_used_mostly_by_one_other_home_moves_there() {
        let heat = Heat::new(1);
        let (l, p) = (layout(), 5);
        let mut last = None;
        for _ in 0..3 {
            heat.record(p, 0);
        }
        for _ in 0..16 {
            let c = heat.record(p, 1);
            last = Policy::default().decide(&heat, &l, p, c, n(0)).or(last);
        }
        assert_eq!(last, Some(n(1)), "16 of 19 requests from node 1");
        heat.forget(p);
        assert_eq!(heat.dominant(p), Some((0, 0, 0)));
    }

    #[test]
    fn shared_use_compute_nodes_and_few_requests_do_not_move_a_home() {
        let (l, p) = (layout(), 7);
        let pol = Policy::default();
        // Node 1 and the home alternate: 50 % each.
        let heat = Heat::new(1);
        for _ in 0..40 {
            heat.record(p, 0);
            let c = heat.record(p, 1);
            assert_eq!(pol.decide(&heat, &l, p, c, n(0)), None);
        }
        // A compute-only node, however dominant, never becomes a home.
        let heat = Heat::new(1);
        for _ in 0..40 {
            let c = heat.record(p, 2);
            assert_eq!(pol.decide(&heat, &l, p, c, n(0)), None);
        }
        // Below the threshold nothing moves.
        let heat = Heat::new(1);
        for _ in 0..15 {
            let c = heat.record(p, 1);
            assert_eq!(pol.decide(&heat, &l, p, c, n(0)), None);
        }
    }
}
