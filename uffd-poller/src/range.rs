//! Validation of the address ranges every userfaultfd call takes: non-empty, page-aligned,
//! not wrapping. Done in user space so that bad input gets a precise error instead of the
//! kernel's bare `EINVAL`.

/// A range that the kernel would reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Zero length.
    #[error("the range at {start:#x} is empty: pass a length of at least one page")]
    Empty {
        /// Start address.
        start: usize,
    },
    /// Start or length not a multiple of the page size.
    #[error(
        "the range {start:#x}+{len:#x} is not page-aligned: start and length must be \
         multiples of the page size ({page_size} bytes)"
    )]
    Unaligned {
        /// Start address.
        start: usize,
        /// Length in bytes.
        len: usize,
        /// The page size the range must be aligned to.
        page_size: usize,
    },
    /// `start + len` overflows the address space.
    #[error("the range {start:#x}+{len:#x} runs past the end of the address space")]
    Overflow {
        /// Start address.
        start: usize,
        /// Length in bytes.
        len: usize,
    },
}

/// Checks that `start..start + len` is a non-empty, page-aligned range that does not wrap.
/// `page_size` must be a power of two.
#[inline]
pub(crate) fn check(start: usize, len: usize, page_size: usize) -> Result<(), RangeError> {
    debug_assert!(page_size.is_power_of_two());
    if len == 0 {
        return Err(RangeError::Empty { start });
    }
    if (start | len) & (page_size - 1) != 0 {
        return Err(RangeError::Unaligned {
            start,
            len,
            page_size,
        });
    }
    if start.checked_add(len).is_none() {
        return Err(RangeError::Overflow { start, len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_aligned_ranges() {
        assert_eq!(check(0x1000, 0x3000, 4096), Ok(()));
    }

    #[test]
    fn rejects_bad_ranges() {
        assert_eq!(
            check(0x1000, 0, 4096),
            Err(RangeError::Empty { start: 0x1000 })
        );
        assert!(matches!(
            check(0x1001, 0x1000, 4096),
            Err(RangeError::Unaligned { .. })
        ));
        assert!(matches!(
            check(0x1000, 0x1800, 4096),
            Err(RangeError::Unaligned { .. })
        ));
        assert_eq!(
            check(usize::MAX - 0xfff, 0x2000, 4096),
            Err(RangeError::Overflow {
                start: usize::MAX - 0xfff,
                len: 0x2000
            })
        );
    }
}
