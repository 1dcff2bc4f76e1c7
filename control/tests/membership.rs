//! Membership over real mutual-TLS connections on loopback, with a recording stand-in for the
//! data plane (`FakeNode`: it only records what membership asks of it). Heartbeats keep nodes
//! alive; a silenced node is suspected then declared dead within the timeout and is not
//! readmitted; a joiner is admitted through the coordinator; a compute-only node leaves.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::handle::{JoinRequest, MemberState, MembershipError, MembershipOps};
use control::membership::msg::NodeInfo;
use control::membership::{
    wait_for_admission, wait_until, LeaveProgress, Membership, MembershipConfig, NodeControl,
    NodeControlError,
};
use control::tls::{generate, GeneratedFiles, TlsIdentity};

#[derive(Default)]
struct FakeNode {
    nodes: Mutex<Vec<NodeInfo>>,
    dead: Mutex<Vec<u16>>,
    left: Mutex<Vec<u16>>,
    extended: Mutex<Vec<u16>>,
    stopped: Mutex<bool>,
    handed_back: Mutex<bool>,
    refusals: Mutex<Vec<String>>,
    /// Home-leave calls, in order.
    steps: Mutex<Vec<String>>,
}

impl NodeControl for FakeNode {
    fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().unwrap().clone()
    }
    fn declare_dead(&self, id: u16) {
        self.dead.lock().unwrap().push(id);
    }
    fn mark_left(&self, id: u16) {
        self.left.lock().unwrap().push(id);
    }
    fn refused(&self, reason: &str) {
        self.refusals.lock().unwrap().push(reason.to_string());
    }
    fn data_plane_dead(&self) -> u64 {
        0
    }
    fn extend(&self, nodes: &[NodeInfo], joiner: u16) -> Result<(), NodeControlError> {
        *self.nodes.lock().unwrap() = nodes.to_vec();
        self.extended.lock().unwrap().push(joiner);
        Ok(())
    }
    fn hand_back(&self) -> Result<(), NodeControlError> {
        *self.handed_back.lock().unwrap() = true;
        Ok(())
    }
    fn retire(&self, id: u16, to: u16) -> Result<(), NodeControlError> {
        self.steps
            .lock()
            .unwrap()
            .push(format!("retire {id}->{to}"));
        Ok(())
    }
    fn retire_progress(&self, _count_homed: bool) -> Result<LeaveProgress, NodeControlError> {
        Ok(LeaveProgress {
            fenced: true,
            drained: true,
            homed: 0,
        })
    }
    fn retired(&self, id: u16, to: u16) -> Result<(), NodeControlError> {
        self.steps
            .lock()
            .unwrap()
            .push(format!("retired {id}->{to}"));
        Ok(())
    }
    fn stop(&self) {
        *self.stopped.lock().unwrap() = true;
    }
    fn page_local(
        &self,
        gpa: u64,
    ) -> Result<control::handle::PageInfo, control::handle::PageQueryError> {
        Ok(control::handle::PageInfo {
            gpa,
            page: gpa / 4096,
            home: 0,
            state: "zero".into(),
            owner: None,
            sharers: vec![],
            version: 0,
            busy: false,
            recent_requests: vec![],
            layout_home: 0,
            moves: vec![],
        })
    }
}

fn certs(name: &str, nodes: &[u16]) -> (GeneratedFiles, std::path::PathBuf) {
    let d = std::env::temp_dir().join(format!("ssi-dp-membership-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    (generate(&d, nodes).unwrap(), d)
}

fn tls(f: &GeneratedFiles, id: u16) -> TlsIdentity {
    let (_, c, k) = f.nodes.iter().find(|x| x.0 == id).unwrap();
    TlsIdentity::load(id, &f.ca, c, k).unwrap()
}

struct Running {
    m: Membership,
    node: Arc<FakeNode>,
}

fn start(f: &GeneratedFiles, id: u16, nodes: &[NodeInfo], listener: TcpListener) -> Running {
    let node = Arc::new(FakeNode::default());
    *node.nodes.lock().unwrap() = nodes.to_vec();
    let me = nodes.iter().find(|n| n.id == id).unwrap().clone();
    let cfg = MembershipConfig {
        me,
        listener,
        heartbeat: Duration::from_millis(50),
        suspect: Duration::from_millis(250),
        dead: Duration::from_millis(600),
        tls: tls(f, id),
        admitted_by: None,
    };
    let m = Membership::start(cfg, node.clone()).unwrap();
    Running { m, node }
}

fn cluster(ids: &[u16], memory: &[u64]) -> (Vec<NodeInfo>, Vec<TcpListener>) {
    let ls: Vec<_> = ids
        .iter()
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let nodes = ids
        .iter()
        .zip(&ls)
        .zip(memory)
        .map(|((&id, l), &memory)| NodeInfo {
            id,
            addr: format!("127.0.0.1:{}", 9000 + id),
            control: l.local_addr().unwrap().to_string(),
            memory,
        })
        .collect();
    (nodes, ls)
}

fn state(r: &Running, id: u16) -> Option<MemberState> {
    r.m.members().iter().find(|m| m.id == id).map(|m| m.state)
}

#[test]
fn heartbeats_keep_nodes_alive_and_silence_kills() {
    let (f, dir) = certs("hb", &[0, 1, 2]);
    let (nodes, ls) = cluster(&[0, 1, 2], &[4096, 4096, 0]);
    let mut it = ls.into_iter();
    let a = start(&f, 0, &nodes, it.next().unwrap());
    let b = start(&f, 1, &nodes, it.next().unwrap());
    let c = start(&f, 2, &nodes, it.next().unwrap());
    // Everyone hears everyone for a while (several failure timeouts).
    std::thread::sleep(Duration::from_millis(1500));
    for r in [&a, &b, &c] {
        for id in 0..3 {
            assert_eq!(
                state(r, id),
                Some(MemberState::Alive),
                "{:?}",
                r.m.members()
            );
        }
        assert!(r.node.dead.lock().unwrap().is_empty());
    }
    assert!(!a.m.rtt().is_empty(), "heartbeat acks give RTTs");
    // A page query travels to the home over the control plane.
    let info = b.m.query_page(0, 8192).unwrap();
    assert_eq!((info.page, info.state.as_str()), (2, "zero"));
    assert!(
        b.m.query_page(7, 0).is_err(),
        "no connection to a node that is not there"
    );
    // Node 2 falls silent: suspected, then dead within the timeout (plus loop slack).
    let t0 = Instant::now();
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || a
        .node
        .dead
        .lock()
        .unwrap()
        .contains(&2)));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(600 + 400),
        "declared dead after {took:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || state(&b, 2)
        == Some(MemberState::Dead)));
    assert_eq!(state(&a, 1), Some(MemberState::Alive));
    // It comes back with the same id: refused, stays dead.
    let (_, ls2) = cluster(&[2], &[0]);
    let mut back_nodes = nodes.clone();
    back_nodes[2].control = ls2[0].local_addr().unwrap().to_string();
    let back = start(&f, 2, &back_nodes, ls2.into_iter().next().unwrap());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        state(&a, 2),
        Some(MemberState::Dead),
        "a dead node is not readmitted"
    );
    assert_eq!(state(&b, 2), Some(MemberState::Dead));
    drop(back);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_joiner_is_admitted_and_a_compute_node_leaves() {
    let (f, dir) = certs("join", &[0, 1, 2]);
    let (nodes, ls) = cluster(&[0, 1], &[4096, 4096]);
    let mut it = ls.into_iter();
    let a = start(&f, 0, &nodes, it.next().unwrap());
    let b = start(&f, 1, &nodes, it.next().unwrap());
    std::thread::sleep(Duration::from_millis(300));

    // The joiner waits for admission on its control port.
    let jl = TcpListener::bind("127.0.0.1:0").unwrap();
    let jctl = jl.local_addr().unwrap().to_string();
    let jtls = tls(&f, 2);
    let joiner = std::thread::spawn(move || {
        let (nodes, link) = wait_for_admission(&jl, &jtls, Duration::from_secs(20)).unwrap();
        (nodes, link, jl)
    });
    let req = JoinRequest {
        id: None,
        addr: "127.0.0.1:9002".into(),
        control: jctl,
        memory: 0,
    };
    // Invalid requests first: an id that is not above the members'.
    let bad =
        a.m.join(JoinRequest {
            id: Some(1),
            ..req.clone()
        })
        .unwrap_err();
    assert_eq!(bad.status(), 400, "{bad}");
    let coordinator = std::thread::spawn(move || {
        let r = a.m.join(req);
        (a, r)
    });
    let (jnodes, link, jl) = joiner.join().unwrap();
    assert_eq!(
        jnodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // The joiner's membership starts, telling the coordinator its data plane is up.
    let jnode = Arc::new(FakeNode::default());
    *jnode.nodes.lock().unwrap() = jnodes.clone();
    let jm = Membership::start(
        MembershipConfig {
            me: jnodes[2].clone(),
            listener: jl,
            heartbeat: Duration::from_millis(50),
            suspect: Duration::from_millis(250),
            dead: Duration::from_millis(600),
            tls: tls(&f, 2),
            admitted_by: Some(link),
        },
        jnode.clone(),
    )
    .unwrap();
    let (a, r) = coordinator.join().unwrap();
    let member = r.unwrap();
    assert_eq!(
        (member.id, member.gpa_start, member.state),
        (2, 8192, MemberState::Alive)
    );
    assert_eq!(
        *b.node.extended.lock().unwrap(),
        vec![2],
        "every member applied the join"
    );
    assert_eq!(*a.node.extended.lock().unwrap(), vec![2]);
    assert!(wait_until(Duration::from_secs(3), || state(&b, 2)
        == Some(MemberState::Alive)));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        state(&a, 2),
        Some(MemberState::Alive),
        "the joiner's heartbeats arrive"
    );

    // An unknown node cannot leave; the compute-only joiner can.
    assert_eq!(a.m.leave(9).unwrap_err(), MembershipError::NotFound(9));
    a.m.leave(2).unwrap();
    assert!(
        *jnode.handed_back.lock().unwrap(),
        "the leaver hands its pages back first"
    );
    assert!(wait_until(Duration::from_secs(3), || *jnode
        .stopped
        .lock()
        .unwrap()));
    assert!(wait_until(Duration::from_secs(3), || b
        .node
        .left
        .lock()
        .unwrap()
        .contains(&2)));
    // Visible through the membership view (what the API serves) within 100 ms.
    assert!(wait_until(Duration::from_millis(100), || state(&a, 2)
        == Some(MemberState::Left)));
    drop(jm);
    let _ = std::fs::remove_dir_all(dir);
}

/// A home node's leave runs its three steps through every member in order: each other member
/// retires it (the fence), the leaving node retires itself, hands back and drains, each other
/// member applies `Retired`, and then it leaves like a compute node. The successor is the
/// live home with the lowest id. The last home cannot leave.
#[test]
fn a_home_node_leaves_after_its_pages_go_to_the_lowest_other_home() {
    let (f, dir) = certs("home-leave", &[0, 1, 2]);
    let (nodes, ls) = cluster(&[0, 1, 2], &[4096, 4096, 4096]);
    let mut it = ls.into_iter();
    let a = start(&f, 0, &nodes, it.next().unwrap());
    let b = start(&f, 1, &nodes, it.next().unwrap());
    let c = start(&f, 2, &nodes, it.next().unwrap());
    assert!(wait_until(Duration::from_secs(5), || [0, 1, 2]
        .iter()
        .all(|&id| state(&a, id) == Some(MemberState::Alive))));
    // Asked at node 2, node 1 leaves; node 0 takes its pages.
    c.m.leave(1).unwrap();
    for r in [&a, &c] {
        assert_eq!(
            *r.node.steps.lock().unwrap(),
            vec!["retire 1->0".to_string(), "retired 1->0".to_string()],
            "every other member fences, then forgets node 1"
        );
    }
    assert_eq!(
        *b.node.steps.lock().unwrap(),
        vec!["retire 1->0".to_string(), "retired 1->0".to_string()],
        "the leaving node drains, then is gone"
    );
    assert!(*b.node.handed_back.lock().unwrap());
    assert!(wait_until(Duration::from_secs(3), || *b
        .node
        .stopped
        .lock()
        .unwrap()));
    assert!(wait_until(Duration::from_secs(3), || state(&a, 1)
        == Some(MemberState::Left)
        && state(&c, 1) == Some(MemberState::Left)));
    // Node 2 now leaves too (to node 0); node 0, the last home, cannot.
    a.m.leave(2).unwrap();
    assert!(wait_until(Duration::from_secs(3), || *c
        .node
        .stopped
        .lock()
        .unwrap()));
    let e = a.m.leave(0).unwrap_err();
    assert!(
        matches!(&e, MembershipError::Conflict(t) if t.contains("only live node that homes memory")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
