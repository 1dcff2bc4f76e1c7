//! Executing a machine's actions against the model: memories, mappings,
//! the network, and the waiting threads, refusing what the memory model
//! forbids.

use super::{allows, kind_of, Ev, FailKind, Failure, Map, Mem, Packet, ThreadState, World};
use crate::sim::scenario::Family;
use crate::{Action, DataSource, FailReason, FatalReason, InstallSource, NodeId};
use rand::Rng;

impl World {
    pub(super) fn apply(
        &mut self,
        n: usize,
        i: usize,
        a: Action,
        payload: Option<u64>,
    ) -> Result<(), Failure> {
        let bad = |w: &Self, page: u64, what: &str| {
            w.fail(
                FailKind::BadAction,
                Some(page),
                format!("n{n}/{i}: {what}: {a:?}"),
            )
        };
        match a {
            Action::Send { to, msg, data } => {
                let page = msg.page();
                let p = self.pidx(page)?;
                let to = to.index();
                if to == n || to >= self.nodes {
                    return Err(bad(self, page, "send to itself or outside the cluster"));
                }
                let inst = &self.insts[n][i];
                if inst
                    .knows_dead
                    .contains(NodeId::new(to as u16).unwrap_or(NodeId::ZERO))
                {
                    return Err(self.fail(
                        FailKind::SendToDead,
                        Some(page),
                        format!("n{n}/{i} sent {msg:?} to n{to}, which it knows is dead"),
                    ));
                }
                if inst.m.fatal().is_some() {
                    return Err(self.fail(
                        FailKind::Fatal,
                        Some(page),
                        format!("n{n}/{i} sent after the cluster stopped: {msg:?}"),
                    ));
                }
                if data.is_some() != msg.has_data() {
                    return Err(bad(self, page, "payload source does not match the message"));
                }
                let value = match data {
                    None => None,
                    Some(DataSource::Zero) => Some(0),
                    Some(DataSource::Local) => {
                        let m = self.mem[n][p];
                        if m.map == Map::None {
                            return Err(bad(self, page, "sent the local copy of an unmapped page"));
                        }
                        Some(m.value)
                    }
                };
                if value.is_some() {
                    self.touched_ever[p] = true;
                }
                self.stats.messages += 1;
                self.stats.by_kind[kind_of(&msg)] += 1;
                if !self.alive[to] {
                    return Ok(());
                }
                let lane = if self.lanes > 1 { p } else { 0 };
                let c = (n * self.nodes + to) * self.lanes + lane;
                let r = self.rng.gen_range(0..100u32);
                let mut delay = self.rng.gen_range(1..=self.sc.delay_max_ns);
                if r < self.sc.slow_pct / 4 {
                    delay *= 100;
                } else if r < self.sc.slow_pct {
                    delay *= 10;
                }
                let conn = &mut self.conns[c];
                let at = (self.now + delay).max(conn.last);
                conn.last = at;
                conn.q.push_back(Packet {
                    from: n,
                    to,
                    msg,
                    payload: value,
                    lost: false,
                    fence: false,
                });
                if !conn.listed {
                    conn.listed = true;
                    self.busy_conns.push(c as u32);
                }
                self.push(at, Ev::Deliver(c as u32));
            }
            Action::Install {
                page,
                writable,
                source,
            } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map != Map::None {
                    return Err(bad(self, page, "install over a mapped page"));
                }
                let value = match source {
                    InstallSource::Zero => 0,
                    InstallSource::Payload => match payload {
                        Some(v) => v,
                        None => {
                            return Err(bad(
                                self,
                                page,
                                "install from a payload the input did not carry",
                            ))
                        }
                    },
                };
                self.mem[n][p] = Mem {
                    value,
                    map: if writable { Map::Rw } else { Map::Ro },
                };
                self.touched_ever[p] = true;
                self.step_pages.push(p);
            }
            Action::MakeWritable { page } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map != Map::Ro {
                    return Err(bad(
                        self,
                        page,
                        "make-writable of a page not mapped read-only",
                    ));
                }
                self.mem[n][p].map = Map::Rw;
                self.step_pages.push(p);
            }
            Action::WriteProtect { page } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map != Map::Rw {
                    return Err(bad(
                        self,
                        page,
                        "write-protect of a page not mapped writable",
                    ));
                }
                self.mem[n][p].map = Map::Ro;
            }
            Action::Drop { page } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map == Map::None {
                    return Err(bad(self, page, "drop of an unmapped page"));
                }
                self.mem[n][p] = Mem {
                    value: u64::MAX,
                    map: Map::None,
                };
            }
            Action::Wake { page } => {
                self.pidx(page)?;
            }
            Action::FaultDone { page, token } => {
                let p = self.pidx(page)?;
                let (tn, th) = ((token >> 48) as usize, ((token >> 32) & 0xffff) as usize);
                let ok = tn == n && th < self.sc.threads;
                let state = if ok {
                    self.threads[n][th].state
                } else {
                    ThreadState::Stopped
                };
                match state {
                    ThreadState::Waiting {
                        token: t,
                        pidx,
                        write,
                        ..
                    } if t == token && pidx == p => {
                        if !allows(self.mem[n][p].map, write) {
                            return Err(bad(
                                self,
                                page,
                                "fault completed without granting the access",
                            ));
                        }
                        self.threads[n][th].state = ThreadState::Idle;
                        let at = if self.rng.gen_bool(0.8) {
                            self.now
                        } else {
                            self.now + self.rng.gen_range(0..=self.sc.think_max_ns)
                        };
                        self.push(at, Ev::Thread(n as u16, th as u16));
                    }
                    _ => {
                        return Err(bad(
                            self,
                            page,
                            "completion for a fault that is not waiting",
                        ))
                    }
                }
            }
            Action::FaultFailed {
                page,
                token,
                reason,
            } => {
                let p = self.pidx(page)?;
                let (tn, th) = ((token >> 48) as usize, ((token >> 32) & 0xffff) as usize);
                let waiting = tn == n
                    && th < self.sc.threads
                    && matches!(self.threads[n][th].state, ThreadState::Waiting { token: t, .. } if t == token);
                if !waiting {
                    return Err(bad(self, page, "failure for a fault that is not waiting"));
                }
                match reason {
                    FailReason::Lost => {
                        if !self.lossable[p] {
                            return Err(self.fail(
                                FailKind::UnjustifiedLoss,
                                Some(page),
                                format!("n{n}/{i}: fault failed as lost, but the page was never at risk"),
                            ));
                        }
                        let t = &mut self.threads[n][th];
                        t.state = ThreadState::Idle;
                        t.op = None;
                        let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                        self.push(at, Ev::Thread(n as u16, th as u16));
                    }
                    FailReason::ClusterDown => {
                        if self.sc.family != Family::HomeDeath
                            || self.insts[n][i].m.fatal().is_none()
                        {
                            return Err(self.fail(
                                FailKind::Fatal,
                                Some(page),
                                format!("n{n}/{i}: unexpected ClusterDown"),
                            ));
                        }
                        self.threads[n][th].state = ThreadState::Stopped;
                    }
                }
            }
            Action::PageLost { page } => {
                let p = self.pidx(page)?;
                if !self.lossable[p] {
                    return Err(self.fail(
                        FailKind::UnjustifiedLoss,
                        Some(page),
                        format!("n{n}/{i} reported page {page} lost, but it was never at risk"),
                    ));
                }
            }
            Action::ClusterFatal { reason } => {
                // An overflow is always a failure of the run (a bug in the machine).
                let FatalReason::HomeDied(d) = reason else {
                    return Err(self.fail(FailKind::Fatal, None, format!("n{n}/{i}: {a:?}")));
                };
                if self.sc.family != Family::HomeDeath
                    || self.alive[d.index()]
                    || self.insts[n][i].fatal_seen
                {
                    return Err(self.fail(
                        FailKind::Fatal,
                        None,
                        format!("n{n}/{i}: unexpected {a:?}"),
                    ));
                }
                self.insts[n][i].fatal_seen = true;
            }
        }
        Ok(())
    }
}
