//! The guest platform channels of one node: one authenticated TCP connection to every other
//! node that runs vCPUs of the same Linux guest or has its devices, carrying
//! [`vmm::platform::msg`] frames (interrupts, forwarded device accesses, logical APIC ids, the
//! end of the run). The lower node id dials (through the cluster's handshake with
//! `PLATFORM_CHANNEL` as target); the higher one receives it from its acceptor. One reader
//! thread per peer hands frames to the platform; senders (vCPU threads, readers) write whole
//! frames under a per-peer lock, with a write timeout so a stopped peer cannot hang a vCPU.
//! Frames are sealed with the channel's keys like data frames (`wire::seal`, the node's
//! `--frame-auth`): each is followed by its 16-byte tag, and one that does not verify ends
//! the run.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::platform::msg::{Lifecycle, Msg, MsgError, FRAME_LEN};
use vmm::platform::{Platform, PlatformError, Uplink, UplinkError};
use wire::handshake::Authenticated;
use wire::seal::{Opener, SealError, Sealer, TAG_LEN};
use wire::FrameKeys;

use engine::node::{Node, NodeError};

/// Longest a frame write may block (a peer that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reader whose link closed waits for the end of the run to arrive on another
/// link before it calls the close a failure.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Why the guest platform channels could not be set up, or a peer's frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlatformLinkError {
    /// Dialling a higher-numbered peer failed.
    #[error("opening the guest platform channel to node {peer}: {source}")]
    Dial {
        /// The peer.
        peer: u16,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// Lower-numbered peers did not dial in time.
    #[error(
        "node(s) {} did not open their guest platform channel within {secs} s",
        ids(.missing)
    )]
    NotOpened {
        /// The peers that did not.
        missing: Vec<u16>,
        /// How long this node waited.
        secs: u64,
    },
    /// Setting the socket options of a channel failed.
    #[error("setting up the channel to node {peer}: {source}")]
    Setup {
        /// The peer.
        peer: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating a channel's socket for its reader failed.
    #[error("cloning the channel to node {peer}: {source}")]
    CloneSocket {
        /// The peer.
        peer: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Starting a reader thread failed.
    #[error("starting the reader for node {peer}: {source}")]
    Reader {
        /// The peer.
        peer: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The channel's keys are unusable.
    #[error("sealing the channel to node {peer}: {source}")]
    Keys {
        /// The peer.
        peer: u16,
        /// Why.
        #[source]
        source: SealError,
    },
    /// A peer's frame failed authentication.
    #[error("a frame failed authentication: something on the path altered, injected, dropped or replayed it")]
    Unauthenticated,
    /// A peer sent a frame that is not a platform message.
    #[error(transparent)]
    Frame(#[from] MsgError),
    /// The platform refused a peer's message.
    #[error(transparent)]
    Refused(#[from] PlatformError),
}

/// `1, 3, 4`
fn ids(v: &[u16]) -> String {
    v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

/// One peer's channel as senders use it: the socket and the sealing state of its direction.
#[derive(Debug)]
struct Channel {
    stream: TcpStream,
    sealer: Option<Sealer>,
}

impl Channel {
    /// Writes one message, sealed when the channel is.
    fn send_msg(&mut self, msg: &Msg) -> Result<(), UplinkError> {
        let mut frame = [0u8; FRAME_LEN + TAG_LEN];
        frame[..FRAME_LEN].copy_from_slice(&msg.encode());
        let len = match self.sealer.as_mut() {
            None => FRAME_LEN,
            Some(s) => {
                let tag = s
                    .seal_message(&mut frame[..FRAME_LEN])
                    .map_err(|e| UplinkError::Io(std::io::Error::other(e)))?;
                frame[FRAME_LEN..].copy_from_slice(&tag);
                FRAME_LEN + TAG_LEN
            }
        };
        Ok(self.stream.write_all(&frame[..len])?)
    }
}

/// The channels, before and after they are connected.
#[derive(Debug)]
pub struct PlatformLink {
    me: u16,
    peers: Vec<(u16, Mutex<Channel>)>,
    /// The receiving side of each channel, taken by its reader.
    openers: Mutex<Vec<(u16, Option<Opener>)>>,
}

/// Channels this node expects from lower-numbered peers: registered with the node's acceptor
/// before any peer may dial (the caller meets the others at a barrier in between).
#[derive(Debug)]
pub struct Expected {
    rx: Receiver<Authenticated>,
    sink: engine::mesh::PlatformSink,
}

impl Drop for Expected {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sink.lock() {
            *s = None;
        }
    }
}

/// Starts accepting platform channels on `node`.
pub fn expect(node: &Node) -> Expected {
    let (tx, rx) = mpsc::channel();
    let sink = node.platform_sink();
    *sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    Expected { rx, sink }
}

impl PlatformLink {
    /// Connects to every node in `peers`: dials the higher ids, takes the lower ones' dials
    /// from `expected`. Fails when a peer does not connect within `timeout`.
    pub fn connect(
        node: &Node,
        peers: &[u16],
        expected: Expected,
        timeout: Duration,
    ) -> Result<PlatformLink, PlatformLinkError> {
        let me = node.id();
        let mut out = Vec::with_capacity(peers.len());
        for &p in peers.iter().filter(|&&p| p > me) {
            let (s, keys) = node
                .dial_platform(p, timeout)
                .map_err(|source| PlatformLinkError::Dial { peer: p, source })?;
            out.push((p, s, keys));
        }
        let deadline = Instant::now() + timeout;
        let lower: Vec<u16> = peers.iter().copied().filter(|&p| p < me).collect();
        let mut got: Vec<u16> = Vec::new();
        // A member can open channels as fast as it likes: their refusals are rate-limited.
        let mut refusals = wire::ratelimit::LogLimiter::new(4, 1);
        while got.len() < lower.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match expected.rx.recv_timeout(left) {
                Ok(a) if lower.contains(&a.peer_node) && !got.contains(&a.peer_node) => {
                    got.push(a.peer_node);
                    out.push((a.peer_node, a.stream, a.keys));
                }
                Ok(a) => refusals.warn(format_args!(
                    "refusing a guest platform channel from node {}: not expected here",
                    a.peer_node
                )),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(PlatformLinkError::NotOpened {
                        missing: lower.iter().copied().filter(|p| !got.contains(p)).collect(),
                        secs: timeout.as_secs(),
                    });
                }
            }
        }
        drop(expected);
        let mut peers = Vec::with_capacity(out.len());
        let mut openers = Vec::with_capacity(out.len());
        for (p, s, keys) in out {
            s.set_nodelay(true)
                .and_then(|()| s.set_write_timeout(Some(WRITE_TIMEOUT)))
                .and_then(|()| s.set_read_timeout(None))
                .map_err(|source| PlatformLinkError::Setup { peer: p, source })?;
            let (sealer, opener) = sealing(p, &keys)?;
            peers.push((p, Mutex::new(Channel { stream: s, sealer })));
            openers.push((p, opener));
        }
        Ok(PlatformLink {
            me,
            peers,
            openers: Mutex::new(openers),
        })
    }

    /// Starts one reader per peer, handing what arrives to `platform`. A malformed frame, a
    /// message the platform refuses, or a link that closes before the run ended ends the run
    /// with a failure on every node.
    pub fn start_readers(
        &self,
        platform: &Arc<Platform>,
    ) -> Result<Vec<JoinHandle<()>>, PlatformLinkError> {
        let mut threads = Vec::with_capacity(self.peers.len());
        let mut openers = self.openers.lock().unwrap_or_else(PoisonError::into_inner);
        for (p, s) in &self.peers {
            let stream = s
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stream
                .try_clone()
                .map_err(|source| PlatformLinkError::CloneSocket { peer: *p, source })?;
            let opener = openers
                .iter_mut()
                .find(|(q, _)| q == p)
                .and_then(|(_, o)| o.take());
            let (from, platform) = (*p, platform.clone());
            let me = self.me;
            let t = std::thread::Builder::new()
                .name(format!("platform-rx{from}"))
                .spawn(move || read_loop(me, from, (stream, opener), &platform))
                .map_err(|source| PlatformLinkError::Reader { peer: *p, source })?;
            threads.push(t);
        }
        Ok(threads)
    }

    /// Tells every peer how the run ended (again: a peer must learn it before it sees the
    /// link close), then closes every channel so the readers end.
    pub fn close(&self, end: Option<vmm::platform::End>) {
        for (p, s) in &self.peers {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = end {
                let m = Msg::Lifecycle {
                    event: e.event,
                    status: e.status,
                };
                // A peer that misses this still ends, as failed, when it sees the close: say
                // why its verdict may differ from ours.
                if let Err(err) = s.send_msg(&m) {
                    tracing::warn!(
                        "node {}: could not tell node {p} how the guest ended ({err}); it will \
                         report the run as failed",
                        self.me
                    );
                }
            }
            // ENOTCONN when the peer closed first: the channel is closed either way.
            let _ = s.stream.shutdown(Shutdown::Both);
        }
    }
}

impl Uplink for PlatformLink {
    fn send(&self, node: u16, msg: &Msg) -> Result<(), UplinkError> {
        let (_, s) = self
            .peers
            .iter()
            .find(|(p, _)| *p == node)
            .ok_or(UplinkError::NoChannel(node))?;
        s.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send_msg(msg)
    }
}

/// The sending and receiving states of a channel with `keys` (none when frames are not
/// sealed).
fn sealing(
    peer: u16,
    keys: &FrameKeys,
) -> Result<(Option<Sealer>, Option<Opener>), PlatformLinkError> {
    let keys_err = |source| PlatformLinkError::Keys { peer, source };
    Ok((
        keys.sealer().map_err(keys_err)?,
        keys.opener().map_err(keys_err)?,
    ))
}

/// Reads one frame (and its tag when sealed) and checks it.
fn read_frame(
    stream: &mut TcpStream,
    opener: Option<&mut Opener>,
    frame: &mut [u8; FRAME_LEN],
) -> Result<Result<(), PlatformLinkError>, std::io::Error> {
    stream.read_exact(frame)?;
    let Some(o) = opener else {
        return Ok(Ok(()));
    };
    let mut tag = [0u8; TAG_LEN];
    stream.read_exact(&mut tag)?;
    Ok(if o.open_message(frame, &tag) {
        Ok(())
    } else {
        Err(PlatformLinkError::Unauthenticated)
    })
}

fn read_loop(
    me: u16,
    from: u16,
    (mut stream, mut opener): (TcpStream, Option<Opener>),
    platform: &Platform,
) {
    let mut frame = [0u8; FRAME_LEN];
    loop {
        let checked = match read_frame(&mut stream, opener.as_mut(), &mut frame) {
            Ok(c) => c,
            Err(e) => {
                closed(me, from, &e, platform);
                return;
            }
        };
        let result: Result<(), PlatformLinkError> = checked
            .and_then(|()| Msg::decode(&frame).map_err(PlatformLinkError::from))
            .and_then(|m| Ok(platform.on_message(from, m)?));
        if let Err(e) = result {
            if platform.ended().is_none() {
                tracing::error!(
                    "node {me}: guest platform channel from node {from}: {e}; ending the guest"
                );
                platform.end(Lifecycle::Failed, 1);
            }
            // Closing a broken peer's channel; an error means it is closed already.
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// A channel that closed: a failure unless the run ended (here or on another link) first.
fn closed(me: u16, from: u16, e: &std::io::Error, platform: &Platform) {
    if platform.ended().is_none() {
        // Another link may carry the end of the run that made this one close.
        let start = Instant::now();
        while platform.ended().is_none() && start.elapsed() < CLOSE_GRACE {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if platform.ended().is_none() {
        tracing::error!(
            "node {me}: the guest platform channel to node {from} closed ({e}): the guest cannot continue without it"
        );
        platform.end(Lifecycle::Failed, 1);
    }
}
