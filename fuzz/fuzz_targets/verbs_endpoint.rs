//! Fuzzes the verbs endpoint message decoder (`transport_verbs::endpoint`): any 72 bytes from a
//! peer must decode to a checked message or a typed error, never a panic, and every accepted
//! message must encode to bytes that decode to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use transport_verbs::endpoint::{EndpointMsg, ENDPOINT_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..ENDPOINT_LEN) else {
        return;
    };
    let mut b = [0u8; ENDPOINT_LEN];
    b.copy_from_slice(bytes);
    if let Ok(m) = EndpointMsg::decode(&b) {
        assert_eq!(EndpointMsg::decode(&m.encode()), Ok(m), "encode/decode round trip");
    }
});
