//! The one way this binary starts node processes (`demo`, `up`, `supervisor`): the same
//! binary with node arguments, its output relayed line by line with a `[node N]` prefix, and
//! tied to this process so that it never outlives it.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// What a node prints when its workload verified its results.
const VERIFIED: &str = ": OK: ";

/// A started node process.
#[derive(Debug)]
pub struct NodeChild {
    /// The node's id.
    pub id: u16,
    /// The process.
    pub child: Child,
    relays: Vec<JoinHandle<bool>>,
}

impl NodeChild {
    /// Waits for the output relays to end (the process closed its output) and says whether
    /// the node printed that its workload verified its results.
    pub fn verified(self) -> bool {
        let mut ok = false;
        for r in self.relays {
            ok |= r.join().unwrap_or(false);
        }
        ok
    }
}

/// Starts `exe` as node `id` with `args`. `inherit` is a listening socket the node gets
/// (its number goes in the arguments, `--listen-fd`); it stays open across exec only in
/// this child. If this process dies, the kernel sends the node SIGTERM, which stops it in
/// order.
pub fn spawn(
    exe: &Path,
    id: u16,
    args: &[std::ffi::OsString],
    inherit: Option<RawFd>,
) -> std::io::Result<NodeChild> {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (prctl, getppid, fcntl); it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died between fork and prctl: nobody would relay or stop us.
                return Err(std::io::Error::other(
                    "the parent exited while starting the node",
                ));
            }
            if let Some(fd) = inherit {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn()?;
    let mut relays = Vec::with_capacity(2);
    relays.extend(relay(id, child.stdout.take(), false));
    relays.extend(relay(id, child.stderr.take(), true));
    Ok(NodeChild { id, child, relays })
}

/// Relays `stream` line by line with the node's prefix; the thread's result says whether a
/// line reported verified results.
fn relay(
    id: u16,
    stream: Option<impl Read + Send + 'static>,
    err: bool,
) -> Option<JoinHandle<bool>> {
    let s = stream?;
    Some(std::thread::spawn(move || {
        let mut ok = false;
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            ok |= line.contains(VERIFIED);
            if err {
                eprintln!("[node {id}] {line}");
            } else {
                println!("[node {id}] {line}");
            }
        }
        ok
    }))
}
