//! A generic test suite for `Transport` implementations (feature `testkit`), instantiated by
//! each transport crate with [`transport_suite!`](crate::transport_suite) so both run the
//! same checks: message streams with checksummed payloads in one process, across processes and
//! across a veth pair between network namespaces; malformed frames of every kind; a peer killed
//! mid-stream; handshake refusals; sealed frames (MAC and AEAD) and tampering; send and receive backpressure; waking from `wait`.

pub mod child;
pub mod gen;
pub mod net;
pub mod scenarios;
pub mod sealed;

/// Instantiates the suite for a transport: `transport_suite!(|cfg| MyTransport::new(cfg).unwrap())`.
/// Generates one `#[test]` per scenario plus `testkit_child`, the entry point child processes
/// run (a no-op unless the `SSI_TESTKIT_ROLE` environment variable is set).
#[macro_export]
macro_rules! transport_suite {
    ($make:expr) => {
        fn __testkit_make(cfg: &$crate::TransportConfig) -> impl $crate::Transport {
            let f = $make;
            f(cfg)
        }

        #[test]
        fn million_messages_in_process() {
            $crate::testkit::scenarios::million_in_process(__testkit_make);
        }

        #[test]
        fn tiny_socket_buffers_force_short_sends_and_split_frames() {
            $crate::testkit::scenarios::tiny_socket_buffers(__testkit_make);
        }

        #[test]
        fn million_messages_two_processes() {
            $crate::testkit::scenarios::million_two_processes(__testkit_make);
        }

        #[test]
        fn malformed_frames_close_only_the_offender() {
            $crate::testkit::scenarios::malformed_frames(__testkit_make);
        }

        #[test]
        fn peer_killed_mid_stream_is_reported() {
            $crate::testkit::scenarios::peer_killed(__testkit_make);
        }

        #[test]
        fn wrong_secret_refused_others_keep_working() {
            $crate::testkit::scenarios::wrong_secret(__testkit_make);
        }

        #[test]
        fn send_backpressure_is_bounded() {
            $crate::testkit::scenarios::send_backpressure(__testkit_make);
        }

        #[test]
        fn receive_backpressure_holds_then_resumes() {
            $crate::testkit::scenarios::receive_backpressure(__testkit_make);
        }

        #[test]
        fn wait_wakes_for_watched_fd_and_traffic() {
            $crate::testkit::scenarios::wait_wakes(__testkit_make);
        }

        #[test]
        fn close_peer_reports_and_id_is_reusable() {
            $crate::testkit::scenarios::close_and_reuse(__testkit_make);
        }

        #[test]
        fn mac_sealed_frames_open_and_a_flipped_bit_is_refused() {
            $crate::testkit::sealed::sealed_frames(__testkit_make, $crate::FrameAuth::Mac);
        }

        #[test]
        fn aead_sealed_frames_are_encrypted_and_a_flipped_bit_is_refused() {
            $crate::testkit::sealed::sealed_frames(__testkit_make, $crate::FrameAuth::Aead);
        }

        #[test]
        fn veth_between_network_namespaces() {
            $crate::testkit::scenarios::veth(__testkit_make);
        }

        #[test]
        fn testkit_child() {
            $crate::testkit::child::child_main(__testkit_make);
        }
    };
}
