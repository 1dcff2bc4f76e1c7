//! The REST API of a node (`--api-addr`): cluster formation and shutdown, membership, page
//! state, Prometheus metrics and the page-heat picture, over HTTP/1.1.
//!
//! [`serve`] binds the address and starts the server's threads: one acceptor and a small
//! pool of workers, all at the lowest priority (nice 19), that reach the node only through
//! [`NodeHandle`] and [`MembershipOps`]. Everything is bounded ([`Limits`]): connections in
//! flight (more are answered 503 at once), head and body sizes, the time a client may take to
//! send its request and to read the answer. Each connection carries one request and is closed
//! after the answer. The server stops when the [`ApiServer`] is dropped.
//!
//! Every method but GET and HEAD changes the cluster and needs the API's bearer token
//! ([`ApiAuth`]; refused outright without one); reads need it too when configured so.
//!
//! Routes and status codes are documented in docs/api.md and docs/openapi.yaml; errors are
//! JSON `{"error": "<message>", "status": <code>}`.

pub mod auth;
pub mod http;
pub mod routes;
mod server;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::handle::{MembershipOps, NodeHandle};
use crate::metrics::Exporter;

pub use auth::{ApiAuth, AuthError};
pub use routes::ROUTES;

/// The most worker threads a server may have.
pub const MAX_WORKERS: usize = 64;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The address could not be bound.
    #[error(
        "cannot listen for the REST API on {addr}: {source}; give a free HOST:PORT with \
         --api-addr (port 0 picks one)"
    )]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The listener could not be configured.
    #[error("cannot set up the REST API listener: {0}")]
    Listener(std::io::Error),
    /// A limit is out of range.
    #[error("invalid REST API limits: {0}")]
    Limits(String),
    /// A thread could not be started.
    #[error("cannot start the REST API threads: {0}; the process may be out of threads or memory")]
    Spawn(std::io::Error),
}

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections accepted and not yet answered (being read, served or waiting for a
    /// worker); more are answered `503` at once.
    pub max_connections: usize,
    /// Worker threads (requests served at the same time), 1..=[`MAX_WORKERS`].
    pub workers: usize,
    /// Bytes of a request head (request line and header fields).
    pub head_bytes: usize,
    /// Bytes of a request target.
    pub target_bytes: usize,
    /// Header fields of a request.
    pub header_fields: usize,
    /// Bytes of a request body.
    pub body_bytes: usize,
    /// Time a client has to send its whole request, from its connection.
    pub request_timeout: Duration,
    /// Time a client has to take the answer.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            workers: 4,
            head_bytes: 16 * 1024,
            target_bytes: 2048,
            header_fields: 64,
            body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), ApiError> {
        let bad = |what: &str| Err(ApiError::Limits(what.to_string()));
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return bad(&format!("workers must be 1..={MAX_WORKERS}"));
        }
        if self.max_connections < self.workers {
            return bad("max_connections must be at least workers");
        }
        if self.head_bytes < 64 || self.target_bytes == 0 || self.header_fields == 0 {
            return bad("head_bytes must be at least 64, target_bytes and header_fields above 0");
        }
        if self.request_timeout.is_zero() || self.write_timeout.is_zero() {
            return bad("timeouts must be above zero");
        }
        Ok(())
    }

    fn head(&self) -> http::HeadLimits {
        http::HeadLimits {
            head_bytes: self.head_bytes,
            target_bytes: self.target_bytes,
            fields: self.header_fields,
            body_bytes: self.body_bytes,
        }
    }
}

/// A running API server; stops when dropped (after the requests in progress are answered).
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// The address the server listens on (with the port chosen when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves the API on `addr` (HOST:PORT) with the default [`Limits`], under `auth`.
pub fn serve(
    addr: &str,
    node: Arc<dyn NodeHandle>,
    ops: Arc<dyn MembershipOps>,
    auth: ApiAuth,
) -> Result<ApiServer, ApiError> {
    serve_with(addr, node, ops, Limits::default(), auth)
}

/// Serves the API on `addr` (HOST:PORT) within `limits`, under `auth`.
pub fn serve_with(
    addr: &str,
    node: Arc<dyn NodeHandle>,
    ops: Arc<dyn MembershipOps>,
    limits: Limits,
    auth: ApiAuth,
) -> Result<ApiServer, ApiError> {
    limits.check()?;
    let listener = TcpListener::bind(addr).map_err(|source| ApiError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let bound = listener.local_addr().map_err(ApiError::Listener)?;
    listener.set_nonblocking(true).map_err(ApiError::Listener)?;

    let shared = Arc::new(server::Shared {
        ctx: routes::Context {
            exporter: Exporter::new(node.clone()),
            node,
            ops,
        },
        head: limits.head(),
        limits,
        auth,
        stop: AtomicBool::new(false),
        active: AtomicUsize::new(0),
    });
    let (tx, rx) = sync_channel(limits.max_connections);
    let rx = Arc::new(Mutex::new(rx));
    let mut server = ApiServer {
        addr: bound,
        shared: shared.clone(),
        threads: Vec::with_capacity(limits.workers + 1),
    };
    for i in 0..limits.workers {
        let (rx, shared) = (rx.clone(), shared.clone());
        let t = std::thread::Builder::new()
            .name(format!("api-worker-{i}"))
            .spawn(move || server::worker_loop(&rx, &shared))
            .map_err(ApiError::Spawn)?;
        server.threads.push(t);
    }
    let t = std::thread::Builder::new()
        .name("api-reader".into())
        .spawn(move || server::reader_loop(&listener, &shared, tx))
        .map_err(ApiError::Spawn)?;
    server.threads.push(t);
    Ok(server)
}
