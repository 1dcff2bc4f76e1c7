//! Getting the uncompressed `vmlinux` ELF out of a bzImage: the setup header's
//! `payload_offset`/`payload_length` (boot protocol 2.08+) locate the compressed kernel, which
//! is decompressed in-process — no command-line tool is run:
//!
//! * LZ4 (`CONFIG_KERNEL_LZ4`, Debian's 6.1 cloud kernels): [`lz4`], in-tree;
//! * zstd (`CONFIG_KERNEL_ZSTD`, Debian's 6.12 kernels): the `zstd` crate (the reference C
//!   library, built from source), whose default window limit (128 MiB) admits the kernel's
//!   `zstd -22 --ultra`;
//! * xz (`CONFIG_KERNEL_XZ`): `lzma-rust2` (pure Rust), including the BCJ x86 filter that the
//!   kernel's `scripts/xz_wrap.sh` adds on x86, and the CRC32 check it asks for;
//! * lzma (`CONFIG_KERNEL_LZMA`, the legacy `.lzma` format): `lzma-rust2`;
//! * gzip (`CONFIG_KERNEL_GZIP`): `flate2` (pure Rust `miniz_oxide`);
//! * bzip2 (`CONFIG_KERNEL_BZIP2`): the `bzip2` crate (libbzip2, built from source);
//! * LZO (`CONFIG_KERNEL_LZO`): refused with [`ExtractError::Lzo`].
//!
//! LZO is not decoded: the mature LZO decoders are GPL-2.0 (the project's licence check admits
//! only permissive licences) and the permissive ones are young single-author crates, while no
//! mainstream distribution ships LZO kernels. The error tells the user to extract the vmlinux
//! with the kernel's `scripts/extract-vmlinux` (which runs `lzop`) and pass that instead.
//!
//! Every decoder reads one stream and stops at its end (the payload ends with a 4-byte
//! uncompressed size, which is not a second stream), and its output is read through
//! [`Read::take`] so that no more than the limit plus one byte is ever produced: a payload that
//! decompresses to more than [`VMLINUX_LIMIT`] (a decompression bomb, or not a kernel) is
//! refused with [`ExtractError::TooLarge`] once that byte arrives, the rest left undecoded.
//!
//! Why: on PVM hosts a bzImage's own decompressor is CPL0 code that the host emulates one
//! instruction at a time, far too slowly; the vmlinux is booted directly through its PVH entry.

use std::io::{self, Read};

use super::lz4;

/// Largest vmlinux accepted.
pub const VMLINUX_LIMIT: usize = 512 << 20;

/// Offsets in the bzImage (see Documentation/arch/x86/boot.rst).
mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const PAYLOAD_OFFSET: usize = 0x248;
    pub const PAYLOAD_LENGTH: usize = 0x24c;
}

/// Why no vmlinux could be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Not a bzImage.
    #[error(
        "not a bzImage (no 0xAA55 boot flag or \"HdrS\" header): pass a bzImage or a vmlinux ELF"
    )]
    NotBzImage,
    /// Boot protocol too old to locate the payload.
    #[error("bzImage boot protocol {0:#x} is older than 2.08 and has no payload fields: use a newer kernel")]
    OldProtocol(u16),
    /// Payload fields out of range.
    #[error("bzImage payload [{offset:#x}, +{len:#x}) lies outside the {file_len:#x}-byte file: the image is damaged")]
    Payload {
        /// Offset in the protected-mode part.
        offset: usize,
        /// Length.
        len: usize,
        /// File size.
        file_len: usize,
    },
    /// Unknown compression.
    #[error("unknown kernel compression (payload starts {0:02x?}): extract the vmlinux with the kernel's scripts/extract-vmlinux")]
    UnknownCompression([u8; 4]),
    /// LZ4 decoding failed.
    #[error(transparent)]
    Lz4(#[from] lz4::Lz4Error),
    /// The compressed stream is damaged or truncated.
    #[error(
        "the {format}-compressed kernel does not decompress ({source}): the image is truncated or \
         damaged; download or build it again"
    )]
    Corrupt {
        /// The compression.
        format: &'static str,
        /// What the decoder said.
        source: io::Error,
    },
    /// The payload decompresses to more than the limit.
    #[error(
        "the {format}-compressed kernel decompresses to more than {limit} bytes: it is not a \
         kernel (or is a decompression bomb); pass a real bzImage or vmlinux"
    )]
    TooLarge {
        /// The compression.
        format: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },
    /// LZO is not decoded here.
    #[error(
        "LZO-compressed kernels are not decompressed by ssi-dp: extract the vmlinux with the \
         kernel's scripts/extract-vmlinux (it needs lzop: apt-get install lzop) and pass that \
         file instead, or build the kernel with CONFIG_KERNEL_ZSTD, _XZ, _GZIP or _LZ4"
    )]
    Lzo,
    /// The result is not an ELF.
    #[error("the decompressed kernel is not an ELF file: the image is damaged")]
    NotElf,
}

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 legacy frames (decoded in-process).
    Lz4,
    /// gzip.
    Gzip,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// bzip2.
    Bzip2,
    /// lzma.
    Lzma,
    /// lzo (lzop).
    Lzo,
    /// An uncompressed ELF.
    None,
}

impl Compression {
    /// Recognises the compression by the payload's magic bytes.
    pub fn detect(payload: &[u8]) -> Option<Compression> {
        let m = |magic: &[u8]| payload.starts_with(magic);
        Some(if m(&lz4::LEGACY_MAGIC) {
            Compression::Lz4
        } else if m(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if m(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if m(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if m(b"BZh") {
            Compression::Bzip2
        } else if m(&[0x5d, 0, 0]) {
            Compression::Lzma
        } else if m(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if m(b"\x7fELF") {
            Compression::None
        } else {
            return None;
        })
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
            Compression::None => "uncompressed",
        }
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// True when `image` starts like a bzImage.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.len() > hdr::PAYLOAD_LENGTH + 4
        && image[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2] == [0x55, 0xaa]
        && &image[hdr::HEADER..hdr::HEADER + 4] == b"HdrS"
}

/// The compressed payload of a bzImage and its compression.
pub fn payload(image: &[u8]) -> Result<(&[u8], Compression), ExtractError> {
    if !is_bzimage(image) {
        return Err(ExtractError::NotBzImage);
    }
    let version = u16::from_le_bytes([image[hdr::VERSION], image[hdr::VERSION + 1]]);
    if version < 0x208 {
        return Err(ExtractError::OldProtocol(version));
    }
    let setup_sects = match image[hdr::SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = u32_at(image, hdr::PAYLOAD_OFFSET) as usize;
    let len = u32_at(image, hdr::PAYLOAD_LENGTH) as usize;
    let bad = || ExtractError::Payload {
        offset,
        len,
        file_len: image.len(),
    };
    let start = pm_start.checked_add(offset).ok_or_else(bad)?;
    let end = start
        .checked_add(len)
        .filter(|&e| e <= image.len())
        .ok_or_else(bad)?;
    let data = &image[start..end];
    let mut magic = [0u8; 4];
    let n = data.len().min(4);
    magic[..n].copy_from_slice(&data[..n]);
    let c = Compression::detect(data).ok_or(ExtractError::UnknownCompression(magic))?;
    Ok((data, c))
}

/// The vmlinux ELF inside a bzImage, at most [`VMLINUX_LIMIT`] bytes.
pub fn vmlinux(image: &[u8]) -> Result<Vec<u8>, ExtractError> {
    vmlinux_limited(image, VMLINUX_LIMIT)
}

/// [`vmlinux`] with another limit (tests use a small one).
fn vmlinux_limited(image: &[u8], limit: usize) -> Result<Vec<u8>, ExtractError> {
    let (data, compression) = payload(image)?;
    let elf = decompress(data, compression, limit)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(ExtractError::NotElf);
    }
    Ok(elf)
}

/// Largest LZMA dictionary accepted, in KiB: none is useful beyond the output limit. (The
/// decoder grows its window with the output, so this bounds a header's claim, not the memory
/// actually used, which the output limit already bounds.)
const LZMA_DICT_LIMIT_KIB: u32 = (VMLINUX_LIMIT >> 10) as u32 + 1024;

/// Decompresses one payload into at most `limit` bytes.
fn decompress(
    data: &[u8],
    compression: Compression,
    limit: usize,
) -> Result<Vec<u8>, ExtractError> {
    let format = compression.name();
    let corrupt = |source: io::Error| ExtractError::Corrupt { format, source };
    // Each reader decodes one stream and stops at its end, leaving the trailing size word.
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => {
            if data.len() > limit {
                return Err(ExtractError::TooLarge { format, limit });
            }
            return Ok(data.to_vec());
        }
        Compression::Lz4 => return Ok(lz4::decompress_legacy(data, limit)?),
        Compression::Lzo => return Err(ExtractError::Lzo),
        Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(data)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            data,
            false,
            LZMA_DICT_LIMIT_KIB,
        )),
        Compression::Lzma => Box::new(
            lzma_rust2::LzmaReader::new_mem_limit(data, LZMA_DICT_LIMIT_KIB, None)
                .map_err(corrupt)?,
        ),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(data)
                .map_err(corrupt)?
                .single_frame(),
        ),
        Compression::Bzip2 => Box::new(bzip2::bufread::BzDecoder::new(data)),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > limit {
        return Err(ExtractError::TooLarge { format, limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + 64];
        img[hdr::SETUP_SECTS] = 4;
        img[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&[0x55, 0xaa]);
        img[hdr::HEADER..hdr::HEADER + 4].copy_from_slice(b"HdrS");
        img[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        img[hdr::PAYLOAD_OFFSET..hdr::PAYLOAD_OFFSET + 4].copy_from_slice(&64u32.to_le_bytes());
        img[hdr::PAYLOAD_LENGTH..hdr::PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn lz4_payload_is_found_and_decoded() {
        let mut p = lz4::LEGACY_MAGIC.to_vec();
        let block = [0x40, 0x7f, b'E', b'L', b'F'];
        p.extend_from_slice(&(block.len() as u32).to_le_bytes());
        p.extend_from_slice(&block);
        p.extend_from_slice(&4u32.to_le_bytes());
        let img = fake_bzimage(&p);
        assert_eq!(payload(&img).unwrap().1, Compression::Lz4);
        assert_eq!(vmlinux(&img).unwrap(), b"\x7fELF");
    }

    #[test]
    fn bad_images_are_refused() {
        assert!(matches!(vmlinux(b"hello"), Err(ExtractError::NotBzImage)));
        let mut img = fake_bzimage(b"????");
        assert!(matches!(
            vmlinux(&img),
            Err(ExtractError::UnknownCompression(_))
        ));
        img[hdr::PAYLOAD_LENGTH..hdr::PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(vmlinux(&img), Err(ExtractError::Payload { .. })));
        img[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x206u16.to_le_bytes());
        assert!(matches!(
            vmlinux(&img),
            Err(ExtractError::OldProtocol(0x206))
        ));
    }

    /// An ELF-looking kernel: a header, then text that compresses like code does (repeats
    /// with variation), then noise that does not.
    fn fake_kernel(len: usize) -> Vec<u8> {
        let mut k = b"\x7fELF\x02\x01\x01\0".to_vec();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        while k.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if k.len() < len / 2 {
                k.extend_from_slice(b"\x48\x89\xe5\x41\x57\xe8");
                k.push((x % 7) as u8);
            } else {
                k.push(x as u8);
            }
        }
        k.truncate(len);
        k
    }

    /// The kernel's `size_append`: the payload ends with the uncompressed size.
    fn with_size(mut stream: Vec<u8>, len: usize) -> Vec<u8> {
        stream.extend_from_slice(&(len as u32).to_le_bytes());
        stream
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Like the kernel's `scripts/xz_wrap.sh` on x86: BCJ x86 filter, CRC32 check.
    fn xz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut opts = lzma_rust2::XzOptions::with_preset(6);
        opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut w = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    /// The legacy `.lzma` format with an unknown size and an end marker, like `lzma -9 <in`.
    fn lzma(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let opts = lzma_rust2::LzmaOptions::with_preset(6);
        let mut w = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &opts, None).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    /// Like the kernel's `zstd -22 --ultra <in`: a checksum, no content size, and a
    /// 128 MiB window (the Debian 6.12 kernel's frame header says the same).
    fn zstd(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        e.include_checksum(true).unwrap();
        e.include_contentsize(false).unwrap();
        e.window_log(27).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    type Encoder = fn(&[u8]) -> Vec<u8>;
    const ENCODERS: [(Compression, Encoder); 5] = [
        (Compression::Gzip, gzip),
        (Compression::Xz, xz),
        (Compression::Lzma, lzma),
        (Compression::Zstd, zstd),
        (Compression::Bzip2, bzip2),
    ];

    #[test]
    fn every_supported_format_gives_back_the_exact_kernel() {
        let kernel = fake_kernel(300 << 10);
        for (compression, encode) in ENCODERS {
            let img = fake_bzimage(&with_size(encode(&kernel), kernel.len()));
            assert_eq!(payload(&img).unwrap().1, compression);
            let out = vmlinux(&img).unwrap_or_else(|e| panic!("{compression:?}: {e}"));
            assert!(out == kernel, "{compression:?}: the output differs");
        }
    }

    #[test]
    fn a_stream_without_the_size_word_decodes_too() {
        let kernel = fake_kernel(10 << 10);
        for (compression, encode) in ENCODERS {
            let img = fake_bzimage(&encode(&kernel));
            let out = vmlinux(&img).unwrap_or_else(|e| panic!("{compression:?}: {e}"));
            assert!(out == kernel, "{compression:?}: the output differs");
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_are_refused_with_a_clear_error() {
        let kernel = fake_kernel(100 << 10);
        for (compression, encode) in ENCODERS {
            let stream = encode(&kernel);
            // Cut in the middle: the decoder runs out of input.
            let cut = fake_bzimage(&stream[..stream.len() / 2]);
            match vmlinux(&cut) {
                Err(e @ ExtractError::Corrupt { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(compression.name()), "{msg}");
                    assert!(msg.contains("truncated or damaged"), "{msg}");
                }
                other => panic!("{compression:?} cut: {other:?}"),
            }
            // Flip bytes in the middle: the decoder or the stream's check must notice.
            let mut bad = stream.clone();
            let mid = bad.len() / 2;
            for b in &mut bad[mid..mid + 16] {
                *b ^= 0x5a;
            }
            match vmlinux(&fake_bzimage(&with_size(bad, kernel.len()))) {
                Err(ExtractError::Corrupt { format, .. }) => assert_eq!(format, compression.name()),
                other => panic!("{compression:?} corrupt: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bomb_over_the_limit_is_refused() {
        const LIMIT: usize = 1 << 20;
        let mut bomb = b"\x7fELF".to_vec();
        bomb.resize(4 * LIMIT, 0);
        for (compression, encode) in ENCODERS {
            let img = fake_bzimage(&with_size(encode(&bomb), bomb.len()));
            match vmlinux_limited(&img, LIMIT) {
                Err(e @ ExtractError::TooLarge { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("more than {LIMIT} bytes")), "{msg}");
                }
                other => panic!("{compression:?}: {other:?}"),
            }
            // Exactly at the limit is fine.
            let exact = &bomb[..LIMIT];
            let img = fake_bzimage(&with_size(encode(exact), LIMIT));
            assert_eq!(vmlinux_limited(&img, LIMIT).unwrap().len(), LIMIT);
        }
    }

    #[test]
    fn lzo_is_refused_with_what_to_do() {
        let img = fake_bzimage(b"\x89LZO\0\r\n\x1a\n");
        assert_eq!(payload(&img).unwrap().1, Compression::Lzo);
        let e = vmlinux(&img).unwrap_err();
        assert!(matches!(e, ExtractError::Lzo));
        assert!(e.to_string().contains("scripts/extract-vmlinux"), "{e}");
    }

    /// The streams the kernel's own build makes, with the real tools and the kernel's flags
    /// (scripts/Makefile.lib, scripts/xz_wrap.sh on x86), decode the same as the tools did.
    #[test]
    fn streams_from_the_kernel_build_tools_decode() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let kernel = fake_kernel(512 << 10);
        let tools: [(&str, &[&str], &str, Compression); 5] = [
            ("gzip", &["-n", "-f", "-9"], "gzip", Compression::Gzip),
            (
                "xz",
                &["--check=crc32", "--x86", "--lzma2=dict=32MiB"],
                "xz-utils",
                Compression::Xz,
            ),
            ("lzma", &["-9"], "xz-utils", Compression::Lzma),
            ("zstd", &["-22", "--ultra", "-q"], "zstd", Compression::Zstd),
            ("bzip2", &["-9"], "bzip2", Compression::Bzip2),
        ];
        for (tool, args, package, compression) in tools {
            let mut child = Command::new(tool)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{tool}: {e} (apt-get install {package})"));
            let mut stdin = child.stdin.take().unwrap();
            let input = kernel.clone();
            let feeder = std::thread::spawn(move || stdin.write_all(&input));
            let out = child.wait_with_output().unwrap();
            feeder.join().unwrap().unwrap();
            assert!(out.status.success(), "{tool}: {}", out.status);
            let img = fake_bzimage(&with_size(out.stdout, kernel.len()));
            assert_eq!(payload(&img).unwrap().1, compression);
            let got = vmlinux(&img).unwrap_or_else(|e| panic!("{tool}: {e}"));
            assert!(got == kernel, "{tool}: the output differs");
        }
    }
}
