//! Scripted transitions of the coherence protocol through its public API:
//! small clusters driven by hand, asserting the exact actions of the rows of
//! the transition table in docs/protocol.md.

use coherence::{
    Access, Action, Actions, Config, DataSource, DirState, EvictRefusal, FailReason, FatalReason,
    FwdOutcome, Input, InstallSource, Layout, Machine, MoveRefusal, MovedPage, Msg, NackReason,
    NodeId, NodeRange, NodeSet, Outcome, PageAccess, Partition, StepError,
};

fn n(i: u16) -> NodeId {
    NodeId::new(i).unwrap()
}

/// Node 0 contributes pages 0..4, node 1 pages 4..8, node 2 is compute-only.
fn layout() -> Layout {
    Layout::new(
        4096,
        vec![
            NodeRange {
                node: n(0),
                first_page: 0,
                page_count: 4,
            },
            NodeRange {
                node: n(1),
                first_page: 4,
                page_count: 4,
            },
            NodeRange {
                node: n(2),
                first_page: 8,
                page_count: 0,
            },
        ],
    )
    .unwrap()
}

struct Node {
    m: Machine,
    out: Actions,
}

fn cluster(config: Config) -> Vec<Node> {
    (0..3)
        .map(|i| {
            let m = Machine::new(n(i), layout(), Partition::WHOLE, config).unwrap();
            let out = m.new_actions();
            Node { m, out }
        })
        .collect()
}

fn step(c: &mut [Node], node: u16, now: u64, input: Input) -> Vec<Action> {
    let x = &mut c[usize::from(node)];
    let o = x.m.step(now, input, &mut x.out).unwrap();
    assert_ne!(o, Outcome::Busy, "unexpected busy for {input:?}");
    x.out.as_slice().to_vec()
}

fn deliver(c: &mut [Node], from: u16, to: u16, now: u64, msg: Msg) -> Vec<Action> {
    step(c, to, now, Input::Message { from: n(from), msg })
}

fn sends(actions: &[Action]) -> Vec<(NodeId, Msg)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Send { to, msg, .. } => Some((to, msg)),
            _ => None,
        })
        .collect()
}

fn fault(page: u64, access: Access, token: u64) -> Input {
    Input::Fault {
        page,
        access,
        token,
    }
}

#[test]
fn remote_read_of_untouched_page_then_upgrade_moves_no_data() {
    let mut c = cluster(Config::default());
    // Node 2 reads page 1 (home 0): a read request.
    let a = step(&mut c, 2, 10, fault(1, Access::Read, 7));
    let [(to, req)] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(to, n(0));
    assert!(matches!(req, Msg::ReadReq { page: 1, .. }));
    // The home materialises a zero copy and answers in two hops.
    let a = deliver(&mut c, 2, 0, 20, req);
    assert_eq!(
        a[0],
        Action::Install {
            page: 1,
            writable: false,
            source: InstallSource::Zero
        }
    );
    let Action::Send {
        to,
        msg: data,
        data: Some(DataSource::Zero),
    } = a[1]
    else {
        panic!("{a:?}")
    };
    assert_eq!(to, n(2));
    assert!(matches!(
        data,
        Msg::Data {
            writable: false,
            ..
        }
    ));
    assert_eq!(
        c[0].m.dir_state(1),
        Some(DirState::Shared(NodeSet::single(n(0)).with(n(2))))
    );
    // The requester installs read-only; no Done for a home grant.
    let a = deliver(&mut c, 0, 2, 30, data);
    assert_eq!(
        a,
        vec![
            Action::Install {
                page: 1,
                writable: false,
                source: InstallSource::Payload
            },
            Action::FaultDone { page: 1, token: 7 },
        ]
    );
    // Write fault on the read-only copy: an upgrade carrying the version.
    let a = step(&mut c, 2, 40, fault(1, Access::Write, 8));
    let [(_, up)] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    assert!(matches!(up, Msg::UpgradeReq { version: 0, .. }));
    // Granted without data; the home drops its copy after sending.
    let a = deliver(&mut c, 2, 0, 50, up);
    let [Action::Send {
        msg: grant @ Msg::Grant { version: 1, .. },
        data: None,
        ..
    }, Action::Drop { page: 1 }] = a[..]
    else {
        panic!("{a:?}")
    };
    let a = deliver(&mut c, 0, 2, 60, grant);
    assert_eq!(
        a,
        vec![
            Action::MakeWritable { page: 1 },
            Action::FaultDone { page: 1, token: 8 }
        ]
    );
    assert_eq!(c[2].m.local_access(1), Some(PageAccess::Writable));
    assert_eq!(c[0].m.dir_state(1), Some(DirState::Exclusive(n(2))));
    assert_eq!(c[0].m.stats().upgrades, 1);
}

#[test]
fn three_hop_read_downgrades_the_owner_and_requires_done() {
    let mut c = cluster(Config::default());
    // Node 1 takes page 2 (home 0) writable.
    let a = step(&mut c, 1, 10, fault(2, Access::Write, 1));
    let [(_, w)] = sends(&a)[..] else { panic!() };
    let a = deliver(&mut c, 1, 0, 20, w);
    let [(_, d)] = sends(&a)[..] else { panic!() };
    deliver(&mut c, 0, 1, 30, d);
    assert_eq!(c[1].m.local_access(2), Some(PageAccess::Writable));
    // Node 2 reads it: forwarded to the owner.
    let a = step(&mut c, 2, 40, fault(2, Access::Read, 2));
    let [(_, r)] = sends(&a)[..] else { panic!() };
    let a = deliver(&mut c, 2, 0, 50, r);
    let [(to, fwd @ Msg::FwdRead { requester, .. })] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!((to, requester), (n(1), n(2)));
    // The owner write-protects before sending, to the reader and the home.
    let a = deliver(&mut c, 0, 1, 60, fwd);
    assert_eq!(a[0], Action::WriteProtect { page: 2 });
    let Action::Send {
        to: t1,
        msg: data,
        data: Some(DataSource::Local),
    } = a[1]
    else {
        panic!("{a:?}")
    };
    let Action::Send {
        to: t2,
        msg: ack,
        data: Some(DataSource::Local),
    } = a[2]
    else {
        panic!("{a:?}")
    };
    assert_eq!((t1, t2), (n(2), n(0)));
    assert!(matches!(
        ack,
        Msg::FwdAck {
            outcome: FwdOutcome::Shared,
            ..
        }
    ));
    // The home installs its copy but keeps the transaction open until Done.
    let a = deliver(&mut c, 1, 0, 70, ack);
    assert_eq!(
        a,
        vec![Action::Install {
            page: 2,
            writable: false,
            source: InstallSource::Payload
        }]
    );
    assert!(c[0].m.dir_entry(2).unwrap().busy());
    let a = deliver(&mut c, 1, 2, 80, data);
    let done = sends(&a);
    assert!(
        matches!(done[..], [(_, Msg::Done { page: 2, .. })]),
        "{a:?}"
    );
    deliver(&mut c, 2, 0, 90, done[0].1);
    assert!(!c[0].m.dir_entry(2).unwrap().busy());
    assert_eq!(
        c[0].m.dir_state(2),
        Some(DirState::Shared(
            NodeSet::single(n(0)).with(n(1)).with(n(2))
        ))
    );
    assert!(c.iter().all(|x| x.m.is_quiescent()));
}

#[test]
fn concurrent_faults_on_one_page_coalesce_into_one_request() {
    let mut c = cluster(Config::default());
    let a = step(&mut c, 2, 10, fault(5, Access::Read, 1));
    assert_eq!(sends(&a).len(), 1);
    // The same fault again (a data plane waking by address passes token 0
    // for every fault) is not a second waiter.
    assert!(step(&mut c, 2, 10, fault(5, Access::Read, 1)).is_empty());
    // A second reader and a writer join the outstanding request.
    assert!(step(&mut c, 2, 11, fault(5, Access::Read, 2)).is_empty());
    assert!(step(&mut c, 2, 12, fault(5, Access::Write, 3)).is_empty());
    assert_eq!(c[2].m.stats().faults_coalesced, 3);
    let a = deliver(&mut c, 2, 1, 20, sends(&a)[0].1);
    let data = sends(&a)[0].1;
    // The read grant completes both readers and asks for an upgrade.
    let a = deliver(&mut c, 1, 2, 30, data);
    let done = |t| {
        a.iter()
            .filter(|x| **x == Action::FaultDone { page: 5, token: t })
            .count()
    };
    assert_eq!((done(1), done(2), done(3)), (1, 1, 0));
    assert!(a.contains(&Action::FaultDone { page: 5, token: 2 }));
    assert!(!a
        .iter()
        .any(|x| matches!(x, Action::FaultDone { token: 3, .. })));
    assert!(matches!(sends(&a)[..], [(_, Msg::UpgradeReq { .. })]));
}

#[test]
fn residency_window_defers_an_invalidation_until_a_tick() {
    let config = Config {
        residency_ns: 1_000,
        ping_pong_window_ns: 5_000,
        ..Config::default()
    };
    let mut c = cluster(config);
    // Node 2 reads page 0 at t=100.
    let a = step(&mut c, 2, 90, fault(0, Access::Read, 1));
    let a = deliver(&mut c, 2, 0, 95, sends(&a)[0].1);
    deliver(&mut c, 0, 2, 100, sends(&a)[0].1);
    // Node 1 writes it: the home invalidates node 2 at t=200 (inside Δ).
    let a = step(&mut c, 1, 150, fault(0, Access::Write, 2));
    let a = deliver(&mut c, 1, 0, 160, sends(&a)[0].1);
    let [(to, inv @ Msg::Inv { .. })] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(to, n(2));
    assert!(
        deliver(&mut c, 0, 2, 200, inv).is_empty(),
        "honoured inside the window"
    );
    assert_eq!(c[2].m.stats().deferred, 1);
    assert_eq!(c[2].m.stats().ping_pong, 1);
    assert_eq!(c[2].m.next_deadline(), Some(1_100));
    assert!(step(&mut c, 2, 1_099, Input::Tick).is_empty());
    let a = step(&mut c, 2, 1_100, Input::Tick);
    assert_eq!(a[0], Action::Drop { page: 0 });
    assert!(matches!(sends(&a)[..], [(_, Msg::InvAck { .. })]));
}

/// Delivers `first` (sent by `from`) and everything it causes, in order, at `now` (+1 per
/// hop); returns every action taken on the way.
fn run_out(c: &mut [Node], from: u16, first: (NodeId, Msg), now: u64) -> Vec<(u16, Action)> {
    let mut queue = std::collections::VecDeque::from([(from, first.0, first.1)]);
    let (mut t, mut all) = (now, Vec::new());
    while let Some((f, to, msg)) = queue.pop_front() {
        t += 1;
        let a = deliver(c, f, to.get(), t, msg);
        for (dst, m) in sends(&a) {
            queue.push_back((to.get(), dst, m));
        }
        all.extend(a.into_iter().map(|x| (to.get(), x)));
    }
    all
}

#[test]
fn a_page_that_ping_pongs_is_held_longer_the_next_time() {
    // No fixed residency window: only damping holds a page.
    let config = Config {
        residency_ns: 0,
        ping_pong_window_ns: 5_000,
        ping_pong_hold_ns: 1_000,
        ..Config::default()
    };
    let mut c = cluster(config);
    // Nodes 1 and 2 write page 0 (home 0) in turn.
    let write = |c: &mut [Node], node: u16, now: u64, token: u64| {
        let a = step(c, node, now, fault(0, Access::Write, token));
        run_out(c, node, sends(&a)[0], now)
    };
    write(&mut c, 2, 100, 1);
    // Taken from node 2 within the ping-pong window: counted, and no window held it.
    write(&mut c, 1, 200, 2);
    assert_eq!(c[2].m.stats().ping_pong, 1);
    assert_eq!(c[2].m.stats().deferred, 0);
    assert_eq!(c[2].m.local_access(0), Some(PageAccess::Invalid));
    // Node 2 acquires it again: this time it is held for 1 µs.
    write(&mut c, 2, 300, 3);
    assert_eq!(c[2].m.local_access(0), Some(PageAccess::Writable));
    assert_eq!(c[2].m.stats().ping_pong_held, 1);
    let a = write(&mut c, 1, 400, 4);
    assert!(
        !a.iter()
            .any(|(n, x)| *n == 2 && matches!(x, Action::Drop { .. })),
        "node 2 gave the page up inside its damping window: {a:?}"
    );
    assert_eq!(c[2].m.stats().deferred, 1);
    let due = c[2]
        .m
        .next_deadline()
        .expect("the deferred forward waits for a tick");
    assert!((1_300..=1_320).contains(&due), "{due}");
    // At the end of the window node 2 hands the page over.
    let a = step(&mut c, 2, due, Input::Tick);
    assert!(a.contains(&Action::Drop { page: 0 }), "{a:?}");
}

#[test]
fn evictions_are_refused_or_acknowledged() {
    let mut c = cluster(Config::default());
    let ev = |page| Input::Evict { page };
    let x = &mut c[0];
    assert_eq!(
        x.m.step(0, ev(1), &mut x.out),
        Ok(Outcome::EvictRefused(EvictRefusal::HomeOwned))
    );
    let x = &mut c[2];
    assert_eq!(
        x.m.step(0, ev(1), &mut x.out),
        Ok(Outcome::EvictRefused(EvictRefusal::NotHeld))
    );
    // Node 2 writes page 6 (home 1), then writes it back.
    let a = step(&mut c, 2, 10, fault(6, Access::Write, 1));
    let a = deliver(&mut c, 2, 1, 20, sends(&a)[0].1);
    deliver(&mut c, 1, 2, 30, sends(&a)[0].1);
    let x = &mut c[2];
    assert_eq!(x.m.step(40, ev(6), &mut x.out), Ok(Outcome::EvictStarted));
    let a = x.out.as_slice().to_vec();
    assert_eq!(a[0], Action::WriteProtect { page: 6 });
    let [(_, wb @ Msg::EvictReq { dirty: true, .. })] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    assert!(wb.has_data());
    let a = deliver(&mut c, 2, 1, 50, wb);
    assert_eq!(
        a[0],
        Action::Install {
            page: 6,
            writable: false,
            source: InstallSource::Payload
        }
    );
    let ack = sends(&a)[0].1;
    assert!(matches!(ack, Msg::EvictAck { .. }));
    assert_eq!(
        deliver(&mut c, 1, 2, 60, ack),
        vec![Action::Drop { page: 6 }]
    );
    assert_eq!(c[2].m.local_access(6), Some(PageAccess::Invalid));
}

#[test]
fn busy_home_refuses_and_the_requester_retries_on_tick() {
    let config = Config {
        max_home_txns: 1,
        retry_backoff_ns: 500,
        ..Config::default()
    };
    let mut c = cluster(config);
    // Node 2 owns page 3 exclusively; node 1's read is forwarded and waits.
    let a = step(&mut c, 2, 10, fault(3, Access::Write, 1));
    let a = deliver(&mut c, 2, 0, 20, sends(&a)[0].1);
    deliver(&mut c, 0, 2, 30, sends(&a)[0].1);
    let a = step(&mut c, 1, 40, fault(3, Access::Read, 2));
    deliver(&mut c, 1, 0, 50, sends(&a)[0].1);
    // The pool is full: a request for another page is refused.
    let a = step(&mut c, 2, 60, fault(2, Access::Read, 3));
    let a = deliver(&mut c, 2, 0, 70, sends(&a)[0].1);
    let [(
        _,
        nack @ Msg::Nack {
            reason: NackReason::Busy,
            ..
        },
    )] = sends(&a)[..]
    else {
        panic!("{a:?}")
    };
    assert!(deliver(&mut c, 0, 2, 80, nack).is_empty());
    assert_eq!(c[2].m.next_deadline(), Some(580));
    let a = step(&mut c, 2, 580, Input::Tick);
    assert!(matches!(sends(&a)[..], [(_, Msg::ReadReq { page: 2, .. })]));
    assert_eq!(c[2].m.stats().retries, 1);
}

#[test]
fn a_dead_compute_node_loses_only_what_it_held_exclusively() {
    let mut c = cluster(Config::default());
    // Node 2 writes page 0 (exclusive) and reads page 1 (shared).
    for (page, access, token) in [(0, Access::Write, 1), (1, Access::Read, 2)] {
        let a = step(&mut c, 2, 10, fault(page, access, token));
        let a = deliver(&mut c, 2, 0, 20, sends(&a)[0].1);
        deliver(&mut c, 0, 2, 30, sends(&a)[0].1);
    }
    let a = step(&mut c, 0, 40, Input::NodeDead(n(2)));
    assert_eq!(a, vec![Action::PageLost { page: 0 }]);
    assert_eq!(c[0].m.dir_state(0), Some(DirState::Lost));
    assert_eq!(
        c[0].m.dir_state(1),
        Some(DirState::Shared(NodeSet::single(n(0))))
    );
    assert!(!c[0].m.is_waiting_on(n(2)));
    // A later fault on the lost page fails; a late message from node 2 is ignored.
    let a = step(&mut c, 0, 50, fault(0, Access::Read, 3));
    assert_eq!(
        a,
        vec![Action::FaultFailed {
            page: 0,
            token: 3,
            reason: FailReason::Lost
        }]
    );
    let x = &mut c[0];
    let late = Input::Message {
        from: n(2),
        msg: Msg::ReadReq { txn: 99, page: 1 },
    };
    assert_eq!(x.m.step(60, late, &mut x.out), Ok(Outcome::Ignored));
    assert!(x.out.is_empty());
    // Node 1 asks for the lost page: refused as lost, then fails locally.
    let a = step(&mut c, 1, 70, fault(0, Access::Write, 4));
    let a = deliver(&mut c, 1, 0, 80, sends(&a)[0].1);
    let [(
        _,
        nack @ Msg::Nack {
            reason: NackReason::Lost,
            ..
        },
    )] = sends(&a)[..]
    else {
        panic!("{a:?}")
    };
    let a = deliver(&mut c, 0, 1, 90, nack);
    assert_eq!(
        a,
        vec![Action::FaultFailed {
            page: 0,
            token: 4,
            reason: FailReason::Lost
        }]
    );
    assert_eq!(c[1].m.local_access(0), Some(PageAccess::Lost));
}

#[test]
fn a_dead_home_stops_the_cluster() {
    let mut c = cluster(Config::default());
    // Node 2 waits on page 5 (home 1) when node 1 dies.
    step(&mut c, 2, 10, fault(5, Access::Read, 1));
    let a = step(&mut c, 2, 20, Input::NodeDead(n(1)));
    assert_eq!(
        a,
        vec![
            Action::ClusterFatal {
                reason: FatalReason::HomeDied(n(1))
            },
            Action::FaultFailed {
                page: 5,
                token: 1,
                reason: FailReason::ClusterDown
            },
        ]
    );
    assert_eq!(c[2].m.fatal(), Some(FatalReason::HomeDied(n(1))));
    let a = step(&mut c, 2, 30, fault(0, Access::Read, 2));
    assert_eq!(
        a,
        vec![Action::FaultFailed {
            page: 0,
            token: 2,
            reason: FailReason::ClusterDown
        }]
    );
    let x = &mut c[2];
    let msg = Input::Message {
        from: n(0),
        msg: Msg::Recall { txn: 1, page: 0 },
    };
    assert_eq!(x.m.step(40, msg, &mut x.out), Ok(Outcome::Ignored));
    assert_eq!(x.m.next_deadline(), None);
}

#[test]
fn sharded_instances_only_accept_their_own_pages() {
    let l = layout();
    let config = Config::default();
    let mut even = Machine::new(n(2), l.clone(), Partition::new(0, 2).unwrap(), config).unwrap();
    let mut out = even.new_actions();
    assert!(matches!(
        even.step(0, fault(3, Access::Read, 1), &mut out),
        Err(StepError::NotMine {
            page: 3,
            index: 0,
            count: 2
        })
    ));
    assert_eq!(
        even.step(0, fault(4, Access::Read, 1), &mut out),
        Ok(Outcome::Done)
    );
    // A home instance with 3 shards serves a requester with 2.
    let mut home = Machine::new(n(1), l, Partition::new(1, 3).unwrap(), config).unwrap();
    let mut hout = home.new_actions();
    let Action::Send { msg, .. } = out.as_slice()[0] else {
        panic!()
    };
    assert_eq!(
        home.step(1, Input::Message { from: n(2), msg }, &mut hout),
        Ok(Outcome::Done)
    );
    assert!(matches!(
        hout.as_slice()[1],
        Action::Send {
            msg: Msg::Data { page: 4, .. },
            ..
        }
    ));
    assert_eq!(home.dir_state(5), None, "page 5 belongs to another shard");
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    let l = layout();
    let config = Config::default();
    assert!(matches!(
        Machine::new(n(9), l.clone(), Partition::WHOLE, config),
        Err(StepError::NotMember(_))
    ));
    let bad = Config {
        max_active_pages: 0,
        ..config
    };
    assert!(matches!(
        Machine::new(n(0), l.clone(), Partition::WHOLE, bad),
        Err(StepError::Config(_))
    ));
    let mut m = Machine::new(n(2), l.clone(), Partition::WHOLE, config).unwrap();
    let mut out = m.new_actions();
    assert!(matches!(
        m.step(0, fault(8, Access::Read, 1), &mut out),
        Err(StepError::Layout(_))
    ));
    let own = Input::Message {
        from: n(2),
        msg: Msg::Done { txn: 1, page: 0 },
    };
    assert_eq!(m.step(0, own, &mut out), Err(StepError::BadSender(n(2))));
    // A home-bound message for a page homed elsewhere.
    let mis = Input::Message {
        from: n(0),
        msg: Msg::ReadReq { txn: 1, page: 0 },
    };
    assert!(matches!(
        m.step(0, mis, &mut out),
        Err(StepError::Misrouted { .. })
    ));
    // An order from a node that is not the page's home.
    let mis = Input::Message {
        from: n(1),
        msg: Msg::Inv {
            txn: 1,
            page: 0,
            requester: n(1),
        },
    };
    assert!(matches!(
        m.step(0, mis, &mut out),
        Err(StepError::Misrouted { .. })
    ));
    assert_eq!(
        m.step(0, Input::NodeDead(n(2)), &mut out),
        Err(StepError::BadDeadNode(n(2)))
    );
    // A reply to nothing is a violation, reported after a harmless step.
    let stray = Input::Message {
        from: n(0),
        msg: Msg::Grant {
            txn: 5,
            page: 1,
            version: 1,
        },
    };
    assert!(matches!(
        m.step(0, stray, &mut out),
        Err(StepError::Violation { page: 1, .. })
    ));
    assert!(out.is_empty());
    assert_eq!(m.stats().violations, 1);
    let other = Machine::new(
        n(0),
        l,
        Partition::WHOLE,
        Config {
            max_waiters: 8192,
            ..config
        },
    )
    .unwrap();
    let mut big = other.new_actions();
    let mut small = m.new_actions();
    assert!(big.capacity() > small.capacity());
    let mut other = other;
    assert!(matches!(
        other.step(0, Input::Tick, &mut small),
        Err(StepError::BufferTooSmall { .. })
    ));
    assert_eq!(other.step(0, Input::Tick, &mut big), Ok(Outcome::Done));
}

#[test]
fn the_home_defers_taking_its_own_fresh_copy() {
    let config = Config {
        residency_ns: 1_000,
        ..Config::default()
    };
    let mut c = cluster(config);
    // The home writes its untouched page 3: zero-filled writable, no message.
    let a = step(&mut c, 0, 100, fault(3, Access::Write, 1));
    assert_eq!(
        a,
        vec![
            Action::Install {
                page: 3,
                writable: true,
                source: InstallSource::Zero
            },
            Action::FaultDone { page: 3, token: 1 },
        ]
    );
    assert_eq!(c[0].m.dir_state(3), Some(DirState::Exclusive(n(0))));
    // A remote read inside the home's window waits at the head of the queue.
    let a = step(&mut c, 2, 200, fault(3, Access::Read, 2));
    assert!(deliver(&mut c, 2, 0, 300, sends(&a)[0].1).is_empty());
    assert_eq!(c[0].m.stats().deferred, 1);
    assert!(c[0].m.dir_entry(3).unwrap().busy());
    // At the end of the window the home downgrades and serves it.
    let a = step(&mut c, 0, 1_100, Input::Tick);
    assert_eq!(a[0], Action::WriteProtect { page: 3 });
    assert!(matches!(
        sends(&a)[..],
        [(
            _,
            Msg::Data {
                writable: false,
                ..
            }
        )]
    ));
    assert_eq!(
        c[0].m.dir_state(3),
        Some(DirState::Shared(NodeSet::single(n(0)).with(n(2))))
    );
}

/// A node joining with memory: the members extend their layouts by its range (appended at the
/// top), keep every existing page's state, and serve and send requests for the new pages.
#[test]
fn a_joining_node_extends_the_layout_without_touching_existing_state() {
    let mut c = cluster(Config::default());
    // Node 2 takes page 1 exclusively before the join.
    let a = step(&mut c, 2, 1, fault(1, Access::Write, 1));
    assert_eq!(sends(&a), vec![(n(0), Msg::WriteReq { txn: 1, page: 1 })]);
    let a = deliver(&mut c, 2, 0, 2, Msg::WriteReq { txn: 1, page: 1 });
    let grant = sends(&a)[0].1;
    deliver(&mut c, 0, 2, 3, grant);
    assert_eq!(c[2].m.local_access(1), Some(PageAccess::Writable));

    // Node 3 joins with pages 8..12.
    let mut ranges = layout().ranges().to_vec();
    ranges.push(NodeRange {
        node: n(3),
        first_page: 8,
        page_count: 4,
    });
    let grown = Layout::new(4096, ranges).unwrap();
    for x in c.iter_mut() {
        x.m.extend(grown.clone()).unwrap();
    }
    assert_eq!(
        c[2].m.local_access(1),
        Some(PageAccess::Writable),
        "existing state is kept"
    );
    assert_eq!(c[0].m.dir_state(1), Some(DirState::Exclusive(n(2))));
    let mut j = Machine::new(n(3), grown.clone(), Partition::WHOLE, Config::default()).unwrap();
    let mut jout = j.new_actions();

    // A member's read of the joiner's page goes to the joiner, which serves it.
    let a = step(&mut c, 0, 4, fault(9, Access::Read, 2));
    let (to, req) = sends(&a)[0];
    assert_eq!(to, n(3));
    j.step(
        5,
        Input::Message {
            from: n(0),
            msg: req,
        },
        &mut jout,
    )
    .unwrap();
    assert!(matches!(
        sends(jout.as_slice()).as_slice(),
        [(to, Msg::Data { page: 9, writable: false, .. })] if *to == n(0)
    ));
    // The joiner's write to node 2's exclusive page is forwarded by its home as usual.
    j.step(6, fault(1, Access::Write, 3), &mut jout).unwrap();
    assert!(
        matches!(sends(jout.as_slice()).as_slice(), [(to, Msg::WriteReq { page: 1, .. })] if *to == n(0))
    );

    // A layout that changes an existing range is refused.
    let mut bad = layout().ranges().to_vec();
    bad[1].page_count = 5;
    bad[2].first_page = 9;
    let bad = Layout::new(4096, bad).unwrap();
    assert_eq!(c[0].m.extend(bad), Err(StepError::NotAnExtension));
}

/// One step's outcome (its actions stay in the node's buffer).
fn outcome(c: &mut [Node], node: u16, now: u64, input: Input) -> Result<Outcome, StepError> {
    let x = &mut c[usize::from(node)];
    x.m.step(now, input, &mut x.out)
}

#[test]
fn prefetch_is_a_read_without_a_waiter_that_a_fault_can_join() {
    let mut c = cluster(Config::default());
    let pf = |page| Input::Prefetch { page };
    // Pages homed here, or beyond the address space: nothing to fetch / an error.
    assert_eq!(outcome(&mut c, 0, 1, pf(1)), Ok(Outcome::Ignored));
    assert!(c[0].out.is_empty());
    assert!(outcome(&mut c, 2, 1, pf(99)).is_err());
    // Node 2 prefetches pages 2 and 3 (home 0): two ordinary read requests.
    assert_eq!(outcome(&mut c, 2, 10, pf(2)), Ok(Outcome::PrefetchStarted));
    let [(to, req2)] = sends(c[2].out.as_slice())[..] else {
        panic!("{:?}", c[2].out.as_slice())
    };
    assert_eq!(to, n(0));
    assert!(matches!(req2, Msg::ReadReq { page: 2, .. }));
    let a = step(&mut c, 2, 11, pf(3));
    let [(_, req3)] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    // A second prefetch of a page already on its way does nothing.
    assert_eq!(outcome(&mut c, 2, 12, pf(3)), Ok(Outcome::Ignored));
    // A thread faults on page 3 before the data arrives: it joins the request.
    let a = step(&mut c, 2, 13, fault(3, Access::Read, 5));
    assert!(sends(&a).is_empty(), "{a:?}");
    // Page 2's data: installed read-only, nobody to wake.
    let a = deliver(&mut c, 2, 0, 20, req2);
    let Action::Send { msg: data2, .. } = a[1] else {
        panic!("{a:?}")
    };
    let a = deliver(&mut c, 0, 2, 30, data2);
    assert_eq!(
        a,
        vec![Action::Install {
            page: 2,
            writable: false,
            source: InstallSource::Payload
        }]
    );
    assert_eq!(c[2].m.local_access(2), Some(PageAccess::ReadOnly));
    assert_eq!(
        c[0].m.dir_state(2),
        Some(DirState::Shared(NodeSet::single(n(0)).with(n(2))))
    );
    // Page 3's data completes the fault that joined.
    let a = deliver(&mut c, 2, 0, 40, req3);
    let Action::Send { msg: data3, .. } = a[1] else {
        panic!("{a:?}")
    };
    let a = deliver(&mut c, 0, 2, 50, data3);
    assert!(
        a.contains(&Action::FaultDone { page: 3, token: 5 }),
        "{a:?}"
    );
    // A held page is not prefetched again; a write elsewhere invalidates the replica as usual.
    assert_eq!(outcome(&mut c, 2, 60, pf(2)), Ok(Outcome::Ignored));
    let a = step(&mut c, 1, 70, fault(2, Access::Write, 9));
    let [(_, wreq)] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    let a = deliver(&mut c, 1, 0, 80, wreq);
    let invs: Vec<_> = sends(&a)
        .into_iter()
        .filter(|(to, m)| *to == n(2) && matches!(m, Msg::Inv { page: 2, .. }))
        .collect();
    assert_eq!(invs.len(), 1, "{a:?}");
    assert!(c.iter().all(|x| x.m.stats().violations == 0));
    assert_eq!(c[2].m.stats().prefetches, 2);
}

#[test]
fn prefetch_leaves_a_quarter_of_the_records_to_faults() {
    let config = Config {
        max_active_pages: 4,
        ..Config::default()
    };
    let mut c = cluster(config);
    // Four records: prefetches may take three (free must stay above 4 / 4 = 1).
    let outcomes: Vec<Outcome> = (4..8)
        .map(|p| outcome(&mut c, 2, 1, Input::Prefetch { page: p }).unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::PrefetchStarted,
            Outcome::PrefetchStarted,
            Outcome::PrefetchStarted,
            Outcome::Ignored
        ]
    );
    // The record kept back serves a fault.
    let a = step(&mut c, 2, 2, fault(0, Access::Read, 1));
    assert_eq!(sends(&a).len(), 1, "{a:?}");
}

#[test]
fn a_home_move_collects_the_copies_hands_the_page_over_and_redirects_requests() {
    let config = Config {
        migration: true,
        ping_pong_hold_ns: 0,
        ..Config::default()
    };
    let mut c = cluster(config);
    // Node 0 writes page 1 (its own), node 2 reads it: Shared{0, 2}.
    step(&mut c, 0, 10, fault(1, Access::Write, 1));
    let a = step(&mut c, 2, 20, fault(1, Access::Read, 2));
    run_out(&mut c, 2, sends(&a)[0], 20);
    assert_eq!(c[2].m.local_access(1), Some(PageAccess::ReadOnly));
    // A move to the compute-only node, to itself or with migration off is refused.
    assert_eq!(
        outcome(&mut c, 0, 100, Input::MoveHome { page: 1, to: n(2) }),
        Ok(Outcome::MoveRefused(MoveRefusal::Target))
    );
    assert_eq!(
        outcome(&mut c, 1, 100, Input::MoveHome { page: 1, to: n(0) }),
        Ok(Outcome::MoveRefused(MoveRefusal::NotHome))
    );
    // Node 0 moves it to node 1: node 2's copy is invalidated first, then the page goes
    // over with its entry.
    let a = step(&mut c, 0, 200, Input::MoveHome { page: 1, to: n(1) });
    assert!(
        matches!(sends(&a)[..], [(to, Msg::Inv { .. })] if to == n(2)),
        "{a:?}"
    );
    let all = run_out(&mut c, 0, sends(&a)[0], 200);
    assert!(
        all.iter().any(|(at, x)| *at == 0
            && matches!(x, Action::Send { to, msg: Msg::HomeMove { content: MovedPage::Page, .. }, .. } if *to == n(1))),
        "{all:?}"
    );
    assert!(c[1].m.is_home(1) && !c[0].m.is_home(1));
    assert_eq!(c[1].m.local_access(1), Some(PageAccess::Writable));
    assert_eq!(c[0].m.local_access(1), Some(PageAccess::Invalid));
    assert_eq!(c[2].m.local_access(1), Some(PageAccess::Invalid));
    assert_eq!(c[0].m.moved_to(1), Some(n(1)));
    // Node 2 still believes node 0 is the home: it is redirected once, then served by 1.
    let a = step(&mut c, 2, 300, fault(1, Access::Read, 3));
    assert!(matches!(sends(&a)[..], [(to, Msg::ReadReq { .. })] if to == n(0)));
    let all = run_out(&mut c, 2, sends(&a)[0], 300);
    assert!(
        all.iter().any(|(at, x)| *at == 0
            && matches!(x, Action::Send { msg: Msg::Nack { reason: NackReason::Moved(h), .. }, .. } if *h == n(1))),
        "{all:?}"
    );
    assert_eq!(c[2].m.local_access(1), Some(PageAccess::ReadOnly));
    assert_eq!(c[2].m.home_of(1), Some(n(1)));
    assert_eq!(
        c[1].m.dir_state(1),
        Some(DirState::Shared(NodeSet::single(n(1)).with(n(2))))
    );
    // A redirect that names its own sender is taken as busy: no request is sent at once.
    let a = step(&mut c, 0, 400, fault(1, Access::Read, 4));
    let [(to, Msg::ReadReq { txn, .. })] = sends(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(to, n(1));
    let bogus = Msg::Nack {
        txn,
        page: 1,
        reason: NackReason::Moved(n(1)),
    };
    assert!(sends(&deliver(&mut c, 1, 0, 410, bogus)).is_empty());
    assert!(c[0].m.next_deadline().is_some(), "a retry is scheduled");
}
