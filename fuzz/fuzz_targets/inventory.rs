//! Fuzzes the inventory parser (a file an operator writes or a client posts to
//! `POST /cluster`): any text must give an inventory or a typed error, never a panic.

#![no_main]

use std::path::Path;

use control::inventory::Inventory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(inv) = Inventory::parse(&text, Path::new("fuzz.toml")) {
        // Whatever it accepted is usable: every local node can be looked up by its id.
        for n in inv.local_nodes() {
            assert!(inv.node(n.id).is_some());
        }
    }
});
