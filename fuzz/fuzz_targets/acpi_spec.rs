//! Fuzzes the ACPI topology text forms (`--layout`, the measured matrices and the operator's
//! overrides) and the table builders behind them: any text must give a topology or a typed
//! error, and every accepted topology must build tables that place and sum to zero.

#![no_main]

use acpi::{parse_topology, sums_to_zero, tables, Placement, SpecArgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields separated by newlines, in SpecArgs order; a missing field is None.
    let mut f = text.split('\n');
    let layout = f.next().unwrap_or("");
    let mut opt = || f.next().filter(|s| !s.is_empty());
    let args = SpecArgs {
        layout,
        latency_ns: opt(),
        bandwidth_mbps: opt(),
        slit: opt(),
        hmat_latency_ns: opt(),
        hmat_bandwidth_mbps: opt(),
    };
    let Ok(topology) = parse_topology(&args) else {
        return;
    };
    let set = tables(&topology);
    for t in [&set.dsdt, &set.madt, &set.srat, &set.slit, &set.hmat] {
        assert!(sums_to_zero(t), "a table's checksum is wrong");
    }
    // Placing may refuse a topology too large for the area; it must not panic.
    let _ = set.image(Placement::BIOS_AREA);
});
