//! The CPUID a Linux guest across nodes sees, edited from what the host's KVM supports:
//!
//! * an xAPIC (no x2APIC: its MSRs cannot be routed to userspace while an in-kernel LAPIC
//!   exists, and 255 ids are enough here), the TSC-deadline timer and ARAT (the timer our
//!   userspace LAPIC emulates; Linux then needs no PIT to calibrate);
//! * the hypervisor bit and KVM's leaves with kvm-clock only: no PV EOI, PV IPI, PV unhalt,
//!   async page faults, steal time or PV TLB flush, which all assume KVM's in-kernel LAPIC or
//!   a vCPU in this node's VM;
//! * every vCPU a package of its own (one thread, one core), since vCPUs on different nodes
//!   share no cache; its APIC id in leaf 1 and the topology leaves.

use kvm_bindings::kvm_cpuid_entry2;

/// KVM paravirtual feature bits kept (CPUID 0x4000_0001 EAX): clocksource, no-op I/O
/// delay, clocksource2, stable clocksource bit.
const KVM_FEATURES_KEPT: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 24);

/// Rewrites one entry of KVM's supported CPUID for vCPU `apic_id`.
pub fn edit(e: &mut kvm_cpuid_entry2, apic_id: u32) {
    match e.function {
        1 => {
            // APIC id, one logical processor per package, CLFLUSH size kept.
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (1 << 16);
            e.ecx &= !(1 << 21); // x2APIC
            e.ecx |= 1 << 24; // TSC deadline
            e.ecx |= 1 << 31; // hypervisor
            e.ecx &= !(1 << 3); // MONITOR/MWAIT
            e.edx |= 1 << 9; // APIC
            e.edx &= !(1 << 28); // HTT
        }
        4 => {
            // Deterministic cache parameters: no sharing, one core per package.
            e.eax &= 0x3fff;
        }
        6 => e.eax |= 1 << 2, // ARAT: the APIC timer runs in every C-state
        0xb | 0x1f => {
            // Topology: one thread at the SMT level, one core at the core level.
            let level = e.index;
            e.eax = 0;
            e.ebx = u32::from(level < 2);
            e.ecx = match level {
                0 => (1 << 8) | level,
                1 => (2 << 8) | level,
                _ => level,
            };
            e.edx = apic_id;
        }
        0x4000_0001 => {
            e.eax &= KVM_FEATURES_KEPT;
            e.edx = 0;
        }
        0x8000_0001 => {
            e.ecx &= !(1 << 22); // TOPOEXT
            e.ecx &= !(1 << 1); // CMP_LEGACY
        }
        0x8000_0008 => e.ecx = 0, // one core per package
        0x8000_001e => {
            e.eax = apic_id;
            e.ebx = 0;
            e.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_gives_an_xapic_with_tsc_deadline_under_a_hypervisor() {
        let mut e = entry(1, 0);
        edit(&mut e, 3);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 1);
        assert_eq!(e.ecx & (1 << 21), 0);
        assert_ne!(e.ecx & (1 << 24), 0);
        assert_ne!(e.ecx & (1 << 31), 0);
        assert_ne!(e.edx & (1 << 9), 0);
        assert_eq!(e.edx & (1 << 28), 0);
    }

    #[test]
    fn kvm_leaf_keeps_only_the_clock() {
        let mut e = entry(0x4000_0001, 0);
        edit(&mut e, 0);
        assert_eq!(e.eax, KVM_FEATURES_KEPT);
        assert_eq!(e.edx, 0);
    }

    #[test]
    fn topology_leaves_make_each_vcpu_its_own_package() {
        for level in 0..3 {
            let mut e = entry(0xb, level);
            edit(&mut e, 5);
            assert_eq!(e.edx, 5);
            assert_eq!(e.eax, 0, "no id bits below the package");
            assert_eq!(e.ecx & 0xff, level);
        }
        let mut e = entry(0x8000_0008, 0);
        edit(&mut e, 1);
        assert_eq!(e.ecx, 0);
    }
}
