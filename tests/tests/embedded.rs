//! The embedding API: two nodes started in one process (as a VMM or a benchmark would start
//! its node), each with its own region and userfaultfd; threads touch guest memory directly
//! and see each other's writes.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::config::{ClusterSpec, NodeSpec};
use engine::idle::IdlePolicy;
use engine::node::{Node, NodeConfig};
use engine::node_state::StopReason;

fn start_pair() -> (Node, Node) {
    let l0 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let (a0, a1) = (l0.local_addr().unwrap(), l1.local_addr().unwrap());
    let spec = |me: u16| {
        let n0 = NodeSpec {
            id: 0,
            addr: a0,
            memory: 1 << 20,
        };
        let n1 = NodeSpec {
            id: 1,
            addr: a1,
            memory: 1 << 20,
        };
        if me == 0 {
            ClusterSpec::new(n0, vec![n1]).unwrap()
        } else {
            ClusterSpec::new(n1, vec![n0]).unwrap()
        }
    };
    let cfg = |me: u16, l: TcpListener| {
        let mut c = NodeConfig::new(spec(me), l, vec![42u8; 32]);
        c.pin = false;
        c.idle = IdlePolicy::Block;
        c.connect_timeout = Duration::from_secs(30);
        c
    };
    let c1 = cfg(1, l1);
    let t = std::thread::spawn(move || Node::start(c1).expect("node 1"));
    let n0 = Node::start(cfg(0, l0)).expect("node 0");
    (n0, t.join().unwrap())
}

fn word(node: &Node, page: u64) -> &AtomicU64 {
    // SAFETY: the page lies in the node's region, which lives as long as `node`; the word is
    // 8-byte aligned and only accessed atomically.
    unsafe { AtomicU64::from_ptr(node.page_ptr(page).cast()) }
}

#[test]
fn two_in_process_nodes_share_memory() {
    let (n0, n1) = start_pair();
    assert_eq!(n0.layout().end_page(), 512, "two 1 MiB contributions");
    assert_eq!(n0.layout().home_of(300).unwrap().get(), 1);
    // Node 0 writes pages homed on both nodes; node 1 reads them; then node 1 writes back.
    for page in [3u64, 300] {
        word(&n0, page).store(page * 10, Ordering::SeqCst);
    }
    for page in [3u64, 300] {
        assert_eq!(word(&n1, page).load(Ordering::SeqCst), page * 10);
        word(&n1, page).fetch_add(1, Ordering::SeqCst);
        assert_eq!(word(&n0, page).load(Ordering::SeqCst), page * 10 + 1);
    }
    // Concurrent increments from both nodes on one page.
    std::thread::scope(|s| {
        for n in [&n0, &n1] {
            s.spawn(move || {
                for _ in 0..2000 {
                    word(n, 400).fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(word(&n0, 400).load(Ordering::SeqCst), 4000);
    assert_eq!(word(&n1, 400).load(Ordering::SeqCst), 4000);
    n1.leave(Duration::from_secs(10))
        .expect("node 1 hands its replicas back");
    n0.leave(Duration::from_secs(10))
        .expect("node 0 hands its replicas back");
    assert_eq!(word(&n0, 300).load(Ordering::SeqCst), 3001);
    n0.shutdown();
    n1.shutdown();
}

/// A memory operation the protocol asked for that fails stops the node with the reason: here
/// node 0's copy of a page it homes is taken out of its userfaultfd, so the write-protect it
/// must apply before answering node 1's read fails (ENOENT), and node 0 records
/// `StopReason::MemoryOp` instead of going on with a copy it can no longer protect.
#[test]
fn a_failed_write_protect_stops_the_node() {
    let (n0, n1) = start_pair();
    let page = 3u64;
    word(&n0, page).store(7, Ordering::SeqCst);
    assert_eq!(n0.state().fatal(), None);
    let addr = n0.region().page_addr(page);
    n0.region()
        .uffd_of(page)
        .unregister(addr, 4096)
        .expect("unregister one page");
    assert_eq!(word(&n1, page).load(Ordering::SeqCst), 7);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while n0.state().fatal().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        n0.state().fatal(),
        Some(StopReason::MemoryOp {
            op: "write-protect",
            page
        })
    );
    assert_eq!(n1.state().fatal(), None);
    n0.shutdown();
    n1.shutdown();
}
