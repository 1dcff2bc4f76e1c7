//! The socket busy-polling sysctls (`net.core.busy_poll`, `net.core.busy_read`): advisory,
//! since a spinning shard already polls; they let a blocking wait poll a real NIC's queue.

use std::io::ErrorKind;

use super::host::{HostView, Probes};
use super::item::{sysctl_path, Ctx, Item, Write};

/// The value `--fix` sets (microseconds; the one measured in docs/tuning.md).
const BUSY_US: &str = "50";

/// `busy_poll`.
pub fn busy_poll(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    busy(h, "busy_poll", "net.core.busy_poll")
}

/// `busy_read`.
pub fn busy_read(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    busy(h, "busy_read", "net.core.busy_read")
}

fn busy(h: &HostView, name: &'static str, key: &str) -> Item {
    let path = sysctl_path(key);
    let text = match h.read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Item::cannot(
                name,
                format!(
                    "not applicable: {} is missing (a kernel without socket busy polling, \
                     CONFIG_NET_RX_BUSY_POLL)",
                    h.show(&path)
                ),
            )
        }
        Err(e) => return Item::cannot(name, format!("cannot read {}: {e}", h.show(&path))),
    };
    let us = match text.trim().parse::<u64>() {
        Ok(v) => v,
        Err(e) => return Item::cannot(name, format!("{}: {text:?}: {e}", h.show(&path))),
    };
    if us > 0 {
        return Item::ok(
            name,
            format!("{key}={us}: blocking socket waits poll the NIC's queue for {us} us first"),
        );
    }
    Item::change(
        name,
        format!(
            "{key}=0: blocking socket waits sleep at once (advisory: it only matters with --idle \
             block or hybrid on a real NIC; a spinning shard already polls, and loopback has no \
             NIC queue)"
        ),
        format!("sysctl -w {key}={BUSY_US}"),
    )
    .with_writes(vec![Write::sysctl(key, BUSY_US, text.trim())])
}
