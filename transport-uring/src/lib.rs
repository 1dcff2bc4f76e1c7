//! io_uring TCP transport: one ring per data-plane core.
//!
//! Filled in by issue #3.
