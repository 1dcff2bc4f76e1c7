//! What kind of memory backs an address range (private anonymous, shmem, hugetlbfs, regular
//! file, ...), read from `/proc/self/smaps`, and which register modes each kind supports. Used
//! only to explain a refused registration; never on the fault path.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};

use crate::features::Features;
use crate::register::RegisterMode;

/// `statfs.f_type` of tmpfs (shmem).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The kind of memory behind a mapping, as far as userfaultfd is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// `MAP_PRIVATE | MAP_ANONYMOUS` (heap, stacks, most guest RAM).
    PrivateAnonymous,
    /// shmem: memfd, tmpfs files, `MAP_SHARED | MAP_ANONYMOUS`, SysV shm.
    Shmem,
    /// hugetlbfs (or `MAP_HUGETLB`, or a hugetlb memfd).
    Hugetlb,
    /// A file on a filesystem other than tmpfs / hugetlbfs.
    File,
    /// A kernel-provided mapping such as `[vdso]`.
    Special,
    /// No mapping at that address.
    Unmapped,
    /// Could not be determined.
    Unknown,
}

impl MemoryKind {
    /// The register modes this kind supports on a kernel offering `available`.
    pub fn supported_modes(self, available: Features) -> RegisterMode {
        let mut modes = RegisterMode::empty();
        match self {
            MemoryKind::PrivateAnonymous => {
                modes |= RegisterMode::MISSING;
                if available.contains(Features::PAGEFAULT_FLAG_WP) {
                    modes |= RegisterMode::WP;
                }
            }
            MemoryKind::Shmem | MemoryKind::Hugetlb => {
                let (missing, minor) = if self == MemoryKind::Shmem {
                    (Features::MISSING_SHMEM, Features::MINOR_SHMEM)
                } else {
                    (Features::MISSING_HUGETLBFS, Features::MINOR_HUGETLBFS)
                };
                if available.contains(missing) {
                    modes |= RegisterMode::MISSING;
                }
                if available.contains(minor) {
                    modes |= RegisterMode::MINOR;
                }
                if available.contains(Features::WP_HUGETLBFS_SHMEM) {
                    modes |= RegisterMode::WP;
                }
            }
            MemoryKind::File | MemoryKind::Special | MemoryKind::Unmapped => {}
            MemoryKind::Unknown => modes = RegisterMode::all(),
        }
        modes
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryKind::PrivateAnonymous => "private anonymous",
            MemoryKind::Shmem => "shmem (memfd/tmpfs/shared anonymous)",
            MemoryKind::Hugetlb => "hugetlbfs",
            MemoryKind::File => "regular file",
            MemoryKind::Special => "special kernel",
            MemoryKind::Unmapped => "unmapped",
            MemoryKind::Unknown => "unknown",
        })
    }
}

/// The first mapping in `start..start + len` whose kind lacks one of `modes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnosis {
    /// Address of the offending mapping (or of the hole).
    pub at: usize,
    /// Its kind.
    pub kind: MemoryKind,
    /// The requested modes that kind does not support (empty: none found).
    pub unsupported: RegisterMode,
}

/// One mapping from smaps.
struct Vma {
    start: usize,
    end: usize,
    kind: MemoryKind,
}

/// Finds which mapping of `start..start + len` cannot take `modes`. When every mapping
/// supports them (or smaps is unreadable) the result has empty `unsupported`.
pub(crate) fn diagnose(
    start: usize,
    len: usize,
    modes: RegisterMode,
    available: Features,
) -> Diagnosis {
    let end = start.saturating_add(len);
    match read_vmas(start, end) {
        Ok(vmas) => diagnose_in(&vmas, start, end, modes, available),
        Err(_) => Diagnosis {
            at: start,
            kind: MemoryKind::Unknown,
            unsupported: RegisterMode::empty(),
        },
    }
}

/// [`diagnose`] over a list of mappings sorted by address.
fn diagnose_in(
    vmas: &[Vma],
    start: usize,
    end: usize,
    modes: RegisterMode,
    available: Features,
) -> Diagnosis {
    let mut cursor = start;
    for vma in vmas.iter().filter(|v| v.end > start && v.start < end) {
        if vma.start > cursor {
            return hole(cursor, modes);
        }
        let unsupported = modes.difference(vma.kind.supported_modes(available));
        if !unsupported.is_empty() {
            return Diagnosis {
                at: cursor.max(vma.start),
                kind: vma.kind,
                unsupported,
            };
        }
        cursor = vma.end;
        if cursor >= end {
            break;
        }
    }
    if cursor < end {
        return hole(cursor, modes);
    }
    let kind = vmas
        .iter()
        .find(|v| v.end > start && v.start <= start)
        .map_or(MemoryKind::Unknown, |v| v.kind);
    Diagnosis {
        at: start,
        kind,
        unsupported: RegisterMode::empty(),
    }
}

fn hole(at: usize, modes: RegisterMode) -> Diagnosis {
    Diagnosis {
        at,
        kind: MemoryKind::Unmapped,
        unsupported: modes,
    }
}

/// The mappings overlapping `start..end`, in address order.
fn read_vmas(start: usize, end: usize) -> std::io::Result<Vec<Vma>> {
    let reader = BufReader::new(File::open("/proc/self/smaps")?);
    let mut out: Vec<Vma> = Vec::new();
    // The mapping being read: its range, whether it is shared, its path.
    let mut current: Option<(usize, usize, bool, String)> = None;
    for line in reader.lines() {
        let line = line?;
        if let Some((s, e, shared, path)) = parse_header(&line) {
            if s >= end {
                break;
            }
            current = (e > start).then(|| (s, e, shared, path.to_owned()));
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some((s, e, shared, path)) = current.take() {
                let hugetlb = flags.split_ascii_whitespace().any(|f| f == "ht");
                out.push(Vma {
                    start: s,
                    end: e,
                    kind: classify(shared, &path, hugetlb),
                });
            }
        }
    }
    Ok(out)
}

/// Parses `start-end perms offset dev inode [path]`.
fn parse_header(line: &str) -> Option<(usize, usize, bool, &str)> {
    let mut fields = line.splitn(6, ' ');
    let (s, e) = fields.next()?.split_once('-')?;
    let s = usize::from_str_radix(s, 16).ok()?;
    let e = usize::from_str_radix(e, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let shared = perms.as_bytes()[3] == b's';
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim();
    Some((s, e, shared, path))
}

fn classify(shared: bool, path: &str, hugetlb: bool) -> MemoryKind {
    if hugetlb {
        return MemoryKind::Hugetlb;
    }
    if path.is_empty()
        || path == "[heap]"
        || path.starts_with("[stack")
        || path.starts_with("[anon:")
    {
        return if shared {
            MemoryKind::Shmem
        } else {
            MemoryKind::PrivateAnonymous
        };
    }
    if path.starts_with('[') {
        return MemoryKind::Special;
    }
    if path.starts_with("/memfd:")
        || path.starts_with("/dev/zero")
        || path.starts_with("/SYSV")
        || path.starts_with("/dev/shm/")
    {
        return MemoryKind::Shmem;
    }
    match fs_type(path) {
        Some(TMPFS_MAGIC) => MemoryKind::Shmem,
        Some(_) => MemoryKind::File,
        None => MemoryKind::Unknown,
    }
}

/// `statfs(path).f_type`, or `None` if the path cannot be inspected.
fn fs_type(path: &str) -> Option<i64> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: statfs is plain data; all-zero is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, exclusive out-pointer for the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs.
    (rc == 0).then_some(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_headers() {
        let (s, e, shared, path) = parse_header(
            "7f1c2a000000-7f1c2a021000 rw-s 00000000 00:01 2050 /memfd:guest (deleted)",
        )
        .unwrap();
        assert_eq!((s, e, shared), (0x7f1c_2a00_0000, 0x7f1c_2a02_1000, true));
        assert_eq!(path, "/memfd:guest (deleted)");
        let (_, _, shared, path) = parse_header(
            "55d0c8a4d000-55d0c8a6e000 rw-p 00000000 00:00 0                          [heap]",
        )
        .unwrap();
        assert!(!shared);
        assert_eq!(path, "[heap]");
        assert!(parse_header("Rss:                   4 kB").is_none());
        assert!(parse_header("VmFlags: rd wr mr mw me ac sd").is_none());
    }

    #[test]
    fn classifies_by_path_and_flags() {
        assert_eq!(classify(false, "", false), MemoryKind::PrivateAnonymous);
        assert_eq!(
            classify(true, "/dev/zero (deleted)", false),
            MemoryKind::Shmem
        );
        assert_eq!(
            classify(true, "/memfd:x (deleted)", false),
            MemoryKind::Shmem
        );
        assert_eq!(
            classify(true, "/memfd:x (deleted)", true),
            MemoryKind::Hugetlb
        );
        assert_eq!(classify(false, "[vdso]", false), MemoryKind::Special);
    }

    #[test]
    fn anonymous_memory_lacks_minor_mode() {
        let all = Features::all();
        let anon = MemoryKind::PrivateAnonymous.supported_modes(all);
        assert!(anon.contains(RegisterMode::MISSING | RegisterMode::WP));
        assert!(!anon.contains(RegisterMode::MINOR));
        assert_eq!(MemoryKind::Shmem.supported_modes(all), RegisterMode::all());
        assert!(MemoryKind::File.supported_modes(all).is_empty());
    }

    #[test]
    fn diagnosis_finds_the_offending_mapping_or_hole() {
        let all = Features::all();
        let vmas = [
            Vma {
                start: 0x1000,
                end: 0x3000,
                kind: MemoryKind::PrivateAnonymous,
            },
            Vma {
                start: 0x3000,
                end: 0x5000,
                kind: MemoryKind::Shmem,
            },
            Vma {
                start: 0x6000,
                end: 0x7000,
                kind: MemoryKind::File,
            },
        ];
        let d = diagnose_in(
            &vmas,
            0x1000,
            0x4000,
            RegisterMode::MISSING | RegisterMode::MINOR,
            all,
        );
        assert_eq!(
            d,
            Diagnosis {
                at: 0x1000,
                kind: MemoryKind::PrivateAnonymous,
                unsupported: RegisterMode::MINOR
            }
        );
        let d = diagnose_in(&vmas, 0x3000, 0x5000, RegisterMode::MINOR, all);
        assert!(d.unsupported.is_empty());
        assert_eq!(d.kind, MemoryKind::Shmem);
        let d = diagnose_in(&vmas, 0x4000, 0x7000, RegisterMode::MISSING, all);
        assert_eq!((d.at, d.kind), (0x5000, MemoryKind::Unmapped));
        let d = diagnose_in(&vmas, 0x6000, 0x7000, RegisterMode::MISSING, all);
        assert_eq!((d.at, d.kind), (0x6000, MemoryKind::File));
        let d = diagnose_in(&vmas, 0x8000, 0x9000, RegisterMode::MISSING, all);
        assert_eq!((d.at, d.kind), (0x8000, MemoryKind::Unmapped));
    }

    #[test]
    fn reads_a_live_anonymous_mapping_from_smaps() {
        let page = 4096;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = p as usize;
        let d = diagnose(
            addr,
            page,
            RegisterMode::MINOR | RegisterMode::MISSING,
            Features::all(),
        );
        assert_eq!(d.kind, MemoryKind::PrivateAnonymous);
        assert_eq!(d.unsupported, RegisterMode::MINOR);
        // SAFETY: unmaps the mapping created above, which nothing else uses.
        assert_eq!(unsafe { libc::munmap(p, page) }, 0);
    }
}
