//! FADT (signature FACP, ACPI 6.5 §5.2.9), built with rust-vmm's `acpi_tables` builder: a
//! hardware-reduced ACPI platform (no PM1/GPE blocks, no SCI, no FACS) whose power and sleep
//! buttons, if any, are control-method devices, pointing at the DSDT by its 64-bit address,
//! with the sleep control/status and reset registers when the platform has them.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use super::platform::Platform;
use super::sdt::{CREATOR_ID, CREATOR_REVISION};

/// Builds the FADT for a DSDT placed at `dsdt_gpa`.
pub fn build(platform: &Platform, dsdt_gpa: u64) -> Vec<u8> {
    let ids = &platform.ids;
    let mut builder = FADTBuilder::new(ids.oem_id, ids.oem_table_id, ids.oem_revision)
        .dsdt_64(dsdt_gpa)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .preferred_pm_profile(PmProfile::EnterpriseServer);
    builder.creator_id = CREATOR_ID;
    builder.creator_revision = CREATOR_REVISION.to_le_bytes();
    builder.iapc_boot_arch = platform.iapc_boot_arch.into();
    if let Some(p) = platform.power {
        let port = |a: u16| {
            GAS::new(
                AddressSpace::SystemIo,
                8,
                0,
                AccessSize::ByteAccess,
                a.into(),
            )
        };
        builder.sleep_control_reg = port(p.sleep_control);
        builder.sleep_status_reg = port(p.sleep_status);
        builder.reset_reg = port(p.reset);
        builder.reset_value = p.reset_value;
        builder = builder.flag(Flags::ResetRegSup);
    }
    let mut bytes = Vec::new();
    builder.finalize().to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdt::sums_to_zero;

    #[test]
    fn hardware_reduced_with_64_bit_dsdt_pointer() {
        let b = build(&Platform::default(), 0x1234_5678_9000);
        assert!(sums_to_zero(&b));
        assert_eq!(&b[0..4], b"FACP");
        assert_eq!(b.len(), 276);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 276);
        // 32-bit DSDT pointer (offset 40) unused, X_DSDT (offset 140) set.
        assert_eq!(&b[40..44], &[0; 4]);
        assert_eq!(
            u64::from_le_bytes(b[140..148].try_into().unwrap()),
            0x1234_5678_9000
        );
        let flags = u32::from_le_bytes(b[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(
            u16::from_le_bytes([b[109], b[110]]),
            Platform::default().iapc_boot_arch
        );
        // RESET_REG (offset 116, GAS) with RESET_VALUE (128), SLEEP_CONTROL_REG (244) and
        // SLEEP_STATUS_REG (256): system I/O, 8 bits, the platform's ports.
        let power = Platform::default().power.unwrap();
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        for (at, port) in [
            (116, power.reset),
            (244, power.sleep_control),
            (256, power.sleep_status),
        ] {
            assert_eq!(b[at], 1, "system I/O space");
            assert_eq!(b[at + 1], 8, "8 bits");
            assert_eq!(
                u64::from_le_bytes(b[at + 4..at + 12].try_into().unwrap()),
                u64::from(port)
            );
        }
        assert_eq!(b[128], power.reset_value);
        // Without power registers they stay zero.
        let bare = Platform {
            power: None,
            ..Platform::default()
        };
        let b = build(&bare, 0);
        assert!(b[244..268].iter().all(|&x| x == 0));
    }
}
