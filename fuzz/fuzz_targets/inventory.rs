//! Fuzzes the inventory parsers, TOML and YAML (a file an operator writes or a client posts to
//! `POST /cluster`): any text must give an inventory or a typed error, never a panic.

#![no_main]

use std::path::Path;

use control::inventory::Inventory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The same text as TOML and as YAML (the extension picks the parser).
    for name in ["fuzz.toml", "fuzz.yaml"] {
        if let Ok(inv) = Inventory::parse(&text, Path::new(name)) {
            // Whatever it accepted is usable: every local node can be looked up by its id.
            for n in inv.local_nodes() {
                assert!(inv.node(n.id).is_some());
            }
        }
    }
});
