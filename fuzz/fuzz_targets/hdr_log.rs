//! Fuzzes the HDR interval-log reader behind `fault-latency show` and `compare` (files a user
//! may pass from anywhere): any bytes must give histograms or a typed error, never a panic.

#![no_main]

use engine::histlog::parse_log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(series) = parse_log(data) {
        for (tag, h) in series {
            assert!(!tag.is_empty());
            // Every accepted histogram answers the queries `show` makes.
            let _ = (h.len(), h.max(), h.value_at_quantile(0.99));
        }
    }
});
