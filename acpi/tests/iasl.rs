//! The ACPI reference tools read our tables: `iasl -d` (Debian acpica-tools) disassembles every
//! table of every case in tests/common without a complaint, and the decoded fields — node
//! ranges, APIC ids, UIDs, distances, HMAT lists and entries, pointers — are what the topology
//! describes. iasl (20200925 in Debian 12) cannot load a lone RSDP file ("RSD " is not a valid
//! table signature for its file loader), so the RSDP is decoded here instead.
//!
//! Fails with an install hint when iasl is missing (CI installs acpica-tools).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use acpi::{figures, sums_to_zero, tables, Placement, Topology, FILES};

/// One `[off len] Name : value` line of iasl's data-table output, or one decoded flag line
/// (`    Name : value` under a "Flags (decoded below)" field).
type Field = (String, String);

fn fields(dsl: &str) -> Vec<Field> {
    dsl.lines()
        .filter_map(|l| {
            let rest = if l.starts_with('[') {
                &l[l.find(']')? + 1..]
            } else if l.starts_with(' ') && !l.trim_start().starts_with('*') {
                l
            } else {
                return None;
            };
            let (name, value) = rest.split_once(" : ")?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn hex(value: &str) -> u64 {
    let token = value.split_whitespace().next().unwrap_or_default();
    u64::from_str_radix(token, 16).unwrap_or_else(|_| panic!("not hex: {value:?}"))
}

/// Splits fields into sub-structures at each "Subtable Type"/"Structure Type"; the first group
/// is the table header.
fn groups(fields: &[Field]) -> Vec<Vec<Field>> {
    let mut out: Vec<Vec<Field>> = vec![Vec::new()];
    for f in fields {
        if f.0 == "Subtable Type" || f.0 == "Structure Type" {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push(f.clone());
    }
    out
}

fn get(group: &[Field], name: &str) -> u64 {
    group
        .iter()
        .find(|f| f.0 == name)
        .map(|f| hex(&f.1))
        .unwrap_or_else(|| panic!("field {name:?} missing in {group:?}"))
}

fn all(group: &[Field], name: &str) -> Vec<u64> {
    group
        .iter()
        .filter(|f| f.0 == name)
        .map(|f| hex(&f.1))
        .collect()
}

fn iasl_binary() -> PathBuf {
    common::guest::which("iasl").expect(
        "iasl not found: apt-get install acpica-tools (CI installs it); this test checks our \
         tables with the ACPI reference disassembler and does not skip",
    )
}

/// Runs `iasl -d` on `dat` and returns the .dsl text, failing on any complaint.
fn disassemble(iasl: &Path, dat: &Path) -> String {
    let out = Command::new(iasl)
        .arg("-d")
        .arg(dat)
        .current_dir(dat.parent().unwrap())
        .output()
        .expect("run iasl");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "iasl -d {} failed:\n{log}",
        dat.display()
    );
    let dsl = std::fs::read_to_string(dat.with_extension("dsl")).expect("iasl wrote no .dsl");
    for bad in [
        "****",
        "Invalid",
        "Incorrect",
        "Error",
        "Unknown",
        "unknown",
    ] {
        for text in [&log, &dsl] {
            if let Some(line) = text.lines().find(|l| l.contains(bad)) {
                panic!("iasl -d {}: {line}\n{dsl}", dat.display());
            }
        }
    }
    dsl
}

fn check_case(iasl: &Path, case: &common::Case, work: &Path) {
    let topology: Topology = case.topology();
    let dir = work.join(case.name);
    acpi::dump(&topology, &dir).unwrap();
    let image = tables(&topology).image(Placement::BIOS_AREA).unwrap();
    let f = figures(&topology);
    let vcpus = topology.vcpus();
    let dsl = |sig: &str| {
        let (name, _) = FILES.iter().find(|(_, s)| s == &sig.as_bytes()).unwrap();
        disassemble(iasl, &dir.join(name))
    };
    let at = |sig: &[u8; 4]| {
        image
            .locations
            .iter()
            .find(|l| &l.signature == sig)
            .unwrap()
            .gpa
    };

    // SRAT: processor affinity per vCPU in APIC-id order, then memory affinity per range.
    let srat = groups(&fields(&dsl("SRAT")));
    let cpus: Vec<(u64, u64)> = srat[1..]
        .iter()
        .filter_map(|g| match get(g, "Subtable Type") {
            0 => Some((get(g, "Proximity Domain Low(8)"), get(g, "Apic ID"))),
            2 => Some((get(g, "Proximity Domain"), get(g, "Apic ID"))),
            _ => None,
        })
        .collect();
    let want: Vec<(u64, u64)> = vcpus
        .iter()
        .map(|v| (u64::from(v.proximity_domain), u64::from(v.apic_id)))
        .collect();
    assert_eq!(cpus, want, "{}: SRAT processor affinity", case.name);
    let x2apic_entries = srat[1..]
        .iter()
        .filter(|g| get(g, "Subtable Type") == 2)
        .count();
    let big_ids = vcpus.iter().filter(|v| v.apic_id > 0xFE).count();
    assert_eq!(
        x2apic_entries, big_ids,
        "{}: x2APIC affinity only for ids > 254",
        case.name
    );
    let mem: Vec<(u64, u64, u64)> = srat[1..]
        .iter()
        .filter(|g| get(g, "Subtable Type") == 1)
        .map(|g| {
            assert_eq!(get(g, "Flags (decoded below)") & 1, 1, "enabled");
            (
                get(g, "Proximity Domain"),
                get(g, "Base Address"),
                get(g, "Address Length"),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64)> = topology
        .memory()
        .iter()
        .map(|(r, p)| (u64::from(*p), r.base, r.size))
        .collect();
    assert_eq!(mem, want, "{}: SRAT memory affinity", case.name);

    // SLIT: locality count and every row.
    let slit = fields(&dsl("SLIT"));
    let n = topology.nodes().len();
    assert_eq!(get(&slit, "Localities"), n as u64);
    for from in 0..n {
        let row = slit
            .iter()
            .find(|f| f.0 == format!("Locality {from:3}"))
            .unwrap_or_else(|| panic!("{}: SLIT row {from} missing", case.name));
        let got: Vec<u8> = row.1.split_whitespace().map(|b| hex(b) as u8).collect();
        assert_eq!(got, f.slit.row(from), "{}: SLIT row {from}", case.name);
    }

    // HMAT: attached initiator per memory node, then latency and bandwidth matrices.
    let hmat = groups(&fields(&dsl("HMAT")));
    assert_eq!(get(&hmat[0], "Revision"), 2);
    let initiators = topology.initiators();
    let targets = topology.targets();
    let prox: Vec<(u64, u64, u64)> = hmat[1..]
        .iter()
        .filter(|g| get(g, "Structure Type") == 0)
        .map(|g| {
            (
                get(g, "Flags (decoded below)"),
                get(g, "Attached Initiator Proximity Domain"),
                get(g, "Memory Proximity Domain"),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64)> = targets
        .iter()
        .map(|&t| {
            if topology.nodes()[t as usize].vcpus.is_empty() {
                (0, 0, u64::from(t))
            } else {
                (1, u64::from(t), u64::from(t))
            }
        })
        .collect();
    assert_eq!(prox, want, "{}: HMAT memory proximity domains", case.name);
    let loc: Vec<&Vec<Field>> = hmat[1..]
        .iter()
        .filter(|g| get(g, "Structure Type") == 1)
        .collect();
    assert_eq!(loc.len(), 2, "{}: two locality structures", case.name);
    for g in loc {
        let kind = get(g, "Data Type");
        let inits = all(g, "Initiator Proximity Domain List");
        let targs = all(g, "Target Proximity Domain List");
        assert_eq!(
            inits,
            initiators.iter().map(|&i| u64::from(i)).collect::<Vec<_>>()
        );
        assert_eq!(
            targs,
            targets.iter().map(|&t| u64::from(t)).collect::<Vec<_>>()
        );
        let base = get(g, "Entry Base Unit");
        let entries = all(g, "Entry");
        assert_eq!(entries.len(), inits.len() * targs.len());
        for (ii, &i) in initiators.iter().enumerate() {
            for (ti, &t) in targets.iter().enumerate() {
                let e = entries[ii * targs.len() + ti];
                let (i, t) = (i as usize, t as usize);
                match kind {
                    // Latency: entries count `base` picoseconds, rounded up.
                    0 => assert_eq!(
                        e,
                        (u64::from(f.latency_ns.get(i, t)) * 1000).div_ceil(base),
                        "{}: latency {i}->{t}",
                        case.name
                    ),
                    3 => assert_eq!(
                        e * base,
                        u64::from(f.bandwidth_mbps.get(i, t)),
                        "{}: bandwidth {i}->{t}",
                        case.name
                    ),
                    other => panic!("unexpected HMAT data type {other}"),
                }
            }
        }
    }

    // MADT: one local APIC (8-bit ids) or x2APIC entry per vCPU with matching UIDs.
    let madt = groups(&fields(&dsl("APIC")));
    let procs: Vec<(u64, u64)> = madt[1..]
        .iter()
        .filter_map(|g| match get(g, "Subtable Type") {
            0 => Some((get(g, "Processor ID"), get(g, "Local Apic ID"))),
            9 => Some((get(g, "Processor UID"), get(g, "Processor x2Apic ID"))),
            _ => None,
        })
        .collect();
    let want: Vec<(u64, u64)> = vcpus
        .iter()
        .map(|v| (u64::from(v.uid), u64::from(v.apic_id)))
        .collect();
    assert_eq!(procs, want, "{}: MADT processors", case.name);

    // FADT: hardware-reduced, 64-bit DSDT pointer to where the DSDT is.
    let fadt = fields(&dsl("FACP"));
    assert!(
        fadt.iter()
            .any(|f| f.0 == "Hardware Reduced (V5)" && f.1 == "1"),
        "{}: FADT not hardware-reduced",
        case.name
    );
    assert_eq!(*all(&fadt, "DSDT Address").last().unwrap(), at(b"DSDT"));

    // DSDT: a processor device per vCPU with the MADT's UID and the SRAT's PXM.
    let dsdt = dsl("DSDT");
    let asl_int = |line: &str| -> u64 {
        let v = line
            .split(',')
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .trim();
        match v {
            "Zero" => 0,
            "One" => 1,
            _ => hex(v.trim_start_matches("0x")),
        }
    };
    let mut devices = Vec::new();
    let mut lines = dsdt.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("Device (") {
            let name = name.trim_end_matches(')').to_owned();
            let (mut hid, mut uid, mut pxm) = (String::new(), u64::MAX, u64::MAX);
            for l in lines.by_ref() {
                if l == "}" {
                    break;
                }
                if l.starts_with("Name (_HID") {
                    hid = l.split('"').nth(1).unwrap_or_default().to_owned();
                } else if l.starts_with("Name (_UID") {
                    uid = asl_int(l);
                } else if l.starts_with("Name (_PXM") {
                    pxm = asl_int(l);
                }
            }
            devices.push((name, hid, uid, pxm));
        }
    }
    let want: Vec<(String, String, u64, u64)> = vcpus
        .iter()
        .map(|v| {
            (
                format!("C{:03X}", v.uid),
                "ACPI0007".to_owned(),
                u64::from(v.uid),
                u64::from(v.proximity_domain),
            )
        })
        .collect();
    let (cpus, others): (Vec<_>, Vec<_>) = devices.into_iter().partition(|d| d.1 == "ACPI0007");
    assert_eq!(cpus, want, "{}: DSDT processor devices", case.name);
    // COM1: a 16550 with its I/O range and GSI, for a hardware-reduced guest's console.
    assert_eq!(others.len(), 1, "{}: DSDT devices {others:?}", case.name);
    assert_eq!(
        (others[0].0.as_str(), others[0].1.as_str()),
        ("COM1", "PNP0501")
    );
    let crs: String = dsdt
        .split("Device (COM1)")
        .nth(1)
        .unwrap_or_default()
        .into();
    assert!(
        crs.contains("0x03F8,             // Range Minimum"),
        "{crs}"
    );
    assert!(crs.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive"));
    assert!(crs.contains("0x00000004,"), "{crs}");

    // XSDT: pointers to FADT, MADT, SRAT, SLIT, HMAT where the image put them.
    let xsdt = fields(&dsl("XSDT"));
    let pointers: Vec<u64> = xsdt
        .iter()
        .filter(|f| f.0.starts_with("ACPI Table Address"))
        .map(|f| hex(&f.1))
        .collect();
    let want: Vec<u64> = [b"FACP", b"APIC", b"SRAT", b"SLIT", b"HMAT"]
        .iter()
        .map(|s| at(s))
        .collect();
    assert_eq!(pointers, want, "{}: XSDT", case.name);

    // RSDP (decoded here): signature, both checksums, revision 2, XSDT address.
    let rsdp = std::fs::read(dir.join("rsdp.dat")).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(&rsdp));
    assert_eq!(rsdp[15], 2);
    assert_eq!(
        u64::from_le_bytes(rsdp[24..32].try_into().unwrap()),
        at(b"XSDT")
    );
}

#[test]
fn iasl_decodes_every_table_as_described() {
    let iasl = iasl_binary();
    let work = std::env::temp_dir().join(format!("ssi-dp-iasl-{}", std::process::id()));
    for case in common::ALL {
        check_case(&iasl, case, &work);
    }
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn iasl_flags_a_corrupted_table() {
    // The checker above must be able to fail: a table with a wrong checksum is reported.
    let iasl = iasl_binary();
    let work = std::env::temp_dir().join(format!("ssi-dp-iasl-bad-{}", std::process::id()));
    let topology = common::TWO_NODES.topology();
    let paths = acpi::dump(&topology, &work).unwrap();
    let slit = paths.iter().find(|p| p.ends_with("slit.dat")).unwrap();
    let mut bytes = std::fs::read(slit).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(slit, &bytes).unwrap();
    let result = std::panic::catch_unwind(|| disassemble(&iasl, slit));
    std::fs::remove_dir_all(&work).ok();
    let message = result.expect_err("a corrupted SLIT must be flagged");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        text.contains("Incorrect") || text.contains("****"),
        "{text}"
    );
}
