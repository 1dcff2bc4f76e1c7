//! The local APIC of one vCPU, emulated in userspace (xAPIC MMIO registers at 0xFEE00000):
//! interrupt request/in-service/trigger-mode registers, task and processor priority, the
//! interrupt command register, the local vector table and the timer in one-shot, periodic
//! and TSC-deadline modes.
//!
//! A pure register model: no KVM, no threads, no clock. The vCPU thread that owns it feeds in
//! accepted interrupts and the current time, and acts on the [`Effect`]s register writes
//! return (send an IPI, tell the I/O APIC about an EOI, re-arm its host timer, publish a new
//! logical id). Why in userspace at all: KVM's in-kernel LAPIC drops an IPI whose
//! destination is a vCPU this node's VM does not run, without telling userspace (docs/vmm.md,
//! "Interrupts across nodes").

/// Register offsets in the 4 KiB xAPIC page.
pub mod reg {
    /// Local APIC id.
    pub const ID: u32 = 0x020;
    /// Version.
    pub const VERSION: u32 = 0x030;
    /// Task priority.
    pub const TPR: u32 = 0x080;
    /// Arbitration priority.
    pub const APR: u32 = 0x090;
    /// Processor priority.
    pub const PPR: u32 = 0x0A0;
    /// End of interrupt.
    pub const EOI: u32 = 0x0B0;
    /// Remote read.
    pub const RRD: u32 = 0x0C0;
    /// Logical destination.
    pub const LDR: u32 = 0x0D0;
    /// Destination format.
    pub const DFR: u32 = 0x0E0;
    /// Spurious interrupt vector (bit 8: APIC software enable).
    pub const SVR: u32 = 0x0F0;
    /// In-service register, 8 × 32 bits.
    pub const ISR: u32 = 0x100;
    /// Trigger mode register.
    pub const TMR: u32 = 0x180;
    /// Interrupt request register.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// LVT corrected machine check.
    pub const LVT_CMCI: u32 = 0x2F0;
    /// Interrupt command, low half (a write sends).
    pub const ICR_LO: u32 = 0x300;
    /// Interrupt command, high half (destination).
    pub const ICR_HI: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance counters.
    pub const LVT_PERF: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

/// Guest-physical base of the local APIC page (the MADT and the APIC base MSR say so).
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
/// Size of the register page.
pub const LAPIC_SIZE: u64 = 0x1000;
/// Version register: integrated APIC version 0x14, six LVT entries (max index 5).
const VERSION: u32 = 0x0005_0014;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// SVR software-enable bit.
const SVR_ENABLED: u32 = 1 << 8;
/// ESR: received illegal vector.
const ESR_RECEIVE_ILLEGAL: u32 = 1 << 6;
/// ESR: send illegal vector.
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
/// Ticks per nanosecond of the APIC timer's input clock before the divider (1 GHz).
const TIMER_TICKS_PER_NS: u64 = 1;

/// How an interrupt is delivered (ICR and I/O APIC redirection bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// To the vector, on every destination.
    Fixed,
    /// To the vector, on one destination (here: the lowest-numbered match).
    LowestPriority,
    /// System management interrupt (not supported; dropped and counted).
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT (level assert; de-assert is ignored as on every CPU since the Pentium 4).
    Init,
    /// Start-up IPI with the vector as the real-mode page.
    StartUp,
    /// External interrupt (8259-style; not supported).
    ExtInt,
}

impl DeliveryMode {
    /// Decodes bits 10:8.
    pub fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            7 => Self::ExtInt,
            _ => return None,
        })
    }

    /// Bits 10:8.
    pub fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::StartUp => 6,
            Self::ExtInt => 7,
        }
    }
}

/// Which LAPICs an interrupt message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The APIC whose id equals this (0xFF: all).
    Physical(u8),
    /// The APICs whose logical id matches this (flat or cluster model; 0xFF: all).
    Logical(u8),
    /// The sender only.
    SelfOnly,
    /// Every APIC, the sender included.
    AllIncludingSelf,
    /// Every APIC but the sender.
    AllExcludingSelf,
}

/// One interrupt message on the (virtual) APIC bus: an IPI, or an I/O APIC redirection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Vector (the page number for a start-up IPI).
    pub vector: u8,
    /// How it is delivered.
    pub delivery: DeliveryMode,
    /// Level triggered (the receiver's TMR bit, and an EOI to the I/O APIC).
    pub level_triggered: bool,
    /// For INIT: assert (true) or de-assert.
    pub assert: bool,
    /// Who receives it.
    pub destination: Destination,
}

/// What a register write asks the owner of the LAPIC to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register change.
    None,
    /// Send this message (ICR write).
    Send(Message),
    /// An EOI retired a level-triggered vector: the I/O APIC clears its remote IRR.
    LevelEoi(u8),
    /// The timer's next expiry changed: re-arm the host timer.
    TimerChanged,
    /// The logical destination (LDR or DFR) changed: publish it to every node.
    LogicalIdChanged,
}

/// Timer mode (LVT timer bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// When the timer next expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// When the guest's TSC reaches this value.
    GuestTsc(u64),
    /// At this host time (the caller's monotonic nanoseconds).
    HostNs(u64),
}

/// A 256-bit vector register (IRR, ISR, TMR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bits256(pub [u32; 8]);

impl Bits256 {
    /// Sets bit `v`.
    pub fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    /// Clears bit `v`.
    pub fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    /// Whether bit `v` is set.
    pub fn get(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    /// The highest set bit.
    pub fn highest(&self) -> Option<u8> {
        (0..8).rev().find_map(|w| {
            let x = self.0[w];
            (x != 0).then(|| (w as u32 * 32 + 31 - x.leading_zeros()) as u8)
        })
    }
}

/// The register state of one local APIC.
#[derive(Debug, Clone)]
pub struct Lapic {
    id: u8,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    esr: u32,
    /// Errors latched since the last ESR write (the ESR shows them after a write).
    esr_pending: u32,
    icr_lo: u32,
    icr_hi: u32,
    /// CMCI, timer, thermal, perf, LINT0, LINT1, error.
    lvt: [u32; 7],
    irr: Bits256,
    isr: Bits256,
    tmr: Bits256,
    timer_initial: u32,
    timer_divide: u32,
    /// Host ns when the one-shot/periodic count was (re)loaded.
    timer_loaded_ns: u64,
    /// Armed one-shot/periodic expiry in host ns (None: not counting).
    timer_expiry_ns: Option<u64>,
    tsc_deadline: u64,
}

const LVT_INDEX: [(u32, usize); 7] = [
    (reg::LVT_CMCI, 0),
    (reg::LVT_TIMER, 1),
    (reg::LVT_THERMAL, 2),
    (reg::LVT_PERF, 3),
    (reg::LVT_LINT0, 4),
    (reg::LVT_LINT1, 5),
    (reg::LVT_ERROR, 6),
];
const TIMER: usize = 1;

impl Lapic {
    /// The power-on state of the APIC with id `id`: every LVT masked, software disabled.
    pub fn new(id: u8) -> Self {
        Lapic {
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            svr: 0xFF,
            esr: 0,
            esr_pending: 0,
            icr_lo: 0,
            icr_hi: 0,
            lvt: [LVT_MASKED; 7],
            irr: Bits256::default(),
            isr: Bits256::default(),
            tmr: Bits256::default(),
            timer_initial: 0,
            timer_divide: 0,
            timer_loaded_ns: 0,
            timer_expiry_ns: None,
            tsc_deadline: 0,
        }
    }

    /// The APIC id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Logical destination register.
    pub fn ldr(&self) -> u32 {
        self.ldr
    }

    /// Destination format register.
    pub fn dfr(&self) -> u32 {
        self.dfr
    }

    /// Whether software has enabled the APIC (SVR bit 8).
    pub fn enabled(&self) -> bool {
        self.svr & SVR_ENABLED != 0
    }

    /// The state INIT leaves behind: the power-on state, keeping the id.
    pub fn init_reset(&mut self) {
        *self = Lapic::new(self.id);
    }

    /// Accepts a fixed or lowest-priority interrupt into the IRR. Returns false when it was
    /// refused (illegal vector, or the APIC is software disabled), as KVM's LAPIC does.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if vector < 16 {
            self.esr_pending |= ESR_RECEIVE_ILLEGAL;
            return false;
        }
        if !self.enabled() {
            return false;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    /// Processor priority: the higher of the task priority and the in-service class.
    pub fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        if (self.tpr & 0xF0) >= (isrv & 0xF0) {
            self.tpr & 0xFF
        } else {
            isrv & 0xF0
        }
    }

    /// The vector the CPU would take now: the highest request above the processor priority.
    pub fn deliverable(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (u32::from(v) & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// The CPU takes `vector` (it was [`Self::deliverable`]): request → in service.
    pub fn ack(&mut self, vector: u8) {
        self.irr.clear(vector);
        self.isr.set(vector);
    }

    /// The armed timer's expiry.
    pub fn expiry(&self) -> Option<Expiry> {
        if self.lvt[TIMER] & LVT_MASKED != 0 && self.timer_mode() != TimerMode::TscDeadline {
            // A masked one-shot still counts down, but raises nothing; no need to wake.
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => {
                (self.tsc_deadline != 0).then_some(Expiry::GuestTsc(self.tsc_deadline))
            }
            _ => self.timer_expiry_ns.map(Expiry::HostNs),
        }
    }

    /// Fires the timer if it is due at (`now_ns`, `guest_tsc`); returns whether it fired
    /// (its vector is then in the IRR unless the LVT entry is masked).
    pub fn poll_timer(&mut self, now_ns: u64, guest_tsc: u64) -> bool {
        let due = match self.timer_mode() {
            TimerMode::TscDeadline => self.tsc_deadline != 0 && guest_tsc >= self.tsc_deadline,
            _ => self.timer_expiry_ns.is_some_and(|t| now_ns >= t),
        };
        if !due {
            return false;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => self.tsc_deadline = 0,
            TimerMode::OneShot => self.timer_expiry_ns = None,
            TimerMode::Periodic => {
                let period = self.period_ns().max(1);
                let mut next = self.timer_expiry_ns.unwrap_or(now_ns);
                // Skip periods the host missed rather than firing a burst.
                while next <= now_ns {
                    next += period;
                }
                self.timer_loaded_ns = next - period;
                self.timer_expiry_ns = Some(next);
            }
        }
        let lvt = self.lvt[TIMER];
        if lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, false);
        }
        true
    }

    /// The IA32_TSC_DEADLINE MSR as the guest reads it.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// A guest write of IA32_TSC_DEADLINE (ignored outside TSC-deadline mode, as specified).
    pub fn set_tsc_deadline(&mut self, value: u64) -> Effect {
        if self.timer_mode() != TimerMode::TscDeadline {
            return Effect::None;
        }
        self.tsc_deadline = value;
        Effect::TimerChanged
    }

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt[TIMER] >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    fn divider(&self) -> u64 {
        // Bits 0, 1 and 3: 0b000 → 2, ..., 0b111 → 1.
        let code = (self.timer_divide & 3) | ((self.timer_divide >> 1) & 4);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    fn period_ns(&self) -> u64 {
        u64::from(self.timer_initial) * self.divider() / TIMER_TICKS_PER_NS
    }

    fn current_count(&self, now_ns: u64) -> u32 {
        let Some(expiry) = self.timer_expiry_ns else {
            return 0;
        };
        if now_ns >= expiry {
            return 0;
        }
        let left_ns = expiry - now_ns;
        (left_ns * TIMER_TICKS_PER_NS / self.divider()).min(u64::from(u32::MAX)) as u32
    }

    /// A 32-bit read of register `offset` at host time `now_ns`.
    pub fn read(&self, offset: u32, now_ns: u64) -> u32 {
        let vec_reg = |r: &Bits256, base: u32| r.0[((offset - base) >> 4) as usize];
        match offset {
            reg::ID => u32::from(self.id) << 24,
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            reg::APR => 0,
            reg::PPR => self.ppr(),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            o if (reg::ISR..reg::ISR + 0x80).contains(&o) && o % 16 == 0 => {
                vec_reg(&self.isr, reg::ISR)
            }
            o if (reg::TMR..reg::TMR + 0x80).contains(&o) && o % 16 == 0 => {
                vec_reg(&self.tmr, reg::TMR)
            }
            o if (reg::IRR..reg::IRR + 0x80).contains(&o) && o % 16 == 0 => {
                vec_reg(&self.irr, reg::IRR)
            }
            reg::ESR => self.esr,
            reg::ICR_LO => self.icr_lo & !(1 << 12),
            reg::ICR_HI => self.icr_hi,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    0
                } else {
                    self.current_count(now_ns)
                }
            }
            reg::TIMER_DIVIDE => self.timer_divide,
            o => LVT_INDEX
                .iter()
                .find(|(r, _)| *r == o)
                .map_or(0, |&(_, i)| self.lvt[i]),
        }
    }

    /// A 32-bit write of `value` to register `offset` at host time `now_ns`.
    pub fn write(&mut self, offset: u32, value: u32, now_ns: u64) -> Effect {
        match offset {
            reg::ID => {
                // The id is fixed by the topology the tables describe; writes are ignored.
                Effect::None
            }
            reg::TPR => {
                self.tpr = value & 0xFF;
                Effect::None
            }
            reg::EOI => self.eoi(),
            reg::LDR => {
                self.ldr = value & 0xFF00_0000;
                Effect::LogicalIdChanged
            }
            reg::DFR => {
                self.dfr = value | 0x0FFF_FFFF;
                Effect::LogicalIdChanged
            }
            reg::SVR => {
                self.svr = value & 0x13FF;
                if !self.enabled() {
                    // Software disable masks every LVT entry.
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                    return Effect::TimerChanged;
                }
                Effect::None
            }
            reg::ESR => {
                self.esr = std::mem::take(&mut self.esr_pending);
                Effect::None
            }
            reg::ICR_HI => {
                self.icr_hi = value & 0xFF00_0000;
                Effect::None
            }
            reg::ICR_LO => {
                self.icr_lo = value & 0x000C_CFFF;
                self.command()
            }
            reg::TIMER_INITIAL => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    return Effect::None;
                }
                self.timer_initial = value;
                self.timer_loaded_ns = now_ns;
                self.timer_expiry_ns = (value != 0).then(|| now_ns + self.period_ns().max(1));
                Effect::TimerChanged
            }
            reg::TIMER_DIVIDE => {
                self.timer_divide = value & 0xB;
                Effect::None
            }
            o => match LVT_INDEX.iter().find(|(r, _)| *r == o) {
                Some(&(_, i)) => {
                    let old_mode = self.timer_mode();
                    let mut v = value & 0x0007_17FF;
                    if !self.enabled() {
                        v |= LVT_MASKED;
                    }
                    self.lvt[i] = v;
                    if i == TIMER {
                        if self.timer_mode() != old_mode {
                            // A mode change disarms the timer (SDM 10.5.4.1).
                            self.tsc_deadline = 0;
                            self.timer_expiry_ns = None;
                            self.timer_initial = 0;
                        }
                        return Effect::TimerChanged;
                    }
                    Effect::None
                }
                None => Effect::None,
            },
        }
    }

    fn eoi(&mut self) -> Effect {
        let Some(v) = self.isr.highest() else {
            return Effect::None;
        };
        self.isr.clear(v);
        if self.tmr.get(v) {
            self.tmr.clear(v);
            return Effect::LevelEoi(v);
        }
        Effect::None
    }

    fn command(&mut self) -> Effect {
        let lo = self.icr_lo;
        let vector = lo as u8;
        let Some(delivery) = DeliveryMode::from_bits(lo >> 8) else {
            return Effect::None;
        };
        let assert = lo & (1 << 14) != 0;
        let level_triggered = lo & (1 << 15) != 0;
        if delivery == DeliveryMode::Init && !assert {
            // INIT level de-assert: no effect on modern CPUs.
            return Effect::None;
        }
        if matches!(delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.esr_pending |= ESR_SEND_ILLEGAL;
            return Effect::None;
        }
        let dest = (self.icr_hi >> 24) as u8;
        let destination = match (lo >> 18) & 3 {
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            _ if lo & (1 << 11) != 0 => Destination::Logical(dest),
            _ => Destination::Physical(dest),
        };
        Effect::Send(Message {
            vector,
            delivery,
            level_triggered,
            assert,
            destination,
        })
    }
}

/// Whether an APIC with id `id`, logical id `ldr` and format `dfr` is a destination of
/// `destination`, sent by the APIC `sender`.
pub fn matches(destination: Destination, sender: u8, id: u8, ldr: u32, dfr: u32) -> bool {
    match destination {
        Destination::SelfOnly => id == sender,
        Destination::AllIncludingSelf => true,
        Destination::AllExcludingSelf => id != sender,
        Destination::Physical(d) => d == 0xFF || d == id,
        Destination::Logical(d) => {
            if d == 0xFF {
                return true;
            }
            let logical = (ldr >> 24) as u8;
            if dfr >> 28 == 0xF {
                // Flat model: one bit per APIC.
                logical & d != 0
            } else {
                // Cluster model: cluster in the high nibble, members in the low one.
                (logical >> 4) == (d >> 4) && (logical & d & 0xF) != 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(id: u8) -> Lapic {
        let mut l = Lapic::new(id);
        l.write(reg::SVR, 0x1FF, 0);
        l
    }

    #[test]
    fn disabled_apic_refuses_fixed_interrupts_and_illegal_vectors_are_counted() {
        let mut l = Lapic::new(0);
        assert!(!l.accept(0x40, false));
        let mut l = enabled(0);
        assert!(!l.accept(3, false));
        l.write(reg::ESR, 0, 0);
        assert_eq!(l.read(reg::ESR, 0), ESR_RECEIVE_ILLEGAL);
        assert!(l.accept(0x40, false));
        assert_eq!(l.read(reg::IRR + 0x20, 0), 1);
    }

    #[test]
    fn priority_orders_delivery_and_eoi_retires_the_highest() {
        let mut l = enabled(0);
        l.accept(0x31, false);
        l.accept(0x52, true);
        assert_eq!(l.deliverable(), Some(0x52));
        l.ack(0x52);
        // 0x31 is below the in-service class 0x50.
        assert_eq!(l.deliverable(), None);
        assert_eq!(l.ppr(), 0x50);
        assert_eq!(l.write(reg::EOI, 0, 0), Effect::LevelEoi(0x52));
        assert_eq!(l.deliverable(), Some(0x31));
        l.write(reg::TPR, 0x40, 0);
        assert_eq!(l.deliverable(), None, "TPR class 4 masks class 3");
        l.write(reg::TPR, 0, 0);
        l.ack(0x31);
        assert_eq!(l.write(reg::EOI, 0, 0), Effect::None);
        assert_eq!(l.isr.highest(), None);
    }

    #[test]
    fn icr_writes_become_messages() {
        let mut l = enabled(1);
        l.write(reg::ICR_HI, 3 << 24, 0);
        let e = l.write(reg::ICR_LO, 0x0000_40FD, 0);
        assert_eq!(
            e,
            Effect::Send(Message {
                vector: 0xFD,
                delivery: DeliveryMode::Fixed,
                level_triggered: false,
                assert: true,
                destination: Destination::Physical(3),
            })
        );
        // INIT assert, de-assert (ignored), SIPI to page 0x9a.
        assert!(matches!(
            l.write(reg::ICR_LO, 0x0000_C500, 0),
            Effect::Send(Message {
                delivery: DeliveryMode::Init,
                ..
            })
        ));
        assert_eq!(l.write(reg::ICR_LO, 0x0000_8500, 0), Effect::None);
        assert!(matches!(
            l.write(reg::ICR_LO, 0x0000_069A, 0),
            Effect::Send(Message {
                delivery: DeliveryMode::StartUp,
                vector: 0x9A,
                ..
            })
        ));
        // All-excluding-self shorthand, logical NMI.
        assert!(matches!(
            l.write(reg::ICR_LO, 0x000C_00F0, 0),
            Effect::Send(Message {
                destination: Destination::AllExcludingSelf,
                ..
            })
        ));
        l.write(reg::ICR_HI, 0x06 << 24, 0);
        assert!(matches!(
            l.write(reg::ICR_LO, 0x0000_0C00, 0),
            Effect::Send(Message {
                delivery: DeliveryMode::Nmi,
                destination: Destination::Logical(6),
                ..
            })
        ));
        // A fixed IPI with an illegal vector is not sent.
        assert_eq!(l.write(reg::ICR_LO, 0x0000_0005, 0), Effect::None);
        // Delivery status always reads idle.
        assert_eq!(l.read(reg::ICR_LO, 0) & (1 << 12), 0);
    }

    #[test]
    fn destinations_match_physical_flat_and_cluster_ids() {
        let flat = 0xFFFF_FFFF;
        let cluster = 0x0FFF_FFFF;
        assert!(matches(Destination::Physical(2), 0, 2, 0, flat));
        assert!(!matches(Destination::Physical(2), 0, 3, 0, flat));
        assert!(matches(Destination::Physical(0xFF), 0, 3, 0, flat));
        assert!(matches(
            Destination::Logical(0b0110),
            0,
            2,
            0b0100 << 24,
            flat
        ));
        assert!(!matches(
            Destination::Logical(0b0011),
            0,
            2,
            0b0100 << 24,
            flat
        ));
        assert!(matches(
            Destination::Logical(0x12),
            0,
            5,
            0x16 << 24,
            cluster
        ));
        assert!(!matches(
            Destination::Logical(0x22),
            0,
            5,
            0x16 << 24,
            cluster
        ));
        assert!(!matches(Destination::AllExcludingSelf, 4, 4, 0, flat));
        assert!(matches(Destination::AllExcludingSelf, 4, 5, 0, flat));
        assert!(matches(Destination::SelfOnly, 4, 4, 0, flat));
    }

    #[test]
    fn tsc_deadline_timer_fires_once_at_its_deadline() {
        let mut l = enabled(0);
        assert_eq!(
            l.write(reg::LVT_TIMER, 0x0004_00EC, 0),
            Effect::TimerChanged
        );
        assert_eq!(l.set_tsc_deadline(1000), Effect::TimerChanged);
        assert_eq!(l.expiry(), Some(Expiry::GuestTsc(1000)));
        assert!(!l.poll_timer(0, 999));
        assert!(l.poll_timer(0, 1000));
        assert_eq!(l.deliverable(), Some(0xEC));
        assert_eq!(l.tsc_deadline(), 0, "the MSR reads 0 once fired");
        assert!(!l.poll_timer(0, 5000));
        // Outside deadline mode the MSR is ignored.
        l.write(reg::LVT_TIMER, 0x0000_00EC, 0);
        assert_eq!(l.set_tsc_deadline(7), Effect::None);
    }

    #[test]
    fn one_shot_and_periodic_timers_count_down() {
        let mut l = enabled(0);
        l.write(reg::TIMER_DIVIDE, 0xB, 0); // divide by 1
        l.write(reg::LVT_TIMER, 0x0000_0030, 0); // one-shot, vector 0x30
        l.write(reg::TIMER_INITIAL, 1000, 100);
        assert_eq!(l.expiry(), Some(Expiry::HostNs(1100)));
        assert_eq!(l.read(reg::TIMER_CURRENT, 600), 500);
        assert!(l.poll_timer(1100, 0));
        assert_eq!(l.read(reg::TIMER_CURRENT, 1200), 0);
        assert_eq!(l.expiry(), None);
        l.ack(0x30);
        l.write(reg::EOI, 0, 0);
        l.write(reg::TIMER_DIVIDE, 0x0, 0); // divide by 2
        l.write(reg::LVT_TIMER, 0x0002_0031, 0); // periodic
        l.write(reg::TIMER_INITIAL, 100, 0);
        assert_eq!(l.expiry(), Some(Expiry::HostNs(200)));
        assert!(l.poll_timer(650, 0), "late by two periods: fires once");
        assert_eq!(l.expiry(), Some(Expiry::HostNs(800)));
        assert_eq!(l.deliverable(), Some(0x31));
    }

    #[test]
    fn software_disable_masks_the_local_vector_table() {
        let mut l = enabled(0);
        l.write(reg::LVT_LINT0, 0x700, 0);
        assert_eq!(l.read(reg::LVT_LINT0, 0) & LVT_MASKED, 0);
        l.write(reg::SVR, 0xFF, 0);
        assert_ne!(l.read(reg::LVT_LINT0, 0) & LVT_MASKED, 0);
        l.write(reg::LVT_LINT0, 0x700, 0);
        assert_ne!(l.read(reg::LVT_LINT0, 0) & LVT_MASKED, 0);
    }

    #[test]
    fn logical_id_writes_are_reported_and_the_id_is_fixed() {
        let mut l = enabled(3);
        assert_eq!(l.write(reg::LDR, 0x0800_0000, 0), Effect::LogicalIdChanged);
        assert_eq!(l.ldr(), 0x0800_0000);
        assert_eq!(l.write(reg::DFR, 0x0FFF_FFFF, 0), Effect::LogicalIdChanged);
        assert_eq!(l.dfr(), 0x0FFF_FFFF);
        l.write(reg::ID, 9 << 24, 0);
        assert_eq!(l.read(reg::ID, 0), 3 << 24);
        assert_eq!(l.read(reg::VERSION, 0), VERSION);
    }
}
