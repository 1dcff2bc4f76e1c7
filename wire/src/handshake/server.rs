//! The server side of the handshake as a non-blocking state machine over one socket, so that
//! one thread can hold many unauthenticated connections at once ([`super::AcceptPool`]) and
//! none of them can hold a thread. [`accept_stream`] drives the same machine on one stream
//! until it finishes (tests, fuzzing, simple servers).
//!
//! Phases: read the client hello (116 bytes) → write server hello and MAC (and our identity)
//! → read the client's auth or abort (8 + 32 bytes) → with identities, read the client's
//! (4-byte head, then credential and signature) → write accept or reject. Every message is
//! checked as soon as its bytes are in. Per connection, beyond the struct: our hello's output,
//! and the client's identity only once its MAC proved it holds the secret.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use subtle::ConstantTimeEq;

use super::{
    check_auth, check_identity, check_identity_flag, decode_hello, encode_hello, finish,
    fresh_nonce, identity_len, identity_proof, key_share, prefix, Authenticated, Digest,
    HandshakeConfig, HandshakeError, Hello, HelloFields, RejectReason, HELLO_BODY_LEN, HS_MAGIC,
    HS_VERSION, IDENTITY_HEAD, ID_CLIENT, ID_SERVER, KIND_ABORT, KIND_ACCEPT, KIND_CLIENT_AUTH,
    KIND_CLIENT_HELLO, KIND_REJECT, KIND_SERVER_HELLO, MAC_LEN, PREFIX_LEN,
};
use crate::seal::FrameKeys;

const HELLO_LEN: usize = PREFIX_LEN + HELLO_BODY_LEN;
const AUTH_LEN: usize = PREFIX_LEN + MAC_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the client hello.
    Hello,
    /// Our hello is written (or queued); reading the client's auth.
    Auth,
    /// The client's MAC verified; reading the head of its identity.
    IdHead,
    /// Reading the credential and signature of its identity.
    IdBody,
    /// Writing accept; done once it is out.
    Accepting,
    /// Writing a reject; failed once it is out (or could not be written).
    Rejecting,
    /// Finished (the stream was handed out, or the handshake failed).
    Over,
}

/// Where a server handshake stands after [`ServerConn::advance`].
#[derive(Debug)]
pub enum ServerProgress {
    /// Waiting for the peer: poll the stream for reading (`write == false`) or writing.
    Pending {
        /// The stream must become writable (our message did not fit in the socket buffer).
        write: bool,
    },
    /// The peer authenticated; the stream is blocking again, without timeouts.
    Accepted(Authenticated),
    /// The handshake failed (counted in the configuration's stats; a reject was sent when
    /// the peer is owed one).
    Failed(HandshakeError),
}

/// One server-side handshake in progress on a non-blocking stream.
#[derive(Debug)]
pub struct ServerConn {
    stream: Option<TcpStream>,
    /// Where the connection comes from.
    pub peer: SocketAddr,
    /// When it was accepted.
    pub accepted: Instant,
    phase: Phase,
    /// Input of the current message.
    inb: [u8; HELLO_LEN],
    got: usize,
    /// The client's hello and ours, for the MACs.
    ch: [u8; HELLO_LEN],
    sh: [u8; HELLO_LEN],
    hello: Option<Hello>,
    /// The connection's frame keys, agreed when our hello was made.
    keys: Option<FrameKeys>,
    /// The client's identity (credential, signature) once its MAC verified, and the
    /// credential's length.
    id_body: Vec<u8>,
    id_cred: usize,
    /// Output not yet written (our hello, MAC and identity; or accept; or reject).
    out: Vec<u8>,
    out_len: usize,
    out_sent: usize,
    /// The error a reject reports once it is out.
    failure: Option<HandshakeError>,
}

impl ServerConn {
    /// Starts the server side of a handshake on an accepted stream (made non-blocking).
    pub fn new(stream: TcpStream, peer: SocketAddr) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: Some(stream),
            peer,
            accepted: Instant::now(),
            phase: Phase::Hello,
            inb: [0; HELLO_LEN],
            got: 0,
            ch: [0; HELLO_LEN],
            sh: [0; HELLO_LEN],
            hello: None,
            keys: None,
            id_body: Vec::new(),
            id_cred: 0,
            out: Vec::new(),
            out_len: 0,
            out_sent: 0,
            failure: None,
        })
    }

    /// The socket, for polling (`None` once the handshake is over).
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether the client hello has fully arrived (a peer that has not sent it is silent or
    /// trickling).
    pub fn hello_received(&self) -> bool {
        self.phase != Phase::Hello
    }

    /// Reads and writes what the socket allows and moves the handshake on. Call when the
    /// stream is ready (or at any time: it returns `Pending` when nothing can be done).
    pub fn advance(&mut self, cfg: &HandshakeConfig) -> ServerProgress {
        let r = match self.run(cfg) {
            Ok(None) => {
                return ServerProgress::Pending {
                    write: self.out_sent < self.out_len,
                }
            }
            Ok(Some(a)) => Ok(a),
            Err(e) => Err(e),
        };
        match finish(cfg, r) {
            Ok(a) => ServerProgress::Accepted(a),
            Err(e) => {
                self.phase = Phase::Over;
                self.stream = None;
                ServerProgress::Failed(e)
            }
        }
    }

    /// Gives up (deadline passed, or evicted to make room): counted as an I/O failure.
    pub fn abandon(&mut self, cfg: &HandshakeConfig, why: &'static str) -> HandshakeError {
        self.phase = Phase::Over;
        self.stream = None;
        let e = HandshakeError::Io(io::Error::new(io::ErrorKind::TimedOut, why));
        cfg.stats.count(&e);
        e
    }

    fn run(&mut self, cfg: &HandshakeConfig) -> Result<Option<Authenticated>, HandshakeError> {
        loop {
            if !self.flush()? {
                return Ok(None);
            }
            match self.phase {
                phase @ (Phase::Hello | Phase::Auth | Phase::IdHead) => {
                    let need = match phase {
                        Phase::Hello => HELLO_LEN,
                        Phase::Auth => AUTH_LEN,
                        _ => IDENTITY_HEAD,
                    };
                    if !self.fill(need, cfg)? {
                        return Ok(None);
                    }
                    if self.phase == Phase::Rejecting {
                        continue;
                    }
                    match phase {
                        Phase::Hello => self.on_hello(cfg)?,
                        Phase::Auth => self.on_auth(cfg)?,
                        _ => self.on_id_head()?,
                    }
                }
                Phase::IdBody => {
                    if !self.fill_id()? {
                        return Ok(None);
                    }
                    self.on_id_body(cfg)?;
                }
                Phase::Accepting => return self.accepted_stream().map(Some),
                Phase::Rejecting => {
                    self.phase = Phase::Over;
                    return Err(self
                        .failure
                        .take()
                        .unwrap_or(HandshakeError::Malformed("rejected")));
                }
                Phase::Over => return Err(HandshakeError::Malformed("handshake already over")),
            }
        }
    }

    /// Reads until `need` bytes of the current message are in; checks the prefix as soon as
    /// it is complete. Returns whether the message is complete (or a reject was queued).
    fn fill(&mut self, need: usize, cfg: &HandshakeConfig) -> Result<bool, HandshakeError> {
        while self.got < need {
            let stream = self
                .stream
                .as_mut()
                .ok_or(HandshakeError::Malformed("no stream"))?;
            match stream.read(&mut self.inb[self.got..need]) {
                Ok(0) => {
                    return Err(HandshakeError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the handshake",
                    )))
                }
                Ok(n) => {
                    let before = self.got;
                    self.got += n;
                    if before < PREFIX_LEN && self.got >= PREFIX_LEN {
                        self.check_prefix(cfg)?;
                        if self.phase == Phase::Rejecting {
                            return Ok(true);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
        Ok(true)
    }

    /// Magic and version of the message being read, and a kind this phase allows; a bad
    /// one is answered with a reject (the phase becomes `Rejecting`).
    fn check_prefix(&mut self, cfg: &HandshakeConfig) -> Result<(), HandshakeError> {
        let mut p = [0u8; PREFIX_LEN];
        p.copy_from_slice(&self.inb[..PREFIX_LEN]);
        if u32::from_le_bytes([p[0], p[1], p[2], p[3]]) != HS_MAGIC {
            return self.reject(
                RejectReason::Malformed,
                HandshakeError::Malformed("bad magic"),
            );
        }
        if p[4] != HS_VERSION {
            let e = HandshakeError::VersionMismatch {
                ours: HS_VERSION,
                theirs: p[4],
            };
            return self.reject(RejectReason::VersionMismatch, e);
        }
        let (kind, reason) = (p[5], p[6]);
        match (self.phase, kind) {
            (Phase::Hello, KIND_CLIENT_HELLO) | (Phase::Auth, KIND_CLIENT_AUTH) => Ok(()),
            (Phase::Auth, KIND_ABORT) => {
                let theirs = self.hello.as_ref().map(|h| h.digest).unwrap_or_default();
                Err(match RejectReason::from_code(reason) {
                    RejectReason::WrongSecret => HandshakeError::WrongSecret,
                    RejectReason::LayoutMismatch => HandshakeError::LayoutMismatch {
                        ours: cfg.digest,
                        theirs: Digest(theirs),
                    },
                    r => HandshakeError::Aborted(r),
                })
            }
            (Phase::Hello, _) => self.reject(
                RejectReason::Malformed,
                HandshakeError::Malformed("expected a client hello"),
            ),
            _ => self.reject(
                RejectReason::Malformed,
                HandshakeError::Malformed("expected client auth"),
            ),
        }
    }

    fn on_hello(&mut self, cfg: &HandshakeConfig) -> Result<(), HandshakeError> {
        self.ch = self.inb;
        self.got = 0;
        let hello = decode_hello(&self.ch);
        let replayed = cfg
            .seen
            .lock()
            .map(|c| c.contains(&hello.nonce))
            .unwrap_or(true);
        if replayed {
            return self.reject(RejectReason::Replayed, HandshakeError::Replayed);
        }
        let channel = matches!(hello.target, super::PLATFORM_CHANNEL | super::PROBE_CHANNEL);
        if hello.target >= cfg.shard_count && !channel {
            let e = HandshakeError::NoSuchShard {
                asked: hello.target,
                count: cfg.shard_count,
            };
            return self.reject(RejectReason::NoSuchShard, e);
        }
        if let Err(e) = check_auth(cfg, &hello) {
            return self.reject(RejectReason::AuthMismatch, e);
        }
        if let Err(e) = check_identity_flag(cfg, &hello) {
            return self.reject(RejectReason::IdentityMismatch, e);
        }
        let nonce_s = fresh_nonce();
        let (share_key, share) = key_share()?;
        let fields = HelloFields {
            shard: hello.target,
            target: hello.shard,
            nonce: &nonce_s,
            share: &share,
        };
        self.sh = encode_hello(KIND_SERVER_HELLO, cfg, fields);
        match cfg.frame_keys(share_key, &hello.share, (&self.ch, &self.sh), false) {
            Ok(k) => self.keys = Some(k),
            Err(e) => return self.reject(RejectReason::KeyExchange, e),
        }
        let mac_s = cfg.mac(b"ssi-dp server", &self.ch, &self.sh)?;
        let proof = identity_proof(cfg, ID_SERVER, (&self.ch, &self.sh))?;
        self.out.clear();
        self.out.extend_from_slice(&self.sh);
        self.out.extend_from_slice(&mac_s);
        self.out.extend_from_slice(&proof);
        self.queue(self.out.len());
        self.hello = Some(hello);
        self.phase = Phase::Auth;
        Ok(())
    }

    fn on_auth(&mut self, cfg: &HandshakeConfig) -> Result<(), HandshakeError> {
        let hello = self
            .hello
            .take()
            .ok_or(HandshakeError::Malformed("auth before hello"))?;
        self.got = 0;
        let want = cfg.mac(b"ssi-dp client", &self.ch, &self.sh)?;
        if !bool::from(want.ct_eq(&self.inb[PREFIX_LEN..AUTH_LEN])) {
            return self.reject(RejectReason::WrongSecret, HandshakeError::WrongSecret);
        }
        if hello.node >= crate::MAX_NODES || cfg.allowed & (1u64 << hello.node) == 0 {
            return self.reject(
                RejectReason::UnknownNode,
                HandshakeError::UnknownNode(hello.node),
            );
        }
        if hello.digest != cfg.digest.0 {
            let e = HandshakeError::LayoutMismatch {
                ours: cfg.digest,
                theirs: Digest(hello.digest),
            };
            return self.reject(RejectReason::LayoutMismatch, e);
        }
        {
            let mut seen = cfg
                .seen
                .lock()
                .map_err(|_| HandshakeError::Malformed("nonce cache poisoned"))?;
            if seen.contains(&hello.nonce) {
                drop(seen);
                return self.reject(RejectReason::Replayed, HandshakeError::Replayed);
            }
            seen.insert(hello.nonce);
        }
        self.hello = Some(hello);
        if cfg.identity.is_some() {
            self.phase = Phase::IdHead;
            return Ok(());
        }
        self.accept();
        Ok(())
    }

    fn accept(&mut self) {
        self.out.clear();
        self.out.extend_from_slice(&prefix(KIND_ACCEPT, 0));
        self.queue(PREFIX_LEN);
        self.phase = Phase::Accepting;
    }

    /// The identity's lengths are in: make room for its body (the client proved the secret,
    /// so this allocation is bounded by who may connect, and by the limits).
    fn on_id_head(&mut self) -> Result<(), HandshakeError> {
        let mut head = [0u8; IDENTITY_HEAD];
        head.copy_from_slice(&self.inb[..IDENTITY_HEAD]);
        self.got = 0;
        let (cred, sig) = match identity_len(&head) {
            Ok(l) => l,
            Err(e) => return self.reject(RejectReason::Malformed, e),
        };
        self.id_body = vec![0u8; cred + sig];
        self.id_cred = cred;
        self.phase = Phase::IdBody;
        Ok(())
    }

    fn on_id_body(&mut self, cfg: &HandshakeConfig) -> Result<(), HandshakeError> {
        let node = self
            .hello
            .as_ref()
            .map(|h| h.node)
            .ok_or(HandshakeError::Malformed("identity before hello"))?;
        let body = std::mem::take(&mut self.id_body);
        let r = check_identity(
            cfg,
            node,
            ID_CLIENT,
            (&self.ch, &self.sh),
            (&body, self.id_cred),
        );
        match r {
            Ok(()) => {
                self.accept();
                Ok(())
            }
            Err(e) => self.reject(RejectReason::IdentityRefused, e),
        }
    }

    /// Reads the identity body; returns whether it is complete.
    fn fill_id(&mut self) -> Result<bool, HandshakeError> {
        while self.got < self.id_body.len() {
            let stream = self
                .stream
                .as_mut()
                .ok_or(HandshakeError::Malformed("no stream"))?;
            match stream.read(&mut self.id_body[self.got..]) {
                Ok(0) => {
                    return Err(HandshakeError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the handshake",
                    )))
                }
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
        self.got = 0;
        Ok(true)
    }

    /// Queues a reject for the peer and remembers `e` to report once it is out.
    fn reject(&mut self, r: RejectReason, e: HandshakeError) -> Result<(), HandshakeError> {
        self.out.clear();
        self.out.extend_from_slice(&prefix(KIND_REJECT, r.code()));
        self.queue(PREFIX_LEN);
        self.failure = Some(e);
        self.phase = Phase::Rejecting;
        Ok(())
    }

    fn queue(&mut self, len: usize) {
        self.out_len = len;
        self.out_sent = 0;
    }

    /// Writes queued output; returns whether all of it is out. A reject that cannot be
    /// written ends the handshake with the reject's own error.
    fn flush(&mut self) -> Result<bool, HandshakeError> {
        while self.out_sent < self.out_len {
            let stream = self
                .stream
                .as_mut()
                .ok_or(HandshakeError::Malformed("no stream"))?;
            match stream.write(&self.out[self.out_sent..self.out_len]) {
                Ok(0) => return Err(self.write_failed(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.write_failed(e)),
            }
        }
        Ok(true)
    }

    fn write_failed(&mut self, e: io::Error) -> HandshakeError {
        // Best effort for a reject: the peer learns why; our own error is what matters.
        self.failure.take().unwrap_or(HandshakeError::Io(e))
    }

    fn accepted_stream(&mut self) -> Result<Authenticated, HandshakeError> {
        self.phase = Phase::Over;
        let hello = self
            .hello
            .take()
            .ok_or(HandshakeError::Malformed("accept before hello"))?;
        let keys = self
            .keys
            .take()
            .ok_or(HandshakeError::Malformed("accept before the key exchange"))?;
        let stream = self
            .stream
            .take()
            .ok_or(HandshakeError::Malformed("no stream"))?;
        stream.set_nonblocking(false)?;
        Ok(Authenticated {
            stream,
            peer_node: hello.node,
            peer_shard: hello.shard,
            peer_shard_count: hello.shard_count,
            local_shard: hello.target,
            peer_offers_verbs: hello.verbs,
            keys,
        })
    }
}

/// Accepts one connection from `listener` and authenticates it as a server.
pub fn accept(
    listener: &TcpListener,
    cfg: &HandshakeConfig,
) -> Result<Authenticated, HandshakeError> {
    match listener.accept() {
        Ok((s, _)) => accept_stream(s, cfg),
        Err(e) => finish(cfg, Err(HandshakeError::Io(e))),
    }
}

/// Authenticates an accepted stream as a server, waiting up to the configuration's timeout.
pub fn accept_stream(
    stream: TcpStream,
    cfg: &HandshakeConfig,
) -> Result<Authenticated, HandshakeError> {
    let deadline = Instant::now() + cfg.timeout;
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(e) => return finish(cfg, Err(HandshakeError::Io(e))),
    };
    let mut c = match ServerConn::new(stream, peer) {
        Ok(c) => c,
        Err(e) => return finish(cfg, Err(HandshakeError::Io(e))),
    };
    loop {
        let write = match c.advance(cfg) {
            ServerProgress::Accepted(a) => return Ok(a),
            ServerProgress::Failed(e) => return Err(e),
            ServerProgress::Pending { write } => write,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(c.abandon(cfg, "handshake deadline passed"));
        }
        let Some(fd) = c.fd() else {
            return Err(c.abandon(cfg, "handshake stream gone"));
        };
        let mut p = libc::pollfd {
            fd,
            events: if write { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for a socket this function owns (through `c`).
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                c.abandon(cfg, "poll failed");
                return Err(HandshakeError::Io(e));
            }
        }
    }
}
