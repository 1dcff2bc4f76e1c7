//! One control connection: a non-blocking TCP socket under a rustls session, carrying
//! [`ControlMsg`] lines. Driven by the membership loop: `pump` reads what arrived, `send`
//! queues a message, `flush` writes what it can; nothing blocks.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use rustls::Connection;

use super::msg::{ControlMsg, ControlMsgError, MAX_LINE};

/// Most bytes queued for sending before the link is considered stuck.
const MAX_QUEUED: usize = 1 << 20;

/// Why a link is unusable (it is then dropped).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// TLS error (bad certificate, protocol error).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A line that is not a message.
    #[error(transparent)]
    Malformed(#[from] ControlMsgError),
    /// A line longer than [`MAX_LINE`].
    #[error("a control line exceeds {MAX_LINE} bytes")]
    LineTooLong,
    /// The peer does not read what we send.
    #[error("more than {MAX_QUEUED} bytes queued: the peer is not reading")]
    Stuck,
}

/// See the module documentation.
pub struct Link {
    sock: TcpStream,
    tls: Connection,
    buf: Vec<u8>,
    /// The peer's node id, once known (from its certificate and Hello).
    pub peer: Option<u16>,
    /// Whether we dialled (client side).
    pub outbound: bool,
    /// When the connection was opened.
    pub opened: std::time::Instant,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .field("outbound", &self.outbound)
            .finish()
    }
}

impl Link {
    /// Wraps a connected socket (made non-blocking) and a fresh TLS session.
    pub fn new(sock: TcpStream, tls: impl Into<Connection>, outbound: bool) -> io::Result<Link> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        let mut tls: Connection = tls.into();
        // Bound what rustls queues for a peer that stops reading.
        tls.set_buffer_limit(Some(MAX_QUEUED));
        Ok(Link {
            sock,
            tls,
            buf: Vec::new(),
            peer: None,
            outbound,
            opened: std::time::Instant::now(),
        })
    }

    /// The socket's fd (for poll).
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether the TLS handshake is done.
    pub fn established(&self) -> bool {
        !self.tls.is_handshaking()
    }

    /// The server-side session, to check the client's certificate.
    pub fn server_conn(&self) -> Option<&rustls::ServerConnection> {
        match &self.tls {
            Connection::Server(s) => Some(s),
            Connection::Client(_) => None,
        }
    }

    /// Reads whatever arrived and appends the complete messages to `out`.
    pub fn pump(&mut self, out: &mut Vec<ControlMsg>) -> Result<(), LinkError> {
        loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => {
                    self.tls.process_new_packets()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            out.push(ControlMsg::parse(&line[..line.len() - 1])?);
        }
        if self.buf.len() > MAX_LINE {
            return Err(LinkError::LineTooLong);
        }
        // The handshake may want to answer what it read.
        self.flush()
    }

    /// Queues a message (sent by `flush`, which it calls).
    pub fn send(&mut self, m: &ControlMsg) -> Result<(), LinkError> {
        match self.tls.writer().write_all(&m.line()) {
            Ok(()) => self.flush(),
            Err(e) if e.kind() == io::ErrorKind::WriteZero => Err(LinkError::Stuck),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes queued TLS records until the socket would block.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether TLS records wait to be written.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }
}
