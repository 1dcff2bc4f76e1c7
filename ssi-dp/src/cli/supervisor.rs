//! `ssi-dp supervisor --api-addr HOST:PORT --dir DIR`: forms clusters on request.
//!
//! The supervisor serves the REST API without being a node. `POST /cluster` with an inventory
//! (TOML) starts the inventory's nodes for this host as child processes, as `ssi-dp up` does,
//! and answers once every member of the inventory is alive; `GET /nodes` lists the running
//! cluster's members; `DELETE /cluster` stops its nodes. One cluster at a time: a second
//! `POST /cluster` while one runs is refused (409) until it has stopped, whether through the
//! supervisor or through any node's `DELETE /cluster`.
//!
//! The supervisor learns the cluster's state from a node's own API, so the inventory must give
//! at least one of this host's nodes an `api` address. Routes about one node (`/pages`,
//! `/metrics`, `/heatmap`, `POST /nodes`, `DELETE /nodes/{id}`) answer 409 with that node's
//! address.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Args;
use control::handle::{
    Heat, JoinRequest, Member, MemberState, MembershipError, MembershipOps, NodeHandle, PageInfo,
    PageQueryError, Telemetry,
};
use control::inventory::Inventory;

use super::exit;
use super::up;
use crate::signals;
use engine::cpulist;

/// How long a request to a node's API may take.
const NODE_API_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the nodes of a cluster that did not form get to stop before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The largest answer read from a node's API (a `GET /nodes` of 64 members is ~16 KiB).
const NODE_API_MAX_BYTES: u64 = 1 << 20;

/// `ssi-dp supervisor` options.
#[derive(Debug, Args)]
pub struct SupervisorArgs {
    /// Address of the supervisor's REST API, HOST:PORT.
    #[arg(long)]
    api_addr: String,
    /// Directory the posted inventory is written to (as `cluster.toml`); relative paths in
    /// it (secret, certificates) resolve against this directory.
    #[arg(long)]
    dir: PathBuf,
    /// Create the cluster secret and the certificates a posted inventory names if they are
    /// missing (as `ssi-dp up --init`).
    #[arg(long)]
    init: bool,
    /// Seconds `POST /cluster` waits for every member to be alive before it stops the nodes
    /// and answers 503.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    form_timeout: u64,
    /// Bearer token for the supervisor's `POST /cluster` and `DELETE /cluster` (one line of
    /// at least 16 characters); without it they answer 403.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Arguments given to every node after its inventory settings.
    #[arg(last = true)]
    node_args: Vec<String>,
}

/// The cluster the supervisor runs.
struct Running {
    /// Node ids of the inventory (every member the cluster should have).
    ids: Vec<u16>,
    /// This host's nodes, as child processes; `None` once reaped.
    children: Vec<(u16, Option<Child>)>,
    /// API addresses of this host's nodes, lowest id first: where the state is asked.
    apis: Vec<String>,
    /// `DELETE /cluster` was asked.
    stopping: bool,
}

impl Running {
    /// Asks every node still running to stop (SIGTERM: a node stops in order).
    fn stop(&mut self) {
        for c in self.children.iter().filter_map(|c| c.1.as_ref()) {
            // SAFETY: plain syscall to our own child (not reaped yet, so the pid is ours).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Reaps exited children; returns whether none is left.
    fn reap(&mut self) -> bool {
        for (id, slot) in self.children.iter_mut() {
            if let Some(Ok(Some(st))) = slot.as_mut().map(Child::try_wait) {
                eprintln!("ssi-dp supervisor: node {id} exited with {st}");
                *slot = None;
            }
        }
        self.children.iter().all(|c| c.1.is_none())
    }
}

/// The supervisor as the REST API sees it.
struct Supervisor {
    args: SupervisorArgs,
    exe: PathBuf,
    running: Mutex<Option<Running>>,
}

impl Supervisor {
    fn state(&self) -> MutexGuard<'_, Option<Running>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API addresses to refer a client to, or the reason there are none.
    fn referral(&self) -> String {
        match self.state().as_ref() {
            Some(r) => format!(
                "this is the ssi-dp supervisor, not a node; ask a node's API (on this host: {})",
                r.apis.join(", ")
            ),
            None => "this is the ssi-dp supervisor, not a node, and no cluster is running; \
                     POST /cluster with an inventory forms one"
                .into(),
        }
    }

    /// The members as the first of this host's nodes to answer reports them; none when no
    /// cluster runs or no node answers (while forming or stopping).
    fn ask_members(&self) -> Vec<Member> {
        let apis = match self.state().as_ref() {
            Some(r) => r.apis.clone(),
            None => return Vec::new(),
        };
        // Asked without holding the lock: a node may take up to NODE_API_TIMEOUT.
        let mut members = apis
            .iter()
            .find_map(|a| get_members(a).ok())
            .unwrap_or_default();
        for m in &mut members {
            m.this_node = false;
        }
        members
    }

    /// Stops the cluster's nodes and waits until they have exited (SIGKILL after
    /// `STOP_GRACE`), so that a failed `POST /cluster` leaves nothing behind.
    fn stop_and_wait(&self) {
        let deadline = Instant::now() + STOP_GRACE;
        if let Some(r) = self.state().as_mut() {
            r.stop();
            r.stopping = true;
        }
        loop {
            let mut st = self.state();
            let Some(r) = st.as_mut() else { return };
            if r.reap() {
                eprintln!("ssi-dp supervisor: the cluster stopped");
                *st = None;
                return;
            }
            if Instant::now() > deadline {
                for (id, c) in r.children.iter_mut() {
                    if let Some(c) = c {
                        eprintln!("ssi-dp supervisor: node {id} did not stop; killing it");
                        let _ = c.kill();
                    }
                }
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(&self, text: &str) -> Result<Vec<u16>, MembershipError> {
        let invalid = MembershipError::Invalid;
        let mut st = self.state();
        if let Some(r) = st.as_ref() {
            return Err(MembershipError::Conflict(if r.stopping {
                format!(
                    "the previous cluster (nodes {}) is still stopping; try again in a moment",
                    fmt_ids(&r.ids)
                )
            } else {
                format!(
                    "a cluster (nodes {}) is already running; DELETE /cluster first",
                    fmt_ids(&r.ids)
                )
            }));
        }
        let path = self.args.dir.join("cluster.toml");
        let inv = Inventory::parse(text, &path).map_err(|e| invalid(e.to_string()))?;
        let local = inv.local_nodes();
        if local.is_empty() {
            return Err(invalid(
                "no node of the inventory runs on this host (host \"localhost\", 127.x or this \
                 machine's name)"
                    .into(),
            ));
        }
        let apis: Vec<String> = local.iter().filter_map(|n| n.api.clone()).collect();
        if apis.is_empty() {
            return Err(invalid(
                "give at least one of this host's nodes an `api` address: the supervisor asks \
                 it whether the cluster has formed"
                    .into(),
            ));
        }
        if self.args.init {
            // Whoever may post an inventory must still not make the supervisor write files
            // outside its directory.
            let outside = std::iter::once(&inv.cluster.secret_file)
                .chain(inv.cluster.api_token_file.as_ref())
                .chain(std::iter::once(&inv.tls.ca))
                .chain(inv.nodes.iter().flat_map(|n| [&n.cert, &n.key]))
                .find(|p| !inside(&self.args.dir, p));
            if let Some(p) = outside {
                return Err(invalid(format!(
                    "{} is outside {}: with --init the supervisor creates files only inside its \
                     --dir; use relative paths without `..`",
                    p.display(),
                    self.args.dir.display()
                )));
            }
            up::init(&inv).map_err(|e| invalid(format!("creating secret/certificates: {e}")))?;
        }
        up::check_files(&inv, &local).map_err(|e| invalid(e.to_string()))?;
        std::fs::create_dir_all(&self.args.dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| {
                MembershipError::Unavailable(format!(
                    "cannot write the inventory to {}: {e}",
                    path.display()
                ))
            })?;
        let mut r = Running {
            ids: inv.nodes.iter().map(|n| n.id).collect(),
            children: Vec::with_capacity(local.len()),
            apis,
            stopping: false,
        };
        for n in &local {
            match up::spawn_node(&self.exe, &path, n.id, &self.args.node_args) {
                Ok(c) => r.children.push((n.id, Some(c))),
                Err(e) => {
                    r.stop();
                    r.stopping = true;
                    let msg = format!("cannot start node {}: {e}", n.id);
                    *st = Some(r);
                    return Err(MembershipError::Unavailable(msg));
                }
            }
        }
        let ids = local.iter().map(|n| n.id).collect::<Vec<_>>();
        eprintln!(
            "ssi-dp supervisor: started node(s) {} from {}",
            fmt_ids(&ids),
            path.display()
        );
        let all = r.ids.clone();
        *st = Some(r);
        Ok(all)
    }

    /// Waits until every member of `ids` is alive; on failure stops the nodes.
    fn await_formation(&self, ids: &[u16]) -> Result<Vec<Member>, MembershipError> {
        let deadline = Instant::now() + Duration::from_secs(self.args.form_timeout);
        loop {
            let members = self.ask_members();
            let alive = |id| {
                members
                    .iter()
                    .any(|m| m.id == id && m.state == MemberState::Alive)
            };
            if ids.iter().all(|&id| alive(id)) {
                return Ok(members);
            }
            let why = {
                let mut st = self.state();
                match st.as_mut() {
                    None => Some("every node exited".to_string()),
                    Some(r) if r.stopping => Some("the cluster was stopped".to_string()),
                    Some(r) => {
                        let gone: Vec<u16> = r
                            .children
                            .iter()
                            .filter(|c| c.1.is_none())
                            .map(|c| c.0)
                            .collect();
                        if !gone.is_empty() {
                            Some(format!("node(s) {} exited", fmt_ids(&gone)))
                        } else if Instant::now() > deadline {
                            Some(format!(
                                "not every member was alive after {} s (--form-timeout)",
                                self.args.form_timeout
                            ))
                        } else {
                            None
                        }
                    }
                }
            };
            if let Some(why) = why {
                self.stop_and_wait();
                return Err(MembershipError::Unavailable(format!(
                    "the cluster did not form: {why}; its nodes on this host were stopped, \
                     see the supervisor's log for their output"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl NodeHandle for Supervisor {
    fn id(&self) -> u16 {
        // Not a node id: the routes that would show it answer through `not_a_node`.
        u16::MAX
    }

    fn members(&self) -> Vec<Member> {
        self.ask_members()
    }

    fn page(&self, gpa: u64) -> Result<PageInfo, PageQueryError> {
        // Not reached through the API (`not_a_node` answers first): the supervisor homes no
        // address space.
        Err(PageQueryError::OutOfRange { gpa, end: 0 })
    }

    fn heat(&self) -> Heat {
        Heat {
            bucket_bytes: 0,
            nodes: Vec::new(),
            counts: Vec::new(),
            homes_in: Vec::new(),
            homes_out: Vec::new(),
        }
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry::default()
    }

    fn not_a_node(&self) -> Option<String> {
        Some(self.referral())
    }
}

impl MembershipOps for Supervisor {
    fn join(&self, _req: JoinRequest) -> Result<Member, MembershipError> {
        Err(MembershipError::Conflict(self.referral()))
    }

    fn leave(&self, _id: u16) -> Result<(), MembershipError> {
        Err(MembershipError::Conflict(self.referral()))
    }

    fn stop_cluster(&self) -> Result<(), MembershipError> {
        let mut st = self.state();
        match st.as_mut() {
            None => Err(MembershipError::Conflict(
                "no cluster is running; POST /cluster with an inventory forms one".into(),
            )),
            Some(r) if r.stopping => Err(MembershipError::Conflict(
                "the cluster is already stopping".into(),
            )),
            Some(r) => {
                eprintln!("ssi-dp supervisor: stopping the nodes (DELETE /cluster)");
                r.stop();
                r.stopping = true;
                Ok(())
            }
        }
    }

    fn form_cluster(&self, inventory_toml: &str) -> Result<Vec<Member>, MembershipError> {
        let ids = self.start(inventory_toml)?;
        self.await_formation(&ids)
    }
}

/// Runs the supervisor until SIGTERM / Ctrl-C; returns the exit code.
pub fn run(args: SupervisorArgs) -> i32 {
    // The API server logs refused and broken requests through `tracing`.
    if let Err(e) = crate::logging::init(crate::logging::LogFormat::Human, None, false) {
        eprintln!("ssi-dp supervisor: error: {e}");
        return exit::USAGE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ssi-dp supervisor: error: cannot find the ssi-dp binary: {e}");
            return exit::USAGE;
        }
    };
    if let Err(e) = signals::install() {
        eprintln!("ssi-dp supervisor: warning: cannot install signal handlers: {e}");
    }
    let addr = args.api_addr.clone();
    let auth = match &args.api_token_file {
        None => control::api::ApiAuth::read_only(),
        Some(f) => match control::api::ApiAuth::from_file(f, false) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ssi-dp supervisor: error: {e}");
                return exit::USAGE;
            }
        },
    };
    let sup = Arc::new(Supervisor {
        args,
        exe,
        running: Mutex::new(None),
    });
    let server = match control::api::serve(&addr, sup.clone(), sup.clone(), auth) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ssi-dp supervisor: error: {e}");
            return exit::USAGE;
        }
    };
    eprintln!(
        "ssi-dp supervisor: REST API on http://{}; POST /cluster with an inventory forms a \
         cluster",
        server.addr()
    );
    let mut stopping = false;
    loop {
        if signals::stop_requested() && !stopping {
            stopping = true;
            eprintln!("ssi-dp supervisor: stopping");
            if let Some(r) = sup.state().as_mut() {
                r.stop();
            }
        }
        {
            let mut st = sup.state();
            if st.as_mut().is_some_and(Running::reap) {
                eprintln!("ssi-dp supervisor: the cluster stopped");
                *st = None;
            }
            if stopping && st.is_none() {
                return 0;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `path` lies inside `dir` (lexically, with no `..` component).
fn inside(dir: &std::path::Path, path: &std::path::Path) -> bool {
    path.starts_with(dir)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

fn fmt_ids(ids: &[u16]) -> String {
    cpulist::format(&ids.iter().map(|&i| usize::from(i)).collect::<Vec<_>>())
}

/// Why a node's API could not tell the members (the supervisor then asks the next node).
#[derive(Debug, thiserror::Error)]
enum NodeApiError {
    /// The API address resolves to nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// Resolving, connecting, writing or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("the answer has no header end")]
    NoHeaderEnd,
    /// The node answered with another status (its status line).
    #[error("answered {0}")]
    Answered(String),
    /// The answer's body is not a member list.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// `GET /nodes` on a node's API.
fn get_members(api: &str) -> Result<Vec<Member>, NodeApiError> {
    let addr = api
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| NodeApiError::NoAddress(api.to_string()))?;
    let mut s = TcpStream::connect_timeout(&addr, NODE_API_TIMEOUT)?;
    s.set_read_timeout(Some(NODE_API_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(NODE_API_TIMEOUT)))?;
    write!(s, "GET /nodes HTTP/1.0\r\nHost: {api}\r\n\r\n")?;
    let mut out = Vec::new();
    s.take(NODE_API_MAX_BYTES).read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(NodeApiError::NoHeaderEnd)?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(NodeApiError::Answered(
            head.lines().next().unwrap_or_default().to_string(),
        ));
    }
    Ok(serde_json::from_str(body)?)
}
