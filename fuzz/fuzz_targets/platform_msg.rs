//! Fuzzes the guest platform message decoder (`vmm::platform::msg`): any 32 bytes must decode
//! to a message or a typed error, never a panic, and every accepted message must encode to a
//! frame that decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::platform::msg::{Msg, FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..FRAME_LEN) else {
        return;
    };
    let mut f = [0u8; FRAME_LEN];
    f.copy_from_slice(bytes);
    if let Ok(m) = Msg::decode(&f) {
        assert_eq!(Msg::decode(&m.encode()), Ok(m), "encode/decode round trip");
    }
});
