//! Portable fallback transport over non-blocking sockets and epoll, for hosts where io_uring
//! is disabled.
//!
//! Filled in by issue #3.
