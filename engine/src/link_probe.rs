//! The link probe: how many bytes per second a peer can stream to this node over the data
//! network, measured at cluster formation for the HMAT bandwidth figures (docs/acpi.md,
//! "Measurements").
//!
//! A single fault moves one 4 KiB page per round trip, so timing faults measures the fault
//! path's round trips, not the link (63–86 MB/s between two local processes here, an order
//! of magnitude under what loopback carries). The probe streams instead: the measuring node
//! opens an authenticated connection to the peer's data port naming [`PROBE_CHANNEL`], asks
//! for [`STREAM_BYTES`] in [`BLOCK`]-byte blocks, and times their arrival; [`ROUNDS`] times,
//! keeping the median. The kernel's TCP pipelining keeps the link full, as the data plane's
//! many pages in flight do.
//!
//! The wire format (docs/wire.md, "Link probe"): each request is 16 bytes — `SSIP`, the
//! number of blocks (u32 LE), the block length (u32 LE), zero (u32) — followed by its
//! 16-byte tag when the cluster seals frames ([`Sealer::seal_message`] with the
//! connection's keys). The server answers with exactly `blocks × block` bytes of filler
//! (their contents mean nothing and are not checked: only their arrival is timed), then waits
//! for the next request or the end of the connection. Everything is bounded: at most
//! [`MAX_STREAM`] bytes per request in blocks of [`MIN_BLOCK`]..=[`MAX_BLOCK`] bytes,
//! [`MAX_REQUESTS`] requests per connection, [`MAX_SERVERS`] probes served at once per node,
//! and every read and write times out after [`IO_TIMEOUT`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::handshake::Authenticated;
pub use wire::handshake::PROBE_CHANNEL;
use wire::seal::{Opener, SealError, Sealer, TAG_LEN};
use wire::FrameKeys;

/// Bytes streamed per measured round.
pub const STREAM_BYTES: u64 = 8 << 20;
/// Block length the client asks for.
pub const BLOCK: u32 = 64 << 10;
/// Measured rounds per peer (the median is kept).
pub const ROUNDS: usize = 5;
/// Most bytes one request may ask for.
pub const MAX_STREAM: u64 = 64 << 20;
/// Smallest block a request may ask for.
pub const MIN_BLOCK: u32 = 4096;
/// Largest block a request may ask for.
pub const MAX_BLOCK: u32 = 1 << 20;
/// Most requests one probe connection may make.
pub const MAX_REQUESTS: u32 = 16;
/// Most probes a node serves at once (more are refused).
pub const MAX_SERVERS: usize = 2;
/// Deadline of every read and write of a probe connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

const MAGIC: [u8; 4] = *b"SSIP";
const REQUEST_LEN: usize = 16;

/// Why a probe failed, on either side.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// A socket operation failed (or timed out: the peer is slow or stopped).
    #[error("link probe: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The request does not start with the probe's magic or has a non-zero reserved word.
    #[error("link probe: the request is not a probe request (a peer of another version?)")]
    NotProbe,
    /// The request asks for more than the bounds allow.
    #[error(
        "link probe: the request asks for {blocks} blocks of {block} bytes; at most \
         {MAX_STREAM} bytes in blocks of {MIN_BLOCK} to {MAX_BLOCK} bytes are served"
    )]
    OutOfBounds {
        /// Blocks asked for.
        blocks: u32,
        /// Block length asked for.
        block: u32,
    },
    /// The request's tag did not verify.
    #[error("link probe: the request is not authentic (altered on the way, or other keys)")]
    Unauthentic,
    /// The connection made more requests than allowed.
    #[error("link probe: more than {MAX_REQUESTS} requests on one connection")]
    TooManyRequests,
    /// Sealing or opening could not start.
    #[error("link probe: {0}")]
    Seal(#[from] SealError),
    /// The server ended the stream early.
    #[error("link probe: the peer closed the stream after {got} of {want} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
}

fn io(what: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

/// One request: `blocks` blocks of `block` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    blocks: u32,
    block: u32,
}

impl Request {
    fn encode(self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.blocks.to_le_bytes());
        b[8..12].copy_from_slice(&self.block.to_le_bytes());
        b
    }

    fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, ProbeError> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if b[..4] != MAGIC || word(12) != 0 {
            return Err(ProbeError::NotProbe);
        }
        let r = Request {
            blocks: word(4),
            block: word(8),
        };
        r.check()?;
        Ok(r)
    }

    fn check(self) -> Result<(), ProbeError> {
        let bytes = u64::from(self.blocks) * u64::from(self.block);
        if !(MIN_BLOCK..=MAX_BLOCK).contains(&self.block) || bytes == 0 || bytes > MAX_STREAM {
            return Err(ProbeError::OutOfBounds {
                blocks: self.blocks,
                block: self.block,
            });
        }
        Ok(())
    }

    fn bytes(self) -> u64 {
        u64::from(self.blocks) * u64::from(self.block)
    }
}

fn set_timeouts(s: &TcpStream) -> Result<(), ProbeError> {
    s.set_nonblocking(false)
        .map_err(io("making the socket blocking"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("setting the read timeout"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("setting the write timeout"))
}

/// Reads one sealed request; `None` at a clean end of the connection (before its first
/// byte).
fn read_request(
    s: &mut TcpStream,
    opener: &mut Option<Opener>,
) -> Result<Option<Request>, ProbeError> {
    let mut msg = [0u8; REQUEST_LEN];
    let mut got = 0;
    while got < REQUEST_LEN {
        match s.read(&mut msg[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ProbeError::Io {
                    what: "reading a request",
                    source: io::ErrorKind::UnexpectedEof.into(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ProbeError::Io {
                    what: "reading a request",
                    source: e,
                })
            }
        }
    }
    if let Some(o) = opener {
        let mut tag = [0u8; TAG_LEN];
        s.read_exact(&mut tag)
            .map_err(io("reading a request's tag"))?;
        if !o.open_message(&mut msg, &tag) {
            return Err(ProbeError::Unauthentic);
        }
    }
    Request::decode(&msg).map(Some)
}

/// Serves one probe connection until the client ends it; returns the bytes sent.
pub fn serve(mut s: TcpStream, keys: &FrameKeys) -> Result<u64, ProbeError> {
    set_timeouts(&s)?;
    let mut opener = keys.opener()?;
    let mut filler: Vec<u8> = Vec::new();
    let mut sent = 0u64;
    for n in 0.. {
        let Some(r) = read_request(&mut s, &mut opener)? else {
            return Ok(sent);
        };
        if n >= MAX_REQUESTS {
            return Err(ProbeError::TooManyRequests);
        }
        // Grown at most once per size, never past MAX_BLOCK.
        filler.resize(r.block as usize, 0x5a);
        for _ in 0..r.blocks {
            s.write_all(&filler).map_err(io("streaming a block"))?;
        }
        sent += r.bytes();
    }
    Ok(sent)
}

/// Serves `a` (a [`PROBE_CHANNEL`] connection) on a thread of its own, unless
/// [`MAX_SERVERS`] probes are being served already; `active` counts them. Returns why it was
/// refused.
pub fn spawn_server(a: Authenticated, active: &Arc<AtomicUsize>) -> Result<(), String> {
    let node = a.peer_node;
    if active.fetch_add(1, Ordering::SeqCst) >= MAX_SERVERS {
        active.fetch_sub(1, Ordering::SeqCst);
        return Err(format!(
            "refusing node {node}'s link probe: {MAX_SERVERS} probes are being served already"
        ));
    }
    let count = active.clone();
    let spawned = std::thread::Builder::new()
        .name("ssi-dp-probe".into())
        .spawn(move || {
            if let Err(e) = serve(a.stream, &a.keys) {
                tracing::warn!("serving node {node}'s link probe: {e}");
            }
            count.fetch_sub(1, Ordering::SeqCst);
        });
    spawned.map(|_| ()).map_err(|e| {
        active.fetch_sub(1, Ordering::SeqCst);
        format!("refusing node {node}'s link probe: cannot start a thread for it: {e}")
    })
}

/// Asks for `bytes` in `block`-byte blocks and returns the nanoseconds until the last byte
/// arrived.
fn round(
    s: &mut TcpStream,
    sealer: &mut Option<Sealer>,
    buf: &mut [u8],
    r: Request,
) -> Result<u64, ProbeError> {
    let mut msg = r.encode();
    let t = Instant::now();
    match sealer {
        Some(sl) => {
            let tag = sl.seal_message(&mut msg)?;
            let mut out = [0u8; REQUEST_LEN + TAG_LEN];
            out[..REQUEST_LEN].copy_from_slice(&msg);
            out[REQUEST_LEN..].copy_from_slice(&tag);
            s.write_all(&out)
        }
        None => s.write_all(&msg),
    }
    .map_err(io("sending a request"))?;
    let want = r.bytes();
    let mut got = 0u64;
    while got < want {
        let n = (want - got).min(buf.len() as u64) as usize;
        match s.read(&mut buf[..n]) {
            Ok(0) => return Err(ProbeError::Short { got, want }),
            Ok(k) => got += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ProbeError::Io {
                    what: "receiving the stream",
                    source: e,
                })
            }
        }
    }
    Ok(t.elapsed().as_nanos() as u64)
}

/// Measures the stream rate from the server at the other end of `s` (a [`PROBE_CHANNEL`]
/// connection) in MB/s (10^6 B/s): the median of [`ROUNDS`] rounds of [`STREAM_BYTES`].
pub fn measure(mut s: TcpStream, keys: &FrameKeys) -> Result<u64, ProbeError> {
    set_timeouts(&s)?;
    let mut sealer = keys.sealer()?;
    let r = Request {
        blocks: (STREAM_BYTES / u64::from(BLOCK)) as u32,
        block: BLOCK,
    };
    let mut buf = vec![0u8; BLOCK as usize];
    let mut rates = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let ns = round(&mut s, &mut sealer, &mut buf, r)?;
        rates.push(r.bytes() * 1000 / ns.max(1));
    }
    rates.sort_unstable();
    Ok(rates[rates.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use wire::FrameAuth;

    fn pair(auth: FrameAuth) -> (FrameKeys, FrameKeys) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        (FrameKeys::new(auth, a, b), FrameKeys::new(auth, b, a))
    }

    fn connected() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn requests_round_trip_and_bounds_hold() {
        let r = Request {
            blocks: 256,
            block: BLOCK,
        };
        assert_eq!(Request::decode(&r.encode()).expect("decodes"), r);
        for (blocks, block) in [
            (1, MIN_BLOCK - 1),
            (1, MAX_BLOCK + 1),
            (0, BLOCK),
            (1025, 1 << 16),
        ] {
            let bad = Request { blocks, block }.encode();
            assert!(matches!(
                Request::decode(&bad),
                Err(ProbeError::OutOfBounds { .. })
            ));
        }
        let mut bad = r.encode();
        bad[0] = b'X';
        assert!(matches!(Request::decode(&bad), Err(ProbeError::NotProbe)));
        let mut bad = r.encode();
        bad[15] = 1;
        assert!(matches!(Request::decode(&bad), Err(ProbeError::NotProbe)));
    }

    #[test]
    fn a_sealed_probe_streams_every_byte_and_reports_a_rate() {
        for auth in [FrameAuth::None, FrameAuth::Mac, FrameAuth::Aead] {
            let (ck, sk) = pair(auth);
            let (c, s) = connected();
            let server = std::thread::spawn(move || serve(s, &sk));
            let mbps = measure(c, &ck).expect("measures");
            assert!(mbps > 0);
            let sent = server.join().expect("server thread").expect("served");
            assert_eq!(sent, STREAM_BYTES * ROUNDS as u64);
        }
    }

    #[test]
    fn an_altered_or_foreign_request_is_refused() {
        // Other keys: the tag does not verify.
        let (ck, _) = pair(FrameAuth::Mac);
        let other = FrameKeys::new(FrameAuth::Mac, [9u8; 32], [9u8; 32]);
        let (c, s) = connected();
        let server = std::thread::spawn(move || serve(s, &other));
        assert!(measure(c, &ck).is_err());
        assert!(matches!(
            server.join().expect("server thread"),
            Err(ProbeError::Unauthentic)
        ));
        // An oversized request, unsealed.
        let (mut c, s) = connected();
        let server = std::thread::spawn(move || serve(s, &FrameKeys::none()));
        c.write_all(
            &Request {
                blocks: 1 << 20,
                block: MAX_BLOCK,
            }
            .encode(),
        )
        .expect("write");
        assert!(matches!(
            server.join().expect("server thread"),
            Err(ProbeError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn requests_past_the_limit_end_the_connection() {
        let (mut c, s) = connected();
        let server = std::thread::spawn(move || serve(s, &FrameKeys::none()));
        let r = Request {
            blocks: 1,
            block: MIN_BLOCK,
        };
        let mut buf = vec![0u8; MIN_BLOCK as usize];
        for _ in 0..MAX_REQUESTS {
            assert!(round(&mut c, &mut None, &mut buf, r).is_ok());
        }
        c.write_all(&r.encode()).expect("write");
        assert!(matches!(
            server.join().expect("server thread"),
            Err(ProbeError::TooManyRequests)
        ));
    }

    #[test]
    fn probes_past_the_limit_are_refused_and_counted_back() {
        let active = Arc::new(AtomicUsize::new(MAX_SERVERS));
        let from_node_1 = |stream| Authenticated {
            stream,
            peer_node: 1,
            peer_shard: 0,
            peer_shard_count: 1,
            local_shard: PROBE_CHANNEL,
            peer_offers_verbs: false,
            keys: FrameKeys::none(),
        };
        let (_c, s) = connected();
        let why = spawn_server(from_node_1(s), &active).expect_err("refused");
        assert!(why.contains("link probe"), "{why}");
        assert_eq!(active.load(Ordering::SeqCst), MAX_SERVERS);
        // Below the limit it is served, and the count comes back when the client leaves.
        active.store(0, Ordering::SeqCst);
        let (c, s) = connected();
        spawn_server(from_node_1(s), &active).expect("served");
        assert_eq!(
            measure(c, &FrameKeys::none()).map(|r| r > 0).ok(),
            Some(true)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while active.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < deadline, "the server never ended");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_truncated_request_is_an_error_not_a_clean_end() {
        let (mut c, s) = connected();
        let server = std::thread::spawn(move || serve(s, &FrameKeys::none()));
        c.write_all(&MAGIC).expect("write");
        drop(c);
        assert!(matches!(
            server.join().expect("server thread"),
            Err(ProbeError::Io { .. })
        ));
    }
}
