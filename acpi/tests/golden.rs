//! Golden tests: the tables of each case in tests/common are byte-for-byte what is checked in
//! under tests/golden/<case>/ (a pure function of the topology). Regenerate after an intended
//! change with `SSI_DP_UPDATE_GOLDEN=1 cargo test -p control --test golden` and review the
//! `iasl -d` diff.

mod common;

use std::path::PathBuf;

use acpi::{dump, sums_to_zero, FILES};

fn golden_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

#[test]
fn tables_match_the_checked_in_bytes() {
    let update = std::env::var_os("SSI_DP_UPDATE_GOLDEN").is_some();
    let scratch = std::env::temp_dir().join(format!("ssi-dp-golden-{}", std::process::id()));
    let mut mismatches = Vec::new();
    for case in common::ALL {
        let out = scratch.join(case.name);
        let written = dump(&case.topology(), &out).unwrap();
        assert_eq!(written.len(), FILES.len());
        for path in written {
            let name = path.file_name().unwrap().to_owned();
            let bytes = std::fs::read(&path).unwrap();
            let sig_ok = if name == "rsdp.dat" {
                sums_to_zero(&bytes[..20]) && sums_to_zero(&bytes)
            } else {
                sums_to_zero(&bytes)
            };
            assert!(sig_ok, "{}/{:?}: bad checksum", case.name, name);
            let golden = golden_dir(case.name).join(&name);
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &bytes).unwrap();
                continue;
            }
            match std::fs::read(&golden) {
                Ok(expected) if expected == bytes => {}
                Ok(expected) => mismatches.push(format!(
                    "{}: differs (golden {} bytes, generated {} bytes, first difference at byte {})",
                    golden.display(),
                    expected.len(),
                    bytes.len(),
                    expected
                        .iter()
                        .zip(&bytes)
                        .position(|(a, b)| a != b)
                        .unwrap_or(expected.len().min(bytes.len())),
                )),
                Err(e) => mismatches.push(format!("{}: {e}", golden.display())),
            }
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
    assert!(
        mismatches.is_empty(),
        "generated tables differ from tests/golden (if intended, regenerate with \
         SSI_DP_UPDATE_GOLDEN=1 cargo test -p control --test golden):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn the_same_topology_gives_the_same_bytes() {
    for case in common::ALL {
        let a = acpi::tables(&case.topology());
        let b = acpi::tables(&case.topology());
        assert_eq!(a, b, "{}", case.name);
    }
}
