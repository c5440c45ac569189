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
        let suspect = self.replica.read(|s| {
            self.voters
                .iter()
                .filter(|id| **id != me && !s.is_down(**id))
                .find(|id| {
                    let last = self.heard.get(id).copied().unwrap_or(since);
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
                self.stop_actors_not_owned(false);
                if *node == self.id {
                    self.on_rejoined(ctx);
                } else {
                    // The rejoined node dropped the calls the cluster knows; if this node
                    // applied its NodeUp before reacting to its NodeDown, it takes its share
                    // of them now.
                    self.take_over_orphans(ctx, false);
                }
                self.resync_calls(ctx);
            }
            Command::Batch { commands } => {
                for c in commands {
                    self.on_applied(ctx, index, c);
                }
            }
            _ => {}
        }
    }

    /// `Node::start`'s resume task: once Raft has a leader and this node has caught up
    /// (`Cluster::wait_ready`), a node the cluster declared down while it was away rejoins
    /// (G2), and the node takes over its share of the orphans, its own calls still
    /// checkpointed included (G4).
    pub(super) fn start_up(&mut self, ctx: &mut Ctx) {
        if self.ready {
            return;
        }
        let m = self.raft.metrics().borrow().clone();
        let applied_term = m.last_applied.map(|id| id.leader_id.term);
        if m.current_leader.is_none() || applied_term != Some(m.current_term) {
            return;
        }
        // NOT IN THE NODE YET: `Node::start` resumes right after `wait_ready`.
        // A restarted follower may know a leader and have applied its term from its own log
        // while the cluster moved on (it may have been declared down, its calls taken over).
        // Its lease proves it caught up: its heartbeat, committed after everything before
        // it, is applied here. Without that wait it would re-INVITE the legs of calls
        // another node runs by now.
        let down = self.is_down(self.id);
        if !down && !self.holds_lease(ctx.now) {
            return;
        }
        self.ready = true;
        ctx.trace.push(format!("n{} is ready", self.id));
        if down {
            self.on_declared_down(ctx);
        }
        self.take_over_orphans(ctx, true);
    }

    /// A snapshot from the leader replaced the state: the NodeDown and NodeUp commands it
    /// covers were never applied here one by one, so the node reconciles with the state as
    /// it is, the way it does at start-up. NOT IN THE NODE YET: `cluster`'s
    /// `StateMachineStore::install_snapshot` publishes nothing, so `actors::node::react`
    /// never learns of them (a node that misses its own NodeDown that way keeps its calls,
    /// never rejoins and answers 503 for ever).
    pub(super) fn on_snapshot_installed(&mut self, ctx: &mut Ctx) {
        ctx.trace
            .push(format!("n{} installed a snapshot: reconciles", self.id));
        if self.is_down(self.id) {
            self.on_declared_down(ctx);
        } else {
            self.stop_actors_not_owned(false);
            self.take_over_orphans(ctx, false);
        }
    }

    /// NOT IN THE NODE YET (G1): `Runtime::on_declared_down` abandons every call; this is
    /// what ARCHITECTURE.md "Failover" describes and what the node must do.
    /// `Runtime::on_declared_down`: the calls the cluster knows (a checkpoint or a CDR in
    /// the replica, read once NodeDown is applied: later writes of ours are fenced off) are
    /// taken over by other nodes, so they are dropped without a word, with their pending
    /// checkpoints; the calls nobody else knows (never checkpointed) stay here and are
    /// checkpointed again once the node has rejoined (G1). Queue and agent actors all go.
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
        let replica = self.replica.clone();
        self.forget_pending(|key, _| {
            key.strip_prefix("call:")
                .is_none_or(|call| replica.read(|s| known(s, call)))
        });
        self.stop_actors_not_owned(true);
        if !self.rejoin_busy && self.rejoin_at.is_none() {
            self.rejoin_at = Some(ctx.now);
        }
    }

    /// NOT IN THE NODE YET (G1): `Runtime::on_node_up` only sets `serve_after`.
    /// `Runtime::on_node_up` for this node: serve gained actors only after the others'
    /// leases ran out; the checkpoints kept while down carry the new epoch, and every call
    /// still here is checkpointed again (G1).
    pub(super) fn on_rejoined(&mut self, ctx: &mut Ctx) {
        self.serve_after = Some(ctx.now + LEASE_MS);
        let fence = self.fence();
        self.refence_pending(fence);
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            if let Some(c) = self.calls.get_mut(&id) {
                c.checkpointed = None;
            }
            self.checkpoint_call(ctx, &id);
        }
    }

    /// NOT IN THE NODE YET, in part: the node takes over only calls whose owner is down (not
    /// fenced-off ones of a node that rejoined before it reacted), hashes them over all live
    /// voters (not those other than the fenced owner), includes its own calls at every
    /// NodeDown (not only at start-up), and does not react to another node's NodeUp.
    /// `Runtime::take_over_orphans`: this node's share of every call whose owner is down
    /// and, at start-up only (`own`), of its own calls still checkpointed but not running
    /// here; signed-in agents and queues placement gives it; then every local call re-states
    /// its queue place.
    pub(super) fn take_over_orphans(&mut self, ctx: &mut Ctx, own: bool) {
        let me = self.id;
        let hosted: Vec<CallId> = self.calls.keys().cloned().collect();
        let (calls, sessions, queues) = self.replica.read(|s| {
            let calls: Vec<(CallCheckpoint, u64, bool)> = s
                .calls
                .values()
                .filter_map(|c| {
                    if !s.fenced_out(c.fence) {
                        // Ours and not running here: this process restarted and the call is
                        // still checkpointed as ours (start-up only, G4).
                        let mine = own && c.fence.node == me && !hosted.contains(&c.call_id);
                        return mine.then(|| (c.clone(), c.at_ms, true));
                    }
                    // Fenced off: its owner is down, or rejoined (new epoch) after dropping
                    // it, possibly before this node reacted to the NodeDown.
                    let owner = s.nodes.get(&c.fence.node)?;
                    Some((c.clone(), owner.last_heartbeat_ms, false))
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
        for (c, dead_since, mine) in calls {
            let taker = if mine {
                me
            } else {
                self.orphan_owner(&c.call_id, c.fence.node)
            };
            if taker == me {
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
            self.rejoin_at = None;
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
