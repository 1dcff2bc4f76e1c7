//! The Linux boot path with the real Debian cloud kernel (`apt-get install
//! linux-image-cloud-amd64`, used by these tests only):
//!
//! * the vmlinux is extracted from the LZ4 bzImage and has a PVH entry, and from the zstd
//!   bzImage of Debian's generic 6.12 kernel (unpacked by `scripts/lab fetch`);
//! * the PVH start info, memory map, command line, initrd module and RSDP written into guest
//!   memory match the layout;
//! * the bzImage 64-bit path's zero page, e820 table, command line, initrd and entry state
//!   match the layout;
//! * on this host's (PVM) KVM, the kernel booted through PVH prints its version banner on our
//!   16550 within the time budget (see docs/vmm.md for how far it gets after that, and why).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::layout::linux as l;
use vmm::linux::{self, LinuxConfig, Protocol};
use vmm::{Console, CpuMode, GuestMemory, Outcome};

const RAM: usize = 256 << 20;
const BANNER_BUDGET: Duration = Duration::from_secs(150);

fn debian_kernel() -> (PathBuf, Vec<u8>) {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
    });
    found.sort();
    let path = found.pop().unwrap_or_else(|| {
        panic!("no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64")
    });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (path, bytes)
}

fn acpi(ram: usize) -> acpi::AcpiImage {
    let layout = format!("0:mem=0-{}M:cpus=0", ram >> 20);
    let topology = acpi::parse_topology(&acpi::SpecArgs {
        layout: &layout,
        latency_ns: Some("400"),
        bandwidth_mbps: Some("20000"),
        ..Default::default()
    })
    .unwrap();
    acpi::tables(&topology)
        .image(acpi::Placement::BIOS_AREA)
        .unwrap()
}

fn read<const N: usize>(mem: &GuestMemory, gpa: u64) -> [u8; N] {
    let mut b = [0u8; N];
    mem.read(gpa, &mut b).unwrap();
    b
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn cstr_at(mem: &GuestMemory, gpa: u64) -> String {
    let b: [u8; 512] = read(mem, gpa);
    let end = b.iter().position(|&c| c == 0).expect("NUL-terminated");
    String::from_utf8(b[..end].to_vec()).unwrap()
}

#[test]
fn debian_bzimage_holds_a_pvh_vmlinux() {
    let (path, image) = debian_kernel();
    let (_, compression) = linux::extract::payload(&image).unwrap();
    let elf = linux::extract::vmlinux(&image).unwrap();
    assert!(
        elf.len() > image.len(),
        "{}: {compression:?} payload decompressed",
        path.display()
    );
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
}

/// Debian's generic 6.12 kernel (the one `scripts/lab fetch` unpacks for `--rdma` runs) is
/// zstd-compressed by `zstd -22 --ultra`, whose frame asks for a 128 MiB window.
#[test]
fn debian_zstd_bzimage_decompresses() {
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(top.join("target"), PathBuf::from);
    let lab = std::env::var_os("LAB_DIR").map_or(target.join("lab"), PathBuf::from);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lab)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("linux-image-6.12.") && n.ends_with("-amd64-unsigned"))
    });
    found.sort();
    let tree = found.pop().unwrap_or_else(|| {
        panic!(
            "no linux-image-6.12.*-amd64-unsigned under {}: run scripts/lab fetch",
            lab.display()
        )
    });
    let boot = tree.join("boot");
    let path = std::fs::read_dir(&boot)
        .unwrap_or_else(|e| panic!("{}: {e}", boot.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or_else(|| panic!("no vmlinuz-* in {}", boot.display()));
    let image = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (data, compression) = linux::extract::payload(&image).unwrap();
    assert_eq!(compression, linux::extract::Compression::Zstd);
    let elf = linux::extract::vmlinux(&image).unwrap();
    // The payload ends with the uncompressed size (the kernel's size_append).
    let size = u32_at(data, data.len() - 4) as usize;
    assert_eq!(elf.len(), size, "{}", path.display());
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
}

#[test]
fn pvh_boot_structures_match_the_layout() {
    let (_, image) = debian_kernel();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let initrd: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let acpi = acpi(RAM);
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 quiet";
    let boot = linux::load(
        &mem,
        &LinuxConfig {
            kernel: &image,
            initrd: Some(&initrd),
            cmdline,
            acpi: Some(&acpi),
            protocol: Protocol::Pvh,
        },
    )
    .unwrap();
    assert_eq!(boot.protocol, Protocol::Pvh);
    assert_eq!(boot.boot.mode, CpuMode::Protected32);
    assert!(boot.boot.entry >= boot.kernel_load && boot.boot.entry < boot.kernel_end);
    assert_eq!(boot.boot.rbx, l::PVH_START_INFO);
    let si: [u8; 56] = read(&mem, l::PVH_START_INFO);
    assert_eq!(u32_at(&si, 0), linux::PVH_MAGIC);
    assert_eq!(u32_at(&si, 4), 1, "version");
    assert_eq!(u32_at(&si, 12), 1, "one module: the initrd");
    let (modlist, cmd, rsdp, memmap, entries) = (
        u64_at(&si, 16),
        u64_at(&si, 24),
        u64_at(&si, 32),
        u64_at(&si, 40),
        u32_at(&si, 48),
    );
    assert_eq!(cstr_at(&mem, cmd), cmdline);
    let rsdp_bytes: [u8; 8] = read(&mem, rsdp);
    assert_eq!(&rsdp_bytes, b"RSD PTR ");
    assert_eq!(rsdp, boot.rsdp);
    let map = linux::e820_map(RAM as u64);
    assert_eq!(entries as usize, map.len());
    for (k, (addr, size, kind)) in map.iter().enumerate() {
        let e: [u8; 24] = read(&mem, memmap + 24 * k as u64);
        assert_eq!(
            (u64_at(&e, 0), u64_at(&e, 8), u32_at(&e, 16)),
            (*addr, *size, *kind)
        );
    }
    // Kernel in RAM above 1 MiB; initrd page aligned at the top of RAM, content intact.
    assert!(map[2].0 <= boot.kernel_load && boot.kernel_end <= RAM as u64);
    let m: [u8; 32] = read(&mem, modlist);
    let (initrd_gpa, initrd_len) = (u64_at(&m, 0), u64_at(&m, 8));
    assert_eq!(Some((initrd_gpa, initrd_len)), boot.initrd);
    assert_eq!(initrd_len, initrd.len() as u64);
    assert_eq!(initrd_gpa % 4096, 0);
    assert!(initrd_gpa >= boot.kernel_end && initrd_gpa + initrd_len <= RAM as u64);
    let mut back = vec![0u8; initrd.len()];
    mem.read(initrd_gpa, &mut back).unwrap();
    assert_eq!(back, initrd);
}

#[test]
fn bzimage_64bit_boot_structures_match_the_layout() {
    let (_, image) = debian_kernel();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let initrd = vec![0x5au8; 12_345];
    let acpi = acpi(RAM);
    let cmdline = "console=ttyS0 root=/dev/vda";
    let boot = linux::load(
        &mem,
        &LinuxConfig {
            kernel: &image,
            initrd: Some(&initrd),
            cmdline,
            acpi: Some(&acpi),
            protocol: Protocol::BzImage64,
        },
    )
    .unwrap();
    assert_eq!(boot.protocol, Protocol::BzImage64);
    assert_eq!(boot.boot.mode, CpuMode::LongKernel);
    assert_eq!(boot.boot.entry, boot.kernel_load + 0x200);
    assert_eq!(boot.boot.rsi, l::ZERO_PAGE);
    let zp: [u8; 4096] = read(&mem, l::ZERO_PAGE);
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(u16::from_le_bytes([zp[0x1fe], zp[0x1ff]]), 0xaa55);
    assert!(
        u16::from_le_bytes([zp[0x206], zp[0x207]]) >= 0x20c,
        "boot protocol 2.12+"
    );
    assert_eq!(zp[0x210], 0xff, "type_of_loader");
    assert_eq!(u32_at(&zp, 0x228) as u64, l::CMDLINE);
    assert_eq!(cstr_at(&mem, l::CMDLINE), cmdline);
    assert_eq!(u32_at(&zp, 0x238) as usize, cmdline.len());
    let (rd, rd_len) = (u32_at(&zp, 0x218) as u64, u32_at(&zp, 0x21c) as u64);
    assert_eq!(Some((rd, rd_len)), boot.initrd);
    assert!(
        rd + rd_len <= u64::from(u32_at(&zp, 0x22c)) + 1,
        "below initrd_addr_max"
    );
    assert_eq!(u64_at(&zp, 0x70), acpi.rsdp_gpa);
    let map = linux::e820_map(RAM as u64);
    assert_eq!(zp[0x1e8] as usize, map.len());
    for (k, (addr, size, kind)) in map.iter().enumerate() {
        let o = 0x2d0 + 20 * k;
        assert_eq!(
            (u64_at(&zp, o), u64_at(&zp, o + 8), u32_at(&zp, o + 16)),
            (*addr, *size, *kind)
        );
    }
    // The 64-bit entry needs an identity map covering the kernel, zero page and command line.
    for va in [
        boot.boot.entry,
        l::ZERO_PAGE,
        l::CMDLINE,
        boot.kernel_end - 1,
    ] {
        let pa = vmm::paging::translate(&mem, boot.boot.cr3, va)
            .unwrap()
            .map(|(pa, _)| pa);
        assert_eq!(pa, Some(va), "{va:#x}");
    }
    let code: [u8; 4] = read(&mem, boot.boot.entry);
    assert_ne!(code, [0; 4], "kernel bytes at the 64-bit entry");
}

#[test]
fn debian_kernel_prints_its_banner_on_our_serial() {
    common::require_kvm();
    let (_, image) = debian_kernel();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let acpi = acpi(RAM);
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 noapic nolapic nosmp panic=-1";
    let dir = std::env::temp_dir().join(format!("vmm-banner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, &image).unwrap();
    let args = vmm::launch::LinuxArgs {
        kernel,
        initrd: None,
        cmdline: cmdline.to_string(),
        protocol: Protocol::Pvh,
    };
    let console = Console::new(false);
    let stop = Arc::new(AtomicBool::new(false));
    let (s, c) = (stop.clone(), console.clone());
    // Stop once the early console has printed the replayed log (banner, command line, e820
    // map) and announced itself.
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        let mut banner = None;
        while start.elapsed() < BANNER_BUDGET && !s.load(Ordering::Acquire) {
            if banner.is_none() && c.contains(b"Linux version") {
                banner = Some(start.elapsed());
            }
            if banner.is_some() && c.contains(b"bootconsole [earlyser0] enabled") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.store(true, Ordering::Release);
        banner
    });
    let run = vmm::launch::run_linux(&mem, &args, Some(&acpi), 1, &[], &stop, console.clone())
        .expect("the VM for Linux is set up");
    let reports = run.reports;
    stop.store(true, Ordering::Release);
    let seen = watcher.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&console.snapshot()).into_owned();
    let r = &reports[0];
    let Some(after) = seen else {
        panic!(
            "no banner within {BANNER_BUDGET:?}: outcome {:?}, exits {}, last rip {:#x}, serial output:\n{out}",
            r.outcome, r.exits, r.last_rip
        );
    };
    eprintln!("banner after {after:?} ({} exits)", r.exits);
    assert!(matches!(r.outcome, Outcome::Stopped), "{:?}", r.outcome);
    let line = out.lines().find(|l| l.contains("Linux version")).unwrap();
    assert!(line.contains("Linux version 6."), "{line}");
    assert!(out.contains(&format!("Command line: {cmdline}")), "{out}");
    assert!(
        out.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "{out}"
    );
}
