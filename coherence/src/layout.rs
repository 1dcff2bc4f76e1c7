//! The cluster's memory layout (which node is home to which page) and the
//! partition of pages over protocol instances (shards).

use super::node::{NodeId, NodeSet, MAX_NODES};
use thiserror::Error;

/// Smallest page size the protocol accepts.
pub const MIN_PAGE_SIZE: u64 = 4096;

/// Errors describing a layout, a partition or a page that does not fit them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// The page size is not a power of two of at least 4 KiB.
    #[error("page size {0} is invalid: use a power of two of at least 4096 bytes")]
    PageSize(u64),
    /// No node, or more than 64.
    #[error("a layout needs 1 to 64 nodes, got {0}")]
    NodeCount(usize),
    /// Node ids must strictly increase.
    #[error(
        "node {0} is listed out of order or twice: list contributions in increasing node-id order"
    )]
    NodeOrder(NodeId),
    /// A contribution does not start where the previous one ended.
    #[error("node {node}'s range starts at page {first} but the previous range ends at page {expected}: contributions must be back to back")]
    NotContiguous {
        /// The node whose range is misplaced.
        node: NodeId,
        /// Where it starts.
        first: u64,
        /// Where it should start.
        expected: u64,
    },
    /// The page numbers overflow.
    #[error("node {0}'s range overflows the page-number space")]
    Overflow(NodeId),
    /// No node contributes memory.
    #[error("no node contributes memory: at least one range must be non-empty")]
    NoMemory,
    /// A page outside every contribution.
    #[error("page {0} is outside the cluster's memory")]
    PageOutOfRange(u64),
    /// A partition with `count == 0`, `index >= count` or an empty granule.
    #[error("partition {index} of {count} is invalid: need count >= 1, index < count and a granule of at least one page")]
    Partition {
        /// The index given.
        index: u32,
        /// The count given.
        count: u32,
    },
}

/// One node's contribution: pages `first_page .. first_page + page_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRange {
    /// The contributing node.
    pub node: NodeId,
    /// First page number (global, in pages).
    pub first_page: u64,
    /// Number of pages (0 for a compute-only node).
    pub page_count: u64,
}

/// Page size and the contributions in node-id order, back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    page_size: u64,
    ranges: Vec<NodeRange>,
    /// Indices into `ranges` of the non-empty ones, in page order.
    homes: Vec<usize>,
    members: NodeSet,
    home_set: NodeSet,
    first: u64,
    end: u64,
}

impl Layout {
    /// Validates and builds a layout.
    pub fn new(page_size: u64, ranges: Vec<NodeRange>) -> Result<Self, LayoutError> {
        if page_size < MIN_PAGE_SIZE || !page_size.is_power_of_two() {
            return Err(LayoutError::PageSize(page_size));
        }
        if ranges.is_empty() || ranges.len() > MAX_NODES {
            return Err(LayoutError::NodeCount(ranges.len()));
        }
        let mut members = NodeSet::EMPTY;
        let mut home_set = NodeSet::EMPTY;
        let mut homes = Vec::new();
        let mut prev: Option<NodeId> = None;
        let mut expected: Option<u64> = None;
        for (i, r) in ranges.iter().enumerate() {
            if prev.is_some_and(|p| p >= r.node) {
                return Err(LayoutError::NodeOrder(r.node));
            }
            prev = Some(r.node);
            members.insert(r.node);
            let end = r
                .first_page
                .checked_add(r.page_count)
                .ok_or(LayoutError::Overflow(r.node))?;
            if r.page_count == 0 {
                continue;
            }
            if let Some(e) = expected {
                if r.first_page != e {
                    return Err(LayoutError::NotContiguous {
                        node: r.node,
                        first: r.first_page,
                        expected: e,
                    });
                }
            }
            expected = Some(end);
            home_set.insert(r.node);
            homes.push(i);
        }
        let (Some(&first_i), Some(end)) = (homes.first(), expected) else {
            return Err(LayoutError::NoMemory);
        };
        Ok(Self {
            page_size,
            first: ranges[first_i].first_page,
            ranges,
            homes,
            members,
            home_set,
            end,
        })
    }

    /// Bytes per page.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// First page of the cluster's memory.
    pub fn first_page(&self) -> u64 {
        self.first
    }

    /// One past the last page.
    pub fn end_page(&self) -> u64 {
        self.end
    }

    /// The contributions, in node-id order.
    pub fn ranges(&self) -> &[NodeRange] {
        &self.ranges
    }

    /// Every node of the cluster.
    pub fn members(&self) -> NodeSet {
        self.members
    }

    /// The nodes that contribute memory (a home's death is fatal).
    pub fn homes(&self) -> NodeSet {
        self.home_set
    }

    /// The contribution of `node`, if it is a member.
    pub fn range_of(&self, node: NodeId) -> Option<&NodeRange> {
        self.ranges.iter().find(|r| r.node == node)
    }

    /// The home of `page` (binary search over at most 64 ranges).
    pub fn home_of(&self, page: u64) -> Result<NodeId, LayoutError> {
        if page < self.first || page >= self.end {
            return Err(LayoutError::PageOutOfRange(page));
        }
        // Index of the last non-empty range whose first page is <= page.
        let pos = self
            .homes
            .partition_point(|&i| self.ranges[i].first_page <= page);
        // pos >= 1 because page >= self.first = first page of homes[0].
        let idx = self.homes[pos.saturating_sub(1)];
        Ok(self.ranges[idx].node)
    }
}

/// Which pages one protocol instance owns: the address space is cut into granules of
/// `granule` pages, dealt round-robin to the `count` instances, so instance `index` owns the
/// pages with `(page / granule) % count == index`. A granule of 1 interleaves single pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    index: u32,
    count: u32,
    granule: u64,
}

impl Partition {
    /// The whole address space in one instance.
    pub const WHOLE: Self = Self {
        index: 0,
        count: 1,
        granule: 1,
    };

    /// Instance `index` of `count`, single pages interleaved (granule 1).
    pub fn new(index: u32, count: u32) -> Result<Self, LayoutError> {
        Self::granular(index, count, 1)
    }

    /// Instance `index` of `count`, granules of `granule` pages interleaved. Validates
    /// `index < count` and `granule >= 1`.
    pub fn granular(index: u32, count: u32, granule: u64) -> Result<Self, LayoutError> {
        if count == 0 || index >= count || granule == 0 {
            return Err(LayoutError::Partition { index, count });
        }
        Ok(Self {
            index,
            count,
            granule,
        })
    }

    /// This instance's index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Number of instances on the node.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Pages per granule.
    pub fn granule(self) -> u64 {
        self.granule
    }

    /// Whether `page` belongs to this partition.
    pub fn owns(self, page: u64) -> bool {
        self.count == 1 || (page / self.granule) % u64::from(self.count) == u64::from(self.index)
    }

    /// Number of pages below `page` that this partition owns (for an owned page: its dense
    /// index among the partition's pages).
    pub fn rank(self, page: u64) -> u64 {
        if self.count == 1 {
            return page;
        }
        let (g, c, i) = (self.granule, u64::from(self.count), u64::from(self.index));
        // Whole rounds of `count` granules hold `g` owned pages each; in the last, partial
        // round the owned granule starts `i * g` pages in.
        let round = g.saturating_mul(c);
        let (full, rem) = (page / round, page % round);
        full * g + rem.saturating_sub(i * g).min(g)
    }

    /// The owned page with rank `k` (the inverse of [`Self::rank`] on owned pages).
    fn unrank(self, k: u64) -> u64 {
        let (g, c, i) = (self.granule, u64::from(self.count), u64::from(self.index));
        (k / g) * g * c + i * g + k % g
    }
}

/// Dense numbering of the pages of a partition inside a page range (the owned pages of
/// `lo..hi` in order), for preallocated per-page arrays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DenseRange {
    lo: u64,
    hi: u64,
    base: u64,
    len: usize,
    part: Partition,
}

impl DenseRange {
    /// The pages of `part` within `lo..hi`.
    pub(crate) fn new(lo: u64, hi: u64, part: Partition) -> Self {
        let base = part.rank(lo);
        let len = part.rank(hi.max(lo)) - base;
        Self {
            lo,
            hi,
            base,
            len: usize::try_from(len).unwrap_or(usize::MAX),
            part,
        }
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The dense index of `page`, if it is in the range and the partition.
    pub(crate) fn index(&self, page: u64) -> Option<usize> {
        if page < self.lo || page >= self.hi || !self.part.owns(page) {
            return None;
        }
        // In range and owned, so rank(page) >= rank(lo) = base.
        usize::try_from(self.part.rank(page) - self.base).ok()
    }

    /// The page at dense index `idx`.
    pub(crate) fn page(&self, idx: usize) -> u64 {
        self.part.unrank(self.base + idx as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u16) -> NodeId {
        NodeId::new(i).unwrap()
    }

    fn r(node: u16, first_page: u64, page_count: u64) -> NodeRange {
        NodeRange {
            node: n(node),
            first_page,
            page_count,
        }
    }

    #[test]
    fn home_of_finds_ranges_and_skips_compute_only_nodes() {
        let l = Layout::new(
            4096,
            vec![r(0, 10, 5), r(1, 15, 0), r(2, 15, 3), r(7, 18, 1)],
        )
        .unwrap();
        assert_eq!(l.home_of(10), Ok(n(0)));
        assert_eq!(l.home_of(14), Ok(n(0)));
        assert_eq!(l.home_of(15), Ok(n(2)));
        assert_eq!(l.home_of(17), Ok(n(2)));
        assert_eq!(l.home_of(18), Ok(n(7)));
        assert_eq!(l.home_of(9), Err(LayoutError::PageOutOfRange(9)));
        assert_eq!(l.home_of(19), Err(LayoutError::PageOutOfRange(19)));
        assert_eq!(l.homes().len(), 3);
        assert_eq!(l.members().len(), 4);
        assert_eq!(l.first_page(), 10);
        assert_eq!(l.end_page(), 19);
    }

    #[test]
    fn layout_rejects_bad_input() {
        assert_eq!(
            Layout::new(1000, vec![r(0, 0, 1)]),
            Err(LayoutError::PageSize(1000))
        );
        assert_eq!(
            Layout::new(2048, vec![r(0, 0, 1)]),
            Err(LayoutError::PageSize(2048))
        );
        assert_eq!(Layout::new(4096, vec![]), Err(LayoutError::NodeCount(0)));
        assert_eq!(
            Layout::new(4096, vec![r(1, 0, 1), r(0, 1, 1)]),
            Err(LayoutError::NodeOrder(n(0)))
        );
        assert_eq!(
            Layout::new(4096, vec![r(0, 0, 2), r(1, 3, 1)]),
            Err(LayoutError::NotContiguous {
                node: n(1),
                first: 3,
                expected: 2
            })
        );
        assert_eq!(
            Layout::new(4096, vec![r(0, 0, 0)]),
            Err(LayoutError::NoMemory)
        );
        assert_eq!(
            Layout::new(4096, vec![r(0, u64::MAX, 2)]),
            Err(LayoutError::Overflow(n(0)))
        );
        assert!(Layout::new(2 << 20, vec![r(0, 0, 1)]).is_ok());
    }

    #[test]
    fn partition_validation() {
        assert!(Partition::new(0, 0).is_err());
        assert!(Partition::new(3, 3).is_err());
        assert!(Partition::granular(0, 1, 0).is_err());
        assert!(Partition::new(2, 3).unwrap().owns(5));
        assert!(!Partition::new(2, 3).unwrap().owns(6));
        let g = Partition::granular(1, 3, 4).unwrap();
        assert!(!g.owns(3) && g.owns(4) && g.owns(7) && !g.owns(8));
        assert!(g.owns(16) && g.owns(19) && !g.owns(20));
    }

    #[test]
    fn dense_ranges_number_every_owned_page_once() {
        for (count, granule) in (1..6u32).flat_map(|c| [(c, 1u64), (c, 3)]) {
            for index in 0..count {
                let part = Partition::granular(index, count, granule).unwrap();
                for lo in 0..9u64 {
                    for hi in lo..40u64 {
                        let d = DenseRange::new(lo, hi, part);
                        let owned: Vec<u64> = (lo..hi).filter(|p| part.owns(*p)).collect();
                        assert_eq!(d.len(), owned.len(), "lo {lo} hi {hi} part {part:?}");
                        for (i, p) in owned.iter().enumerate() {
                            assert_eq!(d.index(*p), Some(i));
                            assert_eq!(d.page(i), *p);
                        }
                        for p in 0..45u64 {
                            if !owned.contains(&p) {
                                assert_eq!(d.index(p), None);
                            }
                        }
                    }
                }
            }
        }
    }
}
