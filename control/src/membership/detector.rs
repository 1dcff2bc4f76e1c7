//! The failure detector: a pure state machine over heartbeat arrival times.
//!
//! A peer is `Alive` while heartbeats arrive; after `suspect` of silence it becomes `Suspect`;
//! after `dead` of silence it is declared `Dead`. A suspect that is heard again is `Alive`
//! again; `Dead` is terminal — a node that comes back after being declared dead is refused
//! and must rejoin as a new node. `Left` (an orderly departure) is terminal too.

use std::time::Duration;

use crate::handle::MemberState;

/// What changed at a tick or on a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The peer went silent past the suspicion time.
    Suspected(u16),
    /// A suspected peer was heard again.
    Recovered(u16),
    /// The peer was silent past the failure timeout: declare it dead.
    Died(u16),
}

/// What hearing from a peer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Counted.
    Ok,
    /// It was suspected and is alive again.
    Recovered,
    /// It was declared dead or left: refuse it.
    Refused,
    /// Not a member.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    state: MemberState,
    last: u64,
}

/// See the module documentation. Times are nanoseconds from any fixed origin.
#[derive(Debug, Clone)]
pub struct Detector {
    suspect_ns: u64,
    dead_ns: u64,
    peers: [Option<Peer>; 64],
}

impl Detector {
    /// A detector with the given timeouts (`suspect < dead`).
    pub fn new(suspect: Duration, dead: Duration) -> Self {
        Self {
            suspect_ns: suspect.as_nanos() as u64,
            dead_ns: dead.as_nanos() as u64,
            peers: [None; 64],
        }
    }

    /// Starts watching `peer`, counting it heard at `now` (it just joined or formed).
    pub fn watch(&mut self, peer: u16, now: u64) {
        if let Some(slot) = self.peers.get_mut(usize::from(peer)) {
            *slot = Some(Peer {
                state: MemberState::Alive,
                last: now,
            });
        }
    }

    /// Records a heartbeat (or any message) from `peer`.
    pub fn heard(&mut self, peer: u16, now: u64) -> Heard {
        let Some(Some(p)) = self.peers.get_mut(usize::from(peer)) else {
            return Heard::Unknown;
        };
        match p.state {
            MemberState::Dead | MemberState::Left => Heard::Refused,
            MemberState::Suspect => {
                p.state = MemberState::Alive;
                p.last = p.last.max(now);
                Heard::Recovered
            }
            MemberState::Alive => {
                p.last = p.last.max(now);
                Heard::Ok
            }
        }
    }

    /// Marks `peer` dead now (its connections broke, or an operator said so).
    pub fn declare_dead(&mut self, peer: u16) -> bool {
        match self.peers.get_mut(usize::from(peer)) {
            Some(Some(p)) if !matches!(p.state, MemberState::Dead | MemberState::Left) => {
                p.state = MemberState::Dead;
                true
            }
            _ => false,
        }
    }

    /// Marks `peer` as having left in order.
    pub fn left(&mut self, peer: u16) {
        if let Some(Some(p)) = self.peers.get_mut(usize::from(peer)) {
            p.state = MemberState::Left;
        }
    }

    /// Advances time; appends what changed to `out`.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Change>) {
        for (id, slot) in self.peers.iter_mut().enumerate() {
            let Some(p) = slot else { continue };
            let silent = now.saturating_sub(p.last);
            match p.state {
                MemberState::Alive | MemberState::Suspect if silent >= self.dead_ns => {
                    p.state = MemberState::Dead;
                    out.push(Change::Died(id as u16));
                }
                MemberState::Alive if silent >= self.suspect_ns => {
                    p.state = MemberState::Suspect;
                    out.push(Change::Suspected(id as u16));
                }
                _ => {}
            }
        }
    }

    /// This node itself did not run for `gap_ns` (stopped, or starved of CPU): nobody could
    /// be heard meanwhile, so the silence is not the peers'. Every live peer's last-heard time
    /// moves forward by the gap.
    pub fn forgive(&mut self, gap_ns: u64) {
        for p in self.peers.iter_mut().flatten() {
            if matches!(p.state, MemberState::Alive | MemberState::Suspect) {
                p.last = p.last.saturating_add(gap_ns);
            }
        }
    }

    /// A peer's state and when it was last heard.
    pub fn state(&self, peer: u16) -> Option<(MemberState, u64)> {
        self.peers
            .get(usize::from(peer))
            .copied()
            .flatten()
            .map(|p| (p.state, p.last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn silence_leads_to_suspicion_then_death() {
        let mut d = Detector::new(Duration::from_millis(300), Duration::from_millis(1000));
        let mut out = Vec::new();
        d.watch(2, 0);
        d.tick(299 * MS, &mut out);
        assert!(out.is_empty());
        d.tick(300 * MS, &mut out);
        assert_eq!(out, vec![Change::Suspected(2)]);
        assert_eq!(d.heard(2, 400 * MS), Heard::Recovered);
        out.clear();
        d.tick(1300 * MS, &mut out);
        assert_eq!(out, vec![Change::Suspected(2)]);
        out.clear();
        d.tick(1400 * MS, &mut out);
        assert_eq!(out, vec![Change::Died(2)]);
        out.clear();
        d.tick(5000 * MS, &mut out);
        assert!(out.is_empty(), "death is reported once");
        assert_eq!(d.state(2).map(|s| s.0), Some(MemberState::Dead));
    }

    #[test]
    fn the_dead_and_the_departed_are_not_readmitted() {
        let mut d = Detector::new(Duration::from_millis(300), Duration::from_millis(1000));
        d.watch(1, 0);
        d.watch(3, 0);
        assert!(d.declare_dead(1));
        assert!(!d.declare_dead(1));
        assert_eq!(d.heard(1, 10 * MS), Heard::Refused);
        d.left(3);
        assert_eq!(d.heard(3, 10 * MS), Heard::Refused);
        assert_eq!(d.heard(9, 10 * MS), Heard::Unknown);
        assert_eq!(d.heard(200, 10 * MS), Heard::Unknown);
        let mut out = Vec::new();
        d.tick(10_000 * MS, &mut out);
        assert!(out.is_empty(), "no transition out of dead or left");
    }

    #[test]
    fn heartbeats_keep_a_peer_alive() {
        let mut d = Detector::new(Duration::from_millis(300), Duration::from_millis(1000));
        let mut out = Vec::new();
        d.watch(0, 0);
        for t in (100..5000).step_by(100) {
            assert_eq!(d.heard(0, t * MS), Heard::Ok);
            d.tick(t * MS, &mut out);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn our_own_pause_is_not_the_peers_silence() {
        let mut d = Detector::new(Duration::from_millis(200), Duration::from_millis(1000));
        d.watch(1, 0);
        d.watch(2, 0);
        d.declare_dead(2);
        // This node stopped for 10 s: on its first tick every peer looks silent.
        d.forgive(10_000 * MS);
        let mut out = Vec::new();
        d.tick(10_000 * MS + MS, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(d.state(1).map(|s| s.0), Some(MemberState::Alive));
        assert_eq!(d.state(2).map(|s| s.0), Some(MemberState::Dead));
        // A peer still silent after the pause is suspected and declared dead as usual.
        d.tick(10_000 * MS + 1_000 * MS, &mut out);
        assert_eq!(out, vec![Change::Died(1)]);
    }
}
