//! Authentication, and optionally encryption, of data frames with the per-connection keys a
//! handshake derives ([`crate::handshake`]).
//!
//! Every frame of a sealed connection carries a 16-byte tag right after its header:
//! `header (40) ‖ tag (16) ‖ payload`. The tag is AES-256-GCM under the key of that direction
//! with a 96-bit nonce made of the frame's position in the stream (a counter each end keeps;
//! TCP delivers in order, so a dropped, replayed or reordered frame fails the check):
//!
//! - [`FrameAuth::Mac`]: the GCM tag of the payload, encrypted into a scratch buffer and
//!   discarded, with the header as associated data; only the tag is sent (header and page go
//!   in the clear). A GCM tag authenticates its associated data and its ciphertext, and under
//!   one key and nonce the ciphertext determines the payload, so the tag authenticates
//!   `header ‖ payload`; the receiver recomputes it and compares in constant time. (Feeding
//!   the page as associated data instead, plain GMAC, measured 3× slower per page with
//!   `ring`: its associated-data path is not the bulk one; `bench --bin seal_cost`.) Nothing
//!   on the path can alter, inject, drop or replay a frame unnoticed.
//! - [`FrameAuth::Aead`]: GCM with the header as associated data and the payload encrypted
//!   (headers stay readable: page numbers and message types are visible on the path, page
//!   contents are not).
//!
//! Keys are fresh for every connection (an ephemeral key exchange in the handshake), so a
//! counter nonce never repeats under one key. The module holds the per-connection state:
//! [`Sealer`] for the sending side (inside the transmit queue) and [`Opener`] for the
//! receiving side (inside the frame parser). Neither allocates after construction (a `Mac`
//! state holds one page of scratch).

use std::fmt;
use std::str::FromStr;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::header::{HEADER_LEN, MAX_PAYLOAD};

/// Bytes of the tag that follows each header on a sealed connection.
pub const TAG_LEN: usize = 16;

/// Bytes of a session key (AES-256).
pub const KEY_LEN: usize = 32;

/// How the frames of a connection are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameAuth {
    /// Neither authenticated nor encrypted after the handshake.
    None,
    /// Every frame authenticated (AES-256-GCM used as a MAC); pages in the clear.
    #[default]
    Mac,
    /// Every frame authenticated and its payload encrypted (AES-256-GCM).
    Aead,
}

impl FrameAuth {
    /// The name used on the command line and in the inventory.
    pub const fn name(self) -> &'static str {
        match self {
            FrameAuth::None => "none",
            FrameAuth::Mac => "mac",
            FrameAuth::Aead => "aead",
        }
    }

    /// Wire code in the handshake hello.
    pub(crate) const fn code(self) -> u8 {
        match self {
            FrameAuth::None => 0,
            FrameAuth::Mac => 1,
            FrameAuth::Aead => 2,
        }
    }

    /// The mode with wire code `c`, if any.
    pub(crate) const fn from_code(c: u8) -> Option<FrameAuth> {
        match c {
            0 => Some(FrameAuth::None),
            1 => Some(FrameAuth::Mac),
            2 => Some(FrameAuth::Aead),
            _ => None,
        }
    }

    /// Bytes each frame carries after its header in this mode.
    pub const fn tag_len(self) -> usize {
        match self {
            FrameAuth::None => 0,
            FrameAuth::Mac | FrameAuth::Aead => TAG_LEN,
        }
    }
}

impl fmt::Display for FrameAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A frame authentication mode name that is not one of `none`, `mac`, `aead`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown frame authentication {0:?}: use none, mac or aead")]
pub struct FrameAuthParseError(String);

impl FromStr for FrameAuth {
    type Err = FrameAuthParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(FrameAuth::None),
            "mac" => Ok(FrameAuth::Mac),
            "aead" => Ok(FrameAuth::Aead),
            _ => Err(FrameAuthParseError(s.to_string())),
        }
    }
}

/// Why a frame could not be sealed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    /// The key is unusable (never for a 32-byte key; reported rather than assumed).
    #[error("the session key was refused by the cipher")]
    Key,
    /// The cipher refused the input.
    #[error("sealing a frame failed")]
    Seal,
    /// An encrypted payload must be in a buffer the transport owns.
    #[error("an encrypted frame's payload must be copied into a transmit slot first")]
    NotCopied,
}

/// The keys of one connection and how they are used, from its handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct FrameKeys {
    auth: FrameAuth,
    tx: [u8; KEY_LEN],
    rx: [u8; KEY_LEN],
}

impl fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameKeys")
            .field("auth", &self.auth)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl FrameKeys {
    /// Frames neither authenticated nor encrypted (tests of the transports themselves, and
    /// clusters run with `--frame-auth none`).
    pub const fn none() -> FrameKeys {
        FrameKeys {
            auth: FrameAuth::None,
            tx: [0; KEY_LEN],
            rx: [0; KEY_LEN],
        }
    }

    /// Keys for sending (`tx`) and receiving (`rx`) in mode `auth`.
    pub const fn new(auth: FrameAuth, tx: [u8; KEY_LEN], rx: [u8; KEY_LEN]) -> FrameKeys {
        FrameKeys { auth, tx, rx }
    }

    /// The mode.
    pub const fn auth(&self) -> FrameAuth {
        self.auth
    }

    /// The sending side's state, `None` when frames are not sealed.
    pub fn sealer(&self) -> Result<Option<Sealer>, SealError> {
        Ok(match self.auth {
            FrameAuth::None => None,
            auth => Some(Sealer(State::new(auth, &self.tx)?)),
        })
    }

    /// The receiving side's state, `None` when frames are not sealed.
    pub fn opener(&self) -> Result<Option<Opener>, SealError> {
        Ok(match self.auth {
            FrameAuth::None => None,
            auth => Some(Opener(State::new(auth, &self.rx)?)),
        })
    }
}

/// Key, mode, frame counter, and in `Mac` mode the buffer a payload is encrypted into to
/// compute its tag (then discarded).
struct State {
    auth: FrameAuth,
    key: LessSafeKey,
    next: u64,
    scratch: Box<[u8]>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("auth", &self.auth)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl State {
    fn new(auth: FrameAuth, key: &[u8; KEY_LEN]) -> Result<State, SealError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Key)?;
        let scratch = match auth {
            FrameAuth::Mac => vec![0u8; MAX_PAYLOAD].into_boxed_slice(),
            _ => Box::default(),
        };
        Ok(State {
            auth,
            key: LessSafeKey::new(key),
            next: 0,
            scratch,
        })
    }

    /// The nonce of the next frame; advances the counter.
    fn nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.next.to_le_bytes());
        self.next = self.next.wrapping_add(1);
        Nonce::assume_unique_for_key(n)
    }

    /// The `Mac` mode tag of a frame at the next position: the GCM tag of a copy of the
    /// payload (encrypted, then discarded) with the header as associated data.
    fn mac(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Tag, SealError> {
        let nonce = self.nonce();
        let copy = self
            .scratch
            .get_mut(..payload.len())
            .ok_or(SealError::Seal)?;
        copy.copy_from_slice(payload);
        self.key
            .seal_in_place_separate_tag(nonce, Aad::from(header), copy)
            .map_err(|_| SealError::Seal)
    }
}

/// Seals the frames of one connection in the order they go out.
#[derive(Debug)]
pub struct Sealer(State);

impl Sealer {
    /// The mode.
    pub fn auth(&self) -> FrameAuth {
        self.0.auth
    }

    /// Tag for a frame whose payload (possibly empty) is sent as is: any frame in `Mac`
    /// mode, a header-only frame in `Aead` mode.
    pub fn seal_clear(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> Result<[u8; TAG_LEN], SealError> {
        match self.0.auth {
            FrameAuth::Aead if !payload.is_empty() => Err(SealError::NotCopied),
            FrameAuth::Aead => self.seal_owned(header, &mut []),
            _ => Ok(tag_bytes(&self.0.mac(header, payload)?)),
        }
    }

    /// Tag for a frame whose payload is in a buffer of ours: in `Aead` mode the payload is
    /// encrypted in place; in `Mac` mode it is left as is.
    pub fn seal_owned(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealError> {
        if self.0.auth == FrameAuth::Mac {
            return self.seal_clear(header, payload);
        }
        let nonce = self.0.nonce();
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), payload)
            .map_err(|_| SealError::Seal)?;
        Ok(tag_bytes(&tag))
    }
}

impl Sealer {
    /// Tag for a short message of another framing (the guest platform channel's fixed
    /// frames) at the next position: in `Mac` mode the message is the associated data, in
    /// `Aead` mode it is encrypted in place.
    pub fn seal_message(&mut self, msg: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let s = &mut self.0;
        let nonce = s.nonce();
        let tag = match s.auth {
            FrameAuth::Aead => s.key.seal_in_place_separate_tag(nonce, Aad::empty(), msg),
            _ => s
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(&*msg), &mut []),
        };
        Ok(tag_bytes(&tag.map_err(|_| SealError::Seal)?))
    }
}

/// Checks (and in `Aead` mode decrypts) the frames of one connection in the order they
/// arrive.
#[derive(Debug)]
pub struct Opener(State);

impl Opener {
    /// The mode.
    pub fn auth(&self) -> FrameAuth {
        self.0.auth
    }

    /// Checks the frame `header ‖ tag ‖ payload`; in `Aead` mode decrypts `payload` in
    /// place. Returns false when the frame is not authentic (the connection must go).
    pub fn open(
        &mut self,
        header: &[u8; HEADER_LEN],
        tag: &[u8; TAG_LEN],
        payload: &mut [u8],
    ) -> bool {
        let s = &mut self.0;
        match s.auth {
            FrameAuth::Aead => {
                let nonce = s.nonce();
                s.key
                    .open_in_place_separate_tag(
                        nonce,
                        Aad::from(header),
                        Tag::from(*tag),
                        payload,
                        0..,
                    )
                    .is_ok()
            }
            _ => match s.mac(header, payload) {
                Ok(want) => bool::from(want.as_ref().ct_eq(tag)),
                Err(_) => false,
            },
        }
    }
}

impl Opener {
    /// Checks a message sealed by [`Sealer::seal_message`] (decrypting it in place in `Aead`
    /// mode); false when it is not authentic.
    pub fn open_message(&mut self, msg: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let s = &mut self.0;
        let nonce = s.nonce();
        let tag = Tag::from(*tag);
        match s.auth {
            FrameAuth::Aead => s
                .key
                .open_in_place_separate_tag(nonce, Aad::empty(), tag, msg, 0..)
                .is_ok(),
            _ => s
                .key
                .open_in_place_separate_tag(nonce, Aad::from(&*msg), tag, &mut [], 0..)
                .is_ok(),
        }
    }
}

fn tag_bytes(t: &Tag) -> [u8; TAG_LEN] {
    let mut b = [0u8; TAG_LEN];
    b.copy_from_slice(t.as_ref());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(auth: FrameAuth) -> (Sealer, Opener) {
        let k = [7u8; KEY_LEN];
        let a = FrameKeys::new(auth, k, [1; KEY_LEN]);
        let b = FrameKeys::new(auth, [1; KEY_LEN], k);
        (a.sealer().unwrap().unwrap(), b.opener().unwrap().unwrap())
    }

    #[test]
    fn mac_detects_any_changed_bit_and_replays() {
        let (mut s, mut o) = pair(FrameAuth::Mac);
        let hdr = [3u8; HEADER_LEN];
        let page: Vec<u8> = (0..crate::PAGE_SIZE).map(|i| i as u8).collect();
        let tag = s.seal_clear(&hdr, &page).unwrap();
        let mut p = page.clone();
        assert!(o.open(&hdr, &tag, &mut p), "an untouched frame opens");
        assert_eq!(p, page, "MAC mode leaves the payload as is");
        // The same frame again is at the wrong position: a replay.
        let mut p = page.clone();
        assert!(!o.open(&hdr, &tag, &mut p), "a replayed frame fails");

        for flip in [0usize, 39, 40 + 17, 40 + 4095] {
            let (mut s, mut o) = pair(FrameAuth::Mac);
            let tag = s.seal_clear(&hdr, &page).unwrap();
            let (mut h, mut p) = (hdr, page.clone());
            if flip < HEADER_LEN {
                h[flip] ^= 1;
            } else {
                p[flip - HEADER_LEN] ^= 0x80;
            }
            assert!(!o.open(&h, &tag, &mut p), "bit at byte {flip} changed");
        }
    }

    #[test]
    fn aead_hides_the_page_and_restores_it() {
        let (mut s, mut o) = pair(FrameAuth::Aead);
        let hdr = [9u8; HEADER_LEN];
        let page = vec![0x55u8; crate::PAGE_SIZE];
        assert_eq!(s.seal_clear(&hdr, &page), Err(SealError::NotCopied));
        let mut wire = page.clone();
        let tag = s.seal_owned(&hdr, &mut wire).unwrap();
        assert_ne!(wire, page, "the payload is encrypted on the wire");
        assert!(o.open(&hdr, &tag, &mut wire));
        assert_eq!(wire, page);
        // A header-only frame is authenticated too, whichever way it is sealed.
        let tag = s.seal_clear(&hdr, &[]).unwrap();
        assert!(o.open(&hdr, &tag, &mut []), "header-only frame opens");
        let tag = s.seal_owned(&hdr, &mut []).unwrap();
        let mut h = hdr;
        h[5] ^= 2;
        assert!(!o.open(&h, &tag, &mut []));
    }

    #[test]
    fn messages_of_other_framings_are_sealed_too() {
        for auth in [FrameAuth::Mac, FrameAuth::Aead] {
            let (mut s, mut o) = pair(auth);
            let plain = [7u8; 32];
            let mut m = plain;
            let tag = s.seal_message(&mut m).unwrap();
            assert_eq!(
                m == plain,
                auth == FrameAuth::Mac,
                "{auth}: encrypted only in aead"
            );
            let mut bad = m;
            bad[3] ^= 1;
            let mut o2 = pair(auth).1;
            assert!(!o2.open_message(&mut bad, &tag), "{auth}: altered");
            assert!(o.open_message(&mut m, &tag), "{auth}: intact");
            assert_eq!(m, plain);
        }
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [FrameAuth::None, FrameAuth::Mac, FrameAuth::Aead] {
            assert_eq!(m.name().parse::<FrameAuth>(), Ok(m));
            assert_eq!(FrameAuth::from_code(m.code()), Some(m));
        }
        assert!("hmac".parse::<FrameAuth>().is_err());
        assert_eq!(FrameKeys::none().sealer().unwrap().map(|s| s.auth()), None);
    }
}
