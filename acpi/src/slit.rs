//! SLIT (System Locality Information Table, ACPI 6.5 §5.2.17): the n×n distance matrix indexed
//! by proximity domain, row = from, column = to. Asymmetric matrices are kept as given.

use super::sdt::{OemIds, Sdt};
use super::topology::Matrix;

/// SLIT revision written.
pub const REVISION: u8 = 1;

/// Builds the SLIT from a distance matrix (see [`super::figures`]).
pub fn build(distances: &Matrix<u8>, ids: &OemIds) -> Vec<u8> {
    let mut t = Sdt::new(*b"SLIT", REVISION, ids);
    t.u64(distances.dim() as u64);
    for from in 0..distances.dim() {
        t.bytes(distances.row(from));
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdt::{sums_to_zero, HEADER_LEN};

    #[test]
    fn keeps_asymmetric_rows_in_order() {
        let d = Matrix::from_rows(
            "d",
            vec![vec![10, 20, 30], vec![21, 10, 40], vec![31, 41, 10]],
        )
        .unwrap();
        let b = build(&d, &OemIds::SSI_DP);
        assert!(sums_to_zero(&b));
        assert_eq!(b.len(), HEADER_LEN + 8 + 9);
        assert_eq!(u64::from_le_bytes(b[36..44].try_into().unwrap()), 3);
        assert_eq!(&b[44..], &[10, 20, 30, 21, 10, 40, 31, 41, 10]);
    }
}
