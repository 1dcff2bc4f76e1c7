//! The Linux boot path: loading a kernel (PVH `vmlinux`, or a bzImage through its 64-bit entry
//! or through the PVH entry of the vmlinux inside it), the initrd, the command line, the
//! memory map, the ACPI tables from `acpi`, and the boot vCPU's initial state.
//!
//! Layout: see [`crate::layout::linux`]. RAM starts at GPA 0 and ends below the MMIO hole at
//! 3 GiB. Memory map: RAM `[0, EBDA)`, reserved `[EBDA, 1 MiB)` (EBDA, VGA hole, BIOS area with
//! the RSDP and tables at 0xE0000), RAM `[1 MiB, end)`.

pub mod extract;
pub mod lz4;

use std::io::Cursor;

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{ByteValued, GuestAddress};

use crate::cpu::{self, Boot, CpuMode};
use crate::layout::linux as l;
use crate::layout::PAGE_SIZE;
use crate::memory::{GuestMemory, MemoryError};
use crate::paging::{PTE_P, PTE_PS, PTE_RW};

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// `setup_header.type_of_loader` for an undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry from the protected-mode kernel's load address.
const BZIMAGE_ENTRY64: u64 = 0x200;

/// Why a kernel could not be loaded. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// Guest RAM unsuitable.
    #[error(
        "Linux guests need RAM at GPA 0 of {min:#x}..{max:#x} bytes (got [{base:#x}, +{size:#x})): \
         adjust the region"
    )]
    Ram {
        /// RAM base.
        base: u64,
        /// RAM size.
        size: u64,
        /// Minimum size.
        min: u64,
        /// Maximum size.
        max: u64,
    },
    /// The image is neither an ELF nor a bzImage.
    #[error("the kernel is neither a vmlinux ELF nor a bzImage: pass a Linux kernel image")]
    UnknownImage,
    /// The vmlinux has no PVH entry.
    #[error("the vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build with CONFIG_PVH=y or boot the bzImage")]
    NoPvh,
    /// Extracting the vmlinux failed.
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    /// linux-loader refused the image.
    #[error("loading the kernel failed: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// The command line is too long or malformed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The initrd does not fit.
    #[error("the initrd of {len:#x} bytes does not fit between the kernel end {kernel_end:#x} and {limit:#x}: give the guest more RAM")]
    Initrd {
        /// Initrd size.
        len: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Top of the initrd area.
        limit: u64,
    },
    /// The ACPI tables could not be placed.
    #[error("placing the ACPI tables: {0}")]
    Acpi(String),
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Which entry to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The PVH entry (32-bit protected mode, paging off, RBX = start info).
    Pvh,
    /// The bzImage 64-bit entry (long mode, identity paging, RSI = zero page).
    BzImage64,
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct LinuxConfig<'a> {
    /// A vmlinux ELF or a bzImage.
    pub kernel: &'a [u8],
    /// The initrd, if any.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The RSDP and tables (from `acpi`), if any.
    pub acpi: Option<&'a acpi::AcpiImage>,
    /// Entry to use. A bzImage with `Pvh` is booted through the vmlinux inside it.
    pub protocol: Protocol,
}

/// A loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    /// How the boot vCPU starts.
    pub boot: Boot,
    /// The entry used.
    pub protocol: Protocol,
    /// First byte of the kernel.
    pub kernel_load: u64,
    /// One past the kernel's last byte.
    pub kernel_end: u64,
    /// Initrd `(gpa, len)`.
    pub initrd: Option<(u64, u64)>,
    /// RSDP GPA (0 without ACPI).
    pub rsdp: u64,
}

/// The e820 map of `ram_size` bytes of RAM at 0.
pub fn e820_map(ram_size: u64) -> Vec<(u64, u64, u32)> {
    vec![
        (0, l::EBDA_START, E820_RAM),
        (l::EBDA_START, l::HIGH_MEMORY - l::EBDA_START, E820_RESERVED),
        (l::HIGH_MEMORY, ram_size - l::HIGH_MEMORY, E820_RAM),
    ]
}

/// The PVH start info for the layout.
pub fn pvh_start_info(memmap_entries: u32, initrd: bool, rsdp: u64) -> hvm_start_info {
    hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(initrd),
        modlist_paddr: if initrd { l::PVH_MODLIST } else { 0 },
        cmdline_paddr: l::CMDLINE,
        rsdp_paddr: rsdp,
        memmap_paddr: l::PVH_MEMMAP,
        memmap_entries,
        reserved: 0,
    }
}

/// The zero page for a bzImage whose setup header is `hdr`.
pub fn zero_page(
    hdr: &setup_header,
    ram_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> boot_params {
    let mut p = boot_params {
        hdr: *hdr,
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.boot_flag = 0xaa55;
    p.hdr.header = u32::from_le_bytes(*b"HdrS");
    p.hdr.cmd_line_ptr = l::CMDLINE as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((gpa, len)) = initrd {
        p.hdr.ramdisk_image = gpa as u32;
        p.hdr.ramdisk_size = len as u32;
    }
    for (k, (addr, size, kind)) in e820_map(ram_size).into_iter().enumerate() {
        p.e820_table[k] = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
        p.e820_entries = (k + 1) as u8;
    }
    p.acpi_rsdp_addr = rsdp;
    p
}

/// Whether `kernel` is an image [`load`] takes: a vmlinux ELF or a bzImage. A node checks this
/// before it joins a cluster; the rest (PVH note, payload) is checked when it is loaded.
pub fn check_image(kernel: &[u8]) -> Result<(), LinuxError> {
    if kernel.starts_with(b"\x7fELF") || extract::is_bzimage(kernel) {
        Ok(())
    } else {
        Err(LinuxError::UnknownImage)
    }
}

/// Loads the kernel, initrd, command line, memory map and ACPI tables into `mem` and returns
/// the boot vCPU's state. Writes guest memory: run on one node only.
pub fn load(mem: &GuestMemory, cfg: &LinuxConfig<'_>) -> Result<LinuxBoot, LinuxError> {
    let size = mem.size() as u64;
    if mem.gpa_base() != 0 || !(l::MIN_RAM..=l::MMIO_HOLE).contains(&size) {
        return Err(LinuxError::Ram {
            base: mem.gpa_base(),
            size,
            min: l::MIN_RAM,
            max: l::MMIO_HOLE,
        });
    }
    check_image(cfg.kernel)?;
    let is_elf = cfg.kernel.starts_with(b"\x7fELF");
    cpu::write_gdt(mem, l::BOOT_GDT, l::BOOT_TSS)?;
    let mut cmdline =
        Cmdline::new(l::CMDLINE_MAX).map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(cfg.cmdline)
        .map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    load_cmdline(mem.mmap(), GuestAddress(l::CMDLINE), &cmdline)?;
    let cmdline_len = cfg.cmdline.len();
    let rsdp = match cfg.acpi {
        Some(image) => {
            for (gpa, bytes) in image.chunks() {
                if !(gpa >= l::EBDA_START && gpa + bytes.len() as u64 <= l::HIGH_MEMORY) {
                    return Err(LinuxError::Acpi(format!(
                        "{gpa:#x}+{:#x} is outside the reserved BIOS area: use Placement::BIOS_AREA",
                        bytes.len()
                    )));
                }
                mem.write(gpa, bytes)?;
            }
            image.rsdp_gpa
        }
        None => 0,
    };
    let (protocol, result, setup_hdr) = if cfg.protocol == Protocol::Pvh || is_elf {
        let owned;
        let elf: &[u8] = if is_elf {
            cfg.kernel
        } else {
            owned = extract::vmlinux(cfg.kernel)?;
            &owned
        };
        let r = Elf::load(
            mem.mmap(),
            None,
            &mut Cursor::new(elf),
            Some(GuestAddress(l::HIGH_MEMORY)),
        )?;
        (Protocol::Pvh, r, None)
    } else {
        let r = BzImage::load(
            mem.mmap(),
            None,
            &mut Cursor::new(cfg.kernel),
            Some(GuestAddress(l::HIGH_MEMORY)),
        )?;
        let hdr = r.setup_header;
        (Protocol::BzImage64, r, hdr)
    };
    let kernel_load = result.kernel_load.0;
    let kernel_end = result.kernel_end;
    let initrd = match cfg.initrd {
        Some(data) => {
            let len = data.len() as u64;
            let limit = size.min(l::MMIO_HOLE);
            let gpa = limit
                .checked_sub(len)
                .map(|g| g / PAGE_SIZE * PAGE_SIZE)
                .filter(|&g| g >= kernel_end.next_multiple_of(PAGE_SIZE))
                .ok_or(LinuxError::Initrd {
                    len,
                    kernel_end,
                    limit,
                })?;
            mem.write(gpa, data)?;
            Some((gpa, len))
        }
        None => None,
    };
    let boot = match protocol {
        Protocol::Pvh => {
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => a.0,
                _ => return Err(LinuxError::NoPvh),
            };
            let map = e820_map(size);
            for (k, (addr, len, kind)) in map.iter().enumerate() {
                let e = hvm_memmap_table_entry {
                    addr: *addr,
                    size: *len,
                    type_: *kind,
                    reserved: 0,
                };
                mem.write(
                    l::PVH_MEMMAP + (k * std::mem::size_of_val(&e)) as u64,
                    e.as_slice(),
                )?;
            }
            if let Some((gpa, len)) = initrd {
                let m = hvm_modlist_entry {
                    paddr: gpa,
                    size: len,
                    cmdline_paddr: 0,
                    reserved: 0,
                };
                mem.write(l::PVH_MODLIST, m.as_slice())?;
            }
            let info = pvh_start_info(map.len() as u32, initrd.is_some(), rsdp);
            mem.write(l::PVH_START_INFO, info.as_slice())?;
            Boot {
                mode: CpuMode::Protected32,
                entry,
                cr3: 0,
                gdt_gpa: l::BOOT_GDT,
                tss_gpa: l::BOOT_TSS,
                stack_top: l::BOOT_STACK,
                stack_stride: 0,
                rsi: 0,
                rbx: l::PVH_START_INFO,
            }
        }
        Protocol::BzImage64 => {
            let hdr = setup_hdr.ok_or(LinuxError::UnknownImage)?;
            let params = zero_page(&hdr, size, cmdline_len, initrd, rsdp);
            mem.write(l::ZERO_PAGE, params.as_slice())?;
            write_boot_page_tables(mem)?;
            Boot {
                mode: CpuMode::LongKernel,
                entry: kernel_load + BZIMAGE_ENTRY64,
                cr3: l::BOOT_PML4,
                gdt_gpa: l::BOOT_GDT,
                tss_gpa: l::BOOT_TSS,
                stack_top: l::BOOT_STACK,
                stack_stride: 0,
                rsi: l::ZERO_PAGE,
                rbx: 0,
            }
        }
    };
    Ok(LinuxBoot {
        boot,
        protocol,
        kernel_load,
        kernel_end,
        initrd,
        rsdp,
    })
}

/// Identity map of the first GiB (2 MiB pages) for the 64-bit bzImage entry.
fn write_boot_page_tables(mem: &GuestMemory) -> Result<(), MemoryError> {
    let (pml4, pdpt, pd) = (
        l::BOOT_PML4,
        l::BOOT_PML4 + PAGE_SIZE,
        l::BOOT_PML4 + 2 * PAGE_SIZE,
    );
    mem.write_u64(pml4, pdpt | PTE_P | PTE_RW)?;
    mem.write_u64(pdpt, pd | PTE_P | PTE_RW)?;
    for i in 0..512u64 {
        mem.write_u64(pd + 8 * i, (i << 21) | PTE_P | PTE_RW | PTE_PS)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_matches_the_layout() {
        let map = e820_map(256 << 20);
        assert_eq!(map[0], (0, l::EBDA_START, E820_RAM));
        assert_eq!(map[1].0 + map[1].1, l::HIGH_MEMORY);
        assert_eq!(map[1].2, E820_RESERVED);
        assert_eq!(
            map[2],
            (l::HIGH_MEMORY, (256 << 20) - l::HIGH_MEMORY, E820_RAM)
        );
        // Every fixed boot structure lies in usable RAM below the EBDA; ACPI in reserved.
        for gpa in [
            l::BOOT_GDT,
            l::BOOT_TSS,
            l::PVH_START_INFO,
            l::PVH_MODLIST,
            l::ZERO_PAGE,
            l::BOOT_PML4,
            l::CMDLINE,
        ] {
            assert!(gpa < l::EBDA_START, "{gpa:#x}");
        }
        assert!(l::CMDLINE + l::CMDLINE_MAX as u64 <= l::EBDA_START);
        assert!(l::ACPI_AREA >= map[1].0 && l::ACPI_AREA < l::HIGH_MEMORY);
        assert!(l::PVH_MEMMAP + (l::MAX_E820_ENTRIES * 24) as u64 <= l::PVH_MODLIST);
    }

    #[test]
    fn pvh_start_info_points_at_the_layout() {
        let s = pvh_start_info(3, true, 0xe0000);
        assert_eq!(s.magic, PVH_MAGIC);
        assert_eq!(s.version, 1);
        assert_eq!((s.nr_modules, s.modlist_paddr), (1, l::PVH_MODLIST));
        assert_eq!(s.cmdline_paddr, l::CMDLINE);
        assert_eq!((s.memmap_paddr, s.memmap_entries), (l::PVH_MEMMAP, 3));
        assert_eq!(s.rsdp_paddr, 0xe0000);
        let s = pvh_start_info(3, false, 0);
        assert_eq!((s.nr_modules, s.modlist_paddr, s.rsdp_paddr), (0, 0, 0));
    }

    #[test]
    fn zero_page_fields_follow_the_boot_protocol() {
        let hdr = setup_header {
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let p = zero_page(&hdr, 512 << 20, 42, Some((0x1f00_0000, 0x10_0000)), 0xe0000);
        let b = p.as_slice();
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(0x202), u32::from_le_bytes(*b"HdrS"));
        assert_eq!(u16::from_le_bytes([b[0x1fe], b[0x1ff]]), 0xaa55);
        assert_eq!(b[0x210], LOADER_UNDEFINED);
        assert_eq!(u32_at(0x228), l::CMDLINE as u32);
        assert_eq!(u32_at(0x238), 42);
        assert_eq!((u32_at(0x218), u32_at(0x21c)), (0x1f00_0000, 0x10_0000));
        assert_eq!(
            u64::from_le_bytes(b[0x70..0x78].try_into().unwrap()),
            0xe0000
        );
        assert_eq!(b[0x1e8], 3, "e820 entries");
        let entry = |k: usize| {
            let o = 0x2d0 + 20 * k;
            (
                u64::from_le_bytes(b[o..o + 8].try_into().unwrap()),
                u64::from_le_bytes(b[o + 8..o + 16].try_into().unwrap()),
                u32_at(o + 16),
            )
        };
        for (k, e) in e820_map(512 << 20).into_iter().enumerate() {
            assert_eq!(entry(k), e);
        }
        assert_eq!(
            u32_at(0x230),
            0x20_0000,
            "kernel_alignment kept from the image"
        );
    }

    #[test]
    fn ram_outside_the_linux_layout_is_refused() {
        let cfg = LinuxConfig {
            kernel: b"\x7fELF",
            initrd: None,
            cmdline: "",
            acpi: None,
            protocol: Protocol::Pvh,
        };
        let small = GuestMemory::anonymous(32 << 20, 0).unwrap();
        assert!(matches!(load(&small, &cfg), Err(LinuxError::Ram { .. })));
        let based = GuestMemory::anonymous(64 << 20, 1 << 30).unwrap();
        assert!(matches!(load(&based, &cfg), Err(LinuxError::Ram { .. })));
        let mem = GuestMemory::anonymous(64 << 20, 0).unwrap();
        let junk = LinuxConfig {
            kernel: b"junk",
            ..cfg
        };
        assert!(matches!(load(&mem, &junk), Err(LinuxError::UnknownImage)));
    }
}
