//! Unauthenticated sockets cannot starve members: 64 hostile connections to a node's data
//! port — silent, trickling one byte at a time, or sending a well-formed hello and then
//! nothing — each reopened as soon as the node closes it, delay the cluster's formation by
//! less than a second. (Before the bounded handshake pool, 16 silent sockets took every
//! handshake slot for 5 s each and further connections were accepted and closed: formation
//! took 15–20 s longer, or never happened within --connect-timeout.)

use std::time::{Duration, Instant};

use ssi_tests::flood::Flood;
use ssi_tests::{launch, scratch_dir, secret_file, NodeOpts};

const HOSTILE: usize = 64;

/// Node 0 starts this long after node 1, so that the flood is in its steady state (sockets
/// expiring and reopening) when node 0 dials.
const NODE0_DELAY: Duration = Duration::from_millis(2500);

/// Starts a two-node cluster; while `flood` is set, 64 hostile sockets hammer node 1's data
/// port (the one node 0 dials) from the launch on. Returns the time from node 0's start
/// until both nodes formed, and the hostile connections made.
fn formation(flood: bool, tag: &str) -> (Duration, u64) {
    let dir = scratch_dir(tag);
    let s = secret_file(&dir, "secret", 61);
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        NodeOpts::new(
            id,
            &[
                "--memory",
                "16M",
                "--cores",
                &cores,
                "--idle",
                "block",
                "--cluster-secret-file",
                &s,
                "--connect-timeout",
                "60",
            ],
        )
    };
    let t0 = Instant::now();
    let nodes = launch(&[node(0).start_after(NODE0_DELAY), node(1)]);
    let flood = flood.then(|| Flood::start(&[nodes[1].port], HOSTILE));
    for n in &nodes {
        assert!(
            n.wait_for_output("cluster formed", Duration::from_secs(90)),
            "node {} never formed (flood: {}):\n{}",
            n.id,
            flood.is_some(),
            n.output()
        );
    }
    let took = t0.elapsed().saturating_sub(NODE0_DELAY);
    // Keep the flood on a moment longer: the formed cluster keeps serving.
    std::thread::sleep(Duration::from_millis(300));
    let opened = flood.map(Flood::stop).unwrap_or(0);
    for n in &nodes {
        let out = n.output();
        assert!(!out.contains("panicked"), "{out}");
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    (took, opened)
}

#[test]
fn hostile_sockets_delay_formation_by_less_than_a_second() {
    let (quiet, _) = formation(false, "flood-off");
    let (flooded, opened) = formation(true, "flood-on");
    eprintln!(
        "formation: {:.0} ms quiet, {:.0} ms with {HOSTILE} hostile sockets ({opened} connections)",
        quiet.as_secs_f64() * 1e3,
        flooded.as_secs_f64() * 1e3
    );
    assert!(
        opened >= 2 * HOSTILE as u64,
        "the flood never cycled (the node closes each socket, the attacker reopens it): \
         {opened} connections"
    );
    assert!(
        flooded <= quiet + Duration::from_secs(1),
        "formation took {flooded:?} under the flood, {quiet:?} without"
    );
}
