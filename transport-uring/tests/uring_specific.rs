//! io_uring-only checks: zero-copy is chosen from the probe, and the copy fallback (no
//! `SEND_ZC`) carries a checked stream as well.

use transport_uring::{probe, UringTransport};
use wire::TransportConfig;

#[test]
fn zero_copy_follows_the_probe_and_the_config() {
    let f = probe().expect("io_uring works on the test hosts");
    let t = UringTransport::new(&TransportConfig::default()).expect("transport");
    assert_eq!(t.zero_copy(), f.send_zc);
    let off = TransportConfig {
        zero_copy: false,
        ..TransportConfig::default()
    };
    let t = UringTransport::new(&off).expect("transport");
    assert!(!t.zero_copy());
}

#[test]
fn copy_fallback_carries_a_checked_stream() {
    wire::testkit::scenarios::tiny_socket_buffers(|cfg: &TransportConfig| {
        let cfg = TransportConfig {
            zero_copy: false,
            ..cfg.clone()
        };
        UringTransport::new(&cfg).expect("transport")
    });
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
