//! The wire format shared by every transport, and the `Transport` trait the data plane sees.
//!
//! Filled in by issue #3.
