//! From measured inter-node figures to the values the guest is told: SLIT distances (a
//! logarithmic scale of the latency ratio, see docs/acpi.md "From measurements to SLIT") and the
//! HMAT latency/bandwidth matrices, with the operator's overrides applied. Integer arithmetic
//! only, so the output is byte-stable on every machine.

use super::topology::{Matrix, Topology};

/// SLIT distance of a node to itself (ACPI's normalisation).
pub const LOCAL_DISTANCE: u8 = 10;
/// Smallest distance to another node (Linux refuses a SLIT with a remote distance <= 10).
pub const MIN_REMOTE_DISTANCE: u8 = 11;
/// Largest distance to another node (255 means "unreachable").
pub const MAX_REMOTE_DISTANCE: u8 = 254;

/// Fractional bits of the fixed-point log2.
const FRAC_BITS: u32 = 16;

/// The figures the tables are built from, overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// SLIT distances, `[from][to]` by proximity domain.
    pub slit: Matrix<u8>,
    /// HMAT access latency in ns, `[initiator][target]` by proximity domain.
    pub latency_ns: Matrix<u32>,
    /// HMAT access bandwidth in MB/s, `[initiator][target]` by proximity domain.
    pub bandwidth_mbps: Matrix<u32>,
}

/// Applies the overrides and the SLIT formula to a topology's measurements.
pub fn figures(topology: &Topology) -> Figures {
    let overrides = topology.overrides();
    let measured = topology.measurements();
    let latency_ns = overrides
        .latency_ns
        .clone()
        .unwrap_or_else(|| measured.fetch_latency_ns.clone());
    let bandwidth_mbps = overrides
        .bandwidth_mbps
        .clone()
        .unwrap_or_else(|| measured.bandwidth_mbps.clone());
    let slit = overrides
        .slit
        .clone()
        .unwrap_or_else(|| slit_from_latency(&latency_ns));
    Figures {
        slit,
        latency_ns,
        bandwidth_mbps,
    }
}

/// SLIT matrix from a latency matrix: row `i` is normalised by node `i`'s local latency.
pub fn slit_from_latency(latency_ns: &Matrix<u32>) -> Matrix<u8> {
    Matrix::from_fn(latency_ns.dim(), |from, to| {
        if from == to {
            LOCAL_DISTANCE
        } else {
            distance(latency_ns.get(from, from), latency_ns.get(from, to))
        }
    })
}

/// Distance to a node whose 4 KiB fetch takes `remote_ns`, from a node whose local 4 KiB copy
/// takes `local_ns`: `round(10 * (1 + log2(remote_ns / local_ns)))`, clamped to 11..=254.
///
/// This equals ACPI's linear convention (10 × ratio) at ratios 1 and 2, so a remote node twice
/// as slow is the familiar 20, and grows by 10 per doubling beyond, so that the 50–200× ratios of
/// a network fetch stay far below 255 and stay ordered. A zero `local_ns` is treated as 1 ns.
pub fn distance(local_ns: u32, remote_ns: u32) -> u8 {
    let local = u64::from(local_ns.max(1));
    let remote = u64::from(remote_ns);
    if remote <= local {
        return MIN_REMOTE_DISTANCE;
    }
    let log = log2_fixed(remote, local);
    // 10 * (1 + log2) in fixed point, rounded to nearest.
    let scaled = (10u64 << FRAC_BITS) + 10 * log + (1 << (FRAC_BITS - 1));
    let d = scaled >> FRAC_BITS;
    d.clamp(
        u64::from(MIN_REMOTE_DISTANCE),
        u64::from(MAX_REMOTE_DISTANCE),
    ) as u8
}

/// `log2(num / den)` for `num > den > 0`, in unsigned fixed point with [`FRAC_BITS`] fraction
/// bits, truncated. Uses the classic square-and-compare digit recurrence.
fn log2_fixed(num: u64, den: u64) -> u64 {
    debug_assert!(num > den && den > 0);
    // Integer part: the largest k with den * 2^k <= num.
    let mut int = 0u64;
    while (u128::from(den) << (int + 1)) <= u128::from(num) {
        int += 1;
    }
    // Mantissa x = num / (den * 2^int) in [1, 2), as Q62.
    const ONE: u128 = 1 << 62;
    let mut x = (u128::from(num) << 62) / (u128::from(den) << int);
    let mut frac = 0u64;
    for bit in (0..FRAC_BITS).rev() {
        x = (x * x) >> 62;
        if x >= 2 * ONE {
            x >>= 1;
            frac |= 1 << bit;
        }
    }
    (int << FRAC_BITS) | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Measurements, MemRange, NodeDesc, Overrides};

    #[test]
    fn distance_is_linear_up_to_twice_and_logarithmic_beyond() {
        assert_eq!(distance(500, 1000), 20, "twice as slow is ACPI's usual 20");
        assert_eq!(distance(500, 2000), 30);
        assert_eq!(distance(500, 4000), 40);
        assert_eq!(distance(100, 102_400), 110, "1024x is ten doublings");
        // 1.5x: 10 * (1 + 0.585) = 15.85 -> 16.
        assert_eq!(distance(1000, 1500), 16);
        // 75x (30 us remote vs 400 ns local): 10 * (1 + 6.2288) = 72.29 -> 72.
        assert_eq!(distance(400, 30_000), 72);
    }

    #[test]
    fn distance_clamps_to_what_acpi_and_linux_accept() {
        assert_eq!(distance(500, 500), MIN_REMOTE_DISTANCE);
        assert_eq!(
            distance(500, 100),
            MIN_REMOTE_DISTANCE,
            "noise: remote faster"
        );
        assert_eq!(distance(500, 510), MIN_REMOTE_DISTANCE);
        assert_eq!(distance(0, 1000), distance(1, 1000));
        assert_eq!(distance(1, u32::MAX), MAX_REMOTE_DISTANCE);
    }

    #[test]
    fn distance_is_monotonic_in_remote_latency() {
        let mut last = 0;
        for remote in (400..2_000_000).step_by(997) {
            let d = distance(400, remote);
            assert!(d >= last, "distance fell from {last} to {d} at {remote} ns");
            last = d;
        }
        // 2 ms / 400 ns = 5000x: 10 * (1 + 12.29) = 132.9.
        assert_eq!(last, 133);
    }

    #[test]
    fn fixed_point_log2_matches_known_values() {
        let one = 1u64 << FRAC_BITS;
        assert_eq!(log2_fixed(2, 1), one);
        assert_eq!(log2_fixed(1024, 1), 10 * one);
        let three = log2_fixed(3, 1) as f64 / one as f64;
        assert!((three - 3f64.log2()).abs() < 1e-4, "{three}");
        let approx = log2_fixed(30_000, 400) as f64 / one as f64;
        assert!((approx - (75f64).log2()).abs() < 1e-4, "{approx}");
    }

    fn topology(overrides: Overrides) -> Topology {
        let lat = Matrix::from_rows(
            "lat",
            vec![
                vec![400, 30_000, 60_000],
                vec![800, 500, 2_000],
                vec![9, 9, 9],
            ],
        )
        .unwrap();
        let bw = Matrix::from_fn(3, |a, b| if a == b { 10_000 } else { 1_000 });
        let nodes = (0..3u32)
            .map(|i| NodeDesc {
                proximity_domain: i,
                ranges: vec![MemRange::new(u64::from(i) << 30, 1 << 30)],
                vcpus: vec![i],
            })
            .collect();
        Topology::new(
            nodes,
            Measurements {
                fetch_latency_ns: lat,
                bandwidth_mbps: bw,
            },
            overrides,
        )
        .unwrap()
    }

    #[test]
    fn slit_rows_are_normalised_by_their_own_local_latency() {
        let f = figures(&topology(Overrides::default()));
        assert_eq!(f.slit.row(0), &[10, 72, 82]);
        // Row 1: local 500; 800 -> 1.6x -> 16.78 -> 17; 2000 -> 4x -> 30.
        assert_eq!(f.slit.row(1), &[17, 10, 30]);
        // Row 2: all equal to local -> clamped to 11 off the diagonal.
        assert_eq!(f.slit.row(2), &[11, 11, 10]);
        assert_eq!(f.latency_ns.get(0, 1), 30_000);
        assert_eq!(f.bandwidth_mbps.get(1, 1), 10_000);
    }

    #[test]
    fn overrides_replace_measurements() {
        let slit = Matrix::from_fn(3, |a, b| if a == b { 10 } else { 40 });
        let lat = Matrix::from_fn(3, |a, b| if a == b { 100 } else { 200 });
        let bw = Matrix::from_fn(3, |_, _| 7);
        let f = figures(&topology(Overrides {
            slit: Some(slit.clone()),
            latency_ns: Some(lat.clone()),
            bandwidth_mbps: Some(bw.clone()),
        }));
        assert_eq!(f.slit, slit);
        assert_eq!(f.latency_ns, lat);
        assert_eq!(f.bandwidth_mbps, bw);

        // A latency override without a SLIT override feeds the SLIT formula.
        let f = figures(&topology(Overrides {
            latency_ns: Some(lat),
            ..Overrides::default()
        }));
        assert_eq!(f.slit.row(0), &[10, 20, 20]);
    }
}
