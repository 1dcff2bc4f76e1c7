//! The test-guest machine code: four CPL3 payloads written in assembly, assembled into the
//! vmm crate itself (no external tool, no prebuilt blob) and copied into guest memory as one
//! position-independent blob bounded by two symbols.
//!
//! Entry state (set by [`crate::cpu::Boot`]): 64-bit mode, CPL3, RDI = vCPU index, RSI =
//! parameter block GPA, RSP = the vCPU's stack. The payloads only use RIP-relative control
//! flow and absolute data addresses from the parameter block; they never take an exception
//! (no IDT is installed) and report through 8-byte stores to the doorbell page, each of which
//! is an MMIO exit (see [`crate::protocol`]). After DONE the vCPU is never resumed.
//!
//! Register conventions inside the payloads: r12 = vCPU count, r13 = vCPU index, r14 =
//! parameter block, r15 = doorbell; r10 and r11 are scratch for the macros.

use super::params as p;
use crate::protocol::keys;

std::arch::global_asm!(
    // Macros shared by the payloads.
    ".macro SSI_PROLOGUE",
    "mov r13, rdi",
    "mov r14, rsi",
    "mov rax, {magic}",
    "cmp [r14 + {p_magic}], rax",
    "jne ssi_dp_vmm_guest_bad_params",
    "mov r12, [r14 + {p_vcpus}]",
    "mov r15, [r14 + {p_doorbell}]",
    ".endm",
    // REPORT key, value: two doorbell stores (two exits).
    ".macro SSI_REPORT key, value",
    "mov [r15 + 8], \\key",
    "mov [r15 + 16], \\value",
    ".endm",
    ".macro SSI_DONE",
    "mov qword ptr [r15 + 24], 0",
    ".Lssi_done_spin\\@:",
    "pause",
    "jmp .Lssi_done_spin\\@",
    ".endm",
    // BARRIER n: arrive at counter n of the sync page, wait until all vCPUs arrived.
    ".macro SSI_BARRIER n",
    "mov r10, [r14 + {p_sync}]",
    "lea r10, [r10 + 64 * \\n]",
    "lock inc qword ptr [r10]",
    ".Lssi_barrier_wait\\@:",
    "mov r11, [r10]",
    "cmp r11, r12",
    "jae .Lssi_barrier_out\\@",
    "pause",
    "jmp .Lssi_barrier_wait\\@",
    ".Lssi_barrier_out\\@:",
    ".endm",
    ".pushsection .text.ssi_dp_vmm_guests, \"ax\", @progbits",
    ".balign 16",
    ".globl ssi_dp_vmm_guest_blob_start",
    ".globl ssi_dp_vmm_guest_blob_end",
    ".globl ssi_dp_vmm_guest_atomics",
    ".globl ssi_dp_vmm_guest_ticket",
    ".globl ssi_dp_vmm_guest_sum",
    ".globl ssi_dp_vmm_guest_latency",
    ".globl ssi_dp_vmm_guest_bad_params",
    "ssi_dp_vmm_guest_blob_start:",
    // Bad parameter block: no doorbell known, so fault on purpose (the host sees a shutdown).
    "ssi_dp_vmm_guest_bad_params:",
    "ud2",
    // 1. Atomics: every vCPU does `iterations` rounds of `lock inc` over the counters.
    ".balign 16",
    "ssi_dp_vmm_guest_atomics:",
    "SSI_PROLOGUE",
    "mov rcx, [r14 + {p_iterations}]",
    ".Latomics_round:",
    "mov rbx, [r14 + {p_counters}]",
    "mov r8, [r14 + {p_counter_count}]",
    ".Latomics_counter:",
    "lock inc qword ptr [rbx]",
    "add rbx, [r14 + {p_counter_stride}]",
    "dec r8",
    "jnz .Latomics_counter",
    "dec rcx",
    "jnz .Latomics_round",
    "SSI_BARRIER 0",
    "test r13, r13",
    "jnz .Latomics_done",
    "mov rbx, [r14 + {p_counters}]",
    "xor r8, r8",
    ".Latomics_report:",
    "mov rax, {k_counter}",
    "or rax, r8",
    "mov rdx, [rbx]",
    "SSI_REPORT rax, rdx",
    "add rbx, [r14 + {p_counter_stride}]",
    "inc r8",
    "cmp r8, [r14 + {p_counter_count}]",
    "jb .Latomics_report",
    ".Latomics_done:",
    "SSI_DONE",
    // 2. Ticket lock protecting a plain (non-atomic) read-modify-write of a counter.
    ".balign 16",
    "ssi_dp_vmm_guest_ticket:",
    "SSI_PROLOGUE",
    "mov rcx, [r14 + {p_iterations}]",
    "mov rbx, [r14 + {p_lock}]",
    "mov rsi, [r14 + {p_locked_counter}]",
    "xor r9, r9",
    ".Lticket_round:",
    "mov eax, 1",
    "lock xadd qword ptr [rbx], rax",
    ".Lticket_wait:",
    "cmp rax, qword ptr [rbx + 64]",
    "je .Lticket_got",
    "pause",
    "jmp .Lticket_wait",
    ".Lticket_got:",
    "mov rdx, [rsi]",
    "add rdx, 1",
    "mov [rsi], rdx",
    "inc r9",
    "mov rdx, [rbx + 64]",
    "inc rdx",
    "mov [rbx + 64], rdx",
    "dec rcx",
    "jnz .Lticket_round",
    "mov rax, {k_acquired}",
    "or rax, r13",
    "SSI_REPORT rax, r9",
    "SSI_BARRIER 1",
    "test r13, r13",
    "jnz .Lticket_done",
    "mov rax, {k_locked_total}",
    "mov rdx, [rsi]",
    "SSI_REPORT rax, rdx",
    ".Lticket_done:",
    "SSI_DONE",
    // 3. Parallel sum: vCPU i sums elements [i*n/v, (i+1)*n/v), stores its partial in its own
    //    page, vCPU 0 adds the stored partials after the barrier.
    ".balign 16",
    "ssi_dp_vmm_guest_sum:",
    "SSI_PROLOGUE",
    "mov rax, [r14 + {p_array_len}]",
    "mul r13",
    "div r12",
    "mov r8, rax",
    "mov rax, [r14 + {p_array_len}]",
    "lea r9, [r13 + 1]",
    "mul r9",
    "div r12",
    "mov r9, rax",
    "mov rbx, [r14 + {p_array}]",
    "xor rcx, rcx",
    ".Lsum_loop:",
    "cmp r8, r9",
    "jae .Lsum_stored",
    "add rcx, [rbx + 8 * r8]",
    "inc r8",
    "jmp .Lsum_loop",
    ".Lsum_stored:",
    "mov r10, [r14 + {p_partials}]",
    "mov rax, r13",
    "shl rax, 12",
    "mov [r10 + rax], rcx",
    "mov rax, {k_partial}",
    "or rax, r13",
    "SSI_REPORT rax, rcx",
    "SSI_BARRIER 2",
    "test r13, r13",
    "jnz .Lsum_done",
    "mov r10, [r14 + {p_partials}]",
    "xor rcx, rcx",
    "xor r8, r8",
    ".Lsum_add:",
    "mov rax, r8",
    "shl rax, 12",
    "add rcx, [r10 + rax]",
    "inc r8",
    "cmp r8, r12",
    "jb .Lsum_add",
    "mov rax, {k_sum}",
    "SSI_REPORT rax, rcx",
    ".Lsum_done:",
    "SSI_DONE",
    // 4. Fault latency: rdtsc around the first load from each page of the slice of vCPU
    //    (i + 1) mod n (remote when nodes home equal shares in vCPU order).
    ".balign 16",
    "ssi_dp_vmm_guest_latency:",
    "SSI_PROLOGUE",
    "mov rbx, [r14 + {p_touch_pages}]",
    "lea rax, [r13 + 1]",
    "cmp rax, r12",
    "jb .Llatency_slice",
    "xor eax, eax",
    ".Llatency_slice:",
    "mul qword ptr [r14 + {p_touch_stride}]",
    "add rax, [r14 + {p_touch_base}]",
    "mov rsi, rax",
    "xor r8, r8",
    "xor r9, r9",
    ".Llatency_loop:",
    "cmp r8, rbx",
    "jae .Llatency_end",
    "lfence",
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "mov rcx, rax",
    "mov rdx, [rsi]",
    "add r9, rdx",
    "lfence",
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "sub rax, rcx",
    "mov rdx, rax",
    "mov rax, {k_touch}",
    "or rax, r8",
    "SSI_REPORT rax, rdx",
    "add rsi, 4096",
    "inc r8",
    "jmp .Llatency_loop",
    ".Llatency_end:",
    "mov rax, {k_checksum}",
    "or rax, r13",
    "SSI_REPORT rax, r9",
    "SSI_DONE",
    "ssi_dp_vmm_guest_blob_end:",
    ".popsection",
    magic = const p::MAGIC,
    p_magic = const p::MAGIC_OFF,
    p_vcpus = const p::VCPUS,
    p_doorbell = const p::DOORBELL,
    p_iterations = const p::ITERATIONS,
    p_sync = const p::SYNC,
    p_counters = const p::COUNTERS,
    p_counter_count = const p::COUNTER_COUNT,
    p_counter_stride = const p::COUNTER_STRIDE,
    p_lock = const p::LOCK,
    p_locked_counter = const p::LOCKED_COUNTER,
    p_array = const p::ARRAY,
    p_array_len = const p::ARRAY_LEN,
    p_partials = const p::PARTIALS,
    p_touch_base = const p::TOUCH_BASE,
    p_touch_stride = const p::TOUCH_STRIDE,
    p_touch_pages = const p::TOUCH_PAGES,
    k_counter = const keys::key(keys::COUNTER, 0),
    k_acquired = const keys::key(keys::ACQUIRED, 0),
    k_locked_total = const keys::key(keys::LOCKED_TOTAL, 0),
    k_partial = const keys::key(keys::PARTIAL, 0),
    k_sum = const keys::key(keys::SUM, 0),
    k_touch = const keys::key(keys::TOUCH_TICKS, 0),
    k_checksum = const keys::key(keys::TOUCH_CHECKSUM, 0),
);

extern "C" {
    static ssi_dp_vmm_guest_blob_start: u8;
    static ssi_dp_vmm_guest_blob_end: u8;
    static ssi_dp_vmm_guest_atomics: u8;
    static ssi_dp_vmm_guest_ticket: u8;
    static ssi_dp_vmm_guest_sum: u8;
    static ssi_dp_vmm_guest_latency: u8;
}

/// Which payload entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Atomics,
    Ticket,
    Sum,
    Latency,
}

/// The assembled blob (all payloads and helpers).
pub(crate) fn blob() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm above in one section, start before
    // end; the bytes between them are the immutable machine code of this binary's text
    // section, which lives for the whole program.
    unsafe {
        let start = &raw const ssi_dp_vmm_guest_blob_start;
        let end = &raw const ssi_dp_vmm_guest_blob_end;
        std::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Offset of `entry` inside [`blob`].
pub(crate) fn entry_offset(entry: Entry) -> u64 {
    let start = &raw const ssi_dp_vmm_guest_blob_start;
    let sym = match entry {
        Entry::Atomics => &raw const ssi_dp_vmm_guest_atomics,
        Entry::Ticket => &raw const ssi_dp_vmm_guest_ticket,
        Entry::Sum => &raw const ssi_dp_vmm_guest_sum,
        Entry::Latency => &raw const ssi_dp_vmm_guest_latency,
    };
    (sym as usize - start as usize) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_bounded_and_entries_lie_inside() {
        let b = blob();
        assert!(!b.is_empty() && (b.len() as u64) < crate::layout::TEST_CODE_MAX);
        assert_eq!(b[..2], [0x0f, 0x0b], "blob starts with the bad-params ud2");
        let mut offs: Vec<u64> = [Entry::Atomics, Entry::Ticket, Entry::Sum, Entry::Latency]
            .into_iter()
            .map(entry_offset)
            .collect();
        for o in &offs {
            assert!(*o > 0 && *o < b.len() as u64);
            assert_eq!(o % 16, 0);
        }
        offs.dedup();
        assert_eq!(offs.len(), 4);
    }
}
