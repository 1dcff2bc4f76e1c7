//! `fault-latency`: the benchmark users tune p99 with. Per-fault service time of ssi-dp as the
//! faulting thread sees it, for every scenario (local first touch, remote read, forwarded read,
//! writes that invalidate k sharers, upgrades, ping-pong, multi-thread throughput) next to a
//! hand-written floor measured in the same run; tables, JSON lines, HDR interval logs, a
//! percentile plot and a per-step breakdown. `fault-latency --help` lists the options;
//! docs/benchmarks.md shows a full run and how to read it.

use bench::fault_latency::cli::{Cli, Command};
use bench::fault_latency::{floor, hlogs, role, run};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Node(a)) => role::run(a),
        Some(Command::FloorHome(a)) => floor::home_main(a),
        Some(Command::Show { files }) => print(hlogs::show(&files)),
        Some(Command::Compare { a, b }) => print(hlogs::compare(&a, &b)),
        Some(Command::Plot {
            out,
            subtitle,
            files,
        }) => print(hlogs::plot(&files, &subtitle, &out)),
        None => match run::run(&cli.run) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("fault-latency: error: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}

fn print(r: Result<String, hlogs::HlogError>) -> i32 {
    match r {
        Ok(s) => {
            print!("{s}");
            0
        }
        Err(e) => {
            eprintln!("fault-latency: error: {e}");
            1
        }
    }
}
