//! io_uring-only checks: zero-copy is off by default and, when asked for, follows the probe.

use transport_uring::{probe, UringTransport};
use wire::TransportConfig;

#[test]
fn zero_copy_follows_the_probe_and_the_config() {
    let f = probe().expect("io_uring works on the test hosts");
    let t = UringTransport::new(&TransportConfig::default()).expect("transport");
    assert!(!t.zero_copy(), "copying vectored sends are the default");
    let on = TransportConfig {
        zero_copy: true,
        ..TransportConfig::default()
    };
    let t = UringTransport::new(&on).expect("transport");
    assert_eq!(t.zero_copy(), f.send_zc);
}

#[test]
fn invalid_configuration_is_refused() {
    let bad = TransportConfig {
        rx_buf_count: 3,
        ..TransportConfig::default()
    };
    let e = UringTransport::new(&bad).expect_err("rx_buf_count must be a power of two");
    assert!(e.to_string().contains("power of two"), "{e}");
}
