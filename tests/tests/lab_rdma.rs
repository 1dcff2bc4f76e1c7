//! The verbs handles of `transport-verbs` on a real RDMA device: soft-RoCE (`rdma_rxe`) in the
//! lab VM (Debian's generic 6.12 kernel, rdma-core 44), where `verbs-selftest` connects two RC
//! queue pairs by the sealed endpoint exchange over TCP that nodes use, and moves pages by
//! SEND, RDMA READ and RDMA WRITE (to the exchanged address and rkey), a window of sends, and
//! a read with a wrong rkey that must be refused. Timings under TCG say nothing about speed.

use std::time::Duration;

use ssi_tests::lab::Lab;
use ssi_tests::workspace_bin;

#[test]
fn verbs_handles_move_pages_over_soft_roce() {
    let run = Lab::new()
        .rdma()
        .bin(workspace_bin("verbs-selftest", "transport-verbs"))
        .timeout(Duration::from_secs(300))
        .run("verbs-selftest rxe0");
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "ok open rxe0: port 1 active",
        "link layer ethernet (RoCE)",
        "over a sealed TCP exchange",
        "ok send/recv 4096 bytes",
        "ok rdma read 4096 bytes",
        "ok rdma write 4096 bytes",
        "ok window of 48 sends, received in order",
        "ok wrong rkey refused",
        "verbs-selftest: all passed",
    ] {
        assert!(run.output.contains(want), "{want}:\n{}", run.describe());
    }
}
