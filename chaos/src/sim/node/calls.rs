//! Calls on a node (`call_actor.rs` without SIP and RTP), the timers of every local actor,
//! and the checkpoint writer (`checkpoints.rs`).

use super::*;

impl SimNode {
    // ---- calls (call_actor.rs) ---------------------------------------------------------

    pub(super) fn new_call(&mut self, ctx: &mut Ctx, call: CallId, route: Route) -> bool {
        if self.is_down(self.id) {
            // endpoint.rs: declared down and not yet rejoined, the node answers 503 (its
            // checkpoints would be fenced off) (G2).
            ctx.trace
                .push(format!("n{} answers 503 to {call}: declared down", self.id));
            return false;
        }
        // Like `routing::resolve`: an access code the replica does not know yet is a 404.
        let Some((flows, queues)) = self.replica.read(|s| {
            s.tenants
                .get(route.tenant.as_str())
                .is_some_and(|t| t.access_codes.iter().any(|a| a.code == route.access_code))
                .then(|| flows_and_queues(s, &route))
        }) else {
            return false;
        };
        let setup = CallSetup {
            call_id: call.clone(),
            entry_node: self.id,
            route: route.clone(),
            caller: "5551000".into(),
            dialled: route.access_code.clone(),
            trunk: None,
            started_at_ms: ctx.now,
            flows,
            queues,
            profile: Default::default(),
        };
        let tenant = route.tenant.clone();
        self.calls.insert(
            call.clone(),
            CallHost {
                machine: CallMachine::new(setup),
                tenant,
                version: 0,
                checkpointed: None,
                answer_by: Some(ctx.now + FIRST_CHECKPOINT_BOUND_MS),
                pending_cdr: None,
                play_done_at: None,
                dial: 0,
                ack_by: None,
                resync_at: ctx.now + RESYNC_EVERY_MS,
                rtp: Default::default(),
            },
        );
        ctx.trace
            .push(format!("n{} takes new call {call}", self.id));
        // The 200 waits for the first checkpoint (within a bound).
        self.checkpoint_call(ctx, &call);
        self.first_waiters.insert(format!("call:{call}"), call);
        true
    }

    pub(super) fn answer(&mut self, ctx: &mut Ctx, call: &CallId, checkpointed: bool) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if c.answer_by.take().is_none() {
            return;
        }
        ctx.events.push((
            self.id,
            Event::Answered {
                call: call.clone(),
                checkpointed,
            },
        ));
        // The customer's ACK: the IVR may start.
        self.call_input(ctx, call, CallInput::CustomerAnswered);
    }

    /// Mirrors `actors::node::Runtime::take_over_call`: an envelope for a call not running
    /// here rebuilds it if it is orphaned and this node is its taker.
    pub(super) fn take_over_call(&mut self, ctx: &mut Ctx, call: &CallId) -> bool {
        let found = self.replica.read(|s| {
            let c = s.calls.get(call.as_str())?;
            s.orphaned(c)
                .map(|(since, stale)| (CallCheckpoint::clone(c), since, stale))
        });
        let Some((checkpoint, dead_since, stale)) = found else {
            return false;
        };
        if self.orphan_taker(&checkpoint, stale) != Some(self.id) {
            return false;
        }
        self.take_over(ctx, checkpoint, dead_since);
        true
    }

    pub(super) fn take_over(
        &mut self,
        ctx: &mut Ctx,
        checkpoint: CallCheckpoint,
        dead_since_ms: u64,
    ) {
        let call = checkpoint.call_id.clone();
        if self.calls.contains_key(&call) {
            return;
        }
        let (flows, queues) = self
            .replica
            .read(|s| flows_and_queues(s, &checkpoint.route));
        let setup = CallSetup {
            call_id: call.clone(),
            entry_node: checkpoint.cdr.entry_node,
            route: checkpoint.route.clone(),
            caller: checkpoint.cdr.caller.clone(),
            dialled: checkpoint.cdr.dialled.clone(),
            trunk: checkpoint.cdr.trunk.clone(),
            started_at_ms: checkpoint.cdr.started_at_ms,
            flows,
            queues,
            profile: Default::default(),
        };
        let talking = matches!(checkpoint.phase, CallPhase::Talking { .. });
        // Mirrors `actors::node::call_actor::take_over`: a Talking call whose agent's
        // committed session moved on after the checkpoint had ended on its old node; it is
        // only recorded, ended when the agent was freed.
        let ended_at = match &checkpoint.phase {
            CallPhase::Talking { agent, .. } => self.replica.read(|s| {
                let session = s
                    .agent_sessions
                    .get(&model::state::key(&checkpoint.route.tenant, agent.as_str()))?;
                // Freed at the latest when it became idle again, if it has since (its
                // later states start after that); else when its present state began.
                let freed = if session.idle_since_ms > checkpoint.at_ms {
                    session.idle_since_ms.min(session.since_ms)
                } else {
                    session.since_ms
                };
                (session.status.call() != Some(&call) && session.since_ms > checkpoint.at_ms)
                    .then_some(freed)
            }),
            _ => None,
        };
        if matches!(checkpoint.phase, CallPhase::Offering { .. }) {
            // cancel_stale: the old owner's INVITE to the phone is cancelled.
            ctx.events
                .push((self.id, Event::CancelAgent { call: call.clone() }));
        }
        let mut machine =
            CallMachine::restore(setup, &checkpoint.phase, checkpoint.cdr.clone(), ctx.now);
        if let Some(ended_at) = ended_at {
            ctx.trace.push(format!(
                "n{} records {call} of n{}, ended at {ended_at} before the takeover",
                self.id, checkpoint.fence.node
            ));
            machine.ended_before_takeover(ended_at);
        } else {
            machine.note_failover(FailoverMark {
                from_node: checkpoint.fence.node,
                to_node: self.id,
                at_ms: ctx.now,
                gap_ms: ctx.now.saturating_sub(dead_since_ms),
                recording_id: None,
                recording_offset_ms: 0,
            });
            ctx.trace.push(format!(
                "n{} takes over {call} from n{} in {:?}",
                self.id, checkpoint.fence.node, checkpoint.phase
            ));
            ctx.events.push((
                self.id,
                Event::ReInvite {
                    call: call.clone(),
                    agent: talking,
                },
            ));
        }
        self.calls.insert(
            call.clone(),
            CallHost {
                machine,
                tenant: checkpoint.route.tenant.clone(),
                version: checkpoint.version,
                checkpointed: None,
                answer_by: None,
                pending_cdr: None,
                play_done_at: None,
                dial: 0,
                ack_by: None,
                resync_at: ctx.now + RESYNC_EVERY_MS,
                rtp: Default::default(),
            },
        );
        self.drive_call(ctx, &call);
    }

    pub(super) fn call_input(&mut self, ctx: &mut Ctx, call: &CallId, input: CallInput) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let was_talking = c.machine.state_name() == "talking";
        if let CallInput::Offer { queue, agent, .. } = &input {
            if let Some(CallPhase::Queued { enqueued_at_ms, .. }) = c.machine.phase() {
                ctx.events.push((
                    self.id,
                    Event::Offered {
                        call: call.clone(),
                        queue: queue.clone(),
                        agent: agent.clone(),
                        enqueued_at_ms,
                    },
                ));
            }
        }
        c.machine.handle(ctx.now, input);
        let answered = !was_talking && c.machine.state_name() == "talking";
        if answered {
            // call_actor.rs: the agent's 200 is ACKed once the Talking checkpoint is
            // committed, or after the bound (G7); the call is established from then on.
            c.ack_by = Some(ctx.now + FIRST_CHECKPOINT_BOUND_MS);
        }
        self.drive_call(ctx, call);
        if answered && self.calls.contains_key(call) {
            let key = format!("call:{call}");
            if self.pending.contains_key(&key) {
                self.ack_waiters.insert(key, call.clone());
            } else {
                self.ack_agent(ctx, call);
            }
        }
    }

    /// The ACK to the agent's 200: the call is established.
    pub(super) fn ack_agent(&mut self, ctx: &mut Ctx, call: &CallId) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if c.ack_by.take().is_none() {
            return;
        }
        self.ack_waiters.remove(&format!("call:{call}"));
        if c.machine.state_name() == "talking" {
            ctx.events
                .push((self.id, Event::Established { call: call.clone() }));
        }
    }

    pub(super) fn drive_call(&mut self, ctx: &mut Ctx, call: &CallId) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let tenant = c.tenant.clone();
        let mut outputs = VecDeque::new();
        while let Some(o) = c.machine.poll_output() {
            outputs.push_back(o);
        }
        let me = self.id;
        let mut finished = false;
        while let Some(output) = outputs.pop_front() {
            match output {
                CallOutput::Play { repeat, .. } => {
                    if !repeat {
                        if let Some(c) = self.calls.get_mut(call) {
                            c.play_done_at = Some(ctx.now + 100);
                        }
                    }
                }
                // The lost-call webhook (R3.22) leaves the cluster, and the simulation has no
                // audio to record (R3.20).
                // Nor callbacks (R3.11: the simulated queues offer none).
                CallOutput::StopPlay
                | CallOutput::Bridge
                | CallOutput::LostCall { .. }
                | CallOutput::RecordVoicemail
                | CallOutput::DialCustomer { .. }
                | CallOutput::DialOut { .. } => {}
                CallOutput::Enqueue {
                    queue,
                    priority,
                    enqueued_at_ms,
                    offered_to,
                    arriving,
                    needs,
                } => self.send_queue(
                    ctx,
                    &tenant,
                    &queue,
                    QueueInput::Enqueue {
                        call: call.clone(),
                        call_node: me,
                        priority,
                        enqueued_at_ms,
                        offered_to,
                        arriving,
                        needs,
                    },
                ),
                CallOutput::Dequeue { queue } => self.send_queue(
                    ctx,
                    &tenant,
                    &queue,
                    QueueInput::Remove { call: call.clone() },
                ),
                CallOutput::AskWait { queue } => self.send_queue(
                    ctx,
                    &tenant,
                    &queue,
                    QueueInput::EstimateWait {
                        call: call.clone(),
                        call_node: me,
                    },
                ),
                CallOutput::OfferDone {
                    queue,
                    agent,
                    answered,
                } => self.send_queue(
                    ctx,
                    &tenant,
                    &queue,
                    QueueInput::OfferDone {
                        call: call.clone(),
                        agent,
                        answered,
                    },
                ),
                CallOutput::Agent { agent, notice, .. } => self.send_agent(
                    ctx,
                    &tenant,
                    &agent,
                    AgentEnvelope::Notice {
                        call: call.clone(),
                        notice,
                    },
                ),
                CallOutput::DialAgent { .. } => {
                    if let Some(c) = self.calls.get_mut(call) {
                        c.dial += 1;
                        let agent = match c.machine.phase() {
                            Some(CallPhase::Offering { agent, .. }) => agent,
                            _ => continue,
                        };
                        ctx.events.push((
                            me,
                            Event::Dial {
                                call: call.clone(),
                                agent,
                                dial: c.dial,
                            },
                        ));
                    }
                }
                CallOutput::CancelAgent => ctx
                    .events
                    .push((me, Event::CancelAgent { call: call.clone() })),
                CallOutput::HangupCustomer => ctx
                    .events
                    .push((me, Event::HangupCustomer { call: call.clone() })),
                CallOutput::HangupAgent => ctx
                    .events
                    .push((me, Event::HangupAgent { call: call.clone() })),
                CallOutput::Cdr(cdr) => {
                    if let Some(c) = self.calls.get_mut(call) {
                        c.pending_cdr = Some(cdr);
                    }
                }
                CallOutput::Finished => {
                    let cdr = self.calls.get_mut(call).and_then(|c| c.pending_cdr.take());
                    self.calls.remove(call);
                    self.first_waiters.remove(&format!("call:{call}"));
                    self.ack_waiters.remove(&format!("call:{call}"));
                    if let Some(cdr) = cdr {
                        ctx.trace.push(format!(
                            "n{me} call {call} ends: {:?} by {:?}",
                            cdr.disposition, cdr.hangup_by
                        ));
                        ctx.events.push((me, Event::Finished { cdr: cdr.clone() }));
                        let fence = Some(self.fence());
                        self.submit(
                            ctx,
                            Command::RecordCdr {
                                cdr: cdr.into(),
                                fence,
                            },
                        );
                    }
                    finished = true;
                }
            }
        }
        if !finished {
            self.checkpoint_call(ctx, call);
        }
    }

    pub(super) fn checkpoint_call(&mut self, ctx: &mut Ctx, call: &CallId) {
        let fence = self.fence();
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let Some(phase) = c.machine.phase() else {
            return;
        };
        let failovers = c.machine.cdr_so_far().failovers.len();
        let key = (phase.clone(), failovers);
        if c.checkpointed.as_ref() == Some(&key) {
            return;
        }
        c.version += 1;
        let cdr = c.machine.cdr_so_far().clone();
        let checkpoint = CallCheckpoint {
            call_id: call.clone(),
            fence,
            version: c.version,
            at_ms: ctx.now,
            route: c.machine.route().clone(),
            phase,
            cdr,
            customer: leg(call),
            agent: None,
            ringing: None,
        };
        c.checkpointed = Some(key);
        self.submit(
            ctx,
            Command::PutCall {
                checkpoint: Arc::new(checkpoint),
            },
        );
    }

    // ---- timers --------------------------------------------------------------------------

    pub(super) fn timers(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        self.rejoin(ctx);
        let lease = self.holds_lease(now);
        let keys: Vec<String> = self.queues.keys().cloned().collect();
        for key in keys {
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            if q.flush_at.is_some_and(|at| now >= at) {
                if lease {
                    q.flush_at = None;
                    // Mirrors `actors::node::queue_actor::refresh_limits` at a flush.
                    let (max, all_busy) = self
                        .replica
                        .read(|s| actors::node::queue_actor::queue_limits(s, &q.tenant, &q.queue));
                    q.machine.set_max_queued(max);
                    q.machine.set_all_busy(all_busy);
                    while let Some(input) = q.held.pop_front() {
                        q.machine.handle(now, input);
                    }
                } else {
                    q.flush_at = Some(now + 50);
                }
            }
            if lease && q.machine.poll_timeout().is_some_and(|at| now >= at) {
                q.machine.handle_timeout(now);
            }
            self.drive_queue(ctx, &key);
        }
        let keys: Vec<String> = self.agents.keys().cloned().collect();
        for key in keys {
            if let Some(m) = self.agents.get_mut(&key) {
                if m.poll_timeout().is_some_and(|at| now >= at) {
                    m.handle_timeout(now);
                }
            }
            self.drive_agent(ctx, &key);
        }
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            let Some(c) = self.calls.get_mut(&id) else {
                continue;
            };
            if c.answer_by.is_some_and(|at| now >= at) {
                // Answered without the checkpoint committed (degraded mode).
                ctx.trace.push(format!(
                    "n{} answers {id} before its first checkpoint committed",
                    self.id
                ));
                self.first_waiters.remove(&format!("call:{id}"));
                self.answer(ctx, &id, false);
                continue;
            }
            if c.ack_by.is_some_and(|at| now >= at) {
                ctx.trace.push(format!(
                    "n{} ACKs the agent of {id} before the Talking checkpoint committed",
                    self.id
                ));
                self.ack_agent(ctx, &id);
            }
            let Some(c) = self.calls.get_mut(&id) else {
                continue;
            };
            // `MediaCore::handle_timeout`: a leg that sent RTP and then fell silent for
            // `RTP_TIMEOUT_MS` is reported once (until it is heard again).
            let silent = (0..2).find(|&i| {
                let leg = &c.rtp[i];
                !leg.timeout_reported
                    && leg
                        .last_packet_at
                        .is_some_and(|last| now >= last + RTP_TIMEOUT_MS)
            });
            if let Some(i) = silent {
                c.rtp[i].timeout_reported = true;
                let agent = i == 1;
                if !lease {
                    // call_actor.rs `MediaEvent::RtpTimeout` without a lease: this node may
                    // be losing the call to another one, which re-INVITEd the legs.
                    ctx.trace.push(format!(
                        "n{} ignores the RTP timeout of {id} without a lease",
                        self.id
                    ));
                    continue;
                }
                // call_actor.rs `MediaEvent::RtpTimeout`: the silent leg hung up; a silent
                // customer is sent a BYE as well.
                ctx.trace.push(format!(
                    "n{} hears no RTP from the {} of {id}: ends the call",
                    self.id,
                    if agent { "agent" } else { "customer" }
                ));
                let input = if agent {
                    CallInput::AgentHangup
                } else {
                    CallInput::CustomerHangup
                };
                self.call_input(ctx, &id, input);
                if !agent {
                    ctx.events
                        .push((self.id, Event::HangupCustomer { call: id.clone() }));
                }
                continue;
            }
            let ring_unknown = || {
                let phase = c.machine.phase();
                self.replica.read(|s| {
                    s.calls
                        .get(id.as_str())
                        .is_none_or(|k| Some(&k.phase) != phase.as_ref())
                })
            };
            if !lease && c.machine.state_name() == "ringing_agent" && ring_unknown() {
                // Mirrors `actors::node::call_actor` `CallMsg::LeaseCheck` (every 50 ms there,
                // every step here) and `CallMachine::withdraw_offer`. The call rings an
                // agent, but its Offering checkpoint has not committed (the node is cut off
                // from the leader, or slow): once this node may be declared down, the agent's
                // new owner rebuilds it from a session that does not say it rings (no
                // checkpoint names it, G5), and offers it another call while this node still
                // rings it (I1). So a node without a lease cancels such a ring, and the call
                // goes back in line. A lease lapses before a NodeDown can commit
                // (`down_after_ms` > `lease_ms`), so the CANCEL leaves first. A ring the
                // cluster knows is safe: a taker cancels the stale INVITE and restores the
                // agent as ringing.
                ctx.trace
                    .push(format!("n{} cancels the ring of {id}: no lease", self.id));
                c.machine.handle(
                    now,
                    CallInput::AgentFailed {
                        no_answer: false,
                        reason: "ring cancelled: no lease".into(),
                    },
                );
                // The agent leg's INVITE is cancelled (call_actor.rs would call
                // `AgentLeg::cancel_or_bye`; `AgentFailed` itself assumes the phone failed).
                ctx.events
                    .push((self.id, Event::CancelAgent { call: id.clone() }));
                self.drive_call(ctx, &id);
                continue;
            }
            if c.play_done_at.is_some_and(|at| now >= at) {
                c.play_done_at = None;
                self.call_input(ctx, &id, CallInput::PlayDone);
                continue;
            }
            if c.machine.poll_timeout().is_some_and(|at| now >= at) {
                c.machine.handle_timeout(now);
                self.drive_call(ctx, &id);
                continue;
            }
            if now >= c.resync_at {
                // Mirrors `actors::node::call_actor` `CallMsg::ResyncTick`: every
                // `RESYNC_EVERY` from the actor's start, `CallMachine::resync` (an Enqueue
                // while the call is queued or rings an agent, nothing otherwise).
                c.resync_at = now + RESYNC_EVERY_MS;
                c.machine.resync();
                self.drive_call(ctx, &id);
            }
        }
    }

    // ---- the checkpoint writer (checkpoints.rs) -------------------------------------

    pub(super) fn submit(&mut self, _ctx: &mut Ctx, command: Command) {
        let Some(key) = key_of(&command) else {
            return;
        };
        let cdr_pending = matches!(self.pending.get(&key), Some(Command::RecordCdr { .. }));
        if cdr_pending && matches!(command, Command::PutCall { .. }) {
            return;
        }
        if !self.pending.contains_key(&key) {
            self.order.push_back(key.clone());
        }
        self.pending.insert(key, command);
    }

    pub(super) fn write_checkpoints(&mut self, _ctx: &mut Ctx) {
        if self.batch_busy || self.pending.is_empty() || _ctx.now < self.batch_retry_at {
            return;
        }
        if self.is_down(self.id) {
            // Mirrors `actors::node::checkpoints::run`. Declared down, every
            // write would be refused by the fence: the writer holds its backlog until the
            // node has rejoined (see `keep_refused`).
            return;
        }
        let n = self.order.len().min(MAX_BATCH);
        let fence = self.fence();
        let mut batch: Vec<(String, Command)> = self
            .order
            .drain(..n)
            .filter_map(|k| self.pending.remove(&k).map(|c| (k, c)))
            .collect();
        if batch.is_empty() {
            return;
        }
        // Mirrors `actors::node::checkpoints::run` (`refence`). The checkpoint or CDR of a
        // call the cluster does not know (kept through a NodeDown, G1: no other node can
        // have written it) that carries an epoch this node has left is written under the
        // current one. Without this, a call kept through the NodeDown that ends before its
        // node rejoined loses its CDR (nothing re-checkpoints a call that has ended).
        for (key, command) in &mut batch {
            let stale = fence_of(command).is_some_and(|f| f != fence);
            if stale && self.unknown_call(key) {
                set_fence(command, fence);
            }
        }
        let commands: Vec<Command> = batch.iter().map(|(_, c)| c.clone()).collect();
        let command = if commands.len() == 1 {
            commands.into_iter().next().expect("one command")
        } else {
            Command::Batch { commands }
        };
        self.batch_busy = true;
        self.spawn_write(WriteKind::Batch(batch), command);
    }
}

/// The fence a checkpoint command carries.
fn fence_of(command: &Command) -> Option<Fence> {
    match command {
        Command::PutAgentSession { session } => session.fence,
        Command::PutCall { checkpoint } => Some(checkpoint.fence),
        Command::RecordCdr { fence, .. } => *fence,
        _ => None,
    }
}

fn set_fence(command: &mut Command, fence: Fence) {
    match command {
        Command::PutAgentSession { session } => session.fence = Some(fence),
        Command::PutCall { checkpoint } => Arc::make_mut(checkpoint).fence = fence,
        Command::RecordCdr { fence: f, .. } => *f = Some(fence),
        _ => {}
    }
}

impl SimNode {
    /// True when no node but this one could ever write `key`'s call: the cluster knows no
    /// checkpoint and no CDR of it (a call answered before its first checkpoint committed).
    fn unknown_call(&self, key: &str) -> bool {
        key.strip_prefix("call:").is_some_and(|call| {
            self.replica
                .read(|s| !s.calls.contains_key(call) && !s.cdrs.contains_key(call))
        })
    }

    /// Mirrors `actors::node::checkpoints::run` (refused, retried). Of a batch's refused keys,
    /// those of calls the cluster does not know go back to the writer (unless a newer one
    /// is pending): written again, under the new fence, once this node has rejoined.
    pub(super) fn keep_refused(&mut self, batch: Vec<(String, Command)>, refused: &[String]) {
        let mut front = VecDeque::new();
        for (key, command) in batch {
            if !refused.contains(&key)
                || !self.unknown_call(&key)
                || self.pending.contains_key(&key)
            {
                continue;
            }
            self.pending.insert(key.clone(), command);
            front.push_back(key);
        }
        front.append(&mut self.order);
        self.order = front;
    }

    /// The keys of a written batch that the state machine refused by their fence (mirrors
    /// `actors::node::checkpoints::run`: read from the state once the batch is applied).
    pub(super) fn refused(&self, batch: &[(String, Command)]) -> Vec<String> {
        self.replica.read(|s| {
            batch
                .iter()
                .filter(|(_, c)| fence_of(c).is_some_and(|f| s.fenced_out(f)))
                .map(|(k, _)| k.clone())
                .collect()
        })
    }
}
