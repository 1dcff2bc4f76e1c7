//! Control-plane messages: one JSON object per line over a mutual-TLS connection. Cold path
//! only (heartbeats, membership changes), so readability wins over compactness; lines are
//! bounded by [`MAX_LINE`].

use serde::{Deserialize, Serialize};

/// Longest accepted line (a message and its newline).
pub const MAX_LINE: usize = 64 * 1024;

/// Why a line is not a control message.
#[derive(Debug, thiserror::Error)]
pub enum ControlMsgError {
    /// Not JSON, or not one of the messages (a peer of another version, or not a node).
    #[error("malformed control message: {0}")]
    Malformed(#[source] serde_json::Error),
}

/// A member as the control plane passes it around.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: u16,
    /// Data-plane address.
    pub addr: String,
    /// Control-plane address.
    pub control: String,
    /// Bytes of memory it contributes.
    pub memory: u64,
}

/// The steps of a home node's leave, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveStep {
    /// Every other member stops moving pages to the leaving node, and answers once the
    /// leaving node has processed everything it sent it before.
    Fence,
    /// The leaving node hands its pages and pointers to the successor and its replicas back.
    Drain,
    /// Every member sends to the successor what would have gone to the leaving node (the
    /// leaving node last: it is gone from then on).
    Retired,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ControlMsg {
    /// First message on a connection, each way: who is speaking.
    Hello {
        /// The sender's node id (its certificate must be valid for it).
        id: u16,
    },
    /// Liveness, every heartbeat period.
    Heartbeat {
        /// Sequence number.
        seq: u64,
        /// Sender's clock (ns) when sent, echoed back for RTT.
        sent_ns: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The heartbeat's sequence number.
        seq: u64,
        /// Its `sent_ns`.
        echo_ns: u64,
    },
    /// Coordinator → joining node: you are admitted; this is the cluster.
    Admitted {
        /// Every member, the joiner included, in id order.
        nodes: Vec<NodeInfo>,
    },
    /// Joining node → coordinator: my data plane is up.
    JoinDone {
        /// The joiner.
        id: u16,
    },
    /// Coordinator → members: the cluster grows by `joiner`; apply the new layout, connect to
    /// it, then acknowledge.
    Extend {
        /// Request id, echoed in the acknowledgement.
        req: u64,
        /// Every member after the join, in id order.
        nodes: Vec<NodeInfo>,
        /// The joining node.
        joiner: u16,
    },
    /// Member → coordinator.
    ExtendAck {
        /// The request.
        req: u64,
        /// `None` when applied, else why not.
        error: Option<String>,
    },
    /// Coordinator → members: the joiner is up; watch its heartbeats.
    Joined {
        /// The joiner.
        id: u16,
    },
    /// Coordinator → a node: hand back your pages and leave.
    Leave {
        /// The node asked to leave.
        id: u16,
    },
    /// A node → everyone: I have handed back my pages and am leaving.
    Left {
        /// The departing node.
        id: u16,
    },
    /// Coordinator → a member: carry out `step` of home node `id`'s leave, `to` taking its
    /// pages (docs/protocol.md §13), then acknowledge.
    HomeLeave {
        /// Request id, echoed in the acknowledgement (one per step).
        req: u64,
        /// Which step.
        step: LeaveStep,
        /// The leaving node.
        id: u16,
        /// Its successor.
        to: u16,
    },
    /// Member → coordinator: a [`ControlMsg::HomeLeave`] step is done.
    HomeLeaveAck {
        /// The request.
        req: u64,
        /// `None` when done, else why not.
        error: Option<String>,
    },
    /// Stop the whole cluster in order.
    Stop,
    /// Asks a page's home for its coherence state (for `GET /pages/{gpa}` on another node).
    PageQuery {
        /// Request id, echoed in the reply.
        req: u64,
        /// The page's guest-physical address.
        gpa: u64,
    },
    /// The home's answer.
    PageReply {
        /// The request.
        req: u64,
        /// The page's state, when the home could answer.
        info: Option<crate::handle::PageInfo>,
        /// Why not, otherwise.
        error: Option<String>,
    },
    /// The sender refuses this connection.
    Refused {
        /// Why.
        reason: String,
        /// Because the sender's cluster declared this node dead (or it left): it cannot take
        /// part any more. False for a refusal that says nothing about the receiver's standing
        /// (a node the sender does not know yet, say, during a join).
        #[serde(default)]
        dead: bool,
    },
}

impl ControlMsg {
    /// The message as one line (JSON and a newline).
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<ControlMsg, ControlMsgError> {
        serde_json::from_slice(line).map_err(ControlMsgError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_lines() {
        let n = NodeInfo {
            id: 3,
            addr: "127.0.0.1:1".into(),
            control: "127.0.0.1:2".into(),
            memory: 4096,
        };
        for m in [
            ControlMsg::Hello { id: 1 },
            ControlMsg::Heartbeat {
                seq: 7,
                sent_ns: 99,
            },
            ControlMsg::Extend {
                req: 1,
                nodes: vec![n.clone()],
                joiner: 3,
            },
            ControlMsg::Admitted { nodes: vec![n] },
            ControlMsg::Stop,
            ControlMsg::Refused {
                reason: "x".into(),
                dead: true,
            },
        ] {
            let l = m.line();
            assert_eq!(*l.last().unwrap(), b'\n');
            assert_eq!(ControlMsg::parse(&l[..l.len() - 1]).unwrap(), m);
        }
        let e = ControlMsg::parse(b"{\"t\":\"nope\"}").unwrap_err();
        assert!(
            e.to_string().starts_with("malformed control message: "),
            "{e}"
        );
        assert!(ControlMsg::parse(b"\xff\xfe").is_err());
    }
}
