//! Identity page tables for the test guests, built in guest memory.
//!
//! Four-level paging with 2 MiB pages: one PML4 and one PDPT (everything lies below 512 GiB),
//! one page directory per GiB of RAM, and one for the doorbell page after RAM. Every entry has
//! the user bit set so CPL3 code reaches all of RAM; the doorbell's 2 MiB page is mapped but
//! has no memory slot behind it, so stores to it exit to the VMM.

use crate::layout::{TestLayout, GIB, LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::memory::{GuestMemory, MemoryError};

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// User accessible.
pub const PTE_US: u64 = 1 << 2;
/// Cache disabled (the doorbell).
pub const PTE_PCD: u64 = 1 << 4;
/// Accessed.
pub const PTE_A: u64 = 1 << 5;
/// Dirty (in a leaf).
pub const PTE_D: u64 = 1 << 6;
/// Large page (in a PDE).
pub const PTE_PS: u64 = 1 << 7;

/// Table entries and leaves carry Accessed (and leaves Dirty) from the start, so the CPU's
/// page walker has no reason to write them: a walker write to a table page that vCPUs on
/// several nodes read would move it between nodes instead of leaving it read-replicated.
const TABLE: u64 = PTE_P | PTE_RW | PTE_US | PTE_A;
const LEAF: u64 = TABLE | PTE_D | PTE_PS;

/// Guest-physical pages the tables occupy, in writing order (PML4, PDPT, directories).
pub fn table_pages(layout: &TestLayout) -> Vec<u64> {
    let first_gib = layout.ram_base / GIB;
    let ram_gibs = layout.ram_end().div_ceil(GIB) - first_gib;
    (0..2 + ram_gibs + 1)
        .map(|k| layout.pml4_gpa() + k * PAGE_SIZE)
        .collect()
}

/// Writes the identity map of RAM plus the doorbell page. Returns the CR3 value.
pub fn write_identity_map(mem: &GuestMemory, layout: &TestLayout) -> Result<u64, MemoryError> {
    let pml4 = layout.pml4_gpa();
    let pdpt = pml4 + PAGE_SIZE;
    let zero = [0u8; PAGE_SIZE as usize];
    for page in table_pages(layout) {
        mem.write(page, &zero)?;
    }
    mem.write_u64(pml4, pdpt | TABLE)?;
    let first_gib = layout.ram_base / GIB;
    let mut pd = pdpt + PAGE_SIZE;
    let mut gib = first_gib;
    while gib * GIB < layout.ram_end() {
        mem.write_u64(pdpt + 8 * gib, pd | TABLE)?;
        for slot in 0..512u64 {
            let addr = gib * GIB + slot * LARGE_PAGE_SIZE;
            if addr >= layout.ram_base && addr < layout.ram_end() {
                mem.write_u64(pd + 8 * slot, addr | LEAF)?;
            }
        }
        pd += PAGE_SIZE;
        gib += 1;
    }
    let bell = layout.doorbell_gpa();
    mem.write_u64(pdpt + 8 * (bell / GIB), pd | TABLE)?;
    mem.write_u64(pd, bell | LEAF | PTE_PCD)?;
    Ok(pml4)
}

/// Walks the tables like the MMU does and returns the physical address `va` maps to and
/// whether user mode may write it; `None` when unmapped. Used to check the tables.
pub fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Result<Option<(u64, bool)>, MemoryError> {
    let addr_mask = 0x000f_ffff_ffff_f000u64;
    let mut table = cr3 & addr_mask;
    let mut user_rw = true;
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let entry = mem.read_u64(table + 8 * ((va >> shift) & 511))?;
        if entry & PTE_P == 0 {
            return Ok(None);
        }
        user_rw &= entry & PTE_US != 0 && entry & PTE_RW != 0;
        if level == 2 && entry & PTE_PS != 0 {
            let base = entry & addr_mask & !(LARGE_PAGE_SIZE - 1);
            return Ok(Some((base | (va & (LARGE_PAGE_SIZE - 1)), user_rw)));
        }
        table = entry & addr_mask;
    }
    Ok(Some((table | (va & (PAGE_SIZE - 1)), user_rw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_and_doorbell_are_identity_mapped_for_user_mode() {
        let size = 64u64 << 20;
        let mem = GuestMemory::anonymous(size as usize, 0).unwrap();
        let layout = TestLayout::new(0, size, 2).unwrap();
        let cr3 = write_identity_map(&mem, &layout).unwrap();
        for va in [0u64, 0x1234, 0x40_0000 + 17, size - 8] {
            assert_eq!(
                translate(&mem, cr3, va).unwrap(),
                Some((va, true)),
                "{va:#x}"
            );
        }
        let bell = layout.doorbell_gpa();
        assert_eq!(
            translate(&mem, cr3, bell + 0x18).unwrap(),
            Some((bell + 0x18, true))
        );
        assert_eq!(
            translate(&mem, cr3, size).unwrap(),
            None,
            "first byte after RAM"
        );
        assert_eq!(translate(&mem, cr3, bell + LARGE_PAGE_SIZE).unwrap(), None);
        assert_eq!(table_pages(&layout).len(), 4);
    }

    #[test]
    fn ram_above_a_gib_boundary_uses_its_own_directories() {
        let base = GIB - (8 << 20);
        let size = 16u64 << 20;
        let mem = GuestMemory::anonymous(size as usize, base).unwrap();
        let layout = TestLayout::new(base, size, 1).unwrap();
        let cr3 = write_identity_map(&mem, &layout).unwrap();
        assert_eq!(
            table_pages(&layout).len(),
            5,
            "PML4, PDPT, two RAM PDs, doorbell PD"
        );
        for va in [base, GIB - 8, GIB, base + size - 1] {
            assert_eq!(
                translate(&mem, cr3, va).unwrap(),
                Some((va, true)),
                "{va:#x}"
            );
        }
        assert_eq!(translate(&mem, cr3, base - 1).unwrap(), None);
    }
}
