//! Guest RAM: one contiguous host mapping shown to the guest at a guest-physical base.
//!
//! On a node this is the node's view of the ssi-dp region (registered with the userfaultfd,
//! kernel faults allowed); in tests a plain anonymous mapping or a uffd-registered one. The
//! VMM never owns the fault handling: it reads and writes through this type, and KVM maps the
//! same host range as one memory slot, so every access, the VMM's and the guest's, goes
//! through the host page tables the data plane manages.

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

/// Errors of guest-memory construction and access.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Size or alignment refused.
    #[error(
        "guest memory [{gpa_base:#x}, +{size:#x}) at host {host:#x} is not page aligned or empty: \
         pass a page-aligned, non-empty mapping"
    )]
    Shape {
        /// Host address.
        host: usize,
        /// Bytes.
        size: usize,
        /// Guest-physical base.
        gpa_base: u64,
    },
    /// The region could not be created.
    #[error("cannot map {size:#x} bytes of guest memory: {reason}; check the size and ulimit -v")]
    Map {
        /// Bytes.
        size: usize,
        /// What vm-memory said.
        reason: String,
    },
    /// An access falls outside guest RAM.
    #[error(
        "guest access [{gpa:#x}, +{len:#x}) is outside guest RAM [{base:#x}, +{size:#x}): \
         fix the address or give the guest more memory"
    )]
    OutOfRange {
        /// First byte.
        gpa: u64,
        /// Bytes.
        len: usize,
        /// RAM base.
        base: u64,
        /// RAM size.
        size: usize,
    },
}

/// Guest RAM. Cheap to clone (the mapping is shared).
#[derive(Debug, Clone)]
pub struct GuestMemory {
    mem: GuestMemoryMmap,
    host: usize,
    size: usize,
    gpa_base: u64,
}

impl GuestMemory {
    /// Wraps an existing mapping: `size` bytes at `host` become guest RAM at `gpa_base`.
    ///
    /// # Safety
    ///
    /// `[host, host + size)` must be a readable and writable private or shared mapping that
    /// stays mapped (it may be uffd-registered and have pages dropped) for as long as this
    /// value, any clone of it, and any VM built on it exist. The mapping may be accessed
    /// concurrently by vCPUs and by the VMM; the caller must not rely on exclusive access.
    pub unsafe fn from_raw(host: *mut u8, size: usize, gpa_base: u64) -> Result<Self, MemoryError> {
        let page = crate::layout::PAGE_SIZE as usize;
        let shape = MemoryError::Shape {
            host: host as usize,
            size,
            gpa_base,
        };
        if host.is_null()
            || size == 0
            || (host as usize) % page != 0
            || size % page != 0
            || gpa_base % page as u64 != 0
            || gpa_base.checked_add(size as u64).is_none()
        {
            return Err(shape);
        }
        let map_err = |reason: String| MemoryError::Map { size, reason };
        // SAFETY: the caller guarantees [host, host + size) is a live read/write mapping for
        // the lifetime of the returned value; vm-memory does not unmap a raw region on drop.
        let region = unsafe {
            MmapRegion::build_raw(
                host,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            )
        }
        .map_err(|e| map_err(e.to_string()))?;
        Self::from_region(region, gpa_base)
    }

    /// Fresh anonymous guest RAM (zero-filled on first touch, not reserved up front).
    pub fn anonymous(size: usize, gpa_base: u64) -> Result<Self, MemoryError> {
        let page = crate::layout::PAGE_SIZE as usize;
        if size == 0 || size % page != 0 || gpa_base % page as u64 != 0 {
            return Err(MemoryError::Shape {
                host: 0,
                size,
                gpa_base,
            });
        }
        let region = MmapRegion::build(
            None,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| MemoryError::Map {
            size,
            reason: e.to_string(),
        })?;
        Self::from_region(region, gpa_base)
    }

    fn from_region(region: MmapRegion, gpa_base: u64) -> Result<Self, MemoryError> {
        let size = region.size();
        let host = region.as_ptr() as usize;
        let map_err = |reason: String| MemoryError::Map { size, reason };
        let region = GuestRegionMmap::new(region, GuestAddress(gpa_base))
            .ok_or_else(|| map_err("guest address range wraps".into()))?;
        let mem =
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| map_err(e.to_string()))?;
        Ok(GuestMemory {
            mem,
            host,
            size,
            gpa_base,
        })
    }

    /// Host address of the first byte (for KVM's memory slot).
    pub fn host_addr(&self) -> usize {
        self.host
    }

    /// Bytes of RAM.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Guest-physical address of the first byte.
    pub fn gpa_base(&self) -> u64 {
        self.gpa_base
    }

    /// One past the last guest-physical address.
    pub fn gpa_end(&self) -> u64 {
        self.gpa_base + self.size as u64
    }

    /// The vm-memory view (what linux-loader writes through).
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), MemoryError> {
        let inside = gpa >= self.gpa_base
            && gpa
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.gpa_end());
        if inside {
            Ok(())
        } else {
            Err(MemoryError::OutOfRange {
                gpa,
                len,
                base: self.gpa_base,
                size: self.size,
            })
        }
    }

    /// Copies `bytes` to guest-physical `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.check(gpa, bytes.len())?;
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| self.out_of_range(gpa, bytes.len()))
    }

    /// Fills `buf` from guest-physical `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(gpa, buf.len())?;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| self.out_of_range(gpa, buf.len()))
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<(), MemoryError> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn out_of_range(&self, gpa: u64, len: usize) -> MemoryError {
        MemoryError::OutOfRange {
            gpa,
            len,
            base: self.gpa_base,
            size: self.size,
        }
    }

    /// True when `[gpa, gpa + len)` is RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa_base && gpa.checked_add(len).is_some_and(|e| e <= self.gpa_end())
    }

    /// Last addressable byte, as vm-memory sees it.
    pub fn last_addr(&self) -> u64 {
        self.mem.last_addr().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let m = GuestMemory::anonymous(1 << 20, 0x10_0000).unwrap();
        m.write_u64(0x10_0008, 0xdead_beef).unwrap();
        assert_eq!(m.read_u64(0x10_0008).unwrap(), 0xdead_beef);
        assert_eq!(m.last_addr(), 0x1f_ffff);
        assert!(matches!(
            m.write_u64(0x1f_fffc, 1),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.read_u64(0xf_fff8),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.read_u64(u64::MAX - 2),
            Err(MemoryError::OutOfRange { .. })
        ));
    }

    #[test]
    fn from_raw_shares_the_callers_mapping() {
        let owner = GuestMemory::anonymous(64 << 10, 0).unwrap();
        // SAFETY: `owner` keeps the mapping alive for the whole test and outlives `view`.
        let view = unsafe { GuestMemory::from_raw(owner.host_addr() as *mut u8, 64 << 10, 0x4000) }
            .unwrap();
        view.write_u64(0x4000 + 16, 77).unwrap();
        assert_eq!(owner.read_u64(16).unwrap(), 77);
        // SAFETY: refused before any access: the pointer is misaligned.
        let bad = unsafe { GuestMemory::from_raw((owner.host_addr() + 8) as *mut u8, 4096, 0) };
        assert!(matches!(bad, Err(MemoryError::Shape { .. })));
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(GuestMemory::anonymous(0, 0).is_err());
        assert!(GuestMemory::anonymous(4097, 0).is_err());
        assert!(GuestMemory::anonymous(4096, 12).is_err());
    }
}
