//! Linking and placement: given where the RSDP and the tables go in guest-physical memory,
//! builds the pointer-carrying tables (RSDP → XSDT → FADT → DSDT, XSDT → MADT/SRAT/SLIT/HMAT)
//! and copies the result into a guest-memory buffer. See docs/acpi.md "Placing the tables".

use acpi_tables::rsdp::Rsdp;
use acpi_tables::Aml;

use super::fadt;
use super::sdt::Sdt;
use super::AcpiTables;

/// Length of an ACPI 2.0+ RSDP.
pub const RSDP_LEN: usize = 36;
/// Alignment of each table in the image.
pub const TABLE_ALIGN: u64 = 8;
/// First byte above the legacy BIOS area; tables that start below it must end by it.
pub const ONE_MIB: u64 = 0x10_0000;
/// Start of the read-only BIOS area Linux scans (on 16-byte boundaries) for the RSDP.
pub const BIOS_AREA_START: u64 = 0xE_0000;

/// Why the tables could not be placed. Every message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The RSDP is not 16-byte aligned.
    #[error(
        "the RSDP at {0:#x} is not 16-byte aligned: Linux only finds it on 16-byte boundaries"
    )]
    MisalignedRsdp(u64),
    /// The tables are not 8-byte aligned.
    #[error("the tables at {0:#x} are not 8-byte aligned: align their start to 8 bytes")]
    MisalignedTables(u64),
    /// The RSDP lies inside the tables.
    #[error(
        "the RSDP at {rsdp:#x} overlaps the tables at [{start:#x}, {end:#x}): move one of them"
    )]
    Overlap {
        /// RSDP address.
        rsdp: u64,
        /// First table byte.
        start: u64,
        /// One past the last table byte.
        end: u64,
    },
    /// Tables that start in the legacy area would run into the memory above 1 MiB.
    #[error(
        "the tables need {len} bytes from {start:#x} and would cross 1 MiB: place them in \
         reserved memory above 1 MiB (the RSDP may stay at {BIOS_AREA_START:#x})"
    )]
    CrossesOneMib {
        /// First table byte.
        start: u64,
        /// Bytes needed.
        len: u64,
    },
    /// An address computation wrapped.
    #[error("placing {len} bytes at {gpa:#x} wraps past 2^64: choose a lower address")]
    AddressOverflow {
        /// Start address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A piece falls outside the guest-memory buffer given.
    #[error(
        "the {what} at [{gpa:#x}, +{len:#x}) is outside the guest memory given \
         ([{mem_gpa:#x}, +{mem_len:#x})): give the buffer that holds that address"
    )]
    OutsideMemory {
        /// "RSDP" or "tables".
        what: &'static str,
        /// Start address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Buffer start address.
        mem_gpa: u64,
        /// Buffer length.
        mem_len: u64,
    },
}

/// Where the RSDP and the (contiguous) tables go in guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Guest-physical address of the RSDP (16-byte aligned).
    pub rsdp_gpa: u64,
    /// Guest-physical address of the first table (8-byte aligned).
    pub tables_gpa: u64,
}

impl Placement {
    /// RSDP at 0xE0000 and the tables right after it, all in the BIOS area below 1 MiB that
    /// Linux scans: works with and without `boot_params.acpi_rsdp_addr`, for topologies whose
    /// tables fit in 128 KiB (every topology up to a few hundred vCPUs).
    pub const BIOS_AREA: Placement = Placement {
        rsdp_gpa: BIOS_AREA_START,
        tables_gpa: BIOS_AREA_START + 64,
    };
}

/// Where one table landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLocation {
    /// Signature (`FACP` for the FADT, `APIC` for the MADT).
    pub signature: [u8; 4],
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: usize,
}

/// The linked tables ready to copy into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiImage {
    /// Where the RSDP goes.
    pub rsdp_gpa: u64,
    /// The RSDP's bytes.
    pub rsdp: Vec<u8>,
    /// Where `tables` goes.
    pub tables_gpa: u64,
    /// Every other table, back to back at 8-byte alignment.
    pub tables: Vec<u8>,
    /// Where each table is, in image order (XSDT, FACP, DSDT, APIC, SRAT, SLIT, HMAT).
    pub locations: Vec<TableLocation>,
}

impl AcpiTables {
    /// Links the tables for `placement`: the only step whose bytes depend on addresses.
    pub fn image(&self, placement: Placement) -> Result<AcpiImage, PlaceError> {
        let Placement {
            rsdp_gpa,
            tables_gpa,
        } = placement;
        if rsdp_gpa % 16 != 0 {
            return Err(PlaceError::MisalignedRsdp(rsdp_gpa));
        }
        if tables_gpa % TABLE_ALIGN != 0 {
            return Err(PlaceError::MisalignedTables(tables_gpa));
        }
        const XSDT_ENTRIES: usize = 5;
        let xsdt_len = super::sdt::HEADER_LEN + 8 * XSDT_ENTRIES;
        let fadt_len = fadt::build(&self.platform, 0).len();
        let sizes = [
            (*b"XSDT", xsdt_len),
            (*b"FACP", fadt_len),
            (*b"DSDT", self.dsdt.len()),
            (*b"APIC", self.madt.len()),
            (*b"SRAT", self.srat.len()),
            (*b"SLIT", self.slit.len()),
            (*b"HMAT", self.hmat.len()),
        ];
        let mut locations = Vec::with_capacity(sizes.len());
        let mut offset = 0u64;
        for (signature, len) in sizes {
            let gpa = checked(tables_gpa, offset)?;
            checked(gpa, len as u64)?;
            locations.push(TableLocation {
                signature,
                gpa,
                len,
            });
            offset = (offset + len as u64).next_multiple_of(TABLE_ALIGN);
        }
        let total = locations
            .last()
            .map_or(0, |l| l.gpa - tables_gpa + l.len as u64);
        let end = checked(tables_gpa, total)?;
        checked(rsdp_gpa, RSDP_LEN as u64)?;
        if rsdp_gpa < end && tables_gpa < rsdp_gpa + RSDP_LEN as u64 {
            return Err(PlaceError::Overlap {
                rsdp: rsdp_gpa,
                start: tables_gpa,
                end,
            });
        }
        if tables_gpa < ONE_MIB && end > ONE_MIB {
            return Err(PlaceError::CrossesOneMib {
                start: tables_gpa,
                len: total,
            });
        }
        let at = |sig: &[u8; 4]| {
            locations
                .iter()
                .find(|l| &l.signature == sig)
                .map_or(0, |l| l.gpa)
        };
        let mut xsdt = Sdt::new(*b"XSDT", 1, &self.platform.ids);
        for sig in [b"FACP", b"APIC", b"SRAT", b"SLIT", b"HMAT"] {
            xsdt.u64(at(sig));
        }
        let xsdt = xsdt.finish();
        let fadt = fadt::build(&self.platform, at(b"DSDT"));
        let mut tables = vec![0u8; total as usize];
        let bodies: [&[u8]; 7] = [
            &xsdt, &fadt, &self.dsdt, &self.madt, &self.srat, &self.slit, &self.hmat,
        ];
        for (loc, body) in locations.iter().zip(bodies) {
            debug_assert_eq!(loc.len, body.len());
            let start = (loc.gpa - tables_gpa) as usize;
            tables[start..start + body.len()].copy_from_slice(body);
        }
        let mut rsdp = Vec::with_capacity(RSDP_LEN);
        Rsdp::new(self.platform.ids.oem_id, at(b"XSDT")).to_aml_bytes(&mut rsdp);
        Ok(AcpiImage {
            rsdp_gpa,
            rsdp,
            tables_gpa,
            tables,
            locations,
        })
    }
}

impl AcpiImage {
    /// The bytes of the table with `signature` (`RSD ` for the RSDP), if present.
    pub fn table(&self, signature: &[u8; 4]) -> Option<&[u8]> {
        if signature == b"RSD " {
            return Some(&self.rsdp);
        }
        let loc = self.locations.iter().find(|l| &l.signature == signature)?;
        let start = (loc.gpa - self.tables_gpa) as usize;
        self.tables.get(start..start + loc.len)
    }

    /// The two pieces to copy, as (guest-physical address, bytes): for a VMM that writes guest
    /// memory through its own accessor.
    pub fn chunks(&self) -> [(u64, &[u8]); 2] {
        [(self.rsdp_gpa, &self.rsdp), (self.tables_gpa, &self.tables)]
    }

    /// Copies the RSDP and the tables into `mem`, the guest memory that starts at `mem_gpa`.
    /// Checks both pieces before writing either.
    pub fn write_into(&self, mem: &mut [u8], mem_gpa: u64) -> Result<(), PlaceError> {
        let mut ranges = [(0usize, 0usize); 2];
        for (k, (what, (gpa, bytes))) in ["RSDP", "tables"]
            .into_iter()
            .zip(self.chunks())
            .enumerate()
        {
            let outside = PlaceError::OutsideMemory {
                what,
                gpa,
                len: bytes.len() as u64,
                mem_gpa,
                mem_len: mem.len() as u64,
            };
            let start = gpa
                .checked_sub(mem_gpa)
                .and_then(|o| usize::try_from(o).ok())
                .ok_or_else(|| outside.clone())?;
            let end = start
                .checked_add(bytes.len())
                .filter(|&e| e <= mem.len())
                .ok_or(outside)?;
            ranges[k] = (start, end);
        }
        for ((start, end), (_, bytes)) in ranges.into_iter().zip(self.chunks()) {
            mem[start..end].copy_from_slice(bytes);
        }
        Ok(())
    }
}

fn checked(gpa: u64, len: u64) -> Result<u64, PlaceError> {
    gpa.checked_add(len)
        .ok_or(PlaceError::AddressOverflow { gpa, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdt::sums_to_zero;
    use crate::{parse_topology, tables, SpecArgs};

    fn two_nodes() -> AcpiTables {
        let t = parse_topology(&SpecArgs {
            layout: "0:mem=0-256M:cpus=0;1:mem=256M-512M:cpus=1",
            latency_ns: Some("400,30000;31000,420"),
            bandwidth_mbps: Some("20000,1100;1050,19000"),
            ..SpecArgs::default()
        })
        .unwrap();
        tables(&t)
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn pointers_chain_from_rsdp_to_every_table() {
        let image = two_nodes().image(Placement::BIOS_AREA).unwrap();
        let rsdp = &image.rsdp;
        assert_eq!(rsdp.len(), RSDP_LEN);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]), "ACPI 1.0 checksum");
        assert!(sums_to_zero(rsdp), "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: XSDT present");
        let by_gpa = |gpa: u64| {
            let off = (gpa - image.tables_gpa) as usize;
            let sig: [u8; 4] = image.tables[off..off + 4].try_into().unwrap();
            sig
        };
        let xsdt_gpa = u64_at(rsdp, 24);
        assert_eq!(&by_gpa(xsdt_gpa), b"XSDT");
        let xsdt = image.table(b"XSDT").unwrap();
        let pointed: Vec<[u8; 4]> = (0..5).map(|i| by_gpa(u64_at(xsdt, 36 + 8 * i))).collect();
        assert_eq!(pointed, [*b"FACP", *b"APIC", *b"SRAT", *b"SLIT", *b"HMAT"]);
        let fadt = image.table(b"FACP").unwrap();
        assert_eq!(&by_gpa(u64_at(fadt, 140)), b"DSDT");
        for loc in &image.locations {
            assert_eq!(loc.gpa % TABLE_ALIGN, 0);
            let t = image.table(&loc.signature).unwrap();
            assert!(sums_to_zero(t), "{:?}", loc.signature);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
    }

    #[test]
    fn write_into_copies_both_pieces_at_their_addresses() {
        let image = two_nodes().image(Placement::BIOS_AREA).unwrap();
        let mem_gpa = 0xC_0000;
        let mut mem = vec![0u8; 0x4_0000];
        image.write_into(&mut mem, mem_gpa).unwrap();
        let r = (image.rsdp_gpa - mem_gpa) as usize;
        assert_eq!(&mem[r..r + RSDP_LEN], &image.rsdp[..]);
        let t = (image.tables_gpa - mem_gpa) as usize;
        assert_eq!(&mem[t..t + image.tables.len()], &image.tables[..]);
        // Linux's scan finds it: 16-byte aligned signature in 0xE0000..0xFFFFF.
        let found = (0xE_0000..0x10_0000u64)
            .step_by(16)
            .find(|&a| &mem[(a - mem_gpa) as usize..][..8] == b"RSD PTR ");
        assert_eq!(found, Some(image.rsdp_gpa));
    }

    #[test]
    fn write_into_refuses_memory_that_does_not_hold_the_tables() {
        let image = two_nodes().image(Placement::BIOS_AREA).unwrap();
        let mut small = vec![0u8; 0x100];
        let err = image.write_into(&mut small, 0xE_0000).unwrap_err();
        assert!(
            matches!(err, PlaceError::OutsideMemory { what: "tables", .. }),
            "{err}"
        );
        assert!(small.iter().all(|&b| b == 0), "nothing written on failure");
        let mut above = vec![0u8; 0x10_0000];
        let err = image.write_into(&mut above, 0xF_0000).unwrap_err();
        assert!(matches!(
            err,
            PlaceError::OutsideMemory { what: "RSDP", .. }
        ));
    }

    #[test]
    fn refuses_bad_placements() {
        let t = two_nodes();
        let p = |rsdp_gpa, tables_gpa| Placement {
            rsdp_gpa,
            tables_gpa,
        };
        assert_eq!(
            t.image(p(0xE_0008, 0xF_0000)).unwrap_err(),
            PlaceError::MisalignedRsdp(0xE_0008)
        );
        assert_eq!(
            t.image(p(0xE_0000, 0xE_0044)).unwrap_err(),
            PlaceError::MisalignedTables(0xE_0044)
        );
        assert!(matches!(
            t.image(p(0xE_0010, 0xE_0000)),
            Err(PlaceError::Overlap { .. })
        ));
        assert!(matches!(
            t.image(p(0xE_0000, 0xF_FF00)),
            Err(PlaceError::CrossesOneMib { .. })
        ));
        assert!(matches!(
            t.image(p(0xE_0000, u64::MAX - 7)),
            Err(PlaceError::AddressOverflow { .. })
        ));
        // Anywhere high works (the VMM then passes the RSDP in boot_params).
        let high = t.image(p(0x7FF0_0000, 0x7FF0_0040)).unwrap();
        assert_eq!(u64_at(&high.rsdp, 24), 0x7FF0_0040);
    }

    #[test]
    fn linking_is_deterministic() {
        let a = two_nodes().image(Placement::BIOS_AREA).unwrap();
        let b = two_nodes().image(Placement::BIOS_AREA).unwrap();
        assert_eq!(a, b);
    }
}
