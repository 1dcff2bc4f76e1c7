//! The ioctl masks the kernel returns: from `UFFDIO_API` (what the fd accepts) and from
//! `UFFDIO_REGISTER` (what is guaranteed to work on the registered range).

use crate::flags::named_flags;
use crate::sys;

named_flags! {
    /// A set of userfaultfd ioctls, as the kernel reports them (bit `n` = command `n`).
    pub struct Ioctls {
        /// UFFDIO_REGISTER.
        const REGISTER = 1 << sys::_UFFDIO_REGISTER;
        /// UFFDIO_UNREGISTER.
        const UNREGISTER = 1 << sys::_UFFDIO_UNREGISTER;
        /// UFFDIO_WAKE.
        const WAKE = 1 << sys::_UFFDIO_WAKE;
        /// UFFDIO_COPY.
        const COPY = 1 << sys::_UFFDIO_COPY;
        /// UFFDIO_ZEROPAGE.
        const ZEROPAGE = 1 << sys::_UFFDIO_ZEROPAGE;
        /// UFFDIO_MOVE.
        const MOVE = 1 << sys::_UFFDIO_MOVE;
        /// UFFDIO_WRITEPROTECT.
        const WRITEPROTECT = 1 << sys::_UFFDIO_WRITEPROTECT;
        /// UFFDIO_CONTINUE.
        const CONTINUE = 1 << sys::_UFFDIO_CONTINUE;
        /// UFFDIO_POISON.
        const POISON = 1 << sys::_UFFDIO_POISON;
        /// UFFDIO_API.
        const API = 1 << sys::_UFFDIO_API;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_command_numbers() {
        assert_eq!(Ioctls::API.bits(), 1 << 0x3f);
        assert_eq!(Ioctls::COPY.bits(), 1 << 3);
        assert_eq!(
            Ioctls::from_bits_retain(0x1c).to_string(),
            "WAKE | COPY | ZEROPAGE"
        );
    }
}
