//! Fuzzes the control plane's line decoder (membership, joins, page queries, sent by peers
//! over mutual TLS): any line must decode or give an error, and what decodes re-encodes to a
//! line that decodes to the same message.

#![no_main]

use control::membership::msg::ControlMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ControlMsg::parse(data) {
        let line = m.line();
        let again = ControlMsg::parse(&line[..line.len() - 1]).expect("re-encoded line decodes");
        assert_eq!(again, m);
    }
});
