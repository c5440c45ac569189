//! Leases, the leader's failure detector, and what a node does when the cluster declares a
//! node down or up (cluster/src/liveness.rs, `Runtime::on_node_down` and friends).

use super::*;

impl SimNode {
    // ---- liveness (cluster/src/liveness.rs) ------------------------------------------------

    pub(super) fn liveness(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let me = self.id;
        // A committed heartbeat gives the lease once it is applied here.
        if let Some((sent, epoch, at_ms)) = self.lease_pending {
            let applied = self.replica.read(|s| {
                s.nodes
                    .get(&me)
                    .is_some_and(|n| n.epoch == epoch && n.last_heartbeat_ms >= at_ms)
            });
            if now >= sent + LEASE_MS {
                self.lease_pending = None;
            } else if applied {
                self.lease_pending = None;
                self.lease_until = Some(sent + LEASE_MS);
            }
        }
        if !self.beat_busy && self.lease_pending.is_none() && now >= self.next_beat {
            self.next_beat = now + HEARTBEAT_MS;
            let (epoch, down) = self.replica.read(|s| (s.epoch(me), s.is_down(me)));
            if down {
                self.lease_until = None;
            } else {
                self.beat_busy = true;
                self.spawn_write(
                    WriteKind::Heartbeat {
                        sent: now,
                        epoch,
                        at_ms: now,
                    },
                    Command::Heartbeat {
                        node: me,
                        epoch,
                        at_ms: now,
                    },
                );
            }
        }
        // The leader's failure detector.
        if self.detect_busy || now < self.next_detect {
            return;
        }
        self.next_detect = now + 50;
        if self.raft.metrics().borrow().current_leader != Some(me) {
            self.leader_since = None;
            return;
        }
        let since = *self.leader_since.get_or_insert(now);
        // liveness.rs `detect`: a new leader judges by the heartbeats it applied as a
        // follower, after a grace of three heartbeat periods (so the survivors reach it after
        // the election).
        if now - since < (3 * HEARTBEAT_MS).min(DOWN_AFTER_MS) {
            return;
        }
        if !self.holds_lease(now) {
            // Mirrors `cluster::liveness` `detect` (`lease_valid`): an isolated leader hears
            // nobody and would find every other node silent; its NodeDown would stay in its
            // log and commit once the cut heals, against nodes alive all along. Only a leader
            // whose own heartbeats commit (it holds its lease) judges others silent.
            return;
        }
        let suspect = self.replica.read(|s| {
            self.voters
                .iter()
                .filter(|id| **id != me && !s.is_down(**id))
                .find(|id| {
                    // Mirrors `cluster::liveness::detect`: silence counts from becoming leader at
                    // the earliest (nobody could commit a heartbeat during the election).
                    let last = self.heard.get(id).copied().unwrap_or(since).max(since);
                    now - last >= DOWN_AFTER_MS
                })
                .map(|id| (*id, s.epoch(*id)))
        });
        if let Some((node, epoch)) = suspect {
            ctx.trace.push(format!(
                "n{me} (leader) declares n{node} down at epoch {epoch}"
            ));
            self.detect_busy = true;
            self.spawn_write(
                WriteKind::NodeDown,
                Command::NodeDown {
                    node,
                    epoch,
                    at_ms: now,
                },
            );
        }
    }

    pub(super) fn on_applied(&mut self, ctx: &mut Ctx, index: u64, command: &Command) {
        match command {
            Command::Heartbeat { node, .. } | Command::NodeUp { node, .. } => {
                self.heard.insert(*node, ctx.now);
            }
            _ => {}
        }
        match command {
            Command::NodeDown { node, .. } => {
                ctx.trace
                    .push(format!("n{} applies NodeDown n{node} @{index}", self.id));
                if *node == self.id {
                    self.on_declared_down(ctx);
                } else {
                    self.take_over_orphans(ctx, false);
                }
            }
            Command::NodeUp { node, .. } => {
                ctx.trace
                    .push(format!("n{} applies NodeUp n{node} @{index}", self.id));
                // Mirrors `actors::node::react` on `NodeUp`: `Runtime::on_node_up`, then, for
                // another node, `take_over_orphans(false)` (its old calls, fenced out now,
                // may have had no taker yet).
                if *node == self.id {
                    self.on_rejoined(ctx);
                }
                self.stop_actors_not_owned(false);
                self.resync_calls(ctx);
                if *node != self.id {
                    self.take_over_orphans(ctx, false);
                }
            }
            Command::Batch { commands } => {
                for c in commands {
                    self.on_applied(ctx, index, c);
                }
            }
            Command::Group { commands } => {
                for c in commands {
                    self.on_applied(ctx, index, c);
                }
            }
            _ => {}
        }
    }

    /// Mirrors `actors::node::Node::start`'s resume task: once Raft has a leader and this
    /// node has caught up (`Cluster::wait_ready`), it polls every 50 ms: a node the cluster
    /// declared down while it was away drops what others own and rejoins (G2), then takes
    /// over its share of the orphans (`take_over_orphans(false)`); otherwise, once it holds
    /// a lease, it takes over its share of the orphans, its own calls still checkpointed
    /// included (G4, `take_over_orphans(true)`). A restarted follower may know a leader and
    /// have applied its term from its own log while the cluster moved on; its lease proves
    /// it caught up (its heartbeat, committed after everything before it, is applied here).
    pub(super) fn start_up(&mut self, ctx: &mut Ctx) {
        if self.ready || ctx.now < self.resume_poll_at {
            return;
        }
        if !self.caught_up {
            let m = self.raft.metrics().borrow().clone();
            let applied_term = m.last_applied.map(|id| id.leader_id.term);
            if m.current_leader.is_none() || applied_term != Some(m.current_term) {
                return;
            }
            self.caught_up = true;
        }
        if self.is_down(self.id) {
            self.ready = true;
            ctx.trace
                .push(format!("n{} is ready, declared down", self.id));
            self.on_declared_down(ctx);
            self.take_over_orphans(ctx, false);
            return;
        }
        if self.holds_lease(ctx.now) {
            self.ready = true;
            ctx.trace.push(format!("n{} is ready", self.id));
            self.take_over_orphans(ctx, true);
            return;
        }
        self.resume_poll_at = ctx.now + RESUME_POLL_MS;
    }

    /// A snapshot from the leader replaced the state: the NodeDown and NodeUp commands it
    /// covers were never applied here one by one. Mirrors `actors::node::Runtime::reconcile`
    /// (on the `snapshot` event `cluster`'s state machine publishes): a node that finds
    /// itself down drops what others own and rejoins; then it takes over its share of the
    /// orphans.
    pub(super) fn on_snapshot_installed(&mut self, ctx: &mut Ctx) {
        ctx.trace
            .push(format!("n{} installed a snapshot: reconciles", self.id));
        if self.is_down(self.id) {
            self.on_declared_down(ctx);
        }
        self.take_over_orphans(ctx, false);
    }

    /// Mirrors `actors::node::Runtime::on_declared_down`: the calls the cluster knows (a
    /// checkpoint or a CDR in the replica) are taken over by other nodes, so they are
    /// abandoned without a word (`CallMsg::Abandon`); their pending checkpoints stay in the
    /// writer, to be refused by the fence. The calls nobody else knows (never checkpointed)
    /// stay here and are checkpointed again once the node has rejoined (G1,
    /// `CallMsg::Recheckpoint`). Queue and agent actors all go; the rejoin loop starts.
    pub(super) fn on_declared_down(&mut self, ctx: &mut Ctx) {
        let known = |s: &model::ReplicatedState, call: &str| {
            s.calls.contains_key(call) || s.cdrs.contains_key(call)
        };
        let dropped: Vec<CallId> = self.replica.read(|s| {
            self.calls
                .keys()
                .filter(|c| known(s, c.as_str()))
                .cloned()
                .collect()
        });
        ctx.trace.push(format!(
            "n{} declared down: drops {} of {} calls, {} queues, {} agents",
            self.id,
            dropped.len(),
            self.calls.len(),
            self.queues.len(),
            self.agents.len()
        ));
        for call in &dropped {
            self.calls.remove(call);
            self.first_waiters.remove(&format!("call:{call}"));
            self.ack_waiters.remove(&format!("call:{call}"));
        }
        self.stop_actors_not_owned(true);
        if !self.rejoin_busy && self.rejoin_at.is_none() {
            self.rejoin_at = Some(ctx.now);
        }
    }

    /// Mirrors `actors::node::Runtime::on_node_up` for this node: serve gained actors only
    /// after the others' leases ran out (`serve_after`). The kept calls re-checkpoint later,
    /// when the rejoin loop sees the node up (`rejoin`).
    pub(super) fn on_rejoined(&mut self, ctx: &mut Ctx) {
        self.serve_after = Some(ctx.now + LEASE_MS);
    }

    /// Mirrors `actors::node::Runtime::take_over_orphans`: this node's share
    /// (`orphan_taker`) of every orphaned call (`model::ReplicatedState::orphaned`: its owner
    /// is down, or its checkpoint is fenced with an epoch its owner has left) and, with `own`
    /// (start-up under a lease, DR restore), of its own calls still checkpointed but not
    /// running here; signed-in agents and queues placement gives it; then every local call
    /// re-states its queue place.
    pub(super) fn take_over_orphans(&mut self, ctx: &mut Ctx, own: bool) {
        let me = self.id;
        let hosted: Vec<CallId> = self.calls.keys().cloned().collect();
        let (calls, sessions, queues) = self.replica.read(|s| {
            let calls: Vec<(CallCheckpoint, u64, bool)> = s
                .calls
                .values()
                .filter_map(|c| {
                    if let Some((since, stale)) = s.orphaned(c) {
                        return Some((CallCheckpoint::clone(c), since, stale));
                    }
                    // Ours but not running here: this process restarted and the call is
                    // still checkpointed as ours.
                    (own && c.fence.node == me && !hosted.contains(&c.call_id))
                        .then(|| (CallCheckpoint::clone(c), c.at_ms, false))
                })
                .collect();
            let sessions: Vec<(TenantId, AgentId)> = s
                .agent_sessions
                .values()
                .filter(|a| a.status != AgentStatus::SignedOut)
                .map(|a| (a.tenant.clone(), a.agent.clone()))
                .collect();
            let queues: Vec<(TenantId, QueueId)> = s
                .queues
                .values()
                .map(|q| (q.tenant.clone(), q.id.clone()))
                .collect();
            (calls, sessions, queues)
        });
        for (c, dead_since, stale) in calls {
            if self.orphan_taker(&c, stale) == Some(me) && !hosted.contains(&c.call_id) {
                self.take_over(ctx, c, dead_since);
            }
        }
        for (tenant, agent) in sessions {
            if self.agent_owner(&tenant, &agent) == me {
                self.agent_actor(ctx, &tenant, &agent);
            }
        }
        for (tenant, queue) in queues {
            if self.queue_owner(&tenant, &queue) == me {
                self.queue_actor(ctx, &tenant, &queue);
            }
        }
        self.resync_calls(ctx);
    }

    pub(super) fn resync_calls(&mut self, ctx: &mut Ctx) {
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            if let Some(c) = self.calls.get_mut(&id) {
                c.machine.resync();
            }
            self.drive_call(ctx, &id);
        }
    }

    pub(super) fn stop_actors_not_owned(&mut self, all: bool) {
        let me = self.id;
        let voters = self.live_voters();
        let owned = |key: &str| {
            !all && placement::owner(key, voters.clone()).is_none_or(|owner| owner == me)
        };
        self.queues.retain(|key, _| owned(&format!("queue/{key}")));
        self.agents.retain(|key, _| owned(&format!("agent/{key}")));
    }

    pub(super) fn rejoin(&mut self, ctx: &mut Ctx) {
        let Some(at) = self.rejoin_at else { return };
        if self.rejoin_busy || ctx.now < at {
            return;
        }
        if !self.is_down(self.id) {
            // Mirrors the rejoin loop of `actors::node::Runtime::on_declared_down`: once the
            // node is up again, every call kept through the rejoin gets
            // `CallMsg::Recheckpoint` (its pending checkpoints carried the old fence and were
            // refused): checkpoint again under the new fence, and re-state its queue place.
            self.rejoin_at = None;
            ctx.trace
                .push(format!("n{} rejoined: its calls checkpoint again", self.id));
            let ids: Vec<CallId> = self.calls.keys().cloned().collect();
            for id in ids {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.checkpointed = None;
                    c.machine.resync();
                }
                self.drive_call(ctx, &id);
            }
            return;
        }
        self.rejoin_busy = true;
        self.rejoin_at = None;
        self.spawn_write(
            WriteKind::NodeUp,
            Command::NodeUp {
                node: self.id,
                at_ms: ctx.now,
            },
        );
    }
}
