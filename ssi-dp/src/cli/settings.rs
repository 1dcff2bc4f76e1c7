//! A node's settings, from the command line or from an inventory file (`--inventory FILE
//! --node-id N`): addresses, peers, memory, cores, the secret, and the control plane (mutual
//! TLS identity and timeouts) when one is configured.

use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::Duration;

use control::inventory::Inventory;
use control::tls::TlsIdentity;

use super::peer_arg::{self, PeerArg};
use super::NodeArgs;
use engine::config::{self, ClusterSpec, NodeSpec};
use engine::cpulist;
use engine::idle::IdlePolicy;

/// The control plane's settings.
#[derive(Debug)]
pub struct ControlSettings {
    /// Its listen address as configured.
    pub addr: String,
    /// Bound listener.
    pub listener: TcpListener,
    /// This node's TLS identity.
    pub tls: TlsIdentity,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Silence before suspicion.
    pub suspect: Duration,
    /// Silence before death.
    pub dead: Duration,
}

/// Everything `run` needs, resolved.
#[derive(Debug)]
pub struct Settings {
    /// This node's id.
    pub id: u16,
    /// Bound data-plane listener.
    pub listener: TcpListener,
    /// Memory this node contributes.
    pub memory: u64,
    /// The other nodes.
    pub peers: Vec<PeerArg>,
    /// Data-plane cores.
    pub cores: Vec<usize>,
    /// Idle policy.
    pub idle: IdlePolicy,
    /// The cluster secret.
    pub secret: Vec<u8>,
    /// The control plane, if configured.
    pub control: Option<ControlSettings>,
    /// REST API address, if any.
    pub api: Option<String>,
}

/// Reads and checks the cluster secret.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the cluster secret {}: {e}; create it with e.g. `head -c 32 /dev/urandom > {}`",
            path.display(),
            path.display()
        )
    })?;
    let trimmed: Vec<u8> = bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec();
    if trimmed.len() < wire::handshake::MIN_SECRET_LEN {
        return Err(format!(
            "the cluster secret in {} has {} bytes; it needs at least {}",
            path.display(),
            trimmed.len(),
            wire::handshake::MIN_SECRET_LEN
        ));
    }
    Ok(trimmed)
}

fn bind(what: &str, addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} ({what}): {e}; is another node already using that port?")
    })
}

fn data_listener(a: &NodeArgs, fallback: Option<&str>) -> Result<TcpListener, String> {
    if let Some(fd) = a.listen_fd {
        if fd < 3 {
            return Err(format!("--listen-fd {fd} is not an inherited socket"));
        }
        // SAFETY: the parent passed this fd for us to own (the demo and the tests do).
        let l = unsafe { TcpListener::from_raw_fd(fd) };
        l.local_addr()
            .map_err(|e| format!("--listen-fd {fd} is not a listening socket: {e}"))?;
        return Ok(l);
    }
    match a.listen.as_deref().or(fallback) {
        Some(addr) => bind("data plane", addr),
        None => Err("--listen HOST:PORT is required to run a node".into()),
    }
}

/// Resolves the settings from the command line (and the inventory, if given).
pub fn resolve(a: &NodeArgs) -> Result<Settings, String> {
    let id = a
        .node_id
        .ok_or("--node-id is required to run a node (or run `ssi-dp demo` or `ssi-dp up`)")?;
    let id = config::node_id(id).map_err(|e| e.to_string())?;
    match &a.inventory {
        Some(path) => from_inventory(a, id, path),
        None => from_flags(a, id),
    }
}

fn from_flags(a: &NodeArgs, id: u16) -> Result<Settings, String> {
    let listener = data_listener(a, None)?;
    let memory = config::parse_size(&a.memory).map_err(|e| e.to_string())?;
    let peers = a
        .peers
        .iter()
        .map(|p| peer_arg::parse_peer(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let secret_path = a
        .cluster_secret_file
        .as_ref()
        .ok_or("--cluster-secret-file is required: every node must share the same secret")?;
    let secret = read_secret(secret_path)?;
    let cores = cpulist::parse(&a.cores).map_err(|e| format!("--cores: {e}"))?;
    let control = match &a.control {
        None => None,
        Some(addr) => {
            let (Some(ca), Some(cert), Some(key)) = (&a.tls_ca, &a.tls_cert, &a.tls_key) else {
                return Err("--control needs --tls-ca, --tls-cert and --tls-key (create them with `ssi-dp certs`)".into());
            };
            if let Some(p) = peers.iter().find(|p| p.control.is_none()) {
                return Err(format!(
                    "with --control, every --peer needs control=HOST:PORT (node {} has none)",
                    p.id
                ));
            }
            Some(ControlSettings {
                addr: addr.clone(),
                listener: bind("control plane", addr)?,
                tls: TlsIdentity::load(id, ca, cert, key).map_err(|e| e.to_string())?,
                heartbeat: Duration::from_millis(a.heartbeat_ms),
                suspect: Duration::from_millis(a.suspect_ms),
                dead: Duration::from_millis(a.dead_ms),
            })
        }
    };
    if a.join_wait && control.is_none() {
        return Err(
            "--join-wait needs the control plane (--control and the --tls-* files, or --inventory)"
                .into(),
        );
    }
    Ok(Settings {
        id,
        listener,
        memory,
        peers,
        cores,
        idle: a.idle,
        secret,
        control,
        api: a.api_addr.clone(),
    })
}

fn from_inventory(a: &NodeArgs, id: u16, path: &Path) -> Result<Settings, String> {
    let inv = Inventory::load(path).map_err(|e| e.to_string())?;
    let me = inv
        .node(id)
        .ok_or_else(|| format!("node {id} is not in the inventory {}", path.display()))?;
    let listener = data_listener(a, Some(&me.listen))?;
    let memory = config::parse_size(&me.memory).map_err(|e| format!("inventory node {id}: {e}"))?;
    let mut peers = Vec::new();
    for n in inv.nodes.iter().filter(|n| n.id != id) {
        peers.push(PeerArg {
            id: n.id,
            addr: n.listen.clone(),
            memory: Some(
                config::parse_size(&n.memory)
                    .map_err(|e| format!("inventory node {}: {e}", n.id))?,
            ),
            control: Some(n.control.clone()),
        });
    }
    let secret = read_secret(&inv.cluster.secret_file)?;
    let cores = cpulist::parse(&me.cores).map_err(|e| format!("inventory node {id} cores: {e}"))?;
    let idle: IdlePolicy = me
        .idle
        .parse()
        .map_err(|e: String| format!("inventory node {id}: {e}"))?;
    let tls = TlsIdentity::load(id, &inv.tls.ca, &me.cert, &me.key).map_err(|e| e.to_string())?;
    let control = Some(ControlSettings {
        addr: me.control.clone(),
        listener: bind("control plane", &me.control)?,
        tls,
        heartbeat: Duration::from_millis(inv.cluster.heartbeat_ms),
        suspect: Duration::from_millis(inv.cluster.suspect_ms),
        dead: Duration::from_millis(inv.cluster.dead_ms),
    });
    Ok(Settings {
        id,
        listener,
        memory,
        peers,
        cores,
        idle,
        secret,
        control,
        api: a.api_addr.clone().or_else(|| me.api.clone()),
    })
}

impl Settings {
    /// The cluster these settings describe (peers' memory defaults to this node's).
    pub fn cluster(&self) -> Result<ClusterSpec, String> {
        let listen = self.listener.local_addr().map_err(|e| e.to_string())?;
        let mut peers = Vec::new();
        for p in &self.peers {
            let addr = config::resolve(p.id, &p.addr).map_err(|e| e.to_string())?;
            peers.push(NodeSpec {
                id: p.id,
                addr,
                memory: p.memory.unwrap_or(self.memory),
            });
        }
        ClusterSpec::new(
            NodeSpec {
                id: self.id,
                addr: listen,
                memory: self.memory,
            },
            peers,
        )
        .map_err(|e| e.to_string())
    }

    /// Every member's control address, this node's included.
    pub fn controls(&self) -> Vec<(u16, String)> {
        let mut v: Vec<(u16, String)> = self
            .peers
            .iter()
            .filter_map(|p| p.control.clone().map(|c| (p.id, c)))
            .collect();
        if let Some(c) = &self.control {
            v.push((self.id, c.addr.clone()));
        }
        v
    }
}
