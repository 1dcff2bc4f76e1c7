//! Runs one test guest on anonymous memory in this process and prints the verdict:
//! `cargo run -p vmm --example run_guest -- atomics 2`.

use std::time::Duration;

use vmm::{GuestMemory, GuestParams, TestGuest, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "atomics".into());
    let vcpus: u32 = args.next().map_or(Ok(2), |s| s.parse())?;
    let guest = TestGuest::from_name(&name).ok_or("unknown guest")?;
    let mem = GuestMemory::anonymous(64 << 20, 0)?;
    let params = GuestParams::new(vcpus);
    let plan = guest.setup(&mem, &params)?;
    let mut vm = Vm::new(&mem, VmConfig::single_node(vcpus))?;
    vm.load(&plan.boot, Some(plan.doorbell_gpa))?;
    let (stop, _cancel) = vmm::stop_after(Duration::from_secs(60));
    let reports = vm.run_vcpus(&[], &stop);
    for r in &reports {
        println!(
            "vcpu {}: {:?} exits {} results {} elapsed {:?}",
            r.vcpu,
            r.outcome,
            r.exits,
            r.results.len(),
            r.elapsed
        );
    }
    let verdict = guest.check(&params, &reports)?;
    match vm.tsc_khz().and_then(|khz| verdict.latency_ns(khz)) {
        Some(ns) => println!(
            "first-touch latency ns: p50 {} p99 {} p99.9 {} max {} (n={})",
            ns.value_at_quantile(0.5),
            ns.value_at_quantile(0.99),
            ns.value_at_quantile(0.999),
            ns.max(),
            ns.len()
        ),
        None => println!("{verdict:?}"),
    }
    Ok(())
}
