//! Boots a Linux kernel on our VMM with its serial console on stdout and reports how far it
//! got: `cargo run -p vmm --example boot_linux -- /boot/vmlinuz-... [seconds] [pvh|bzimage]`.
//! With `HIDE_CX16=1` the guest's CPUID hides CMPXCHG16B, which PVM's CPL0 emulator lacks
//! (see docs/vmm.md, "Linux on PVM hosts").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::linux::{self, LinuxConfig, Protocol};
use vmm::{Console, GuestMemory, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: boot_linux KERNEL [SECONDS] [pvh|bzimage]")?;
    let secs: u64 = args.next().map_or(Ok(60), |s| s.parse())?;
    let protocol = match args.next().as_deref() {
        Some("bzimage") => Protocol::BzImage64,
        _ => Protocol::Pvh,
    };
    let kernel = std::fs::read(&path)?;
    let ram = 256usize << 20;
    let mem = GuestMemory::anonymous(ram, 0)?;
    let topology = control::acpi::parse_topology(&control::acpi::SpecArgs {
        layout: "0:mem=0-256M:cpus=0",
        latency_ns: Some("400"),
        bandwidth_mbps: Some("20000"),
        ..Default::default()
    })?;
    let acpi = control::acpi::tables(&topology).image(control::acpi::Placement::BIOS_AREA)?;
    let t0 = Instant::now();
    let cfg = LinuxConfig {
        kernel: &kernel,
        initrd: None,
        cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 noapic nolapic nosmp panic=-1",
        acpi: Some(&acpi),
        protocol,
    };
    let boot = linux::load(&mem, &cfg)?;
    println!(
        "loaded {:?} in {:?}: {boot:x?}",
        boot.protocol,
        t0.elapsed()
    );
    let mut vm = Vm::new(&mem, VmConfig::single_node(1))?;
    println!("irqchip: {}", vm.try_create_irqchip());
    if std::env::var_os("HIDE_CX16").is_some() {
        vm.edit_cpuid(|e| {
            if e.function == 1 {
                e.ecx &= !(1 << 13);
            }
        })?;
    }
    let console = Console::new(true);
    vm.attach_serial(console.clone())?;
    vm.load(&boot.boot, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let c = console.clone();
    let start = Instant::now();
    std::thread::spawn(move || {
        let mut seen = false;
        while start.elapsed() < Duration::from_secs(secs) {
            if !seen && c.contains(b"Linux version") {
                seen = true;
                eprintln!("\n[banner after {:?}]", start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s.store(true, Ordering::Release);
    });
    let reports = vm.run_vcpus(&[], &stop);
    for r in &reports {
        println!(
            "\nvcpu {}: {:?} exits {} unhandled pio {} last rip {:#x} after {:?}",
            r.vcpu, r.outcome, r.exits, r.unhandled_pio, r.last_rip, r.elapsed
        );
    }
    println!("console bytes: {}", console.snapshot().len());
    Ok(())
}
