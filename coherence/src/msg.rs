//! Protocol messages: what one protocol instance tells another. How a message is laid out in a
//! frame (type codes, flag bits, header fields) is the wire format's business; the node converts
//! at its edge, when it sends and when it receives.

use super::node::NodeId;

/// Why the home refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// No room right now (transaction pool full, or an eviction met a busy
    /// page): retry later.
    Busy,
    /// The page's only copy died with its owner.
    Lost,
    /// The page's home moved to this node (home migration): ask it instead.
    Moved(NodeId),
}

/// What an owner did with a forwarded request (`FwdAck` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdOutcome {
    /// Read forward: the owner sent the data to the reader (unless the reader
    /// is the home) and the payload to the home, and kept a read-only copy.
    Shared,
    /// Write forward: data handed to the writer, owner dropped. No payload.
    HandedOff,
    /// Write forward on behalf of the home: the payload is for the home and
    /// the owner dropped its copy.
    Surrendered,
    /// The requester was known dead: nothing sent to it; the payload is for
    /// the home and the owner kept a read-only copy.
    RequesterGone,
}

/// What a requester holds when it answers a `Recall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallHave {
    /// No copy: the request is still outstanding; the home decides.
    Nothing,
    /// A clean read-only copy; the payload carries it.
    Copy,
    /// A writable (or dirty, being written back) copy: it is the owner.
    Exclusive,
}

/// What a [`Msg::HomeMove`] hands over with the directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovedPage {
    /// The page was never materialised: no payload, the new home records it as zero.
    Zero,
    /// The payload is the page's only copy.
    Page,
    /// The page's only copy died with its owner: no payload, the new home records it lost
    /// (so that requests keep failing as they did, instead of finding zeros).
    Lost,
}

/// A protocol message. `txn` is always the requester's transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Read miss.
    ReadReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Write miss.
    WriteReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Upgrade a read-only copy of `version` (low 13 bits) to writable.
    UpgradeReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Low 13 bits of the requester's copy's version.
        version: u16,
    },
    /// Serve `requester` a read-only copy (and the home one).
    FwdRead {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Who asked.
        requester: NodeId,
        /// Version to put in the data.
        version: u32,
    },
    /// Hand the page to `requester` (writable) and drop it.
    FwdWrite {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Who asked.
        requester: NodeId,
        /// The new version to put in the data.
        version: u32,
    },
    /// Drop your read-only copy and acknowledge.
    Inv {
        /// Requester's transaction (echoed in the ack).
        txn: u64,
        /// Page number.
        page: u64,
        /// The writer on whose behalf (informational).
        requester: NodeId,
    },
    /// Invalidation done.
    InvAck {
        /// Transaction from the `Inv`.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// A copy of the page (payload always present).
    Data {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Version of the copy.
        version: u32,
        /// Exclusive (writable) grant.
        writable: bool,
    },
    /// Upgrade granted; no data.
    Grant {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// The new version.
        version: u32,
    },
    /// The owner's answer to a forward.
    FwdAck {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// What the owner did.
        outcome: FwdOutcome,
    },
    /// Requester installed data that did not come from the home.
    Done {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Drop (clean) or write back (dirty, payload) a replica.
    EvictReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Write-back with payload.
        dirty: bool,
    },
    /// Eviction accepted: drop the copy.
    EvictAck {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Request refused.
    Nack {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Why.
        reason: NackReason,
    },
    /// The data source of your request died: what do you hold?
    Recall {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Answer to a recall.
    RecallAck {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// What the requester holds.
        have: RecallHave,
    },
    /// Old home → new home: you are the page's home now (home migration). The old home
    /// holds the only copy when it sends this (every other copy was invalidated or
    /// surrendered first) and drops it; the payload is that copy, absent for a page never
    /// materialised.
    HomeMove {
        /// The old home's move transaction (informational).
        txn: u64,
        /// Page number.
        page: u64,
        /// The page's version.
        version: u32,
        /// The move's number: one more than the page's previous move (its first move is 1).
        /// Home pointers carry it, so that of two pointers the newer wins (§12).
        epoch: u32,
        /// What comes with the entry.
        content: MovedPage,
    },
    /// A home node that leaves → its successor (docs/protocol.md §13): the page's home moved
    /// from the leaving node to `home` at move `epoch`. The successor keeps it as its own
    /// pointer unless it knows of a newer move, and answers for the leaving node from then on.
    HomePointer {
        /// Unused (0): a pointer answers no transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Where the leaving node sent the page's home.
        home: NodeId,
        /// That move's number.
        epoch: u32,
    },
}

impl Msg {
    /// The page the message is about.
    pub fn page(&self) -> u64 {
        match *self {
            Self::ReadReq { page, .. }
            | Self::WriteReq { page, .. }
            | Self::UpgradeReq { page, .. }
            | Self::FwdRead { page, .. }
            | Self::FwdWrite { page, .. }
            | Self::Inv { page, .. }
            | Self::InvAck { page, .. }
            | Self::Data { page, .. }
            | Self::Grant { page, .. }
            | Self::FwdAck { page, .. }
            | Self::Done { page, .. }
            | Self::EvictReq { page, .. }
            | Self::EvictAck { page, .. }
            | Self::Nack { page, .. }
            | Self::Recall { page, .. }
            | Self::RecallAck { page, .. }
            | Self::HomeMove { page, .. }
            | Self::HomePointer { page, .. } => page,
        }
    }

    /// The requester's transaction id carried by the message.
    pub fn txn(&self) -> u64 {
        match *self {
            Self::ReadReq { txn, .. }
            | Self::WriteReq { txn, .. }
            | Self::UpgradeReq { txn, .. }
            | Self::FwdRead { txn, .. }
            | Self::FwdWrite { txn, .. }
            | Self::Inv { txn, .. }
            | Self::InvAck { txn, .. }
            | Self::Data { txn, .. }
            | Self::Grant { txn, .. }
            | Self::FwdAck { txn, .. }
            | Self::Done { txn, .. }
            | Self::EvictReq { txn, .. }
            | Self::EvictAck { txn, .. }
            | Self::Nack { txn, .. }
            | Self::Recall { txn, .. }
            | Self::RecallAck { txn, .. }
            | Self::HomeMove { txn, .. }
            | Self::HomePointer { txn, .. } => txn,
        }
    }

    /// Whether a one-page payload travels with the message.
    pub fn has_data(&self) -> bool {
        match *self {
            Self::Data { .. } => true,
            Self::FwdAck { outcome, .. } => outcome != FwdOutcome::HandedOff,
            Self::EvictReq { dirty, .. } => dirty,
            Self::RecallAck { have, .. } => have == RecallHave::Copy,
            Self::HomeMove { content, .. } => content == MovedPage::Page,
            _ => false,
        }
    }

    /// The message's name, as in the protocol's specification (docs/protocol.md).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ReadReq { .. } => "ReadReq",
            Self::WriteReq { .. } => "WriteReq",
            Self::UpgradeReq { .. } => "UpgradeReq",
            Self::FwdRead { .. } => "FwdRead",
            Self::FwdWrite { .. } => "FwdWrite",
            Self::Inv { .. } => "Inv",
            Self::InvAck { .. } => "InvAck",
            Self::Data { .. } => "Data",
            Self::Grant { .. } => "Grant",
            Self::FwdAck { .. } => "FwdAck",
            Self::Done { .. } => "Done",
            Self::EvictReq { .. } => "EvictReq",
            Self::EvictAck { .. } => "EvictAck",
            Self::Nack { .. } => "Nack",
            Self::Recall { .. } => "Recall",
            Self::RecallAck { .. } => "RecallAck",
            Self::HomeMove { .. } => "HomeMove",
            Self::HomePointer { .. } => "HomePointer",
        }
    }

    /// One message of every variant and flag combination (29 messages), for tests of
    /// whatever encodes messages.
    pub fn examples() -> Vec<Msg> {
        let n = |i: u16| NodeId::new(i).expect("example node ids are in range");
        let (txn, page) = (0x1234_5678_9abc, 0xfeed_0000_0001);
        let mut v = vec![
            Msg::ReadReq { txn, page },
            Msg::WriteReq { txn, page },
            Msg::UpgradeReq {
                txn,
                page,
                version: 0x1fff,
            },
            Msg::FwdRead {
                txn,
                page,
                requester: n(63),
                version: u32::MAX,
            },
            Msg::FwdWrite {
                txn,
                page,
                requester: n(0),
                version: 7,
            },
            Msg::Inv {
                txn,
                page,
                requester: n(9),
            },
            Msg::InvAck { txn, page },
            Msg::Grant {
                txn,
                page,
                version: 3,
            },
            Msg::Done { txn, page },
            Msg::EvictAck { txn, page },
            Msg::Recall { txn, page },
        ];
        for writable in [false, true] {
            v.push(Msg::Data {
                txn,
                page,
                version: 11,
                writable,
            });
        }
        for outcome in [
            FwdOutcome::Shared,
            FwdOutcome::HandedOff,
            FwdOutcome::Surrendered,
            FwdOutcome::RequesterGone,
        ] {
            v.push(Msg::FwdAck { txn, page, outcome });
        }
        for dirty in [false, true] {
            v.push(Msg::EvictReq { txn, page, dirty });
        }
        for reason in [NackReason::Busy, NackReason::Lost, NackReason::Moved(n(17))] {
            v.push(Msg::Nack { txn, page, reason });
        }
        for have in [RecallHave::Nothing, RecallHave::Copy, RecallHave::Exclusive] {
            v.push(Msg::RecallAck { txn, page, have });
        }
        for content in [MovedPage::Zero, MovedPage::Page, MovedPage::Lost] {
            v.push(Msg::HomeMove {
                txn,
                page,
                version: 42,
                epoch: u32::MAX,
                content,
            });
        }
        v.push(Msg::HomePointer {
            txn,
            page,
            home: n(5),
            epoch: 9,
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_cover_every_variant_once_per_flag_combination() {
        let all = Msg::examples();
        assert_eq!(all.len(), 29);
        let names: std::collections::BTreeSet<_> = all.iter().map(Msg::name).collect();
        assert_eq!(names.len(), 18);
        for m in &all {
            assert_eq!(m.page(), 0xfeed_0000_0001, "{m:?}");
            assert_eq!(m.txn(), 0x1234_5678_9abc, "{m:?}");
        }
        let with_data = all.iter().filter(|m| m.has_data()).count();
        // Data ×2, FwdAck ×3 (all but HandedOff), dirty EvictReq, RecallAck with a copy,
        // HomeMove of a materialised page.
        assert_eq!(with_data, 8);
    }
}
