//! RDMA verbs: device discovery, and rdma-core's verbs loaded at run time.
//!
//! What is here:
//! * [`probe`] reads the kernel's RDMA device list from sysfs
//!   (`/sys/class/infiniband/<device>/ports/<n>/{state,link_layer}`) and reports whether the
//!   kernel has RDMA support, which devices exist, and whether any port is active. The node
//!   runs it at start and prints the result next to the transport it chose. Its unit tests
//!   drive [`probe_at`] with sysfs trees they build.
//! * [`ffi`]: `libibverbs.so.1` opened with `dlopen` (so the project builds and runs without
//!   rdma-core), the ABI subset the data plane needs, checked against rdma-core's header by
//!   `tests/abi.rs`.
//! * [`verbs`]: safe handles (device context, protection domain, registered memory,
//!   completion queues and channels, RC queue pairs) that release in the right order and check
//!   every call. `verbs-selftest` exercises them on a real device; `tests/tests/lab_rdma.rs`
//!   runs it on soft-RoCE in the lab VM (these hosts have no RDMA).
//!
//! * [`transport`]: the verbs transport ([`transport::VerbsTransport`]), frames over RC
//!   queue pairs with credits, with the contract of the TCP transports; `verbs-transport-check`
//!   is its suite on a real device, run in the lab.
//!
//! Nodes use it with `--transport verbs`, and with `auto` for each peer that offers verbs in
//! its handshake too (`engine::mixed`).

use std::fmt;
use std::path::{Path, PathBuf};

pub mod credits;
pub mod endpoint;
pub mod ffi;
pub mod transport;
pub mod verbs;

/// The most devices and ports per device read (a bound on what a broken sysfs could list).
pub const MAX_DEVICES: usize = 64;
/// The most ports read per device.
pub const MAX_PORTS: usize = 16;

/// One port of an RDMA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Port number (1-based, as the kernel numbers them).
    pub number: u32,
    /// Whether the port state is ACTIVE.
    pub active: bool,
    /// `InfiniBand` or `Ethernet` (RoCE), as sysfs says.
    pub link_layer: String,
}

/// One RDMA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Kernel name (`mlx5_0`, `rxe0`, ...).
    pub name: String,
    /// Its ports, by number.
    pub ports: Vec<Port>,
}

impl Device {
    /// The first active port.
    pub fn active_port(&self) -> Option<&Port> {
        self.ports.iter().find(|p| p.active)
    }
}

/// What the machine offers for RDMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The kernel lists no RDMA class at all (no InfiniBand / RDMA core support loaded).
    NoKernelSupport {
        /// The directory that is missing.
        path: PathBuf,
    },
    /// The kernel supports RDMA, but no device is present.
    NoDevices,
    /// Devices are present, none with an active port.
    NoActivePort(Vec<Device>),
    /// At least one device has an active port.
    Present(Vec<Device>),
}

impl Availability {
    /// The device and port a verbs transport would use.
    pub fn usable(&self) -> Option<(&Device, &Port)> {
        match self {
            Availability::Present(devs) => {
                devs.iter().find_map(|d| d.active_port().map(|p| (d, p)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |d: &[Device]| {
            d.iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Availability::NoKernelSupport { path } => write!(
                f,
                "no RDMA support in this kernel ({} does not exist)",
                path.display()
            ),
            Availability::NoDevices => f.write_str("no RDMA devices"),
            Availability::NoActivePort(d) => {
                write!(f, "RDMA device(s) {} with no active port", names(d))
            }
            Availability::Present(_) => match self.usable() {
                Some((d, p)) => write!(
                    f,
                    "RDMA device {} port {} active ({})",
                    d.name, p.number, p.link_layer
                ),
                None => f.write_str("RDMA devices present"),
            },
        }
    }
}

/// What the machine lacks for the verbs transport, for the node's start line (when it has a
/// device with an active port, that is what it says).
pub fn unavailable_reason(a: &Availability) -> String {
    a.to_string()
}

/// Probes the machine's sysfs.
pub fn probe() -> Availability {
    probe_at(Path::new("/sys"))
}

/// Probes a sysfs tree rooted at `sys` (tests build their own). Unreadable entries are
/// skipped: discovery never fails a node, it only informs the transport choice.
pub fn probe_at(sys: &Path) -> Availability {
    let class = sys.join("class/infiniband");
    let Ok(entries) = std::fs::read_dir(&class) else {
        return Availability::NoKernelSupport { path: class };
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .take(MAX_DEVICES)
        .collect();
    names.sort();
    let devices: Vec<Device> = names
        .into_iter()
        .map(|name| {
            let ports = read_ports(&class.join(&name).join("ports"));
            Device { name, ports }
        })
        .collect();
    if devices.is_empty() {
        Availability::NoDevices
    } else if devices.iter().any(|d| d.active_port().is_some()) {
        Availability::Present(devices)
    } else {
        Availability::NoActivePort(devices)
    }
}

fn read_ports(dir: &Path) -> Vec<Port> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ports: Vec<Port> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let number: u32 = e.file_name().to_str()?.parse().ok()?;
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            // `state` reads like "4: ACTIVE".
            let active = read("state").trim().ends_with("ACTIVE");
            let link_layer = read("link_layer").trim().to_string();
            Some(Port {
                number,
                active,
                link_layer,
            })
        })
        .take(MAX_PORTS)
        .collect();
    ports.sort_by_key(|p| p.number);
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch sysfs tree, removed on drop.
    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(tag: &str) -> FakeSys {
            let p = std::env::temp_dir().join(format!("ssi-dp-verbs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            FakeSys(p)
        }

        fn port(&self, dev: &str, n: u32, state: &str, link: &str) {
            let d = self.0.join(format!("class/infiniband/{dev}/ports/{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state"), format!("{state}\n")).unwrap();
            std::fs::write(d.join("link_layer"), format!("{link}\n")).unwrap();
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_kernel_without_rdma_is_told_apart_from_one_without_devices() {
        let s = FakeSys::new("none");
        let a = probe_at(&s.0);
        assert!(matches!(a, Availability::NoKernelSupport { .. }), "{a:?}");
        assert!(
            a.to_string().contains("class/infiniband does not exist"),
            "{a}"
        );
        std::fs::create_dir_all(s.0.join("class/infiniband")).unwrap();
        assert_eq!(probe_at(&s.0), Availability::NoDevices);
        assert!(probe_at(&s.0).usable().is_none());
    }

    #[test]
    fn the_first_active_port_is_the_usable_one() {
        let s = FakeSys::new("ports");
        s.port("mlx5_1", 1, "1: DOWN", "InfiniBand");
        let a = probe_at(&s.0);
        assert!(matches!(a, Availability::NoActivePort(_)), "{a:?}");
        assert!(a.to_string().contains("mlx5_1 with no active port"), "{a}");
        s.port("mlx5_0", 2, "4: ACTIVE", "Ethernet");
        s.port("mlx5_0", 1, "1: DOWN", "Ethernet");
        let a = probe_at(&s.0);
        let (d, p) = a.usable().expect("an active port");
        assert_eq!((d.name.as_str(), p.number), ("mlx5_0", 2));
        assert_eq!(a.to_string(), "RDMA device mlx5_0 port 2 active (Ethernet)");
        assert_eq!(unavailable_reason(&a), a.to_string());
        let Availability::Present(devs) = a else {
            unreachable!()
        };
        assert_eq!(
            devs[0].ports.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn stray_entries_are_skipped() {
        let s = FakeSys::new("stray");
        s.port("rxe0", 1, "4: ACTIVE", "Ethernet");
        std::fs::create_dir_all(s.0.join("class/infiniband/rxe0/ports/not-a-port")).unwrap();
        std::fs::create_dir_all(s.0.join("class/infiniband/broken")).unwrap();
        let a = probe_at(&s.0);
        let Availability::Present(devs) = &a else {
            panic!("{a:?}")
        };
        assert_eq!(devs.len(), 2);
        assert!(devs[0].ports.is_empty(), "broken has no ports dir");
        assert_eq!(devs[1].ports.len(), 1);
    }
}
