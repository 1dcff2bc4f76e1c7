//! The `user_data` of every submission: operation kind, connection slot, and a 32-bit
//! argument (transmit sequence number or watch index), so a completion finds its owner in O(1).

/// Multishot receive of a connection.
pub const RECV: u8 = 1;
/// Plain send (headers, or payloads without zero-copy).
pub const SEND: u8 = 2;
/// Zero-copy send of a payload (argument: the frame's transmit sequence number).
pub const SEND_ZC: u8 = 3;
/// Multishot poll of a watched fd (argument: watch index).
pub const POLL: u8 = 4;

/// Packs kind, slot and argument.
pub const fn pack(kind: u8, slot: u16, arg: u32) -> u64 {
    ((kind as u64) << 56) | ((slot as u64) << 32) | arg as u64
}

/// Unpacks `(kind, slot, arg)`.
pub const fn unpack(ud: u64) -> (u8, u16, u32) {
    ((ud >> 56) as u8, (ud >> 32) as u16, ud as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(
            unpack(pack(SEND_ZC, 0xfffe, 0xdead_beef)),
            (SEND_ZC, 0xfffe, 0xdead_beef)
        );
        assert_eq!(unpack(pack(POLL, 0, 0)), (POLL, 0, 0));
    }
}
