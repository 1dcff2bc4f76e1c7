//! Loading rdma-core at run time, on whatever machine the tests run on: a missing library is
//! a clear error, and the devices the library lists are the ones the kernel's sysfs lists
//! (none on a host without RDMA). With `CI` set the library must be there (`scripts/test`
//! installs it); elsewhere, without it, the test says so.

use transport_verbs::ffi::{Lib, LoadError};
use transport_verbs::verbs::{Verbs, VerbsError};
use transport_verbs::{probe, Availability};

#[test]
fn a_missing_library_says_what_to_install() {
    let e = Lib::open_named("libssi-dp-no-such-verbs.so.1").expect_err("no such library");
    assert!(matches!(e, LoadError::Open { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("libssi-dp-no-such-verbs.so.1") && msg.contains("apt-get install libibverbs1"),
        "{msg}"
    );
    assert!(msg.contains("--transport uring"), "{msg}");
}

#[test]
fn the_library_lists_the_devices_sysfs_lists() {
    let verbs = match Verbs::load() {
        Ok(v) => v,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs libibverbs1 (scripts/test): {e}"
            );
            eprintln!("libibverbs is not installed here ({e}): nothing to compare");
            return;
        }
    };
    let mut listed = verbs.devices().expect("ibv_get_device_list");
    listed.sort();
    let mut sysfs: Vec<String> = match probe() {
        Availability::Present(d) | Availability::NoActivePort(d) => {
            d.into_iter().map(|d| d.name).collect()
        }
        Availability::NoDevices | Availability::NoKernelSupport { .. } => Vec::new(),
    };
    sysfs.sort();
    assert_eq!(listed, sysfs, "libibverbs and sysfs disagree");
    let e = verbs
        .open("ssi-dp-no-such-device0")
        .expect_err("no such device");
    let VerbsError::NoDevice { available, .. } = &e else {
        panic!("{e:?}");
    };
    if listed.is_empty() {
        assert!(available.starts_with("none"), "{available}");
    } else {
        assert_eq!(available, &listed.join(", "));
    }
    assert!(e.to_string().contains("ibv_devices"), "{e}");
}
