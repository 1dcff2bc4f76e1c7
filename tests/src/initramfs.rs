//! The guest-side checker packed for a Linux guest: `ssi-guest-check` built static with plain
//! `rustc` (no cargo inside cargo), and a newc initramfs holding it, the host's static
//! busybox and an `/init` script that runs it and powers the machine off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

/// Where the static busybox (Debian's `busybox-static`) may be.
const BUSYBOX: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// The guest's `/init`; `@ARGS@` becomes the checker's arguments.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
echo "ssi-guest-init: up uptime=$($B cut -d' ' -f1 /proc/uptime)s nproc=$($B nproc)"
/bin/ssi-guest-check @ARGS@ --status-port --poweroff
echo "ssi-guest-init: ssi-guest-check returned with status $? (power-off failed)"
$B poweroff -f
"#;

/// The repository root (the `tests` crate sits one level below it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `<target dir>/lab`: `$CARGO_TARGET_DIR` (relative to the repository root) or `target/`.
fn lab_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| repo_root().join(d))
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("lab");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Writes `bytes` to `path` through a file of this process, so that concurrent tests never
/// see a half-written file.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The newest modification time of the files under `dir`.
fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        newest = newest.max(t);
    }
    newest
}

/// Why an ELF file is unfit for a bare initramfs, if it is: not an x86_64 ELF, or dynamically
/// linked (it has a PT_INTERP program header).
fn static_elf_problem(bytes: &[u8]) -> Option<&'static str> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // 64-bit, little-endian, x86_64.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") || u16_at(0x12) != Some(0x3e) {
        return Some("not an x86_64 ELF executable");
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Some("truncated ELF header");
    };
    for k in 0..usize::from(count) {
        match u32_at(phoff as usize + k * usize::from(size)) {
            Some(3) => return Some("dynamically linked (has PT_INTERP)"),
            Some(_) => {}
            None => return Some("truncated program headers"),
        }
    }
    None
}

/// Builds `ssi-guest-check` static with plain `rustc` (`$RUSTC` or `rustc` on PATH) into
/// `<target dir>/lab/ssi-guest-check`, unless it is newer than every file in guest-check/src.
/// Each build happens in a directory of its own (rustc names its intermediate files after
/// the output, so builds sharing a directory collide) and is renamed into place.
pub fn static_guest_check() -> PathBuf {
    static ONE_BUILD_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_BUILD_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let src = repo_root().join("guest-check/src");
    let out = lab_dir().join("ssi-guest-check");
    let built = std::fs::metadata(&out).and_then(|m| m.modified()).ok();
    if built.is_none_or(|t| t < newest_mtime(&src)) {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let work = out.with_extension(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap_or_else(|e| panic!("{}: {e}", work.display()));
        let tmp = work.join("ssi-guest-check");
        let result = Command::new(&rustc)
            .args(["--edition", "2021", "-O"])
            .args(["-C", "target-feature=+crt-static", "-C", "strip=debuginfo"])
            .args(["--crate-name", "ssi_guest_check"])
            .arg(src.join("main.rs"))
            .arg("-o")
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&rustc).display()));
        assert!(
            result.status.success(),
            "building the static ssi-guest-check failed ({}):\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename to {}: {e}", out.display()));
        let _ = std::fs::remove_dir_all(&work);
    }
    let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    if let Some(problem) = static_elf_problem(&bytes) {
        panic!("{} is unfit for the initramfs: {problem}", out.display());
    }
    out
}

/// Appends one newc cpio entry (`rdev`: major and minor of a device node).
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        u32::try_from(data.len()).expect("cpio entries are under 4 GiB"),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        u32::try_from(name.len() + 1).expect("short name"),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The archive itself, from the file contents.
fn archive(busybox: &[u8], checker: &[u8], init: &str) -> Vec<u8> {
    const DIR: u32 = 0o040_755;
    const EXEC: u32 = 0o100_755;
    const CHR: u32 = 0o020_600;
    let mut out = Vec::with_capacity(busybox.len() + checker.len() + 4096);
    let mut ino = 0;
    let mut entry = |name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        ino += 1;
        cpio_entry(&mut out, ino, name, mode, rdev, data);
    };
    for dir in ["dev", "proc", "sys", "tmp", "bin"] {
        entry(dir, DIR, (0, 0), &[]);
    }
    entry("dev/console", CHR, (5, 1), &[]);
    entry("bin/busybox", EXEC, (0, 0), busybox);
    entry("bin/ssi-guest-check", EXEC, (0, 0), checker);
    entry("init", EXEC, (0, 0), init.as_bytes());
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// A newc initramfs whose `/init` runs `checker` with `checker_args` (shell words) plus
/// `--status-port --poweroff`, next to the host's static busybox.
pub fn linux_initramfs(checker: &Path, checker_args: &str) -> Vec<u8> {
    let (path, busybox) = BUSYBOX
        .iter()
        .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
        .unwrap_or_else(|| panic!("no busybox at {BUSYBOX:?}: install busybox-static"));
    if let Some(problem) = static_elf_problem(&busybox) {
        panic!("{path} is {problem}: install busybox-static");
    }
    let checker = std::fs::read(checker).unwrap_or_else(|e| panic!("{}: {e}", checker.display()));
    archive(&busybox, &checker, &INIT.replace("@ARGS@", checker_args))
}

/// Builds the checker and the initramfs for `checker_args` and writes it to
/// `<target dir>/lab/guest-initramfs-<hash of the arguments>.cpio`.
pub fn write_linux_initramfs(checker_args: &str) -> PathBuf {
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    let hash = checker_args
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let image = linux_initramfs(&static_guest_check(), checker_args);
    let path = lab_dir().join(format!("guest-initramfs-{hash:016x}.cpio"));
    write_atomically(&path, &image);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back from an archive.
    #[derive(Debug)]
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Every entry of a newc archive, up to and including the trailer (which must end it).
    fn read_cpio(mut rest: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert!(rest.len() >= 110, "truncated header at offset {at}");
            assert_eq!(&rest[..6], b"070701", "bad magic at offset {at}");
            let field = |k: usize| {
                let hex = std::str::from_utf8(&rest[6 + 8 * k..14 + 8 * k]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&rest[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(
                rest[110 + namesize - 1],
                0,
                "name of {name} not NUL-terminated"
            );
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = rest[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            let last = name == "TRAILER!!!";
            entries.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
            rest = &rest[next..];
            at += next;
            if last {
                assert!(rest.is_empty(), "{} bytes after the trailer", rest.len());
                return entries;
            }
        }
    }

    /// The entry called `name`.
    fn entry<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {entries:?}"))
    }

    #[test]
    fn archive_holds_the_guest_files() {
        let init = INIT.replace("@ARGS@", "--expect-cpus 4 --expect-node 0=0,2");
        let image = archive(b"fake busybox", b"fake checker!", &init);
        assert_eq!(image.len() % 4, 0);
        let entries = read_cpio(&image);
        let find = |name| entry(&entries, name);
        for dir in ["dev", "proc", "sys", "tmp", "bin"] {
            assert_eq!(find(dir).mode, 0o040_755, "{dir}");
        }
        assert_eq!(
            (find("dev/console").mode, find("dev/console").rdev),
            (0o020_600, (5, 1))
        );
        assert_eq!(find("bin/busybox").data, b"fake busybox");
        assert_eq!(find("bin/ssi-guest-check").data, b"fake checker!");
        assert_eq!(find("bin/ssi-guest-check").mode, 0o100_755);
        let script = String::from_utf8(find("init").data.clone()).unwrap();
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.contains(
            "/bin/ssi-guest-check --expect-cpus 4 --expect-node 0=0,2 --status-port --poweroff"
        ));
        assert_eq!(entries.last().unwrap().name, "TRAILER!!!");
    }

    #[test]
    fn initramfs_takes_the_host_busybox_and_the_checker() {
        let dir = std::env::temp_dir().join(format!("ssi-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("checker");
        std::fs::write(&fake, b"not really a checker").unwrap();
        let entries = read_cpio(&linux_initramfs(&fake, "--expect-cpus 2"));
        let busybox = &entry(&entries, "bin/busybox").data;
        assert_eq!(static_elf_problem(busybox), None);
        let checker = &entry(&entries, "bin/ssi-guest-check").data;
        assert_eq!(checker, b"not really a checker");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn written_initramfs_is_named_for_its_arguments() {
        let a = write_linux_initramfs("--expect-cpus 2 --rounds 10");
        let b = write_linux_initramfs("--expect-cpus 2 --rounds 20");
        assert_ne!(a, b);
        let entries = read_cpio(&std::fs::read(&a).unwrap());
        let checker = &entry(&entries, "bin/ssi-guest-check").data;
        assert_eq!(static_elf_problem(checker), None);
        let init = &entry(&entries, "init").data;
        assert!(String::from_utf8_lossy(init).contains("--rounds 10 --status-port"));
    }

    #[test]
    fn elf_check_tells_static_from_dynamic() {
        assert_eq!(
            static_elf_problem(b"#!/bin/sh\n"),
            Some("not an x86_64 ELF executable")
        );
        let this_test = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            static_elf_problem(&this_test),
            Some("dynamically linked (has PT_INTERP)")
        );
    }

    #[test]
    fn static_checker_builds_and_checks_this_host() {
        let bin = static_guest_check();
        let cpus = std::thread::available_parallelism().unwrap().get();
        // The checker passes only where every online CPU is ours (no cpuset or taskset
        // restriction); elsewhere it must fail, and say so in one verdict line.
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let whole_host =
            online.trim() == format!("0-{}", cpus - 1) || (cpus == 1 && online.trim() == "0");
        let out = Command::new(&bin)
            .args([
                "--expect-cpus",
                &cpus.to_string(),
                "--rounds",
                "200",
                "--timeout",
                "60",
            ])
            .output()
            .expect("run ssi-guest-check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let verdicts: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("SSI-GUEST-CHECK"))
            .collect();
        let want = if whole_host {
            ("SSI-GUEST-CHECK PASS cpus=", 0)
        } else {
            ("SSI-GUEST-CHECK FAIL", 1)
        };
        assert!(
            out.status.code() == Some(want.1)
                && verdicts.len() == 1
                && verdicts[0].starts_with(want.0),
            "{} on a host with CPUs {} online and {cpus} usable: {}\n{stdout}{}",
            bin.display(),
            online.trim(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let wrong = Command::new(&bin)
            .args(["--expect-cpus", "9999"])
            .output()
            .unwrap();
        assert_eq!(
            wrong.status.code(),
            Some(2),
            "out-of-range --expect-cpus must be a usage error"
        );
    }
}
