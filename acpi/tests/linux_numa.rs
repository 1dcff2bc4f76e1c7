//! A real Linux reads our tables: QEMU (TCG) boots the host's Debian kernel with a tiny busybox
//! initramfs, given our SRAT, SLIT and HMAT with `-acpitable` and no `-numa` of its own (QEMU
//! supplies the rest: RAM at 0..size below 4 GiB, APIC ids 0..n-1). The guest's init prints its
//! NUMA view and the test compares it with what the tables describe: nodes and their memory
//! (dmesg "ACPI: SRAT: Node N PXM P [mem ...]"), CPU-to-node mapping, node distances (SLIT) and
//! the HMAT access attributes under /sys/devices/system/node/node*/access{0,1}/initiators/.
//!
//! Needs qemu-system-x86 (skips with a message if missing), linux-image-cloud-amd64 and
//! busybox-static (fails with an install hint if missing). Boots run one after another.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use acpi::{figures, Placement, Topology};
use common::guest::{self, GuestView};
use common::Case;

/// Per-boot limit; a TCG boot takes seconds, but CI machines are shared.
const BOOT_DEADLINE: Duration = Duration::from_secs(240);

/// Expected Linux node id for each proximity domain, from the dmesg SRAT lines.
fn pxm_to_node(view: &GuestView) -> BTreeMap<u32, u32> {
    let mut map = BTreeMap::new();
    for line in &view.dmesg {
        // "ACPI: SRAT: Node 1 PXM 1 [mem 0x10000000-0x1fffffff]"
        // "SRAT: PXM 1 -> APIC 0x01 -> Node 1"
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(4) {
            if w[0] == "Node" && w[2] == "PXM" {
                if let (Ok(node), Ok(pxm)) = (w[1].parse(), w[3].parse()) {
                    map.insert(pxm, node);
                }
            }
        }
        for w in words.windows(7) {
            if w[0] == "PXM" && w[2] == "->" && w[3] == "APIC" && w[5] == "->" {
                if let (Ok(pxm), Some(node)) = (w[1].parse(), words.last()) {
                    if let Ok(node) = node.parse() {
                        map.insert(pxm, node);
                    }
                }
            }
        }
    }
    map
}

/// (pxm, first byte, last byte) of every "SRAT: Node N PXM P [mem A-B]" line.
fn srat_memory(view: &GuestView) -> BTreeSet<(u32, u64, u64)> {
    let mut out = BTreeSet::new();
    for line in &view.dmesg {
        let Some(at) = line.find("[mem ") else {
            continue;
        };
        let words: Vec<&str> = line[..at].split_whitespace().collect();
        let Some(pxm) = words
            .windows(2)
            .find(|w| w[0] == "PXM")
            .and_then(|w| w[1].parse().ok())
        else {
            continue;
        };
        let range = line[at + 5..]
            .trim_end_matches(|c| c != ']')
            .trim_end_matches(']');
        let range = range.split(']').next().unwrap_or_default();
        if let Some((a, b)) = range.split_once('-') {
            let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
            if let (Some(a), Some(b)) = (hex(a), hex(b)) {
                out.insert((pxm, a, b));
            }
        }
    }
    out
}

/// `acpi/hmat:   Initiator-Target[I-T]:V nsec|MB/s` lines: (initiator PXM, target PXM, unit) → V.
fn hmat_entries(view: &GuestView) -> BTreeMap<(u32, u32, &'static str), u64> {
    let mut out = BTreeMap::new();
    for line in &view.dmesg {
        let Some(rest) = line.split("Initiator-Target[").nth(1) else {
            continue;
        };
        let Some((pair, value)) = rest.split_once("]:") else {
            continue;
        };
        let Some((i, t)) = pair.split_once('-') else {
            continue;
        };
        let mut words = value.split_whitespace();
        let v = words.next().and_then(|v| v.parse().ok());
        let unit = match words.next() {
            Some("nsec") => "nsec",
            Some("MB/s") => "MB/s",
            _ => continue,
        };
        if let (Ok(i), Ok(t), Some(v)) = (i.parse(), t.parse(), v) {
            out.insert((i, t, unit), v);
        }
    }
    out
}

/// Linux's choice of best initiators for a memory node without an attached one
/// (hmat_update_target_attrs): narrow by lowest latency, then by highest bandwidth.
fn best_initiators(
    latency: &dyn Fn(u32) -> u32,
    bandwidth: &dyn Fn(u32) -> u32,
    initiators: &[u32],
) -> (BTreeSet<u32>, u32, u32) {
    let best_lat = initiators.iter().map(|&i| latency(i)).min().unwrap_or(0);
    let after_lat: Vec<u32> = initiators
        .iter()
        .copied()
        .filter(|&i| latency(i) == best_lat)
        .collect();
    let best_bw = after_lat.iter().map(|&i| bandwidth(i)).max().unwrap_or(0);
    let chosen = after_lat
        .into_iter()
        .filter(|&i| bandwidth(i) == best_bw)
        .collect();
    (chosen, best_lat, best_bw)
}

fn check(case: &Case, topology: &Topology, view: &GuestView) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let nodes = topology.nodes();
    for bad in [
        "Not used",
        "looks invalid",
        "Ignoring",
        "disabled",
        "No NUMA configuration",
    ] {
        for line in view.dmesg.iter().filter(|l| l.contains(bad)) {
            expect(false, format!("kernel complained: {line}"));
        }
    }

    // Node count and the PXM → node mapping.
    let map = pxm_to_node(view);
    expect(
        view.distance.len() == nodes.len(),
        format!(
            "{} nodes online, described {}",
            view.distance.len(),
            nodes.len()
        ),
    );
    expect(
        map.len() == nodes.len() && map.keys().copied().eq(0..nodes.len() as u32),
        format!("PXM to node mapping from dmesg is {map:?}"),
    );
    let node_of = |pxm: u32| map.get(&pxm).copied().unwrap_or(u32::MAX);

    // Memory ranges.
    let want_mem: BTreeSet<(u32, u64, u64)> = topology
        .memory()
        .into_iter()
        .map(|(r, pxm)| (pxm, r.base, r.end() - 1))
        .collect();
    let got_mem = srat_memory(view);
    expect(
        got_mem == want_mem,
        format!("SRAT memory as Linux read it: {got_mem:x?}, described {want_mem:x?}"),
    );

    // CPUs: QEMU numbers CPUs by APIC id 0..n-1, Linux's cpuN is APIC id N.
    let vcpus = topology.vcpus();
    expect(
        view.cpu_node.len() == vcpus.len(),
        format!(
            "{} CPUs in the guest, described {}",
            view.cpu_node.len(),
            vcpus.len()
        ),
    );
    for v in &vcpus {
        let got = view.cpu_node.get(&v.apic_id).copied();
        expect(
            got == Some(node_of(v.proximity_domain)),
            format!(
                "cpu{} (APIC {}) is on node {got:?}, described PXM {} = node {}",
                v.apic_id,
                v.apic_id,
                v.proximity_domain,
                node_of(v.proximity_domain)
            ),
        );
    }

    // Distances: row of node(p), columns in node-id order.
    let f = figures(topology);
    let mut by_node: Vec<(u32, u32)> = map.iter().map(|(&pxm, &node)| (node, pxm)).collect();
    by_node.sort();
    for &(node, pxm) in &by_node {
        let want: Vec<u8> = by_node
            .iter()
            .map(|&(_, to)| f.slit.get(pxm as usize, to as usize))
            .collect();
        let got = view.distance.get(&node).cloned().unwrap_or_default();
        expect(
            got == want,
            format!("node{node} (PXM {pxm}) distance {got:?}, described {want:?}"),
        );
    }

    // HMAT: access0 (any initiator) and access1 (CPU initiators; every initiator here has CPUs).
    let initiators = topology.initiators();
    for target in topology.targets() {
        let t = target as usize;
        let (want_inits, lat, bw) = if nodes[t].vcpus.is_empty() {
            best_initiators(
                &|i| f.latency_ns.get(i as usize, t),
                &|i| f.bandwidth_mbps.get(i as usize, t),
                &initiators,
            )
        } else {
            (
                BTreeSet::from([target]),
                f.latency_ns.get(t, t),
                f.bandwidth_mbps.get(t, t),
            )
        };
        let want_inits: BTreeSet<u32> = want_inits.into_iter().map(node_of).collect();
        let node = node_of(target);
        for class in ["access0", "access1"] {
            let key = (node, class.to_owned());
            let got: BTreeSet<u32> = view
                .initiators
                .get(&key)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            expect(
                got == want_inits,
                format!("node{node} {class} initiators {got:?}, described {want_inits:?}"),
            );
            for (attr, want) in [
                ("read_latency", lat),
                ("write_latency", lat),
                ("read_bandwidth", bw),
                ("write_bandwidth", bw),
            ] {
                let got = view.access.get(&(node, class.to_owned(), attr.to_owned()));
                expect(
                    got == Some(&u64::from(want)),
                    format!("node{node} {class} {attr} = {got:?}, described {want}"),
                );
            }
        }
    }
    // The whole HMAT matrix as Linux parsed it (6.1 logs every entry at info level; later
    // kernels log at debug level, and then only the sysfs checks above apply).
    let parsed = hmat_entries(view);
    if parsed.is_empty() {
        eprintln!(
            "case {}: the kernel did not log HMAT entries; checked sysfs only",
            case.name
        );
    } else {
        let mut want = BTreeMap::new();
        for &i in &initiators {
            for target in topology.targets() {
                let (i, t) = (i as usize, target as usize);
                want.insert(
                    (i as u32, target, "nsec"),
                    u64::from(f.latency_ns.get(i, t)),
                );
                want.insert(
                    (i as u32, target, "MB/s"),
                    u64::from(f.bandwidth_mbps.get(i, t)),
                );
            }
        }
        expect(
            parsed == want,
            format!("HMAT entries as Linux parsed them: {parsed:?}, described {want:?}"),
        );
    }
    if !problems.is_empty() {
        problems.insert(0, format!("case {}:", case.name));
    }
    problems
}

#[test]
fn linux_sees_the_numa_topology_we_describe() {
    let Some(qemu) = guest::which("qemu-system-x86_64") else {
        eprintln!(
            "SKIPPED: qemu-system-x86_64 not found; install Debian's qemu-system-x86 to run the \
             Linux-under-QEMU ACPI test"
        );
        return;
    };
    let kernel = guest::find_kernel().expect(
        "no guest kernel in /boot: apt-get install linux-image-cloud-amd64 (or set \
         SSI_DP_GUEST_KERNEL)",
    );
    let config = guest::kernel_config(&kernel).unwrap_or_default();
    for option in [
        "CONFIG_ACPI_NUMA=y",
        "CONFIG_ACPI_HMAT=y",
        "CONFIG_HMEM_REPORTING=y",
    ] {
        assert!(
            config.is_empty() || config.lines().any(|l| l == option),
            "{} lacks {option}: the guest cannot report what this test checks; use \
             linux-image-cloud-amd64 (Debian 12: 6.1, which has it)",
            kernel.display()
        );
    }
    let busybox_path =
        PathBuf::from(std::env::var_os("SSI_DP_BUSYBOX").unwrap_or_else(|| "/bin/busybox".into()));
    let busybox = std::fs::read(&busybox_path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; apt-get install busybox-static",
            busybox_path.display()
        )
    });
    assert!(
        !guest::is_dynamic_elf(&busybox),
        "{} is dynamically linked: apt-get install busybox-static",
        busybox_path.display()
    );

    let work = std::env::temp_dir().join(format!("ssi-dp-linux-numa-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let initrd = work.join("initramfs.cpio");
    std::fs::write(&initrd, guest::initramfs(&busybox)).unwrap();

    let mut failures = Vec::new();
    for case in common::ALL.iter().filter(|c| c.qemu_mem_mib.is_some()) {
        let topology = case.topology();
        let mem_mib = case.qemu_mem_mib.unwrap_or_default();
        let covered: u64 = topology.memory().iter().map(|(r, _)| r.size).sum();
        assert_eq!(
            covered,
            mem_mib << 20,
            "{}: SRAT must cover QEMU's RAM at 0..{mem_mib} MiB exactly",
            case.name
        );
        let dir = work.join(case.name);
        let written = acpi::dump(&topology, &dir).unwrap();
        let pick = |name: &str| -> PathBuf {
            written
                .iter()
                .find(|p| p.file_name().is_some_and(|n| n == name))
                .cloned()
                .unwrap()
        };
        let tables = [pick("srat.dat"), pick("slit.dat"), pick("hmat.dat")];
        let view = match guest::boot(
            &qemu,
            &kernel,
            &initrd,
            guest::Tables::Added(&tables),
            mem_mib,
            topology.vcpus().len(),
            BOOT_DEADLINE,
        ) {
            Ok(view) => view,
            Err(e) => {
                failures.push(format!("case {}: {e}", case.name));
                continue;
            }
        };
        eprintln!(
            "case {}: booted and reported in {:.1} s; kernel said:\n  {}",
            case.name,
            view.boot_time.as_secs_f64(),
            view.dmesg.join("\n  ")
        );
        let mut problems = check(case, &topology, &view);
        let ours = acpi::tables(&topology);
        problems.extend(same_tables(
            &view,
            &[
                ("SRAT", &ours.srat),
                ("SLIT", &ours.slit),
                ("HMAT", &ours.hmat),
            ],
        ));
        if !problems.is_empty() {
            failures.push(format!(
                "{}\nguest console:\n{}",
                problems.join("\n  "),
                view.console
            ));
        }
    }
    // Our whole table set, as the VMM will place it: RSDP, XSDT, hardware-reduced FADT, DSDT,
    // MADT, SRAT, SLIT, HMAT written into guest memory by AcpiImage::write_into and found by
    // the kernel through acpi_rsdp= (the boot_params.acpi_rsdp_addr equivalent under QEMU).
    let case = &common::FOUR_NODES_ASYMMETRIC;
    let topology = case.topology();
    let set = acpi::tables(&topology);
    let placement = Placement {
        rsdp_gpa: WHOLE_SET_GPA,
        tables_gpa: WHOLE_SET_GPA + 64,
    };
    let image = set.image(placement).unwrap();
    let len = image.tables_gpa - WHOLE_SET_GPA + image.tables.len() as u64;
    let mut blob = vec![0u8; len as usize];
    image.write_into(&mut blob, WHOLE_SET_GPA).unwrap();
    let blob_path = work.join("acpi-image.bin");
    std::fs::write(&blob_path, &blob).unwrap();
    let whole = guest::Tables::Whole {
        image: &blob_path,
        gpa: WHOLE_SET_GPA,
        len,
    };
    let mem_mib = case.qemu_mem_mib.unwrap_or_default();
    let cpus = topology.vcpus().len();
    match guest::boot(&qemu, &kernel, &initrd, whole, mem_mib, cpus, BOOT_DEADLINE) {
        Err(e) => failures.push(format!("whole set: {e}")),
        Ok(view) => {
            eprintln!(
                "whole set ({}): booted and reported in {:.1} s; kernel said:\n  {}",
                case.name,
                view.boot_time.as_secs_f64(),
                view.dmesg.join("\n  ")
            );
            let mut problems = check(case, &topology, &view);
            problems.extend(same_tables(
                &view,
                &[
                    ("SRAT", &set.srat),
                    ("SLIT", &set.slit),
                    ("HMAT", &set.hmat),
                    ("APIC", &set.madt),
                    ("DSDT", &set.dsdt),
                    ("FACP", image.table(b"FACP").unwrap_or_default()),
                ],
            ));
            let rsdp_line = format!("RSDP {WHOLE_SET_GPA:#018X}").replace("0X", "0x");
            if !view.dmesg.iter().any(|l| l.contains(&rsdp_line)) {
                problems.push(format!("the kernel did not use our RSDP ({rsdp_line})"));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "whole set:\n  {}\nguest console:\n{}",
                    problems.join("\n  "),
                    view.console
                ));
            }
        }
    }
    if std::env::var_os("SSI_DP_KEEP_WORK").is_some() {
        eprintln!("kept {}", work.display());
    } else {
        std::fs::remove_dir_all(&work).ok();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Where the whole-set boot loads our image (inside node 1's RAM, reserved with memmap=).
const WHOLE_SET_GPA: u64 = 0x0800_0000;

/// The guest's /sys/firmware/acpi/tables copies must be our bytes exactly.
fn same_tables(view: &GuestView, ours: &[(&str, &[u8])]) -> Vec<String> {
    ours.iter()
        .filter_map(|(sig, bytes)| match view.tables.get(*sig) {
            Some(got) if got == bytes => None,
            Some(got) => Some(format!(
                "the guest's {sig} ({} bytes) differs from ours ({} bytes)",
                got.len(),
                bytes.len()
            )),
            None => Some(format!("the guest exports no {sig} table")),
        })
        .collect()
}
