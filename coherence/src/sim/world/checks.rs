//! The invariants the simulator checks: SWMR and data values after every
//! step, which pages were at risk after a crash, liveness, and the end state.

use super::{FailKind, Failure, Map, ThreadState, World, LIVENESS_STEPS};
use crate::{DirState, Msg, NodeId, NodeSet, PageAccess};

impl World {
    /// SWMR and data value for one page over the live nodes.
    pub(super) fn check_page(&self, p: usize) -> Result<(), Failure> {
        let page = self.base + p as u64;
        let mut writers = 0;
        let mut mapped = 0;
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            let m = self.mem[n][p];
            if m.map == Map::None {
                continue;
            }
            mapped += 1;
            if m.map == Map::Rw {
                writers += 1;
            }
            if m.value != self.latest[p] {
                return Err(self.fail(
                    FailKind::StaleCopy,
                    Some(page),
                    format!(
                        "n{n} maps page {page} with value {} but the latest write is {}",
                        m.value, self.latest[p]
                    ),
                ));
            }
        }
        if writers > 1 || (writers == 1 && mapped > 1) {
            return Err(self.fail(
                FailKind::Swmr,
                Some(page),
                format!("page {page}: {writers} writable and {mapped} mapped copies"),
            ));
        }
        Ok(())
    }

    /// Marks pages whose latest value is, right now, neither in a live
    /// node's memory nor in a message between live nodes.
    pub(super) fn update_lossable(&mut self) {
        let mut carried = vec![false; self.pages];
        let mut k = 0;
        while k < self.busy_conns.len() {
            let c = self.busy_conns[k] as usize;
            if self.conns[c].q.is_empty() {
                self.conns[c].listed = false;
                self.busy_conns.swap_remove(k);
                continue;
            }
            for pkt in &self.conns[c].q {
                let p = (pkt.msg.page() - self.base) as usize;
                // A write-back's payload is not a surviving copy: the home may
                // refuse it, and the evicting node's memory is the copy that
                // counts until the answer.
                let write_back = matches!(pkt.msg, Msg::EvictReq { .. });
                if !write_back
                    && self.alive[pkt.from]
                    && self.alive[pkt.to]
                    && pkt.payload == Some(self.latest[p])
                {
                    carried[p] = true;
                }
            }
            k += 1;
        }
        for (p, carried) in carried.into_iter().enumerate() {
            if self.lossable[p] || !self.touched_ever[p] || carried {
                continue;
            }
            let held = (0..self.nodes).any(|n| {
                self.alive[n]
                    && self.mem[n][p].map != Map::None
                    && self.mem[n][p].value == self.latest[p]
            });
            if !held {
                self.lossable[p] = true;
                if self.trace_page == Some(self.base + p as u64) {
                    eprintln!(
                        "  -- t={} page {} is now at risk (lossable)",
                        self.now,
                        self.base + p as u64
                    );
                }
            }
        }
    }

    pub(super) fn check_liveness(&self) -> Result<(), Failure> {
        if !self.strict {
            return Ok(());
        }
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for t in &self.threads[n] {
                if let ThreadState::Waiting { pidx, since, .. } = t.state {
                    if self.progress - since > LIVENESS_STEPS {
                        let page = self.base + pidx as u64;
                        return Err(self.fail(
                            FailKind::Liveness,
                            Some(page),
                            format!(
                                "a fault of n{n} on page {page} waits for {} steps",
                                self.progress - since
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Nothing is left to happen: every live thread must be done.
    pub(super) fn check_drained(&self) -> Result<(), Failure> {
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for t in &self.threads[n] {
                if let ThreadState::Waiting { pidx, .. } = t.state {
                    let page = self.base + pidx as u64;
                    return Err(self.fail(
                        FailKind::Liveness,
                        Some(page),
                        format!("deadlock: a fault of n{n} on page {page} never completed"),
                    ));
                }
            }
            for (i, inst) in self.insts[n].iter().enumerate() {
                if inst.m.fatal().is_some() {
                    continue;
                }
                if !inst.m.is_quiescent() || !inst.m.records_idle() {
                    return Err(self.fail(
                        FailKind::Liveness,
                        None,
                        format!("n{n}/{i} is not quiescent after the run drained (stuck transaction or leaked record)"),
                    ));
                }
                if inst.m.free_waiters() != self.sc.config.max_waiters as usize {
                    return Err(self.fail(
                        FailKind::Liveness,
                        None,
                        format!("n{n}/{i} leaked waiter slots"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// At quiescence the directory, the local states and the mappings agree.
    pub(super) fn check_end_state(&self) -> Result<(), Failure> {
        for p in 0..self.pages {
            let page = self.base + p as u64;
            // Exactly one live node is the page's home once everything drained (home
            // migration moves it; the layout's home otherwise).
            let homes: Vec<usize> = (0..self.nodes)
                .filter(|&n| self.alive[n] && self.is_home(n, p))
                .collect();
            let [h] = homes[..] else {
                return Err(self.fail(
                    FailKind::EndState,
                    Some(page),
                    format!(
                        "page {page} has {} homes at the end: {homes:?}",
                        homes.len()
                    ),
                ));
            };
            if !self.sc.config.migration && h != self.homes[p] {
                return Err(self.fail(
                    FailKind::EndState,
                    Some(page),
                    format!(
                        "page {page} is homed on n{h}, not its layout home n{}",
                        self.homes[p]
                    ),
                ));
            }
            if self.sc.config.migration {
                self.check_reachable(p, h)?;
            }
            let st = self.insts[h][self.inst_of(h, page)].m.dir_state(page);
            let mut ro = NodeSet::EMPTY;
            let mut rw = NodeSet::EMPTY;
            for n in 0..self.nodes {
                if !self.alive[n] {
                    continue;
                }
                let id = NodeId::new(n as u16).unwrap_or(NodeId::ZERO);
                let la = self.insts[n][self.inst_of(n, page)].m.local_access(page);
                let map = self.mem[n][p].map;
                let agree = matches!(
                    (la, map),
                    (Some(PageAccess::Invalid | PageAccess::Lost), Map::None)
                        | (Some(PageAccess::ReadOnly), Map::Ro)
                        | (Some(PageAccess::Writable), Map::Rw)
                );
                if !agree {
                    return Err(self.fail(
                        FailKind::EndState,
                        Some(page),
                        format!("n{n}'s local state {la:?} disagrees with its mapping {map:?} of page {page}"),
                    ));
                }
                match map {
                    Map::Ro => ro.insert(id),
                    Map::Rw => rw.insert(id),
                    Map::None => {}
                }
            }
            let ok = match st {
                Some(DirState::Zero) => ro.is_empty() && rw.is_empty(),
                // Sharer sets may list nodes that dropped their copy; every
                // holder must be listed and the home must hold one.
                Some(DirState::Shared(s)) => {
                    rw.is_empty()
                        && ro.minus(s).is_empty()
                        && ro.contains(NodeId::new(h as u16).unwrap_or(NodeId::ZERO))
                }
                Some(DirState::Exclusive(o)) => ro.is_empty() && rw == NodeSet::single(o),
                Some(DirState::Lost) => self.lossable[p] && ro.is_empty() && rw.is_empty(),
                None => false,
            };
            if !ok {
                return Err(self.fail(
                    FailKind::EndState,
                    Some(page),
                    format!("page {page}: directory {st:?} but read-only {ro:?} writable {rw:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Under home migration: from every live node, following where it would send a request
    /// for page `p` (and where a node that never heard of the page would: the layout's home,
    /// or the successor of one that left), then the pointers of the nodes asked, reaches the
    /// home `h` without a loop or a node that knows nothing (which would answer busy for
    /// ever).
    fn check_reachable(&self, p: usize, h: usize) -> Result<(), Failure> {
        let page = self.base + p as u64;
        let layout = NodeId::new(self.homes[p] as u16).unwrap_or(NodeId::ZERO);
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            let m = &self.insts[n][self.inst_of(n, page)].m;
            let Ok(first) = m.home_now(page) else {
                continue;
            };
            for start in [first, m.successor(layout)] {
                self.follow(n, start.index(), page, h)?;
            }
        }
        Ok(())
    }

    fn follow(&self, n: usize, first: usize, page: u64, h: usize) -> Result<(), Failure> {
        {
            let mut at = first;
            let mut path = vec![n, at];
            loop {
                if at == h {
                    break;
                }
                let next = if self.alive[at] {
                    self.insts[at][self.inst_of(at, page)].m.next_hop(page)
                } else {
                    None
                };
                match next {
                    Some(x) if x.index() != at && path.len() <= 2 * self.nodes + 2 => {
                        at = x.index();
                        path.push(at);
                    }
                    _ => {
                        return Err(self.fail(
                            FailKind::EndState,
                            Some(page),
                            format!(
                                "page {page}: a request from n{n} would not reach its home n{h}: \
                                 path {path:?}"
                            ),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// After a home died, every survivor stopped and told every waiter.
    pub(super) fn check_fatal_end(&self) -> Result<(), Failure> {
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for (i, inst) in self.insts[n].iter().enumerate() {
                if inst.m.fatal().is_none() || !inst.fatal_seen {
                    return Err(self.fail(
                        FailKind::Fatal,
                        None,
                        format!("n{n}/{i} did not stop after a home died"),
                    ));
                }
            }
        }
        Ok(())
    }
}
