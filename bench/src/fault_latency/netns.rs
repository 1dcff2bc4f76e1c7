//! The `--netns` topology: one network namespace per node, each with a veth pair whose other
//! end is enslaved to a bridge in a hub namespace, so every node reaches every other one over
//! veth (like hosts on one switch). Nothing is added to the caller's own namespace; everything
//! is removed on drop.
//!
//! Helper processes are started under `ip netns exec NAME`; node 0 (this process) runs its
//! node and the floor's sockets on threads that entered its namespace with `setns(2)`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use thiserror::Error;

/// Why the namespaces could not be set up or entered.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error(
        "`ip {cmd}` failed: {why}; --netns needs root and iproute2 (apt-get install iproute2)"
    )]
    Ip {
        /// The arguments.
        cmd: String,
        /// What it said.
        why: String,
    },
    /// setns(2) failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        /// The namespace.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Ip {
            cmd: args.join(" "),
            why: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            cmd: args.join(" "),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The namespaces of one run; removed on drop.
#[derive(Debug)]
pub struct NetNs {
    tag: String,
    nodes: usize,
    subnet: u32,
    created: Vec<String>,
}

impl NetNs {
    /// Creates the hub with its bridge and one namespace per node.
    pub fn create(nodes: usize) -> Result<NetNs, NetnsError> {
        let pid = std::process::id();
        let mut n = NetNs {
            tag: format!("ssifl{pid}"),
            nodes,
            subnet: pid % 200 + 20,
            created: Vec::new(),
        };
        let hub = n.hub();
        ip(&["netns", "add", &hub])?;
        n.created.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = n.name(i);
            ip(&["netns", "add", &ns])?;
            n.created.push(ns.clone());
            let (inner, outer) = (format!("fl{i}"), format!("flh{i}"));
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", n.addr(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.tag)
    }

    /// The namespace of node `i`.
    pub fn name(&self, i: usize) -> String {
        format!("{}-n{i}", self.tag)
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.215.{}.{}", self.subnet, 10 + i)
    }

    /// Nodes it was made for.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Moves the calling thread into node `i`'s namespace (threads it spawns inherit it;
    /// sockets it creates belong to it).
    pub fn enter(&self, i: usize) -> Result<(), NetnsError> {
        let name = self.name(i);
        let err = |source| NetnsError::Enter {
            name: name.clone(),
            source,
        };
        let f = File::open(format!("/var/run/netns/{name}")).map_err(err)?;
        // SAFETY: setns on a namespace fd we own; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The command prefix that runs a program in node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.name(i)]
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting a namespace removes the veth ends inside it, and with them the pairs.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("fault-latency: cleanup: {e}");
            }
        }
    }
}
