//! Socket helpers shared by the transports: taking over an authenticated stream and reading
//! a socket error as an errno.

use std::io;
use std::net::TcpStream;

/// Makes a stream ready for a transport: non-blocking, `TCP_NODELAY`, no handshake timeouts.
pub fn prepare_stream(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)
}

/// The errno of an I/O error, or `EIO` when it has none.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}
