//! Storage for one vectored send (`IORING_OP_SENDMSG`) per connection: the `msghdr` and the
//! `iovec`s the kernel reads. It lives in a box owned by the connection slot, so its address
//! is stable while a send that references it is in flight.

use wire::txq::Segment;

/// Most byte ranges one vectored send covers.
pub const MAX_IOV: usize = 32;

/// See the module documentation.
pub struct SendVec {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

// SAFETY: the raw pointers inside point into this struct (the iovec array) and into the
// owning transport's queued frames; the transport is owned and used by one thread at a time,
// and nothing here is shared.
unsafe impl Send for SendVec {}

impl std::fmt::Debug for SendVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendVec")
            .field("iovlen", &self.hdr.msg_iovlen)
            .finish()
    }
}

impl SendVec {
    /// Empty storage, boxed so that its address never changes.
    pub fn new() -> Box<SendVec> {
        Box::new(SendVec {
            // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
            hdr: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
        })
    }

    /// Describes `segs` (at most [`MAX_IOV`]; more are ignored) and returns the header to
    /// hand to the kernel. The segments' memory must stay valid until the send completes.
    pub fn fill(&mut self, segs: &[Segment]) -> *const libc::msghdr {
        let n = segs.len().min(MAX_IOV);
        for (v, s) in self.iov.iter_mut().zip(&segs[..n]) {
            *v = libc::iovec {
                iov_base: s.addr as *mut libc::c_void,
                iov_len: s.len,
            };
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = n as _;
        &self.hdr
    }
}
