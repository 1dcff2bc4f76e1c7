//! Contract tests of the REST API: a real server (`control::api::serve` on 127.0.0.1:0) in
//! front of a mock node and membership ([`MockNode`]), spoken to over raw TCP. Every route
//! with good and bad input, the status codes and JSON shapes the documentation promises, the
//! server's limits, and the OpenAPI document against the route table.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::api::{self, ApiAuth, ApiServer, Limits, ROUTES};
use control::handle::{
    Heat, JoinRequest, Member, MemberState, MembershipError, MembershipOps, NodeHandle, PageInfo,
    PageQueryError, Telemetry,
};
use serde_json::Value;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// A stand-in for a node and its membership, with just enough behaviour to produce every
/// answer the API maps: members with contiguous home ranges, pages whose home may be dead,
/// joins that must go above the current ids, and a cluster that can be formed and stopped
/// once.
struct MockNode {
    id: u16,
    state: Mutex<MockState>,
}

struct MockState {
    members: Vec<Member>,
    stopped: bool,
    joins: Vec<JoinRequest>,
    inventories: Vec<String>,
    broken_heat: bool,
    /// Answers as `ssi-dp supervisor` does: not a node.
    supervisor: bool,
    /// The node's data plane stopped on this failure.
    down: Option<String>,
}

impl MockNode {
    /// Node 0 of a formed cluster of nodes 0 and 1 with 64 MiB each.
    fn in_cluster() -> Arc<MockNode> {
        let member = |id: u16, gpa_start: u64| Member {
            id,
            addr: format!("10.0.0.{}:7000", id + 1),
            memory: 64 * MIB,
            gpa_start,
            state: MemberState::Alive,
            this_node: id == 0,
            last_heard_ms: if id == 0 { None } else { Some(12) },
        };
        Arc::new(MockNode {
            id: 0,
            state: Mutex::new(MockState {
                members: vec![member(0, 0), member(1, 64 * MIB)],
                stopped: false,
                joins: Vec::new(),
                inventories: Vec::new(),
                broken_heat: false,
                supervisor: false,
                down: None,
            }),
        })
    }

    /// A supervisor that is not in a cluster yet.
    fn fresh() -> Arc<MockNode> {
        let m = MockNode::in_cluster();
        let mut st = m.state.lock().unwrap();
        st.members.clear();
        st.supervisor = true;
        drop(st);
        m
    }

    fn end(members: &[Member]) -> u64 {
        members
            .iter()
            .map(|m| m.gpa_start + m.memory)
            .max()
            .unwrap_or(0)
    }
}

/// The address the mock panics on, to show the server survives a failing handler.
const PANIC_GPA: u64 = 0xdead_0000;

impl NodeHandle for MockNode {
    fn id(&self) -> u16 {
        self.id
    }

    fn liveness(&self) -> Result<(), String> {
        match &self.state.lock().unwrap().down {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn readiness(&self) -> Result<(), String> {
        self.liveness()?;
        if self.state.lock().unwrap().stopped {
            return Err("the node is stopping".into());
        }
        Ok(())
    }

    fn members(&self) -> Vec<Member> {
        self.state.lock().unwrap().members.clone()
    }

    fn page(&self, gpa: u64) -> Result<PageInfo, PageQueryError> {
        assert_ne!(gpa, PANIC_GPA, "mock: asked to fail");
        let st = self.state.lock().unwrap();
        let end = MockNode::end(&st.members);
        let home = st
            .members
            .iter()
            .find(|m| gpa >= m.gpa_start && gpa - m.gpa_start < m.memory)
            .ok_or(PageQueryError::OutOfRange { gpa, end })?;
        if home.state == MemberState::Dead {
            return Err(PageQueryError::HomeUnavailable {
                gpa,
                home: home.id,
                why: "declared dead".into(),
            });
        }
        let page = gpa / PAGE;
        Ok(PageInfo {
            gpa: page * PAGE,
            page,
            home: home.id,
            state: "shared".into(),
            owner: None,
            sharers: vec![0, 1],
            version: (page % 1000) as u32,
            busy: false,
            recent_requests: vec![(0, page % 7), (1, 3)],
            layout_home: home.id,
            moves: vec![control::handle::PageMove {
                from: home.id,
                to: home.id,
                requests: 16,
                of: 20,
            }],
        })
    }

    fn heat(&self) -> Heat {
        let st = self.state.lock().unwrap();
        let nodes: Vec<u16> = st.members.iter().map(|m| m.id).collect();
        let counts = if st.broken_heat {
            vec![vec![1]; 4]
        } else {
            (0..64u64)
                .map(|b| nodes.iter().map(|&k| (b * 3 + u64::from(k)) % 11).collect())
                .collect()
        };
        Heat {
            bucket_bytes: 2 * MIB,
            nodes,
            counts,
            homes_in: Vec::new(),
            homes_out: Vec::new(),
        }
    }

    fn not_a_node(&self) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.supervisor
            .then(|| "mock supervisor: ask a node's API at 10.0.0.1:7300".to_string())
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry {
            node: self.id,
            faults: vec![("read", "remote", 5), ("read", "home", 15)],
            invalidations: 2,
            ..Telemetry::default()
        }
    }
}

impl MembershipOps for MockNode {
    fn join(&self, req: JoinRequest) -> Result<Member, MembershipError> {
        let mut st = self.state.lock().unwrap();
        st.joins.push(req.clone());
        if req.memory % PAGE != 0 {
            return Err(MembershipError::Invalid(format!(
                "memory {} is not a multiple of 4096",
                req.memory
            )));
        }
        let top = st.members.iter().map(|m| m.id).max().unwrap_or(0);
        let id = req.id.unwrap_or(top + 1);
        if id <= top {
            return Err(MembershipError::Conflict(format!(
                "node id {id} is taken or below the highest member {top}"
            )));
        }
        let m = Member {
            id,
            addr: req.addr,
            memory: req.memory,
            gpa_start: MockNode::end(&st.members),
            state: MemberState::Alive,
            this_node: false,
            last_heard_ms: None,
        };
        st.members.push(m.clone());
        Ok(m)
    }

    fn leave(&self, id: u16) -> Result<(), MembershipError> {
        let mut st = self.state.lock().unwrap();
        let m = st
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or(MembershipError::NotFound(id))?;
        if m.state == MemberState::Left {
            return Err(MembershipError::Conflict(format!("node {id} already left")));
        }
        m.state = MemberState::Left;
        Ok(())
    }

    fn stop_cluster(&self) -> Result<(), MembershipError> {
        let mut st = self.state.lock().unwrap();
        if st.stopped {
            return Err(MembershipError::Conflict(
                "the cluster is already stopping".into(),
            ));
        }
        st.stopped = true;
        Ok(())
    }

    fn form_cluster(&self, inventory_toml: &str) -> Result<Vec<Member>, MembershipError> {
        let mut st = self.state.lock().unwrap();
        st.inventories.push(inventory_toml.to_string());
        if !st.members.is_empty() {
            return Err(MembershipError::Conflict(
                "this node is already in a cluster".into(),
            ));
        }
        // The mock reads one member per `addr = "..."` line; the real parser is elsewhere.
        let addrs: Vec<&str> = inventory_toml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("addr = "))
            .map(|a| a.trim_matches('"'))
            .collect();
        if addrs.is_empty() {
            return Err(MembershipError::Invalid(
                "the inventory lists no node".into(),
            ));
        }
        for (i, a) in addrs.iter().enumerate() {
            st.members.push(Member {
                id: i as u16,
                addr: a.to_string(),
                memory: 16 * MIB,
                gpa_start: i as u64 * 16 * MIB,
                state: MemberState::Alive,
                this_node: i == 0,
                last_heard_ms: None,
            });
        }
        Ok(st.members.clone())
    }
}

/// The API token of the servers under test; `send` presents it.
const TOKEN: &str = "contract-test-token-0123456789";

fn auth() -> ApiAuth {
    ApiAuth::with_token(TOKEN, false).expect("a usable token")
}

fn start(mock: &Arc<MockNode>) -> ApiServer {
    api::serve("127.0.0.1:0", mock.clone(), mock.clone(), auth()).expect("serve on 127.0.0.1:0")
}

/// One answer, as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Interim (1xx) status codes seen before the final answer.
    interim: Vec<u16>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer of the documented shape and returns its message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        assert_eq!(v["status"], u64::from(status), "{v}");
        let msg = v["error"].as_str().expect("error is a string").to_string();
        assert!(!msg.is_empty());
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        msg
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// Parses one or more answers (interim ones first) from everything the server sent.
fn parse_reply(raw: &[u8], head_only: bool) -> Reply {
    let mut rest = raw;
    let mut interim = Vec::new();
    loop {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(raw)));
        let head = std::str::from_utf8(&rest[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header field");
                (k.to_string(), v.trim().to_string())
            })
            .collect();
        rest = &rest[end + 4..];
        if (100..200).contains(&status) {
            interim.push(status);
            continue;
        }
        let mut r = Reply {
            status,
            headers,
            body: Vec::new(),
            interim,
        };
        if !head_only {
            if let Some(len) = r.header("content-length") {
                let len: usize = len.parse().unwrap();
                assert_eq!(rest.len(), len, "body length differs from Content-Length");
            }
            r.body = rest.to_vec();
        }
        return r;
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Sends raw bytes, reads until the server closes.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let head_only = bytes.starts_with(b"HEAD ");
    parse_reply(&read_all(&mut s), head_only)
}

fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
    send_as(addr, method, path, body, Some(TOKEN))
}

fn send_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n").into_bytes();
    if let Some(t) = token {
        req.extend_from_slice(format!("Authorization: Bearer {t}\r\n").as_bytes());
    }
    if let Some(b) = body {
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        req.extend_from_slice(b);
    } else {
        req.extend_from_slice(b"\r\n");
    }
    raw(addr, &req)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, None)
}

#[test]
fn get_nodes_lists_members() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let r = get(srv.addr(), "/nodes");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    let v = r.json();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let n1 = &list[1];
    assert_eq!(n1["id"], 1);
    assert_eq!(n1["addr"], "10.0.0.2:7000");
    assert_eq!(n1["memory"], 64 * MIB);
    assert_eq!(n1["gpa_start"], 64 * MIB);
    assert_eq!(n1["state"], "alive");
    assert_eq!(n1["this_node"], false);
    assert_eq!(n1["last_heard_ms"], 12);
    assert_eq!(list[0]["last_heard_ms"], Value::Null);
    assert_eq!(list[0]["this_node"], true);
}

#[test]
fn head_answers_like_get_without_the_body() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let full = get(srv.addr(), "/nodes");
    let head = raw(srv.addr(), b"HEAD /nodes HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length").unwrap(),
        full.body.len().to_string()
    );
}

#[test]
fn post_nodes_joins_and_the_member_shows_up() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let body =
        br#"{"id": 5, "addr": "10.0.0.9:7000", "control": "10.0.0.9:7100", "memory": 1048576}"#;
    let r = send(srv.addr(), "POST", "/nodes", Some(body));
    assert_eq!(r.status, 201, "{r:?}");
    let m = r.json();
    assert_eq!(m["id"], 5);
    assert_eq!(m["gpa_start"], 128 * MIB);
    assert_eq!(m["memory"], MIB);
    assert_eq!(m["state"], "alive");
    assert_eq!(
        mock.state.lock().unwrap().joins,
        vec![JoinRequest {
            id: Some(5),
            addr: "10.0.0.9:7000".into(),
            control: "10.0.0.9:7100".into(),
            memory: MIB,
        }]
    );
    let ids: Vec<u64> = get(srv.addr(), "/nodes")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![0, 1, 5]);
}

#[test]
fn post_nodes_without_an_id_takes_the_next() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let body = br#"{"addr": "h:1", "control": "h:2", "memory": 0}"#;
    let r = send(srv.addr(), "POST", "/nodes", Some(body));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["id"], 2);
    assert_eq!(mock.state.lock().unwrap().joins[0].id, None);
}

#[test]
fn post_nodes_refuses_malformed_json_before_membership_sees_it() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let cases: [&[u8]; 9] = [
        b"",
        b"{",
        b"not json",
        b"[]",
        br#"{"addr": "h:1", "control": "h:2"}"#,
        br#"{"addr": "h:1", "control": "h:2", "memory": "lots"}"#,
        br#"{"addr": "h:1", "control": "h:2", "memory": -4096}"#,
        br#"{"id": 70000, "addr": "h:1", "control": "h:2", "memory": 0}"#,
        br#"{"addr": "h:1", "control": "h:2", "memory": 0, "memroy": 4096}"#,
    ];
    for body in cases {
        let r = send(srv.addr(), "POST", "/nodes", Some(body));
        let msg = r.error(400);
        assert!(msg.contains("JSON object"), "{msg}");
    }
    let unknown = send(
        srv.addr(),
        "POST",
        "/nodes",
        Some(br#"{"addr": "h:1", "control": "h:2", "memory": 0, "memroy": 4096}"#),
    );
    assert!(unknown.error(400).contains("memroy"));
    assert!(mock.state.lock().unwrap().joins.is_empty());
}

#[test]
fn post_nodes_maps_membership_refusals_to_their_status() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let taken = br#"{"id": 1, "addr": "h:1", "control": "h:2", "memory": 4096}"#;
    let msg = send(srv.addr(), "POST", "/nodes", Some(taken)).error(409);
    assert!(msg.contains("taken"), "{msg}");
    let odd = br#"{"addr": "h:1", "control": "h:2", "memory": 1000}"#;
    let msg = send(srv.addr(), "POST", "/nodes", Some(odd)).error(400);
    assert!(msg.contains("multiple of 4096"), "{msg}");
    assert_eq!(mock.state.lock().unwrap().joins.len(), 2);
}

#[test]
fn delete_node_makes_it_leave() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let r = send(srv.addr(), "DELETE", "/nodes/1", None);
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), None);
    assert_eq!(get(srv.addr(), "/nodes").json()[1]["state"], "left");
    // Leaving twice is a conflict in the mock's membership.
    send(srv.addr(), "DELETE", "/nodes/1", None).error(409);
}

#[test]
fn delete_node_unknown_is_404_and_bad_ids_are_400() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let msg = send(srv.addr(), "DELETE", "/nodes/9", None).error(404);
    assert!(msg.contains("node 9"), "{msg}");
    for bad in ["abc", "70000", "-1", "0x1", "1.0", "%31"] {
        let msg = send(srv.addr(), "DELETE", &format!("/nodes/{bad}"), None).error(400);
        assert!(msg.contains("node id"), "{bad}: {msg}");
    }
    send(srv.addr(), "DELETE", "/nodes/", None).error(404);
    send(srv.addr(), "DELETE", "/nodes/1/extra", None).error(404);
}

#[test]
fn get_page_in_decimal_and_hex() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let gpa = 64 * MIB + 5 * PAGE + 12;
    for path in [format!("/pages/{gpa}"), format!("/pages/{gpa:#x}")] {
        let r = get(srv.addr(), &path);
        assert_eq!(r.status, 200, "{r:?}");
        let p = r.json();
        assert_eq!(p["gpa"], gpa - 12);
        assert_eq!(p["page"], gpa / PAGE);
        assert_eq!(p["home"], 1);
        assert_eq!(p["state"], "shared");
        assert_eq!(p["owner"], Value::Null);
        assert_eq!(p["sharers"], serde_json::json!([0, 1]));
        assert_eq!(p["busy"], false);
        assert_eq!(p["version"], (gpa / PAGE) % 1000);
        assert_eq!(
            p["recent_requests"],
            serde_json::json!([[0, (gpa / PAGE) % 7], [1, 3]])
        );
    }
}

#[test]
fn get_page_bad_addresses() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let msg = get(srv.addr(), &format!("/pages/{:#x}", 128 * MIB)).error(404);
    assert!(msg.contains("outside the address space"), "{msg}");
    get(srv.addr(), "/pages/0xffffffffffffffff").error(404);
    for bad in [
        "abc",
        "0x",
        "0xg1",
        "-4096",
        "18446744073709551616",
        "1e6",
        "%30",
    ] {
        let msg = get(srv.addr(), &format!("/pages/{bad}")).error(400);
        assert!(msg.contains("guest-physical address"), "{bad}: {msg}");
    }
    mock.state.lock().unwrap().members[1].state = MemberState::Dead;
    let msg = get(srv.addr(), &format!("/pages/{}", 64 * MIB)).error(503);
    assert!(msg.contains("did not answer"), "{msg}");
}

#[test]
fn metrics_are_openmetrics_text_from_the_node() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let r = get(srv.addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some(control::metrics::CONTENT_TYPE)
    );
    let t = r.text();
    assert!(t.contains("ssi_dp_faults_total{node=\"0\",kind=\"read\",locality=\"remote\"} 5\n"));
    assert!(
        t.contains("ssi_dp_remote_miss_ratio{node=\"0\"} 0.25\n"),
        "{t}"
    );
    assert!(t.contains("ssi_dp_invalidations_total{node=\"0\"} 2\n"));
    assert!(t.ends_with("# EOF\n"));
}

#[test]
fn heatmap_is_an_svg_of_the_members() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let r = get(srv.addr(), "/heatmap");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    let svg = r.text();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">node 0</text>") && svg.contains(">node 1</text>"));
    assert!(svg.contains("guest-physical address"));
    assert!(svg.contains("Page heat seen from node 0"));
    // 64 buckets in 8 columns: 8 per column.
    let narrow = get(srv.addr(), "/heatmap?columns=8");
    assert_eq!(narrow.status, 200);
    assert!(narrow.text().contains("8 per column"), "{}", narrow.text());
}

#[test]
fn heatmap_bad_queries_and_bad_heat() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    for q in [
        "columns=0",
        "columns=abc",
        "columns=5000",
        "columns=",
        "colour=red",
    ] {
        get(srv.addr(), &format!("/heatmap?{q}")).error(400);
    }
    mock.state.lock().unwrap().broken_heat = true;
    let msg = get(srv.addr(), "/heatmap").error(500);
    assert!(msg.contains("bug in the node"), "{msg}");
}

#[test]
fn post_cluster_forms_from_the_inventory() {
    let mock = MockNode::fresh();
    let srv = start(&mock);
    let inventory = "[[node]]\naddr = \"10.1.0.1:7000\"\n[[node]]\naddr = \"10.1.0.2:7000\"\n";
    let r = send(srv.addr(), "POST", "/cluster", Some(inventory.as_bytes()));
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    let members = v.as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[1]["addr"], "10.1.0.2:7000");
    assert_eq!(
        mock.state.lock().unwrap().inventories,
        vec![inventory.to_string()]
    );
    // Formed now: a second formation is refused.
    let msg = send(srv.addr(), "POST", "/cluster", Some(inventory.as_bytes())).error(409);
    assert!(msg.contains("already"), "{msg}");
}

#[test]
fn a_supervisor_refers_the_routes_about_one_node_to_a_node() {
    let mock = MockNode::fresh();
    let srv = start(&mock);
    for path in [
        "/pages/0x1000",
        "/metrics",
        "/heatmap",
        "/heatmap?columns=8",
    ] {
        let msg = get(srv.addr(), path).error(409);
        assert!(msg.contains("10.0.0.1:7300"), "{path}: {msg}");
    }
    // Bad input is still told apart from the referral.
    get(srv.addr(), "/pages/0x1000?x=1").error(400);
    assert_eq!(get(srv.addr(), "/nodes").status, 200);
    let inventory = "[[node]]\naddr = \"10.1.0.1:7000\"\n";
    assert_eq!(
        send(srv.addr(), "POST", "/cluster", Some(inventory.as_bytes())).status,
        201
    );
    // A node answers them itself.
    let node = MockNode::in_cluster();
    let srv = start(&node);
    assert_eq!(get(srv.addr(), "/metrics").status, 200);
}

#[test]
fn post_cluster_bad_bodies() {
    let mock = MockNode::fresh();
    let srv = start(&mock);
    let msg = send(srv.addr(), "POST", "/cluster", Some(b"")).error(400);
    assert!(msg.contains("inventory"), "{msg}");
    send(srv.addr(), "POST", "/cluster", Some(b"  \n")).error(400);
    send(srv.addr(), "POST", "/cluster", Some(b"\xff\xfe[[node]]")).error(400);
    assert!(mock.state.lock().unwrap().inventories.is_empty());
    // The inventory reaches membership, which refuses it.
    let msg = send(srv.addr(), "POST", "/cluster", Some(b"[cluster]\n")).error(400);
    assert!(msg.contains("no node"), "{msg}");
}

#[test]
fn delete_cluster_stops_it() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let r = send(srv.addr(), "DELETE", "/cluster", None);
    assert_eq!(r.status, 202, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("stopping"));
    assert!(mock.state.lock().unwrap().stopped);
    send(srv.addr(), "DELETE", "/cluster", None).error(409);
}

#[test]
fn unknown_paths_are_404() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    for p in [
        "/",
        "/node",
        "/nodes/1/2",
        "/metrics/",
        "/pages",
        "/pages/",
        "/heatmap.svg",
    ] {
        let msg = get(srv.addr(), p).error(404);
        assert!(msg.contains("/nodes"), "{p}: {msg}");
    }
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    for route in ROUTES {
        let path = route.path.replace("{id}", "1").replace("{gpa}", "4096");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let served = route.methods.iter().any(|m| m.as_str() == method);
            if served {
                continue;
            }
            let r = send(srv.addr(), method, &path, Some(b"{}"));
            r.error(405);
            assert_eq!(
                r.header("allow"),
                Some(route.allow().as_str()),
                "{method} {path}"
            );
        }
    }
    // Nothing was changed by the refused requests.
    let st = mock.state.lock().unwrap();
    assert!(st.joins.is_empty() && st.inventories.is_empty() && !st.stopped);
    assert!(st.members.iter().all(|m| m.state == MemberState::Alive));
}

#[test]
fn malformed_http_is_answered_with_json_errors() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let cases: [(&[u8], u16); 8] = [
        (b"hello\r\n\r\n", 400),
        (b"GET /nodes\r\n\r\n", 400),
        (b"GET /nodes HTTP/2.0\r\n\r\n", 505),
        (b"BREW /nodes HTTP/1.1\r\n\r\n", 501),
        (b"GET nodes HTTP/1.1\r\n\r\n", 400),
        (b"GET /nodes HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"POST /nodes HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (
            b"POST /nodes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
    ];
    for (req, status) in cases {
        raw(srv.addr(), req).error(status);
    }
    let msg = get(srv.addr(), "/nodes?x=1").error(400);
    assert!(msg.contains("query"), "{msg}");
}

#[test]
fn oversized_requests_are_refused() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let big = vec![b'x'; 64 * 1024 + 1];
    let msg = send(srv.addr(), "POST", "/cluster", Some(&big)).error(413);
    assert!(msg.contains("65536"), "{msg}");
    let long_field = format!(
        "GET /nodes HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    raw(srv.addr(), long_field.as_bytes()).error(431);
    let long_target = format!("GET /pages/{} HTTP/1.1\r\n\r\n", "1".repeat(3000));
    raw(srv.addr(), long_target.as_bytes()).error(414);
    assert!(mock.state.lock().unwrap().inventories.is_empty());
}

#[test]
fn expect_100_continue_gets_an_interim_answer() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let body = br#"{"addr": "h:1", "control": "h:2", "memory": 8192}"#;
    let mut s = connect(srv.addr());
    write!(
        s,
        "POST /nodes HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let want = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut interim = vec![0u8; want.len()];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, want);
    s.write_all(body).unwrap();
    let mut rest = interim;
    rest.extend(read_all(&mut s));
    let r = parse_reply(&rest, false);
    assert_eq!(r.interim, vec![100]);
    assert_eq!(r.status, 201, "{r:?}");
    // Too large: refused at once, no 100.
    let r = raw(
        srv.addr(),
        b"POST /nodes HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n",
    );
    assert!(r.interim.is_empty());
    r.error(413);
}

#[test]
fn connections_beyond_the_limit_get_503_at_once() {
    let mock = MockNode::in_cluster();
    let limits = Limits {
        max_connections: 2,
        workers: 1,
        ..Limits::default()
    };
    let srv = api::serve_with("127.0.0.1:0", mock.clone(), mock.clone(), limits, auth()).unwrap();
    // Two silent clients take both slots (one served, one waiting for the worker).
    let idle1 = connect(srv.addr());
    let idle2 = connect(srv.addr());
    let mut third = connect(srv.addr());
    let r = parse_reply(&read_all(&mut third), false);
    let msg = r.error(503);
    assert!(msg.contains("too many connections"), "{msg}");
    drop((idle1, idle2));
    // The slots come back once the silent clients are gone.
    let mut tries = 0;
    loop {
        let r = get(srv.addr(), "/nodes");
        if r.status == 200 {
            break;
        }
        r.error(503);
        tries += 1;
        assert!(tries < 1200, "the connection slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_stalls_gets_408() {
    let mock = MockNode::in_cluster();
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let srv = api::serve_with("127.0.0.1:0", mock.clone(), mock.clone(), limits, auth()).unwrap();
    let mut s = connect(srv.addr());
    s.write_all(b"POST /nodes HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"addr\"")
        .unwrap();
    let r = parse_reply(&read_all(&mut s), false);
    let msg = r.error(408);
    assert!(msg.contains("in time"), "{msg}");
    assert!(mock.state.lock().unwrap().joins.is_empty());
}

#[test]
fn a_failing_handler_is_a_500_and_the_server_goes_on() {
    let mock = MockNode::in_cluster();
    let limits = Limits {
        workers: 1,
        ..Limits::default()
    };
    let srv = api::serve_with("127.0.0.1:0", mock.clone(), mock.clone(), limits, auth()).unwrap();
    let msg = get(srv.addr(), &format!("/pages/{PANIC_GPA:#x}")).error(500);
    assert!(msg.contains("panic"), "{msg}");
    // The only worker survived.
    assert_eq!(get(srv.addr(), "/nodes").status, 200);
}

#[test]
fn probes_answer_without_a_token_and_say_why_not_ready() {
    let mock = MockNode::in_cluster();
    // This server wants the token for reads too; the probes do not.
    let strict = ApiAuth::with_token(TOKEN, true).expect("a usable token");
    let srv = api::serve("127.0.0.1:0", mock.clone(), mock.clone(), strict).unwrap();
    let addr = srv.addr();
    assert_eq!(send_as(addr, "GET", "/nodes", None, None).status, 401);
    for p in ["/healthz", "/readyz"] {
        let r = send_as(addr, "GET", p, None, None);
        assert_eq!(
            (r.status, r.json()["status"].as_str()),
            (200, Some("ok")),
            "{p}"
        );
        assert_eq!(send_as(addr, "HEAD", p, None, None).status, 200, "{p}");
        // A probe changes nothing: other methods are refused like anywhere else.
        assert_eq!(send(addr, "POST", p, Some(b"{}")).status, 405, "{p}");
    }
    // Stopping: alive, not ready.
    mock.state.lock().unwrap().stopped = true;
    assert_eq!(send_as(addr, "GET", "/healthz", None, None).status, 200);
    let why = send_as(addr, "GET", "/readyz", None, None).error(503);
    assert!(why.contains("stopping"), "{why}");
    // Stopped on a failure: neither, and both say why.
    mock.state.lock().unwrap().down = Some("the node stopped: page 7 is lost".into());
    for p in ["/healthz", "/readyz"] {
        let why = send_as(addr, "GET", p, None, None).error(503);
        assert!(why.contains("page 7 is lost"), "{p}: {why}");
    }
}

#[test]
fn server_threads_run_at_nice_19() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    // A request proves the workers run; the acceptor lowered itself before accepting it.
    assert_eq!(get(srv.addr(), "/nodes").status, 200);
    let mut seen = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue; // The thread ended meanwhile.
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !comm.starts_with("api-") {
            continue;
        }
        // Fields after the command: state is field 3, nice field 19.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let nice: i32 = fields[19 - 3].parse().unwrap();
        // Threads of servers of other tests may still be starting; ours are all past it.
        if nice == 19 {
            seen += 1;
        }
    }
    // At least this server's acceptor and its four workers.
    assert!(seen >= 5, "only {seen} API threads at nice 19");
}

#[test]
fn dropping_the_server_closes_the_port() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let addr = srv.addr();
    assert_eq!(get(addr, "/nodes").status, 200);
    drop(srv);
    let e = TcpStream::connect(addr).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn bind_errors_say_what_to_do() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    let e = api::serve(&srv.addr().to_string(), mock.clone(), mock.clone(), auth()).unwrap_err();
    assert!(e.to_string().contains("--api-addr"), "{e}");
    let e = api::serve("not an address", mock.clone(), mock.clone(), auth()).unwrap_err();
    assert!(e.to_string().contains("HOST:PORT"), "{e}");
    let bad = Limits {
        workers: 0,
        ..Limits::default()
    };
    let e = api::serve_with("127.0.0.1:0", mock.clone(), mock, bad, auth()).unwrap_err();
    assert!(e.to_string().contains("workers"), "{e}");
}

/// The `paths` of docs/openapi.yaml as (path, method) pairs: keys indented by two spaces
/// under `paths:` are paths, keys indented by four under them are operations.
fn openapi_operations() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let mut ops = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in doc.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        let key = line.trim().trim_end_matches(':');
        if indent == 2 && line.trim_end().ends_with(':') {
            path = Some(key.trim_matches(|c| c == '"' || c == '\'').to_string());
        } else if indent == 4 && line.trim_end().ends_with(':') {
            let methods = ["get", "head", "post", "put", "delete", "patch", "options"];
            if methods.contains(&key) {
                ops.insert((
                    path.clone().expect("operation outside a path"),
                    key.to_string(),
                ));
            }
        }
    }
    ops
}

#[test]
fn openapi_documents_exactly_the_served_routes() {
    let documented = openapi_operations();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|r| {
            r.methods
                .iter()
                .map(|m| (r.path.to_string(), m.as_str().to_ascii_lowercase()))
        })
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn openapi_documents_the_error_shape_and_statuses() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
        .unwrap();
    assert!(doc.starts_with("openapi: 3.0."), "OpenAPI 3.0 document");
    assert!(doc.contains("    Error:"), "an Error schema");
    for status in [
        "\"201\"", "\"202\"", "\"204\"", "\"400\"", "\"401\"", "\"403\"", "\"404\"", "\"409\"",
        "\"413\"", "\"503\"",
    ] {
        assert!(doc.contains(status), "status {status} is not documented");
    }
}

#[test]
fn mutating_endpoints_need_the_token_and_reads_only_when_asked() {
    let mock = MockNode::in_cluster();
    let srv = start(&mock);
    for (method, path) in [
        ("DELETE", "/cluster"),
        ("DELETE", "/nodes/2"),
        ("POST", "/nodes"),
    ] {
        let r = send_as(srv.addr(), method, path, Some(b"{}"), None);
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("www-authenticate") && v.starts_with("Bearer")),
            "{r:?}"
        );
        r.error(401);
        send_as(
            srv.addr(),
            method,
            path,
            Some(b"{}"),
            Some("not-the-token-00000000"),
        )
        .error(401);
    }
    // Reads stay open; nothing was changed by the refused requests.
    assert_eq!(send_as(srv.addr(), "GET", "/nodes", None, None).status, 200);
    assert!(!mock.state.lock().unwrap().stopped);
    // A server without a token refuses every mutating request, whatever it carries.
    let open = api::serve(
        "127.0.0.1:0",
        mock.clone(),
        mock.clone(),
        ApiAuth::read_only(),
    )
    .unwrap();
    let msg = send(open.addr(), "DELETE", "/cluster", None).error(403);
    assert!(msg.contains("--api-token-file"), "{msg}");
    assert_eq!(get(open.addr(), "/nodes").status, 200);
    // Reads behind the token too.
    let strict = ApiAuth::with_token(TOKEN, true).unwrap();
    let closed = api::serve("127.0.0.1:0", mock.clone(), mock.clone(), strict).unwrap();
    send_as(closed.addr(), "GET", "/metrics", None, None).error(401);
    assert_eq!(get(closed.addr(), "/metrics").status, 200);
    assert!(!mock.state.lock().unwrap().stopped);
}
