//! userfaultfd features (`UFFD_FEATURE_*`) and their negotiation: what the caller requires,
//! what it would like, what the kernel offers, and what the handshake should ask for.

use crate::flags::named_flags;
use crate::sys;

named_flags! {
    /// A set of userfaultfd features (`UFFD_FEATURE_*`).
    ///
    /// Some bits enable behaviour (events, thread ids, exact addresses, SIGBUS mode, async WP);
    /// others only state what the kernel supports (`MISSING_SHMEM`, `MINOR_SHMEM`, `MOVE`,
    /// `POISON`, ...). Requiring a support bit makes the handshake fail early, with a clear
    /// error, on a kernel without it.
    pub struct Features {
        /// Write-protect faults are reported with `FaultFlags::WP` (register mode WP).
        const PAGEFAULT_FLAG_WP = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        /// `Event::Fork` on fork(2); the child's uffd arrives in the event. Needs
        /// `CAP_SYS_PTRACE`.
        const EVENT_FORK = sys::UFFD_FEATURE_EVENT_FORK;
        /// `Event::Remap` when mremap(2) moves a registered range.
        const EVENT_REMAP = sys::UFFD_FEATURE_EVENT_REMAP;
        /// `Event::Remove` when madvise(MADV_DONTNEED / MADV_REMOVE) drops registered pages.
        const EVENT_REMOVE = sys::UFFD_FEATURE_EVENT_REMOVE;
        /// Register mode MISSING works on hugetlbfs.
        const MISSING_HUGETLBFS = sys::UFFD_FEATURE_MISSING_HUGETLBFS;
        /// Register mode MISSING works on shmem (memfd, tmpfs, shared anonymous).
        const MISSING_SHMEM = sys::UFFD_FEATURE_MISSING_SHMEM;
        /// `Event::Unmap` when munmap(2) removes a registered range.
        const EVENT_UNMAP = sys::UFFD_FEATURE_EVENT_UNMAP;
        /// Faults raise SIGBUS in the faulting thread instead of producing events.
        const SIGBUS = sys::UFFD_FEATURE_SIGBUS;
        /// Fault events carry the faulting thread's id (`Fault::thread_id`).
        const THREAD_ID = sys::UFFD_FEATURE_THREAD_ID;
        /// Register mode MINOR works on hugetlbfs.
        const MINOR_HUGETLBFS = sys::UFFD_FEATURE_MINOR_HUGETLBFS;
        /// Register mode MINOR works on shmem.
        const MINOR_SHMEM = sys::UFFD_FEATURE_MINOR_SHMEM;
        /// Fault addresses keep their offset inside the page (otherwise page-aligned).
        const EXACT_ADDRESS = sys::UFFD_FEATURE_EXACT_ADDRESS;
        /// Register mode WP works on shmem and hugetlbfs.
        const WP_HUGETLBFS_SHMEM = sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        /// Write protection also covers never-populated anonymous pages.
        const WP_UNPOPULATED = sys::UFFD_FEATURE_WP_UNPOPULATED;
        /// `Uffd::poison` (UFFDIO_POISON) is available.
        const POISON = sys::UFFD_FEATURE_POISON;
        /// Write-protect faults are resolved by the kernel without an event (implies
        /// `WP_UNPOPULATED`).
        const WP_ASYNC = sys::UFFD_FEATURE_WP_ASYNC;
        /// `Uffd::move_pages` (UFFDIO_MOVE) is available.
        const MOVE = sys::UFFD_FEATURE_MOVE;
    }
}

/// Why a feature set cannot be negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// The kernel lacks features the caller requires.
    #[error(
        "the kernel lacks required userfaultfd features: {missing} (it offers: {available}); \
         run on a newer kernel (UFFDIO_MOVE needs Linux 6.8, UFFDIO_POISON 6.6) or stop \
         requiring them"
    )]
    Missing {
        /// Required features the kernel does not offer.
        missing: Features,
        /// Everything the kernel offers.
        available: Features,
    },
}

/// Computes the features to ask for in the `UFFDIO_API` handshake: every `required` feature
/// (an error naming the absent ones if the kernel lacks any) plus the `optional` ones the
/// kernel offers.
///
/// `available` is what the kernel reported in a feature probe.
pub fn negotiate(
    available: Features,
    required: Features,
    optional: Features,
) -> Result<Features, FeatureError> {
    let missing = required.difference(available);
    if !missing.is_empty() {
        return Err(FeatureError::Missing { missing, available });
    }
    let mut request = required.union(optional.intersection(available));
    // The kernel turns WP_UNPOPULATED on with WP_ASYNC; say so in the granted set.
    if request.contains(Features::WP_ASYNC) {
        request |= Features::WP_UNPOPULATED;
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_and_available_optional_are_requested() {
        let available = Features::THREAD_ID | Features::EVENT_REMOVE | Features::MOVE;
        let got = negotiate(
            available,
            Features::THREAD_ID,
            Features::MOVE | Features::POISON,
        )
        .unwrap();
        assert_eq!(got, Features::THREAD_ID | Features::MOVE);
    }

    #[test]
    fn missing_required_features_are_named_precisely() {
        let available = Features::THREAD_ID | Features::PAGEFAULT_FLAG_WP;
        let err = negotiate(
            available,
            Features::THREAD_ID | Features::MOVE | Features::POISON,
            Features::empty(),
        )
        .unwrap_err();
        let FeatureError::Missing {
            missing,
            available: a,
        } = err;
        assert_eq!(missing, Features::MOVE | Features::POISON);
        assert_eq!(a, available);
        let text = err.to_string();
        assert!(
            text.contains("features: POISON | MOVE (it offers: PAGEFAULT_FLAG_WP | THREAD_ID)"),
            "{text}"
        );
    }

    #[test]
    fn wp_async_implies_wp_unpopulated() {
        let available = Features::all();
        let got = negotiate(available, Features::WP_ASYNC, Features::empty()).unwrap();
        assert!(got.contains(Features::WP_UNPOPULATED));
    }

    #[test]
    fn feature_bits_match_the_kernel_api_mask() {
        // Linux 6.8 offers bits 0..=16 (API mask 0x1ffff); the named set covers exactly those.
        assert_eq!(Features::all().bits(), 0x1ffff);
    }
}
