//! The shared transport suite (wire's `testkit`) run against the epoll transport.

wire::transport_suite!(|cfg: &wire::TransportConfig| {
    transport_epoll::EpollTransport::new(cfg).expect("creating the epoll transport")
});
