//! The throughput floor (`floor-throughput-tN`): N faulting threads, each touching its own
//! fresh pages as fast as it can, and one hand-written handler thread that keeps many faults
//! in flight: it polls the userfaultfd and the socket, reads up to 64 fault events at once,
//! sends all their requests with one send, and installs each 4 KiB reply with `UFFDIO_COPY`
//! as it arrives (the home answers in order). [`Pipeline`] is its bookkeeping, without
//! syscalls.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use engine::clock::now_ns;
use engine::idle::IdlePolicy;
use engine::shard::trace::FaultTrace;
use uffd_poller::{Event, EventBuf, Uffd};

use super::proto::{Request, BATCH, PAGE, REQUEST};
use super::{give_up, install, registered, FloorError, FloorOpts};
use crate::fault_latency::idle_wait::{poll_fds, PollIdle};
use crate::fault_latency::scenario::Recorder;

/// Most requests in flight (sent or queued, not yet answered). A fault blocks its thread, so
/// N threads have at most N faults pending; duplicates (a fault delivered again) add a few.
const MAX_IN_FLIGHT: usize = 1024;
/// Pages one read of the socket may bring.
const RX_PAGES: usize = 16;

/// Measures `floor-throughput-t{threads}`: `o.samples` faults split evenly over the threads
/// (rounded up), every fault a sample; the rate divides by the wall time of all threads.
pub(super) fn measure(
    o: &FloorOpts<'_>,
    rec: &mut Recorder<'_>,
    sock: TcpStream,
    threads: usize,
) -> Result<Vec<FaultTrace>, FloorError> {
    if threads == 0 || threads > MAX_IN_FLIGHT / 2 {
        return Err(FloorError::Opts(format!(
            "{threads} faulting threads: use 1 to {}",
            MAX_IN_FLIGHT / 2
        )));
    }
    let per = o.samples.div_ceil(threads);
    let cpus: Vec<usize> = (0..threads)
        .map(|t| o.fault_cpu(t))
        .collect::<Result<_, _>>()?;
    let (uffd, map) = registered(per * threads)?;
    let stop = AtomicBool::new(false);
    let range = (map.as_ptr() as usize, map.len());
    let barrier = Barrier::new(threads + 1);
    let (results, wall, traces) = std::thread::scope(|s| -> Result<_, FloorError> {
        let trace = Vec::with_capacity(if o.trace { per * threads } else { 0 });
        let (uffd, stop, barrier) = (&uffd, &stop, &barrier);
        let idle = (o.idle, o.handler_cpu);
        let h = std::thread::Builder::new()
            .name("floor-handler".into())
            .spawn_scoped(s, move || handler(uffd, sock, idle, range, stop, trace))?;
        let workers: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(t, &cpu)| {
                let rec = rec.for_thread(per);
                s.spawn(move || fault_loop(rec, cpu, range.0, t * per, per, barrier, stop))
            })
            .collect();
        barrier.wait();
        let start = now_ns();
        let mut end = start;
        let mut results = Vec::with_capacity(threads);
        for w in workers {
            let (r, wrong, done) = w.join().expect("the floor's faulting threads do not panic");
            end = end.max(done);
            results.push((r, wrong));
        }
        stop.store(true, Ordering::Relaxed);
        let traces = h
            .join()
            .map_err(|_| FloorError::Handler("panicked".into()))?
            .map_err(FloorError::Handler)?;
        Ok((results, end - start, traces))
    })?;
    let mut wrong = 0;
    for (r, w) in results {
        wrong += w;
        rec.absorb(r);
    }
    rec.set_measured_ns(wall);
    // Writes the HDR log (one interval: the threads' samples are merged at the end).
    rec.finish(wall);
    if wrong != 0 {
        return Err(FloorError::WrongData(wrong));
    }
    Ok(traces)
}

/// One faulting thread: touches pages `first..first + n` of the mapping at `base` once
/// each; returns its samples, how many read wrong contents, and when it finished.
fn fault_loop<'r>(
    mut rec: Recorder<'r>,
    cpu: usize,
    base: usize,
    first: usize,
    n: usize,
    barrier: &Barrier,
    stop: &AtomicBool,
) -> (Recorder<'r>, u64, u64) {
    if let Err(e) = crate::pin_current_thread(cpu) {
        eprintln!("fault-latency: floor: {e}");
    }
    let mut wrong = 0;
    barrier.wait();
    for i in first..first + n {
        let word = (base + i * PAGE) as *const u64;
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        let t0 = now_ns();
        // SAFETY: the word lies in the registered mapping, which outlives the thread scope;
        // the read blocks in the kernel until the handler installs the page.
        let v = unsafe { std::ptr::read_volatile(word) };
        let t1 = now_ns();
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        rec.record(i as u64, t0, t1);
        if v != i as u64 {
            wrong += 1;
        }
        if stop.load(Ordering::Relaxed) {
            // The handler gave up (its error is reported by the caller).
            break;
        }
    }
    rec.finish(0);
    (rec, wrong, now_ns())
}

/// A request sent or queued, waiting for its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// Where the page goes.
    addr: usize,
    /// Its index in the mapping.
    page: u64,
    /// When its fault event was read.
    event_ns: u64,
    /// When the send that carried its request completed (0: not yet).
    sent_ns: u64,
}

/// The handler's state: requests in flight in order, the batch of requests being sent, and
/// the reply bytes not yet installed.
#[derive(Debug)]
struct Pipeline {
    in_flight: VecDeque<Pending>,
    /// Entries at the back of `in_flight` whose request is in `tx`.
    unsent: usize,
    tx: [u8; BATCH * REQUEST],
    tx_len: usize,
    tx_off: usize,
    rx: Vec<u8>,
    rx_len: usize,
    seq: u32,
}

impl Pipeline {
    fn new() -> Self {
        Self {
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
            unsent: 0,
            tx: [0; BATCH * REQUEST],
            tx_len: 0,
            tx_off: 0,
            rx: vec![0; RX_PAGES * PAGE],
            rx_len: 0,
            seq: 0,
        }
    }

    /// Whether a batch of fault events may be taken: the last batch is sent, and a whole
    /// batch fits in flight.
    fn can_take_batch(&self) -> bool {
        self.tx_len == 0 && self.in_flight.len() + BATCH <= MAX_IN_FLIGHT
    }

    /// Queues the request for `page` (at `addr`), whose fault was read at `now`. At most
    /// [`BATCH`] between sends, after [`Self::can_take_batch`]; `false` when that was not so.
    fn request(&mut self, page: u64, addr: usize, now: u64) -> bool {
        if self.tx_len + REQUEST > self.tx.len() || self.in_flight.len() == MAX_IN_FLIGHT {
            return false;
        }
        let r = Request {
            page,
            count: 1,
            seq: self.seq,
        };
        self.seq = self.seq.wrapping_add(1);
        self.tx[self.tx_len..self.tx_len + REQUEST].copy_from_slice(&r.encode());
        self.tx_len += REQUEST;
        self.in_flight.push_back(Pending {
            addr,
            page,
            event_ns: now,
            sent_ns: 0,
        });
        self.unsent += 1;
        true
    }

    /// Request bytes still to send.
    fn to_send(&self) -> &[u8] {
        &self.tx[self.tx_off..self.tx_len]
    }

    /// `n` more request bytes went out at `now`; once the batch is all out, its entries
    /// are stamped with `now`.
    fn sent(&mut self, n: usize, now: u64) {
        self.tx_off = (self.tx_off + n).min(self.tx_len);
        if self.tx_off == self.tx_len {
            let len = self.in_flight.len();
            for p in self.in_flight.range_mut(len - self.unsent..) {
                p.sent_ns = now;
            }
            self.unsent = 0;
            self.tx_len = 0;
            self.tx_off = 0;
        }
    }

    /// Whether replies are due.
    fn expecting(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Where the next reply bytes go.
    fn rx_space(&mut self) -> &mut [u8] {
        &mut self.rx[self.rx_len..]
    }

    /// `n` reply bytes arrived in [`Self::rx_space`]: `install` each completed page, in
    /// request order. Returns the pages installed; fails on a page nobody asked for.
    fn received(
        &mut self,
        n: usize,
        mut install: impl FnMut(&Pending, &[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        self.rx_len = (self.rx_len + n).min(self.rx.len());
        let whole = self.rx_len / PAGE;
        for page in self.rx[..whole * PAGE].chunks_exact(PAGE) {
            let p = self.in_flight.pop_front().ok_or_else(|| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    "the floor home sent a page nobody asked for",
                )
            })?;
            install(&p, page)?;
        }
        self.rx.copy_within(whole * PAGE..self.rx_len, 0);
        self.rx_len -= whole * PAGE;
        // Entries still unsent stay at the back: a reply never overtakes its request.
        self.unsent = self.unsent.min(self.in_flight.len());
        Ok(whole)
    }
}

/// The handler: one poll(2) per turn on the userfaultfd (while a batch may be taken) and the
/// socket; returns its per-fault steps (while `trace` has room).
fn handler(
    uffd: &Uffd,
    mut sock: TcpStream,
    (idle, cpu): (IdlePolicy, usize),
    (base, len): (usize, usize),
    stop: &AtomicBool,
    mut trace: Vec<FaultTrace>,
) -> Result<Vec<FaultTrace>, String> {
    crate::pin_current_thread(cpu).map_err(|e| e.to_string())?;
    let mut events = EventBuf::<BATCH>::new();
    let mut pipe = Pipeline::new();
    let mut idler = PollIdle::new(idle, now_ns());
    let ufd = uffd.as_raw_fd();
    let sfd = sock.as_raw_fd();
    let mut run = || -> io::Result<()> {
        loop {
            let take = pipe.can_take_batch();
            let mut fds = [
                libc::pollfd {
                    fd: if take { ufd } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd,
                    events: if pipe.expecting() { libc::POLLIN } else { 0 }
                        | if pipe.to_send().is_empty() {
                            0
                        } else {
                            libc::POLLOUT
                        },
                    revents: 0,
                },
            ];
            if poll_fds(&mut fds, idler.timeout_ms(now_ns()))? == 0 {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                continue;
            }
            let mut progress = false;
            let [u, s] = fds;
            if u.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other(
                    "poll(2) reported an error on the userfaultfd",
                ));
            }
            if u.revents & libc::POLLIN != 0 {
                let evs = uffd
                    .read_events(&mut events)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let now = now_ns();
                for ev in evs {
                    if let Event::PageFault(f) = *ev {
                        let addr = f.address & !(PAGE - 1);
                        if addr < base || addr >= base + len {
                            return Err(io::Error::other(format!(
                                "a fault at {addr:#x}, outside the floor's mapping"
                            )));
                        }
                        if !pipe.request(((addr - base) / PAGE) as u64, addr, now) {
                            return Err(io::Error::other("more fault events than one batch"));
                        }
                        progress = true;
                    }
                }
            }
            // Send at once (the socket is almost always writable), not on the next turn.
            if !pipe.to_send().is_empty() {
                match sock.write(pipe.to_send()) {
                    Ok(n) => {
                        pipe.sent(n, now_ns());
                        progress |= n > 0;
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => return Err(e),
                }
            }
            if s.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match sock.read(pipe.rx_space()) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "the floor home closed",
                        ))
                    }
                    Ok(n) => {
                        let received_ns = now_ns();
                        pipe.received(n, |p, page| {
                            install(uffd, p.addr, page)?;
                            if trace.len() < trace.capacity() {
                                trace.push(FaultTrace {
                                    page: p.page,
                                    event_ns: p.event_ns,
                                    sent_ns: p.sent_ns,
                                    received_ns,
                                    installed_ns: now_ns(),
                                });
                            }
                            Ok(())
                        })?;
                        progress = true;
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => return Err(e),
                }
            }
            if progress {
                idler.progress(now_ns());
            }
        }
    };
    let r = run().map_err(|e| e.to_string());
    if r.is_err() {
        give_up(uffd, (base, len), stop);
    }
    r.map(|()| trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        p[..8].copy_from_slice(&index.to_le_bytes());
        p
    }

    #[test]
    fn a_batch_goes_out_in_one_buffer_and_is_stamped_when_all_sent() {
        let mut p = Pipeline::new();
        assert!(p.can_take_batch() && !p.expecting());
        for i in 0..3 {
            assert!(p.request(10 + i, 0x1000 * (10 + i as usize), 5));
        }
        assert_eq!(p.to_send().len(), 3 * REQUEST);
        let mut first = [0u8; REQUEST];
        first.copy_from_slice(&p.to_send()[..REQUEST]);
        let r = Request::decode(&first).unwrap();
        assert_eq!((r.page, r.count, r.seq), (10, 1, 0));
        // A partial send: no new batch, no send stamp yet.
        p.sent(20, 7);
        assert!(!p.can_take_batch());
        assert_eq!(p.to_send().len(), 3 * REQUEST - 20);
        assert!(p.in_flight.iter().all(|x| x.sent_ns == 0));
        p.sent(3 * REQUEST - 20, 9);
        assert!(p.can_take_batch() && p.to_send().is_empty() && p.expecting());
        assert!(p
            .in_flight
            .iter()
            .all(|x| x.sent_ns == 9 && x.event_ns == 5));
        // A batch is at most BATCH requests.
        let mut q = Pipeline::new();
        assert!((0..BATCH as u64).all(|i| q.request(i, 0, 0)));
        assert!(!q.request(99, 0, 0));
    }

    #[test]
    fn replies_are_installed_in_request_order_as_whole_pages_arrive() {
        let mut p = Pipeline::new();
        for i in 0..3u64 {
            p.request(i + 100, 0x1000 * i as usize, 1);
        }
        p.sent(3 * REQUEST, 2);
        let mut stream = Vec::new();
        for i in 0..3 {
            stream.extend(page(i + 100));
        }
        let mut got = Vec::new();
        let mut installed = Vec::new();
        // Odd chunk sizes: half a page, then a page and a half, then the rest.
        for chunk in [PAGE / 2, PAGE + PAGE / 2, PAGE] {
            let (head, rest) = stream.split_at(chunk);
            p.rx_space()[..chunk].copy_from_slice(head);
            let n = p
                .received(chunk, |x, data| {
                    got.push((x.addr, x.page, data[..8].to_vec()));
                    Ok(())
                })
                .unwrap();
            installed.push(n);
            stream = rest.to_vec();
        }
        assert_eq!(installed, [0, 2, 1]);
        let want: Vec<(usize, u64, Vec<u8>)> = (0..3u64)
            .map(|i| {
                (
                    0x1000 * i as usize,
                    i + 100,
                    (i + 100).to_le_bytes().to_vec(),
                )
            })
            .collect();
        assert_eq!(got, want);
        assert!(!p.expecting());
        // A page nobody asked for is an error, not a panic.
        p.rx_space()[..PAGE].copy_from_slice(&page(7));
        let e = p.received(PAGE, |_, _| Ok(())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
    }
}
