//! Getting the uncompressed `vmlinux` ELF out of a bzImage: the setup header's
//! `payload_offset`/`payload_length` (boot protocol 2.08+) locate the compressed kernel; LZ4
//! (Debian's choice) is decompressed here, gzip/xz/zstd/bzip2/lzma/lzo by the matching
//! command-line tool (`gzip`, `xz`, `zstd`, `bzip2`, `lzma`, `lzop`, which must be on PATH).
//!
//! Why: on PVM hosts a bzImage's own decompressor is CPL0 code that the host emulates one
//! instruction at a time, far too slowly; the vmlinux is booted directly through its PVH entry.

use std::io::Write;
use std::process::{Command, Stdio};

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
    /// The external decompressor failed.
    #[error(
        "running `{tool} -dc` failed: {reason}; install it (Debian: apt-get install {package})"
    )]
    Tool {
        /// Command.
        tool: &'static str,
        /// Debian package.
        package: &'static str,
        /// What happened.
        reason: String,
    },
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

    fn tool(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Compression::Gzip => ("gzip", "gzip"),
            Compression::Xz => ("xz", "xz-utils"),
            Compression::Zstd => ("zstd", "zstd"),
            Compression::Bzip2 => ("bzip2", "bzip2"),
            Compression::Lzma => ("lzma", "xz-utils"),
            Compression::Lzo => ("lzop", "lzop"),
            Compression::Lz4 | Compression::None => return None,
        })
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

/// The vmlinux ELF inside a bzImage.
pub fn vmlinux(image: &[u8]) -> Result<Vec<u8>, ExtractError> {
    let (data, compression) = payload(image)?;
    let elf = match compression {
        Compression::None => data.to_vec(),
        Compression::Lz4 => lz4::decompress_legacy(data, VMLINUX_LIMIT)?,
        other => {
            let (tool, package) = other.tool().ok_or(ExtractError::NotElf)?;
            run_tool(tool, package, data)?
        }
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(ExtractError::NotElf);
    }
    Ok(elf)
}

fn run_tool(
    tool: &'static str,
    package: &'static str,
    data: &[u8],
) -> Result<Vec<u8>, ExtractError> {
    let err = |reason: String| ExtractError::Tool {
        tool,
        package,
        reason,
    };
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
    let input = data.to_vec();
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    // Decompressors stop reading at the end of the stream; trailing bytes (the size word)
    // may give EPIPE, which is fine.
    let _ = feeder.join();
    if out.stdout.is_empty() {
        return Err(err(format!("exit status {}", out.status)));
    }
    Ok(out.stdout)
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

    #[test]
    fn gzip_payload_goes_through_the_tool() {
        // A gzip stream of "\x7fELF!" made with the gzip tool itself, if present.
        let Ok(mut child) = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            panic!("gzip is needed for this test (apt-get install gzip)");
        };
        child.stdin.take().unwrap().write_all(b"\x7fELF!").unwrap();
        let gz = child.wait_with_output().unwrap().stdout;
        let img = fake_bzimage(&gz);
        assert_eq!(payload(&img).unwrap().1, Compression::Gzip);
        assert_eq!(vmlinux(&img).unwrap(), b"\x7fELF!");
    }
}
