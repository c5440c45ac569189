//! The QueueActor: a thin ractor driver around `QueueMachine`.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use model::{AgentStatus, QueueId, TenantId};

use super::mesh::{AgentEnvelope, CallEnvelope, Envelope};
use super::Runtime;
use crate::queue::{QueueInput, QueueMachine, QueueOutput, QueueStats};

#[derive(RactorMessage)]
pub enum QueueMsg {
    Input(QueueInput),
    Tick,
    Status(RpcReplyPort<(QueueStats, usize)>),
    /// Process inputs held while this node had no lease.
    Flush,
}

pub struct QueueActor {
    pub runtime: Arc<Runtime>,
}

pub struct QueueState {
    tenant: TenantId,
    queue: QueueId,
    machine: QueueMachine,
    /// Inputs received while this node had no lease, in order (the queue distributes only
    /// under a lease: no split brain).
    held: std::collections::VecDeque<QueueInput>,
    flush_armed: bool,
    /// When the pending tick fires: a later deadline needs no new timer (with thousands of
    /// calls waiting, one timer per input would flood the mailbox with ticks).
    tick_at: Option<u64>,
}

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueState;
    type Arguments = (TenantId, QueueId);

    async fn pre_start(
        &self,
        myself: ActorRef<QueueMsg>,
        (tenant, queue): (TenantId, QueueId),
    ) -> Result<QueueState, ActorProcessingErr> {
        // A queue that (re)starts knows no agents: ask every ready agent with this skill to
        // announce itself, so distribution never silently stops after a restart.
        let ready: Vec<model::AgentId> = self.runtime.cluster.read(|s| {
            s.agent_sessions
                .values()
                .filter(|a| a.tenant == tenant && a.status == AgentStatus::Ready)
                .filter(|a| {
                    s.agent(&tenant, &a.agent)
                        .is_some_and(|c| c.serving_queues().contains(&queue))
                })
                .map(|a| a.agent.clone())
                .collect()
        });
        for agent in ready {
            self.runtime.send_agent(
                &tenant,
                &agent,
                AgentEnvelope::Announce {
                    queue: queue.clone(),
                },
            );
        }
        // Rebuild the waiting line from the calls' checkpoints (a new owner after a node
        // loss): every call at its original priority and enqueue time. The calls also re-join
        // by themselves (idempotent), covering checkpoints still in flight.
        let waiting: Vec<QueueInput> = self.runtime.cluster.read(|s| {
            let rules: &[model::RoutingRule] = s
                .tenants
                .get(tenant.as_str())
                .map(|t| t.routing.as_slice())
                .unwrap_or_default();
            s.calls
                .values()
                .filter(|c| c.route.tenant == tenant)
                .filter_map(|c| {
                    match &c.phase {
                        model::CallPhase::Queued {
                            queue: q,
                            priority,
                            enqueued_at_ms,
                            also,
                            ..
                        } if *q == queue || also.contains(&queue) => {
                            Some((*priority, *enqueued_at_ms, None))
                        }
                        model::CallPhase::Offering {
                            queue: q,
                            priority,
                            enqueued_at_ms,
                            agent,
                            ..
                        } if *q == queue => Some((*priority, *enqueued_at_ms, Some(agent.clone()))),
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
                            needs: crate::call::call_needs(&c.cdr, rules, &queue, enqueued_at_ms),
                        }
                    })
                })
                .collect()
        });
        let mut machine = QueueMachine::new();
        machine.seed_answers(&self.runtime.queue_answers(&tenant, &queue));
        let mut state = QueueState {
            tenant,
            queue,
            machine,
            held: waiting.into(),
            flush_armed: false,
            tick_at: None,
        };
        arm_flush(&myself, &mut state);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<QueueMsg>,
        message: QueueMsg,
        state: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        let rt = &self.runtime;
        let now = rt.now_ms();
        match message {
            QueueMsg::Status(reply) => {
                let _ = reply.send((state.machine.stats(), state.held.len()));
                return Ok(());
            }
            QueueMsg::Input(input) if !state.held.is_empty() || !rt.holds_lease() => {
                state.held.push_back(input);
                arm_flush(&myself, state);
                return Ok(());
            }
            QueueMsg::Input(input) => {
                refresh_limits(rt, state);
                state.machine.handle(now, input)
            }
            QueueMsg::Tick | QueueMsg::Flush if !rt.holds_lease() => {
                if matches!(message, QueueMsg::Tick) {
                    state.tick_at = None;
                }
                state.flush_armed = false;
                arm_flush(&myself, state);
                return Ok(());
            }
            QueueMsg::Tick => {
                state.tick_at = None;
                state.machine.handle_timeout(now)
            }
            QueueMsg::Flush => {
                state.flush_armed = false;
                refresh_limits(rt, state);
                while let Some(input) = state.held.pop_front() {
                    state.machine.handle(now, input);
                }
            }
        }
        while let Some(output) = state.machine.poll_output() {
            match output {
                QueueOutput::Reserve {
                    agent,
                    agent_node: _,
                    call,
                } => {
                    rt.send_agent(
                        &state.tenant,
                        &agent,
                        AgentEnvelope::Reserve {
                            call,
                            queue: state.queue.clone(),
                        },
                    );
                }
                QueueOutput::CancelReservation {
                    agent,
                    agent_node: _,
                    call,
                } => {
                    rt.send_agent(
                        &state.tenant,
                        &agent,
                        AgentEnvelope::CancelReservation { call },
                    );
                }
                QueueOutput::Offer {
                    call,
                    call_node,
                    agent,
                    agent_node,
                    extension,
                } => {
                    rt.send_call(
                        call_node,
                        &call,
                        CallEnvelope::Offer {
                            tenant: state.tenant.clone(),
                            queue: state.queue.clone(),
                            agent,
                            agent_node,
                            extension,
                        },
                    );
                }
                QueueOutput::TurnedAway {
                    call,
                    call_node,
                    rule,
                } => {
                    metrics::counter!("callgrid_queue_turned_away_total", "tenant" => state.tenant.to_string(), "queue" => state.queue.to_string(), "rule" => rule.reason())
                        .increment(1);
                    rt.send_call(
                        call_node,
                        &call,
                        CallEnvelope::TurnedAway {
                            queue: state.queue.clone(),
                            rule,
                        },
                    );
                }
                QueueOutput::WaitEstimate {
                    call,
                    call_node,
                    ahead,
                    wait_ms,
                } => rt.send_call(
                    call_node,
                    &call,
                    CallEnvelope::WaitEstimate {
                        queue: state.queue.clone(),
                        ahead,
                        wait_ms,
                    },
                ),
                QueueOutput::Stats(stats) => {
                    metrics::gauge!("callgrid_queue_waiting", "tenant" => state.tenant.to_string(), "queue" => state.queue.to_string())
                        .set(stats.waiting as f64);
                    rt.broadcast(Envelope::QueueStats {
                        tenant: state.tenant.clone(),
                        queue: state.queue.clone(),
                        owner: rt.node_id(),
                        stats,
                        at_ms: now,
                    });
                }
            }
        }
        if let Some(at) = state.machine.poll_timeout() {
            // A spurious tick is harmless; a missing one is not, so a tick is armed whenever
            // the machine's deadline comes before the pending one.
            if state.tick_at.is_none_or(|pending| at < pending) {
                state.tick_at = Some(at);
                drop(myself.send_after(
                    Duration::from_millis(at.saturating_sub(rt.now_ms())),
                    || QueueMsg::Tick,
                ));
            }
        }
        Ok(())
    }
}

/// Retries held inputs shortly (once the lease is back).
fn arm_flush(myself: &ActorRef<QueueMsg>, state: &mut QueueState) {
    if !state.flush_armed {
        state.flush_armed = true;
        drop(myself.send_after(Duration::from_millis(50), || QueueMsg::Flush));
    }
}

/// The queue's rules from the replicated state: a config change applies to the next call
/// without restarting the queue (calls already waiting stay).
fn refresh_limits(rt: &Runtime, state: &mut QueueState) {
    let (max, all_busy) = rt
        .cluster
        .read(|s| queue_limits(s, &state.tenant, &state.queue));
    state.machine.set_max_queued(max);
    state.machine.set_all_busy(all_busy);
}

/// `max_queued`, and whether R3.3 applies now: the queue has an `on_all_busy` rule and no
/// signed-in agent with its skill is ready (all busy, or nobody signed in).
pub fn queue_limits(
    s: &model::ReplicatedState,
    tenant: &TenantId,
    queue: &QueueId,
) -> (Option<u32>, bool) {
    let Some(config) = s.queue(tenant, queue) else {
        return (None, false);
    };
    let all_busy = config.on_all_busy.is_some()
        && !s.agent_sessions.values().any(|a| {
            a.tenant == *tenant
                && a.status == AgentStatus::Ready
                && s.agent(tenant, &a.agent)
                    .is_some_and(|c| c.serving_queues().contains(queue))
        });
    (config.max_queued, all_busy)
}
