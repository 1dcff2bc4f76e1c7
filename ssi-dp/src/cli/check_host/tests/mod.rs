//! `check-host` against crafted host trees (a root directory holding the `/proc`, `/sys` and
//! `/dev` files the checks read) and crafted kernel answers: here a whole run (`--fix`
//! writing the tree, usage errors, the exit status and both report formats); `items.rs`
//! has `ok`, `change` and `cannot check` for each item.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use uffd_poller::OpenedVia;

use super::host::{HostView, Memlock, Probes};
use super::item::{Ctx, Item, Status};
use super::*;

mod items;

/// A host tree in a fresh temporary directory, removed on drop.
struct Tree {
    root: PathBuf,
}

impl Tree {
    /// A tree where every item is `ok` for cores 2-3 of CPUs 0-3.
    fn tuned() -> Tree {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "ssi-check-host-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let t = Tree { root };
        let cpu = "/sys/devices/system/cpu";
        t.file(&format!("{cpu}/online"), "0-3")
            .file(&format!("{cpu}/isolated"), "2-3")
            .file(&format!("{cpu}/nohz_full"), "2-3")
            .file(
                "/proc/cmdline",
                "ro isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 -- rcu_nocbs=9",
            )
            .file("/dev/cpu_dma_latency", "")
            .file("/dev/kvm", "")
            .file("/dev/userfaultfd", "")
            .file("/proc/irq/10/smp_affinity_list", "0-1")
            .file("/proc/irq/11/smp_affinity_list", "0")
            .file("/proc/irq/default_smp_affinity", "3")
            .file("/proc/1/comm", "systemd")
            .file("/proc/self/status", "Name:\tx\nCapEff:\t0000000000000000\n")
            .file("/proc/sys/net/core/busy_poll", "50")
            .file("/proc/sys/net/core/busy_read", "50")
            .file("/proc/sys/vm/unprivileged_userfaultfd", "0")
            .file("/proc/sys/kernel/io_uring_disabled", "0")
            .file(
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never",
            )
            .file("/sys/module/haltpoll/parameters/guest_halt_poll_ns", "0")
            .file(
                "/sys/module/page_reporting/parameters/page_reporting_order",
                "9",
            )
            .file("/sys/module/page_reporting/parameters/reported_kib", "0");
        for c in 2..4 {
            t.file(
                &format!("{cpu}/cpu{c}/cpufreq/scaling_governor"),
                "performance",
            )
            .file(
                &format!("{cpu}/cpu{c}/cpufreq/scaling_available_governors"),
                "performance powersave",
            );
        }
        t
    }

    fn file(&self, abs: &str, text: &str) -> &Tree {
        let p = self.host().path(abs);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{text}\n")).unwrap();
        self
    }

    fn remove(&self, abs: &str) -> &Tree {
        let p = self.host().path(abs);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
        self
    }

    fn read(&self, abs: &str) -> String {
        self.host().read(abs).unwrap()
    }

    fn host(&self) -> HostView {
        HostView::at(&self.root)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A kernel that lets this process do everything, with an 8 MiB memlock limit.
fn kernel() -> Probes {
    Probes {
        euid: 0,
        allowed_cpus: Ok((0..4).collect()),
        memlock: Ok(Memlock {
            soft: Some(64 << 20),
            hard: Some(64 << 20),
        }),
        userfaultfd: Ok(OpenedVia::Device),
        io_uring: Ok(true),
    }
}

fn ctx() -> Ctx {
    Ctx {
        cores: vec![2, 3],
        peers: 3,
    }
}

fn item(name: &str, t: &Tree, p: &Probes) -> Item {
    let (_, _, check) = ITEMS.iter().find(|(n, ..)| *n == name).unwrap();
    check(&t.host(), p, &ctx())
}

/// Asserts `name`'s status on `t`, and that its detail (or fix) mentions `says`.
#[track_caller]
fn expect(name: &str, t: &Tree, p: &Probes, status: Status, says: &str) -> Item {
    let i = item(name, t, p);
    let text = format!("{} | {}", i.detail, i.fix.as_deref().unwrap_or(""));
    assert_eq!(i.status, status, "{name}: {text}");
    assert!(text.contains(says), "{name}: {says:?} not in {text:?}");
    assert_eq!(i.fix.is_some(), status == Status::Change, "{name}: {text}");
    i
}

fn args() -> CheckHostArgs {
    CheckHostArgs {
        cores: Some("2-3".into()),
        fix: false,
        json: false,
        only: Vec::new(),
        peers: 3,
    }
}

#[test]
fn a_tuned_host_is_ready() {
    let t = Tree::tuned();
    let r = check(&args(), &t.host(), &kernel()).unwrap();
    for i in &r.items {
        assert_eq!(i.status, Status::Ok, "{}: {}", i.name, i.detail);
    }
    assert_eq!(r.items.len(), ITEMS.len());
    assert_eq!(r.exit_code(), exit::OK);
    assert!(r
        .text()
        .contains("ready for --idle spin on CPUs 2-3: yes\n"));
}

#[test]
fn fix_writes_the_tree_and_reports_what_it_replaced() {
    let t = Tree::tuned();
    t.file("/proc/sys/net/core/busy_poll", "0")
        .file(
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never",
        )
        .file("/proc/irq/12/smp_affinity_list", "1-2")
        .file(
            "/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor",
            "schedutil",
        )
        .file("/sys/devices/system/cpu/isolated", "");
    let a = CheckHostArgs {
        fix: true,
        ..args()
    };
    let r = check(&a, &t.host(), &kernel()).unwrap();
    let applied = r.applied.as_ref().unwrap();
    let done: Vec<(&str, &str)> = applied
        .iter()
        .map(|a| (a.item, a.write.previous.as_str()))
        .collect();
    assert_eq!(
        done,
        [
            ("irq_affinity", "1-2"),
            ("busy_poll", "0"),
            ("thp", "always"),
            ("governor", "schedutil")
        ]
    );
    assert!(applied.iter().all(|a| a.result.is_ok()));
    assert_eq!(t.read("/proc/sys/net/core/busy_poll"), "50");
    assert_eq!(t.read("/proc/irq/12/smp_affinity_list"), "1");
    assert_eq!(
        t.read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "madvise"
    );
    // Checked again afterwards: only the kernel command line is left to change (a plain
    // file keeps the word written, where sysfs would show "always [madvise] never").
    let left: Vec<(&str, Status)> = r
        .items
        .iter()
        .filter(|i| i.status != Status::Ok)
        .map(|i| (i.name, i.status))
        .collect();
    assert_eq!(
        left,
        [("isolcpus", Status::Change), ("thp", Status::CannotCheck)]
    );
    assert_eq!(r.exit_code(), exit::FAILED);
    let text = r.text();
    assert!(
        text.contains("--fix: busy_poll: /proc/sys/net/core/busy_poll 0 -> 50, done (undo: sysctl -w net.core.busy_poll=0)"),
        "{text}"
    );
    assert!(text.contains("kernel command line: add isolcpus=managed_irq,domain,2-3"));
    // A write the kernel refuses is reported, and the others still happen.
    let mut refused = item("busy_poll", &t, &kernel());
    refused.status = Status::Change;
    refused.writes = vec![item::Write::file("/proc/irq", "1", "0")];
    let out = fix::apply(&t.host(), &[refused]);
    assert!(out[0].result.as_ref().unwrap_err().contains("/proc/irq"));
}

#[test]
fn usage_errors() {
    let t = Tree::tuned();
    let e = check(
        &CheckHostArgs {
            fix: true,
            ..args()
        },
        &t.host(),
        &Probes {
            euid: 1000,
            ..kernel()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs root"), "{e}");
    let bad = CheckHostArgs {
        cores: Some("3-1".into()),
        ..args()
    };
    assert!(matches!(
        check(&bad, &t.host(), &kernel()),
        Err(CheckHostError::BadCores { .. })
    ));
    let unknown = CheckHostArgs {
        only: vec!["pm_qos".into(), "nope".into()],
        ..args()
    };
    let e = check(&unknown, &t.host(), &kernel()).unwrap_err();
    assert!(e.to_string().contains("busy_poll"), "{e}");
    // Without --cores: every online CPU but CPU 0.
    let default = CheckHostArgs {
        cores: None,
        ..args()
    };
    let r = check(&default, &t.host(), &kernel()).unwrap();
    assert_eq!((r.cores.as_str(), r.cores_default), ("1-3", true));
    t.file("/sys/devices/system/cpu/online", "0");
    let e = check(&default, &t.host(), &kernel()).unwrap_err();
    assert!(e.to_string().contains("only online CPU"), "{e}");
}

#[test]
fn text_and_json_say_the_same() {
    let t = Tree::tuned();
    t.file("/proc/sys/net/core/busy_poll", "0")
        .file("/sys/devices/system/cpu/nohz_full", "2");
    let a = CheckHostArgs {
        only: vec!["busy_poll".into(), "nohz_full".into(), "kvm".into()],
        ..args()
    };
    let r = check(&a, &t.host(), &kernel()).unwrap();
    let text = r.text();
    let json = r.json();
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (i, j) in r.items.iter().zip(items) {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{} ", i.name)))
            .unwrap();
        assert!(line.contains(j["status"].as_str().unwrap()), "{line}");
        assert!(line.ends_with(j["detail"].as_str().unwrap()), "{line}");
    }
    assert_eq!(items[0]["name"], "nohz_full");
    assert_eq!(items[0]["boot_param"], "nohz_full=2-3");
    assert_eq!(items[1]["fixable"], true);
    assert_eq!(items[1]["counts_for_spin"], false);
    assert_eq!(json["exit_code"], 1);
    assert_eq!(json["ready_for_spin"], false);
    assert!(text.ends_with(
        "ready for --idle spin on CPUs 2-3: no, change nohz_full (advisory, not counted: \
         busy_poll)\n"
    ));
}
