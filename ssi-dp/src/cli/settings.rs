//! A node's settings, from the command line or from an inventory file (`--inventory FILE
//! --node-id N`): addresses, peers, memory, cores, the secret, and the control plane (mutual
//! TLS identity and timeouts) when one is configured.

use std::io;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use control::api::{ApiAuth, AuthError};
use control::inventory::{Inventory, InventoryError};
use control::node_proof::NodeProof;
use control::tls::{TlsError, TlsIdentity};

use super::peer_arg::{self, PeerArg, PeerArgError};
use super::preflight::{self, Preflight, PreflightError};
use super::NodeArgs;
use engine::config::{self, ClusterSpec, ConfigError, NodeSpec};
use engine::cpulist::{self, CpuListError};
use engine::idle::{IdlePolicy, IdlePolicyError};

/// Why a node's settings are unusable; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `--node-id` missing.
    #[error("--node-id is required to run a node (or run `ssi-dp demo` or `ssi-dp up`)")]
    NoNodeId,
    /// Neither `--listen` nor `--listen-fd` (nor an inventory).
    #[error("--listen HOST:PORT is required to run a node")]
    NoListen,
    /// `--listen-fd` names stdin, stdout or stderr.
    #[error("--listen-fd {0} is not an inherited socket")]
    ListenFdReserved(i32),
    /// `--listen-fd` is not a listening socket.
    #[error("--listen-fd {fd} is not a listening socket: {source}")]
    ListenFdNotSocket {
        /// The fd.
        fd: i32,
        /// What `getsockname` said.
        #[source]
        source: io::Error,
    },
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr} ({what}): {source}; is another node already using that port?"
    )]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The bound data-plane listener has no local address.
    #[error(transparent)]
    ListenerAddr(io::Error),
    /// `--cluster-secret-file` missing.
    #[error("--cluster-secret-file is required: every node must share the same secret")]
    NoSecretFile,
    /// The secret file cannot be read.
    #[error(
        "cannot read the cluster secret {}: {source}; create it with e.g. `head -c 32 \
         /dev/urandom > {}`",
        .path.display(),
        .path.display()
    )]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The secret is too short.
    #[error(
        "the cluster secret in {} has {len} bytes; it needs at least {}",
        .path.display(),
        wire::handshake::MIN_SECRET_LEN
    )]
    ShortSecret {
        /// The file.
        path: PathBuf,
        /// Its length (without a final newline).
        len: usize,
    },
    /// A size, node id, address or the cluster they make is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `--peer` value is invalid.
    #[error(transparent)]
    Peer(#[from] PeerArgError),
    /// `--cores` is invalid.
    #[error("--cores: {0}")]
    Cores(#[source] CpuListError),
    /// `--control` without the TLS files.
    #[error(
        "--control needs --tls-ca, --tls-cert and --tls-key (create them with `ssi-dp certs`)"
    )]
    ControlNeedsTls,
    /// `--control` with a peer that has no control address.
    #[error("with --control, every --peer needs control=HOST:PORT (node {0} has none)")]
    PeerWithoutControl(u16),
    /// The TLS identity could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `--join-wait` without the control plane.
    #[error(
        "--join-wait needs the control plane (--control and the --tls-* files, or --inventory)"
    )]
    JoinWaitNeedsControl,
    /// The inventory cannot be used.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The inventory does not list `--node-id`.
    #[error("node {id} is not in the inventory {}", .path.display())]
    NotInInventory {
        /// `--node-id`.
        id: u16,
        /// The inventory.
        path: PathBuf,
    },
    /// An inventory node's memory is invalid.
    #[error("inventory node {id}: {source}")]
    InventorySize {
        /// The node.
        id: u16,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// An inventory node's cores are invalid.
    #[error("inventory node {id} cores: {source}")]
    InventoryCores {
        /// The node.
        id: u16,
        /// Why.
        #[source]
        source: CpuListError,
    },
    /// The API token file cannot be used.
    #[error(transparent)]
    ApiToken(#[from] AuthError),
    /// A file, the memory size or a core fails the checks made before listening.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// Only some of the certificate flags were given.
    #[error("give --tls-ca, --tls-cert and --tls-key together (create them with `ssi-dp certs`)")]
    PartialTls,
    /// The inventory's frame protection mode is invalid.
    #[error("the inventory's [cluster] frame_auth: {0}")]
    InventoryFrameAuth(#[source] wire::seal::FrameAuthParseError),
    /// An inventory node's idle policy is invalid.
    #[error("inventory node {id}: {source}")]
    InventoryIdle {
        /// The node.
        id: u16,
        /// Why.
        #[source]
        source: IdlePolicyError,
    },
}

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
    /// Protection of data frames.
    pub frame_auth: wire::FrameAuth,
    /// The node's certificate proving its id on data connections (with `--tls-*` or an
    /// inventory).
    pub identity: Option<Arc<NodeProof>>,
    /// The control plane, if configured.
    pub control: Option<ControlSettings>,
    /// REST API address, if any.
    pub api: Option<String>,
    /// Who may call the REST API.
    pub api_auth: ApiAuth,
}

/// Reads and checks the cluster secret.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SettingsError> {
    let bytes = std::fs::read(path).map_err(|source| SettingsError::ReadSecret {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed: Vec<u8> = bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec();
    if trimmed.len() < wire::handshake::MIN_SECRET_LEN {
        return Err(SettingsError::ShortSecret {
            path: path.to_path_buf(),
            len: trimmed.len(),
        });
    }
    Ok(trimmed)
}

fn bind(what: &'static str, addr: &str) -> Result<TcpListener, SettingsError> {
    TcpListener::bind(addr).map_err(|source| SettingsError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

fn data_listener(a: &NodeArgs, fallback: Option<&str>) -> Result<TcpListener, SettingsError> {
    if let Some(fd) = a.listen_fd {
        if fd < 3 {
            return Err(SettingsError::ListenFdReserved(fd));
        }
        // SAFETY: the parent passed this fd for us to own (the demo and the tests do).
        let l = unsafe { TcpListener::from_raw_fd(fd) };
        l.local_addr()
            .map_err(|source| SettingsError::ListenFdNotSocket { fd, source })?;
        return Ok(l);
    }
    match a.listen.as_deref().or(fallback) {
        Some(addr) => bind("data plane", addr),
        None => Err(SettingsError::NoListen),
    }
}

/// Resolves the settings from the command line (and the inventory, if given).
pub fn resolve(a: &NodeArgs) -> Result<Settings, SettingsError> {
    let id = a.node_id.ok_or(SettingsError::NoNodeId)?;
    let id = config::node_id(id)?;
    match &a.inventory {
        Some(path) => from_inventory(a, id, path),
        None => from_flags(a, id),
    }
}

/// The checks made before this node listens or dials ([`preflight`]).
fn preflight(a: &NodeArgs, memory: u64, cores: &[usize]) -> Result<(), SettingsError> {
    preflight::check(&Preflight {
        cores,
        pin: !a.no_pin,
        memory,
        allow_overcommit: a.allow_overcommit,
        kernel: a.kernel.as_deref(),
        initrd: a.initrd.as_deref(),
        hist_dump: a.hist_dump.as_deref(),
    })?;
    Ok(())
}

fn from_flags(a: &NodeArgs, id: u16) -> Result<Settings, SettingsError> {
    let memory = config::parse_size(&a.memory)?;
    let peers = a
        .peers
        .iter()
        .map(|p| peer_arg::parse_peer(p))
        .collect::<Result<Vec<_>, _>>()?;
    let secret_path = a
        .cluster_secret_file
        .as_ref()
        .ok_or(SettingsError::NoSecretFile)?;
    let secret = read_secret(secret_path)?;
    let cores = cpulist::parse(&a.cores).map_err(SettingsError::Cores)?;
    preflight(a, memory, &cores)?;
    let tls = match (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsIdentity::load(id, ca, cert, key)?),
        (None, None, None) => None,
        _ => return Err(SettingsError::PartialTls),
    };
    let listener = data_listener(a, None)?;
    let identity = tls.as_ref().map(TlsIdentity::proof);
    let control = match &a.control {
        None => None,
        Some(addr) => {
            let Some(tls) = tls else {
                return Err(SettingsError::ControlNeedsTls);
            };
            if let Some(p) = peers.iter().find(|p| p.control.is_none()) {
                return Err(SettingsError::PeerWithoutControl(p.id));
            }
            Some(ControlSettings {
                addr: addr.clone(),
                listener: bind("control plane", addr)?,
                tls,
                heartbeat: Duration::from_millis(a.heartbeat_ms),
                suspect: Duration::from_millis(a.suspect_ms),
                dead: Duration::from_millis(a.dead_ms),
            })
        }
    };
    if a.join_wait && control.is_none() {
        return Err(SettingsError::JoinWaitNeedsControl);
    }
    let api_auth = api_auth(a, None, false)?;
    Ok(Settings {
        id,
        listener,
        memory,
        peers,
        cores,
        idle: a.idle,
        secret,
        frame_auth: a.frame_auth.unwrap_or_default(),
        identity,
        control,
        api: a.api_addr.clone(),
        api_auth,
    })
}

/// The API's access rule: `--api-token-file` (and `--api-read-auth`) over the inventory's.
fn api_auth(
    a: &NodeArgs,
    inventory_file: Option<&Path>,
    inventory_reads: bool,
) -> Result<ApiAuth, SettingsError> {
    let (file, reads) = match &a.api_token_file {
        Some(f) => (Some(f.as_path()), a.api_read_auth),
        None => (inventory_file, inventory_reads),
    };
    Ok(match file {
        Some(f) => ApiAuth::from_file(f, reads)?,
        None => ApiAuth::read_only(),
    })
}

fn from_inventory(a: &NodeArgs, id: u16, path: &Path) -> Result<Settings, SettingsError> {
    let inv = Inventory::load(path)?;
    let me = inv.node(id).ok_or_else(|| SettingsError::NotInInventory {
        id,
        path: path.to_path_buf(),
    })?;
    let memory = config::parse_size(&me.memory)
        .map_err(|source| SettingsError::InventorySize { id, source })?;
    let mut peers = Vec::new();
    for n in inv.nodes.iter().filter(|n| n.id != id) {
        peers.push(PeerArg {
            id: n.id,
            addr: n.listen.clone(),
            memory: Some(
                config::parse_size(&n.memory)
                    .map_err(|source| SettingsError::InventorySize { id: n.id, source })?,
            ),
            control: Some(n.control.clone()),
        });
    }
    let secret = read_secret(&inv.cluster.secret_file)?;
    let cores =
        cpulist::parse(&me.cores).map_err(|source| SettingsError::InventoryCores { id, source })?;
    let idle: IdlePolicy = me
        .idle
        .parse()
        .map_err(|source| SettingsError::InventoryIdle { id, source })?;
    let frame_auth = match a.frame_auth {
        Some(m) => m,
        None => inv
            .cluster
            .frame_auth
            .parse()
            .map_err(SettingsError::InventoryFrameAuth)?,
    };
    let tls = TlsIdentity::load(id, &inv.tls.ca, &me.cert, &me.key)?;
    let identity = Some(tls.proof());
    let api_auth = api_auth(
        a,
        inv.cluster.api_token_file.as_deref(),
        inv.cluster.api_read_auth,
    )?;
    preflight(a, memory, &cores)?;
    let listener = data_listener(a, Some(&me.listen))?;
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
        frame_auth,
        identity,
        control,
        api: a.api_addr.clone().or_else(|| me.api.clone()),
        api_auth,
    })
}

impl Settings {
    /// The cluster these settings describe (peers' memory defaults to this node's).
    pub fn cluster(&self) -> Result<ClusterSpec, SettingsError> {
        let listen = self
            .listener
            .local_addr()
            .map_err(SettingsError::ListenerAddr)?;
        let mut peers = Vec::new();
        for p in &self.peers {
            let addr = config::resolve(p.id, &p.addr)?;
            peers.push(NodeSpec {
                id: p.id,
                addr,
                memory: p.memory.unwrap_or(self.memory),
            });
        }
        Ok(ClusterSpec::new(
            NodeSpec {
                id: self.id,
                addr: listen,
                memory: self.memory,
            },
            peers,
        )?)
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
