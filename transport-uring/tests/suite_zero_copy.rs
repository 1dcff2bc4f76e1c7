//! The shared transport suite again, with zero-copy sends (`SEND_ZC` chains) forced on where
//! the kernel has them; the default path is the vectored copying send (`suite.rs`).

wire::transport_suite!(|cfg: &wire::TransportConfig| {
    let cfg = wire::TransportConfig {
        zero_copy: true,
        ..cfg.clone()
    };
    transport_uring::UringTransport::new(&cfg).expect("creating the io_uring transport")
});
