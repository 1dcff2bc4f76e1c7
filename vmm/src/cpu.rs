//! Initial vCPU state: the GDT and TSS written into guest memory, and the registers and
//! segment state a vCPU starts with for each [`CpuMode`].
//!
//! Test guests start directly in 64-bit mode at CPL3 (user code and data segments with DPL 3),
//! so on PVM hosts their code runs natively; nothing runs at CPL0 before the payload. The Linux
//! path starts at CPL0, in 32-bit protected mode for PVH or 64-bit mode for the bzImage entry.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::memory::{GuestMemory, MemoryError};

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CS64: u16 = 0x08;
/// Selector of the 32-bit flat kernel code segment (PVH entry).
pub const KERNEL_CS32: u16 = 0x10;
/// Selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x18;
/// Selector of the user data segment (RPL 3).
pub const USER_DS: u16 = 0x20 | 3;
/// Selector of the 64-bit user code segment (RPL 3).
pub const USER_CS64: u16 = 0x28 | 3;
/// Selector of the TSS.
pub const TSS_SEL: u16 = 0x30;
/// Bytes of the GDT (7 descriptors, the TSS taking two).
pub const GDT_LEN: u64 = 8 * 8;
/// Bytes of a 64-bit TSS.
pub const TSS_LEN: u64 = 0x68;

/// CR0 bits.
mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const PG: u64 = 1 << 31;
}
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR | CR4.OSXMMEXCPT: SSE usable.
const CR4_SSE: u64 = (1 << 9) | (1 << 10);
/// EFER.LME | EFER.LMA.
const EFER_LONG: u64 = (1 << 8) | (1 << 10);
/// RFLAGS bit 1 is always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Builds a code or data descriptor: `flags` is the high nibble (G, D/B, L, AVL) and `access`
/// the access byte (P, DPL, S, type).
pub const fn descriptor(flags: u64, access: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf) << 52)
        | ((limit & 0xf_0000) << 32)
        | ((access & 0xff) << 40)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The GDT's code and data descriptors, indexed by selector / 8.
pub const GDT: [u64; 6] = [
    0,
    descriptor(0xa, 0x9b, 0, 0xf_ffff), // kernel code, 64-bit
    descriptor(0xc, 0x9b, 0, 0xf_ffff), // kernel code, 32-bit flat
    descriptor(0xc, 0x93, 0, 0xf_ffff), // kernel data
    descriptor(0xc, 0xf3, 0, 0xf_ffff), // user data, DPL 3
    descriptor(0xa, 0xfb, 0, 0xf_ffff), // user code, 64-bit, DPL 3
];

/// The two descriptor words of an available 64-bit TSS at `base`.
pub const fn tss_descriptor(base: u64) -> [u64; 2] {
    [descriptor(0, 0x89, base, TSS_LEN - 1), base >> 32]
}

/// Decodes a code/data descriptor into KVM's segment form.
pub fn segment(selector: u16, desc: u64) -> kvm_segment {
    let limit = ((desc >> 32) & 0xf_0000) | (desc & 0xffff);
    let g = ((desc >> 55) & 1) as u8;
    kvm_segment {
        base: ((desc >> 32) & 0xff00_0000) | ((desc >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present: ((desc >> 47) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g,
        avl: ((desc >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT at `gdt_gpa` and a zeroed TSS at `tss_gpa`.
pub fn write_gdt(mem: &GuestMemory, gdt_gpa: u64, tss_gpa: u64) -> Result<(), MemoryError> {
    let tss = tss_descriptor(tss_gpa);
    for (i, d) in GDT.iter().chain(tss.iter()).enumerate() {
        mem.write_u64(gdt_gpa + 8 * i as u64, *d)?;
    }
    // I/O map base past the limit: no I/O bitmap.
    let mut tss_bytes = [0u8; TSS_LEN as usize];
    tss_bytes[0x66..0x68].copy_from_slice(&(TSS_LEN as u16).to_le_bytes());
    mem.write(tss_gpa, &tss_bytes)
}

/// The mode a vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 64-bit mode, CPL3, paging with `cr3`: the test guests.
    LongUser,
    /// 64-bit mode, CPL0, paging with `cr3`: the bzImage 64-bit entry.
    LongKernel,
    /// 32-bit protected mode, CPL0, paging off: the PVH entry.
    Protected32,
}

/// How every local vCPU starts: the same code and tables, a per-vCPU stack and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// Starting mode.
    pub mode: CpuMode,
    /// First instruction.
    pub entry: u64,
    /// Page-table root (ignored in `Protected32`).
    pub cr3: u64,
    /// GDT written by [`write_gdt`].
    pub gdt_gpa: u64,
    /// TSS written by [`write_gdt`].
    pub tss_gpa: u64,
    /// Stack of vCPU 0; vCPU `i` gets `stack_top + i * stack_stride`.
    pub stack_top: u64,
    /// Distance between vCPU stacks.
    pub stack_stride: u64,
    /// RSI for every vCPU (test guests: parameter block; bzImage: zero page).
    pub rsi: u64,
    /// RBX for every vCPU (PVH: start info).
    pub rbx: u64,
}

impl Boot {
    /// General registers of vCPU `index` (RDI carries the index).
    pub fn regs(&self, index: u32) -> kvm_regs {
        kvm_regs {
            rip: self.entry,
            rsp: self.stack_top + u64::from(index) * self.stack_stride,
            rflags: RFLAGS_RESERVED,
            rdi: u64::from(index),
            rsi: self.rsi,
            rbx: self.rbx,
            ..Default::default()
        }
    }

    /// Segment and control registers, starting from the vCPU's current `sregs` (which keep
    /// KVM's APIC base and the rest).
    pub fn sregs(&self, mut s: kvm_sregs) -> kvm_sregs {
        let (cs_sel, ds_sel) = match self.mode {
            CpuMode::LongUser => (USER_CS64, USER_DS),
            CpuMode::LongKernel => (KERNEL_CS64, KERNEL_DS),
            CpuMode::Protected32 => (KERNEL_CS32, KERNEL_DS),
        };
        let cs = segment(cs_sel, GDT[usize::from(cs_sel >> 3)]);
        let ds = segment(ds_sel, GDT[usize::from(ds_sel >> 3)]);
        s.cs = cs;
        s.ds = ds;
        s.es = ds;
        s.fs = ds;
        s.gs = ds;
        s.ss = ds;
        let [lo, _] = tss_descriptor(self.tss_gpa);
        let mut tr = segment(TSS_SEL, lo);
        tr.type_ = 0xb; // busy 64-bit TSS
        tr.base = self.tss_gpa;
        s.tr = tr;
        s.ldt = kvm_segment {
            selector: 0,
            type_: 2,
            present: 1,
            limit: 0xffff,
            ..Default::default()
        };
        s.gdt.base = self.gdt_gpa;
        s.gdt.limit = (GDT_LEN - 1) as u16;
        s.idt.base = 0;
        s.idt.limit = 0;
        match self.mode {
            CpuMode::LongUser | CpuMode::LongKernel => {
                s.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
                s.cr3 = self.cr3;
                s.cr4 = CR4_PAE | CR4_SSE;
                s.efer |= EFER_LONG;
            }
            CpuMode::Protected32 => {
                s.cr0 = cr0::PE | cr0::ET;
                s.cr3 = 0;
                s.cr4 = 0;
                s.efer &= !EFER_LONG;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_to_the_intended_segments() {
        let ucs = segment(USER_CS64, GDT[usize::from(USER_CS64 >> 3)]);
        assert_eq!(
            (ucs.dpl, ucs.l, ucs.db, ucs.s, ucs.present),
            (3, 1, 0, 1, 1)
        );
        assert_eq!(ucs.type_, 0xb);
        let uds = segment(USER_DS, GDT[usize::from(USER_DS >> 3)]);
        assert_eq!((uds.dpl, uds.db, uds.type_), (3, 1, 3));
        assert_eq!(uds.limit, 0xffff_ffff);
        let kcs32 = segment(KERNEL_CS32, GDT[usize::from(KERNEL_CS32 >> 3)]);
        assert_eq!((kcs32.dpl, kcs32.l, kcs32.db), (0, 0, 1));
        let tss = segment(TSS_SEL, tss_descriptor(0x1234_5678)[0]);
        assert_eq!(tss.base, 0x1234_5678);
        assert_eq!(tss.limit, (TSS_LEN - 1) as u32);
        assert_eq!(tss.type_, 9);
    }

    #[test]
    fn user_boot_sets_long_mode_at_cpl3() {
        let boot = Boot {
            mode: CpuMode::LongUser,
            entry: 0x10_0000,
            cr3: 0x1_0000,
            gdt_gpa: 0x1000,
            tss_gpa: 0x1800,
            stack_top: 0x20_4000,
            stack_stride: 0x4000,
            rsi: 0x2000,
            rbx: 0,
        };
        let s = boot.sregs(kvm_sregs::default());
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(s.ss.selector & 3, 3);
        assert_eq!(s.efer & EFER_LONG, EFER_LONG);
        assert_ne!(s.cr0 & cr0::PG, 0);
        assert_eq!(s.cr3, 0x1_0000);
        let r = boot.regs(3);
        assert_eq!(
            (r.rip, r.rsp, r.rdi, r.rsi),
            (0x10_0000, 0x21_0000, 3, 0x2000)
        );
    }

    #[test]
    fn gdt_and_tss_land_in_memory() {
        let mem = GuestMemory::anonymous(0x10000, 0).unwrap();
        write_gdt(&mem, 0x1000, 0x1800).unwrap();
        assert_eq!(mem.read_u64(0x1000 + 8).unwrap(), GDT[1]);
        assert_eq!(
            mem.read_u64(0x1000 + 0x30).unwrap(),
            tss_descriptor(0x1800)[0]
        );
        let mut iomap = [0u8; 2];
        mem.read(0x1800 + 0x66, &mut iomap).unwrap();
        assert_eq!(u16::from_le_bytes(iomap), TSS_LEN as u16);
    }
}
