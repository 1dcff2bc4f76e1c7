//! Guest-physical memory layout: every fixed address the VMM uses, in one place.
//!
//! Two layouts share the same guest RAM (one contiguous host region mapped at `ram_base`):
//!
//! * [`TestLayout`]: the CPL3 test guests. Offsets are from the start of RAM, so with the
//!   usual `ram_base = 0` they are fixed GPAs. Everything the guest runs on (page tables, GDT,
//!   TSS, code, stacks, parameters) lives in the first 4 MiB; the data span the test guests
//!   spread their counters and arrays over starts at [`TEST_DATA_OFFSET`] and runs to the end
//!   of RAM, so on a cluster it covers the memory homed on every node. The doorbell page the
//!   guests write to report results sits in the first GiB-aligned hole after RAM: it is mapped
//!   by the guest page tables but backed by no memory slot, so each store is an MMIO exit.
//! * The Linux boot layout ([`linux`]): the below-1 MiB conventions (zero page, PVH start
//!   info, command line, EBDA and the BIOS area that holds the ACPI tables), the kernel at its
//!   ELF physical address and the initrd at the top of RAM below 4 GiB. It requires
//!   `ram_base = 0`, as the x86 boot protocols do.

/// Size of a small page.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large (PDE) page; test-guest page tables map RAM with these.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// One GiB: the span of one page directory.
pub const GIB: u64 = 1 << 30;

/// Offset of the GDT (null, kernel code/data, user data/code, TSS descriptor).
pub const TEST_GDT_OFFSET: u64 = 0x1000;
/// Offset of the 64-bit TSS (same page as the GDT).
pub const TEST_TSS_OFFSET: u64 = 0x1800;
/// Offset of the parameter block the test guests read (one page of little-endian u64s).
pub const TEST_PARAMS_OFFSET: u64 = 0x2000;
/// Offset of the synchronisation page (barrier counters, the ticket lock).
pub const TEST_SYNC_OFFSET: u64 = 0x3000;
/// Offset of the PML4; the PDPT follows, then one page directory per GiB of RAM.
pub const TEST_PAGE_TABLES_OFFSET: u64 = 0x10000;
/// Page directories available: the largest RAM a test guest can map, in GiB (the doorbell
/// takes one more directory).
pub const TEST_MAX_RAM_GIB: u64 = 62;
/// End of the page-table area.
pub const TEST_PAGE_TABLES_END: u64 = TEST_PAGE_TABLES_OFFSET + (3 + TEST_MAX_RAM_GIB) * PAGE_SIZE;
/// Offset where the payload code is copied.
pub const TEST_CODE_OFFSET: u64 = 0x10_0000;
/// Largest payload.
pub const TEST_CODE_MAX: u64 = 0x1_0000;
/// Offset of the first vCPU stack area; vCPU `i` uses `[i * STACK, (i + 1) * STACK)` from here.
pub const TEST_STACKS_OFFSET: u64 = 0x20_0000;
/// Stack bytes per vCPU.
pub const TEST_STACK_SIZE: u64 = 0x4000;
/// Most vCPUs a test guest supports (their stacks fill 1 MiB).
pub const TEST_MAX_VCPUS: u32 = 64;
/// Offset of the data span (counters, arrays, latency pages).
pub const TEST_DATA_OFFSET: u64 = 0x40_0000;
/// Smallest RAM a test guest accepts: the fixed area plus 4 MiB of data.
pub const TEST_MIN_RAM: u64 = TEST_DATA_OFFSET + (4 << 20);

/// Offsets of the doorbell registers (8-byte stores) in the doorbell page.
pub mod doorbell {
    /// Low byte: one console byte.
    pub const CONSOLE: u64 = 0x00;
    /// Latches the key of the next result.
    pub const KEY: u64 = 0x08;
    /// Records (latched key, value) as one result.
    pub const VALUE: u64 = 0x10;
    /// The vCPU is done; the value is its status (0 = success, else a guest failure code).
    pub const DONE: u64 = 0x18;
    /// Bytes of the doorbell window that decode to registers.
    pub const WINDOW: u64 = 0x20;
}

/// I/O ports carrying the same protocol as the doorbell (32-bit `out`), for guests that run
/// at CPL0 or on hosts that honour IOPL at CPL3 (hardware KVM). Port = BASE + offset / 8.
pub mod ports {
    /// First protocol port (console byte); KEY, VALUE and DONE follow.
    pub const BASE: u16 = 0x510;
    /// Ports in the range.
    pub const COUNT: u16 = 4;
    /// COM1 (the 16550 the Linux path emulates).
    pub const COM1: u16 = 0x3f8;
    /// Registers of a 16550.
    pub const COM_LEN: u16 = 8;
}

/// Errors for layouts that cannot hold what is asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// RAM too small.
    #[error("guest RAM of {size:#x} bytes is too small: the test guests need at least {min:#x}")]
    RamTooSmall {
        /// RAM size.
        size: u64,
        /// Minimum.
        min: u64,
    },
    /// RAM too large for the page tables.
    #[error(
        "guest RAM of {size:#x} bytes spans more than the {TEST_MAX_RAM_GIB} GiB the test page \
         tables map: give the test guest a smaller region"
    )]
    RamTooLarge {
        /// RAM size.
        size: u64,
    },
    /// Base or size not 2 MiB aligned.
    #[error(
        "guest RAM [{base:#x}, +{size:#x}) is not 2 MiB aligned: align base and size to 2 MiB"
    )]
    Misaligned {
        /// RAM base.
        base: u64,
        /// RAM size.
        size: u64,
    },
    /// RAM crosses the 512 GiB covered by one PML4 entry.
    #[error(
        "guest RAM [{base:#x}, +{size:#x}) plus the doorbell does not fit below 512 GiB: \
         use a lower base"
    )]
    TooHigh {
        /// RAM base.
        base: u64,
        /// RAM size.
        size: u64,
    },
    /// Too many vCPUs.
    #[error("{0} vCPUs asked but test guests support 1..={TEST_MAX_VCPUS}")]
    Vcpus(u32),
}

/// Where the test-guest pieces live for guest RAM `[ram_base, ram_base + ram_size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestLayout {
    /// First GPA of RAM.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
}

impl TestLayout {
    /// Checks that RAM can hold a test guest with `vcpus` vCPUs.
    pub fn new(ram_base: u64, ram_size: u64, vcpus: u32) -> Result<Self, LayoutError> {
        if ram_base % LARGE_PAGE_SIZE != 0 || ram_size % LARGE_PAGE_SIZE != 0 {
            return Err(LayoutError::Misaligned {
                base: ram_base,
                size: ram_size,
            });
        }
        if ram_size < TEST_MIN_RAM {
            return Err(LayoutError::RamTooSmall {
                size: ram_size,
                min: TEST_MIN_RAM,
            });
        }
        let gibs_spanned = (ram_base + ram_size).div_ceil(GIB) - ram_base / GIB;
        if gibs_spanned > TEST_MAX_RAM_GIB {
            return Err(LayoutError::RamTooLarge { size: ram_size });
        }
        if vcpus == 0 || vcpus > TEST_MAX_VCPUS {
            return Err(LayoutError::Vcpus(vcpus));
        }
        let layout = TestLayout { ram_base, ram_size };
        if layout.doorbell_gpa() + GIB > 512 * GIB {
            return Err(LayoutError::TooHigh {
                base: ram_base,
                size: ram_size,
            });
        }
        Ok(layout)
    }

    /// One past the last RAM byte.
    pub fn ram_end(&self) -> u64 {
        self.ram_base + self.ram_size
    }

    /// GPA of `offset` from the start of RAM.
    pub fn gpa(&self, offset: u64) -> u64 {
        self.ram_base + offset
    }

    /// GPA of the doorbell page: the first GiB boundary at or after the end of RAM.
    pub fn doorbell_gpa(&self) -> u64 {
        self.ram_end().next_multiple_of(GIB)
    }

    /// GPA of the PML4 (the value of CR3).
    pub fn pml4_gpa(&self) -> u64 {
        self.gpa(TEST_PAGE_TABLES_OFFSET)
    }

    /// Initial stack pointer of vCPU `index` (16-byte aligned, top of its stack).
    pub fn stack_top(&self, index: u32) -> u64 {
        self.gpa(TEST_STACKS_OFFSET + (u64::from(index) + 1) * TEST_STACK_SIZE)
    }

    /// The data span: `[gpa, gpa + len)`.
    pub fn data_span(&self) -> (u64, u64) {
        (self.gpa(TEST_DATA_OFFSET), self.ram_size - TEST_DATA_OFFSET)
    }
}

/// The Linux boot layout (absolute GPAs; RAM starts at 0).
pub mod linux {
    /// GDT of the boot vCPU (the same descriptors as the test guests').
    pub const BOOT_GDT: u64 = 0x500;
    /// TSS of the boot vCPU.
    pub const BOOT_TSS: u64 = 0x580;
    /// PVH `hvm_start_info`.
    pub const PVH_START_INFO: u64 = 0x6000;
    /// PVH memory map (right after the start info).
    pub const PVH_MEMMAP: u64 = 0x6040;
    /// PVH module list (the initrd), after the largest memory map.
    pub const PVH_MODLIST: u64 = 0x6200;
    /// Most memory map entries.
    pub const MAX_E820_ENTRIES: usize = 16;
    /// The zero page (`boot_params`).
    pub const ZERO_PAGE: u64 = 0x7000;
    /// Initial stack pointer.
    pub const BOOT_STACK: u64 = 0x8ff0;
    /// PML4 of the identity map used by the 64-bit bzImage entry; PDPT and PD follow.
    pub const BOOT_PML4: u64 = 0x9000;
    /// Command line.
    pub const CMDLINE: u64 = 0x2_0000;
    /// Most command-line bytes, NUL included.
    pub const CMDLINE_MAX: usize = 0x1_0000;
    /// Start of the extended BIOS data area: RAM below it is usable.
    pub const EBDA_START: u64 = 0x9_fc00;
    /// First byte above the legacy area.
    pub const HIGH_MEMORY: u64 = 0x10_0000;
    /// The ACPI tables (RSDP at the start of the BIOS area Linux scans).
    pub const ACPI_AREA: u64 = 0xe_0000;
    /// Start of the PCI/LAPIC/IOAPIC hole: RAM for the Linux path must end below it.
    pub const MMIO_HOLE: u64 = 0xc000_0000;
    /// Smallest RAM the Linux path accepts.
    pub const MIN_RAM: u64 = 64 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (TEST_GDT_OFFSET, TEST_TSS_OFFSET),
            (TEST_TSS_OFFSET, TEST_TSS_OFFSET + 0x68),
            (TEST_PARAMS_OFFSET, TEST_PARAMS_OFFSET + PAGE_SIZE),
            (TEST_SYNC_OFFSET, TEST_SYNC_OFFSET + PAGE_SIZE),
            (TEST_PAGE_TABLES_OFFSET, TEST_PAGE_TABLES_END),
            (TEST_CODE_OFFSET, TEST_CODE_OFFSET + TEST_CODE_MAX),
            (
                TEST_STACKS_OFFSET,
                TEST_STACKS_OFFSET + u64::from(TEST_MAX_VCPUS) * TEST_STACK_SIZE,
            ),
            (TEST_DATA_OFFSET, TEST_MIN_RAM),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 < a.1);
            for b in &areas[i + 1..] {
                assert!(a.1 <= b.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }

    #[test]
    fn doorbell_is_after_ram_on_a_gib_boundary() {
        let l = TestLayout::new(0, 32 << 20, 2).unwrap();
        assert_eq!(l.doorbell_gpa(), GIB);
        let l = TestLayout::new(0, GIB, 2).unwrap();
        assert_eq!(l.doorbell_gpa(), GIB);
        let l = TestLayout::new(2 * GIB, GIB + (2 << 20), 1).unwrap();
        assert_eq!(l.doorbell_gpa(), 4 * GIB);
        assert_eq!(
            l.stack_top(0),
            2 * GIB + TEST_STACKS_OFFSET + TEST_STACK_SIZE
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(matches!(
            TestLayout::new(0, 1 << 20, 1),
            Err(LayoutError::Misaligned { .. })
        ));
        assert!(matches!(
            TestLayout::new(0, 4 << 20, 1),
            Err(LayoutError::RamTooSmall { .. })
        ));
        assert!(matches!(
            TestLayout::new(0, 63 * GIB, 1),
            Err(LayoutError::RamTooLarge { .. })
        ));
        assert_eq!(TestLayout::new(0, 32 << 20, 0), Err(LayoutError::Vcpus(0)));
        assert!(matches!(
            TestLayout::new(511 * GIB, GIB, 1),
            Err(LayoutError::TooHigh { .. })
        ));
    }
}
