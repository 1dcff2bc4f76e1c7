//! Boots a Linux kernel on one node (anonymous memory, no cluster) with its serial console on
//! stdout, and reports how the run ended:
//!
//! `cargo run -p vmm --example boot_linux -- KERNEL [INITRD] [SECONDS] [VCPUS] [CMDLINE]`
//!
//! On a PVM host the kernel stops in early boot (docs/vmm.md, "Linux on PVM hosts"); on
//! hardware KVM (or in the lab, scripts/lab) it boots to its init and, if the init powers off,
//! the run ends there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::launch::{run_linux, LinuxArgs};
use vmm::linux::Protocol;
use vmm::{Console, GuestMemory};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kernel = args
        .first()
        .ok_or("usage: boot_linux KERNEL [INITRD|-] [SECONDS] [VCPUS] [CMDLINE]")?;
    let initrd = args.get(1).filter(|s| *s != "-").map(Into::into);
    let secs: u64 = args.get(2).map_or(Ok(60), |s| s.parse())?;
    let vcpus: u32 = args.get(3).map_or(Ok(1), |s| s.parse())?;
    let cmdline = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "console=ttyS0 panic=-1".into());
    let ram = 256usize << 20;
    let mem = GuestMemory::anonymous(ram, 0)?;
    let cpus = (0..vcpus)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let topology = acpi::parse_topology(&acpi::SpecArgs {
        layout: &format!("0:mem=0-256M:cpus={cpus}"),
        latency_ns: Some("400"),
        bandwidth_mbps: Some("20000"),
        ..Default::default()
    })?;
    let acpi = acpi::tables(&topology).image(acpi::Placement::BIOS_AREA)?;
    let linux = LinuxArgs {
        kernel: kernel.into(),
        initrd,
        cmdline,
        protocol: Protocol::Pvh,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        s.store(true, Ordering::Release);
    });
    let start = Instant::now();
    let console = Console::new(true);
    let run = run_linux(
        &mem,
        &linux,
        Some(&acpi),
        vcpus,
        &[],
        &stop,
        console.clone(),
    )?;
    println!(
        "\nended after {:?}: {:?}, guest status {:?}",
        start.elapsed(),
        run.end,
        run.guest_status
    );
    for r in &run.reports {
        println!(
            "vcpu {}: {:?} exits {} last rip {:#x} {:?}",
            r.vcpu, r.outcome, r.exits, r.last_rip, r.counters
        );
    }
    println!("console bytes: {}", console.snapshot().len());
    Ok(())
}
