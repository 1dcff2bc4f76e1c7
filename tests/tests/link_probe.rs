//! The link probe (`PROBE_CHANNEL`, engine/src/link_probe.rs) on a running node, from a
//! hostile member: it holds the cluster secret, so its handshakes are accepted, and it then
//! sends a malformed request, opens more probes than a node serves at once, and streams
//! within the bounds. The node refuses what it must, serves what it may, and its cluster
//! finishes its workload exactly.

use std::io::{Read, Write};
use std::time::Duration;

use ssi_tests::{
    assert_all_ok, digest_two_16m, launch, scratch_dir, secret_file, wait_all, NodeOpts,
};
use wire::handshake::{self, HandshakeConfig, PROBE_CHANNEL};

const TIMEOUT: Duration = Duration::from_secs(240);

/// A probe request: `blocks` blocks of `block` bytes (docs/wire.md, "Link probe").
fn request(blocks: u32, block: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(b"SSIP");
    r[4..8].copy_from_slice(&blocks.to_le_bytes());
    r[8..12].copy_from_slice(&block.to_le_bytes());
    r
}

#[test]
fn a_hostile_members_probes_are_bounded_and_the_node_keeps_serving() {
    let dir = scratch_dir("link-probe");
    let secret = secret_file(&dir, "secret", 12);
    let node = |id: u16| {
        let a: Vec<String> = [
            "--cores",
            &(id % 2).to_string(),
            "--idle",
            "block",
            "--cluster-secret-file",
            &secret.display().to_string(),
            "--memory",
            "16M",
            "--workload",
            "seqs",
            "--ops",
            "200000",
            // The node must still serve when the silent probes time out (5 s), however fast
            // the workload went (about 1 s here): it keeps serving 12 s after it.
            "--linger-secs",
            "12",
            "--connect-timeout",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let procs = launch(&[node(0), node(1)]);
    assert!(procs[0].wait_for_output("cluster formed", Duration::from_secs(60)));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], procs[0].port));
    let cfg = HandshakeConfig::new(
        1,
        &std::fs::read(&secret).expect("secret"),
        digest_two_16m(),
    )
    .expect("config");
    let probe = || handshake::connect(addr, &cfg, 0, PROBE_CHANNEL).expect("probe handshake");

    // A well-formed request, sealed with the connection's keys, is served in full.
    let a = probe();
    let mut s = a.stream;
    let mut sealer = a.keys.sealer().expect("keys").expect("frames are sealed");
    let mut msg = request(4, 4096);
    let tag = sealer.seal_message(&mut msg).expect("seal");
    s.write_all(&msg).expect("send request");
    s.write_all(&tag).expect("send tag");
    let mut got = vec![0u8; 4 * 4096];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.read_exact(&mut got).expect("the stream asked for");
    drop(s);

    // A request whose tag does not verify ends that connection with a logged reason.
    let mut s = probe().stream;
    s.write_all(&request(4, 4096)).expect("send request");
    s.write_all(&[0u8; 16]).expect("send a wrong tag");
    let mut one = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(
        matches!(s.read(&mut one), Ok(0) | Err(_)),
        "a request that is not authentic must get no stream"
    );

    // Two silent probes occupy the node's probe servers; a third is refused.
    let held = [probe().stream, probe().stream];
    let _third = handshake::connect(addr, &cfg, 0, PROBE_CHANNEL);
    assert!(
        procs[0].wait_for_output("probes are being served already", Duration::from_secs(20)),
        "a third probe must be refused:\n{}",
        procs[0].output()
    );
    // Silent probes time out (5 s) and free their servers.
    assert!(
        procs[0].wait_for_output("link probe: reading a request", Duration::from_secs(30)),
        "a silent probe must time out:\n{}",
        procs[0].output()
    );
    drop(held);

    // The freed servers serve a well-formed request in full again.
    let b = probe();
    let mut s = b.stream;
    let mut sealer = b.keys.sealer().expect("keys").expect("frames are sealed");
    let mut msg = request(2, 4096);
    let tag = sealer.seal_message(&mut msg).expect("seal");
    s.write_all(&msg).expect("send request");
    s.write_all(&tag).expect("send tag");
    let mut got = vec![0u8; 2 * 4096];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.read_exact(&mut got)
        .expect("after the silent probes timed out, a probe is served again");
    drop(s);

    let r = wait_all(procs, TIMEOUT);
    assert_all_ok(&r);
    for (_, _, out) in &r {
        assert!(out.contains("0 went backwards, own slots exact"), "{out}");
    }
    assert!(
        r[0].2.contains("not authentic"),
        "the altered request must be logged:\n{}",
        r[0].2
    );
    let _ = std::fs::remove_dir_all(&dir);
}
