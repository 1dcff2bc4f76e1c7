//! The cluster inventory: one TOML file describing every node (addresses, memory, cores,
//! certificates) and the cluster's settings (secret, heartbeat and failure timeouts). TOML
//! through the maintained `toml` crate (serde_yaml, the usual YAML crate, is deprecated).
//!
//! ```toml
//! [cluster]
//! secret_file = "cluster.secret"   # paths are relative to the inventory file
//! heartbeat_ms = 100               # how often nodes send heartbeats
//! suspect_ms = 300                 # silence before a node is suspected
//! dead_ms = 1000                   # silence before it is declared dead
//! api_token_file = "api.token"     # bearer token for the API's mutating endpoints (optional;
//!                                  # without it they are refused)
//! api_read_auth = false            # reads need the token too
//! frame_auth = "mac"               # data frames: mac (default), aead (encrypted) or none
//!
//! [tls]
//! ca = "certs/ca.pem"              # the CA every node certificate is signed by
//!
//! [[node]]
//! id = 0
//! host = "localhost"               # where `ssi-dp up` starts it
//! listen = "127.0.0.1:7000"        # data plane
//! control = "127.0.0.1:7100"       # control plane (mutual TLS)
//! api = "127.0.0.1:7200"           # REST API and /metrics (optional)
//! memory = "64M"
//! cores = "0"
//! idle = "block"
//! cert = "certs/node0.pem"
//! key = "certs/node0.key"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Why an inventory cannot be used.
#[derive(Debug, Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read the inventory {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown/missing fields.
    #[error("inventory {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (line and column included).
        message: String,
    },
    /// The content is inconsistent.
    #[error("inventory {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What to change.
        message: String,
    },
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// File holding the cluster secret (the data-plane handshake key).
    pub secret_file: PathBuf,
    /// Heartbeat period in ms.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Silence before suspicion, in ms.
    #[serde(default = "default_suspect")]
    pub suspect_ms: u64,
    /// Silence before a node is declared dead, in ms.
    #[serde(default = "default_dead")]
    pub dead_ms: u64,
    /// File holding the REST API's bearer token; without one the mutating endpoints are
    /// refused.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Whether the read-only endpoints need the token too.
    #[serde(default)]
    pub api_read_auth: bool,
    /// Protection of data frames: `mac` (default), `aead` or `none`.
    #[serde(default = "default_frame_auth")]
    pub frame_auth: String,
}

fn default_heartbeat() -> u64 {
    100
}
fn default_suspect() -> u64 {
    500
}
fn default_dead() -> u64 {
    1500
}
fn default_host() -> String {
    "localhost".into()
}
fn default_cores() -> String {
    "0".into()
}
fn default_frame_auth() -> String {
    "mac".to_string()
}

fn default_idle() -> String {
    "hybrid".into()
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The CA certificate (PEM) that signs every node's certificate.
    pub ca: PathBuf,
}

/// One `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id (0..63).
    pub id: u16,
    /// Host that runs it; `ssi-dp up` starts the nodes whose host is this machine
    /// (`localhost`, a loopback address, or this machine's hostname).
    #[serde(default = "default_host")]
    pub host: String,
    /// Data-plane listen address.
    pub listen: String,
    /// Control-plane (mutual TLS) listen address.
    pub control: String,
    /// REST API and metrics address.
    #[serde(default)]
    pub api: Option<String>,
    /// Memory it contributes (`64M`, `0` for compute only).
    pub memory: String,
    /// Data-plane cores (cpulist).
    #[serde(default = "default_cores")]
    pub cores: String,
    /// Idle policy: spin, hybrid, block.
    #[serde(default = "default_idle")]
    pub idle: String,
    /// Its certificate (PEM), signed by the CA, valid for `node-<id>.ssi-dp`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A parsed, checked inventory with paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Cluster settings.
    pub cluster: ClusterSection,
    /// TLS settings.
    pub tls: TlsSection,
    /// The nodes, in the file's order.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
    /// Where the file is (relative paths were resolved against its directory).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The DNS name a node's certificate must be valid for.
pub fn node_name(id: u16) -> String {
    format!("node-{id}.ssi-dp")
}

impl Inventory {
    /// Reads, parses and checks an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks inventory text; relative paths resolve against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let mut inv: Inventory = toml::from_str(text).map_err(|e| InventoryError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        inv.path = path.to_path_buf();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let abs = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                dir.join(p)
            }
        };
        inv.cluster.secret_file = abs(&inv.cluster.secret_file);
        inv.cluster.api_token_file = inv.cluster.api_token_file.as_ref().map(abs);
        inv.tls.ca = abs(&inv.tls.ca);
        for n in &mut inv.nodes {
            n.cert = abs(&n.cert);
            n.key = abs(&n.key);
        }
        inv.check()?;
        Ok(inv)
    }

    fn check(&self) -> Result<(), InventoryError> {
        let bad = |message: String| InventoryError::Invalid {
            path: self.path.clone(),
            message,
        };
        if self.nodes.is_empty() {
            return Err(bad("no [[node]] entries".into()));
        }
        let mut ids: Vec<u16> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("node id {} appears twice", w[0])));
        }
        if let Some(n) = self.nodes.iter().find(|n| n.id >= 64) {
            return Err(bad(format!("node id {} is out of range (0..63)", n.id)));
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 || c.suspect_ms <= c.heartbeat_ms || c.dead_ms <= c.suspect_ms {
            return Err(bad(format!(
                "timeouts must satisfy 0 < heartbeat_ms ({}) < suspect_ms ({}) < dead_ms ({})",
                c.heartbeat_ms, c.suspect_ms, c.dead_ms
            )));
        }
        for n in &self.nodes {
            for (what, addr) in [
                ("listen", Some(&n.listen)),
                ("control", Some(&n.control)),
                ("api", n.api.as_ref()),
            ] {
                if let Some(a) = addr {
                    if !a.contains(':') {
                        return Err(bad(format!(
                            "node {}: {what} = {a:?} is not HOST:PORT",
                            n.id
                        )));
                    }
                }
            }
        }
        let mut addrs: Vec<&String> = self
            .nodes
            .iter()
            .flat_map(|n| [Some(&n.listen), Some(&n.control), n.api.as_ref()])
            .flatten()
            .collect();
        addrs.sort();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("address {} is used twice", w[0])));
        }
        Ok(())
    }

    /// The entry of node `id`.
    pub fn node(&self, id: u16) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The nodes `ssi-dp up` should start on this machine.
    pub fn local_nodes(&self) -> Vec<&NodeEntry> {
        let me = hostname();
        self.nodes
            .iter()
            .filter(|n| {
                n.host == "localhost"
                    || n.host.starts_with("127.")
                    || n.host == "::1"
                    || me.as_deref() == Some(n.host.as_str())
            })
            .collect()
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
secret_file = "secret"
heartbeat_ms = 50

[tls]
ca = "/abs/ca.pem"

[[node]]
id = 1
listen = "127.0.0.1:7001"
control = "127.0.0.1:7101"
memory = "64M"
cert = "c1.pem"
key = "c1.key"

[[node]]
id = 0
host = "elsewhere.example"
listen = "127.0.0.1:7000"
control = "127.0.0.1:7100"
api = "127.0.0.1:7200"
memory = "0"
cores = "1-2"
idle = "block"
cert = "c0.pem"
key = "c0.key"
"#;

    #[test]
    fn parses_with_defaults_and_resolves_paths() {
        let inv = Inventory::parse(GOOD, Path::new("/etc/ssi/inv.toml")).unwrap();
        assert_eq!(inv.cluster.secret_file, Path::new("/etc/ssi/secret"));
        assert_eq!(inv.tls.ca, Path::new("/abs/ca.pem"));
        assert_eq!(
            (
                inv.cluster.heartbeat_ms,
                inv.cluster.suspect_ms,
                inv.cluster.dead_ms
            ),
            (50, 500, 1500)
        );
        let n1 = inv.node(1).unwrap();
        assert_eq!(
            (n1.host.as_str(), n1.cores.as_str(), n1.idle.as_str()),
            ("localhost", "0", "hybrid")
        );
        assert_eq!(n1.cert, Path::new("/etc/ssi/c1.pem"));
        assert_eq!(
            inv.local_nodes().iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(node_name(3), "node-3.ssi-dp");
    }

    #[test]
    fn refuses_inconsistent_inventories() {
        let p = Path::new("/x/inv.toml");
        let cases = [
            (GOOD.replace("id = 0", "id = 1"), "appears twice"),
            (GOOD.replace("id = 0", "id = 70"), "out of range"),
            (
                GOOD.replace("heartbeat_ms = 50", "heartbeat_ms = 900"),
                "timeouts must satisfy",
            ),
            (
                GOOD.replace("127.0.0.1:7101", "127.0.0.1:7000"),
                "used twice",
            ),
            (GOOD.replace("127.0.0.1:7200", "7200"), "not HOST:PORT"),
            (
                GOOD.replace("memory = \"64M\"", "memory = \"64M\"\ncolour = 1"),
                "unknown field",
            ),
            (
                GOOD.replace("[tls]\nca = \"/abs/ca.pem\"", ""),
                "missing field",
            ),
        ];
        for (text, want) in cases {
            let e = Inventory::parse(&text, p).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
