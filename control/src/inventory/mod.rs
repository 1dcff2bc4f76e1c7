//! The cluster inventory: one file describing every node (addresses, memory, cores,
//! certificates) and the cluster's settings (secret, heartbeat and failure timeouts), in TOML
//! (the `toml` crate) or YAML (`yaml_serde`, the YAML organization's fork of serde_yaml):
//! the same schema in both, chosen by the file's extension (`.toml`, `.yaml` or `.yml`),
//! published as a JSON Schema in docs/inventory.schema.json. Every error names the file and,
//! where it can, the line (parse errors from the parser, consistency errors by finding the
//! offending key in the text: [`locate`]).
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
//!
//! The same in YAML: `cluster:` and `tls:` are mappings, `node:` a list of mappings.

mod locate;

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
    /// The text does not parse or has unknown/missing fields.
    #[error("inventory {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (line and column included).
        message: String,
    },
    /// The content is inconsistent.
    #[error("inventory {path}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line to look at (1-based), where one can be named.
        line: Option<usize>,
        /// What to change.
        message: String,
    },
    /// The file's name does not say which format it is in.
    #[error(
        "inventory {0}: name it *.toml, *.yaml or *.yml (the extension says which format the \
         file is in)"
    )]
    UnknownFormat(PathBuf),
}

/// The two inventory formats (one schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML: `[cluster]`, `[tls]`, `[[node]]`.
    Toml,
    /// YAML: `cluster:`, `tls:`, `node:` (a list).
    Yaml,
}

impl Format {
    /// The format a file's extension names.
    pub fn of(path: &Path) -> Result<Format, InventoryError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Format::Toml),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            _ => Err(InventoryError::UnknownFormat(path.to_path_buf())),
        }
    }

    /// `toml` or `yaml`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Yaml => "yaml",
        }
    }
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
    /// Memory it contributes (`64M`, `0` for compute only; a bare number is bytes).
    #[serde(deserialize_with = "text_or_number")]
    pub memory: String,
    /// Data-plane cores (cpulist; a bare number is one CPU).
    #[serde(default = "default_cores", deserialize_with = "text_or_number")]
    pub cores: String,
    /// Idle policy: spin, hybrid, block.
    #[serde(default = "default_idle")]
    pub idle: String,
    /// Its certificate (PEM), signed by the CA, valid for `node-<id>.ssi-dp`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A string, or a non-negative integer taken as its decimal text: YAML reads `cores: 0` and
/// `memory: 0` as numbers, and a TOML writer may too.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string such as \"64M\" or \"0-3\", or a non-negative integer")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            u64::try_from(v)
                .map(|v| v.to_string())
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
    }
    d.deserialize_any(V)
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

/// Largest inventory read or parsed.
pub const MAX_INVENTORY_BYTES: usize = 1 << 20;

/// Deepest flow nesting (`[`, `{`) a YAML inventory may have.
const MAX_YAML_NESTING: usize = 32;

/// The DNS name a node's certificate must be valid for.
pub fn node_name(id: u16) -> String {
    format!("node-{id}.ssi-dp")
}

impl Inventory {
    /// Reads, parses and checks an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        use std::io::Read as _;
        let read = |source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_INVENTORY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks inventory text in the format `path`'s extension names; relative
    /// paths resolve against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        Self::parse_as(text, path, Format::of(path)?)
    }

    /// Parses and checks inventory text in `format`.
    pub fn parse_as(text: &str, path: &Path, format: Format) -> Result<Inventory, InventoryError> {
        let bounds = |message: String| InventoryError::Parse {
            path: path.to_path_buf(),
            message,
        };
        if text.len() > MAX_INVENTORY_BYTES {
            return Err(bounds(format!(
                "larger than {MAX_INVENTORY_BYTES} bytes; an inventory of 64 nodes takes a few \
                 tens of KiB"
            )));
        }
        // The YAML parser's time grows with the square of the nesting depth (200 000 nested
        // brackets took minutes): nothing in an inventory nests deeper than a few levels.
        if format == Format::Yaml {
            if let Some(line) = locate::nested_deeper_than(text, MAX_YAML_NESTING) {
                return Err(bounds(format!(
                    "line {line}: brackets nested deeper than {MAX_YAML_NESTING} levels; an \
                     inventory needs three"
                )));
            }
        }
        let parsed = match format {
            Format::Toml => toml::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => yaml_serde::from_str(text).map_err(|e| e.to_string()),
        };
        let mut inv: Inventory = parsed.map_err(|message| InventoryError::Parse {
            path: path.to_path_buf(),
            message,
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
        inv.check(text)?;
        Ok(inv)
    }

    /// Checks consistency; `text` is the file, searched for the line an error is about.
    fn check(&self, text: &str) -> Result<(), InventoryError> {
        let bad = |line: Option<usize>, message: String| InventoryError::Invalid {
            path: self.path.clone(),
            line,
            message,
        };
        if self.nodes.is_empty() {
            return Err(bad(
                None,
                "no nodes: add one [[node]] table (TOML) or one entry under node: (YAML) per node"
                    .into(),
            ));
        }
        let mut ids: Vec<u16> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            let id = w[0].to_string();
            return Err(bad(
                locate::key_line(text, "id", Some(&id), 1),
                format!("node id {id} appears twice"),
            ));
        }
        if let Some(n) = self.nodes.iter().find(|n| n.id >= 64) {
            return Err(bad(
                locate::key_line(text, "id", Some(&n.id.to_string()), 0),
                format!("node id {} is out of range (0..63)", n.id),
            ));
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 || c.suspect_ms <= c.heartbeat_ms || c.dead_ms <= c.suspect_ms {
            let line = ["heartbeat_ms", "suspect_ms", "dead_ms"]
                .iter()
                .find_map(|k| locate::key_line(text, k, None, 0));
            return Err(bad(
                line,
                format!(
                    "timeouts must satisfy 0 < heartbeat_ms ({}) < suspect_ms ({}) < dead_ms ({})",
                    c.heartbeat_ms, c.suspect_ms, c.dead_ms
                ),
            ));
        }
        if !matches!(c.frame_auth.as_str(), "mac" | "aead" | "none") {
            return Err(bad(
                locate::key_line(text, "frame_auth", None, 0),
                format!("frame_auth = {:?}: use mac, aead or none", c.frame_auth),
            ));
        }
        for n in &self.nodes {
            for (what, addr) in [
                ("listen", Some(&n.listen)),
                ("control", Some(&n.control)),
                ("api", n.api.as_ref()),
            ] {
                if let Some(a) = addr {
                    if !a.contains(':') {
                        return Err(bad(
                            locate::key_line(text, what, Some(a), 0),
                            format!("node {}: {what} = {a:?} is not HOST:PORT", n.id),
                        ));
                    }
                }
            }
            let hybrid_us = n.idle.strip_prefix("hybrid:");
            if !matches!(n.idle.as_str(), "spin" | "block" | "hybrid")
                && hybrid_us.is_none_or(|us| us.parse::<u64>().is_err())
            {
                return Err(bad(
                    locate::key_line(text, "idle", Some(&n.idle), 0),
                    format!(
                        "node {}: idle = {:?}: use spin, hybrid, hybrid:<us> or block",
                        n.id, n.idle
                    ),
                ));
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
            return Err(bad(
                locate::value_line(text, w[0], 1),
                format!("address {} is used twice", w[0]),
            ));
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

    /// `GOOD` in YAML, with bare numbers where YAML writers put them.
    const GOOD_YAML: &str = r#"
cluster:
  secret_file: secret
  heartbeat_ms: 50
tls:
  ca: /abs/ca.pem
node:
  - id: 1
    listen: "127.0.0.1:7001"
    control: 127.0.0.1:7101
    memory: 64M
    cert: c1.pem
    key: c1.key
  - id: 0
    host: elsewhere.example
    listen: 127.0.0.1:7000
    control: 127.0.0.1:7100
    api: 127.0.0.1:7200
    memory: 0
    cores: 1-2
    idle: block
    cert: c0.pem
    key: c0.key
"#;

    #[test]
    fn yaml_and_toml_give_the_same_inventory() {
        let t = Inventory::parse(GOOD, Path::new("/etc/ssi/inv.toml")).unwrap();
        let mut y = Inventory::parse(GOOD_YAML, Path::new("/etc/ssi/inv.yaml")).unwrap();
        y.path = t.path.clone();
        assert_eq!(t, y);
        let yml = Inventory::parse(GOOD_YAML, Path::new("/etc/ssi/inv.yml")).unwrap();
        assert_eq!(yml.nodes, t.nodes);
        // A bare number where text is expected is its decimal text, in TOML too.
        let n = GOOD.replace("memory = \"0\"", "memory = 0");
        assert_eq!(
            Inventory::parse(&n, Path::new("/etc/ssi/inv.toml")).unwrap(),
            t
        );
        let e = Inventory::parse(GOOD, Path::new("/etc/ssi/inv.json")).unwrap_err();
        assert!(matches!(e, InventoryError::UnknownFormat(_)), "{e}");
        assert!(e.to_string().contains("*.yaml"), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            // (TOML text, YAML text, message, TOML line, YAML line)
            (
                GOOD.replace("id = 0", "id = 1"),
                GOOD_YAML.replace("id: 0", "id: 1"),
                "appears twice",
                18,
                14,
            ),
            (
                GOOD.replace("127.0.0.1:7101", "127.0.0.1:7000"),
                GOOD_YAML.replace("127.0.0.1:7101", "127.0.0.1:7000"),
                "used twice",
                20,
                16,
            ),
            (
                GOOD.replace("heartbeat_ms = 50", "heartbeat_ms = 900"),
                GOOD_YAML.replace("heartbeat_ms: 50", "heartbeat_ms: 900"),
                "timeouts must satisfy",
                4,
                4,
            ),
            (
                GOOD.replace("idle = \"block\"", "idle = \"nap\""),
                GOOD_YAML.replace("idle: block", "idle: nap"),
                "use spin, hybrid",
                25,
                21,
            ),
        ];
        for (toml, yaml, want, tl, yl) in cases {
            let e = Inventory::parse(&toml, Path::new("/x/inv.toml")).unwrap_err();
            assert!(
                e.to_string().contains(want) && e.to_string().contains(&format!("line {tl}:")),
                "toml {want}: {e}"
            );
            let e = Inventory::parse(&yaml, Path::new("/x/inv.yaml")).unwrap_err();
            assert!(
                e.to_string().contains(want) && e.to_string().contains(&format!("line {yl}:")),
                "yaml {want}: {e}"
            );
        }
        // Parse errors carry the parsers' own positions.
        let e = Inventory::parse(
            &GOOD_YAML.replace("    idle: block", "    idle: block\n    colour: 1"),
            Path::new("/x/inv.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown field `colour`") && e.contains("line 22"),
            "{e}"
        );
        let e = Inventory::parse(
            &GOOD.replace("id = 1", "id = \"x\""),
            Path::new("/x/i.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 10"), "{e}");
    }

    #[test]
    fn refuses_oversized_and_deeply_nested_text_at_once() {
        let deep = format!("cluster: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
        let t = std::time::Instant::now();
        let e = Inventory::parse(&deep, Path::new("/x/i.yaml")).unwrap_err();
        assert!(e.to_string().contains("nested deeper than 32"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let big = format!("{GOOD}\n#{}\n", "x".repeat(MAX_INVENTORY_BYTES));
        let e = Inventory::parse(&big, Path::new("/x/i.toml")).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
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
