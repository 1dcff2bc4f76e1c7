//! The shared transport suite (wire's `testkit`) run against the io_uring transport.

wire::transport_suite!(|cfg: &wire::TransportConfig| {
    transport_uring::UringTransport::new(cfg).expect("creating the io_uring transport")
});
