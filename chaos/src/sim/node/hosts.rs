//! Queue and agent actors on a node: `queue_actor.rs` and `agent_actor.rs` without ractor.

use super::*;

impl SimNode {
    // ---- queue actors (queue_actor.rs) -----------------------------------------------

    /// The local queue actor, started (and rebuilt from replicated state) if missing.
    pub(super) fn queue_actor(
        &mut self,
        ctx: &mut Ctx,
        tenant: &TenantId,
        queue: &QueueId,
    ) -> bool {
        let key = model::state::key(tenant, queue.as_str());
        if self.queues.contains_key(&key) {
            return true;
        }
        if !self.replica.read(|s| s.queue(tenant, queue).is_some()) {
            return false;
        }
        let (ready, waiting) = self.replica.read(|s| {
            let ready: Vec<AgentId> = s
                .agent_sessions
                .values()
                .filter(|a| &a.tenant == tenant && a.status == AgentStatus::Ready)
                .filter(|a| {
                    s.agent(tenant, &a.agent)
                        .is_some_and(|c| c.skills.contains(queue))
                })
                .map(|a| a.agent.clone())
                .collect();
            let waiting: Vec<QueueInput> = s
                .calls
                .values()
                .filter(|c| &c.route.tenant == tenant)
                .filter_map(|c| {
                    match &c.phase {
                        CallPhase::Queued {
                            queue: q,
                            priority,
                            enqueued_at_ms,
                            also,
                            ..
                        } if q == queue || also.contains(queue) => {
                            Some((*priority, *enqueued_at_ms, None))
                        }
                        CallPhase::Offering {
                            queue: q,
                            priority,
                            enqueued_at_ms,
                            agent,
                            ..
                        } if q == queue => Some((*priority, *enqueued_at_ms, Some(agent.clone()))),
                        _ => None,
                    }
                    .map(|(priority, enqueued_at_ms, offered_to)| {
                        QueueInput::Enqueue {
                            call: c.call_id.clone(),
                            call_node: c.fence.node,
                            priority,
                            enqueued_at_ms,
                            offered_to,
                            arriving: false,
                            needs: Default::default(),
                        }
                    })
                })
                .collect();
            (ready, waiting)
        });
        ctx.trace.push(format!(
            "n{} starts queue {key} ({} waiting from checkpoints)",
            self.id,
            waiting.len()
        ));
        for agent in ready {
            self.send_agent(
                ctx,
                tenant,
                &agent,
                AgentEnvelope::Announce {
                    queue: queue.clone(),
                },
            );
        }
        self.queues.insert(
            key,
            QueueHost {
                tenant: tenant.clone(),
                queue: queue.clone(),
                // Mirrors `actors::node::queue_actor` (`QueueMachine::started_at`).
                machine: QueueMachine::new(),
                held: waiting.into(),
                flush_at: Some(ctx.now + 50),
            },
        );
        true
    }

    pub(super) fn queue_input(
        &mut self,
        ctx: &mut Ctx,
        tenant: &TenantId,
        queue: &QueueId,
        input: QueueInput,
    ) {
        let key = model::state::key(tenant, queue.as_str());
        let lease = self.holds_lease(ctx.now);
        let Some(q) = self.queues.get_mut(&key) else {
            return;
        };
        if !q.held.is_empty() || !lease {
            q.held.push_back(input);
            q.flush_at.get_or_insert(ctx.now + 50);
            return;
        }
        // Mirrors `actors::node::queue_actor::refresh_limits`.
        let (max, all_busy) = self
            .replica
            .read(|s| actors::node::queue_actor::queue_limits(s, tenant, queue));
        q.machine.set_max_queued(max);
        q.machine.set_all_busy(all_busy);
        q.machine.handle(ctx.now, input);
        self.drive_queue(ctx, &key);
    }

    pub(super) fn drive_queue(&mut self, ctx: &mut Ctx, key: &str) {
        let Some(q) = self.queues.get_mut(key) else {
            return;
        };
        let (tenant, queue) = (q.tenant.clone(), q.queue.clone());
        let outputs: Vec<QueueOutput> = std::iter::from_fn(|| q.machine.poll_output()).collect();
        for output in outputs {
            match output {
                QueueOutput::Reserve { agent, call, .. } => {
                    ctx.trace.push(format!(
                        "n{} queue {queue} reserves {agent} for {call}",
                        self.id
                    ));
                    self.send_agent(
                        ctx,
                        &tenant,
                        &agent,
                        AgentEnvelope::Reserve {
                            call,
                            queue: queue.clone(),
                        },
                    );
                }
                QueueOutput::CancelReservation { agent, call, .. } => self.send_agent(
                    ctx,
                    &tenant,
                    &agent,
                    AgentEnvelope::CancelReservation { call },
                ),
                QueueOutput::Offer {
                    call,
                    call_node,
                    agent,
                    agent_node,
                    extension,
                } => {
                    ctx.trace.push(format!(
                        "n{} queue {queue} offers {call} to {agent}",
                        self.id
                    ));
                    self.send_call(
                        ctx,
                        call_node,
                        &call,
                        CallEnvelope::Offer {
                            tenant: tenant.clone(),
                            queue: queue.clone(),
                            agent,
                            agent_node,
                            extension,
                        },
                    );
                }
                // Mirrors `actors::node::queue_actor` (R3.5).
                QueueOutput::TurnedAway {
                    call,
                    call_node,
                    rule,
                } => self.send_call(
                    ctx,
                    call_node,
                    &call,
                    CallEnvelope::TurnedAway {
                        queue: queue.clone(),
                        rule,
                    },
                ),
                // Mirrors `actors::node::queue_actor` (R3.9).
                QueueOutput::WaitEstimate {
                    call,
                    call_node,
                    ahead,
                    wait_ms,
                } => self.send_call(
                    ctx,
                    call_node,
                    &call,
                    CallEnvelope::WaitEstimate {
                        queue: queue.clone(),
                        ahead,
                        wait_ms,
                    },
                ),
                QueueOutput::Stats(_) => {}
            }
        }
    }

    // ---- agent actors (agent_actor.rs) ----------------------------------------------

    pub(super) fn agent_actor(
        &mut self,
        ctx: &mut Ctx,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> bool {
        let key = model::state::key(tenant, agent.as_str());
        if self.agents.contains_key(&key) {
            return true;
        }
        let Some((skills, session)) = self.replica.read(|s| {
            s.agent(tenant, agent)
                .map(|a| (a.skills.clone(), s.agent_session(tenant, agent).cloned()))
        }) else {
            return false;
        };
        // agent_actor.rs `pre_start`: the session may lag behind the calls (its checkpoint
        // was in flight when the old owner died): a call checkpointed as talking to, or
        // ringing, this agent wins, so the agent is never offered a second call meanwhile
        // (G5).
        let engaged = self.replica.read(|s| {
            s.calls
                .values()
                .filter(|c| &c.route.tenant == tenant)
                .filter_map(|c| match &c.phase {
                    CallPhase::Talking { agent: a, .. } if a == agent => Some((
                        c.at_ms,
                        AgentStatus::Talking {
                            call: c.call_id.clone(),
                        },
                    )),
                    CallPhase::Offering { agent: a, .. } if a == agent => Some((
                        c.at_ms,
                        AgentStatus::Ringing {
                            call: c.call_id.clone(),
                        },
                    )),
                    _ => None,
                })
                .max_by_key(|(at, _)| *at)
        });
        let session = session.map(|mut session| {
            if let Some((at_ms, status)) = engaged {
                let behind = session.status.call() != status.call()
                    && session.status.call().is_none()
                    && session.since_ms <= at_ms;
                if behind {
                    session.status = status;
                    session.since_ms = at_ms;
                }
            }
            session
        });
        let mut machine = match &session {
            Some(session) => AgentMachine::restore(session, self.id, skills.clone()),
            None => AgentMachine::new(tenant.clone(), agent.clone(), self.id, skills.clone()),
        };
        ctx.trace.push(format!(
            "n{} starts agent {key} as {}",
            self.id,
            machine.status().name()
        ));
        if machine.status() == &AgentStatus::Ready {
            machine.handle(ctx.now, AgentInput::Skills { skills }).ok();
        }
        self.agents.insert(key.clone(), machine);
        self.drive_agent(ctx, &key);
        true
    }

    pub(super) fn agent_input(
        &mut self,
        ctx: &mut Ctx,
        tenant: &TenantId,
        agent: &AgentId,
        input: AgentInput,
    ) {
        let key = model::state::key(tenant, agent.as_str());
        if let Some(m) = self.agents.get_mut(&key) {
            let _ = m.handle(ctx.now, input);
            self.drive_agent(ctx, &key);
        }
    }

    pub(super) fn agent_mesh(
        &mut self,
        ctx: &mut Ctx,
        tenant: &TenantId,
        agent: &AgentId,
        input: AgentEnvelope,
    ) {
        let key = model::state::key(tenant, agent.as_str());
        let lease = self.holds_lease(ctx.now);
        let Some(m) = self.agents.get(&key) else {
            return;
        };
        let input = match input {
            AgentEnvelope::Reserve { call, queue } if !lease => {
                // Without a lease another node may own this agent by now: never promise it.
                ctx.trace.push(format!(
                    "n{} refuses to reserve {agent} (no lease)",
                    self.id
                ));
                self.send_queue(
                    ctx,
                    tenant,
                    &queue,
                    QueueInput::ReserveReply {
                        agent: agent.clone(),
                        call,
                        accepted: false,
                        extension: None,
                    },
                );
                return;
            }
            AgentEnvelope::Reserve { call, queue } => AgentInput::Reserve { call, queue },
            AgentEnvelope::CancelReservation { call } => AgentInput::CancelReservation { call },
            AgentEnvelope::Notice { call, notice } => match notice {
                AgentNotice::Ringing => AgentInput::Ringing { call },
                AgentNotice::Answered => AgentInput::Answered { call },
                AgentNotice::Ended { acw_ms } => AgentInput::CallEnded { call, acw_ms },
                AgentNotice::Failed { no_answer } => AgentInput::OfferFailed { call, no_answer },
            },
            AgentEnvelope::Announce { queue } => {
                if m.status() == &AgentStatus::Ready {
                    let idle_since_ms = m.session().idle_since_ms;
                    self.send_queue(
                        ctx,
                        tenant,
                        &queue,
                        QueueInput::AgentAvailable {
                            agent: agent.clone(),
                            agent_node: self.id,
                            idle_since_ms,
                            fit: Default::default(),
                        },
                    );
                }
                return;
            }
        };
        self.agent_input(ctx, tenant, agent, input);
    }

    pub(super) fn drive_agent(&mut self, ctx: &mut Ctx, key: &str) {
        let fence = self.fence();
        let Some(m) = self.agents.get_mut(key) else {
            return;
        };
        let session = m.session();
        let outputs: Vec<AgentOutput> = std::iter::from_fn(|| m.poll_output()).collect();
        for output in outputs {
            match output {
                AgentOutput::Checkpoint(mut s) => {
                    s.fence = Some(fence);
                    self.submit(ctx, Command::PutAgentSession { session: s });
                }
                AgentOutput::Availability {
                    queues,
                    available,
                    idle_since_ms,
                } => {
                    for queue in queues {
                        let input = if available {
                            QueueInput::AgentAvailable {
                                agent: session.agent.clone(),
                                agent_node: self.id,
                                idle_since_ms,
                                fit: Default::default(),
                            }
                        } else {
                            QueueInput::AgentUnavailable {
                                agent: session.agent.clone(),
                            }
                        };
                        self.send_queue(ctx, &session.tenant, &queue, input);
                    }
                }
                AgentOutput::ReserveReply {
                    queue,
                    call,
                    accepted,
                    extension,
                } => {
                    ctx.trace.push(format!(
                        "n{} agent {} reserve for {call}: {accepted}",
                        self.id, session.agent
                    ));
                    self.send_queue(
                        ctx,
                        &session.tenant,
                        &queue,
                        QueueInput::ReserveReply {
                            agent: session.agent.clone(),
                            call,
                            accepted,
                            extension,
                        },
                    );
                }
            }
        }
    }
}
