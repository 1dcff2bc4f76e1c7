//! What two nodes tell each other to connect a reliable-connected queue pair, exchanged over
//! their already authenticated TCP connection (the data-plane handshake of `wire::handshake`),
//! sealed with that connection's frame keys.
//!
//! Why over the handshake's connection and not `rdma_cm`: the handshake already proves who
//! the peer is (cluster secret, per-node certificate) and agrees fresh keys; sealing the queue
//! pair's address with those keys means nobody on the path can steer a node's queue pair to
//! another peer, and the TCP connection stays open as the liveness signal (a peer that dies
//! closes it). `rdma_cm` would add a second, unauthenticated connection setup and a
//! dependency on `librdmacm`.
//!
//! The message (72 bytes, little-endian), then a 16-byte tag (`Sealer::seal_message` at the
//! connection's first position; zeros when the cluster runs `--frame-auth none`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `SSRV` |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | path MTU (`IBV_MTU_*` code, 1..=5) |
//! | 6 | 2 | reserved (0) |
//! | 8 | 4 | queue pair number (24 bits, not 0) |
//! | 12 | 4 | first packet sequence number (24 bits) |
//! | 16 | 2 | LID (InfiniBand; 0 on RoCE) |
//! | 18 | 2 | reserved (0) |
//! | 20 | 16 | GID |
//! | 36 | 4 | receive slots the sender posts (the credits it grants; at least 2) |
//! | 40 | 4 | bytes per receive slot |
//! | 44 | 4 | rkey of the region the peer may read (0: none) |
//! | 48 | 8 | that region's address |
//! | 56 | 8 | that region's length |
//! | 64 | 8 | reserved (0) |

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;
use wire::seal::{FrameKeys, Opener, Sealer, TAG_LEN};

/// Length of the message before its tag.
pub const ENDPOINT_LEN: usize = 72;
const MAGIC: &[u8; 4] = b"SSRV";
const VERSION: u8 = 1;
/// Largest receive-slot count a peer may announce.
pub const MAX_RX_SLOTS: u32 = 1 << 16;
/// Smallest and largest receive slot.
pub const RX_SLOT_BYTES: std::ops::RangeInclusive<u32> = 64..=(1 << 20);

/// A queue pair's address and what its owner grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointMsg {
    /// Path MTU code (`IBV_MTU_*`).
    pub mtu: u8,
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number.
    pub psn: u32,
    /// LID (InfiniBand).
    pub lid: u16,
    /// GID.
    pub gid: [u8; 16],
    /// Receive slots posted for the peer (its send credits).
    pub rx_slots: u32,
    /// Bytes per receive slot.
    pub rx_slot_size: u32,
    /// rkey of the region the peer may read with RDMA READ (0: none).
    pub rkey: u32,
    /// Its address.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// Why an endpoint message was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EndpointError {
    /// Not this protocol.
    #[error("the peer's queue-pair message has magic {0:02x?}, not SSRV: is it an ssi-dp node of this version?")]
    Magic([u8; 4]),
    /// Another version.
    #[error("the peer's queue-pair message is version {0}, this node speaks 1: run the same ssi-dp version on every node")]
    Version(u8),
    /// A field out of range.
    #[error("the peer announced an invalid {field} ({value}): refusing its queue pair")]
    Field {
        /// Which.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The tag did not verify.
    #[error("the peer's queue-pair message is not authentic (its tag does not verify with the connection's keys): refusing it")]
    Unauthentic,
    /// Reading or writing the connection failed.
    #[error("exchanging queue-pair addresses failed: {0}")]
    Io(String),
}

impl EndpointMsg {
    /// The 72 bytes.
    pub fn encode(&self) -> [u8; ENDPOINT_LEN] {
        let mut b = [0u8; ENDPOINT_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = self.mtu;
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..18].copy_from_slice(&self.lid.to_le_bytes());
        b[20..36].copy_from_slice(&self.gid);
        b[36..40].copy_from_slice(&self.rx_slots.to_le_bytes());
        b[40..44].copy_from_slice(&self.rx_slot_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.rkey.to_le_bytes());
        b[48..56].copy_from_slice(&self.addr.to_le_bytes());
        b[56..64].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and checks every field.
    pub fn decode(b: &[u8; ENDPOINT_LEN]) -> Result<Self, EndpointError> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        if &b[0..4] != MAGIC {
            return Err(EndpointError::Magic([b[0], b[1], b[2], b[3]]));
        }
        if b[4] != VERSION {
            return Err(EndpointError::Version(b[4]));
        }
        let field = |field, value: u64| Err(EndpointError::Field { field, value });
        let reserved = u64::from(b[6]) | u64::from(b[7]) | u64::from(b[18]) | u64::from(b[19]);
        if reserved != 0 || u64_at(64) != 0 {
            return field("reserved field", reserved | u64_at(64));
        }
        let m = EndpointMsg {
            mtu: b[5],
            qpn: u32_at(8),
            psn: u32_at(12),
            lid: u16::from_le_bytes([b[16], b[17]]),
            gid: b[20..36].try_into().expect("16 bytes"),
            rx_slots: u32_at(36),
            rx_slot_size: u32_at(40),
            rkey: u32_at(44),
            addr: u64_at(48),
            len: u64_at(56),
        };
        if !(1..=5).contains(&m.mtu) {
            return field("path MTU code", m.mtu.into());
        }
        if m.qpn == 0 || m.qpn >= 1 << 24 {
            return field("queue pair number", m.qpn.into());
        }
        if m.psn >= 1 << 24 {
            return field("packet sequence number", m.psn.into());
        }
        if m.rx_slots < crate::credits::MIN_WINDOW || m.rx_slots > MAX_RX_SLOTS {
            return field("receive slot count", m.rx_slots.into());
        }
        if !RX_SLOT_BYTES.contains(&m.rx_slot_size) {
            return field("receive slot size", m.rx_slot_size.into());
        }
        if m.addr.checked_add(m.len).is_none() {
            return field("readable region", m.addr);
        }
        if (m.len == 0) != (m.rkey == 0) {
            return field("rkey of the readable region", m.rkey.into());
        }
        Ok(m)
    }
}

/// Sends `ours` and receives the peer's over `stream` (both directions at once: each side
/// writes first, the 88 bytes fit any socket buffer), sealed with `keys`, each direction at
/// most `timeout`. For a connection whose keys seal nothing else (the self-test); a transport
/// that goes on sealing frames with the same keys uses [`exchange_sealed`], so that no nonce
/// is used twice.
pub fn exchange(
    stream: &mut TcpStream,
    keys: &FrameKeys,
    ours: &EndpointMsg,
    timeout: Duration,
) -> Result<EndpointMsg, EndpointError> {
    let seal_err = |e: wire::seal::SealError| EndpointError::Io(e.to_string());
    let mut sealer = keys.sealer().map_err(seal_err)?;
    let mut opener = keys.opener().map_err(seal_err)?;
    exchange_sealed(stream, sealer.as_mut(), opener.as_mut(), ours, timeout)
}

/// [`exchange`] with the connection's sealing states (`None`: frames are not sealed): the
/// message takes the next position of each, and frames sealed after it go on from there.
pub fn exchange_sealed(
    stream: &mut TcpStream,
    sealer: Option<&mut Sealer>,
    opener: Option<&mut Opener>,
    ours: &EndpointMsg,
    timeout: Duration,
) -> Result<EndpointMsg, EndpointError> {
    let io = |e: std::io::Error| match e.kind() {
        // A read past SO_RCVTIMEO fails with EAGAIN.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            EndpointError::Io(format!(
                "the peer sent no queue-pair message within {} s",
                timeout.as_secs_f64()
            ))
        }
        _ => EndpointError::Io(e.to_string()),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut out = [0u8; ENDPOINT_LEN + TAG_LEN];
    let mut msg = ours.encode();
    let tag = match sealer {
        Some(s) => s
            .seal_message(&mut msg)
            .map_err(|e| EndpointError::Io(e.to_string()))?,
        None => [0u8; TAG_LEN],
    };
    out[..ENDPOINT_LEN].copy_from_slice(&msg);
    out[ENDPOINT_LEN..].copy_from_slice(&tag);
    stream.write_all(&out).map_err(io)?;
    let mut inb = [0u8; ENDPOINT_LEN + TAG_LEN];
    stream.read_exact(&mut inb).map_err(io)?;
    let mut theirs: [u8; ENDPOINT_LEN] = inb[..ENDPOINT_LEN].try_into().expect("72 bytes");
    let tag: [u8; TAG_LEN] = inb[ENDPOINT_LEN..].try_into().expect("16 bytes");
    if let Some(o) = opener {
        if !o.open_message(&mut theirs, &tag) {
            return Err(EndpointError::Unauthentic);
        }
    }
    EndpointMsg::decode(&theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use wire::seal::FrameAuth;

    fn sample() -> EndpointMsg {
        EndpointMsg {
            mtu: 5,
            qpn: 0x11,
            psn: 0x1234,
            lid: 0,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
            rx_slots: 256,
            rx_slot_size: 4160,
            rkey: 0x55,
            addr: 0x7f00_0000_0000,
            len: 1 << 30,
        }
    }

    #[test]
    fn messages_round_trip() {
        let m = sample();
        assert_eq!(EndpointMsg::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn every_bad_field_is_refused_by_name() {
        let m = sample();
        let bad = |f: &dyn Fn(&mut [u8; ENDPOINT_LEN])| {
            let mut b = m.encode();
            f(&mut b);
            EndpointMsg::decode(&b).expect_err("must be refused")
        };
        assert_eq!(bad(&|b| b[0] = b'X'), EndpointError::Magic(*b"XSRV"));
        assert_eq!(bad(&|b| b[4] = 2), EndpointError::Version(2));
        let field_of = |e: EndpointError| match e {
            EndpointError::Field { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(bad(&|b| b[5] = 0)), "path MTU code");
        assert_eq!(field_of(bad(&|b| b[5] = 6)), "path MTU code");
        assert_eq!(
            field_of(bad(&|b| b[8..12].copy_from_slice(&0u32.to_le_bytes()))),
            "queue pair number"
        );
        assert_eq!(
            field_of(bad(
                &|b| b[8..12].copy_from_slice(&(1u32 << 24).to_le_bytes())
            )),
            "queue pair number"
        );
        assert_eq!(
            field_of(bad(&|b| b[12..16].copy_from_slice(&u32::MAX.to_le_bytes()))),
            "packet sequence number"
        );
        assert_eq!(
            field_of(bad(&|b| b[36..40].copy_from_slice(&1u32.to_le_bytes()))),
            "receive slot count"
        );
        assert_eq!(
            field_of(bad(
                &|b| b[36..40].copy_from_slice(&(MAX_RX_SLOTS + 1).to_le_bytes())
            )),
            "receive slot count"
        );
        assert_eq!(
            field_of(bad(&|b| b[40..44].copy_from_slice(&8u32.to_le_bytes()))),
            "receive slot size"
        );
        assert_eq!(
            field_of(bad(&|b| b[48..56].copy_from_slice(&u64::MAX.to_le_bytes()))),
            "readable region"
        );
        assert_eq!(
            field_of(bad(&|b| b[44..48].copy_from_slice(&0u32.to_le_bytes()))),
            "rkey of the readable region"
        );
        assert_eq!(field_of(bad(&|b| b[7] = 1)), "reserved field");
        assert_eq!(field_of(bad(&|b| b[70] = 1)), "reserved field");
        let msg = bad(&|b| b[5] = 9).to_string();
        assert!(msg.contains("path MTU code (9)"), "{msg}");
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    fn keys(auth: FrameAuth) -> (FrameKeys, FrameKeys) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        (FrameKeys::new(auth, a, b), FrameKeys::new(auth, b, a))
    }

    #[test]
    fn both_sides_learn_each_other_sealed_or_not() {
        for auth in [FrameAuth::None, FrameAuth::Mac, FrameAuth::Aead] {
            let (mut c, mut s) = pair();
            let (kc, ks) = keys(auth);
            let mut theirs = sample();
            theirs.qpn = 0x22;
            let t = std::thread::spawn(move || {
                exchange(&mut s, &ks, &theirs, Duration::from_secs(5)).expect("server side")
            });
            let got = exchange(&mut c, &kc, &sample(), Duration::from_secs(5)).expect("client");
            assert_eq!(got, theirs, "{auth}");
            assert_eq!(t.join().expect("server"), sample(), "{auth}");
        }
    }

    #[test]
    fn a_tampered_or_wrongly_keyed_message_is_refused() {
        // Keys that do not match the peer's.
        let (mut c, mut s) = pair();
        let (kc, _) = keys(FrameAuth::Mac);
        let (_, wrong) = keys(FrameAuth::Aead);
        let t =
            std::thread::spawn(move || exchange(&mut s, &wrong, &sample(), Duration::from_secs(5)));
        assert_eq!(
            exchange(&mut c, &kc, &sample(), Duration::from_secs(5)),
            Err(EndpointError::Unauthentic)
        );
        // The other side cannot verify the client's message either.
        assert!(t.join().expect("peer").is_err());
        // A peer that flips a byte of a sealed message.
        let (mut c, mut s) = pair();
        let (kc, ks) = keys(FrameAuth::Mac);
        let t = std::thread::spawn(move || {
            let mut msg = sample().encode();
            let tag = ks
                .sealer()
                .expect("sealer")
                .expect("mac")
                .seal_message(&mut msg)
                .expect("seal");
            msg[8] ^= 1;
            s.write_all(&msg).expect("write");
            s.write_all(&tag).expect("write");
            // Take the client's message, so its write cannot fail before it reads ours.
            let mut sink = [0u8; ENDPOINT_LEN + TAG_LEN];
            s.read_exact(&mut sink).expect("the client's message");
        });
        assert_eq!(
            exchange(&mut c, &kc, &sample(), Duration::from_secs(5)),
            Err(EndpointError::Unauthentic)
        );
        t.join().expect("peer");
    }

    #[test]
    fn a_silent_or_vanishing_peer_ends_the_exchange() {
        let (mut c, s) = pair();
        let (kc, _) = keys(FrameAuth::Mac);
        let e = exchange(&mut c, &kc, &sample(), Duration::from_millis(200)).expect_err("silent");
        assert!(matches!(e, EndpointError::Io(_)), "{e:?}");
        drop(s);
        let (mut c, s) = pair();
        let t = std::thread::spawn(move || {
            let mut s = s;
            s.write_all(&sample().encode()[..10]).expect("write");
        });
        t.join().expect("peer");
        let e = exchange(&mut c, &kc, &sample(), Duration::from_secs(5)).expect_err("short");
        assert!(matches!(e, EndpointError::Io(_)), "{e:?}");
    }
}
