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
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "ok timed send of 4096 bytes x 200: p50 ",
        "ok timed rdma read of 4096 bytes x 200: p50 ",
        "ok timed rdma write of 4096 bytes x 200: p50 ",
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

/// The same handles in two processes, one queue pair each, connected through the sealed
/// exchange over a TCP connection between them, as two nodes are: a SEND, an RDMA READ and
/// an RDMA WRITE, each side checking what it received or what was written into it.
#[test]
fn two_processes_connect_their_queue_pairs_and_move_pages() {
    let run = Lab::new()
        .rdma()
        .bin(workspace_bin("verbs-selftest", "transport-verbs"))
        .timeout(Duration::from_secs(300))
        .run(
            "verbs-selftest rxe0 --serve 7100 > /tmp/server.log 2>&1 & s=$!; sleep 1; \
             verbs-selftest rxe0 --connect 127.0.0.1:7100; c=$?; wait $s; \
             echo \"@@EXIT server $? client $c\"; sed 's/^/[server] /' /tmp/server.log",
        );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "@@EXIT server 0 client 0",
        "ok sent a page, read the server's page, wrote into its buffer",
        "ok the server checked the written page",
        "[server] ok received the client's page",
        "[server] ok the client's RDMA WRITE landed",
    ] {
        assert!(run.output.contains(want), "{want}:\n{}", run.describe());
    }
}

/// Two VMs joined by a virtual Ethernet (QEMU's UDP socket netdev), `rxe0` on each one's
/// `eth0`: the two sides of `verbs-selftest` on different hosts, as two nodes are, over RoCE
/// v2 through a (virtual) network rather than loopback.
#[test]
fn two_vms_connect_their_queue_pairs_over_a_network() {
    let run = Lab::new()
        .rdma()
        .two_vms()
        .bin(workspace_bin("verbs-selftest", "transport-verbs"))
        .timeout(Duration::from_secs(300))
        .run(
            "if [ \"$LAB_VM\" = 0 ]; then verbs-selftest rxe0 --serve 7100; \
             else verbs-selftest rxe0 --connect \"$LAB_PEER:7100\"; fi",
        );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "[vm0] ok received the client's page",
        "[vm0] ok the client's RDMA WRITE landed",
        "[vm0] verbs-selftest: all passed",
        "[vm1] ok sent a page, read the server's page, wrote into its buffer",
        "[vm1] verbs-selftest: all passed",
    ] {
        assert!(run.output.contains(want), "{want}:\n{}", run.describe());
    }
}

/// The verbs transport's own suite (`verbs-transport-check`): two transports on two threads
/// connected as two nodes are, frames of every payload kind, 5000 page frames through a
/// receiver that holds its slots (credits and backpressure), a peer that leaves, mismatched
/// keys, a peer announcing a queue pair that does not exist, and a frame from the wrong node.
#[test]
fn the_verbs_transport_passes_its_suite_on_soft_roce() {
    let run = Lab::new()
        .rdma()
        .bin(workspace_bin("verbs-transport-check", "transport-verbs"))
        .timeout(Duration::from_secs(600))
        .run("verbs-transport-check rxe0");
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for check in [
        "frames",
        "window",
        "peer-death",
        "wrong-keys",
        "bogus-qpn",
        "wrong-sender",
    ] {
        assert!(
            run.output.contains(&format!("ok {check} (")),
            "{check}:\n{}",
            run.describe()
        );
    }
}

/// Two `ssi-dp` nodes in two VMs, `--transport verbs` over soft-RoCE on the virtual Ethernet
/// between them: the `demo` workload (read sharing, write invalidation, contended atomics)
/// gives exact results on both, every page having crossed by RDMA SEND.
#[test]
fn two_nodes_in_two_vms_run_a_workload_over_verbs() {
    let run = Lab::new()
        .rdma()
        .two_vms()
        .timeout(Duration::from_secs(400))
        .run(
            "printf '%s' lab-two-vm-cluster-secret-0123 > /tmp/secret; \
             ssi-dp --node-id \"$LAB_VM\" --listen \"$LAB_IP:7000\" \
             --peer \"$((1 - LAB_VM))@$LAB_PEER:7000\" --cluster-secret-file /tmp/secret \
             --transport verbs --idle block --memory 16M --cores 0 --connect-timeout 120 \
             --workload demo --ops 500 --workers 2",
        );
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for vm in 0..2 {
        for want in [
            format!("[vm{vm}] ssi-dp: node {vm}: transport: RDMA verbs on rxe0 port 1"),
            format!("[vm{vm}] node {vm}: workload demo: OK: "),
            "total 2000 = 2 nodes x 2 workers x 500 ops".to_string(),
        ] {
            assert!(run.output.contains(&want), "{want}:\n{}", run.describe());
        }
    }
}

/// `fault-latency` rows over verbs (soft-RoCE, one VM): remote reads and writes served by a
/// home reached through the verbs transport, next to the same rows over io_uring TCP, every
/// page checked. The machine line must say the CPU is emulated: the timings show that it
/// works, not how fast.
#[test]
fn fault_latency_runs_its_rows_over_verbs() {
    let run = Lab::new()
        .rdma()
        .bin(workspace_bin("fault-latency", "bench"))
        .timeout(Duration::from_secs(600))
        .run(
            "fault-latency --samples 100 --max-sharers 0 --scenarios remote-read,remote-write \
             --no-progress --idle block --shard-cpu 0 --fault-cpus 0 --helper-cpu 0 \
             --transport verbs,uring",
        );
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "CPU emulated by QEMU TCG: these timings show that it works, not how fast",
        "## transport verbs/mac",
        "# transport: RDMA verbs on rxe0 port 1",
        "## transport uring/mac",
    ] {
        assert!(run.output.contains(want), "{want}:\n{}", run.describe());
    }
    let rows = |name: &str| {
        run.output
            .lines()
            .filter(|l| l.starts_with(name) && l.split_whitespace().nth(2) == Some("100"))
            .count()
    };
    assert_eq!(rows("remote-read "), 2, "{}", run.describe());
    assert_eq!(rows("remote-write-k0 "), 2, "{}", run.describe());
}

/// Three nodes over verbs on one VM's soft-RoCE; node 2 (no memory, no part in the workload:
/// it only serves) is killed with SIGKILL once the cluster formed. Its queue pairs' ends
/// must be noticed, it must be declared down, and nodes 0 and 1 must finish their workload
/// exactly over theirs.
#[test]
fn a_killed_node_over_verbs_is_declared_down_and_the_rest_go_on() {
    let run = Lab::new().rdma().timeout(Duration::from_secs(400)).run(
        "printf '%s' lab-kill-cluster-secret-01234567 > /tmp/s; \
             for i in 0 1 2; do peers=''; \
             for j in 0 1 2; do m=16M; [ $j = 2 ] && m=0; \
             [ $j != $i ] && peers=\"$peers --peer $j@127.0.0.1:$((7000 + j)),mem=$m\"; done; \
             m=16M; w='--participants 0,1 --workload counters --ops 3000 --workers 2'; \
             [ $i = 2 ] && m=0 && w=''; \
             ssi-dp --node-id $i --listen 127.0.0.1:$((7000 + i)) $peers --memory $m \
             --cluster-secret-file /tmp/s --transport verbs --idle block --cores 0 $w \
             > /tmp/n$i.log 2>&1 & eval \"p$i=$!\"; done; \
             while ! grep -q serving /tmp/n2.log; do sleep 0.2; done; kill -9 $p2; \
             wait $p0; r0=$?; wait $p1; r1=$?; wait $p2; r2=$?; \
             for i in 0 1 2; do sed \"s/^/[n$i] /\" /tmp/n$i.log; done; \
             echo \"@@NODE 0 $r0\"; echo \"@@NODE 1 $r1\"; echo \"@@NODE 2 $r2\"; \
             [ $r0 = 0 ] && [ $r1 = 0 ]",
    );
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "@@NODE 2 137",
        "@@NODE 0 0",
        "@@NODE 1 0",
        "[n2] ssi-dp: node 2: transport: RDMA verbs on rxe0 port 1",
        "[n0] node 0: workload counters: OK",
        "[n1] node 1: workload counters: OK",
        "node n2 is down",
    ] {
        assert!(run.output.contains(want), "{want}:\n{}", run.describe());
    }
}

/// `--transport auto` per peer: nodes 0 and 1 offer verbs (a device is ready), node 2 asks
/// for io_uring TCP and offers nothing. Nodes 0 and 1 must connect to each other over verbs
/// and to node 2 over TCP, say so at start, and the `demo` workload must be exact on all
/// three over the mixed links.
#[test]
fn auto_uses_verbs_between_nodes_that_offer_it_and_tcp_with_the_rest() {
    let run = Lab::new()
        .rdma()
        .timeout(Duration::from_secs(400))
        .run(
            "printf '%s' lab-mixed-cluster-secret-0123456 > /tmp/s; pids=''; \
             for i in 0 1 2; do t=auto; [ $i = 2 ] && t=uring; peers=''; \
             for j in 0 1 2; do [ $j != $i ] && peers=\"$peers --peer $j@127.0.0.1:$((7000 + j))\"; done; \
             ssi-dp --node-id $i --listen 127.0.0.1:$((7000 + i)) $peers --cluster-secret-file /tmp/s \
             --transport $t --idle block --memory 16M --cores 0 --workload demo --ops 300 --workers 2 \
             > /tmp/n$i.log 2>&1 & pids=\"$pids $!\"; done; rc=0; \
             for p in $pids; do wait $p || rc=1; done; \
             for i in 0 1 2; do sed \"s/^/[n$i] /\" /tmp/n$i.log; done; exit $rc",
        );
    eprintln!("{}", run.output);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    for want in [
        "[n0] ssi-dp: node 0: transport: io_uring",
        "RDMA verbs on rxe0 port 1 for each peer that offers them too; links: node 1 verbs, node 2 TCP",
        "links: node 0 verbs, node 2 TCP",
        "[n0] node 0: workload demo: OK: ",
        "[n1] node 1: workload demo: OK: ",
        "[n2] node 2: workload demo: OK: ",
    ] {
        assert!(run.output.contains(want), "{want}:\n{}", run.describe());
    }
    assert!(
        !run.output.contains("[n2] ssi-dp: node 2: transport: io_uring (zero-copy send available, wait timeouts available); pages sent with vectored copying sends; RDMA"),
        "node 2 asked for io_uring and must not offer verbs:\n{}",
        run.describe()
    );
}
