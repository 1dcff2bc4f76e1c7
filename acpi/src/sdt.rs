//! The common 36-byte ACPI system description table header, little-endian field writers and the
//! 8-bit checksum, shared by the tables this crate writes itself.

/// OEM identity written into every table header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OemIds {
    /// OEM ID (6 bytes).
    pub oem_id: [u8; 6],
    /// OEM table ID (8 bytes).
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
}

impl OemIds {
    /// The ids ssi-dp uses.
    pub const SSI_DP: OemIds = OemIds {
        oem_id: *b"SSI-DP",
        oem_table_id: *b"SSIDPNUM",
        oem_revision: 1,
    };
}

impl Default for OemIds {
    fn default() -> Self {
        Self::SSI_DP
    }
}

/// Creator ID in headers this crate writes.
pub const CREATOR_ID: [u8; 4] = *b"SSDP";
/// Creator revision in headers this crate writes.
pub const CREATOR_REVISION: u32 = 1;
/// Size of the common table header.
pub const HEADER_LEN: usize = 36;
const LENGTH_OFFSET: usize = 4;
const CHECKSUM_OFFSET: usize = 9;

/// Byte value that makes `bytes` sum to zero modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Whether `bytes` sum to zero modulo 256 (what ACPI requires of a table).
pub fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)) == 0
}

/// A table under construction: header first, body appended, length and checksum set by
/// [`Sdt::finish`].
#[derive(Debug)]
pub(crate) struct Sdt {
    bytes: Vec<u8>,
}

impl Sdt {
    /// Starts a table with the given signature and revision.
    pub(crate) fn new(signature: [u8; 4], revision: u8, ids: &OemIds) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&signature);
        bytes.extend_from_slice(&[0; 4]); // length, set by finish
        bytes.push(revision);
        bytes.push(0); // checksum, set by finish
        bytes.extend_from_slice(&ids.oem_id);
        bytes.extend_from_slice(&ids.oem_table_id);
        bytes.extend_from_slice(&ids.oem_revision.to_le_bytes());
        bytes.extend_from_slice(&CREATOR_ID);
        bytes.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
        debug_assert_eq!(bytes.len(), HEADER_LEN);
        Self { bytes }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }

    /// Overwrites a little-endian `u32` already written at `offset`.
    pub(crate) fn patch_u32(&mut self, offset: usize, v: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets the length and checksum and returns the table's bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        // Table sizes are bounded by the topology limits (well under 4 GiB).
        let len = u32::try_from(self.bytes.len()).unwrap_or(u32::MAX);
        self.patch_u32(LENGTH_OFFSET, len);
        self.bytes[CHECKSUM_OFFSET] = 0;
        self.bytes[CHECKSUM_OFFSET] = checksum(&self.bytes);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_table_has_length_and_zero_sum() {
        let mut t = Sdt::new(*b"TEST", 3, &OemIds::SSI_DP);
        t.u8(0xff).u16(0x1234).u32(0xdead_beef).u64(u64::MAX);
        let bytes = t.finish();
        assert_eq!(bytes.len(), HEADER_LEN + 15);
        assert_eq!(&bytes[0..4], b"TEST");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 51);
        assert_eq!(bytes[8], 3);
        assert_eq!(&bytes[10..16], b"SSI-DP");
        assert!(sums_to_zero(&bytes));
        let mut corrupted = bytes.clone();
        corrupted[40] ^= 1;
        assert!(!sums_to_zero(&corrupted));
    }

    #[test]
    fn checksum_complements_the_sum() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[1]), 0xff);
        assert_eq!(checksum(&[0x80, 0x80]), 0);
        assert_eq!(checksum(&[0xff, 0x02]), 0xff);
    }
}
