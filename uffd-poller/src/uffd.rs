//! `Uffd`: an open, initialised userfaultfd and what was negotiated for it. The operations
//! live in `register.rs`, `event.rs` and `ops.rs`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::features::Features;
use crate::ioctls::Ioctls;
use crate::open::{self, OpenError, OpenedVia};

/// An open userfaultfd whose `UFFDIO_API` handshake is done.
///
/// The fd is non-blocking and close-on-exec, and handles kernel-mode faults too (KVM's). All
/// methods take `&self`: the kernel serialises ioctls and reads on one userfaultfd, so a `Uffd`
/// can be shared between threads (it is `Send + Sync`), e.g. one thread reading events while
/// others resolve faults. Closing it (drop) unregisters every range and wakes every thread
/// still waiting on a fault, which then retries the access without the userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    via: OpenedVia,
    features: Features,
    available: Features,
    ioctls: Ioctls,
    page_size: usize,
}

/// Compile-time proof of the thread-safety claim above.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Uffd>();
};

impl Uffd {
    /// Opens a userfaultfd with exactly the `required` features enabled.
    ///
    /// Fails with [`OpenError::Features`], naming each missing feature, if the kernel lacks
    /// one, and with [`OpenError::PermissionDenied`] (which says how to get access) if the
    /// process may not use userfaultfd.
    pub fn open(required: Features) -> Result<Self, OpenError> {
        Self::open_with(required, Features::empty())
    }

    /// Opens a userfaultfd with the `required` features plus whichever `optional` ones the
    /// kernel offers; [`Uffd::features`] says which were enabled.
    pub fn open_with(required: Features, optional: Features) -> Result<Self, OpenError> {
        let init = open::open(required, optional)?;
        Ok(Self {
            fd: init.fd,
            via: init.via,
            features: init.features,
            available: init.available,
            ioctls: init.ioctls,
            page_size: host_page_size(),
        })
    }

    /// The features the running kernel offers, without keeping a userfaultfd open.
    pub fn probe() -> Result<(Features, Ioctls), OpenError> {
        open::probe()
    }

    /// Takes ownership of the userfaultfd that an [`crate::Event::Fork`] delivered: it manages
    /// the child process's memory with the same features as `parent`.
    ///
    /// # Safety
    ///
    /// `fd` must be the `uffd` of a fork event read from `parent`, not yet closed or adopted
    /// (adopting it twice would close it twice).
    pub unsafe fn from_fork_event(fd: RawFd, parent: &Uffd) -> Self {
        Self {
            // SAFETY: the caller guarantees `fd` is an open userfaultfd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            via: parent.via,
            features: parent.features,
            available: parent.available,
            ioctls: parent.ioctls,
            page_size: parent.page_size,
        }
    }

    /// The features enabled on this fd (what was requested and granted).
    pub fn features(&self) -> Features {
        self.features
    }

    /// Every feature the kernel offers (a superset of [`Uffd::features`]).
    pub fn available_features(&self) -> Features {
        self.available
    }

    /// The ioctls the kernel accepts on this fd outside registered ranges
    /// (`API | REGISTER | UNREGISTER`); the per-range ones come from [`Uffd::register`].
    pub fn api_ioctls(&self) -> Ioctls {
        self.ioctls
    }

    /// How the fd was created.
    pub fn opened_via(&self) -> OpenedVia {
        self.via
    }

    /// The base page size that every address and length must be aligned to.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The raw fd, for polling through epoll or io_uring (it stays owned by `self`).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Issues a userfaultfd ioctl; returns the errno on failure.
    ///
    /// # Safety
    ///
    /// `request` must be a userfaultfd ioctl whose argument is a pointer to one `T` (the
    /// matching `sys::uffdio_*` struct).
    #[inline]
    pub(crate) unsafe fn ioctl<T>(&self, request: u32, arg: &mut T) -> Result<(), i32> {
        // The size encoded in the request matches T (cheap check of the caller's promise).
        debug_assert_eq!(
            ((request >> 16) & 0x3fff) as usize,
            std::mem::size_of::<T>()
        );
        // SAFETY: the caller guarantees that `request` takes a `*mut T`; `arg` is a valid,
        // exclusive reference for the duration of the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
        if rc < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        } else {
            Ok(())
        }
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The base page size, from `sysconf(_SC_PAGESIZE)`.
fn host_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // Linux always answers with a power of two; 4 KiB is the only sane fallback.
    usize::try_from(v)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}
