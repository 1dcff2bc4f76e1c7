//! `ssi-dp leave`: asks a running cluster, through any member's REST API, to make a node leave
//! in order (`DELETE /nodes/{id}`), and waits for the answer. A node that homes memory first
//! hands its pages to another home (docs/operations.md, "Leaving, stopping"), which may take
//! minutes for a large range.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::exit;

/// How long to wait for the answer: a home's leave may take up to its drain limit (600 s)
/// and the final step.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(720);
/// How long to wait for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Arguments of `ssi-dp leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The node that leaves.
    pub id: u16,
    /// A member's REST API, HOST:PORT (any member; it coordinates the leave).
    #[arg(long)]
    pub api: String,
    /// The API token (its first line), as for the API's other changing requests.
    #[arg(long)]
    pub token_file: PathBuf,
}

/// Why the request could not be made or was refused.
#[derive(Debug, thiserror::Error)]
enum LeaveError {
    #[error("reading the token file {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("talking to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} did not answer in HTTP")]
    NotHttp(String),
    #[error("node {id} did not leave: {status} {message}")]
    Refused {
        id: u16,
        status: String,
        message: String,
    },
}

/// Runs `ssi-dp leave`; returns the exit code.
pub fn run(a: LeaveArgs) -> i32 {
    match leave(&a) {
        Ok(()) => {
            println!("node {} left the cluster", a.id);
            exit::OK
        }
        Err(e) => {
            eprintln!("ssi-dp leave: {e}");
            match e {
                LeaveError::Token(..) | LeaveError::EmptyToken(_) | LeaveError::NoAddress(_) => {
                    exit::USAGE
                }
                _ => exit::FAILED,
            }
        }
    }
}

fn leave(a: &LeaveArgs) -> Result<(), LeaveError> {
    let token = std::fs::read_to_string(&a.token_file)
        .map_err(|e| LeaveError::Token(a.token_file.clone(), e))?;
    let token = token.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(LeaveError::EmptyToken(a.token_file.clone()));
    }
    let io = |e| LeaveError::Io(a.api.clone(), e);
    let addr = a
        .api
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| LeaveError::NoAddress(a.api.clone()))?;
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(io)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(io)?;
    write!(
        s,
        "DELETE /nodes/{} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        a.id, a.api
    )
    .map_err(io)?;
    let mut out = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut out).map_err(io)?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| LeaveError::NotHttp(a.api.clone()))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status == "204" {
        return Ok(());
    }
    // Error bodies are `{"error": "..."}` (docs/api.md).
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    Err(LeaveError::Refused {
        id: a.id,
        status: status.to_string(),
        message,
    })
}
