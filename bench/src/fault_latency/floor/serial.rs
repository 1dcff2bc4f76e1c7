//! The floors that serve one fault at a time: `floor` (a fault requests its own page) and
//! `floor-prefetch-D` (a fault requests the aligned D-page block, installed with one
//! `UFFDIO_COPY` of D × 4 KiB, so the next D − 1 touches find their pages). One faulting
//! thread touches fresh pages in order; the handler reads the event, sends the request,
//! reads the whole reply and installs it, waiting as node 0's idle policy says.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use engine::clock::now_ns;
use engine::idle::IdlePolicy;
use engine::shard::trace::FaultTrace;
use uffd_poller::{Event, EventBuf, Uffd};
use wire::region::PageRegion;

use super::proto::{block_start, Request, BATCH, PAGE, REQUEST};
use super::{give_up, install, registered, FloorError, FloorOpts};
use crate::fault_latency::idle_wait::until_ready;
use crate::fault_latency::report::PrefetchCounts;
use crate::fault_latency::scenario::Recorder;

/// Measures a serial floor with `block` pages per request (1: `floor`) into `rec`; with
/// `block > 1` every touch is a sample and `rec.prefetch` counts the blocks fetched.
pub(super) fn measure(
    o: &FloorOpts<'_>,
    rec: &mut Recorder<'_>,
    sock: TcpStream,
    block: usize,
) -> Result<Vec<FaultTrace>, FloorError> {
    let touched = o.samples + o.warmup;
    let cpu = o.fault_cpu(0)?;
    // Whole blocks, so that the last fault's block lies inside the mapping.
    let (uffd, map) = registered(touched.div_ceil(block) * block)?;
    let stop = AtomicBool::new(false);
    let range = (map.as_ptr() as usize, map.len());
    let (wrong, handled) = std::thread::scope(|s| -> Result<_, FloorError> {
        let trace = Vec::with_capacity(if o.trace { touched } else { 0 });
        let (uffd, stop) = (&uffd, &stop);
        let idle = (o.idle, o.handler_cpu);
        let h = std::thread::Builder::new()
            .name("floor-handler".into())
            .spawn_scoped(s, move || {
                handler(uffd, sock, idle, range, block, stop, trace)
            })?;
        let wrong = s
            .spawn(|| fault_loop(o, rec, cpu, &map, stop))
            .join()
            .expect("the floor's faulting thread does not panic");
        stop.store(true, Ordering::Relaxed);
        let handled = h
            .join()
            .map_err(|_| FloorError::Handler("panicked".into()))?
            .map_err(FloorError::Handler)?;
        Ok((wrong, handled))
    })?;
    if wrong != 0 {
        return Err(FloorError::WrongData(wrong));
    }
    let (traces, faults) = handled;
    if block > 1 {
        rec.prefetch = Some(PrefetchCounts {
            faults,
            requests: faults,
        });
    }
    Ok(traces)
}

/// The faulting thread: touches every page once, in order; returns how many read wrong
/// contents. The first `o.warmup` touches are not recorded.
fn fault_loop(
    o: &FloorOpts<'_>,
    rec: &mut Recorder<'_>,
    cpu: usize,
    map: &PageRegion,
    stop: &AtomicBool,
) -> u64 {
    if let Err(e) = crate::pin_current_thread(cpu) {
        eprintln!("fault-latency: floor: {e}");
    }
    let pages = o.samples + o.warmup;
    let mut wrong = 0u64;
    let start = now_ns();
    for i in 0..pages {
        let word = ((map.as_ptr() as usize) + i * PAGE) as *const u64;
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        let t0 = now_ns();
        // SAFETY: the word lies in the registered mapping (alive until the caller returns);
        // the read blocks in the kernel until the handler installs the page.
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

/// Moves all of `buf_len` bytes through `op` (a non-blocking read or write), waiting as
/// `idle` says; `false` when stopped first.
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

/// The handler: serves each fault on its own (request, whole reply, install). Returns its
/// per-fault steps (when `trace` has room) and how many faults it served.
fn handler(
    uffd: &Uffd,
    mut sock: TcpStream,
    (idle, cpu): (IdlePolicy, usize),
    (base, len): (usize, usize),
    block: usize,
    stop: &AtomicBool,
    mut trace: Vec<FaultTrace>,
) -> Result<(Vec<FaultTrace>, u64), String> {
    crate::pin_current_thread(cpu).map_err(|e| e.to_string())?;
    let mut events = EventBuf::<BATCH>::new();
    let mut faults = [0usize; BATCH];
    let mut reply = vec![0u8; block * PAGE];
    let ufd = uffd.as_raw_fd();
    let sfd = sock.as_raw_fd();
    let mut seq = 0u32;
    let mut served = 0u64;
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
                let page = ((addr - base) / PAGE) as u64;
                let first = block_start(page, block as u64);
                let req = Request {
                    page: first,
                    count: block as u32,
                    seq,
                }
                .encode();
                seq = seq.wrapping_add(1);
                if !transfer(sfd, libc::POLLOUT, idle, stop, REQUEST, |d| {
                    sock.write(&req[d..])
                })? {
                    return Ok(());
                }
                let sent_ns = now_ns();
                if !transfer(sfd, libc::POLLIN, idle, stop, reply.len(), |d| {
                    sock.read(&mut reply[d..])
                })? {
                    return Ok(());
                }
                let received_ns = now_ns();
                install(uffd, base + first as usize * PAGE, &reply)?;
                served += 1;
                if trace.len() < trace.capacity() {
                    trace.push(FaultTrace {
                        page,
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
        give_up(uffd, (base, len), stop);
    }
    r.map(|()| (trace, served))
}
