//! The page-coherence protocol as a sans-I/O state machine.
//!
//! A home-based directory protocol at page granularity with read replication and write
//! invalidation (sequential consistency per page). One [`Machine`] is one protocol instance: it
//! owns the directory entries of the home pages and the local state of all pages in its
//! partition (granules of pages dealt round-robin to the instances, [`Partition`]). The caller feeds it [`Input`]s with the current time and
//! executes the [`Action`]s it produces, in order.
//!
//! This crate owns the protocol's states, its [`Msg`] type (the one definition of a message;
//! the node encodes it into a wire frame at its edge) and its transition rules. It does no I/O,
//! reads no clock, starts no thread, allocates nothing per step and depends on nothing but
//! `thiserror`: time arrives as an argument, messages and page contents leave as actions. That
//! is what lets the same code run in a node, under the deterministic simulator in `sim` (tests)
//! and under the engine's simulator.
//!
//! The full specification — states, messages, transition tables, invariants, failure policy,
//! residency window — is `docs/protocol.md`.

#![warn(missing_docs)]

mod action;
mod config;
mod death;
mod home;
mod inject;
mod layout;
mod machine;
mod migrate;
mod msg;
mod node;
mod records;
mod requester;
mod residency;
mod retire;
mod state;
mod stats;
mod txn;
mod waiters;

#[cfg(test)]
mod sim;

pub use action::{Action, Actions, DataSource, FailReason, FatalReason, InstallSource};
pub use config::{Config, ConfigError, MAX_ACTIVE_PAGES, MAX_HOME_TXNS};
pub use layout::{Layout, LayoutError, NodeRange, Partition, MIN_PAGE_SIZE};
pub use machine::{Access, EvictRefusal, Input, Machine, MoveRefusal, Outcome, StepError};
pub use msg::{FwdOutcome, MovedPage, Msg, NackReason, RecallHave};
pub use node::{NodeError, NodeId, NodeSet, MAX_NODES};
pub use state::{DirEntry, DirState, LocalState, PageAccess};
pub use stats::Stats;
