//! The floor rows: the least each measured path can cost here, written by hand and measured
//! in the same run with the same placement. Faulting threads touch fresh pages of their own
//! userfaultfd-registered mapping; a handler thread (on node 0's shard CPU, idling like the
//! shard) reads the events, asks a home process (on the helpers' CPU, blocking in read(2)
//! like the helper nodes) for the pages over TCP, and installs the replies with
//! `UFFDIO_COPY` (`MODE_WP`, as a read-only replica is installed). No protocol, no framing,
//! no transport abstraction: every difference between a scenario and its floor is the cost
//! of those.
//!
//! - `floor` ([`serial`]): one fault at a time: uffd read → 16-byte request → 4 KiB reply →
//!   `UFFDIO_COPY`. Bounds the latency rows (p50).
//! - `floor-prefetch-D` ([`serial`]): one thread reads pages in order; a fault requests the
//!   aligned D-page block, installed with one `UFFDIO_COPY` of D × 4 KiB. Bounds
//!   `prefetch-D` (pages/s).
//! - `floor-throughput-tN` ([`pipelined`]): N faulting threads, one handler that reads up to
//!   64 events at once, sends all their requests with one send and installs each reply as it
//!   arrives, many in flight. Bounds `throughput-tN` (faults/s).
//!
//! The home ([`home`]) and the wire format ([`proto`]) are shared by all three.

mod home;
mod pipelined;
mod proto;
mod serial;

use std::io::{self, BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use engine::idle::IdlePolicy;
use engine::shard::trace::FaultTrace;
use thiserror::Error;
use uffd_poller::{CopyMode, Features, FillOutcome, RegisterMode, Uffd};
use wire::region::PageRegion;

pub use home::home_main;
use proto::PAGE;

use super::netns::NetNs;
use super::scenario::Recorder;

/// Why a floor could not be measured.
#[derive(Debug, Error)]
pub enum FloorError {
    /// The home process could not be started or talked to.
    #[error("floor home process: {0}")]
    Home(String),
    /// Socket I/O.
    #[error("floor socket: {0}")]
    Io(#[from] io::Error),
    /// userfaultfd set-up.
    #[error("floor userfaultfd: {0}")]
    Uffd(String),
    /// The handler thread failed.
    #[error("floor handler: {0}")]
    Handler(String),
    /// Pages read back other contents than the home sent.
    #[error("{0} floor pages held the wrong contents")]
    WrongData(u64),
    /// Options no floor can run with.
    #[error("floor options: {0}")]
    Opts(String),
}

/// Which floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorKind {
    /// `floor`: one fault at a time, one page per request.
    Latency,
    /// `floor-throughput-tN`: `threads` faulting threads, one pipelined handler.
    Throughput {
        /// Faulting threads.
        threads: usize,
    },
    /// `floor-prefetch-D`: one thread in page order, `depth`-page blocks.
    Prefetch {
        /// Pages per request (and per `UFFDIO_COPY`).
        depth: u32,
    },
}

/// How to run a floor.
#[derive(Debug)]
pub struct FloorOpts<'a> {
    /// Which floor.
    pub kind: FloorKind,
    /// `Latency`: measured samples. `Throughput`: faults in all, split evenly over the
    /// threads (rounded up). `Prefetch`: pages read (every touch is a sample).
    pub samples: usize,
    /// Unrecorded samples first (`Latency` only).
    pub warmup: usize,
    /// CPUs of the faulting threads (spread round-robin).
    pub fault_cpus: &'a [usize],
    /// CPU of the handler thread.
    pub handler_cpu: usize,
    /// CPU of the home process.
    pub home_cpu: usize,
    /// How the handler idles.
    pub idle: IdlePolicy,
    /// Namespaces (node 0's for this side, node 1's for the home).
    pub netns: Option<&'a NetNs>,
    /// Record each fault's steps, as node 0's shard does for `--breakdown`.
    pub trace: bool,
}

impl FloorOpts<'_> {
    fn fault_cpu(&self, thread: usize) -> Result<usize, FloorError> {
        match self.fault_cpus.len() {
            0 => Err(FloorError::Opts("no faulting CPU given".into())),
            n => Ok(self.fault_cpus[thread % n]),
        }
    }
}

fn spawn_home(o: &FloorOpts<'_>) -> Result<(Child, String), FloorError> {
    let exe = std::env::current_exe()?;
    let (mut cmd, host) = match o.netns {
        Some(n) => {
            let p = n.exec_prefix(1);
            let mut c = Command::new(&p[0]);
            c.args(&p[1..]).arg(&exe);
            (c, n.addr(1))
        }
        None => (Command::new(&exe), "127.0.0.1".to_string()),
    };
    cmd.args([
        "floor-home",
        "--bind",
        &format!("{host}:0"),
        "--cpu",
        &o.home_cpu.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let port = read_port(&mut child);
    match port {
        Ok(port) => Ok((child, format!("{host}:{port}"))),
        Err(e) => {
            // The home never said where it listens: end it. Its own error is the one to
            // report; a kill of a child that already exited fails harmlessly, and the wait
            // only reaps it.
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn read_port(child: &mut Child) -> Result<u16, FloorError> {
    let out = child
        .stdout
        .take()
        .ok_or_else(|| FloorError::Home("its stdout is not a pipe".into()))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    line.trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| FloorError::Home(format!("expected its port, got {line:?}")))
}

fn connect(addr: &str, netns: Option<&NetNs>) -> Result<TcpStream, FloorError> {
    let s = match netns {
        None => TcpStream::connect(addr)?,
        Some(n) => std::thread::scope(|sc| {
            sc.spawn(|| -> Result<TcpStream, FloorError> {
                n.enter(0).map_err(|e| FloorError::Home(e.to_string()))?;
                Ok(TcpStream::connect(addr)?)
            })
            .join()
            .expect("the connect thread does not panic")
        })?,
    };
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Measures the floor `o.kind` into `rec`; returns the handler's per-fault steps when
/// `o.trace`.
pub fn run(o: &FloorOpts<'_>, rec: &mut Recorder<'_>) -> Result<Vec<FaultTrace>, FloorError> {
    let (mut home, addr) = spawn_home(o)?;
    let result = connect(&addr, o.netns).and_then(|sock| match o.kind {
        FloorKind::Latency => serial::measure(o, rec, sock, 1),
        FloorKind::Prefetch { depth } => {
            if !(1..=proto::MAX_COUNT).contains(&depth) {
                return Err(FloorError::Opts(format!(
                    "prefetch depth {depth}: use 1 to {} pages",
                    proto::MAX_COUNT
                )));
            }
            serial::measure(o, rec, sock, depth as usize)
        }
        FloorKind::Throughput { threads } => pipelined::measure(o, rec, sock, threads),
    });
    let _ = home.kill();
    let _ = home.wait();
    result
}

/// A fresh mapping of `pages` pages registered (MISSING and WP) with a new userfaultfd.
fn registered(pages: usize) -> Result<(Uffd, PageRegion), FloorError> {
    let uffd =
        Uffd::open(Features::PAGEFAULT_FLAG_WP).map_err(|e| FloorError::Uffd(e.to_string()))?;
    let len = pages
        .checked_mul(PAGE)
        .ok_or_else(|| FloorError::Opts(format!("{pages} pages do not fit the address space")))?;
    let map = PageRegion::reserve(len)?;
    // SAFETY: the mapping is the caller's own and is only touched through raw pointers by
    // its faulting threads; its handler fills the missing pages.
    unsafe {
        uffd.register(
            map.as_ptr() as usize,
            map.len(),
            RegisterMode::MISSING | RegisterMode::WP,
        )
    }
    .map_err(|e| FloorError::Uffd(e.to_string()))?;
    Ok((uffd, map))
}

/// `UFFDIO_COPY` attempts that may meet `EAGAIN` (the address space changing) in a row.
const COPY_RETRIES: u32 = 1000;

/// Installs `src` (whole pages) at `dst` with `UFFDIO_COPY` (`MODE_WP`), finishing what the
/// kernel leaves undone: the rest of a partial copy, a wake for a page someone else mapped.
fn install(uffd: &Uffd, dst: usize, src: &[u8]) -> io::Result<()> {
    let mut off = 0;
    let mut retries = 0;
    while off < src.len() {
        match uffd.copy(dst + off, &src[off..], CopyMode::WP) {
            Ok(FillOutcome::Filled(_)) => return Ok(()),
            Ok(FillOutcome::Partial(n)) if n > 0 && n % PAGE == 0 => off += n,
            Ok(FillOutcome::AlreadyMapped) => {
                uffd.wake(dst + off, PAGE)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                off += PAGE;
            }
            Ok(FillOutcome::Retry) if retries < COPY_RETRIES => retries += 1,
            Ok(other) => {
                return Err(io::Error::other(format!(
                    "UFFDIO_COPY of {} bytes at {:#x}: {other:?}",
                    src.len() - off,
                    dst + off
                )))
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
    Ok(())
}

/// The handler failed: tell the faulting threads to stop, and unregister the mapping so that
/// the blocked ones wake (their pages then fill with zeroes, which they count as wrong)
/// instead of waiting forever.
fn give_up(uffd: &Uffd, (base, len): (usize, usize), stop: &AtomicBool) {
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = uffd.unregister(base, len) {
        eprintln!("fault-latency: floor: cannot unregister the mapping: {e}");
    }
}
