//! A minimal userfaultfd for the tests (raw ioctls; the uffd-poller crate is written in
//! parallel): a region registered for MISSING faults *without* UFFD_USER_MODE_ONLY, and a
//! handler thread that fills each faulting page from a source buffer (UFFDIO_COPY), or with
//! zeros (UFFDIO_ZEROPAGE), recording which pages faulted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const PAGE: usize = 4096;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u64,
}

/// Where missing pages come from.
#[derive(Clone, Copy)]
pub enum Fill {
    /// Zero pages.
    Zero,
    /// Copies of the same offset in a source mapping of the same size.
    CopyFrom(usize),
}

/// A uffd-registered anonymous region and its handler thread.
pub struct UffdRegion {
    pub addr: *mut u8,
    pub len: usize,
    uffd: i32,
    stop: Arc<AtomicBool>,
    faults: Arc<Mutex<BTreeSet<usize>>>,
    handler: Option<JoinHandle<()>>,
}

// SAFETY: the raw pointer is an mmap owned by this value; the handler thread and vCPUs only
// access it through the kernel.
unsafe impl Send for UffdRegion {}
// SAFETY: as above; shared access only reads plain fields.
unsafe impl Sync for UffdRegion {}

fn check(rc: libc::c_int, what: &str) {
    if rc != 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
}

impl UffdRegion {
    /// Maps `len` bytes, registers them for MISSING faults (kernel faults allowed) and starts
    /// the handler.
    pub fn new(len: usize, fill: Fill) -> Self {
        // SAFETY: anonymous private mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        // SAFETY: plain syscall; flags without UFFD_USER_MODE_ONLY so kernel (KVM) accesses
        // fault into this uffd too.
        let uffd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) }
                as i32;
        assert!(
            uffd >= 0,
            "userfaultfd: {}",
            std::io::Error::last_os_error()
        );
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: valid fd and a properly sized struct.
        check(
            unsafe { libc::ioctl(uffd, UFFDIO_API, &mut api) },
            "UFFDIO_API",
        );
        let mut reg = UffdioRegister {
            start: addr as u64,
            len: len as u64,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: valid fd, the range is our mapping.
        check(
            unsafe { libc::ioctl(uffd, UFFDIO_REGISTER, &mut reg) },
            "UFFDIO_REGISTER",
        );
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, f, base) = (stop.clone(), faults.clone(), addr as usize);
        let handler = std::thread::spawn(move || serve(uffd, base, len, fill, &s, &f));
        UffdRegion {
            addr: addr.cast(),
            len,
            uffd,
            stop,
            faults,
            handler: Some(handler),
        }
    }

    /// Offsets (page aligned) of every page that faulted so far.
    pub fn faulted(&self) -> BTreeSet<usize> {
        self.faults.lock().unwrap().clone()
    }
}

impl Drop for UffdRegion {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handler.take() {
            h.join().unwrap();
        }
        // SAFETY: our fd and our mapping, no longer used by anyone.
        unsafe {
            libc::close(self.uffd);
            libc::munmap(self.addr.cast(), self.len);
        }
    }
}

fn serve(
    uffd: i32,
    base: usize,
    len: usize,
    fill: Fill,
    stop: &AtomicBool,
    faults: &Mutex<BTreeSet<usize>>,
) {
    let mut msgs = [UffdMsg {
        event: 0,
        reserved1: 0,
        reserved2: 0,
        reserved3: 0,
        flags: 0,
        address: 0,
        ptid: 0,
    }; 16];
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: uffd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 10) };
        if n <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer of 16 messages of the kernel's layout.
        let got =
            unsafe { libc::read(uffd, msgs.as_mut_ptr().cast(), std::mem::size_of_val(&msgs)) };
        if got <= 0 {
            continue;
        }
        for m in &msgs[..got as usize / std::mem::size_of::<UffdMsg>()] {
            if m.event != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let page = (m.address as usize & !(PAGE - 1)).clamp(base, base + len - PAGE);
            faults.lock().unwrap().insert(page - base);
            let rc = match fill {
                Fill::Zero => {
                    let mut z = UffdioZeropage {
                        start: page as u64,
                        len: PAGE as u64,
                        mode: 0,
                        zeropage: 0,
                    };
                    // SAFETY: valid fd; the page lies in the registered range.
                    unsafe { libc::ioctl(uffd, UFFDIO_ZEROPAGE, &mut z) }
                }
                Fill::CopyFrom(src) => {
                    let mut c = UffdioCopy {
                        dst: page as u64,
                        src: (src + (page - base)) as u64,
                        len: PAGE as u64,
                        mode: 0,
                        copy: 0,
                    };
                    // SAFETY: valid fd; dst in the registered range, src a readable page of
                    // the source mapping at the same offset.
                    unsafe { libc::ioctl(uffd, UFFDIO_COPY, &mut c) }
                }
            };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert!(
                rc == 0 || errno == Some(libc::EEXIST),
                "filling a page failed: {errno:?}"
            );
        }
    }
}
