//! A ring of the last simulator steps, printed (shortened) on failure.

use super::super::{Action, Input, Outcome};
use std::fmt::Write;

const RING: usize = 512;
const ACTIONS: usize = 8;

/// One machine step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) step: u64,
    pub(crate) time: u64,
    pub(crate) node: u16,
    pub(crate) inst: u16,
    pub(crate) input: Input,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) actions: [Option<Action>; ACTIONS],
    pub(crate) more: usize,
}

impl Entry {
    fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.input
            .page()
            .into_iter()
            .chain(self.actions.iter().flatten().filter_map(Action::page))
    }

    fn involves(&self, page: Option<u64>) -> bool {
        match page {
            None => true,
            Some(p) => matches!(self.input, Input::NodeDead(_)) || self.pages().any(|x| x == p),
        }
    }
}

/// The ring.
#[derive(Debug)]
pub(crate) struct Trace {
    ring: Vec<Entry>,
    next: usize,
}

impl Trace {
    pub(crate) fn new() -> Self {
        Self {
            ring: Vec::with_capacity(RING),
            next: 0,
        }
    }

    pub(crate) fn push(
        &mut self,
        step: u64,
        time: u64,
        node: usize,
        inst: usize,
        input: Input,
        out: &[Action],
    ) {
        let mut actions = [None; ACTIONS];
        for (slot, a) in actions.iter_mut().zip(out) {
            *slot = Some(*a);
        }
        let e = Entry {
            step,
            time,
            node: node as u16,
            inst: inst as u16,
            input,
            outcome: None,
            actions,
            more: out.len().saturating_sub(ACTIONS),
        };
        if self.ring.len() < RING {
            self.ring.push(e);
        } else {
            self.ring[self.next] = e;
        }
        self.next = (self.next + 1) % RING;
    }

    /// Forgets the latest step.
    pub(crate) fn drop_last(&mut self) {
        if self.ring.len() < RING {
            self.ring.pop();
            self.next = self.ring.len();
        } else {
            // The overwritten oldest entry is gone; the slot is reused.
            self.next = (self.next + RING - 1) % RING;
        }
    }

    pub(crate) fn set_outcome(&mut self, o: Outcome) {
        let last = (self.next + RING - 1) % RING;
        if let Some(e) = self.ring.get_mut(last) {
            e.outcome = Some(o);
        }
    }

    /// The latest step, rendered, if it involves `page`.
    pub(crate) fn render_last(&self, page: u64) -> Option<String> {
        let last = (self.next + RING - 1) % RING;
        let e = self.ring.get(last)?;
        e.involves(Some(page)).then(|| render(e))
    }

    /// The last `max` steps that involve `page` (all steps if `None`).
    pub(crate) fn render(&self, page: Option<u64>, max: usize) -> String {
        let (newer, older) = if self.ring.len() < RING {
            (&self.ring[..], &self.ring[..0])
        } else {
            (&self.ring[..self.next], &self.ring[self.next..])
        };
        let picked: Vec<&Entry> = older
            .iter()
            .chain(newer)
            .filter(|e| e.involves(page))
            .collect();
        picked
            .iter()
            .skip(picked.len().saturating_sub(max))
            .map(|e| render(e))
            .collect()
    }
}

fn render(e: &Entry) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "  #{:<7} t={:<10} n{}/{} {:?}",
        e.step, e.time, e.node, e.inst, e.input
    );
    if let Some(o) = e.outcome {
        let _ = write!(s, " => {o:?}");
    }
    for a in e.actions.iter().flatten() {
        let _ = write!(s, "\n      -> {a:?}");
    }
    if e.more > 0 {
        let _ = write!(s, "\n      -> (+{} more)", e.more);
    }
    s.push('\n');
    s
}
