//! The skill-queue state machine (R3.1, R3.2), pure. Waiting calls are ordered by priority,
//! then arrival (I4); idle agents by how long they have been idle (longest first, R3.2).
//!
//! An offer is a two-step protocol so that no agent is double-booked across queues and nodes
//! (I1): the queue first asks the AgentActor to `Reserve` the agent; only an accepted
//! reservation becomes an `Offer` to the CallActor. A refused or unanswered reservation puts
//! the call back at its place and the queue tries another agent. The call keeps its original
//! enqueue time whatever happens, so its place in line never changes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

use model::{AgentFit, AgentId, CallId, CallNeeds, ExtensionId, NodeId, QueueRule};

/// How long the queue waits for an agent's answer to `Reserve` before giving up on it.
pub const RESERVE_REPLY_TIMEOUT_MS: u64 = 3_000;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum QueueInput {
    /// Idempotent: a call already waiting keeps its place (only its node is updated, after
    /// a takeover). `offered_to`: the call is ringing that agent for this queue (a queue
    /// rebuilt on a new owner learns it from the call).
    Enqueue {
        call: CallId,
        call_node: NodeId,
        priority: u8,
        enqueued_at_ms: u64,
        #[serde(default)]
        offered_to: Option<AgentId>,
        /// The call joins the queue now, so the queue's rules (R3.3, R3.5) apply. False when
        /// it re-states a place it holds (periodic resync, takeover, queue rebuilt after a
        /// node loss): such a call is never turned away.
        #[serde(default)]
        arriving: bool,
        /// The agents the call needs or prefers (R3.12, R3.16), each for a bounded time.
        #[serde(default, skip_serializing_if = "CallNeeds::is_empty")]
        needs: CallNeeds,
    },
    /// The call left the queue (caller hung up, max wait, answered elsewhere).
    Remove {
        call: CallId,
    },
    AgentAvailable {
        agent: AgentId,
        agent_node: NodeId,
        idle_since_ms: u64,
        /// The agent's tags and skill level in this queue, matched against calls' needs.
        #[serde(default)]
        fit: AgentFit,
    },
    AgentUnavailable {
        agent: AgentId,
    },
    ReserveReply {
        agent: AgentId,
        call: CallId,
        accepted: bool,
        extension: Option<ExtensionId>,
    },
    /// The CallActor's verdict on an offer: answered, or not (the call stays queued).
    OfferDone {
        call: CallId,
        agent: AgentId,
        answered: bool,
    },
    /// R3.9: the call asks for its estimated wait (answered with `WaitEstimate`).
    EstimateWait {
        call: CallId,
        call_node: NodeId,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum QueueOutput {
    Reserve {
        agent: AgentId,
        agent_node: NodeId,
        call: CallId,
    },
    CancelReservation {
        agent: AgentId,
        agent_node: NodeId,
        call: CallId,
    },
    Offer {
        call: CallId,
        call_node: NodeId,
        agent: AgentId,
        agent_node: NodeId,
        extension: ExtensionId,
    },
    /// R3.9: `call` has `ahead` calls before it in line and should wait about `wait_ms`
    /// (None: the queue answered too few calls lately to say). Not sent for a call the queue
    /// does not hold.
    WaitEstimate {
        call: CallId,
        call_node: NodeId,
        ahead: usize,
        wait_ms: Option<u64>,
    },
    /// A queue rule turned `call` away (R3.3, R3.5): it was not taken into the line; the
    /// call applies the rule's action.
    TurnedAway {
        call: CallId,
        call_node: NodeId,
        rule: QueueRule,
    },
    /// The queue's figures changed (for the wallboard, metrics and events).
    Stats(QueueStats),
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    pub waiting: usize,
    pub oldest_enqueued_at_ms: Option<u64>,
    pub agents_available: usize,
    pub offering: usize,
    /// When the queue's recent calls were answered (its service rate, R3.9). Broadcast with
    /// the stats so that the queue's next owner starts with the same estimates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answered_at_ms: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Waiting {
    call: CallId,
    call_node: NodeId,
    enqueued_at_ms: u64,
    /// Some while an agent is being reserved or rung for this call.
    offered_to: Option<AgentId>,
    /// True once the call was offered (an agent accepted and the call was told).
    offered: bool,
    /// The offer this queue made, while `offered`: the agent, its node and the call the
    /// agent knows the reservation by (see `Slot::Reserving`). None for an offer learnt
    /// from the call (a rebuilt queue).
    offer: Option<(AgentId, NodeId, CallId)>,
    /// Which agents may take the call (R3.12, R3.16); they widen as their times pass.
    needs: CallNeeds,
}

#[derive(Clone, Debug)]
enum Slot {
    Idle,
    /// Held for `call`; the agent knows the reservation as `agent_call` (they differ when a
    /// pending reservation was handed to another call, see `ReserveReply`).
    Reserving {
        call: CallId,
        agent_call: CallId,
        since_ms: u64,
    },
}

#[derive(Clone, Debug)]
struct AgentEntry {
    node: NodeId,
    idle_since_ms: u64,
    slot: Slot,
    fit: AgentFit,
}

type Position = (Reverse<u8>, u64, u64);

#[derive(Default)]
pub struct QueueMachine {
    waiting: BTreeMap<Position, Waiting>,
    positions: HashMap<CallId, Position>,
    agents: HashMap<AgentId, AgentEntry>,
    seq: u64,
    outputs: VecDeque<QueueOutput>,
    last_stats: Option<QueueStats>,
    /// When stats were last computed, and whether anything happened since: stats take a
    /// pass over every waiting call, so they go out at most every `STATS_EVERY_MS` (the
    /// wallboard's budget is 3 s, R8.1), not after each of thousands of inputs a second.
    stats_at: Option<u64>,
    stats_dirty: bool,
    /// The earliest time a waiting call's needs widen, once computed: also a pass over every
    /// waiting call, and asked for after every input. Forgotten whenever calls or their
    /// needs may have changed.
    widening: std::cell::Cell<Option<Option<u64>>>,
    /// The most calls that may wait (R3.5), from the queue's config.
    max_queued: Option<usize>,
    /// R3.3 applies: no signed-in agent of the queue is ready (set by the owner from the
    /// agents' sessions, only when the queue has an `on_all_busy` rule).
    all_busy: bool,
    /// When the queue's last `SERVICE_SAMPLES` calls were answered: its recent service rate,
    /// for wait estimates (R3.9).
    answered_at: VecDeque<u64>,
}

/// Stats go out at most this often while calls come and go.
pub const STATS_EVERY_MS: u64 = 250;
/// How many recent answers the service rate is measured over.
pub const SERVICE_SAMPLES: usize = 20;
/// Answers older than this say nothing about the current service rate.
pub const SERVICE_WINDOW_MS: u64 = 30 * 60_000;

impl QueueMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The most calls that may wait (R3.5); `None` for no limit. Calls already waiting stay.
    pub fn set_max_queued(&mut self, max: Option<u32>) {
        self.max_queued = max.map(|m| m as usize);
    }

    /// Whether new calls are turned away as "all agents busy" (R3.3).
    pub fn set_all_busy(&mut self, all_busy: bool) {
        self.all_busy = all_busy;
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<QueueOutput> {
        self.outputs.pop_front()
    }

    /// When the machine next needs `handle_timeout`: a deadline below, or stats falling due.
    pub fn poll_timeout(&self) -> Option<u64> {
        let stats = self
            .stats_dirty
            .then(|| self.stats_at.map_or(0, |at| at + STATS_EVERY_MS));
        self.next_deadline().into_iter().chain(stats).min()
    }

    /// The next reservation timeout or widening of a waiting call's needs.
    fn next_deadline(&self) -> Option<u64> {
        let reservations = self.agents.values().filter_map(|a| match a.slot {
            Slot::Reserving { since_ms, .. } => Some(since_ms + RESERVE_REPLY_TIMEOUT_MS),
            Slot::Idle => None,
        });
        // A waiting call whose needs widen later may then match an idle agent.
        let widening = match self.widening.get() {
            Some(known) => known,
            None => {
                let next = self
                    .waiting
                    .values()
                    .filter(|w| w.offered_to.is_none())
                    .filter_map(|w| w.needs.next_change(0))
                    .min();
                self.widening.set(Some(next));
                next
            }
        };
        reservations.chain(widening).min()
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.widening.set(None);
        let expired: Vec<(AgentId, CallId)> = self
            .agents
            .iter()
            .filter_map(|(id, a)| match &a.slot {
                Slot::Reserving { call, since_ms, .. }
                    if now_ms >= since_ms + RESERVE_REPLY_TIMEOUT_MS =>
                {
                    Some((id.clone(), call.clone()))
                }
                _ => None,
            })
            .collect();
        for (agent, call) in expired {
            // No answer from the agent's actor (its node may be gone): forget the agent until
            // it announces itself again, and put the call back at its place.
            self.agents.remove(&agent);
            self.release_call(&call);
        }
        // Needs whose time is up widen for good (the deadline is not looked at again).
        for w in self.waiting.values_mut() {
            if w.needs.prefer_until_ms <= now_ms {
                w.needs.prefer.clear();
            }
            if w.needs.relax_at_ms.is_some_and(|at| at <= now_ms) {
                w.needs.agent_tags.clear();
                w.needs.min_level = 0;
                w.needs.relax_at_ms = None;
            }
        }
        self.dispatch(now_ms);
    }

    /// Starts the service history of a queue rebuilt on a new owner from the one its last
    /// owner broadcast (the most recent `SERVICE_SAMPLES`).
    pub fn seed_answers(&mut self, answered_at_ms: &[u64]) {
        let mut all: Vec<u64> = self
            .answered_at
            .iter()
            .chain(answered_at_ms)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        let skip = all.len().saturating_sub(SERVICE_SAMPLES);
        self.answered_at = all.into_iter().skip(skip).collect();
    }

    /// R3.9: the calls ahead of `call` and its estimated wait: (ahead + 1) times the mean
    /// time between the queue's recent answers (the last `SERVICE_SAMPLES` within
    /// `SERVICE_WINDOW_MS`). None for the wait with fewer than two such answers; None
    /// altogether for a call not in line.
    pub fn estimate_wait(&self, now_ms: u64, call: &CallId) -> Option<(usize, Option<u64>)> {
        let position = self.positions.get(call)?;
        let ahead = self.waiting.range(..position).count();
        let recent: Vec<u64> = self
            .answered_at
            .iter()
            .copied()
            .filter(|t| now_ms.saturating_sub(*t) <= SERVICE_WINDOW_MS)
            .collect();
        let wait_ms = (recent.len() >= 2).then(|| {
            let span = now_ms.saturating_sub(recent[0]).max(1);
            (ahead as u64 + 1) * span / recent.len() as u64
        });
        Some((ahead, wait_ms))
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            waiting: self.waiting.len(),
            oldest_enqueued_at_ms: self.waiting.values().map(|w| w.enqueued_at_ms).min(),
            agents_available: self
                .agents
                .values()
                .filter(|a| matches!(a.slot, Slot::Idle))
                .count(),
            offering: self
                .waiting
                .values()
                .filter(|w| w.offered_to.is_some())
                .count(),
            answered_at_ms: self.answered_at.iter().copied().collect(),
        }
    }

    /// Calls in service order, for the API.
    pub fn waiting_calls(&self) -> Vec<(CallId, u8, u64)> {
        self.waiting
            .iter()
            .map(|((Reverse(p), at, _), w)| (w.call.clone(), *p, *at))
            .collect()
    }

    pub fn handle(&mut self, now_ms: u64, input: QueueInput) {
        // The cached earliest widening: a removal may leave it early (a spurious tick, which
        // recomputes it); an Enqueue (every waiting call re-states its place each second)
        // only adds its own call's deadline; agents' replies may put calls back: recompute.
        let enqueued = match &input {
            QueueInput::Enqueue { call, .. } => Some(call.clone()),
            QueueInput::Remove { .. } | QueueInput::EstimateWait { .. } => None,
            _ => {
                self.widening.set(None);
                None
            }
        };
        self.handle_input(now_ms, input);
        if let (Some(call), Some(cached)) = (enqueued, self.widening.get()) {
            let deadline = self
                .positions
                .get(&call)
                .and_then(|p| self.waiting.get(p))
                .filter(|w| w.offered_to.is_none())
                .and_then(|w| w.needs.next_change(0));
            if let Some(deadline) = deadline {
                self.widening
                    .set(Some(Some(cached.map_or(deadline, |c| c.min(deadline)))));
            }
        }
    }

    fn handle_input(&mut self, now_ms: u64, input: QueueInput) {
        match input {
            QueueInput::Enqueue {
                call,
                call_node,
                priority,
                enqueued_at_ms,
                offered_to,
                arriving,
                needs,
            } => match self.positions.get(&call).copied() {
                Some(old) => {
                    // R3.10: a changed priority moves the call, at its original arrival.
                    let position = if old.0 .0 != priority {
                        let w = self.waiting.remove(&old).expect("positions match");
                        self.seq += 1;
                        let new = (Reverse(priority), old.1, self.seq);
                        self.waiting.insert(new, w);
                        self.positions.insert(call.clone(), new);
                        new
                    } else {
                        old
                    };
                    if let Some(w) = self.waiting.get_mut(&position) {
                        let moved = w.call_node != call_node;
                        w.call_node = call_node;
                        // The call says nobody rings it: an offer we made was lost (its node
                        // died with the offer in flight). Put it back in line.
                        if offered_to.is_none() && w.offered {
                            w.offered = false;
                            w.offered_to = None;
                            let offer = w.offer.take();
                            // The call moved (a takeover): the agent the lost offer held is
                            // still reserved for it. Free it now rather than when the
                            // reservation expires. The old node withdrew any ring it had not
                            // confirmed before losing the call, and the taker cancels a ring
                            // it knows of, so the agent is at most Reserved for this call (a
                            // cancel then frees it) or rings it (the cancel is ignored). From
                            // the same node this Enqueue may only have crossed the Offer in
                            // flight: cancelling then could ring the agent twice.
                            if moved {
                                if let Some((agent, agent_node, agent_call)) = offer {
                                    self.outputs.push_back(QueueOutput::CancelReservation {
                                        agent,
                                        agent_node,
                                        call: agent_call,
                                    });
                                }
                            }
                        }
                    }
                }
                None if arriving
                    && (self.all_busy
                        || self.max_queued.is_some_and(|max| self.waiting.len() >= max)) =>
                {
                    let rule = if self.max_queued.is_some_and(|max| self.waiting.len() >= max) {
                        QueueRule::MaxQueued
                    } else {
                        QueueRule::AllBusy
                    };
                    self.outputs.push_back(QueueOutput::TurnedAway {
                        call,
                        call_node,
                        rule,
                    });
                }
                None => {
                    self.seq += 1;
                    let position = (Reverse(priority), enqueued_at_ms, self.seq);
                    self.positions.insert(call.clone(), position);
                    self.waiting.insert(
                        position,
                        Waiting {
                            call,
                            call_node,
                            enqueued_at_ms,
                            offered: offered_to.is_some(),
                            offered_to,
                            offer: None,
                            needs,
                        },
                    );
                }
            },
            QueueInput::Remove { call } => {
                if let Some(position) = self.positions.remove(&call) {
                    if let Some(w) = self.waiting.remove(&position) {
                        if let Some(agent) = w.offered_to {
                            self.cancel_reservation(&agent, &call);
                        }
                    }
                }
            }
            QueueInput::AgentAvailable {
                agent,
                agent_node,
                idle_since_ms,
                fit,
            } => {
                let entry = self.agents.entry(agent).or_insert(AgentEntry {
                    node: agent_node,
                    idle_since_ms,
                    slot: Slot::Idle,
                    fit: fit.clone(),
                });
                entry.node = agent_node;
                entry.idle_since_ms = idle_since_ms;
                entry.fit = fit;
                if let Slot::Reserving { .. } = entry.slot {
                    // A fresh availability supersedes a reservation we were waiting on.
                    let Slot::Reserving { call, .. } =
                        std::mem::replace(&mut entry.slot, Slot::Idle)
                    else {
                        unreachable!()
                    };
                    self.release_call(&call);
                }
            }
            QueueInput::AgentUnavailable { agent } => {
                // An agent we are reserving announces itself unavailable *because* of the
                // reservation (to every queue it serves), before its reply reaches us: keep
                // the entry until the reply (or the reply timeout) settles it.
                if !matches!(
                    self.agents.get(&agent),
                    Some(AgentEntry {
                        slot: Slot::Reserving { .. },
                        ..
                    })
                ) {
                    self.agents.remove(&agent);
                }
            }
            QueueInput::ReserveReply {
                agent,
                call,
                accepted,
                extension,
            } => {
                let held_for = match self.agents.get(&agent) {
                    Some(AgentEntry {
                        slot: Slot::Reserving { call: held_for, .. },
                        ..
                    }) => Some(held_for.clone()),
                    _ => None,
                };
                let Some(held_for) = held_for else {
                    if accepted {
                        // A late yes for a reservation we gave up on: hand the agent back.
                        if let Some(node) = self.agents.get(&agent).map(|a| a.node) {
                            self.outputs.push_back(QueueOutput::CancelReservation {
                                agent,
                                agent_node: node,
                                call,
                            });
                        }
                    }
                    self.dispatch(now_ms);
                    return;
                };
                let entry = self.agents.remove(&agent).expect("checked above");
                match (accepted, extension, self.positions.get(&held_for).copied()) {
                    (true, Some(extension), Some(held_position)) => {
                        // The agent is ours: it goes to the best call not yet offered that it
                        // may take, whatever order the replies come back in, so offers follow
                        // the queue's order (I4) even when several reservations are in flight
                        // or an earlier call lost its agent to another queue. If that call had
                        // a reservation of its own pending, that reservation now holds the
                        // agent for `held_for`.
                        // The earlier call must fit the agent (R3.12, R3.16). If the
                        // reservation it had pending does not fit `held_for`, that reservation
                        // is cancelled and `held_for` waits for another agent.
                        let target = self
                            .waiting
                            .range(..held_position)
                            .find(|(_, w)| {
                                !w.offered && w.needs.admits(&agent, &entry.fit, now_ms).is_some()
                            })
                            .map(|(p, w)| (*p, w.call.clone()))
                            .unwrap_or((held_position, held_for.clone()));
                        let (target, target_call) = target;
                        if target != held_position {
                            let held_needs = &self.waiting[&held_position].needs;
                            let moved = self
                                .waiting
                                .get(&target)
                                .and_then(|w| w.offered_to.clone())
                                .filter(|other| {
                                    let fit = self.agents.get(other).map(|o| &o.fit);
                                    fit.is_some_and(|f| {
                                        held_needs.admits(other, f, now_ms).is_some()
                                    })
                                });
                            match &moved {
                                Some(other) => {
                                    if let Some(AgentEntry {
                                        slot: Slot::Reserving { call, .. },
                                        ..
                                    }) = self.agents.get_mut(other)
                                    {
                                        *call = held_for.clone();
                                    }
                                }
                                None => {
                                    if let Some(other) =
                                        self.waiting.get(&target).and_then(|w| w.offered_to.clone())
                                    {
                                        self.cancel_reservation(&other, &target_call);
                                    }
                                }
                            }
                            if let Some(w) = self.waiting.get_mut(&held_position) {
                                w.offered_to = moved;
                            }
                        }
                        let w = self.waiting.get_mut(&target).expect("target is waiting");
                        w.offered_to = Some(agent.clone());
                        w.offered = true;
                        // The agent is reserved under the call it replied for.
                        w.offer = Some((agent.clone(), entry.node, call));
                        // The agent leaves our idle pool until it announces itself again.
                        self.outputs.push_back(QueueOutput::Offer {
                            call: w.call.clone(),
                            call_node: w.call_node,
                            agent,
                            agent_node: entry.node,
                            extension,
                        });
                    }
                    (true, _, _) => {
                        self.outputs.push_back(QueueOutput::CancelReservation {
                            agent,
                            agent_node: entry.node,
                            call,
                        });
                        self.release_call(&held_for);
                    }
                    (false, _, _) => self.release_call(&held_for),
                }
            }
            QueueInput::OfferDone {
                call,
                agent: _,
                answered,
            } => {
                if answered {
                    if let Some(position) = self.positions.remove(&call) {
                        self.waiting.remove(&position);
                        if self.answered_at.len() == SERVICE_SAMPLES {
                            self.answered_at.pop_front();
                        }
                        self.answered_at.push_back(now_ms);
                    }
                } else {
                    self.release_call(&call);
                }
            }
            QueueInput::EstimateWait { call, call_node } => {
                if let Some((ahead, wait_ms)) = self.estimate_wait(now_ms, &call) {
                    self.outputs.push_back(QueueOutput::WaitEstimate {
                        call,
                        call_node,
                        ahead,
                        wait_ms,
                    });
                }
            }
        }
        self.dispatch(now_ms);
    }

    fn release_call(&mut self, call: &CallId) {
        if let Some(w) = self
            .positions
            .get(call)
            .and_then(|p| self.waiting.get_mut(p))
        {
            w.offered_to = None;
            w.offered = false;
            w.offer = None;
        }
    }

    fn cancel_reservation(&mut self, agent: &AgentId, call: &CallId) {
        if let Some(entry) = self.agents.get(agent) {
            if let Slot::Reserving {
                call: c,
                agent_call,
                ..
            } = &entry.slot
            {
                if c == call {
                    // The agent knows the reservation by the call it was made for.
                    let output = QueueOutput::CancelReservation {
                        agent: agent.clone(),
                        agent_node: entry.node,
                        call: agent_call.clone(),
                    };
                    self.agents.remove(agent);
                    self.outputs.push_back(output);
                }
            }
        }
    }

    /// Gives each waiting call, best first, the longest-idle idle agent it may take (its
    /// preferred agents first), while idle agents remain. A call no idle agent fits waits
    /// without holding up the calls behind it.
    fn dispatch(&mut self, now_ms: u64) {
        let any_idle = self.agents.values().any(|a| matches!(a.slot, Slot::Idle));
        let unserved: Vec<(Position, CallId)> = self
            .waiting
            .iter()
            .take_while(|_| any_idle)
            .filter(|(_, w)| w.offered_to.is_none())
            .map(|(p, w)| (*p, w.call.clone()))
            .collect();
        for (position, call) in unserved {
            let needs = &self.waiting[&position].needs;
            let mut idle = self
                .agents
                .iter()
                .filter(|(_, a)| matches!(a.slot, Slot::Idle))
                .peekable();
            if idle.peek().is_none() {
                break;
            }
            let Some(agent) = idle
                .filter_map(|(id, a)| {
                    let rank = needs.admits(id, &a.fit, now_ms)?;
                    Some((rank, a.idle_since_ms, id))
                })
                .min()
                .map(|(_, _, id)| id.clone())
            else {
                continue;
            };
            let entry = self.agents.get_mut(&agent).expect("just found");
            entry.slot = Slot::Reserving {
                call: call.clone(),
                agent_call: call.clone(),
                since_ms: now_ms,
            };
            let agent_node = entry.node;
            if let Some(w) = self.waiting.get_mut(&position) {
                w.offered_to = Some(agent.clone());
            }
            self.outputs.push_back(QueueOutput::Reserve {
                agent,
                agent_node,
                call,
            });
        }
        self.stats_dirty = true;
        if self.stats_at.is_some_and(|at| now_ms < at + STATS_EVERY_MS) {
            return; // poll_timeout asks for a tick when they are due
        }
        self.stats_at = Some(now_ms);
        self.stats_dirty = false;
        let stats = self.stats();
        if self.last_stats.as_ref() != Some(&stats) {
            self.last_stats = Some(stats.clone());
            self.outputs.push_back(QueueOutput::Stats(stats));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserves(q: &mut QueueMachine) -> Vec<(String, String)> {
        std::iter::from_fn(|| q.poll_output())
            .filter_map(|o| match o {
                QueueOutput::Reserve { agent, call, .. } => Some((agent.to_string(), call.0)),
                _ => None,
            })
            .collect()
    }
    /// A call joins the queue now (the rules apply).
    fn enqueue(q: &mut QueueMachine, call: &str, priority: u8, at: u64) {
        join(q, call, priority, at, true);
    }
    /// A call re-states a place it held before (a queue rebuilt after a node loss).
    fn restate(q: &mut QueueMachine, call: &str, priority: u8, at: u64) {
        join(q, call, priority, at, false);
    }
    fn join(q: &mut QueueMachine, call: &str, priority: u8, at: u64, arriving: bool) {
        q.handle(
            at,
            QueueInput::Enqueue {
                call: CallId(call.into()),
                call_node: 1,
                priority,
                enqueued_at_ms: at,
                offered_to: None,
                arriving,
                needs: Default::default(),
            },
        );
    }
    fn fulls(q: &mut QueueMachine) -> Vec<String> {
        std::iter::from_fn(|| q.poll_output())
            .filter_map(|o| match o {
                QueueOutput::TurnedAway { call, .. } => Some(call.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_queue_turns_new_calls_away_but_keeps_rejoining_ones() {
        let mut q = QueueMachine::new();
        q.set_max_queued(Some(2));
        enqueue(&mut q, "c1", 0, 1_100);
        enqueue(&mut q, "c2", 0, 1_200);
        assert!(fulls(&mut q).is_empty());
        enqueue(&mut q, "c3", 9, 1_300);
        assert_eq!(
            fulls(&mut q),
            vec!["c3"],
            "the limit holds whatever the priority"
        );
        assert_eq!(q.stats().waiting, 2);
        // A call that held its place before (the queue rebuilt after a node loss) re-joins.
        restate(&mut q, "c0", 0, 900);
        assert!(fulls(&mut q).is_empty());
        assert_eq!(q.stats().waiting, 3);
        // A call already waiting re-states its place: never turned away.
        enqueue(&mut q, "c1", 0, 1_100);
        assert!(fulls(&mut q).is_empty());
        // The limit lifted: new calls join again.
        q.set_max_queued(None);
        enqueue(&mut q, "c4", 0, 1_400);
        assert!(fulls(&mut q).is_empty());
        assert_eq!(q.stats().waiting, 4);
    }

    #[test]
    fn all_agents_busy_turns_new_calls_away_with_that_rule() {
        let mut q = QueueMachine::new();
        q.set_all_busy(true);
        enqueue(&mut q, "c1", 0, 1_100);
        restate(&mut q, "c0", 0, 900);
        let out: Vec<QueueOutput> = std::iter::from_fn(|| q.poll_output()).collect();
        assert!(out.contains(&QueueOutput::TurnedAway {
            call: CallId("c1".into()),
            call_node: 1,
            rule: QueueRule::AllBusy
        }));
        assert_eq!(q.stats().waiting, 1, "the re-joining call keeps its place");
        // The limit wins when both hold.
        q.set_max_queued(Some(1));
        enqueue(&mut q, "c2", 0, 1_200);
        let out: Vec<QueueOutput> = std::iter::from_fn(|| q.poll_output()).collect();
        assert!(out.iter().any(|o| matches!(
            o,
            QueueOutput::TurnedAway {
                rule: QueueRule::MaxQueued,
                ..
            }
        )));
        q.set_all_busy(false);
        q.set_max_queued(None);
        enqueue(&mut q, "c3", 0, 1_300);
        assert_eq!(q.stats().waiting, 2);
    }

    fn available(q: &mut QueueMachine, agent: &str, idle: u64, now: u64) {
        q.handle(
            now,
            QueueInput::AgentAvailable {
                agent: agent.parse().unwrap(),
                agent_node: 2,
                idle_since_ms: idle,
                fit: Default::default(),
            },
        );
    }

    #[test]
    fn longest_idle_agent_gets_the_call() {
        let mut q = QueueMachine::new();
        available(&mut q, "1001", 500, 1000);
        available(&mut q, "1002", 100, 1000);
        assert!(reserves(&mut q).is_empty());
        enqueue(&mut q, "c1", 0, 2000);
        assert_eq!(reserves(&mut q), vec![("1002".into(), "c1".into())]);
    }

    #[test]
    fn calls_served_by_priority_then_arrival() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "old", 0, 10);
        enqueue(&mut q, "vip", 5, 20);
        enqueue(&mut q, "new", 0, 30);
        available(&mut q, "1001", 0, 40);
        available(&mut q, "1002", 1, 40);
        available(&mut q, "1003", 2, 40);
        let order: Vec<String> = reserves(&mut q).into_iter().map(|(_, c)| c).collect();
        assert_eq!(order, vec!["vip", "old", "new"]);
    }

    #[test]
    fn refused_reservation_retries_with_next_agent_and_keeps_place() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "c1", 0, 10);
        available(&mut q, "1001", 0, 20);
        available(&mut q, "1002", 5, 20);
        assert_eq!(reserves(&mut q), vec![("1001".into(), "c1".into())]);
        q.handle(
            30,
            QueueInput::ReserveReply {
                agent: "1001".parse().unwrap(),
                call: CallId("c1".into()),
                accepted: false,
                extension: None,
            },
        );
        assert_eq!(reserves(&mut q), vec![("1002".into(), "c1".into())]);
        q.handle(
            40,
            QueueInput::ReserveReply {
                agent: "1002".parse().unwrap(),
                call: CallId("c1".into()),
                accepted: true,
                extension: Some("1002".parse().unwrap()),
            },
        );
        let offers: Vec<_> = std::iter::from_fn(|| q.poll_output())
            .filter(|o| matches!(o, QueueOutput::Offer { .. }))
            .collect();
        assert_eq!(offers.len(), 1);
        // Not answered: the call stays at the head with its original time.
        q.handle(
            50,
            QueueInput::OfferDone {
                call: CallId("c1".into()),
                agent: "1002".parse().unwrap(),
                answered: false,
            },
        );
        assert_eq!(q.waiting_calls(), vec![(CallId("c1".into()), 0, 10)]);
    }

    fn stats_out(q: &mut QueueMachine) -> Vec<QueueStats> {
        std::iter::from_fn(|| q.poll_output())
            .filter_map(|o| match o {
                QueueOutput::Stats(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stats_go_out_at_most_every_interval_and_never_stay_stale() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "c1", 0, 1_000);
        assert_eq!(
            stats_out(&mut q).len(),
            1,
            "the first change goes out at once"
        );
        assert_eq!(q.poll_timeout(), None, "nothing pending");
        for (i, at) in (1_010..1_200).step_by(10).enumerate() {
            enqueue(&mut q, &format!("c{}", i + 2), 0, at);
        }
        assert!(
            stats_out(&mut q).is_empty(),
            "a burst within the interval: no stats"
        );
        assert_eq!(
            q.poll_timeout(),
            Some(1_000 + STATS_EVERY_MS),
            "but a tick is asked for when they fall due"
        );
        q.handle_timeout(1_000 + STATS_EVERY_MS);
        let out = stats_out(&mut q);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].waiting, 20, "with the latest figures");
        assert_eq!(q.poll_timeout(), None);
    }

    #[test]
    fn silent_agent_reservation_times_out() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "c1", 0, 10);
        available(&mut q, "1001", 0, 20);
        let _ = reserves(&mut q);
        assert_eq!(q.next_deadline(), Some(20 + RESERVE_REPLY_TIMEOUT_MS));
        q.handle_timeout(20 + RESERVE_REPLY_TIMEOUT_MS);
        assert_eq!(q.stats().agents_available, 0);
        assert_eq!(q.stats().offering, 0);
    }

    #[test]
    fn removing_a_call_cancels_its_pending_reservation() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "c1", 0, 10);
        available(&mut q, "1001", 0, 20);
        let _ = reserves(&mut q);
        q.handle(
            30,
            QueueInput::Remove {
                call: CallId("c1".into()),
            },
        );
        let cancels = std::iter::from_fn(|| q.poll_output())
            .filter(|o| matches!(o, QueueOutput::CancelReservation { .. }))
            .count();
        assert_eq!(cancels, 1);
        assert_eq!(q.stats().waiting, 0);
    }

    #[test]
    fn replies_out_of_order_still_offer_in_queue_order() {
        let mut q = QueueMachine::new();
        available(&mut q, "1001", 0, 1);
        available(&mut q, "1002", 5, 1);
        enqueue(&mut q, "c1", 0, 10);
        enqueue(&mut q, "c2", 0, 20);
        assert_eq!(
            reserves(&mut q),
            vec![("1001".into(), "c1".into()), ("1002".into(), "c2".into())]
        );
        let reply = |q: &mut QueueMachine, agent: &str, call: &str| {
            q.handle(
                30,
                QueueInput::ReserveReply {
                    agent: agent.parse().unwrap(),
                    call: CallId(call.into()),
                    accepted: true,
                    extension: Some(agent.parse().unwrap()),
                },
            );
            std::iter::from_fn(|| q.poll_output())
                .filter_map(|o| match o {
                    QueueOutput::Offer { call, agent, .. } => Some((agent.to_string(), call.0)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // 1002 (reserved for c2) answers first: it takes c1, the earlier call.
        assert_eq!(
            reply(&mut q, "1002", "c2"),
            vec![("1002".into(), "c1".into())]
        );
        // 1001's pending reservation now holds it for c2.
        assert_eq!(
            reply(&mut q, "1001", "c1"),
            vec![("1001".into(), "c2".into())]
        );
    }

    #[test]
    fn a_rebuilt_queue_keeps_a_ringing_call_until_its_offer_settles() {
        // A queue rebuilt on a new owner learns from the call that it rings agent 1001.
        let mut q = QueueMachine::new();
        q.handle(
            10,
            QueueInput::Enqueue {
                call: CallId("a".into()),
                call_node: 1,
                priority: 0,
                enqueued_at_ms: 5,
                offered_to: Some("1001".parse().unwrap()),
                arriving: false,
                needs: Default::default(),
            },
        );
        enqueue(&mut q, "b", 0, 8);
        available(&mut q, "1002", 1, 11);
        assert_eq!(
            reserves(&mut q),
            vec![("1002".into(), "b".into())],
            "the ringing call is not offered twice"
        );
        // The same call re-joins from its new node: same place, new node.
        q.handle(
            12,
            QueueInput::Enqueue {
                call: CallId("a".into()),
                call_node: 3,
                priority: 0,
                enqueued_at_ms: 5,
                offered_to: Some("1001".parse().unwrap()),
                arriving: false,
                needs: Default::default(),
            },
        );
        assert_eq!(q.waiting_calls().len(), 2);
        // The ring failed: the call is first in line again.
        q.handle(
            13,
            QueueInput::OfferDone {
                call: CallId("a".into()),
                agent: "1001".parse().unwrap(),
                answered: false,
            },
        );
        available(&mut q, "1003", 2, 14);
        assert_eq!(reserves(&mut q), vec![("1003".into(), "a".into())]);
    }

    /// Offers c1 (on node 1) to 1001 (on node 2), and drains the outputs.
    fn offered(q: &mut QueueMachine) {
        enqueue(q, "c1", 0, 10);
        available(q, "1001", 0, 20);
        assert_eq!(reserves(q), vec![("1001".into(), "c1".into())]);
        q.handle(
            30,
            QueueInput::ReserveReply {
                agent: "1001".parse().unwrap(),
                call: CallId("c1".into()),
                accepted: true,
                extension: Some("1001".parse().unwrap()),
            },
        );
        let offers = std::iter::from_fn(|| q.poll_output())
            .filter(|o| matches!(o, QueueOutput::Offer { .. }))
            .count();
        assert_eq!(offers, 1);
    }

    fn rejoin(q: &mut QueueMachine, call_node: NodeId, now: u64) -> Vec<QueueOutput> {
        q.handle(
            now,
            QueueInput::Enqueue {
                call: CallId("c1".into()),
                call_node,
                priority: 0,
                enqueued_at_ms: 10,
                offered_to: None,
                arriving: false,
                needs: Default::default(),
            },
        );
        std::iter::from_fn(|| q.poll_output()).collect()
    }

    #[test]
    fn a_moved_call_frees_the_agent_its_lost_offer_held() {
        let mut q = QueueMachine::new();
        // 1001's pending reservation for c2 is handed to c1 (the earlier call): the agent
        // knows it by c2.
        available(&mut q, "1001", 0, 1);
        available(&mut q, "1002", 5, 1);
        enqueue(&mut q, "c1", 0, 10);
        enqueue(&mut q, "c2", 0, 20);
        assert_eq!(
            reserves(&mut q),
            vec![("1001".into(), "c1".into()), ("1002".into(), "c2".into())]
        );
        q.handle(
            30,
            QueueInput::ReserveReply {
                agent: "1002".parse().unwrap(),
                call: CallId("c2".into()),
                accepted: true,
                extension: Some("1002".parse().unwrap()),
            },
        );
        let offers: Vec<_> = std::iter::from_fn(|| q.poll_output())
            .filter_map(|o| match o {
                QueueOutput::Offer { call, agent, .. } => Some((agent.to_string(), call.0)),
                _ => None,
            })
            .collect();
        assert_eq!(offers, vec![("1002".into(), "c1".into())]);
        // The offer to c1's node 1 is lost; node 3 takes c1 over and re-enqueues it.
        let outputs = rejoin(&mut q, 3, 40);
        let cancels: Vec<_> = outputs
            .iter()
            .filter_map(|o| match o {
                QueueOutput::CancelReservation {
                    agent,
                    agent_node,
                    call,
                } => Some((agent.to_string(), *agent_node, call.0.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(cancels, vec![("1002".into(), 2, "c2".into())]);
        // Once freed, the agent announces itself and c1 (first in line) gets it.
        available(&mut q, "1002", 40, 41);
        assert_eq!(reserves(&mut q), vec![("1002".into(), "c1".into())]);
        // A second Enqueue from the new node cancels nothing more.
        let outputs = rejoin(&mut q, 3, 42);
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, QueueOutput::CancelReservation { .. })));
    }

    #[test]
    fn a_same_node_enqueue_without_agent_does_not_free_the_agent() {
        let mut q = QueueMachine::new();
        offered(&mut q);
        // The periodic re-Enqueue crossed the Offer in flight: back in line, but the agent
        // stays held (it may be about to ring).
        let outputs = rejoin(&mut q, 1, 40);
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, QueueOutput::CancelReservation { .. })));
        assert_eq!(q.stats().offering, 0);
        // Nor does a later move: the offer was already given up.
        let outputs = rejoin(&mut q, 3, 50);
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, QueueOutput::CancelReservation { .. })));
    }

    #[test]
    fn a_moved_call_whose_offer_settled_frees_nobody() {
        let mut q = QueueMachine::new();
        offered(&mut q);
        q.handle(
            40,
            QueueInput::OfferDone {
                call: CallId("c1".into()),
                agent: "1001".parse().unwrap(),
                answered: false,
            },
        );
        let _ = std::iter::from_fn(|| q.poll_output()).count();
        let outputs = rejoin(&mut q, 3, 50);
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, QueueOutput::CancelReservation { .. })));
    }

    #[test]
    fn the_wait_estimate_follows_the_place_in_line_and_the_recent_service_rate() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "c1", 0, 0);
        assert_eq!(
            q.estimate_wait(1, &CallId("c1".into())),
            Some((0, None)),
            "no answers yet: no estimate"
        );
        assert_eq!(q.estimate_wait(1, &CallId("nobody".into())), None);
        // Answer three calls, one a minute (t = 1, 2, 3 min).
        for (n, at) in [(1u64, 60_000u64), (2, 120_000), (3, 180_000)] {
            let call = format!("a{n}");
            enqueue(&mut q, &call, 9, at - 10);
            q.handle(
                at,
                QueueInput::OfferDone {
                    call: CallId(call),
                    agent: "1001".parse().unwrap(),
                    answered: true,
                },
            );
        }
        enqueue(&mut q, "c2", 0, 190_000);
        enqueue(&mut q, "vip", 5, 195_000);
        std::iter::from_fn(|| q.poll_output()).for_each(drop);
        // At 4 min: 3 answers over the last 3 min (from the first), one a minute.
        let now = 240_000;
        assert_eq!(
            q.estimate_wait(now, &CallId("c2".into())),
            Some((2, Some(3 * 60_000))),
            "behind the VIP and c1"
        );
        assert_eq!(
            q.estimate_wait(now, &CallId("vip".into())),
            Some((0, Some(60_000)))
        );
        q.handle(
            now,
            QueueInput::EstimateWait {
                call: CallId("c1".into()),
                call_node: 2,
            },
        );
        assert!(std::iter::from_fn(|| q.poll_output()).any(|o| o
            == QueueOutput::WaitEstimate {
                call: CallId("c1".into()),
                call_node: 2,
                ahead: 1,
                wait_ms: Some(2 * 60_000)
            }));
        // Half an hour without answers: the rate is stale.
        assert_eq!(
            q.estimate_wait(now + SERVICE_WINDOW_MS, &CallId("c1".into())),
            Some((1, None))
        );
    }

    #[test]
    fn a_rebuilt_queue_keeps_the_service_history_its_last_owner_broadcast() {
        let mut old = QueueMachine::new();
        for at in [10_000u64, 20_000, 30_000] {
            enqueue(&mut old, "c", 0, at - 1);
            old.handle(
                at,
                QueueInput::OfferDone {
                    call: CallId("c".into()),
                    agent: "1001".parse().unwrap(),
                    answered: true,
                },
            );
        }
        let broadcast = old.stats().answered_at_ms;
        assert_eq!(broadcast, vec![10_000, 20_000, 30_000]);
        let mut new = QueueMachine::new();
        new.seed_answers(&broadcast);
        new.seed_answers(&broadcast);
        enqueue(&mut new, "w", 0, 35_000);
        assert_eq!(
            new.estimate_wait(40_000, &CallId("w".into())),
            old_estimate(40_000),
            "the same estimate as the old owner would give"
        );
        fn old_estimate(now: u64) -> Option<(usize, Option<u64>)> {
            Some((0, Some((now - 10_000) / 3)))
        }
        let many: Vec<u64> = (0..50).map(|i| i * 1_000).collect();
        new.seed_answers(&many);
        assert_eq!(new.stats().answered_at_ms.len(), SERVICE_SAMPLES);
        assert_eq!(new.stats().answered_at_ms.last(), Some(&49_000));
    }

    fn join_needing(q: &mut QueueMachine, call: &str, at: u64, needs: CallNeeds) {
        q.handle(
            at,
            QueueInput::Enqueue {
                call: CallId(call.into()),
                call_node: 1,
                priority: 0,
                enqueued_at_ms: at,
                offered_to: None,
                arriving: true,
                needs,
            },
        );
    }
    fn available_as(q: &mut QueueMachine, agent: &str, idle: u64, now: u64, tags: &[&str]) {
        q.handle(
            now,
            QueueInput::AgentAvailable {
                agent: agent.parse().unwrap(),
                agent_node: 2,
                idle_since_ms: idle,
                fit: AgentFit {
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    level: 1,
                },
            },
        );
    }

    #[test]
    fn a_call_needing_a_tag_waits_for_such_an_agent_without_holding_up_the_line() {
        let mut q = QueueMachine::new();
        let needs = CallNeeds {
            agent_tags: vec!["cantonese".into()],
            ..CallNeeds::default()
        };
        join_needing(&mut q, "c1", 1_000, needs);
        enqueue(&mut q, "c2", 0, 1_100);
        available_as(&mut q, "1001", 500, 1_200, &["mandarin"]);
        assert_eq!(
            reserves(&mut q),
            vec![("1001".into(), "c2".into())],
            "the agent without the tag takes the next call"
        );
        available_as(&mut q, "1002", 900, 1_300, &["cantonese", "vip"]);
        assert_eq!(reserves(&mut q), vec![("1002".into(), "c1".into())]);
    }

    #[test]
    fn the_earliest_widening_follows_calls_coming_and_going() {
        let mut q = QueueMachine::new();
        let relax = |at| CallNeeds {
            min_level: 5,
            relax_at_ms: Some(at),
            ..CallNeeds::default()
        };
        join_needing(&mut q, "late", 1_000, relax(20_000));
        assert_eq!(q.next_deadline(), Some(20_000));
        join_needing(&mut q, "early", 1_100, relax(9_000));
        assert_eq!(
            q.next_deadline(),
            Some(9_000),
            "a new call's earlier deadline"
        );
        // Re-stating a place (every second) changes nothing.
        join_needing(&mut q, "late", 2_000, relax(20_000));
        assert_eq!(q.next_deadline(), Some(9_000));
        q.handle(
            2_100,
            QueueInput::Remove {
                call: CallId("early".into()),
            },
        );
        // The removed call's deadline may stay as a spurious tick, which recomputes.
        q.handle_timeout(9_000);
        assert_eq!(q.next_deadline(), Some(20_000));
    }

    #[test]
    fn needs_relax_at_their_time_and_the_call_goes_to_any_agent() {
        let mut q = QueueMachine::new();
        let needs = CallNeeds {
            min_level: 5,
            relax_at_ms: Some(11_000),
            ..CallNeeds::default()
        };
        join_needing(&mut q, "vip", 1_000, needs);
        available_as(&mut q, "1001", 500, 1_200, &[]);
        assert!(reserves(&mut q).is_empty(), "a level-1 agent is not enough");
        assert_eq!(q.next_deadline(), Some(11_000));
        q.handle_timeout(11_000);
        assert_eq!(reserves(&mut q), vec![("1001".into(), "vip".into())]);
        assert_eq!(q.next_deadline(), Some(11_000 + RESERVE_REPLY_TIMEOUT_MS));
    }

    #[test]
    fn a_repeat_caller_waits_for_its_agent_for_a_while_then_takes_anyone() {
        let mut q = QueueMachine::new();
        let needs = CallNeeds {
            prefer: vec!["1002".parse().unwrap(), "1003".parse().unwrap()],
            prefer_until_ms: 21_000,
            ..CallNeeds::default()
        };
        available_as(&mut q, "1001", 100, 1_000, &[]);
        join_needing(&mut q, "rc", 1_000, needs.clone());
        assert!(
            reserves(&mut q).is_empty(),
            "the longest-idle agent is not one it prefers"
        );
        // The preferred agent frees up in time: it gets the call, however short its idle.
        available_as(&mut q, "1003", 5_000, 5_000, &[]);
        assert_eq!(reserves(&mut q), vec![("1003".into(), "rc".into())]);

        // Another repeat caller: its agents stay busy, so it falls back when the wait ends.
        let mut q = QueueMachine::new();
        available_as(&mut q, "1001", 100, 1_000, &[]);
        join_needing(&mut q, "rc", 1_000, needs);
        assert!(reserves(&mut q).is_empty());
        assert_eq!(q.next_deadline(), Some(21_000));
        q.handle_timeout(21_000);
        assert_eq!(reserves(&mut q), vec![("1001".into(), "rc".into())]);
        assert_eq!(q.next_deadline(), Some(21_000 + RESERVE_REPLY_TIMEOUT_MS));
    }

    #[test]
    fn an_accepted_agent_is_only_moved_to_an_earlier_call_it_fits() {
        let mut q = QueueMachine::new();
        let needs = CallNeeds {
            agent_tags: vec!["vip".into()],
            ..CallNeeds::default()
        };
        join_needing(&mut q, "vip", 1_000, needs);
        enqueue(&mut q, "plain", 0, 1_100);
        available_as(&mut q, "1001", 100, 1_200, &["vip"]);
        available_as(&mut q, "1002", 200, 1_200, &[]);
        let mut got = reserves(&mut q);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("1001".into(), "vip".into()),
                ("1002".into(), "plain".into())
            ]
        );
        // 1002 answers first: the earlier call "vip" has no offer yet, but 1002 lacks the
        // tag, so 1002 stays with "plain".
        q.handle(
            1_300,
            QueueInput::ReserveReply {
                agent: "1002".parse().unwrap(),
                call: CallId("plain".into()),
                accepted: true,
                extension: Some("2002".parse().unwrap()),
            },
        );
        let offers: Vec<(String, String)> = std::iter::from_fn(|| q.poll_output())
            .filter_map(|o| match o {
                QueueOutput::Offer { agent, call, .. } => Some((agent.to_string(), call.0)),
                _ => None,
            })
            .collect();
        assert_eq!(offers, vec![("1002".into(), "plain".into())]);
    }

    #[test]
    fn a_changed_priority_moves_the_call_and_keeps_its_arrival() {
        let mut q = QueueMachine::new();
        enqueue(&mut q, "a", 0, 1_000);
        enqueue(&mut q, "b", 0, 2_000);
        enqueue(&mut q, "c", 5, 3_000);
        restate(&mut q, "b", 7, 2_000);
        let order: Vec<(String, u8, u64)> = q
            .waiting_calls()
            .into_iter()
            .map(|(c, p, at)| (c.0, p, at))
            .collect();
        assert_eq!(
            order,
            vec![
                ("b".into(), 7, 2_000),
                ("c".into(), 5, 3_000),
                ("a".into(), 0, 1_000)
            ]
        );
        assert_eq!(q.stats().waiting, 3);
        q.handle(
            4_000,
            QueueInput::Remove {
                call: CallId("b".into()),
            },
        );
        assert_eq!(q.stats().waiting, 2);
    }
}
