//! The engine simulator (test builds only; issue #15, in progress): the real shard code driven
//! deterministically from a seed. So far: [`net`], the simulated network behind the real
//! `Transport` contract.

pub mod net;
