//! Portable fallback transport over non-blocking sockets and epoll, for hosts where io_uring
//! is disabled (`kernel.io_uring_disabled`, container seccomp profiles). Implements
//! [`wire::Transport`] with the same framing, limits and ordering as `transport-uring`.
//!
//! - [`epoll`]: the epoll instance wrapper.
//! - [`peer`]: per-connection state (socket, parser, transmit queue, read buffer).
//! - [`transport`]: the `Transport` implementation, [`EpollTransport`].

pub mod epoll;
pub mod peer;
pub mod transport;

pub use transport::EpollTransport;
