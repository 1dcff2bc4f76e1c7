//! The REST API's threads and sockets. One reader thread accepts connections up to the limit
//! and reads every request at once, non-blocking, within the size and time limits: a client
//! that sends slowly (or not at all) holds a buffer and a slot, never a thread. A complete
//! request — or the error answer for a bad or late one — goes to the workers, which run the
//! route, write the answer and close.

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
    pub(super) auth: super::ApiAuth,
    pub(super) stop: AtomicBool,
    /// Connections admitted and not yet answered.
    pub(super) active: AtomicUsize,
}

/// Lowers the calling thread to nice 19. On Linux `setpriority(PRIO_PROCESS, 0, ..)` applies
/// to the calling thread only, so the node's other threads keep their priority.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        // Raising the nice value is always allowed; if it fails anyway the API still works,
        // at normal priority, and says so once per thread.
        tracing::warn!(
            "the REST API thread stays at normal priority: setpriority failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What the reader hands to a worker.
#[derive(Debug)]
pub(super) enum Job {
    /// A complete request: serve it.
    Serve(TcpStream, http::RequestHead, Vec<u8>),
    /// A bad or late request: write this answer, linger, close.
    Answer(TcpStream, Response),
}

/// A connection whose request is still arriving.
struct Reading {
    stream: TcpStream,
    buf: Vec<u8>,
    head: Option<http::RequestHead>,
    deadline: Instant,
}

/// How one read turn left a connection.
enum Read1 {
    /// The request is not complete yet.
    More,
    /// The request is complete: head and body.
    Serve(http::RequestHead, Vec<u8>),
    /// The request is bad: answer this.
    Answer(Response),
    /// The client went away.
    Gone,
}

impl Reading {
    /// Reads what the socket has (never blocks) and says whether the request is complete.
    fn read(&mut self, head_limits: &HeadLimits) -> Read1 {
        let mut chunk = [0u8; CHUNK];
        loop {
            let want = match &self.head {
                None => CHUNK,
                Some(h) => (h.len + h.content_length)
                    .saturating_sub(self.buf.len())
                    .min(CHUNK),
            };
            if want == 0 {
                return self.complete();
            }
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => return Read1::Gone,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Read1::More,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Read1::Gone,
            }
            if self.head.is_none() {
                match http::parse_head(&self.buf, head_limits) {
                    Ok(Some(h)) => {
                        let incomplete = self.buf.len() < h.len + h.content_length;
                        if h.expect_continue && incomplete {
                            // Tiny, into an empty send buffer: it does not block.
                            if self.stream.write_all(http::CONTINUE).is_err() {
                                return Read1::Gone;
                            }
                        }
                        self.head = Some(h);
                    }
                    Ok(None) => {}
                    Err(e) => return Read1::Answer(routes::error(e.status(), &e.to_string())),
                }
            }
        }
    }

    fn complete(&mut self) -> Read1 {
        let Some(head) = self.head.take() else {
            return Read1::More;
        };
        let mut body = self.buf.split_off(head.len);
        // Bytes past the body (a pipelined request) are not served: every answer closes.
        body.truncate(head.content_length);
        Read1::Serve(head, body)
    }

    /// The job for the workers once this connection leaves the reader.
    fn job(self, r: Read1) -> Option<Job> {
        match r {
            Read1::Serve(head, body) => Some(Job::Serve(self.stream, head, body)),
            Read1::Answer(resp) => Some(Job::Answer(self.stream, resp)),
            Read1::More | Read1::Gone => None,
        }
    }
}

/// Accepts connections and reads their requests until the stop flag is set, handing complete
/// ones to the workers.
pub(super) fn reader_loop(l: &TcpListener, shared: &Shared, tx: SyncSender<Job>) {
    lower_priority();
    let max = shared.limits.max_connections;
    let mut reading: Vec<Reading> = Vec::with_capacity(max);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(max + 1);
    while !shared.stop.load(Ordering::SeqCst) {
        fds.clear();
        fds.push(pollin(l.as_raw_fd()));
        fds.extend(reading.iter().map(|r| pollin(r.stream.as_raw_fd())));
        let ms = libc::c_int::try_from(TICK.as_millis()).unwrap_or(100);
        // SAFETY: `fds` holds `fds.len()` initialised pollfds on sockets this thread owns,
        // and outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            // Out of kernel memory (the only failure possible here): nothing is ready; wait
            // rather than spin, and let the deadlines below still run.
            std::thread::sleep(TICK);
        }
        for i in (0..reading.len()).rev() {
            if fds.get(i + 1).is_some_and(|p| p.revents != 0) {
                let r = reading[i].read(&shared.head);
                if !matches!(r, Read1::More) {
                    let conn = reading.swap_remove(i);
                    leave(conn.job(r), shared, &tx);
                }
            }
        }
        if fds[0].revents != 0 {
            accept_all(l, shared, &mut reading);
        }
        let now = Instant::now();
        for i in (0..reading.len()).rev() {
            if now >= reading[i].deadline {
                let conn = reading.swap_remove(i);
                let late = routes::error(
                    408,
                    "the request did not arrive in time; send the whole request at once",
                );
                leave(conn.job(Read1::Answer(late)), shared, &tx);
            }
        }
    }
    shared.active.fetch_sub(reading.len(), Ordering::SeqCst);
}

fn pollin(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn accept_all(l: &TcpListener, shared: &Shared, reading: &mut Vec<Reading>) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.limits.max_connections {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    refuse(
                        s,
                        "too many connections to the API at once; retry in a moment",
                    );
                    continue;
                }
                if s.set_nonblocking(true).is_err() {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                // Latency only: the request is served either way.
                let _ = s.set_nodelay(true);
                reading.push(Reading {
                    stream: s,
                    buf: Vec::new(),
                    head: None,
                    deadline: Instant::now() + shared.limits.request_timeout,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                // Out of descriptors or a connection reset before it was taken: try again
                // next turn rather than spinning on the same error.
                return;
            }
        }
    }
}

/// A connection leaves the reader: its job is queued for the workers (the queue holds
/// `max_connections`, so it is never full while the count of admitted connections is right),
/// or, without one (the client went away), its slot is freed.
fn leave(job: Option<Job>, shared: &Shared, tx: &SyncSender<Job>) {
    let Some(job) = job else {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = tx.try_send(job) {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        let s = match job {
            Job::Serve(s, ..) | Job::Answer(s, _) => s,
        };
        refuse(
            s,
            "the API is shutting down or overloaded; retry in a moment",
        );
    }
}

/// Answers 503 from the reader without waiting on the client.
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

/// Serves jobs until the reader is gone or the stop flag is set.
pub(super) fn worker_loop(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    lower_priority();
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv_timeout(TICK),
            // A worker panicked while holding the lock (it never does: handlers run under
            // catch_unwind); the queue is still sound.
            Err(poisoned) => poisoned.into_inner().recv_timeout(TICK),
        };
        match next {
            Ok(job) => {
                let _admitted = Admitted(&shared.active);
                match job {
                    Job::Serve(s, ..) | Job::Answer(s, _) if shared.stop.load(Ordering::SeqCst) => {
                        refuse(s, "the API is shutting down")
                    }
                    Job::Serve(s, head, body) => serve(s, &head, &body, shared),
                    Job::Answer(s, r) => answer_and_close(s, &r, shared),
                }
            }
            Err(RecvTimeoutError::Timeout) if !shared.stop.load(Ordering::SeqCst) => {}
            Err(_) => return,
        }
    }
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

/// Prepares a connection for the worker's blocking writes.
fn blocking(s: &TcpStream, shared: &Shared) -> bool {
    s.set_nonblocking(false).is_ok()
        && s.set_write_timeout(Some(shared.limits.write_timeout))
            .is_ok()
}

fn answer_and_close(mut s: TcpStream, r: &Response, shared: &Shared) {
    if !blocking(&s, shared) {
        return;
    }
    // A client that does not take its error answer loses nothing but the answer.
    let _ = r.write_to(&mut s, false);
    linger(&mut s);
}

fn serve(mut s: TcpStream, head: &http::RequestHead, body: &[u8], shared: &Shared) {
    if !blocking(&s, shared) {
        return;
    }
    let probe = matches!(head.method, Method::Get | Method::Head) && routes::is_probe(&head.path);
    if let Some(refusal) = (!probe)
        .then(|| shared.auth.refuse(head.method, head.bearer.as_deref()))
        .flatten()
    {
        // A client that does not take its refusal loses nothing but the answer.
        let _ = refusal.write_to(&mut s, head.method == Method::Head);
        linger(&mut s);
        return;
    }
    let req = Request {
        method: head.method,
        path: &head.path,
        query: head.query.as_deref(),
        body,
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
