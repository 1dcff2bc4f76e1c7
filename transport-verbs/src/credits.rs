//! Credit-based flow control for one reliable-connected queue pair carrying frames by SEND.
//!
//! A SEND consumes one receive the peer posted; one that finds none is NAKed and retried by the
//! hardware (receiver-not-ready), which stalls the queue pair. So a side sends only while it
//! holds credits: receives the peer has posted for it and it has not used. Each side counts,
//! wrapping at 2³², how many receives it has posted for the peer in all (`posted`), and every
//! SEND carries that count in its immediate data. The peer's credits are then `posted − sent`,
//! a difference of two counters that stays right across wrap-around and needs no
//! acknowledgement of its own.
//!
//! Counts travel on data frames. When no data flows the other way, a side sends a
//! *credit-only* message (a SEND with no payload). It too consumes a receive, so the last
//! credit is kept for it: data needs two credits, a credit-only message one. A side reports in
//! a credit-only message when it has re-posted at least half its window since its last
//! report. That is enough: with window `W`, `H` frames held by this side's caller and `v` the
//! credits the peer has by this side's count, the unreported re-posts are `W − H − v`
//! (receives of credit-only messages are re-posted at once). A peer stuck for credits has
//! `v ≤ 1`, so once the caller holds nothing, `W − 1 ≥ ⌈W/2⌉` re-posts are waiting to be
//! reported and the report goes; while the caller holds frames the peer waits, which is the
//! backpressure. The window is at least 2 ([`MIN_WINDOW`]), and a report brings the peer at
//! least half a window, so reports do not ping-pong.

/// The smallest window: data needs two credits.
pub const MIN_WINDOW: u32 = 2;

/// The flow-control state of one connection, on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credits {
    /// Receives posted for the peer, in all (wrapping).
    posted: u32,
    /// `posted` as last told to the peer.
    reported: u32,
    /// Receives the peer has posted for us, in all, as it last told us.
    peer_posted: u32,
    /// SENDs made to the peer, in all (data and credit-only).
    sent: u32,
    /// Receives this side keeps posted when none is held by the caller.
    window: u32,
}

/// What a SEND carries in its immediate data.
pub type Imm = u32;

impl Credits {
    /// A connection where this side posts `window` receives and the peer said it posted
    /// `peer_window` (both from the endpoint exchange, before any SEND; both at least
    /// [`MIN_WINDOW`], which the exchange checks).
    pub fn new(window: u32, peer_window: u32) -> Self {
        debug_assert!(window >= MIN_WINDOW && peer_window >= MIN_WINDOW);
        Credits {
            posted: window,
            reported: window,
            peer_posted: peer_window,
            sent: 0,
            window,
        }
    }

    /// Receives the peer has posted that we have not used.
    pub fn available(&self) -> u32 {
        self.peer_posted.wrapping_sub(self.sent)
    }

    /// Whether a data frame may go now (one credit stays for a credit-only message).
    pub fn can_send_data(&self) -> bool {
        self.available() >= 2
    }

    /// Records a data SEND; returns its immediate data.
    pub fn send_data(&mut self) -> Imm {
        debug_assert!(self.can_send_data());
        self.sent = self.sent.wrapping_add(1);
        self.reported = self.posted;
        self.posted
    }

    /// Whether a credit-only message is due and possible: half the window was re-posted
    /// since the last report, and we hold a credit to send it with.
    pub fn report_due(&self) -> bool {
        let unreported = self.posted.wrapping_sub(self.reported);
        unreported >= self.window.div_ceil(2) && self.available() >= 1
    }

    /// Records a credit-only SEND; returns its immediate data.
    pub fn send_report(&mut self) -> Imm {
        debug_assert!(self.available() >= 1);
        self.sent = self.sent.wrapping_add(1);
        self.reported = self.posted;
        self.posted
    }

    /// Records a SEND received from the peer (data or credit-only) carrying `imm`. Returns
    /// false when the peer claims more receives than it can have posted since its last claim
    /// (a count that moves backwards or by more than 2³¹): a broken or hostile peer.
    pub fn on_receive(&mut self, imm: Imm) -> bool {
        let step = imm.wrapping_sub(self.peer_posted);
        if step > u32::MAX / 2 {
            return false;
        }
        self.peer_posted = imm;
        true
    }

    /// Records that `n` receives were posted again for the peer (slots the caller released,
    /// or the receive a credit-only message used).
    pub fn reposted(&mut self, n: u32) {
        self.posted = self.posted.wrapping_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;

    #[test]
    fn data_keeps_the_last_credit_for_a_report() {
        let mut c = Credits::new(4, 4);
        let mut sent = 0;
        while c.can_send_data() {
            c.send_data();
            sent += 1;
        }
        assert_eq!(sent, 3);
        assert_eq!(c.available(), 1);
        // Nothing re-posted: nothing to report.
        assert!(!c.report_due());
        c.reposted(1);
        // One of four is under half.
        assert!(!c.report_due());
        c.reposted(1);
        assert!(c.report_due(), "half the window re-posted");
        c.send_report();
        assert_eq!(c.available(), 0);
        assert!(!c.report_due(), "no credit left to report with");
    }

    #[test]
    fn counts_survive_wrap_around_and_a_backward_claim_is_refused() {
        let mut c = Credits::new(8, 8);
        c.peer_posted = u32::MAX - 2;
        c.sent = u32::MAX - 10;
        assert_eq!(c.available(), 8);
        assert!(c.on_receive(5), "moved forward across the wrap");
        assert_eq!(c.available(), 16);
        assert!(!c.on_receive(4), "moved backwards");
        assert!(
            !c.on_receive(5u32.wrapping_add(1 << 31)),
            "a jump past half the range"
        );
    }

    /// A frame in flight: the sender's immediate data, and whether it carries data.
    #[derive(Debug, Clone, Copy)]
    struct Frame {
        imm: Imm,
        data: bool,
    }

    /// One side of a simulated connection: its credits, the receives it has posted (a SEND
    /// finding none would be an RNR stall), and the received data frames its caller holds.
    struct Side {
        c: Credits,
        rx_free: u32,
        held: VecDeque<u32>,
        to_send: u64,
        delivered: u64,
    }

    /// Two sides, a random schedule of sends, deliveries and caller releases: no SEND ever
    /// finds the peer without a posted receive, every frame is delivered, and the run
    /// finishes (no deadlock), for windows down to 2 and callers that hold buffers a while.
    #[test]
    fn two_sides_never_overrun_and_never_deadlock() {
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let window = rng.gen_range(2..=16u32);
            let hold = rng.gen_range(0..=window);
            let mut sides = [0, 1].map(|_| Side {
                c: Credits::new(window, window),
                rx_free: window,
                held: VecDeque::new(),
                to_send: rng.gen_range(0..400),
                delivered: 0,
            });
            let want = [sides[1].to_send, sides[0].to_send];
            let mut wires: [VecDeque<Frame>; 2] = [VecDeque::new(), VecDeque::new()];
            let mut idle_steps = 0;
            for step in 0..200_000 {
                let i = rng.gen_range(0..2usize);
                let (a, b) = if i == 0 {
                    let (x, y) = sides.split_at_mut(1);
                    (&mut x[0], &mut y[0])
                } else {
                    let (x, y) = sides.split_at_mut(1);
                    (&mut y[0], &mut x[0])
                };
                let mut progressed = false;
                match rng.gen_range(0..4) {
                    // Send data, or a report when one is due.
                    0 => {
                        if a.to_send > 0 && a.c.can_send_data() {
                            let imm = a.c.send_data();
                            wires[i].push_back(Frame { imm, data: true });
                            a.to_send -= 1;
                            progressed = true;
                        } else if a.c.report_due() {
                            let imm = a.c.send_report();
                            wires[i].push_back(Frame { imm, data: false });
                            progressed = true;
                        }
                    }
                    // Deliver one frame from the wire a → b.
                    1 => {
                        if let Some(f) = wires[i].pop_front() {
                            assert!(
                                b.rx_free > 0,
                                "seed {seed} step {step}: RNR, no receive posted"
                            );
                            b.rx_free -= 1;
                            assert!(b.c.on_receive(f.imm), "seed {seed}: a valid count refused");
                            if f.data {
                                b.held.push_back(1);
                                b.delivered += 1;
                            } else {
                                // A report's receive goes straight back.
                                b.rx_free += 1;
                                b.c.reposted(1);
                            }
                            progressed = true;
                        }
                    }
                    // The caller releases a held buffer (keeping up to `hold` a while).
                    _ => {
                        if a.held.len() as u32 > hold || (!a.held.is_empty() && rng.gen_bool(0.5)) {
                            a.held.pop_front();
                            a.rx_free += 1;
                            a.c.reposted(1);
                            progressed = true;
                        }
                    }
                }
                let done = sides.iter().all(|s| s.to_send == 0)
                    && wires.iter().all(VecDeque::is_empty)
                    && sides[0].delivered == want[0]
                    && sides[1].delivered == want[1];
                if done {
                    break;
                }
                idle_steps = if progressed { 0 } else { idle_steps + 1 };
                assert!(
                    idle_steps < 10_000,
                    "seed {seed} (window {window}, hold {hold}): no progress: sides {:?} {:?}, wires {} {}",
                    sides[0].c,
                    sides[1].c,
                    wires[0].len(),
                    wires[1].len()
                );
            }
            assert_eq!(sides[0].delivered, want[0], "seed {seed}");
            assert_eq!(sides[1].delivered, want[1], "seed {seed}");
        }
    }
}
