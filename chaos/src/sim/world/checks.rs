//! The invariants, after every step and at the end of a run.

use super::*;

impl World {
    // ---- checks --------------------------------------------------------------------

    /// I4, first half: an offer notes which calls of its queue were ahead of it in line and
    /// had been waiting visibly (queued on a running node) for longer than the slack.
    pub(super) fn check_order(
        &mut self,
        clock: u64,
        call: &CallId,
        queue: &model::QueueId,
        agent: &model::AgentId,
        enqueued_at_ms: u64,
    ) {
        self.trace(format!("{call} offered {agent} from {queue}"));
        self.offered_at.insert(call.clone(), clock);
        let Some(me) = self.callers.get(call) else {
            return;
        };
        // A call's place in line is its priority, then when it joined the queue (I4's
        // "arrival"; what the queue orders by and a takeover keeps), not when it dialled: the
        // customer's 200 waits for the first checkpoint (up to 300 ms), and only then does the
        // call reach its queue, so a call that dialled a little earlier may rightly join
        // after one whose first checkpoint committed sooner.
        let (_, q, p) = workload::ENTRIES[me.entry];
        let mine = (std::cmp::Reverse(p), enqueued_at_ms);
        let ahead: Vec<(CallId, u64)> = self
            .queued_since
            .iter()
            .filter(|(id, (since, _))| *id != call && clock >= *since + ORDER_SLACK_MS)
            .filter(|(id, (_, joined))| {
                self.callers.get(*id).is_some_and(|o| {
                    let (_, oq, op) = workload::ENTRIES[o.entry];
                    oq == q && !o.gone && (std::cmp::Reverse(op), *joined) < mine
                })
            })
            .map(|(id, (since, _))| (id.clone(), *since))
            .collect();
        if !ahead.is_empty() {
            self.offers_to_judge
                .push((clock, call.clone(), queue.clone(), ahead));
        }
    }

    /// I4, second half: a call that was ahead must have been offered within the slack of
    /// the offer that passed it (the queue may offer several calls at once, and they reach
    /// their nodes in any order), unless its caller left.
    pub(super) fn judge_offers(&mut self, clock: u64) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.offers_to_judge)
            .into_iter()
            .partition(|(at, ..)| clock >= at + ORDER_SLACK_MS);
        self.offers_to_judge = later;
        for (at, call, queue, ahead) in due {
            for (other, since) in ahead {
                let served = self
                    .offered_at
                    .get(&other)
                    .is_some_and(|o| *o >= since && *o <= at + ORDER_SLACK_MS);
                let left = self.callers.get(&other).is_none_or(|c| c.gone);
                if !served && !left {
                    let detail = format!(
                        "in queue {queue}, {call} was offered at {at} while {other}, ahead of it, had waited in line since {since} and was not offered within {ORDER_SLACK_MS} ms"
                    );
                    self.violations.push(v("I4", detail));
                    return;
                }
            }
        }
    }

    pub(super) fn check_step(&mut self, now: u64) {
        let clock = clock_ms();
        self.judge_offers(clock);
        // Raft's progress is part of the trace: the same seed elects the same leaders and
        // applies the same entries at the same steps.
        for id in self.running() {
            let node = self.slots[&id].node.as_ref().expect("running");
            let m = node.raft.metrics().borrow().clone();
            let leader = m.current_leader.unwrap_or(0);
            let applied = node.replica.last_applied();
            for x in [id, m.current_term, leader, applied] {
                fnv(&mut self.trace_hash, &x.to_le_bytes());
            }
        }
        for id in self.running() {
            let node = self.slots[&id].node.as_ref().expect("running");
            if let Some(msg) = &node.livelock {
                let detail = format!("n{id}'s actors message each other endlessly, e.g. {msg}");
                self.violations.push(v("liveness", detail));
            }
        }
        // Raft safety: one leader per term; every replica applies the same entry at an index.
        for id in self.running() {
            let node = self.slots[&id].node.as_ref().expect("running");
            let m = node.raft.metrics().borrow().clone();
            if m.state == openraft::ServerState::Leader {
                let first = *self.leaders.entry(m.current_term).or_insert(id);
                if first != id {
                    self.violations.push(v(
                        "raft",
                        format!("two leaders in term {}: n{first} and n{id}", m.current_term),
                    ));
                }
            }
        }
        for id in self.running() {
            let node = self.slots[&id].node.as_ref().expect("running");
            for (index, hash) in node.replica.applied_hashes() {
                let first = *self.applied.entry(index).or_insert(hash);
                if first != hash {
                    self.violations.push(v(
                        "raft",
                        format!("n{id} applied another entry at index {index}"),
                    ));
                }
            }
        }
        // I6: a replica that applied past a committed configuration write holds it (or a
        // later write of the same item, whose commit may not be reported yet).
        for id in self.running() {
            let node = self.slots[&id].node.as_ref().expect("running");
            let applied = node.replica.last_applied();
            let tags = &self.tags;
            let later = |tag: u64, held: &ConfigItem| {
                tags.range(tag..).any(|(_, c)| {
                    matches!(c, Command::Create { item } | Command::Update { item } if item == held)
                })
            };
            let missing = node.replica.read(|s| {
                self.committed_config
                    .iter()
                    .filter(|(_, (index, _, _))| *index <= applied)
                    .find(|(_, (_, tag, item))| {
                        lookup(s, &item.key()).is_none_or(|held| !later(*tag, &held))
                    })
                    .map(|(k, (index, _, _))| format!("{k} committed at {index}"))
            });
            if let Some(what) = missing {
                self.violations.push(v(
                    "I6",
                    format!("n{id} applied up to {applied} but lost {what}"),
                ));
            }
        }
        // Where each call is now, as the nodes that run it see it. A node the cluster has
        // declared down (in the most advanced replica) but that does not know it yet still
        // runs its old calls: they are zombies, fenced off and dropped once it learns, so
        // they do not count.
        if self.running().is_empty() {
            return;
        }
        let down = self.declared_down();
        let mut hosted: BTreeMap<CallId, Vec<(NodeId, Option<CallPhase>)>> = BTreeMap::new();
        for id in self.running().into_iter().filter(|id| !down.contains(id)) {
            let node = self.slots[&id].node.as_ref().expect("running");
            for (call, m) in node.hosted_calls() {
                hosted
                    .entry(call.clone())
                    .or_default()
                    .push((id, m.phase()));
            }
        }
        // I3: an established call never goes back to waiting.
        for (call, hosts) in &hosted {
            let Some(c) = self.callers.get(call) else {
                continue;
            };
            if !c.protected {
                continue;
            }
            if let Some((node, phase)) = hosts.iter().find(|(_, p)| {
                matches!(
                    p,
                    Some(CallPhase::Queued { .. } | CallPhase::Offering { .. })
                )
            }) {
                let detail =
                    format!("established call {call} is back in line on n{node}: {phase:?}");
                self.violations.push(v("I3", detail));
            }
        }
        // I4 bookkeeping: since when each call waits visibly.
        let queued: BTreeMap<CallId, u64> = hosted
            .iter()
            .filter_map(|(c, hosts)| {
                hosts.iter().find_map(|(_, p)| match p {
                    Some(CallPhase::Queued { enqueued_at_ms, .. }) => {
                        Some((c.clone(), *enqueued_at_ms))
                    }
                    _ => None,
                })
            })
            .collect();
        self.queued_since.retain(|c, _| queued.contains_key(c));
        for (c, joined) in queued {
            self.queued_since.entry(c).or_insert((clock, joined));
        }
        // I1 from the phones: at most one call per agent (a second one is flagged when it
        // rings); and from the agents' machines on nodes holding a lease: no agent bound to
        // two calls.
        let mut bound: BTreeMap<String, BTreeSet<CallId>> = BTreeMap::new();
        for id in self.running() {
            let node = self.slots[&id].node.as_ref().expect("running");
            if !node.holds_lease(clock) {
                continue;
            }
            for s in node.agent_sessions() {
                if let Some(call) = s.status.call() {
                    bound
                        .entry(s.agent.to_string())
                        .or_default()
                        .insert(call.clone());
                }
            }
        }
        for (agent, calls) in bound {
            if calls.len() > 1 {
                self.violations.push(v(
                    "I1",
                    format!("agent {agent} is bound to {calls:?} on nodes holding leases"),
                ));
            }
        }
        let _ = now;
    }

    /// The nodes the cluster has declared down, in the most advanced running replica.
    pub(super) fn declared_down(&self) -> Vec<NodeId> {
        let newest = self.running().into_iter().max_by_key(|id| {
            let n = self.slots[id].node.as_ref().expect("running");
            (n.replica.last_applied(), *id)
        });
        newest.map_or_else(Vec::new, |id| {
            self.slots[&id]
                .node
                .as_ref()
                .expect("running")
                .replica
                .read(|s| NODES.iter().copied().filter(|n| s.is_down(*n)).collect())
        })
    }

    /// Every caller is done and every replica agrees that every call that reached the cluster
    /// has its CDR.
    pub(super) fn drained(&self) -> bool {
        self.undrained().is_empty()
    }

    pub(super) fn undrained(&self) -> String {
        if self.running().len() != NODES.len() {
            return "a node is down".into();
        }
        if let Some(c) = self
            .callers
            .values()
            .find(|c| c.answered && (!c.gone || c.bye.is_some()))
        {
            return format!("caller {} still on the line", c.id);
        }
        if let Some((a, _)) = self
            .phones
            .iter()
            .find(|(_, p)| p.connected.is_some() || p.ringing.is_some())
        {
            return format!("agent {a}'s phone still busy");
        }
        for id in NODES {
            let node = self.slots[&id].node.as_ref().expect("running");
            if let Some((call, _)) = node.hosted_calls().next() {
                return format!("n{id} still runs {call}");
            }
            if node.backlog() > 0 {
                return format!("n{id} has {} checkpoints pending", node.backlog());
            }
            let missing = node.replica.read(|s| {
                if let Some(c) = s.calls.keys().next() {
                    return Some(format!("n{id} still has the checkpoint of {c}"));
                }
                self.callers
                    .values()
                    .find(|c| c.answered && !s.cdrs.contains_key(c.id.as_str()))
                    .map(|c| {
                        let how = if c.degraded {
                            "answered in degraded mode, before its first checkpoint committed"
                        } else {
                            "answered after its first checkpoint committed"
                        };
                        format!("n{id} has no CDR for {} ({how})", c.id)
                    })
            });
            if let Some(m) = missing {
                return m;
            }
        }
        String::new()
    }

    pub(super) fn check_end(&mut self) {
        let node = self.slots[&1].node.as_ref().expect("running");
        let cdrs: Vec<model::Cdr> = node
            .replica
            .read(|s| s.cdrs.values().map(|c| model::Cdr::clone(c)).collect());
        self.stats.cdrs = cdrs.len();
        let expected: Vec<String> = self
            .callers
            .values()
            .filter(|c| c.answered)
            .map(|c| c.id.to_string())
            .collect();
        let mut found = crate::one_cdr_per_call(&cdrs, expected.iter().map(|s| s.as_str()));
        found.extend(crate::no_double_booking(&cdrs));
        // `served_in_order` is not used here: a CDR keeps only a call's last offer, and a call
        // whose first offer rang out is legitimately passed meanwhile; the online check sees
        // every offer.
        for cdr in &cdrs {
            if cdr.disposition == Disposition::Failed {
                found.push(v(
                    "I2",
                    format!("call {} failed: {:?}", cdr.call_id, cdr.reason),
                ));
            }
            if let Some(c) = self.callers.get(&cdr.call_id) {
                if c.protected && cdr.disposition != Disposition::Answered {
                    found.push(v(
                        "I3",
                        format!(
                            "established call {} recorded as {:?}",
                            c.id, cdr.disposition
                        ),
                    ));
                }
            }
        }
        // I6 and agreement: every replica holds the same configuration and records.
        let reference = node
            .replica
            .read(|s| (s.config_version, s.cdrs.len(), s.prompts.len()));
        for id in NODES {
            let n = self.slots[&id].node.as_ref().expect("running");
            let mine = n
                .replica
                .read(|s| (s.config_version, s.cdrs.len(), s.prompts.len()));
            if mine != reference {
                found.push(v(
                    "I6",
                    format!("n{id} ends with (config version, CDRs, prompts) {mine:?}, n1 with {reference:?}"),
                ));
            }
        }
        self.violations.extend(found);
        let _ = Mutation::None;
    }
}
