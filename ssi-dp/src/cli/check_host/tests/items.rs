//! Each item `ok`, `change` and `cannot check` on crafted trees and kernel answers.

use super::super::cpus;
use super::super::host::{Memlock, Probes, UffdProblem, UringProblem};
use super::super::item::Status;
use super::super::memory;
use super::{expect, kernel, Tree};

#[test]
fn cores() {
    let t = Tree::tuned();
    let p = kernel();
    expect("cores", &t, &p, Status::Ok, "CPUs 0-1 are left");
    t.file("/sys/devices/system/cpu/online", "0-2");
    expect("cores", &t, &p, Status::Change, "CPUs 3 are not online");
    t.file("/sys/devices/system/cpu/online", "2-3");
    expect("cores", &t, &p, Status::Change, "every online CPU");
    t.file("/sys/devices/system/cpu/online", "0-3");
    let barred = Probes {
        allowed_cpus: Ok(vec![0, 1, 2]),
        ..kernel()
    };
    expect(
        "cores",
        &t,
        &barred,
        Status::Change,
        "may not run on CPUs 3",
    );
    let unknown = Probes {
        allowed_cpus: Err("sched_getaffinity failed: EINVAL".into()),
        ..kernel()
    };
    expect("cores", &t, &unknown, Status::CannotCheck, "EINVAL");
    t.remove("/sys/devices/system/cpu/online");
    expect("cores", &t, &p, Status::CannotCheck, "cannot read");
}

#[test]
fn pm_qos() {
    let t = Tree::tuned();
    expect("pm_qos", &t, &kernel(), Status::Ok, "opens for writing");
    t.remove("/dev/cpu_dma_latency");
    expect("pm_qos", &t, &kernel(), Status::CannotCheck, "No such file");
    // As root in a test, only the kernel can refuse: give the checker its answer.
    let denied = std::io::Error::from_raw_os_error(libc::EACCES);
    let i = cpus::pm_qos_result("/dev/cpu_dma_latency".into(), Err(denied));
    assert_eq!(i.status, Status::Change);
    assert!(i.fix.unwrap().contains("run the node as root"));
}

#[test]
fn isolation_items() {
    let t = Tree::tuned();
    let p = kernel();
    t.file("/sys/devices/system/cpu/isolated", "1")
        .file("/sys/devices/system/cpu/nohz_full", "")
        .file("/proc/cmdline", "ro rcu_nocbs=3 isolcpus=1");
    let i = expect(
        "isolcpus",
        &t,
        &p,
        Status::Change,
        "CPUs 2-3 are not isolated",
    );
    assert_eq!(
        i.boot_param.as_deref(),
        Some("isolcpus=managed_irq,domain,1-3")
    );
    assert!(i.detail.contains("has isolcpus=1"), "{}", i.detail);
    let i = expect(
        "nohz_full",
        &t,
        &p,
        Status::Change,
        "take the periodic tick",
    );
    assert_eq!(i.boot_param.as_deref(), Some("nohz_full=2-3"));
    let i = expect("rcu_nocbs", &t, &p, Status::Change, "CPUs 2 run their own");
    assert_eq!(i.boot_param.as_deref(), Some("rcu_nocbs=2-3"));
    // nohz_full offloads RCU callbacks too; `all` is every CPU.
    t.file("/sys/devices/system/cpu/nohz_full", "2-3");
    expect("rcu_nocbs", &t, &p, Status::Ok, "nohz_full: 2-3");
    t.file("/sys/devices/system/cpu/nohz_full", "")
        .file("/proc/cmdline", "rcu_nocbs=all");
    expect("rcu_nocbs", &t, &p, Status::Ok, "rcu_nocbs: 0-3");
    t.file("/proc/cmdline", "rcu_nocbs=2-x");
    expect("rcu_nocbs", &t, &p, Status::CannotCheck, "cannot parse");
    t.remove("/proc/cmdline")
        .remove("/sys/devices/system/cpu/isolated")
        .remove("/sys/devices/system/cpu/nohz_full");
    expect("rcu_nocbs", &t, &p, Status::CannotCheck, "/proc/cmdline");
    expect("isolcpus", &t, &p, Status::CannotCheck, "isolated");
    expect(
        "nohz_full",
        &t,
        &p,
        Status::CannotCheck,
        "CONFIG_NO_HZ_FULL",
    );
}

#[test]
fn kernel_parameters_are_read_like_the_kernel() {
    let line = "a isolcpus=1 x=y isolcpus=nohz,domain,2-5 rcu_nocbs -- isolcpus=9";
    assert_eq!(
        cpus::cmdline_param(line, "isolcpus"),
        Some("nohz,domain,2-5")
    );
    assert_eq!(cpus::cmdline_param(line, "rcu_nocbs"), Some(""));
    assert_eq!(cpus::cmdline_param(line, "nohz_full"), None);
    assert_eq!(
        cpus::param_cpus("nohz,domain,2-5", &[]),
        Ok(vec![2, 3, 4, 5])
    );
    assert_eq!(cpus::param_cpus("managed_irq,1,3", &[]), Ok(vec![1, 3]));
    assert_eq!(cpus::param_cpus("all", &[0, 1]), Ok(vec![0, 1]));
    assert_eq!(cpus::param_cpus("", &[0, 1]), Ok(vec![]));
}

#[test]
fn irq_affinity() {
    let t = Tree::tuned();
    let p = kernel();
    expect("irq_affinity", &t, &p, Status::Ok, "none of the 2 IRQs");
    t.file("/proc/irq/12/smp_affinity_list", "0-3")
        .file("/proc/irq/13/smp_affinity_list", "3")
        .file("/proc/irq/default_smp_affinity", "f");
    let i = expect("irq_affinity", &t, &p, Status::Change, "2 of 4 IRQs");
    assert!(i.detail.contains("default_smp_affinity f"), "{}", i.detail);
    let writes: Vec<(&str, &str, &str)> = i
        .writes
        .iter()
        .map(|w| (w.path.as_str(), w.previous.as_str(), w.value.as_str()))
        .collect();
    assert_eq!(
        writes,
        [
            ("/proc/irq/12/smp_affinity_list", "0-3", "0-1"),
            ("/proc/irq/13/smp_affinity_list", "3", "0-1"),
            ("/proc/irq/default_smp_affinity", "f", "3"),
        ]
    );
    t.file("/proc/irq/13/smp_affinity_list", "zz");
    expect("irq_affinity", &t, &p, Status::Change, "1 unreadable");
    // Without the online CPUs, an IRQ only on the cores has nowhere known to go.
    t.file("/proc/irq/13/smp_affinity_list", "3")
        .remove("/sys/devices/system/cpu/online");
    let i = expect(
        "irq_affinity",
        &t,
        &p,
        Status::Change,
        "echo <the other CPUs>",
    );
    assert_eq!(i.writes.len(), 2, "IRQ 12 keeps 0-1, the default keeps 3");
    t.file("/sys/devices/system/cpu/online", "0-3")
        .file("/proc/irq/13/smp_affinity_list", "zz");
    t.remove("/proc/irq/12")
        .remove("/proc/irq/default_smp_affinity");
    expect(
        "irq_affinity",
        &t,
        &p,
        Status::CannotCheck,
        "could not read every",
    );
    t.remove("/proc/irq");
    expect("irq_affinity", &t, &p, Status::CannotCheck, "cannot list");
}

#[test]
fn irqbalance() {
    let t = Tree::tuned();
    let p = kernel();
    expect("irqbalance", &t, &p, Status::Ok, "not running");
    t.file("/proc/77/comm", "irqbalance");
    // Isolated and nohz_full cores are left alone by irqbalance 1.8+.
    expect("irqbalance", &t, &p, Status::Ok, "leave alone");
    t.file("/sys/devices/system/cpu/isolated", "")
        .file("/sys/devices/system/cpu/nohz_full", "");
    expect("irqbalance", &t, &p, Status::CannotCheck, "environment");
    t.file(
        "/proc/77/environ",
        "PATH=/bin\0IRQBALANCE_BANNED_CPULIST=2-3\0",
    );
    expect("irqbalance", &t, &p, Status::Ok, "banned");
    t.file("/proc/77/environ", "PATH=/bin\0");
    expect(
        "irqbalance",
        &t,
        &p,
        Status::Change,
        "may move IRQs onto CPUs 2-3",
    );
    t.remove("/proc");
    expect("irqbalance", &t, &p, Status::CannotCheck, "cannot list");
}

#[test]
fn userfaultfd_and_io_uring() {
    let t = Tree::tuned();
    let p = kernel();
    expect(
        "userfaultfd",
        &t,
        &p,
        Status::Ok,
        "through /dev/userfaultfd",
    );
    let denied = Probes {
        euid: 1000,
        userfaultfd: Err(UffdProblem::Denied("not permitted".into())),
        ..kernel()
    };
    expect(
        "userfaultfd",
        &t,
        &denied,
        Status::Change,
        "chmod 0660 /dev/userfaultfd",
    );
    let old = Probes {
        userfaultfd: Err(UffdProblem::Unsupported("no WP".into())),
        ..kernel()
    };
    expect("userfaultfd", &t, &old, Status::Change, "Linux 5.7");
    let failed = Probes {
        userfaultfd: Err(UffdProblem::Failed("EMFILE".into())),
        ..kernel()
    };
    expect("userfaultfd", &t, &failed, Status::CannotCheck, "EMFILE");

    expect("io_uring", &t, &p, Status::Ok, "zero-copy send available");
    let disabled = Probes {
        io_uring: Err(UringProblem::Disabled(2, "disabled by sysctl".into())),
        ..kernel()
    };
    t.file("/proc/sys/kernel/io_uring_disabled", "2");
    expect(
        "io_uring",
        &t,
        &disabled,
        Status::Change,
        "io_uring_disabled=0",
    );
    let denied = Probes {
        io_uring: Err(UringProblem::Denied("EPERM".into())),
        ..kernel()
    };
    expect("io_uring", &t, &denied, Status::Change, "seccomp");
    let failed = Probes {
        io_uring: Err(UringProblem::Failed("ENOMEM".into())),
        ..kernel()
    };
    t.remove("/proc/sys/kernel/io_uring_disabled");
    expect("io_uring", &t, &failed, Status::CannotCheck, "before 6.6");
}

#[test]
fn memlock() {
    let t = Tree::tuned();
    // 2 shards, 3 peers of 2: 6 connections per shard, (6 + 4) MiB each.
    assert_eq!(memory::memlock_needed(2, 3).0, 20 << 20);
    // docs/operations.md: 4 shards and 7 peers of 4 are 112 RDMA connections.
    assert_eq!(memory::memlock_needed(4, 7).1, 112 * 640 * 4160);
    expect(
        "memlock",
        &t,
        &kernel(),
        Status::Ok,
        "RLIMIT_MEMLOCK is 64.0 MiB",
    );
    let low = Probes {
        memlock: Ok(Memlock {
            soft: Some(8 << 20),
            hard: Some(8 << 20),
        }),
        ..kernel()
    };
    let i = expect("memlock", &t, &low, Status::Change, "ulimit -l 20480");
    assert!(i.fix.unwrap().contains("hard limit"));
    t.file("/sys/class/infiniband/rxe0/x", "");
    expect("memlock", &t, &low, Status::Change, "RDMA memory");
    t.remove("/sys/class/infiniband")
        .file("/sys/class/infiniband", "not a directory");
    expect(
        "memlock",
        &t,
        &low,
        Status::Change,
        "RDMA memory not counted",
    );
    t.file("/proc/self/status", "CapEff:\t000001ffffffffff");
    expect("memlock", &t, &low, Status::Ok, "CAP_IPC_LOCK");
    let unlimited = Probes {
        memlock: Ok(Memlock {
            soft: None,
            hard: None,
        }),
        ..kernel()
    };
    t.remove("/proc/self/status");
    expect(
        "memlock",
        &t,
        &unlimited,
        Status::Ok,
        "unlimited (whether it has",
    );
    let failed = Probes {
        memlock: Err("getrlimit(RLIMIT_MEMLOCK) failed: EFAULT".into()),
        ..kernel()
    };
    expect("memlock", &t, &failed, Status::CannotCheck, "EFAULT");
}

#[test]
fn sysctls_and_thp() {
    let t = Tree::tuned();
    let p = kernel();
    t.file("/proc/sys/net/core/busy_poll", "0");
    let i = expect(
        "busy_poll",
        &t,
        &p,
        Status::Change,
        "sysctl -w net.core.busy_poll=50",
    );
    assert_eq!(i.writes[0].undo, "sysctl -w net.core.busy_poll=0");
    t.file("/proc/sys/net/core/busy_read", "x");
    expect("busy_read", &t, &p, Status::CannotCheck, "invalid digit");
    t.remove("/proc/sys/net/core/busy_read");
    expect(
        "busy_read",
        &t,
        &p,
        Status::CannotCheck,
        "CONFIG_NET_RX_BUSY_POLL",
    );
    let thp = "/sys/kernel/mm/transparent_hugepage/enabled";
    t.file(thp, "[always] madvise never");
    let i = expect("thp", &t, &p, Status::Change, "echo madvise");
    assert_eq!(i.writes[0].previous, "always");
    t.file(thp, "always madvise never");
    expect("thp", &t, &p, Status::CannotCheck, "no [selected] mode");
    t.remove(thp);
    expect("thp", &t, &p, Status::CannotCheck, "missing");
}

#[test]
fn advisory_items() {
    let t = Tree::tuned();
    let p = kernel();
    let gov = "/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor";
    t.file(gov, "powersave");
    let i = expect(
        "governor",
        &t,
        &p,
        Status::Change,
        "CPU 3 runs the powersave",
    );
    assert_eq!(i.writes.len(), 1);
    t.remove("/sys/devices/system/cpu/cpu2/cpufreq")
        .remove("/sys/devices/system/cpu/cpu3/cpufreq");
    expect(
        "governor",
        &t,
        &p,
        Status::CannotCheck,
        "no cpufreq directory",
    );

    expect("haltpoll", &t, &p, Status::Ok, "guest_halt_poll_ns 0");
    t.remove("/sys/module/haltpoll");
    expect("haltpoll", &t, &p, Status::CannotCheck, "not applicable");

    let kib = "/sys/module/page_reporting/parameters/reported_kib";
    t.file(kib, "4096");
    expect("page_reporting", &t, &p, Status::Change, "4096 KiB");
    t.remove(kib);
    expect("page_reporting", &t, &p, Status::CannotCheck, "not visible");
    t.remove("/sys/module/page_reporting");
    expect(
        "page_reporting",
        &t,
        &p,
        Status::CannotCheck,
        "not applicable",
    );

    t.remove("/dev/kvm");
    expect("kvm", &t, &p, Status::Change, "modprobe");
    std::fs::create_dir_all(t.host().path("/dev/kvm")).unwrap();
    expect("kvm", &t, &p, Status::CannotCheck, "cannot open");
}
