//! LZ4 "legacy" frames, the format of an x86 bzImage built with CONFIG_KERNEL_LZ4 (Debian's
//! cloud kernels): a magic, then blocks of at most 8 MiB output each prefixed by their
//! compressed length, and — in a bzImage — a trailing 4-byte uncompressed size. Every length
//! is checked: malformed input returns an error, never panics or overruns.

/// Magic of a legacy frame.
pub const LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Most bytes one block decompresses to.
pub const BLOCK_MAX: usize = 8 << 20;

/// Malformed LZ4 input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lz4Error {
    /// Not a legacy frame.
    #[error("not an LZ4 legacy frame (bad magic): is this really an LZ4 kernel?")]
    Magic,
    /// A block's length field runs past the input.
    #[error("LZ4 block at input offset {0:#x} is truncated: the image is damaged")]
    Truncated(usize),
    /// A match refers before the start of the output.
    #[error("LZ4 match offset {offset} at output position {pos:#x} points before the data: the image is damaged")]
    BadOffset {
        /// Distance back.
        offset: usize,
        /// Output position.
        pos: usize,
    },
    /// The output would exceed the limit.
    #[error("LZ4 output exceeds {0:#x} bytes: the image is damaged or not a kernel")]
    TooLarge(usize),
}

/// Decompresses a legacy frame (with an optional trailing size word) into at most `limit`
/// bytes.
pub fn decompress_legacy(input: &[u8], limit: usize) -> Result<Vec<u8>, Lz4Error> {
    if input.get(..4) != Some(&LEGACY_MAGIC[..]) {
        return Err(Lz4Error::Magic);
    }
    let mut out = Vec::new();
    let mut pos = 4;
    while input.len() - pos >= 4 {
        let len = u32::from_le_bytes([input[pos], input[pos + 1], input[pos + 2], input[pos + 3]]);
        if len.to_le_bytes() == LEGACY_MAGIC {
            pos += 4; // a concatenated frame starts
            continue;
        }
        let start = pos + 4;
        if start == input.len() {
            break; // the trailing uncompressed-size word of a bzImage payload
        }
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= input.len())
            .ok_or(Lz4Error::Truncated(pos))?;
        let block_limit = limit.min(out.len() + BLOCK_MAX);
        decompress_block(&input[start..end], &mut out, block_limit).map_err(|e| match e {
            Lz4Error::Truncated(_) => Lz4Error::Truncated(pos),
            other => other,
        })?;
        pos = end;
    }
    Ok(out)
}

/// Decompresses one raw LZ4 block, appending to `out` (which may hold earlier blocks; matches
/// may not reach into them in the legacy format, but reaching is harmless and checked).
pub fn decompress_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), Lz4Error> {
    let mut i = 0;
    let byte = |i: usize| block.get(i).copied().ok_or(Lz4Error::Truncated(i));
    while i < block.len() {
        let token = byte(i)?;
        i += 1;
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                lit += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        let lit_end = i
            .checked_add(lit)
            .filter(|&e| e <= block.len())
            .ok_or(Lz4Error::Truncated(i))?;
        if out.len() + lit > limit {
            return Err(Lz4Error::TooLarge(limit));
        }
        out.extend_from_slice(&block[i..lit_end]);
        i = lit_end;
        if i == block.len() {
            break; // the last sequence has literals only
        }
        let offset = usize::from(u16::from_le_bytes([byte(i)?, byte(i + 1)?]));
        i += 2;
        let mut mlen = usize::from(token & 15) + 4;
        if token & 15 == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                mlen += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        if offset == 0 || offset > out.len() {
            return Err(Lz4Error::BadOffset {
                offset,
                pos: out.len(),
            });
        }
        if out.len() + mlen > limit {
            return Err(Lz4Error::TooLarge(limit));
        }
        let from = out.len() - offset;
        for k in 0..mlen {
            let b = out[from + k];
            out.push(b);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes literals-only and match sequences by hand.
    fn frame(blocks: &[&[u8]], trailer: Option<u32>) -> Vec<u8> {
        let mut f = LEGACY_MAGIC.to_vec();
        for b in blocks {
            f.extend_from_slice(&(b.len() as u32).to_le_bytes());
            f.extend_from_slice(b);
        }
        if let Some(t) = trailer {
            f.extend_from_slice(&t.to_le_bytes());
        }
        f
    }

    #[test]
    fn literals_matches_and_overlapping_copies() {
        // "abc" then a match of 9 at offset 3 ("abcabcabc"), then literal "Z".
        let block: &[u8] = &[0x35, b'a', b'b', b'c', 3, 0, 0x10, b'Z'];
        let out = decompress_legacy(&frame(&[block], Some(13)), 1 << 20).unwrap();
        assert_eq!(out, b"abcabcabcabcZ");
    }

    #[test]
    fn long_literal_and_match_lengths_extend() {
        let lit: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        // token: 15 literals (extended by 255 + 30 = 300), match 15 (+ 4 + 20 = 39) at offset 1.
        let mut block = vec![0xff, 255, 30];
        block.extend_from_slice(&lit);
        block.extend_from_slice(&[1, 0, 20]);
        block.extend_from_slice(&[0x10, b'!']);
        let out = decompress_legacy(&frame(&[&block], None), 1 << 20).unwrap();
        assert_eq!(out.len(), 300 + 39 + 1);
        assert_eq!(&out[..300], &lit[..]);
        assert!(out[300..339].iter().all(|&b| b == lit[299]));
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(decompress_legacy(b"\x1f\x8b", 100), Err(Lz4Error::Magic));
        let mut f = frame(&[&[0x30, b'a']], None); // 3 literals promised, 1 given
        assert!(matches!(
            decompress_legacy(&f, 100),
            Err(Lz4Error::Truncated(_))
        ));
        f = frame(&[&[0x10, b'a', 9, 0, 0x10, b'b']], None); // match before the start
        assert!(matches!(
            decompress_legacy(&f, 100),
            Err(Lz4Error::BadOffset { .. })
        ));
        f = frame(&[&[0x1f, b'a', 1, 0, 255, 255, 255, 0]], None);
        assert!(matches!(
            decompress_legacy(&f, 100),
            Err(Lz4Error::TooLarge(100))
        ));
        let mut long = LEGACY_MAGIC.to_vec();
        long.extend_from_slice(&1000u32.to_le_bytes());
        long.extend_from_slice(&[0; 10]);
        assert!(matches!(
            decompress_legacy(&long, 100),
            Err(Lz4Error::Truncated(4))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x1234_5678u64;
        for n in 0..2000usize {
            let mut f = LEGACY_MAGIC.to_vec();
            let len = n % 64;
            f.extend_from_slice(&(len as u32).to_le_bytes());
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f.push(x as u8);
            }
            let _ = decompress_legacy(&f, 4096);
        }
    }
}
