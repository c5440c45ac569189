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
        if now - since < DOWN_AFTER_MS {
            return;
        }
        let suspect = self.replica.read(|s| {
            self.voters
                .iter()
                .filter(|id| **id != me && !s.is_down(**id))
                .find(|id| {
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
                    self.on_node_down(ctx);
                }
            }
            Command::NodeUp { node, .. } => {
                ctx.trace
                    .push(format!("n{} applies NodeUp n{node} @{index}", self.id));
                if *node == self.id {
                    self.serve_after = Some(ctx.now + LEASE_MS);
                }
                self.stop_actors_not_owned(false);
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

    pub(super) fn on_declared_down(&mut self, ctx: &mut Ctx) {
        ctx.trace.push(format!(
            "n{} declared down: drops {} calls, {} queues, {} agents",
            self.id,
            self.calls.len(),
            self.queues.len(),
            self.agents.len()
        ));
        self.calls.clear();
        self.first_waiters.clear();
        self.stop_actors_not_owned(true);
        if !self.rejoin_busy && self.rejoin_at.is_none() {
            self.rejoin_at = Some(ctx.now);
        }
    }

    pub(super) fn on_node_down(&mut self, ctx: &mut Ctx) {
        let me = self.id;
        let (calls, sessions, queues) = self.replica.read(|s| {
            let calls: Vec<(CallCheckpoint, u64)> = s
                .calls
                .values()
                .filter_map(|c| {
                    let owner = s.nodes.get(&c.fence.node)?;
                    owner.down.then(|| (c.clone(), owner.last_heartbeat_ms))
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
        for (c, dead_since) in calls {
            if self.call_owner(&c.call_id, c.fence.node) == me {
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
