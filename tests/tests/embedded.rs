//! The embedding API: two nodes started in one process (as a VMM or a benchmark would start
//! its node), each with its own region and userfaultfd; threads touch guest memory directly
//! and see each other's writes.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::config::{ClusterSpec, NodeSpec};
use engine::idle::IdlePolicy;
use engine::node::{Node, NodeConfig};

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
