//! `ssi-dp up INVENTORY`: the one command that forms a cluster. It starts, as child
//! processes, every node the inventory lists for this host (for a local inventory, all of
//! them), relays their output, and stops them on Ctrl-C / SIGTERM; it exits when they have
//! all exited (for instance after `DELETE /cluster` on any node's API).
//!
//! `ssi-dp certs --out DIR --nodes LIST`: creates the cluster CA and one certificate per node
//! for the control plane's mutual TLS.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use clap::Args;
use control::inventory::{Inventory, NodeEntry};
use control::tls::TlsError;

use super::child;
use super::exit;
use crate::signals;
use engine::cpulist;

/// `ssi-dp up` options.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The cluster inventory (TOML or YAML, by extension; see docs/operations.md).
    inventory: PathBuf,
    /// Create the cluster secret and the certificates at the inventory's paths if they are
    /// missing (for a trial cluster on one host; the certificates must be `ca.pem`,
    /// `node<N>.pem` and `node<N>.key` in one directory).
    #[arg(long)]
    init: bool,
    /// Arguments given to every node after its inventory settings (e.g. `-- --workload
    /// counters --ops 1000`).
    #[arg(last = true)]
    node_args: Vec<String>,
}

/// `ssi-dp certs` options.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write `ca.pem`, `node<N>.pem` and `node<N>.key` into.
    #[arg(long)]
    out: PathBuf,
    /// Node ids to create certificates for (cpulist syntax: 0-2,5).
    #[arg(long)]
    nodes: String,
}

/// Why the files an inventory names are missing or could not be created.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The secret or certificates are missing.
    #[error(
        "missing {}; create the certificates with `ssi-dp certs --out DIR --nodes {}` and the \
         secret with `head -c 32 /dev/urandom > SECRET`, at the paths the inventory names",
        paths(.missing),
        cpulist::format(.nodes)
    )]
    MissingFiles {
        /// The missing files.
        missing: Vec<PathBuf>,
        /// Every node of the inventory.
        nodes: Vec<usize>,
    },
    /// No random bytes for the secret.
    #[error("cannot read /dev/urandom: {0}")]
    Urandom(#[source] io::Error),
    /// A directory or the secret could not be written.
    #[error("{}: {source}", .path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The inventory's certificate paths are not the ones `--init` creates.
    #[error(
        "node {id}'s certificate and key must be {} and {} to be created here",
        .cert.display(),
        .key.display()
    )]
    CertPaths {
        /// The node.
        id: u16,
        /// The certificate path `--init` would create.
        cert: PathBuf,
        /// The key path `--init` would create.
        key: PathBuf,
    },
    /// Generating the certificates failed.
    #[error(transparent)]
    Generate(#[from] TlsError),
}

/// `a, b, c`
fn paths(v: &[PathBuf]) -> String {
    v.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates certificates; returns the exit code.
pub fn certs(a: CertsArgs) -> i32 {
    let nodes = match cpulist::parse(&a.nodes) {
        Ok(v) => v.into_iter().map(|x| x as u16).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("ssi-dp certs: error: --nodes: {e}");
            return exit::USAGE;
        }
    };
    match control::tls::generate(&a.out, &nodes) {
        Ok(files) => {
            println!("{}", files.ca.display());
            for (_, c, k) in files.nodes {
                println!("{}\n{}", c.display(), k.display());
            }
            0
        }
        Err(e) => {
            eprintln!("ssi-dp certs: error: {e}");
            1
        }
    }
}

/// Brings the cluster up; returns the exit code.
pub fn run(a: UpArgs) -> i32 {
    let inv = match Inventory::load(&a.inventory) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("ssi-dp up: error: {e}");
            return exit::USAGE;
        }
    };
    let local = inv.local_nodes();
    if local.is_empty() {
        eprintln!(
            "ssi-dp up: no node of {} runs on this host",
            a.inventory.display()
        );
        return exit::USAGE;
    }
    if a.init {
        if let Err(e) = init(&inv) {
            eprintln!("ssi-dp up: error: --init: {e}");
            return exit::USAGE;
        }
    }
    if let Err(e) = check_files(&inv, &local) {
        eprintln!("ssi-dp up: error: {e}");
        return exit::USAGE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ssi-dp up: error: cannot find the ssi-dp binary: {e}");
            return exit::USAGE;
        }
    };
    if let Err(e) = signals::install() {
        eprintln!("ssi-dp up: warning: cannot install signal handlers: {e}");
    }
    let mut children: Vec<(u16, Child)> = Vec::new();
    for n in &local {
        match spawn_node(&exe, &a.inventory, n.id, &a.node_args) {
            Ok(c) => children.push((n.id, c)),
            Err(e) => {
                eprintln!("ssi-dp up: error: cannot start node {}: {e}", n.id);
                stop_all(&mut children);
                return exit::FAILED;
            }
        }
    }
    eprintln!(
        "ssi-dp up: started node(s) {} from {}; Ctrl-C stops them",
        cpulist::format(&local.iter().map(|n| usize::from(n.id)).collect::<Vec<_>>()),
        a.inventory.display()
    );
    let mut worst = 0;
    let mut running = children.len();
    let mut codes = vec![None; children.len()];
    let mut stopping = false;
    while running > 0 {
        if signals::stop_requested() && !stopping {
            stopping = true;
            eprintln!("ssi-dp up: stopping the nodes");
            stop_all(&mut children);
        }
        for (k, (id, c)) in children.iter_mut().enumerate() {
            if codes[k].is_none() {
                if let Ok(Some(st)) = c.try_wait() {
                    let code = st.code().unwrap_or(128);
                    eprintln!("ssi-dp up: node {id} exited with {st}");
                    worst = worst.max(code);
                    codes[k] = Some(code);
                    running -= 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    worst
}

/// Refuses to start `local` nodes whose secret or certificate files are missing, saying how to
/// create them.
pub(super) fn check_files(inv: &Inventory, local: &[&NodeEntry]) -> Result<(), UpError> {
    let mut missing = Vec::new();
    for p in std::iter::once(&inv.tls.ca).chain(local.iter().flat_map(|n| [&n.cert, &n.key])) {
        if !p.exists() {
            missing.push(p.clone());
        }
    }
    if !inv.cluster.secret_file.exists() {
        missing.push(inv.cluster.secret_file.clone());
    }
    if let Some(t) = inv.cluster.api_token_file.as_ref().filter(|t| !t.exists()) {
        missing.push(t.clone());
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(UpError::MissingFiles {
        missing,
        nodes: inv.nodes.iter().map(|n| usize::from(n.id)).collect(),
    })
}

/// Starts node `id` of `inventory` as a child process (see [`child::spawn`]).
pub(super) fn spawn_node(
    exe: &Path,
    inventory: &Path,
    id: u16,
    node_args: &[String],
) -> std::io::Result<Child> {
    let mut args: Vec<OsString> = vec![
        "--inventory".into(),
        inventory.into(),
        "--node-id".into(),
        id.to_string().into(),
    ];
    args.extend(node_args.iter().map(OsString::from));
    // The relays run until the node closes its output; nothing waits for them.
    child::spawn(exe, id, &args, None).map(|c| c.child)
}

/// Creates the secret and the certificates an inventory names, where missing.
pub(super) fn init(inv: &Inventory) -> Result<(), UpError> {
    if !inv.cluster.secret_file.exists() {
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(UpError::Urandom)?;
        if let Some(d) = inv.cluster.secret_file.parent() {
            std::fs::create_dir_all(d).map_err(|source| UpError::File {
                path: d.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&inv.cluster.secret_file, secret).map_err(|source| UpError::File {
            path: inv.cluster.secret_file.clone(),
            source,
        })?;
        eprintln!("ssi-dp up: created {}", inv.cluster.secret_file.display());
    }
    if let Some(path) = inv.cluster.api_token_file.as_ref().filter(|p| !p.exists()) {
        let mut raw = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(UpError::Urandom)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|source| UpError::File {
                path: d.to_path_buf(),
                source,
            })?;
        }
        // Readable by its owner only, like the secret should be.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
            .map_err(|source| UpError::File {
                path: path.clone(),
                source,
            })?;
        eprintln!("ssi-dp up: created the API token {}", path.display());
    }
    if inv.tls.ca.exists() {
        return Ok(());
    }
    let dir = inv.tls.ca.parent().map(PathBuf::from).unwrap_or_default();
    for n in &inv.nodes {
        let (c, k) = (
            dir.join(format!("node{}.pem", n.id)),
            dir.join(format!("node{}.key", n.id)),
        );
        if n.cert != c || n.key != k {
            return Err(UpError::CertPaths {
                id: n.id,
                cert: c,
                key: k,
            });
        }
    }
    let ids: Vec<u16> = inv.nodes.iter().map(|n| n.id).collect();
    control::tls::generate(&dir, &ids)?;
    eprintln!(
        "ssi-dp up: created a CA and certificates for nodes {ids:?} in {}",
        dir.display()
    );
    Ok(())
}

/// Asks every child to stop (SIGTERM: a node stops in order).
pub(super) fn stop_all(children: &mut [(u16, Child)]) {
    for (_, c) in children.iter_mut() {
        // SAFETY: plain syscall to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
}
