//! ssi-guest-check: the guest side of the SMP checks. It runs as a Linux guest's init work,
//! checks the machine it sees (online CPUs, NUMA nodes) against the command line, runs work
//! on every CPU at once whose results it checks exactly (see `work`), and ends with one
//! verdict line; a watchdog turns a hang into a FAIL naming the phase. Optionally it then
//! reports the status to the VMM on I/O port 0x513 and powers the machine off.
//!
//! It uses std only, so it also builds without cargo:
//! `rustc --edition 2021 -O -C target-feature=+crt-static guest-check/src/main.rs -o X`
//! gives a static x86_64 binary for an initramfs.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Prints one progress line (never panicking: a broken console must not hide the verdict).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "ssi-guest-check: {}", format_args!($($arg)*));
    }};
}

mod args;
mod cpulist;
mod measure;
mod spin;
mod sys;
mod topology;
mod work;

use work::Phase;

/// The phase running, for the watchdog.
static PHASE: AtomicUsize = AtomicUsize::new(Phase::Start as usize);
/// Set by whoever prints the verdict, so that there is exactly one.
static VERDICT_GIVEN: AtomicBool = AtomicBool::new(false);

/// How the run ends, once the verdict is known.
#[derive(Clone, Copy, Debug)]
struct Ending {
    port: Option<sys::StatusPort>,
    poweroff: bool,
}

impl Ending {
    /// Prints the verdict, reports it and ends the process (or the machine). Only the first
    /// caller does; a later one (main after the watchdog fired, say) waits for the end.
    fn finish(self, verdict: Result<String, String>) -> ! {
        if VERDICT_GIVEN.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        let status = u32::from(verdict.is_err());
        if self.port.is_some() {
            say!("status {status} goes to port {:#x}", sys::STATUS_PORT);
        }
        if self.poweroff {
            say!("powering off");
        }
        let line = match verdict {
            Ok(facts) => format!("SSI-GUEST-CHECK PASS {facts}"),
            Err(reason) => format!("SSI-GUEST-CHECK FAIL {}", reason.replace('\n', " ")),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        drop(out);
        if let Some(port) = self.port {
            port.write(status);
        }
        if self.poweroff {
            let e = sys::power_off();
            say!("power-off failed: reboot(RB_POWER_OFF): {e}");
        }
        std::process::exit(status as i32)
    }
}

fn main() {
    let opts = match args::parse(std::env::args().skip(1)) {
        Ok(args::Command::Run(opts)) => opts,
        Ok(args::Command::Help) => {
            println!("{}", args::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("ssi-guest-check: {e}\n{}", args::USAGE);
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut ending = Ending {
        port: None,
        poweroff: opts.poweroff,
    };
    // Before any thread starts, so that they all inherit the permission.
    if opts.status_port {
        match sys::StatusPort::open() {
            Ok(port) => ending.port = Some(port),
            Err(e) => {
                let (from, num) = sys::PORT_RANGE;
                ending.finish(Err(format!(
                    "cannot reach the status port: ioperm({from:#x}, {num}) failed: {e}"
                )))
            }
        }
    }
    std::panic::set_hook(Box::new(move |info| {
        ending.finish(Err(format!("panic: {info}")))
    }));
    let timeout = Duration::from_secs(opts.timeout_s);
    let watchdog = std::thread::Builder::new()
        .name("watchdog".to_string())
        .spawn(move || {
            std::thread::sleep(timeout);
            let phase = Phase::load(&PHASE);
            ending.finish(Err(format!(
                "timeout: phase {} still running after {} s",
                phase.name(),
                timeout.as_secs()
            )))
        });
    if let Err(e) = watchdog {
        ending.finish(Err(format!("cannot start the watchdog thread: {e}")));
    }

    Phase::Topology.store(&PHASE);
    let verdict = topology::check(&opts).and_then(|seen| {
        let done = work::run(&seen.cpus, opts.rounds, &PHASE)?;
        if opts.measure > 0 {
            Phase::Measure.store(&PHASE);
            measure::run(&seen.cpus, opts.measure)?;
        }
        Ok(format!(
            "cpus={} nodes={} counters={} records={} rounds={} elapsed_ms={}",
            seen.cpus.len(),
            seen.nodes,
            done.counters,
            done.records,
            opts.rounds,
            started.elapsed().as_millis()
        ))
    });
    Phase::Done.store(&PHASE);
    ending.finish(verdict)
}
