//! The floors' wire format and the home's side of it. A request is 16 bytes, little-endian:
//! the page index (u64), how many consecutive pages from there (u32, 1 to [`MAX_COUNT`]) and a
//! sequence number (u32, informational). The home answers requests in order, each with
//! `count` pages of 4 KiB whose first word is the page's index; it answers every complete
//! request one read brought with one write.

use thiserror::Error;

/// Bytes of a page.
pub const PAGE: usize = 4096;
/// Bytes of a request.
pub const REQUEST: usize = 16;
/// Most pages one request may ask for (the largest prefetch depth).
pub const MAX_COUNT: u32 = 64;
/// Most requests one batch carries: the uffd events one read returns (the handler's send)
/// and the requests one read of the home takes.
pub const BATCH: usize = 64;
/// Pages of the home's reply buffer: one write carries at most this many.
pub const REPLY_PAGES: usize = 64;
/// The filler of every reply byte but the first word of each page.
pub const FILL: u8 = 0x5a;

const _: () = assert!(
    MAX_COUNT as usize <= REPLY_PAGES,
    "a request must fit one reply"
);

/// A request that breaks the format.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    /// A page count of 0 or over the limit.
    #[error("a floor request asked for {0} pages: 1 to {MAX_COUNT} are allowed")]
    Count(u32),
}

/// One request: `count` pages from `page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The first page (index in the faulting side's mapping).
    pub page: u64,
    /// Consecutive pages asked for.
    pub count: u32,
    /// Sequence number (not interpreted by the home).
    pub seq: u32,
}

impl Request {
    /// The 16 bytes on the wire.
    pub fn encode(self) -> [u8; REQUEST] {
        let mut b = [0u8; REQUEST];
        b[..8].copy_from_slice(&self.page.to_le_bytes());
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// Reads a request from its 16 bytes.
    pub fn decode(b: &[u8; REQUEST]) -> Result<Request, ProtoError> {
        let mut page = [0u8; 8];
        let mut count = [0u8; 4];
        let mut seq = [0u8; 4];
        page.copy_from_slice(&b[..8]);
        count.copy_from_slice(&b[8..12]);
        seq.copy_from_slice(&b[12..]);
        let r = Request {
            page: u64::from_le_bytes(page),
            count: u32::from_le_bytes(count),
            seq: u32::from_le_bytes(seq),
        };
        if r.count == 0 || r.count > MAX_COUNT {
            return Err(ProtoError::Count(r.count));
        }
        Ok(r)
    }
}

/// The first page of the aligned `depth`-page block that holds `page`.
pub fn block_start(page: u64, depth: u64) -> u64 {
    page - page % depth.max(1)
}

/// Answers the complete requests at the start of `reqs`, in order, into `out` (whole pages,
/// every byte [`FILL`] but the first words, which this writes), as many as fit. Returns the
/// request bytes answered and the reply bytes written; `(0, 0)` when no request is complete.
pub fn answer(reqs: &[u8], out: &mut [u8]) -> Result<(usize, usize), ProtoError> {
    let mut used = 0;
    let mut len = 0;
    while let Some(raw) = reqs.get(used..used + REQUEST) {
        let mut b = [0u8; REQUEST];
        b.copy_from_slice(raw);
        let r = Request::decode(&b)?;
        let bytes = r.count as usize * PAGE;
        let Some(dst) = out.get_mut(len..len + bytes) else {
            break;
        };
        for (i, page) in dst.chunks_exact_mut(PAGE).enumerate() {
            page[..8].copy_from_slice(&(r.page + i as u64).to_le_bytes());
        }
        used += REQUEST;
        len += bytes;
    }
    Ok((used, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(page: &[u8]) -> u64 {
        u64::from_le_bytes(page[..8].try_into().unwrap())
    }

    #[test]
    fn requests_round_trip_and_bad_counts_are_refused() {
        let r = Request {
            page: 0x1234_5678_9abc,
            count: 16,
            seq: 7,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        for bad in [0, MAX_COUNT + 1, u32::MAX] {
            let b = Request { count: bad, ..r }.encode();
            assert_eq!(Request::decode(&b), Err(ProtoError::Count(bad)));
        }
    }

    #[test]
    fn blocks_are_aligned_to_the_depth() {
        assert_eq!(block_start(0, 16), 0);
        assert_eq!(block_start(15, 16), 0);
        assert_eq!(block_start(16, 16), 16);
        assert_eq!(block_start(47, 16), 32);
        // A depth that is not a power of two.
        assert_eq!(block_start(11, 5), 10);
        assert_eq!(block_start(9, 1), 9);
    }

    #[test]
    fn the_home_answers_complete_requests_in_order_as_many_as_fit() {
        let req = |page, count| Request {
            page,
            count,
            seq: 0,
        };
        let mut reqs = Vec::new();
        reqs.extend_from_slice(&req(5, 1).encode());
        reqs.extend_from_slice(&req(32, 3).encode());
        reqs.extend_from_slice(&req(9, 1).encode());
        // Half a request: not answered yet.
        reqs.extend_from_slice(&req(1, 1).encode()[..7]);
        let mut out = vec![FILL; 8 * PAGE];
        let (used, len) = answer(&reqs, &mut out).unwrap();
        assert_eq!((used, len), (3 * REQUEST, 5 * PAGE));
        let words: Vec<u64> = out[..len].chunks_exact(PAGE).map(word).collect();
        assert_eq!(words, [5, 32, 33, 34, 9]);
        assert!(out[8..PAGE].iter().all(|&b| b == FILL));
        // A reply buffer of 4 pages takes the first two requests' 4 pages, then stops.
        let mut small = vec![FILL; 4 * PAGE];
        assert_eq!(answer(&reqs, &mut small), Ok((2 * REQUEST, 4 * PAGE)));
        // Nothing complete: nothing answered.
        assert_eq!(answer(&reqs[..10], &mut out), Ok((0, 0)));
        // A bad request fails the whole read.
        let mut bad = req(1, 1).encode().to_vec();
        bad.extend_from_slice(&req(2, 0).encode());
        assert_eq!(answer(&bad, &mut out), Err(ProtoError::Count(0)));
    }
}
