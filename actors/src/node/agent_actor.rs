//! The AgentActor: a thin ractor driver around `AgentMachine`. It turns outputs into Raft
//! checkpoints, availability messages to the agent's queues, and reservation replies.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use tracing::{debug, info};

use model::{AgentId, AgentSession, QueueId, TenantId};

use super::api::AgentCommand;
use super::mesh::AgentEnvelope;
use super::Runtime;
use crate::agent::{AgentError, AgentInput, AgentMachine, AgentOutput};
use crate::call::AgentNotice;
use crate::queue::QueueInput;

#[derive(RactorMessage)]
pub enum AgentMsg {
    Mesh(AgentEnvelope),
    Command(AgentCommand, RpcReplyPort<Result<AgentSession, String>>),
    Tick,
    /// The agent's config changed (R3.18 role, R3.19 skill reset): the queues it serves now.
    Serving(Vec<QueueId>),
}

pub struct AgentActor {
    pub runtime: Arc<Runtime>,
}

pub struct AgentArgs {
    pub tenant: TenantId,
    pub agent: AgentId,
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentMachine;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentMachine, ActorProcessingErr> {
        let rt = &self.runtime;
        let (skills, session) = rt.cluster.read(|s| {
            (
                s.agent(&args.tenant, &args.agent)
                    .map(|a| a.serving_queues())
                    .unwrap_or_default(),
                s.agent_session(&args.tenant, &args.agent).cloned(),
            )
        });
        // The session may lag behind the calls (its checkpoint was in flight when the old
        // owner died): a call checkpointed as talking to, or ringing, this agent wins, so the
        // agent is never offered a second call meanwhile (I1).
        let engaged = rt.cluster.read(|s| {
            s.calls
                .values()
                .filter(|c| c.route.tenant == args.tenant)
                .filter_map(|c| match &c.phase {
                    model::CallPhase::Talking { agent, .. } if *agent == args.agent => Some((
                        c.at_ms,
                        model::AgentStatus::Talking {
                            call: c.call_id.clone(),
                        },
                    )),
                    model::CallPhase::Offering { agent, .. } if *agent == args.agent => Some((
                        c.at_ms,
                        model::AgentStatus::Ringing {
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
        let mut machine = match session {
            // Rebuilt from the last checkpoint: same state, same idle-since (DESIGN.md).
            Some(session) => AgentMachine::restore(&session, rt.node_id(), skills.clone()),
            None => AgentMachine::new(
                args.tenant.clone(),
                args.agent.clone(),
                rt.node_id(),
                skills.clone(),
            ),
        };
        if machine.status() == &model::AgentStatus::Ready {
            machine
                .handle(rt.now_ms(), AgentInput::Skills { skills })
                .ok();
        }
        drive(rt, &myself, &mut machine);
        Ok(machine)
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        machine: &mut AgentMachine,
    ) -> Result<(), ActorProcessingErr> {
        let rt = &self.runtime;
        let now = rt.now_ms();
        match message {
            AgentMsg::Command(command, reply) => {
                let input = match command {
                    AgentCommand::SignIn { extension } => {
                        let session = machine.session();
                        let known = rt
                            .cluster
                            .read(|s| s.extension(&session.tenant, &extension).is_some());
                        if !known {
                            let _ = reply.send(Err(format!(
                                "extension {extension} does not exist in tenant {}",
                                session.tenant
                            )));
                            return Ok(());
                        }
                        AgentInput::SignIn { extension }
                    }
                    AgentCommand::Ready => AgentInput::Ready,
                    AgentCommand::NotReady { reason } => AgentInput::NotReady { reason },
                    AgentCommand::SignOut => AgentInput::SignOut,
                    AgentCommand::Away { reason, by } => AgentInput::Away { reason, by },
                    AgentCommand::EndAway { ready } => AgentInput::EndAway { ready },
                };
                let result = machine
                    .handle(now, input)
                    .map(|()| machine.session())
                    .map_err(|e: AgentError| e.to_string());
                drive(rt, &myself, machine);
                let _ = reply.send(result);
            }
            AgentMsg::Serving(skills) => {
                if machine.skills() != skills.as_slice() {
                    info!(agent = %machine.session().agent, ?skills, "agent's queues changed live");
                    if let Err(error) = machine.handle(now, AgentInput::Skills { skills }) {
                        debug!(%error, "skill change refused");
                    }
                    drive(rt, &myself, machine);
                } else if machine.status() == &model::AgentStatus::Ready {
                    // Same queues, but the tags or levels may have changed (R3.12): a ready
                    // agent announces itself again, which updates what its queues know.
                    let s = machine.session();
                    for queue in skills {
                        let input = available(rt, &s, &queue, s.idle_since_ms);
                        rt.send_queue(&s.tenant, &queue, input);
                    }
                }
            }
            AgentMsg::Mesh(envelope) => {
                let input = match envelope {
                    AgentEnvelope::Reserve { call, queue } if !rt.holds_lease() => {
                        // Without a lease another node may own this agent by now: never
                        // promise it (I1). The queue tries again or elsewhere.
                        let s = machine.session();
                        rt.send_queue(
                            &s.tenant,
                            &queue,
                            QueueInput::ReserveReply {
                                agent: s.agent.clone(),
                                call,
                                accepted: false,
                                extension: None,
                            },
                        );
                        None
                    }
                    AgentEnvelope::Reserve { call, queue } => {
                        Some(AgentInput::Reserve { call, queue })
                    }
                    AgentEnvelope::CancelReservation { call } => {
                        Some(AgentInput::CancelReservation { call })
                    }
                    AgentEnvelope::Notice { call, notice } => Some(match notice {
                        AgentNotice::Ringing => AgentInput::Ringing { call },
                        AgentNotice::Answered => AgentInput::Answered { call },
                        AgentNotice::Ended { acw_ms } => AgentInput::CallEnded { call, acw_ms },
                        AgentNotice::Failed { no_answer } => {
                            AgentInput::OfferFailed { call, no_answer }
                        }
                    }),
                    AgentEnvelope::Announce { queue } => {
                        if machine.status() == &model::AgentStatus::Ready
                            && machine.skills().contains(&queue)
                        {
                            let s = machine.session();
                            let input = available(rt, &s, &queue, s.idle_since_ms);
                            rt.send_queue(&s.tenant, &queue, input);
                        }
                        None
                    }
                };
                if let Some(input) = input {
                    if let Err(error) = machine.handle(now, input) {
                        debug!(%error, "agent input refused");
                    }
                }
                drive(rt, &myself, machine);
            }
            AgentMsg::Tick => {
                machine.handle_timeout(now);
                drive(rt, &myself, machine);
            }
        }
        Ok(())
    }
}

/// The agent's availability to `queue`, with its tags and skill level there (R3.12) from the
/// replicated config.
fn available(
    rt: &Runtime,
    session: &AgentSession,
    queue: &QueueId,
    idle_since_ms: u64,
) -> QueueInput {
    let fit = rt
        .cluster
        .read(|s| {
            s.agent(&session.tenant, &session.agent)
                .map(|a| a.fit(queue))
        })
        .unwrap_or_default();
    QueueInput::AgentAvailable {
        agent: session.agent.clone(),
        agent_node: rt.node_id(),
        idle_since_ms,
        fit,
    }
}

/// Carries out the machine's outputs and arms its timer.
fn drive(rt: &Arc<Runtime>, myself: &ActorRef<AgentMsg>, machine: &mut AgentMachine) {
    let session = machine.session();
    while let Some(output) = machine.poll_output() {
        match output {
            AgentOutput::Checkpoint(session) => rt.checkpoint_agent(session),
            AgentOutput::Availability {
                queues,
                available,
                idle_since_ms,
            } => {
                for queue in queues {
                    let input = if available {
                        self::available(rt, &session, &queue, idle_since_ms)
                    } else {
                        QueueInput::AgentUnavailable {
                            agent: session.agent.clone(),
                        }
                    };
                    rt.send_queue(&session.tenant, &queue, input);
                }
            }
            AgentOutput::ReserveReply {
                queue,
                call,
                accepted,
                extension,
            } => {
                rt.send_queue(
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
    if let Some(at) = machine.poll_timeout() {
        // Spurious ticks are harmless (the machine checks its deadlines); agent timers are
        // rare (reservation, ACW), so no need to cancel the previous one.
        let delay = at.saturating_sub(rt.now_ms());
        drop(myself.send_after(Duration::from_millis(delay), || AgentMsg::Tick));
    }
}
