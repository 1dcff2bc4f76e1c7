//! io_uring TCP transport: one ring per data-plane core, implementing [`wire::Transport`].
//!
//! - [`probe`]: can io_uring be used here, with which features, and if not, why not.
//! - [`bufring`]: a per-connection provided-buffer ring for multishot receive.
//! - [`userdata`]: what each submission's `user_data` encodes.
//! - [`peer`]: per-connection state.
//! - [`transport`]: the `Transport` implementation, [`UringTransport`].
//!
//! Registered files (one slot per connection), the transmit copy pool registered as a fixed
//! buffer, multishot receive into a provided-buffer ring per connection, `SendZc` for page
//! payloads (falling back to `Send` when unsupported), completions reaped from shared memory
//! without system calls, and at most one `io_uring_enter` per `flush`.

pub mod bufring;
pub mod peer;
pub mod probe;
pub mod transport;
pub mod userdata;

pub use probe::{choose, probe, Choice, Features, UnsupportedReason};
pub use transport::UringTransport;
