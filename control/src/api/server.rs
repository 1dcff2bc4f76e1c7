//! The REST API's threads and sockets: the acceptor that admits connections up to the limit,
//! the workers that read one request per connection (within the size and time limits), answer
//! it through the routes and close.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http::{self, HeadLimits, Method, Response};
use super::routes::{self, Context, Request};
use super::Limits;

/// How often idle threads look at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// Bytes read off a socket at a time.
const CHUNK: usize = 4096;

/// After an error answer, how long and how much of the rest of the request is read and
/// dropped, so that closing does not reset the connection before the client has the answer.
const LINGER_TIME: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 256 * 1024;

/// What the server's threads share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) ctx: Context,
    pub(super) limits: Limits,
    pub(super) head: HeadLimits,
    pub(super) stop: AtomicBool,
    /// Connections admitted and not yet answered.
    pub(super) active: AtomicUsize,
}

/// Lowers the calling thread to nice 19. On Linux `setpriority(PRIO_PROCESS, 0, ..)` applies
/// to the calling thread only, so the node's other threads keep their priority.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
}

/// Waits up to `timeout` for the listener to become readable.
fn wait_readable(l: &TcpListener, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid, initialised pollfd that outlives the call, and the count of 1
    // matches the single entry; the fd is the listener's, open for the whole call.
    let _ = unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Accepts connections until the stop flag is set, handing them to the workers.
pub(super) fn accept_loop(l: &TcpListener, shared: &Shared, tx: SyncSender<TcpStream>) {
    lower_priority();
    while !shared.stop.load(Ordering::SeqCst) {
        wait_readable(l, TICK);
        loop {
            match l.accept() {
                Ok((s, _)) => admit(s, shared, &tx),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // Out of descriptors or a connection reset before it was taken: give the
                    // system a moment rather than spinning on the same error.
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
            }
        }
    }
}

fn admit(s: TcpStream, shared: &Shared, tx: &SyncSender<TcpStream>) {
    if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.limits.max_connections {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        refuse(
            s,
            "too many connections to the API at once; retry in a moment",
        );
        return;
    }
    match tx.try_send(s) {
        Ok(()) => {}
        Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            refuse(
                s,
                "the API is shutting down or overloaded; retry in a moment",
            );
        }
    }
}

/// Answers 503 from the acceptor without waiting on the client.
fn refuse(mut s: TcpStream, why: &str) {
    if s.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; CHUNK];
        let _ = s.read(&mut sink);
        let _ = routes::error(503, why).write_to(&mut s, false);
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Decrements the count of connections in flight however the worker leaves a connection.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves connections until the acceptor is gone or the stop flag is set.
pub(super) fn worker_loop(rx: &Mutex<Receiver<TcpStream>>, shared: &Shared) {
    lower_priority();
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv_timeout(TICK),
            // A worker panicked while holding the lock (it never does: handlers run under
            // catch_unwind); the queue is still sound.
            Err(poisoned) => poisoned.into_inner().recv_timeout(TICK),
        };
        match next {
            Ok(s) => {
                let _admitted = Admitted(&shared.active);
                if shared.stop.load(Ordering::SeqCst) {
                    refuse(s, "the API is shutting down");
                } else {
                    serve_connection(s, shared);
                }
            }
            Err(RecvTimeoutError::Timeout) if !shared.stop.load(Ordering::SeqCst) => {}
            Err(_) => return,
        }
    }
}

/// Why reading a request stopped.
enum ReadFail {
    /// Answer this and close.
    Answer(Response),
    /// The client is gone or the server is stopping: close without an answer.
    Gone,
}

/// Reads some bytes before `deadline`, checking the stop flag while waiting.
fn read_some(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<usize, ReadFail> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFail::Answer(routes::error(
                408,
                "the request did not arrive in time; send the whole request at once",
            )));
        }
        if stop.load(Ordering::SeqCst) {
            return Err(ReadFail::Gone);
        }
        if s.set_read_timeout(Some(left.min(TICK))).is_err() {
            return Err(ReadFail::Gone);
        }
        match s.read(buf) {
            Ok(0) => return Err(ReadFail::Gone),
            Ok(n) => return Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadFail::Gone),
        }
    }
}

/// Reads one request: its head and its body.
fn read_request(
    s: &mut TcpStream,
    shared: &Shared,
) -> Result<(http::RequestHead, Vec<u8>), ReadFail> {
    let deadline = Instant::now() + shared.limits.request_timeout;
    let mut buf = Vec::with_capacity(CHUNK);
    let mut chunk = [0u8; CHUNK];
    let head = loop {
        match http::parse_head(&buf, &shared.head) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Err(ReadFail::Answer(routes::error(e.status(), &e.to_string()))),
        }
        let n = read_some(s, &mut chunk, deadline, &shared.stop)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head.len);
    // Bytes past the body (a pipelined request) are not served: every answer closes.
    body.truncate(head.content_length);
    if head.expect_continue && body.len() < head.content_length {
        s.write_all(http::CONTINUE).map_err(|_| ReadFail::Gone)?;
    }
    while body.len() < head.content_length {
        let want = (head.content_length - body.len()).min(CHUNK);
        let n = read_some(s, &mut chunk[..want], deadline, &shared.stop)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// Reads and drops what the client still sends, briefly, then closes.
fn linger(s: &mut TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER_TIME;
    let mut sink = [0u8; CHUNK];
    let mut total = 0;
    while total < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

fn serve_connection(mut s: TcpStream, shared: &Shared) {
    if s.set_nonblocking(false).is_err()
        || s.set_write_timeout(Some(shared.limits.write_timeout))
            .is_err()
    {
        return;
    }
    let _ = s.set_nodelay(true);
    let (head, body) = match read_request(&mut s, shared) {
        Ok(r) => r,
        Err(ReadFail::Gone) => return,
        Err(ReadFail::Answer(r)) => {
            let _ = r.write_to(&mut s, false);
            linger(&mut s);
            return;
        }
    };
    let req = Request {
        method: head.method,
        path: &head.path,
        query: head.query.as_deref(),
        body: &body,
    };
    let answer = catch_unwind(AssertUnwindSafe(|| routes::handle(&shared.ctx, &req)))
        .unwrap_or_else(|_| {
            routes::error(
                500,
                "the node failed while answering (a panic in the handler); see its log",
            )
        });
    let _ = answer.write_to(&mut s, head.method == Method::Head);
    let _ = s.shutdown(Shutdown::Write);
}
