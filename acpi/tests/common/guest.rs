//! Booting a real Linux under QEMU (TCG) with our SRAT/SLIT/HMAT and collecting what it reports:
//! a newc initramfs written here (busybox + an init script), QEMU run with a deadline, and the
//! init script's `@@` lines parsed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the guest's init printed.
#[derive(Debug, Default)]
pub struct GuestView {
    /// node id → distances to every online node, in node-id order.
    pub distance: BTreeMap<u32, Vec<u8>>,
    /// node id → cpulist text.
    pub cpulist: BTreeMap<u32, String>,
    /// (node id, access class) → initiator node ids.
    pub initiators: BTreeMap<(u32, String), Vec<u32>>,
    /// (node id, access class, attribute) → value.
    pub access: BTreeMap<(u32, String, String), u64>,
    /// cpu number → node id.
    pub cpu_node: BTreeMap<u32, u32>,
    /// dmesg lines mentioning ACPI tables, SRAT/SLIT/HMAT/NUMA.
    pub dmesg: Vec<String>,
    /// /sys/firmware/acpi/tables/<signature> as the guest exports them.
    pub tables: BTreeMap<String, Vec<u8>>,
    /// The whole console output, for failure messages.
    pub console: String,
    /// Wall time from QEMU start to exit.
    pub boot_time: Duration,
}

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
echo "@@BEGIN"
for n in /sys/devices/system/node/node[0-9]*; do
  id=${n##*/node}
  echo "@@DISTANCE $id $($B cat $n/distance)"
  echo "@@CPULIST $id $($B cat $n/cpulist)"
  for a in access0 access1; do
    d=$n/$a/initiators
    if [ -d $d ]; then
      echo "@@INITIATORS $id $a $(cd $d && $B ls -d node* 2>/dev/null | $B tr '\n' ' ')"
      for f in read_latency write_latency read_bandwidth write_bandwidth; do
        if [ -f $d/$f ]; then echo "@@ACCESS $id $a $f $($B cat $d/$f)"; fi
      done
    fi
  done
done
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  echo "@@CPU ${c##*/cpu} $(cd $c && $B ls -d node* 2>/dev/null)"
done
for t in SRAT SLIT HMAT APIC FACP DSDT; do
  f=/sys/firmware/acpi/tables/$t
  if [ -f $f ]; then echo "@@TABLE $t $($B od -An -tx1 -v $f | $B tr -d ' \n')"; fi
done
$B dmesg | $B grep -iE 'srat|slit|hmat|numa|acpi: (rsdp|xsdt|facp|dsdt|apic)' | $B sed 's/^/@@DMESG /'
echo "@@END"
$B reboot -f
"#;

/// Appends one newc cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len(),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize,
        0, // check
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// A newc initramfs holding busybox, /init and /dev/console.
pub fn initramfs(busybox: &[u8]) -> Vec<u8> {
    const DIR: u32 = 0o040_755;
    const EXEC: u32 = 0o100_755;
    const CHR: u32 = 0o020_600;
    let mut out = Vec::with_capacity(busybox.len() + 4096);
    let mut ino = 1;
    for dir in ["bin", "dev", "proc", "sys"] {
        cpio_entry(&mut out, ino, dir, DIR, (0, 0), &[]);
        ino += 1;
    }
    cpio_entry(&mut out, ino, "dev/console", CHR, (5, 1), &[]);
    cpio_entry(&mut out, ino + 1, "bin/busybox", EXEC, (0, 0), busybox);
    cpio_entry(&mut out, ino + 2, "init", EXEC, (0, 0), INIT.as_bytes());
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// Whether an ELF file has a PT_INTERP program header (is dynamically linked).
pub fn is_dynamic_elf(bytes: &[u8]) -> bool {
    let rd16 = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return true;
    }
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (rd16(0x36), rd16(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        bytes.len() >= o + 4 && u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3
    })
}

/// The guest kernel: $SSI_DP_GUEST_KERNEL, else the newest /boot/vmlinuz-*.
pub fn find_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSI_DP_GUEST_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The kernel config next to `kernel` (/boot/config-<version>), if present.
pub fn kernel_config(kernel: &Path) -> Option<String> {
    let name = kernel.file_name()?.to_str()?;
    let version = name.strip_prefix("vmlinuz-")?;
    std::fs::read_to_string(kernel.with_file_name(format!("config-{version}"))).ok()
}

/// Finds an executable in $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// How to hand the tables to the guest.
pub enum Tables<'a> {
    /// Extra tables added to QEMU's own with `-acpitable file=...` (SRAT, SLIT, HMAT).
    Added(&'a [PathBuf]),
    /// Our whole set (RSDP first) loaded as raw bytes at `gpa`, the kernel told the RSDP's
    /// address with `acpi_rsdp=` and the range reserved with `memmap=`.
    Whole {
        /// The image file.
        image: &'a Path,
        /// Where it is loaded (the RSDP's address).
        gpa: u64,
        /// Its length.
        len: u64,
    },
}

/// Boots the kernel with our tables and returns what init saw. The guest reboots when done,
/// which with `-no-reboot` ends QEMU (this works whether or not the tables offer ACPI S5).
pub fn boot(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    tables: Tables<'_>,
    mem_mib: u64,
    cpus: usize,
    deadline: Duration,
) -> Result<GuestView, String> {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-machine",
        "q35,accel=tcg",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
    .args(["-no-reboot", "-net", "none"])
    .arg("-m")
    .arg(format!("{mem_mib}M"))
    .arg("-smp")
    .arg(cpus.to_string())
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd);
    let mut append = String::from("console=ttyS0 rdinit=/init panic=-1 quiet");
    match tables {
        Tables::Added(files) => {
            for t in files {
                cmd.arg("-acpitable").arg(format!("file={}", t.display()));
            }
        }
        Tables::Whole { image, gpa, len } => {
            cmd.arg("-device").arg(format!(
                "loader,file={},addr={gpa:#x},force-raw=on",
                image.display()
            ));
            let reserved = len.next_multiple_of(4096);
            // A hardware-reduced platform has no PM timer or HPET to calibrate the TSC against,
            // and TCG has no kvm-clock to announce its frequency (as KVM guests get): state one.
            append.push_str(&format!(
                " acpi_rsdp={gpa:#x} memmap={reserved:#x}${gpa:#x} tsc_early_khz=2000000"
            ));
        }
    }
    cmd.arg("-append").arg(append);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).ok();
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).ok();
        buf
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(None) | Err(_) => {
                child.kill().ok();
                child.wait().ok();
                break None;
            }
        }
    };
    let boot_time = start.elapsed();
    let console = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let errors = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let Some(status) = status else {
        return Err(format!(
            "QEMU did not finish within {deadline:?}; killed it. stderr:\n{errors}\nconsole:\n{console}"
        ));
    };
    if !console.contains("@@END") {
        return Err(format!(
            "the guest did not finish its report (QEMU {status}). stderr:\n{errors}\nconsole:\n{console}"
        ));
    }
    let mut view = parse(&console);
    view.boot_time = boot_time;
    Ok(view)
}

fn parse(console: &str) -> GuestView {
    let mut v = GuestView {
        console: console.to_owned(),
        ..GuestView::default()
    };
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        let Some(at) = line.find("@@") else { continue };
        let line = &line[at + 2..];
        let mut words = line.split_whitespace();
        match words.next() {
            Some("DISTANCE") => {
                let node = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(u32::MAX);
                v.distance
                    .insert(node, words.filter_map(|w| w.parse().ok()).collect());
            }
            Some("CPULIST") => {
                let node = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(u32::MAX);
                v.cpulist
                    .insert(node, words.next().unwrap_or_default().to_owned());
            }
            Some("INITIATORS") => {
                let node = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(u32::MAX);
                let class = words.next().unwrap_or_default().to_owned();
                let ids = words
                    .filter_map(|w| w.strip_prefix("node").and_then(|n| n.parse().ok()))
                    .collect();
                v.initiators.insert((node, class), ids);
            }
            Some("ACCESS") => {
                let node = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(u32::MAX);
                let class = words.next().unwrap_or_default().to_owned();
                let attr = words.next().unwrap_or_default().to_owned();
                if let Some(value) = words.next().and_then(|w| w.parse().ok()) {
                    v.access.insert((node, class, attr), value);
                }
            }
            Some("CPU") => {
                let cpu = words.next().and_then(|w| w.parse().ok());
                let node = words
                    .next()
                    .and_then(|w| w.strip_prefix("node"))
                    .and_then(|n| n.parse().ok());
                if let (Some(cpu), Some(node)) = (cpu, node) {
                    v.cpu_node.insert(cpu, node);
                }
            }
            Some("DMESG") => v.dmesg.push(line["DMESG ".len()..].to_owned()),
            Some("TABLE") => {
                let sig = words.next().unwrap_or_default().to_owned();
                let hex = words.next().unwrap_or_default();
                let bytes = (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect();
                v.tables.insert(sig, bytes);
            }
            _ => {}
        }
    }
    v
}
