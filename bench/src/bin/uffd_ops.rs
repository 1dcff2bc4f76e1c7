//! Micro-benchmark of the uffd-poller operations: the latency of each ioctl (COPY, COPY with
//! MODE_WP, ZEROPAGE, WRITEPROTECT set / clear, CONTINUE, MOVE, POISON, WAKE, an empty event
//! read) and of a handler-resolved fault (a thread touches a missing page; a handler thread
//! reads the event and COPYs), with the handler idling by busy non-blocking reads (`spin`) or
//! by poll(2) (`block`). Prints HDR percentiles, the CPU placement and the idle mode.
//!
//! Re-arming between samples (MADV_DONTNEED, refilling MOVE's source) is not timed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{current_affinity, header, online_cpus, pin_current_thread, Latency};
use clap::{Parser, ValueEnum};
use uffd_poller::{
    ContinueMode, CopyMode, Event, EventBuf, Features, FillOutcome, MoveMode, PoisonMode,
    RegisterMode, Uffd, UnprotectMode, ZeropageMode,
};

/// How the fault handler waits for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Idle {
    /// Busy loop of non-blocking reads.
    Spin,
    /// poll(2) on the uffd, then read.
    Block,
    /// Run the fault benchmark in both modes.
    Both,
}

#[derive(Debug, Parser)]
#[command(about = "Latency of userfaultfd operations and of a handler-resolved fault")]
struct Args {
    /// Samples per operation (the fault round trip takes half as many per idle mode).
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// Handler idle mode for the fault round trip.
    #[arg(long, value_enum, default_value_t = Idle::Both)]
    idle: Idle,
    /// CPU for the ioctl benchmarks and for the faulting thread (default: 0).
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// CPU for the handler thread (default: the last online CPU).
    #[arg(long)]
    handler_cpu: Option<usize>,
    /// Pages per re-armed region (each region is filled, then dropped with MADV_DONTNEED).
    #[arg(long, default_value_t = 512)]
    pages: usize,
    /// Hold /dev/cpu_dma_latency at 0 during the run (keeps idle CPUs out of deep C-states).
    #[arg(long)]
    pm_qos: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("uffd_ops: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(args: &Args) -> Result<(), BoxError> {
    if args.iters == 0 || args.pages == 0 {
        return Err("--iters and --pages must be at least 1".into());
    }
    let cpus = online_cpus();
    let handler_cpu = args.handler_cpu.unwrap_or(cpus.saturating_sub(1));
    let _qos = if args.pm_qos {
        Some(PmQos::hold()?)
    } else {
        None
    };
    let uffd = Arc::new(Uffd::open(
        Features::PAGEFAULT_FLAG_WP | Features::MINOR_SHMEM | Features::MOVE | Features::POISON,
    )?);

    println!("# uffd_ops: userfaultfd operation latency (uffd-poller)");
    println!("# kernel: {}", kernel_release());
    println!(
        "# online cpus: {cpus}; uffd opened via {:?}; features {}",
        uffd.opened_via(),
        uffd.features()
    );
    println!(
        "# pm_qos /dev/cpu_dma_latency: {}",
        if args.pm_qos { "held at 0" } else { "not held" }
    );

    pin_current_thread(args.cpu)?;
    println!();
    println!(
        "## ioctls: one thread pinned to cpu {} (affinity {}), {} samples each, {} pages per \
         re-armed region",
        args.cpu,
        current_affinity(),
        args.iters,
        args.pages
    );
    println!("{}", header());
    let ops = IoctlBench::new(&uffd, args.pages)?;
    for (name, lat) in ops.run_all(args.iters)? {
        println!("{}", lat.row(name));
    }

    let fault_iters = (args.iters / 2).max(1);
    let modes: &[Idle] = match args.idle {
        Idle::Both => &[Idle::Spin, Idle::Block],
        Idle::Spin => &[Idle::Spin],
        Idle::Block => &[Idle::Block],
    };
    println!();
    println!(
        "## fault round trip: toucher on cpu {}, handler on cpu {handler_cpu}, {fault_iters} \
         samples per idle mode (toucher's view: touch -> event -> COPY -> wake -> return)",
        args.cpu
    );
    if handler_cpu == args.cpu {
        println!("# note: toucher and handler share a CPU; spin numbers then measure scheduling");
    }
    println!("{}", header());
    for &mode in modes {
        let (toucher, service) =
            fault_round_trip(&uffd, mode, args.cpu, handler_cpu, args.pages, fault_iters)?;
        let name = match mode {
            Idle::Spin => "spin",
            _ => "block",
        };
        println!("{}", toucher.row(&format!("fault ({name})")));
        println!("{}", service.row(&format!("  handler read+copy ({name})")));
    }
    Ok(())
}

/// The regions the ioctl benchmarks work on.
struct IoctlBench<'a> {
    uffd: &'a Uffd,
    ps: usize,
    pages: usize,
    /// MISSING-registered anonymous memory.
    missing: Region,
    /// MISSING | WP-registered anonymous memory.
    wp: Region,
    /// Source of MOVE (unregistered anonymous memory).
    move_src: Region,
    /// MINOR-registered view of a memfd, and the memfd's backing view.
    minor: Region,
    /// Keeps the page cache behind `minor` populated.
    _backing: Region,
    _memfd: OwnedFd,
    data: Vec<u8>,
}

impl<'a> IoctlBench<'a> {
    fn new(uffd: &'a Uffd, pages: usize) -> Result<Self, BoxError> {
        let ps = uffd.page_size();
        let len = pages * ps;
        let missing = Region::anon(len)?;
        let wp = Region::anon(len)?;
        let move_src = Region::anon(len)?;
        let memfd = memfd(len)?;
        let minor = Region::shared(&memfd, len)?;
        let backing = Region::shared(&memfd, len)?;
        // SAFETY: the regions are this benchmark's own mappings, accessed only through raw
        // pointers.
        unsafe {
            uffd.register(missing.addr, len, RegisterMode::MISSING)?;
        }
        // SAFETY: as above.
        unsafe {
            uffd.register(wp.addr, len, RegisterMode::MISSING | RegisterMode::WP)?;
        }
        // SAFETY: as above.
        unsafe {
            uffd.register(minor.addr, len, RegisterMode::MINOR)?;
        }
        backing.fill(0x5a);
        Ok(Self {
            uffd,
            ps,
            pages,
            missing,
            wp,
            move_src,
            minor,
            _backing: backing,
            _memfd: memfd,
            data: vec![0xa5; ps],
        })
    }

    fn run_all(&self, iters: usize) -> Result<Vec<(&'static str, Latency)>, BoxError> {
        let u = self.uffd;
        let ps = self.ps;
        let mut out = Vec::new();

        out.push((
            "copy 4K",
            self.fill_loop(iters, &self.missing, |a| {
                u.copy(a, &self.data, CopyMode::empty())
            })?,
        ));
        out.push((
            "copy 4K (MODE_WP)",
            self.fill_loop(iters, &self.wp, |a| u.copy(a, &self.data, CopyMode::WP))?,
        ));
        out.push((
            "zeropage",
            self.fill_loop(iters, &self.missing, |a| {
                u.zeropage(a, ps, ZeropageMode::empty())
            })?,
        ));
        out.push((
            "poison",
            self.fill_loop(iters, &self.missing, |a| {
                u.poison(a, ps, PoisonMode::empty())
            })?,
        ));
        out.push((
            "continue (memfd)",
            self.fill_loop(iters, &self.minor, |a| {
                u.continue_minor(a, ps, ContinueMode::empty())
            })?,
        ));
        out.push(("move 4K", self.move_loop(iters)?));

        let (set, clear) = self.writeprotect_loop(iters)?;
        out.push(("writeprotect set", set));
        out.push(("writeprotect clear", clear));

        let mut wake = Latency::new();
        for _ in 0..iters {
            let t = Instant::now();
            u.wake(self.missing.addr, ps)?;
            wake.record_since(t);
        }
        out.push(("wake (no waiter)", wake));

        let mut buf = EventBuf::<64>::new();
        let mut read = Latency::new();
        for _ in 0..iters {
            let t = Instant::now();
            let n = u.read_events(&mut buf)?.len();
            read.record_since(t);
            if n != 0 {
                return Err(format!("unexpected events during the ioctl benchmarks: {n}").into());
            }
        }
        out.push(("read_events (empty)", read));
        Ok(out)
    }

    /// Times `op` on every page of `region`, dropping the region (untimed) when it is full.
    fn fill_loop(
        &self,
        iters: usize,
        region: &Region,
        op: impl Fn(usize) -> Result<FillOutcome, uffd_poller::OpError>,
    ) -> Result<Latency, BoxError> {
        let mut lat = Latency::new();
        region.dontneed()?;
        for i in 0..iters {
            let page = i % self.pages;
            if page == 0 && i > 0 {
                region.dontneed()?;
            }
            let addr = region.addr + page * self.ps;
            let t = Instant::now();
            let r = op(addr)?;
            lat.record_since(t);
            if r != FillOutcome::Filled(self.ps) {
                return Err(format!("unexpected outcome {r:?} at page {page}").into());
            }
        }
        region.dontneed()?;
        Ok(lat)
    }

    fn move_loop(&self, iters: usize) -> Result<Latency, BoxError> {
        let mut lat = Latency::new();
        let dst = &self.missing;
        dst.dontneed()?;
        for i in 0..iters {
            let page = i % self.pages;
            if page == 0 {
                dst.dontneed()?;
                // Populate the source again (its pages left with the previous round).
                self.move_src.fill(0x3c);
            }
            let off = page * self.ps;
            let t = Instant::now();
            // SAFETY: `move_src` is this benchmark's raw memory; `dst` is registered.
            let r = unsafe {
                self.uffd.move_pages(
                    dst.addr + off,
                    self.move_src.addr + off,
                    self.ps,
                    MoveMode::empty(),
                )
            }?;
            lat.record_since(t);
            if r != FillOutcome::Filled(self.ps) {
                return Err(format!("unexpected move outcome {r:?}").into());
            }
        }
        dst.dontneed()?;
        Ok(lat)
    }

    fn writeprotect_loop(&self, iters: usize) -> Result<(Latency, Latency), BoxError> {
        let (mut set, mut clear) = (Latency::new(), Latency::new());
        self.wp.dontneed()?;
        // Map every page first so that protection changes real PTEs.
        for p in 0..self.pages {
            self.uffd
                .copy(self.wp.addr + p * self.ps, &self.data, CopyMode::empty())?;
        }
        for i in 0..iters {
            let addr = self.wp.addr + (i % self.pages) * self.ps;
            let t = Instant::now();
            self.uffd.write_protect(addr, self.ps)?;
            set.record_since(t);
            let t = Instant::now();
            self.uffd
                .write_unprotect(addr, self.ps, UnprotectMode::empty())?;
            clear.record_since(t);
        }
        self.wp.dontneed()?;
        Ok((set, clear))
    }
}

/// Touch -> fault -> handler COPY -> wake round trips. Returns the toucher's latency and the
/// handler's time from reading a batch of events to having installed (and woken) all of it.
fn fault_round_trip(
    uffd: &Arc<Uffd>,
    idle: Idle,
    toucher_cpu: usize,
    handler_cpu: usize,
    pages: usize,
    iters: usize,
) -> Result<(Latency, Latency), BoxError> {
    let ps = uffd.page_size();
    let region = Region::anon(pages * ps)?;
    // SAFETY: the region is this benchmark's own mapping, accessed only through raw pointers.
    unsafe { uffd.register(region.addr, region.len, RegisterMode::MISSING)? };
    let stop = Arc::new(AtomicBool::new(false));
    // Warm-up touches (page tables, caches, frequency) are not recorded on either side.
    let warmup = (iters / 10).min(1000);

    let handler = {
        let uffd = Arc::clone(uffd);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<Latency, String> {
            pin_current_thread(handler_cpu).map_err(|e| e.to_string())?;
            let data = vec![0x77u8; ps];
            let mut buf = EventBuf::<64>::new();
            let mut service = Latency::new();
            let mut served = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if idle == Idle::Block
                    && !uffd
                        .wait_readable(Some(Duration::from_millis(50)))
                        .map_err(|e| e.to_string())?
                {
                    continue;
                }
                let t = Instant::now();
                let events = uffd.read_events(&mut buf).map_err(|e| e.to_string())?;
                for ev in events {
                    let Event::PageFault(f) = *ev else {
                        return Err(format!("unexpected event {ev:?}"));
                    };
                    let page = f.page(ps);
                    match uffd
                        .copy(page, &data, CopyMode::empty())
                        .map_err(|e| e.to_string())?
                    {
                        FillOutcome::Filled(_) => {}
                        FillOutcome::AlreadyMapped => {
                            uffd.wake(page, ps).map_err(|e| e.to_string())?
                        }
                        other => return Err(format!("unexpected copy outcome {other:?}")),
                    }
                }
                if !events.is_empty() {
                    if served >= warmup {
                        service.record_since(t);
                    }
                    served += events.len();
                }
            }
            Ok(service)
        })
    };

    pin_current_thread(toucher_cpu)?;
    let mut lat = Latency::new();
    let mut wrong = 0usize;
    for i in 0..warmup + iters {
        let page = i % pages;
        if page == 0 && i > 0 {
            region.dontneed()?;
        }
        let p = (region.addr + page * ps) as *const u8;
        let t = Instant::now();
        // SAFETY: `p` is inside the registered region, which lives until the end of this
        // function; the handler installs the page.
        let v = unsafe { std::ptr::read_volatile(p) };
        if i >= warmup {
            lat.record_since(t);
        }
        wrong += usize::from(v != 0x77);
    }
    stop.store(true, Ordering::Relaxed);
    let service = handler
        .join()
        .map_err(|_| "handler thread panicked")?
        .map_err(|e| format!("handler: {e}"))?;
    uffd.unregister(region.addr, region.len)?;
    if wrong != 0 {
        return Err(format!("{wrong} touches read wrong data").into());
    }
    Ok((lat, service))
}

/// An anonymous or shared mapping owned by the benchmark; unmapped on drop.
struct Region {
    addr: usize,
    len: usize,
}

impl Region {
    fn anon(len: usize) -> std::io::Result<Self> {
        Self::map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    fn shared(fd: &OwnedFd, len: usize) -> std::io::Result<Self> {
        Self::map(len, libc::MAP_SHARED, fd.as_raw_fd())
    }

    fn map(len: usize, flags: libc::c_int, fd: libc::c_int) -> std::io::Result<Self> {
        // SAFETY: a new mapping at a kernel-chosen address; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            addr: p as usize,
            len,
        })
    }

    /// Drops every page (the next access faults again).
    fn dontneed(&self) -> std::io::Result<()> {
        // SAFETY: the whole mapping is this benchmark's raw memory.
        let rc = unsafe { libc::madvise(self.addr as *mut _, self.len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes `v` to every byte (only for unregistered mappings).
    fn fill(&self, v: u8) {
        // SAFETY: the whole mapping is this benchmark's raw memory and is not registered.
        unsafe { std::ptr::write_bytes(self.addr as *mut u8, v, self.len) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`.
        unsafe { libc::munmap(self.addr as *mut _, self.len) };
    }
}

fn memfd(len: usize) -> std::io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"uffd_ops".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::other("memfd too large"))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Holds the PM QoS CPU latency request at 0 while alive.
struct PmQos(#[allow(dead_code)] std::fs::File);

impl PmQos {
    fn hold() -> Result<Self, BoxError> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .map_err(|e| format!("--pm-qos: cannot open /dev/cpu_dma_latency: {e}"))?;
        f.write_all(&0i32.to_ne_bytes())?;
        Ok(Self(f))
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
