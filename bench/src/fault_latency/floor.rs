//! The floor row: the least a remote read fault can cost here, measured in the same run with
//! the same placement. A faulting thread touches fresh pages of its own userfaultfd-registered
//! mapping; a handler thread (on node 0's shard CPU, idling like the shard) reads the event,
//! sends a 16-byte request over TCP to a home process (on the helpers' CPU, blocking in
//! read(2) like the helper nodes), receives the 4 KiB reply and installs it with
//! `UFFDIO_COPY` (`MODE_WP`, as a read-only replica is installed). No protocol, no framing,
//! no transport abstraction: every difference between a scenario and this row is the cost of
//! those.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::clock::now_ns;
use engine::idle::IdlePolicy;
use engine::shard::trace::FaultTrace;
use thiserror::Error;
use uffd_poller::{CopyMode, Event, EventBuf, Features, FillOutcome, RegisterMode, Uffd};
use wire::region::PageRegion;

use super::cli::FloorHomeArgs;
use super::idle_wait::until_ready;
use super::netns::NetNs;
use super::scenario::Recorder;

const PAGE: usize = 4096;
/// Bytes of a floor request: the page index and a sequence number.
const REQUEST: usize = 16;

/// Why the floor could not be measured.
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
}

/// How to run the floor.
#[derive(Debug)]
pub struct FloorOpts<'a> {
    /// Measured samples.
    pub samples: usize,
    /// Unrecorded samples first.
    pub warmup: usize,
    /// CPU of the faulting thread.
    pub fault_cpu: usize,
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
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| FloorError::Home(format!("expected its port, got {line:?}")))?;
    Ok((child, format!("{host}:{port}")))
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

/// Moves all of `buf` through `op` (a non-blocking read or write), waiting as `idle` says.
fn transfer(
    fd: i32,
    events: i16,
    idle: IdlePolicy,
    stop: &AtomicBool,
    buf_len: usize,
    mut op: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<bool> {
    let mut done = 0;
    while done < buf_len {
        let r = until_ready(
            fd,
            events,
            idle,
            || stop.load(Ordering::Relaxed),
            || match op(done) {
                Ok(0) => Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the floor home closed",
                )),
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
                Err(e) => Err(e),
            },
        )?;
        match r {
            Some(n) => done += n,
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Measures the floor into `rec`; returns the handler's per-fault steps when `o.trace`.
pub fn run(o: &FloorOpts<'_>, rec: &mut Recorder<'_>) -> Result<Vec<FaultTrace>, FloorError> {
    let (mut home, addr) = spawn_home(o)?;
    let result = measure(o, rec, &addr);
    let _ = home.kill();
    let _ = home.wait();
    result
}

fn measure(
    o: &FloorOpts<'_>,
    rec: &mut Recorder<'_>,
    addr: &str,
) -> Result<Vec<FaultTrace>, FloorError> {
    let sock = connect(addr, o.netns)?;
    let uffd = Arc::new(
        Uffd::open(Features::PAGEFAULT_FLAG_WP).map_err(|e| FloorError::Uffd(e.to_string()))?,
    );
    let pages = o.samples + o.warmup;
    let map = PageRegion::reserve(pages * PAGE)?;
    // SAFETY: the mapping is this function's own and is only touched through raw pointers by
    // the faulting thread below; the handler fills its missing pages.
    unsafe {
        uffd.register(
            map.as_ptr() as usize,
            map.len(),
            RegisterMode::MISSING | RegisterMode::WP,
        )
    }
    .map_err(|e| FloorError::Uffd(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler = {
        let (uffd, stop) = (uffd.clone(), stop.clone());
        let (idle, cpu, base, len) = (o.idle, o.handler_cpu, map.as_ptr() as usize, map.len());
        let trace = Vec::with_capacity(if o.trace { pages } else { 0 });
        std::thread::Builder::new()
            .name("floor-handler".into())
            .spawn(move || handler(&uffd, sock, idle, cpu, (base, len), &stop, trace))?
    };
    let wrong = std::thread::scope(|s| {
        s.spawn(|| fault_loop(o, rec, &map, &stop))
            .join()
            .expect("the floor's faulting thread does not panic")
    });
    stop.store(true, Ordering::Relaxed);
    let trace = handler
        .join()
        .map_err(|_| FloorError::Handler("panicked".into()))?
        .map_err(FloorError::Handler)?;
    if wrong != 0 {
        return Err(FloorError::WrongData(wrong));
    }
    Ok(trace)
}

/// The faulting thread: touches every page once; returns how many read wrong contents.
fn fault_loop(
    o: &FloorOpts<'_>,
    rec: &mut Recorder<'_>,
    map: &PageRegion,
    stop: &AtomicBool,
) -> u64 {
    if let Err(e) = crate::pin_current_thread(o.fault_cpu) {
        eprintln!("fault-latency: floor: {e}");
    }
    let pages = o.samples + o.warmup;
    let mut wrong = 0u64;
    let start = now_ns();
    for i in 0..pages {
        let word = ((map.as_ptr() as usize) + i * PAGE) as *const u64;
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        let t0 = now_ns();
        // SAFETY: the word lies in the registered mapping (alive until the end of this
        // function); the read blocks in the kernel until the handler installs the page.
        let v = unsafe { std::ptr::read_volatile(word) };
        let t1 = now_ns();
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        if v != i as u64 {
            wrong += 1;
        }
        if i == o.warmup {
            rec.restart_clock();
        }
        if i >= o.warmup {
            rec.record(i as u64, t0, t1);
        }
        if stop.load(Ordering::Relaxed) {
            // The handler gave up (its error is reported by the caller).
            break;
        }
    }
    rec.finish(now_ns().saturating_sub(start));
    wrong
}

fn handler(
    uffd: &Uffd,
    mut sock: TcpStream,
    idle: IdlePolicy,
    cpu: usize,
    (base, len): (usize, usize),
    stop: &AtomicBool,
    mut trace: Vec<FaultTrace>,
) -> Result<Vec<FaultTrace>, String> {
    crate::pin_current_thread(cpu).map_err(|e| e.to_string())?;
    let mut events = EventBuf::<64>::new();
    let mut faults = [0usize; 64];
    let mut reply = vec![0u8; PAGE];
    let ufd = uffd.as_raw_fd();
    let sfd = sock.as_raw_fd();
    let mut seq = 0u64;
    let mut run = || -> io::Result<()> {
        loop {
            let n = until_ready(
                ufd,
                libc::POLLIN,
                idle,
                || stop.load(Ordering::Relaxed),
                || {
                    let evs = uffd
                        .read_events(&mut events)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    let mut n = 0;
                    for ev in evs {
                        if let Event::PageFault(f) = *ev {
                            faults[n] = f.address & !(PAGE - 1);
                            n += 1;
                        }
                    }
                    Ok((n > 0).then_some(n))
                },
            )?;
            let Some(n) = n else { return Ok(()) };
            let event_ns = now_ns();
            for &addr in &faults[..n] {
                let mut req = [0u8; REQUEST];
                req[..8].copy_from_slice(&(((addr - base) / PAGE) as u64).to_le_bytes());
                req[8..].copy_from_slice(&seq.to_le_bytes());
                seq += 1;
                if !transfer(sfd, libc::POLLOUT, idle, stop, REQUEST, |d| {
                    sock.write(&req[d..])
                })? {
                    return Ok(());
                }
                let sent_ns = now_ns();
                if !transfer(sfd, libc::POLLIN, idle, stop, PAGE, |d| {
                    sock.read(&mut reply[d..])
                })? {
                    return Ok(());
                }
                let received_ns = now_ns();
                match uffd.copy(addr, &reply, CopyMode::WP) {
                    Ok(FillOutcome::Filled(_)) => {}
                    Ok(FillOutcome::AlreadyMapped) => uffd
                        .wake(addr, PAGE)
                        .map_err(|e| io::Error::other(e.to_string()))?,
                    Ok(other) => return Err(io::Error::other(format!("UFFDIO_COPY: {other:?}"))),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
                if trace.len() < trace.capacity() {
                    trace.push(FaultTrace {
                        page: ((addr - base) / PAGE) as u64,
                        event_ns,
                        sent_ns,
                        received_ns,
                        installed_ns: now_ns(),
                    });
                }
            }
        }
    };
    let r = run().map_err(|e| e.to_string());
    if r.is_err() {
        stop.store(true, Ordering::Relaxed);
        // Unregistering wakes the faulting thread (its page then fills with zeroes, which
        // it counts as wrong) instead of leaving it blocked forever.
        let _ = uffd.unregister(base, len);
    }
    r.map(|()| trace)
}

/// The floor's home process: answers each 16-byte request with 4 KiB whose first word is the
/// requested page index, from a blocking socket. Returns the exit code.
pub fn home_main(a: FloorHomeArgs) -> i32 {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = crate::pin_current_thread(a.cpu) {
        eprintln!("fault-latency floor-home: {e}");
    }
    let run = || -> io::Result<()> {
        let l = TcpListener::bind(&a.bind)?;
        println!("port {}", l.local_addr()?.port());
        io::stdout().flush()?;
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut req = [0u8; REQUEST];
        let mut page = vec![0x5au8; PAGE];
        loop {
            match s.read_exact(&mut req) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            page[..8].copy_from_slice(&req[..8]);
            s.write_all(&page)?;
        }
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fault-latency floor-home: {e}");
            1
        }
    }
}
