//! The REST API's routes: the table of paths and methods the server answers ([`ROUTES`]),
//! and the handlers that answer them through the node's [`NodeHandle`] and
//! [`MembershipOps`]. Handlers are plain functions from a parsed request to a [`Response`];
//! they know nothing of sockets.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::http::{Method, Response};
use crate::handle::{JoinRequest, MembershipOps, NodeHandle, PageQueryError};
use crate::heatmap::{self, HeatmapOptions, HomeRange};
use crate::metrics::{self, Exporter};

/// Content type of JSON bodies.
pub const JSON: &str = "application/json";

/// Content type of the heatmap.
pub const SVG: &str = "image/svg+xml";

/// One path the API serves and the methods it accepts there (HEAD is accepted wherever GET
/// is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The path; `{name}` stands for one path segment.
    pub path: &'static str,
    /// Methods served.
    pub methods: &'static [Method],
}

impl Route {
    /// The `Allow` field of the route.
    pub fn allow(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for m in self.methods {
            names.push(m.as_str());
            if *m == Method::Get {
                names.push(Method::Head.as_str());
            }
        }
        names.join(", ")
    }

    /// Whether `m` is served on this route.
    pub fn serves(&self, m: Method) -> bool {
        self.methods.contains(&m) || (m == Method::Head && self.methods.contains(&Method::Get))
    }

    /// The parameter of `path` if it matches the route (`Some("")` for a route without one).
    fn matches<'p>(&self, path: &'p str) -> Option<&'p str> {
        let mut want = self.path.split('/');
        let mut got = path.split('/');
        let mut param = "";
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some(param),
                (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                    if g.is_empty() {
                        return None;
                    }
                    param = g;
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    }
}

/// Every route of the API. docs/openapi.yaml documents exactly these (a test compares them).
pub const ROUTES: &[Route] = &[
    Route {
        path: "/cluster",
        methods: &[Method::Post, Method::Delete],
    },
    Route {
        path: "/nodes",
        methods: &[Method::Get, Method::Post],
    },
    Route {
        path: "/nodes/{id}",
        methods: &[Method::Delete],
    },
    Route {
        path: "/pages/{gpa}",
        methods: &[Method::Get],
    },
    Route {
        path: "/metrics",
        methods: &[Method::Get],
    },
    Route {
        path: "/heatmap",
        methods: &[Method::Get],
    },
    Route {
        path: "/healthz",
        methods: &[Method::Get],
    },
    Route {
        path: "/readyz",
        methods: &[Method::Get],
    },
];

/// Whether `path` is a probe (`/healthz`, `/readyz`): answered without the API token even
/// when reads need it, so that a supervisor (systemd, Kubernetes) can ask without one. They
/// say only whether the node runs and serves.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// What a handler sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Query, without the `?`.
    pub query: Option<&'a str>,
    /// Body.
    pub body: &'a [u8],
}

/// What the handlers work with.
pub struct Context {
    /// The node.
    pub node: Arc<dyn NodeHandle>,
    /// Its membership.
    pub ops: Arc<dyn MembershipOps>,
    /// Its metrics exporter.
    pub exporter: Exporter,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.node.id())
            .finish_non_exhaustive()
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    status: u16,
}

/// A JSON error answer: `{"error": message, "status": status}`.
pub fn error(status: u16, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: message,
        status,
    })
    .unwrap_or_else(|_| b"{\"error\":\"internal error\",\"status\":500}".to_vec());
    Response::new(status, JSON, body)
}

fn json<T: Serialize + ?Sized>(status: u16, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => Response::new(status, JSON, body),
        Err(e) => error(500, &format!("cannot encode the answer as JSON: {e}")),
    }
}

/// Answers one request.
pub fn handle(ctx: &Context, req: &Request<'_>) -> Response {
    let Some((route, param)) = ROUTES
        .iter()
        .find_map(|r| r.matches(req.path).map(|p| (r, p)))
    else {
        return error(
            404,
            &format!(
                "no such resource: {}; the API serves /cluster, /nodes, /nodes/{{id}}, \
                 /pages/{{gpa}}, /metrics, /heatmap, /healthz and /readyz",
                req.path
            ),
        );
    };
    if !route.serves(req.method) {
        let mut r = error(
            405,
            &format!(
                "{} is not allowed on {}; allowed: {}",
                req.method.as_str(),
                route.path,
                route.allow()
            ),
        );
        r.allow = Some(route.allow());
        return r;
    }
    let method = if req.method == Method::Head {
        Method::Get
    } else {
        req.method
    };
    if route.path != "/heatmap" {
        if let Some(q) = req.query.filter(|q| !q.is_empty()) {
            return error(
                400,
                &format!("{} takes no query parameters, got `{q}`", route.path),
            );
        }
    }
    if matches!(route.path, "/pages/{gpa}" | "/metrics" | "/heatmap") {
        if let Some(why) = ctx.node.not_a_node() {
            return error(409, &why);
        }
    }
    match (route.path, method) {
        ("/cluster", Method::Post) => form_cluster(ctx, req.body),
        ("/cluster", Method::Delete) => stop_cluster(ctx),
        ("/nodes", Method::Get) => json(200, &ctx.node.members()),
        ("/nodes", Method::Post) => join(ctx, req.body),
        ("/nodes/{id}", Method::Delete) => leave(ctx, param),
        ("/pages/{gpa}", Method::Get) => page(ctx, param),
        ("/metrics", Method::Get) => match ctx.exporter.render() {
            Ok(text) => Response::new(200, metrics::CONTENT_TYPE, text.into_bytes()),
            Err(e) => error(500, &e.to_string()),
        },
        ("/heatmap", Method::Get) => heatmap(ctx, req.query),
        ("/healthz", Method::Get) => probe(ctx.node.liveness()),
        ("/readyz", Method::Get) => probe(ctx.node.readiness()),
        // Every (route, method) pair that `serves` admits is listed above.
        _ => error(500, "route without a handler; this is a bug in ssi-dp"),
    }
}

/// A probe's answer: 200 `{"status": "ok"}`, or 503 with why not.
fn probe(state: Result<(), String>) -> Response {
    match state {
        Ok(()) => json(200, &serde_json::json!({"status": "ok"})),
        Err(why) => error(503, &why),
    }
}

/// The body of `POST /nodes`: [`JoinRequest`], refusing unknown fields (a misspelt optional
/// field would otherwise be silently ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    #[serde(default)]
    id: Option<u16>,
    addr: String,
    control: String,
    memory: u64,
}

impl From<JoinBody> for JoinRequest {
    fn from(b: JoinBody) -> Self {
        JoinRequest {
            id: b.id,
            addr: b.addr,
            control: b.control,
            memory: b.memory,
        }
    }
}

fn join(ctx: &Context, body: &[u8]) -> Response {
    // serde would also take the fields as an array; only the documented object is accepted.
    let parsed = match body.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice::<JoinBody>(body).map_err(|e| e.to_string()),
        _ => Err("not a JSON object".to_string()),
    };
    let req = match parsed {
        Ok(b) => b,
        Err(e) => {
            return error(
                400,
                &format!(
                    "the body must be a JSON object {{\"id\": optional node id, \"addr\": \
                     \"HOST:PORT\", \"control\": \"HOST:PORT\", \"memory\": bytes}}: {e}"
                ),
            )
        }
    };
    match ctx.ops.join(req.into()) {
        Ok(m) => json(201, &m),
        Err(e) => error(e.status(), &e.to_string()),
    }
}

fn leave(ctx: &Context, id: &str) -> Response {
    let Some(id) = parse_decimal(id).and_then(|v| u16::try_from(v).ok()) else {
        return error(
            400,
            &format!("`{id}` is not a node id; node ids are decimal numbers from 0 to 65535"),
        );
    };
    match ctx.ops.leave(id) {
        Ok(()) => Response::empty(204),
        Err(e) => error(e.status(), &e.to_string()),
    }
}

fn form_cluster(ctx: &Context, body: &[u8]) -> Response {
    let Ok(text) = std::str::from_utf8(body) else {
        return error(400, "the inventory must be UTF-8 TOML text");
    };
    if text.trim().is_empty() {
        return error(
            400,
            "send the cluster inventory (TOML) as the request body, e.g. \
             curl --data-binary @cluster.toml",
        );
    }
    match ctx.ops.form_cluster(text) {
        Ok(members) => json(201, &members),
        Err(e) => error(e.status(), &e.to_string()),
    }
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

fn stop_cluster(ctx: &Context) -> Response {
    match ctx.ops.stop_cluster() {
        Ok(()) => json(
            202,
            &Message {
                message: "every node of the cluster is stopping",
            },
        ),
        Err(e) => error(e.status(), &e.to_string()),
    }
}

fn page(ctx: &Context, gpa: &str) -> Response {
    let Some(addr) = parse_address(gpa) else {
        return error(
            400,
            &format!(
                "`{gpa}` is not a guest-physical address; give a 64-bit number in decimal or \
                 in hex with 0x"
            ),
        );
    };
    match ctx.node.page(addr) {
        Ok(p) => json(200, &p),
        Err(e @ PageQueryError::OutOfRange { .. }) => error(404, &e.to_string()),
        Err(e @ PageQueryError::HomeUnavailable { .. }) => error(503, &e.to_string()),
    }
}

fn heatmap(ctx: &Context, query: Option<&str>) -> Response {
    let mut opts = HeatmapOptions::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "columns" => match parse_decimal(v).and_then(|n| usize::try_from(n).ok()) {
                Some(n) if (1..=heatmap::MAX_COLUMNS).contains(&n) => opts.max_columns = n,
                _ => {
                    return error(
                        400,
                        &format!(
                            "columns must be a number from 1 to {}, got `{v}`",
                            heatmap::MAX_COLUMNS
                        ),
                    )
                }
            },
            _ => {
                return error(
                    400,
                    &format!("unknown query parameter `{k}`; /heatmap takes `columns`"),
                )
            }
        }
    }
    opts.title = format!(
        "Page heat seen from node {}: requests per address range, by requesting node",
        ctx.node.id()
    );
    let homes: Vec<HomeRange> = ctx
        .node
        .members()
        .iter()
        .filter(|m| m.memory > 0)
        .map(|m| HomeRange {
            node: m.id,
            start: m.gpa_start,
            len: m.memory,
        })
        .collect();
    match heatmap::render_svg(&ctx.node.heat(), &homes, &opts) {
        Ok(svg) => Response::new(200, SVG, svg.into_bytes()),
        Err(e) => error(500, &e.to_string()),
    }
}

/// A decimal number without sign, spaces or leading `+`.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A 64-bit address in decimal or `0x` hex.
pub fn parse_address(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None => parse_decimal(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_decimal_and_hex() {
        assert_eq!(parse_address("4096"), Some(4096));
        assert_eq!(parse_address("0x1000"), Some(4096));
        assert_eq!(parse_address("0XfFfF"), Some(0xffff));
        assert_eq!(parse_address("0xffffffffffffffff"), Some(u64::MAX));
        for bad in [
            "",
            "0x",
            "-1",
            "+1",
            "1e3",
            "0x1g",
            "18446744073709551616",
            "0x10000000000000000",
            " 1",
        ] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn route_matching_takes_one_segment_per_parameter() {
        let r = ROUTES.iter().find(|r| r.path == "/nodes/{id}").unwrap();
        assert_eq!(r.matches("/nodes/3"), Some("3"));
        assert_eq!(r.matches("/nodes/"), None);
        assert_eq!(r.matches("/nodes/3/x"), None);
        assert_eq!(r.matches("/nodes"), None);
        let n = ROUTES.iter().find(|r| r.path == "/nodes").unwrap();
        assert_eq!(n.matches("/nodes"), Some(""));
        assert_eq!(n.matches("/nodes/"), None);
    }

    #[test]
    fn allow_lists_head_with_get() {
        let n = ROUTES.iter().find(|r| r.path == "/nodes").unwrap();
        assert_eq!(n.allow(), "GET, HEAD, POST");
        assert!(n.serves(Method::Head));
        assert!(!n.serves(Method::Delete));
        let c = ROUTES.iter().find(|r| r.path == "/cluster").unwrap();
        assert_eq!(c.allow(), "POST, DELETE");
        assert!(!c.serves(Method::Head));
    }

    #[test]
    fn error_bodies_are_json_with_status() {
        let r = error(409, "a \"quoted\" message");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "a \"quoted\" message");
        assert_eq!(v["status"], 409);
        assert_eq!(r.status, 409);
        assert_eq!(r.content_type, Some(JSON));
    }
}
