//! io_uring TCP transport: one ring per data-plane core, implementing [`wire::Transport`].
//!
//! - [`probe`]: can io_uring be used here, with which features, and if not, why not.
//! - [`bufring`]: a per-connection provided-buffer ring for multishot receive.
//! - [`userdata`]: what each submission's `user_data` encodes.
//! - [`peer`]: per-connection state.
//! - [`sendvec`]: the `msghdr`/`iovec` storage of a connection's vectored send.
//! - [`transport`]: the `Transport` implementation, [`UringTransport`].
//!
//! Registered files (one slot per connection), multishot receive into a provided-buffer ring
//! per connection, one vectored `SendMsg` per connection and flush (headers and payloads of
//! up to 32 byte ranges; `SendZc` per payload instead when zero-copy is configured, with the
//! transmit copy pool registered as a fixed buffer), completions reaped from shared memory
//! without system calls, and at most one `io_uring_enter` per `flush`.

pub mod bufring;
pub mod peer;
pub mod probe;
pub mod sendvec;
pub mod transport;
pub mod userdata;

pub use probe::{choose, probe, Choice, Features, UnsupportedReason};
pub use transport::UringTransport;
