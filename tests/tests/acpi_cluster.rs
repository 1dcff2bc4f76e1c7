//! The measured-to-table path on a real 2-node loopback cluster: the nodes measure 4 KiB
//! fetch latency (fault path) and link bandwidth (streamed) to each other at formation, and `--acpi-dump` writes tables
//! whose SLIT is the documented function of those measurements and whose SRAT holds each
//! node's memory.

use std::time::Duration;

use acpi::{slit_from_latency, Matrix};
use ssi_tests::{assert_all_ok, launch, scratch_dir, secret_file, wait_all, NodeOpts};

fn matrix(out: &str, what: &str) -> Vec<Vec<u32>> {
    let line = out
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what} line:\n{out}"));
    let m = line
        .rsplit(": ")
        .next()
        .expect("matrix after the last colon");
    m.split(';')
        .map(|r| {
            r.split(',')
                .map(|v| v.trim().parse().expect("number"))
                .collect()
        })
        .collect()
}

#[test]
fn tables_follow_the_measured_figures() {
    let dir = scratch_dir("acpi-cluster");
    let s = secret_file(&dir, "secret", 31);
    let out_dir = dir.join("tables");
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        let mut a = vec![
            "--memory",
            "16M",
            "--cores",
            &cores,
            "--idle",
            "block",
            "--cluster-secret-file",
            &s,
            "--workload",
            "counters",
            "--ops",
            "10",
        ];
        let o = out_dir.display().to_string();
        if id == 0 {
            a.extend(["--acpi-dump", &o]);
        }
        NodeOpts::new(id, &a)
    };
    let r = wait_all(launch(&[node(0), node(1)]), Duration::from_secs(120));
    assert_all_ok(&r);
    let out = &r[0].2;
    let lat = matrix(out, "measured 4 KiB fetch latency");
    let bw = matrix(out, "measured bandwidth in MB/s");
    assert_eq!(lat.len(), 2);
    for i in 0..2 {
        let j = 1 - i;
        assert!(
            lat[i][j] > lat[i][i],
            "a remote fetch must cost more than a local copy: {lat:?}"
        );
        // The link is streamed, the diagonal is a copy loop in this (unoptimised-for-speed)
        // build: no order between them holds; both must be measured.
        assert!(bw[i][j] > 0 && bw[i][i] > 0, "unmeasured bandwidth: {bw:?}");
    }
    // Both nodes derived the same matrices from the exchange.
    assert_eq!(lat, matrix(&r[1].2, "measured 4 KiB fetch latency"));
    assert_eq!(bw, matrix(&r[1].2, "measured bandwidth in MB/s"));

    // The SLIT is the documented function of the measured latencies.
    let slit = std::fs::read(out_dir.join("slit.dat")).expect("slit.dat");
    let want = slit_from_latency(&Matrix::from_rows("latency", lat.clone()).expect("square"));
    assert_eq!(&slit[36..44], &2u64.to_le_bytes());
    let got: Vec<u8> = slit[44..48].to_vec();
    let want: Vec<u8> = (0..2)
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| want.get(i, j))
        .collect();
    assert_eq!(got, want, "SLIT from latencies {lat:?}");
    assert!(got[1] > 10 && got[2] > 10);

    // SRAT: node 0 homes [0, 16M), node 1 [16M, 30M) (the top 2 MiB is the host area).
    let srat = std::fs::read(out_dir.join("srat.dat")).expect("srat.dat");
    let mut ranges = Vec::new();
    let mut off = 48;
    while off + 2 <= srat.len() {
        let (ty, len) = (srat[off], srat[off + 1] as usize);
        if ty == 1 {
            let dom = u32::from_le_bytes(srat[off + 2..off + 6].try_into().unwrap());
            let base = u64::from_le_bytes(srat[off + 8..off + 16].try_into().unwrap());
            let size = u64::from_le_bytes(srat[off + 16..off + 24].try_into().unwrap());
            ranges.push((dom, base, size));
        }
        off += len.max(1);
    }
    assert_eq!(ranges, vec![(0, 0, 16 << 20), (1, 16 << 20, 14 << 20)]);

    // iasl (installed by scripts/test and CI) decodes what we wrote.
    let iasl = std::process::Command::new("iasl")
        .arg("-d")
        .arg(out_dir.join("slit.dat"))
        .output();
    let iasl = iasl.expect("iasl is missing: install acpica-tools (scripts/test does)");
    assert!(
        iasl.status.success(),
        "{}",
        String::from_utf8_lossy(&iasl.stderr)
    );
    let dsl = std::fs::read_to_string(out_dir.join("slit.dsl")).expect("slit.dsl");
    assert!(
        dsl.contains(&format!("Locality   0 : 0A {:02X}", got[1])),
        "{dsl}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
