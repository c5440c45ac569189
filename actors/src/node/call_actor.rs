//! The CallActor: the driver of one call's `CallMachine`. It owns the two B2BUA legs (their
//! SIP dialogs) and the call's media session on this node, and translates between the
//! machine's abstract outputs and SIP/RTP. It makes no call-control decisions of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use tracing::{debug, info, warn};

use media::sdp::MediaDescription;
use media::session::{CallMediaHandle, LegId, MediaEvent};
use media::Codec;
use model::{CallCheckpoint, CallId, CallPhase, Cdr, FailoverMark, LegCheckpoint};
use sip::message::{Method, Request, Response};
use sip::transaction::{TransactionKey, Transport};
use sip::SipMessage;

use super::api::{Event, LiveCall};
use super::mesh::{AgentEnvelope, CallEnvelope, Envelope};
use super::sip_legs::{AgentLeg, CustomerLeg};
use super::Runtime;
use crate::call::{caller_profile, AgentNotice, CallInput, CallMachine, CallOutput, CallSetup};
use crate::queue::QueueInput;

/// What the SIP endpoint hands a call actor.
#[derive(Debug)]
pub enum SipEvent {
    /// A request inside one of the call's dialogs (BYE, re-INVITE, INFO, ...).
    Request {
        key: TransactionKey,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    },
    /// The ACK for our 2xx to the customer.
    Ack { request: Request },
    /// The customer cancelled the INVITE before our final answer.
    Cancel,
    /// A response to a request we sent on the agent leg (or a retransmitted 2xx).
    Response { response: Response },
    /// A client transaction of ours failed (timer B/F or transport error).
    Timeout { sip_call_id: String, method: Method },
}

#[derive(RactorMessage)]
pub enum CallMsg {
    Sip(Box<SipEvent>),
    Media(MediaEvent),
    Mesh(CallEnvelope),
    Tick,
    /// Resend our 2xx to the customer until it ACKs (RFC 3261 13.3.1.4).
    Retransmit2xx {
        attempt: u32,
    },
    /// The call's queue may have a new owner: tell it where the call waits.
    Resync,
    /// The periodic resync (`RESYNC_EVERY`).
    ResyncTick,
    /// While ringing an agent: still under a lease, or is the ring known to the cluster?
    LeaseCheck,
    /// This node was declared down and the call belongs to another node now: stop without
    /// a word to the legs (the new owner re-INVITEs them) and without a CDR.
    Abandon,
    /// Carry out the outputs a restored machine queued.
    Resume,
    /// R3.10 from the API: change the queues the call waits in and its priority; answers
    /// the queues it waits in now.
    Requeue(
        super::api::Requeue,
        ractor::RpcReplyPort<Result<Vec<model::QueueId>, String>>,
    ),
    /// This node rejoined at a new epoch: write the checkpoint again (the pending one carried
    /// the old fence and is refused) and re-state the queue place.
    Recheckpoint,
}

pub enum CallArgs {
    /// A new call: everything the endpoint resolved before spawning the actor.
    New {
        setup: Box<CallSetup>,
        customer: Box<CustomerLeg>,
        offer: MediaDescription,
    },
    /// A call whose node was declared down, rebuilt here from its checkpoint.
    Takeover {
        checkpoint: Box<CallCheckpoint>,
        /// The dead node's last committed heartbeat (wall clock): the start of the gap.
        dead_since_ms: u64,
    },
}

/// What a checkpoint says, without its version and time: a new one is written when it
/// changes.
#[derive(PartialEq)]
struct CheckpointKey {
    phase: CallPhase,
    customer: Option<LegCheckpoint>,
    agent: Option<LegCheckpoint>,
    ringing: bool,
    failovers: usize,
}

/// How often a call ringing an agent checks it still holds a lease (well inside the time
/// between losing the lease and being declared down).
const LEASE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How often a queued or ringing call re-states its queue place.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// How long a new call's 200 waits for its first checkpoint to commit.
const FIRST_CHECKPOINT_BOUND: Duration = Duration::from_millis(300);

/// Waits (at most `FIRST_CHECKPOINT_BOUND`) for a checkpoint to commit. A refused one (its
/// receiver dropped: this node was fenced out) is no better than a timeout, so the rest of
/// the bound is waited out as well. True when committed.
async fn wait_committed(committed: tokio::sync::oneshot::Receiver<()>) -> bool {
    let deadline = tokio::time::Instant::now() + FIRST_CHECKPOINT_BOUND;
    match tokio::time::timeout_at(deadline, committed).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            tokio::time::sleep_until(deadline).await;
            false
        }
        Err(_) => false,
    }
}

pub struct CallActor {
    pub runtime: Arc<Runtime>,
}

pub struct CallState {
    machine: CallMachine,
    customer: CustomerLeg,
    /// Boxed, like `callback`: most calls wait without one, and a dialog inline is ~1 KiB
    /// of every call's actor.
    agent: Option<Box<AgentLeg>>,
    /// R3.11: our INVITE calling the customer back (the customer's leg from then on).
    callback: Option<Box<AgentLeg>>,
    media: CallMediaHandle,
    tenant: model::TenantId,
    domain: String,
    pending_cdr: Option<Box<Cdr>>,
    queue: Option<model::QueueId>,
    timer: Option<ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<CallMsg>>>>,
    /// Checkpoint version (continues across owners) and what was last checkpointed.
    version: u64,
    checkpointed: Option<CheckpointKey>,
    /// Set when this node took the call over: the start of the media gap (wall clock ms).
    takeover_since_ms: Option<u64>,
    /// Stopped by `Abandon`: no BYE, no CDR.
    abandoned: bool,
    /// The agent's 2xx waits for its ACK until the Talking checkpoint is committed.
    ack_pending: bool,
    commit_wait: Option<tokio::sync::oneshot::Receiver<()>>,
    /// A `LeaseCheck` is scheduled (while ringing an agent).
    lease_check_armed: bool,
}

pub fn recording_dir(rt: &Runtime) -> PathBuf {
    rt.config.data_dir.join("recordings")
}

/// This node's live calls, for the API.
pub fn live_calls(rt: &Runtime) -> Vec<LiveCall> {
    rt.live
        .lock()
        .expect("live lock")
        .values()
        .cloned()
        .collect()
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallState, ActorProcessingErr> {
        drop(myself.send_after(RESYNC_EVERY, || CallMsg::ResyncTick));
        match args {
            CallArgs::New {
                setup,
                customer,
                offer,
            } => start_new(&self.runtime, myself, *setup, *customer, offer).await,
            CallArgs::Takeover {
                checkpoint,
                dead_since_ms,
            } => {
                let call = checkpoint.call_id.clone();
                let state = take_over(&self.runtime, myself.clone(), *checkpoint, dead_since_ms)
                    .await
                    .inspect_err(|_| self.runtime.unregister_call(&call))?;
                let _ = myself.cast(CallMsg::Resume);
                Ok(state)
            }
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        message: CallMsg,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        let rt = &self.runtime;
        let now = rt.now_ms();
        match message {
            // Boxed: the actor's message loop is sized for its largest future, and holding
            // this one inline cost every call's actor kilobytes while it only waits
            // (docs/PERFORMANCE.md, "Memory per call").
            CallMsg::Sip(event) => Box::pin(on_sip(rt, state, now, *event)).await,
            CallMsg::Media(event) => match event {
                MediaEvent::Dtmf {
                    leg: LegId::Customer,
                    digit,
                } => state.machine.handle(now, CallInput::Digit(digit)),
                MediaEvent::PlayDone {
                    leg: LegId::Customer,
                } => state.machine.handle(now, CallInput::PlayDone),
                MediaEvent::RtpTimeout { .. } if !rt.holds_lease() => {
                    // Without a lease this node may be losing the call to another node,
                    // which has re-INVITEd the legs: silence here proves nothing.
                    debug!(call = %state.machine.call_id(), "RTP timeout ignored without a lease");
                }
                MediaEvent::RtpTimeout { leg } => {
                    warn!(call = %state.machine.call_id(), ?leg, "no RTP for too long; ending the call");
                    let input = if leg == LegId::Customer {
                        CallInput::CustomerHangup
                    } else {
                        CallInput::AgentHangup
                    };
                    state.machine.handle(now, input);
                    if leg == LegId::Customer {
                        // The called-back customer's leg is our INVITE's (R3.11).
                        match state.callback.as_mut() {
                            Some(callback) => callback.bye(rt),
                            None => state.customer.bye(rt),
                        }
                    }
                }
                _ => {}
            },
            CallMsg::Mesh(CallEnvelope::Offer {
                tenant: _,
                queue,
                agent,
                agent_node,
                extension,
            }) => {
                state.machine.handle(
                    now,
                    CallInput::Offer {
                        queue,
                        agent,
                        agent_node,
                        extension,
                    },
                );
            }
            CallMsg::Mesh(CallEnvelope::TurnedAway { queue, rule }) => state
                .machine
                .handle(now, CallInput::TurnedAway { queue, rule }),
            CallMsg::Mesh(CallEnvelope::WaitEstimate {
                queue,
                ahead,
                wait_ms,
            }) => state.machine.handle(
                now,
                CallInput::WaitEstimate {
                    queue,
                    ahead,
                    wait_ms,
                },
            ),
            CallMsg::Tick => state.machine.handle_timeout(now),
            CallMsg::Resync => state.machine.resync(),
            CallMsg::LeaseCheck => {
                state.lease_check_armed = false;
                if let Some(phase @ CallPhase::Offering { .. }) = state.machine.phase() {
                    if !rt.holds_lease() {
                        let id = state.machine.call_id().to_string();
                        let known = rt
                            .cluster
                            .read(|s| s.calls.get(&id).is_some_and(|c| c.phase == phase));
                        if !known {
                            // Cut off with a ring nobody else knows of: once this node is
                            // declared down, the agent's new owner sees it free and may ring it
                            // for another call (I1). Withdraw the ring before that can happen
                            // (the lease lapses before a NodeDown can commit). A known ring is
                            // safe: the taker cancels it and restores the agent as ringing.
                            warn!(call = %id, "no lease while ringing an agent unknown to the cluster: withdrawing the offer");
                            state
                                .machine
                                .withdraw_offer(now, "lease lost while ringing");
                        }
                    }
                }
            }
            CallMsg::ResyncTick => {
                // While queued or ringing an agent, re-state the place now and then (an
                // idempotent Enqueue): one lost on a cut link between two live nodes, with no
                // NodeDown to trigger a resync, is sent again.
                state.machine.resync();
                drop(myself.send_after(RESYNC_EVERY, || CallMsg::ResyncTick));
            }
            CallMsg::Resume => {}
            CallMsg::Requeue(change, reply) => {
                let result =
                    state
                        .machine
                        .requeue(now, &change.add, &change.remove, change.priority);
                let _ = reply.send(result);
            }
            CallMsg::Recheckpoint => {
                state.checkpointed = None;
                state.machine.resync();
            }
            CallMsg::Abandon => {
                info!(call = %state.machine.call_id(), "call left to its new owner");
                state.abandoned = true;
                myself.stop(None);
                return Ok(());
            }
            CallMsg::Retransmit2xx { attempt } => {
                if state.customer.retransmit_2xx(rt) && attempt < 7 {
                    // T1 doubling, capped at T2 (RFC 3261 13.3.1.4).
                    let delay = Duration::from_millis((500u64 << attempt).min(4_000));
                    drop(myself.send_after(delay, move || CallMsg::Retransmit2xx {
                        attempt: attempt + 1,
                    }));
                }
            }
        }
        Box::pin(drive(rt, &myself, state)).await;
        if !state.lease_check_armed
            && matches!(state.machine.phase(), Some(CallPhase::Offering { .. }))
        {
            state.lease_check_armed = true;
            drop(myself.send_after(LEASE_CHECK_EVERY, || CallMsg::LeaseCheck));
        }
        if std::mem::take(&mut state.ack_pending) {
            if let Some(committed) = state.commit_wait.take() {
                if !wait_committed(committed).await {
                    debug!(call = %state.machine.call_id(), "ACKing the agent before the Talking checkpoint committed");
                }
            }
            if let Some(agent) = &state.agent {
                agent.ack(rt);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        let rt = &self.runtime;
        let call_id = state.machine.call_id().clone();
        rt.unregister_call(&call_id);
        rt.live.lock().expect("live lock").remove(&call_id);
        rt.endpoint().unbind(&state.customer.sip_call_id);
        if let Some(agent) = &state.agent {
            rt.endpoint().unbind(&agent.sip_call_id);
        }
        if let Some(leg) = &state.callback {
            rt.endpoint().unbind(&leg.sip_call_id);
        }
        if !state.machine.is_ended() || state.abandoned {
            // Stopped from outside (node shutdown, or the call moved to another node).
            let _ = state.media.stop().await;
        }
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        metrics::gauge!("callgrid_calls_active").decrement(1.0);
        Ok(())
    }
}

async fn start_new(
    rt: &Arc<Runtime>,
    myself: ActorRef<CallMsg>,
    setup: CallSetup,
    mut customer: CustomerLeg,
    offer: MediaDescription,
) -> Result<CallState, ActorProcessingErr> {
    let call_id = setup.call_id.clone();
    rt.register_call(call_id.clone(), myself.clone());
    rt.endpoint().bind(&customer.sip_call_id, myself.clone());
    let tenant = setup.route.tenant.clone();
    let domain = rt
        .cluster
        .read(|s| s.tenants.get(tenant.as_str()).map(|t| t.domain.clone()))
        .unwrap_or_default();

    let media = spawn_media(rt, &myself)?;
    let Some((codec, dtmf)) = media::sdp::negotiate(&offer, &[Codec::Pcma, Codec::Pcmu]) else {
        customer.reject(rt, 488, "Not Acceptable Here");
        rt.unregister_call(&call_id);
        return Err("no common codec".into());
    };
    let port = media.add_leg(LegId::Customer).await?;
    media
        .set_remote(LegId::Customer, offer.clone(), codec, dtmf)
        .await?;
    let answer = local_description(rt, port, vec![codec], dtmf);
    customer.prepare_answer(rt, &answer);

    metrics::counter!("callgrid_calls_offered_total", "tenant" => tenant.to_string()).increment(1);
    metrics::gauge!("callgrid_calls_active").increment(1.0);
    let machine = CallMachine::new(setup);
    let mut state = CallState {
        machine,
        customer,
        agent: None,
        callback: None,
        media,
        tenant,
        domain,
        pending_cdr: None,
        queue: None,
        timer: None,
        version: 0,
        checkpointed: None,
        takeover_since_ms: None,
        abandoned: false,
        ack_pending: false,
        commit_wait: None,
        lease_check_armed: false,
    };
    // The carrier gets our 200 only once the call's first checkpoint is committed (within a
    // short bound): a call the carrier believes answered can always be taken over, and ends
    // with a CDR even if this node dies right after (I2). Without a quorum the call is
    // answered anyway after the bound (degraded mode) and checkpointed later.
    if let Some(committed) = checkpoint(rt, &mut state, true) {
        if !wait_committed(committed).await {
            metrics::counter!("callgrid_calls_answered_uncheckpointed_total").increment(1);
            debug!(call = %call_id, "answering before the first checkpoint committed");
        }
    }
    state.customer.send_answer(rt);
    drop(
        myself.send_after(Duration::from_millis(500), || CallMsg::Retransmit2xx {
            attempt: 1,
        }),
    );
    info!(call = %call_id, tenant = %state.tenant, caller = %state.machine.cdr_so_far().caller, "call answered by the platform");
    update_live(rt, &state);
    Ok(state)
}

/// Starts the call's media session on this node, its events going to the actor.
fn spawn_media(
    rt: &Runtime,
    myself: &ActorRef<CallMsg>,
) -> Result<CallMediaHandle, ActorProcessingErr> {
    let (media, mut events) =
        media::session::CallMedia::spawn(rt.config.media_ip, &rt.media_ports)?;
    let forward = myself.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if forward.cast(CallMsg::Media(event)).is_err() {
                break;
            }
        }
    });
    Ok(media)
}

/// Points a media leg at the peer's checkpointed SDP and returns our new description for
/// the re-INVITE (the codec the call already uses).
async fn resume_leg_media(
    rt: &Runtime,
    media: &CallMediaHandle,
    leg: LegId,
    remote_sdp: Option<&str>,
) -> Result<MediaDescription, ActorProcessingErr> {
    let port = media.add_leg(leg).await?;
    let remote = remote_sdp.and_then(|t| media::sdp::parse_sdp(t).ok());
    let (codec, dtmf) = remote
        .as_ref()
        .and_then(|r| media::sdp::negotiate(r, &[Codec::Pcma, Codec::Pcmu]))
        .unwrap_or((Codec::Pcma, Some(media::sdp::DEFAULT_DTMF_PAYLOAD_TYPE)));
    if let Some(remote) = remote {
        media.set_remote(leg, remote, codec, dtmf).await?;
    }
    Ok(local_description(rt, port, vec![codec], dtmf))
}

/// Rebuilds a call whose node was declared down (DESIGN.md "Failover"): the legs' dialogs
/// and the machine come from the checkpoint; every leg gets a re-INVITE with this node's SDP
/// and Contact, so its media and later requests come here.
async fn take_over(
    rt: &Arc<Runtime>,
    myself: ActorRef<CallMsg>,
    checkpoint: CallCheckpoint,
    dead_since_ms: u64,
) -> Result<CallState, ActorProcessingErr> {
    let call_id = checkpoint.call_id.clone();
    rt.register_call(call_id.clone(), myself.clone());
    let tenant = checkpoint.route.tenant.clone();
    let (domain, (flows, queues), profile) = rt.cluster.read(|s| {
        (
            s.tenants
                .get(tenant.as_str())
                .map(|t| t.domain.clone())
                .unwrap_or_default(),
            rt.tenant_configs.flows_and_queues(s, &checkpoint.route),
            caller_profile(s, &checkpoint.route, &checkpoint.cdr.caller),
        )
    });
    // A Talking call whose agent's committed session has moved on since the checkpoint ended
    // on its old node before its CDR committed: nothing moves an agent off a call it talks
    // on but the end of that call. It is only recorded, at the time the agent was freed.
    let ended_at = match &checkpoint.phase {
        CallPhase::Talking { agent, .. } => rt.cluster.read(|s| {
            let session = s
                .agent_sessions
                .get(&model::state::key(&tenant, agent.as_str()))?;
            // Freed at the latest when it became idle again, if it has since (its
            // later states start after that); else when its present state began.
            let freed = if session.idle_since_ms > checkpoint.at_ms {
                session.idle_since_ms.min(session.since_ms)
            } else {
                session.since_ms
            };
            (session.status.call() != Some(&call_id) && session.since_ms > checkpoint.at_ms)
                .then_some(freed)
        }),
        _ => None,
    };
    let mut customer = CustomerLeg::restore(&checkpoint.customer)
        .ok_or("the customer leg's checkpoint is unusable")?;
    rt.endpoint().bind(&customer.sip_call_id, myself.clone());
    let media = spawn_media(rt, &myself)?;
    let resumed = ended_at.is_none();
    let local = resume_leg_media(
        rt,
        &media,
        LegId::Customer,
        checkpoint.customer.remote_sdp.as_deref(),
    )
    .await?;
    // R3.11: a virtual call has no caller on the line to bring here.
    let virtual_call = matches!(
        checkpoint.phase,
        CallPhase::Queued { callback: true, .. } | CallPhase::Offering { callback: true, .. }
    );
    if virtual_call {
        customer.closed = true;
    } else if resumed {
        customer.reinvite(rt, myself.clone(), &local);
    }

    let mut agent = None;
    match (&checkpoint.phase, &checkpoint.agent, &checkpoint.ringing) {
        _ if !resumed => {}
        (CallPhase::Talking { .. } | CallPhase::External { answered: true, .. }, Some(leg), _) => {
            if let Some(mut leg_state) = AgentLeg::restore(leg) {
                rt.endpoint().bind(&leg_state.sip_call_id, myself.clone());
                let local =
                    resume_leg_media(rt, &media, LegId::Agent, leg.remote_sdp.as_deref()).await?;
                leg_state.reinvite(rt, myself.clone(), &local);
                agent = Some(Box::new(leg_state));
            }
        }
        // R3.11: the agent had answered and the customer was being called back: hang the
        // agent's phone up and end its call (the offer fails below: the call waits again),
        // and cancel the INVITE to the customer; the next offer calls it back afresh.
        (
            CallPhase::Offering {
                callback: true,
                agent: answered_by,
                ..
            },
            Some(leg),
            ringing,
        ) => {
            if let Some(mut answered) = AgentLeg::restore(leg) {
                info!(call = %call_id, "hanging up the agent of a callback cut by a node loss");
                answered.bye(rt);
            }
            rt.send_agent(
                &tenant,
                answered_by,
                AgentEnvelope::Notice {
                    call: call_id.clone(),
                    notice: AgentNotice::Ended { acw_ms: 0 },
                },
            );
            if let Some(ringing) = ringing {
                AgentLeg::cancel_stale(rt, ringing);
            }
        }
        (CallPhase::Offering { .. } | CallPhase::External { .. }, _, Some(ringing)) => {
            AgentLeg::cancel_stale(rt, ringing)
        }
        _ => {}
    }

    // Send media at once on the legs that would otherwise hear nothing from this node:
    // phones behind NAT, or that follow the source of the RTP they receive (symmetric RTP),
    // find this node before (or without) taking the re-INVITE's SDP into account. The
    // bridge relays from then on; a caller leaving a message (R3.20) is sent nothing else.
    let silent_legs: &[LegId] = match checkpoint.phase {
        _ if !resumed => &[],
        CallPhase::Talking { .. } | CallPhase::External { answered: true, .. } => {
            &[LegId::Customer, LegId::Agent]
        }
        CallPhase::Voicemail {
            until_ms: Some(_), ..
        } => &[LegId::Customer],
        _ => &[],
    };
    let silence = media::prompt::Prompt::from_samples("takeover-silence", vec![0; 2_400]);
    for leg in silent_legs {
        let _ = media.play(*leg, silence.clone(), false).await;
    }
    let now = rt.now_ms();
    let setup = CallSetup {
        call_id: call_id.clone(),
        entry_node: checkpoint.cdr.entry_node,
        route: checkpoint.route.clone(),
        caller: checkpoint.cdr.caller.clone(),
        dialled: checkpoint.cdr.dialled.clone(),
        trunk: checkpoint.cdr.trunk.clone(),
        started_at_ms: checkpoint.cdr.started_at_ms,
        flows,
        queues,
        profile,
    };
    let mut machine = CallMachine::restore(setup, &checkpoint.phase, checkpoint.cdr.clone(), now);
    if let Some(ended_at) = ended_at {
        info!(call = %call_id, ended_at, "taken over after it had ended: recording its CDR only");
        machine.ended_before_takeover(ended_at);
    } else {
        machine.note_failover(FailoverMark {
            from_node: checkpoint.fence.node,
            to_node: rt.node_id(),
            at_ms: now,
            gap_ms: now.saturating_sub(dead_since_ms),
            recording_id: None,
            recording_offset_ms: 0,
        });
    }
    metrics::counter!("callgrid_calls_taken_over_total").increment(1);
    metrics::gauge!("callgrid_calls_active").increment(1.0);
    info!(call = %call_id, from = checkpoint.fence.node, phase = ?checkpoint.phase, "call taken over");
    let queue = match &checkpoint.phase {
        CallPhase::Queued { queue, .. }
        | CallPhase::Offering { queue, .. }
        | CallPhase::Talking { queue, .. } => Some(queue.clone()),
        _ => None,
    };
    let state = CallState {
        machine,
        customer,
        agent,
        media,
        tenant,
        domain,
        pending_cdr: None,
        queue,
        timer: None,
        version: checkpoint.version,
        checkpointed: None,
        takeover_since_ms: Some(dead_since_ms),
        abandoned: false,
        ack_pending: false,
        commit_wait: None,
        lease_check_armed: false,
        callback: None,
    };
    update_live(rt, &state);
    Ok(state)
}

/// Replicates the call's checkpoint when what a new owner would need has changed; with
/// `wait`, returns a receiver that completes when it is committed.
fn checkpoint(
    rt: &Arc<Runtime>,
    state: &mut CallState,
    wait: bool,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let phase = state.machine.phase()?;
    // Not answered yet: nothing another node could resume.
    // R3.11: a called-back customer is reached through our own INVITE's dialog.
    let customer = match state.callback.as_deref().and_then(AgentLeg::checkpoint) {
        Some(leg) => leg,
        None => state.customer.checkpoint()?,
    };
    let agent = match phase {
        CallPhase::Talking { .. } | CallPhase::External { answered: true, .. } => {
            state.agent.as_deref().and_then(AgentLeg::checkpoint)
        }
        // R3.11: the agent answered a virtual call and the caller is being called back: a
        // new owner fails the offer, and hangs up the agent's answered leg with it.
        CallPhase::Offering { callback: true, .. } if state.machine.calling_back() => {
            state.agent.as_deref().and_then(AgentLeg::checkpoint)
        }
        _ => None,
    };
    let ringing = match phase {
        // R3.11: calling the customer back: our INVITE to it, for a new owner to CANCEL.
        CallPhase::Offering { callback: true, .. } if state.machine.calling_back() => {
            state.callback.as_deref().and_then(AgentLeg::pending_invite)
        }
        CallPhase::Offering { .. }
        | CallPhase::External {
            answered: false, ..
        } => state.agent.as_deref().and_then(AgentLeg::pending_invite),
        _ => None,
    };
    let key = CheckpointKey {
        phase: phase.clone(),
        customer: Some(customer.clone()),
        agent: agent.clone(),
        ringing: ringing.is_some(),
        failovers: state.machine.cdr_so_far().failovers.len(),
    };
    if state.checkpointed.as_ref() == Some(&key) {
        return None;
    }
    state.version += 1;
    let cdr = state.machine.cdr_so_far();
    let checkpoint = CallCheckpoint {
        call_id: cdr.call_id.clone(),
        fence: rt.fence(),
        version: state.version,
        at_ms: rt.now_ms(),
        route: state.machine.route().clone(),
        phase,
        cdr: cdr.clone(),
        customer,
        agent,
        ringing,
    };
    let command = model::Command::PutCall {
        checkpoint: Arc::new(checkpoint),
    };
    state.checkpointed = Some(key);
    if wait {
        Some(rt.checkpoints.submit_waiting(command))
    } else {
        rt.checkpoints.submit(command);
        None
    }
}

async fn on_sip(rt: &Arc<Runtime>, state: &mut CallState, now: u64, event: SipEvent) {
    match event {
        SipEvent::Ack { request } => {
            if request.call_id() == Some(state.customer.sip_call_id.as_str())
                && state.customer.acked()
            {
                state.machine.handle(now, CallInput::CustomerAnswered);
            }
        }
        SipEvent::Cancel => state.machine.handle(now, CallInput::CustomerHangup),
        SipEvent::Request {
            key,
            request,
            source,
            transport,
        } => {
            let from_callback = state
                .callback
                .as_ref()
                .is_some_and(|c| request.call_id() == Some(c.sip_call_id.as_str()));
            let from_customer = request.call_id() == Some(state.customer.sip_call_id.as_str());
            match request.method {
                Method::Bye => {
                    rt.endpoint()
                        .respond(key, Response::for_request(&request, 200, "OK"));
                    if from_callback {
                        if let Some(leg) = state.callback.as_mut() {
                            leg.closed = true;
                        }
                        state.machine.handle(now, CallInput::CustomerHangup);
                    } else if from_customer {
                        state.customer.closed = true;
                        state.machine.handle(now, CallInput::CustomerHangup);
                        // A BYE before our 2xx was ACKed still ends the call; stop resending.
                        state.customer.acked();
                    } else if let Some(agent) = state.agent.as_mut() {
                        agent.closed = true;
                        state.machine.handle(now, CallInput::AgentHangup);
                    }
                }
                Method::Invite => {
                    // A session refresh or re-offer: answer with our current description.
                    let leg_sdp = if from_callback {
                        state.callback.as_ref().and_then(|c| c.local_sdp.clone())
                    } else if from_customer {
                        state.customer.local_sdp.clone()
                    } else {
                        state.agent.as_ref().and_then(|a| a.local_sdp.clone())
                    };
                    let mut response = Response::for_request(&request, 200, "OK");
                    if let Some(sdp) = leg_sdp {
                        response = with_sdp(response, &sdp);
                    }
                    response
                        .headers
                        .set("Contact", format!("<sip:callgrid@{}>", rt.config.sip_addr));
                    rt.endpoint().respond(key, response);
                }
                Method::Info | Method::Options | Method::Update | Method::Notify => {
                    rt.endpoint()
                        .respond(key, Response::for_request(&request, 200, "OK"));
                }
                _ => {
                    debug!(
                        ?source,
                        ?transport,
                        method = request.method.as_str(),
                        "unsupported in-dialog request"
                    );
                    rt.endpoint()
                        .respond(key, Response::for_request(&request, 501, "Not Implemented"));
                }
            }
        }
        SipEvent::Response { response } => {
            let method = response.cseq().map(|(_, m)| m);
            if method != Some(Method::Invite) {
                return;
            }
            let cseq = response.cseq().map(|(n, _)| n);
            if response.call_id() == Some(state.customer.sip_call_id.as_str()) {
                return on_reinvite_response(rt, state, now, LegId::Customer, &response).await;
            }
            if let Some(leg) = state.callback.as_mut() {
                if response.call_id() == Some(leg.sip_call_id.as_str()) {
                    if leg.reinvite.is_some() && leg.reinvite == cseq {
                        return on_reinvite_response(rt, state, now, LegId::Customer, &response)
                            .await;
                    }
                    return on_callback_response(rt, state, now, &response).await;
                }
            }
            let Some(agent) = state.agent.as_mut() else {
                return;
            };
            if response.call_id() != Some(agent.sip_call_id.as_str()) {
                return;
            }
            if agent.reinvite.is_some() && agent.reinvite == cseq {
                return on_reinvite_response(rt, state, now, LegId::Agent, &response).await;
            }
            match response.status {
                100 => {}
                101..=199 => state.machine.handle(now, CallInput::AgentRinging),
                200..=299 => {
                    // The first 2xx is ACKed once the Talking checkpoint is committed (see
                    // `handle`): a new owner then always knows the call is established (I3).
                    let first = agent.on_2xx(rt, &response, false);
                    if !first {
                        return;
                    }
                    if !state.machine.awaits_answer() {
                        // The offer was withdrawn while the phone answered: hang it up.
                        agent.ack(rt);
                        agent.bye(rt);
                        return;
                    }
                    match response_sdp(&response) {
                        Some(description) => {
                            let chosen =
                                media::sdp::negotiate(&description, &[Codec::Pcma, Codec::Pcmu]);
                            let (codec, dtmf) = chosen.unwrap_or((Codec::Pcmu, None));
                            if let Err(error) = state
                                .media
                                .set_remote(LegId::Agent, description, codec, dtmf)
                                .await
                            {
                                warn!(%error, "agent media");
                            }
                            state.machine.handle(now, CallInput::AgentAnswered);
                            state.ack_pending = true;
                        }
                        None => {
                            agent.ack(rt);
                            agent.bye(rt);
                            state.machine.handle(
                                now,
                                CallInput::AgentFailed {
                                    no_answer: false,
                                    reason: "agent answered without SDP".into(),
                                },
                            );
                        }
                    }
                }
                status => {
                    agent.final_failure = true;
                    let no_answer = matches!(status, 408 | 480 | 486 | 487 | 600 | 603);
                    state.machine.handle(
                        now,
                        CallInput::AgentFailed {
                            no_answer,
                            reason: format!("agent phone answered {status}"),
                        },
                    );
                }
            }
        }
        SipEvent::Timeout {
            sip_call_id,
            method,
        } if method == Method::Invite
            && (sip_call_id == state.customer.sip_call_id && state.customer.reinvite.is_some()
                || state
                    .agent
                    .as_ref()
                    .is_some_and(|a| a.sip_call_id == sip_call_id && a.reinvite.is_some())) =>
        {
            let leg = if sip_call_id == state.customer.sip_call_id {
                LegId::Customer
            } else {
                LegId::Agent
            };
            reinvite_failed(rt, state, now, leg, "no answer to the re-INVITE");
        }
        SipEvent::Timeout {
            sip_call_id,
            method,
        } => {
            let callback_invite = state
                .callback
                .as_ref()
                .is_some_and(|c| c.sip_call_id == sip_call_id)
                && method == Method::Invite;
            if callback_invite {
                state.machine.handle(
                    now,
                    CallInput::CallbackFailed {
                        reason: "the carrier did not answer the callback".into(),
                    },
                );
            }
            let agent_invite = state
                .agent
                .as_ref()
                .is_some_and(|a| a.sip_call_id == sip_call_id)
                && method == Method::Invite;
            if agent_invite {
                state.machine.handle(
                    now,
                    CallInput::AgentFailed {
                        no_answer: true,
                        reason: "agent phone did not answer".into(),
                    },
                );
            }
        }
    }
}

/// R3.11: the carrier's answers to our callback INVITE.
async fn on_callback_response(
    rt: &Arc<Runtime>,
    state: &mut CallState,
    now: u64,
    response: &Response,
) {
    if matches!(response.status, 100..=199) {
        return;
    }
    let Some(leg) = state.callback.as_mut() else {
        return;
    };
    match response.status {
        200..=299 => {
            if !leg.on_2xx(rt, response, true) {
                return;
            }
            if !state.machine.calling_back() {
                // The agent gave up meanwhile: hang the customer up.
                leg.bye(rt);
                return;
            }
            let Some(description) = response_sdp(response) else {
                leg.bye(rt);
                state.machine.handle(
                    now,
                    CallInput::CallbackFailed {
                        reason: "the callback was answered without SDP".into(),
                    },
                );
                return;
            };
            let (codec, dtmf) = media::sdp::negotiate(&description, &[Codec::Pcma, Codec::Pcmu])
                .unwrap_or((Codec::Pcmu, None));
            if let Err(error) = state
                .media
                .set_remote(LegId::Customer, description, codec, dtmf)
                .await
            {
                warn!(%error, "callback media");
            }
            state.machine.handle(now, CallInput::CalledBack);
        }
        status => {
            leg.final_failure = true;
            state.machine.handle(
                now,
                CallInput::CallbackFailed {
                    reason: format!("the callback was answered {status}"),
                },
            );
        }
    }
}

/// The answer to a re-INVITE this node sent after taking the call over.
async fn on_reinvite_response(
    rt: &Arc<Runtime>,
    state: &mut CallState,
    now: u64,
    leg: LegId,
    response: &Response,
) {
    match response.status {
        100..=199 => {}
        200..=299 => {
            let first = match leg {
                LegId::Customer => state.customer.on_reinvite_2xx(rt, response),
                _ => state
                    .agent
                    .as_mut()
                    .is_some_and(|a| a.on_reinvite_2xx(rt, response)),
            };
            if !first {
                return;
            }
            if let Some(description) = response_sdp(response) {
                if let Some((codec, dtmf)) =
                    media::sdp::negotiate(&description, &[Codec::Pcma, Codec::Pcmu])
                {
                    if let Err(error) = state.media.set_remote(leg, description, codec, dtmf).await
                    {
                        warn!(%error, ?leg, "media after the re-INVITE");
                    }
                }
            }
            if leg == LegId::Customer {
                if let Some(since) = state.takeover_since_ms {
                    let gap = now.saturating_sub(since);
                    state.machine.set_failover_gap(gap);
                    metrics::histogram!("callgrid_failover_media_gap_ms").record(gap as f64);
                }
            }
            info!(call = %state.machine.call_id(), ?leg, "leg follows the new owner");
        }
        status => {
            reinvite_failed(rt, state, now, leg, &format!("re-INVITE answered {status}"));
        }
    }
}

/// A leg refused to follow this node: it is gone, and so is the call.
fn reinvite_failed(rt: &Arc<Runtime>, state: &mut CallState, now: u64, leg: LegId, why: &str) {
    warn!(call = %state.machine.call_id(), ?leg, why, "leg lost in the takeover");
    match leg {
        LegId::Customer => {
            state.customer.reinvite = None;
            state.customer.closed = true;
            state.machine.handle(now, CallInput::CustomerHangup);
        }
        _ => {
            if let Some(agent) = state.agent.as_mut() {
                agent.reinvite = None;
                agent.bye(rt);
                agent.closed = true;
            }
            state.machine.handle(now, CallInput::AgentHangup);
        }
    }
}

/// Carries out the machine's outputs.
async fn drive(rt: &Arc<Runtime>, myself: &ActorRef<CallMsg>, state: &mut CallState) {
    let call_id = state.machine.call_id().clone();
    while let Some(output) = state.machine.poll_output() {
        match output {
            CallOutput::Play { prompt, repeat } => {
                match super::prompts::load(rt, &state.tenant, &prompt) {
                    Some(p) => {
                        if let Err(error) = state.media.play(LegId::Customer, p, repeat).await {
                            warn!(%error, "play");
                        }
                    }
                    None => {
                        // A missing prompt must not stall the flow: treat it as played.
                        warn!(call = %call_id, prompt = %prompt, "prompt missing; skipped");
                        if !repeat {
                            let _ = myself.cast(CallMsg::Media(MediaEvent::PlayDone {
                                leg: LegId::Customer,
                            }));
                        }
                    }
                }
            }
            CallOutput::StopPlay => {
                let _ = state.media.stop_play(LegId::Customer).await;
            }
            CallOutput::Enqueue {
                queue,
                priority,
                enqueued_at_ms,
                offered_to,
                arriving,
                needs,
            } => {
                state.queue = Some(queue.clone());
                rt.send_queue(
                    &state.tenant,
                    &queue,
                    QueueInput::Enqueue {
                        call: call_id.clone(),
                        call_node: rt.node_id(),
                        priority,
                        enqueued_at_ms,
                        offered_to,
                        arriving,
                        needs,
                    },
                );
            }
            CallOutput::Dequeue { queue } => rt.send_queue(
                &state.tenant,
                &queue,
                QueueInput::Remove {
                    call: call_id.clone(),
                },
            ),
            CallOutput::LostCall { webhook, node, cdr } => {
                tokio::spawn(super::webhook::lost_call(webhook, node, cdr));
            }
            CallOutput::AskWait { queue } => rt.send_queue(
                &state.tenant,
                &queue,
                QueueInput::EstimateWait {
                    call: call_id.clone(),
                    call_node: rt.node_id(),
                },
            ),
            CallOutput::OfferDone {
                queue,
                agent,
                answered,
            } => {
                rt.send_queue(
                    &state.tenant,
                    &queue,
                    QueueInput::OfferDone {
                        call: call_id.clone(),
                        agent,
                        answered,
                    },
                );
            }
            CallOutput::Agent {
                agent,
                agent_node: _,
                notice,
            } => {
                rt.send_agent(
                    &state.tenant,
                    &agent,
                    AgentEnvelope::Notice {
                        call: call_id.clone(),
                        notice,
                    },
                );
            }
            CallOutput::DialCustomer {
                number,
                trunk,
                ring_timeout_ms: _,
            } => {
                let caller_id = state.machine.route().access_code.clone();
                let dialled = dial_number(
                    rt,
                    state,
                    myself,
                    LegId::Customer,
                    &number,
                    &trunk,
                    &caller_id,
                )
                .await;
                match dialled {
                    Ok(leg) => {
                        info!(call = %call_id, %number, "calling the customer back");
                        state.callback = Some(Box::new(leg));
                    }
                    Err(reason) => state
                        .machine
                        .handle(rt.now_ms(), CallInput::CallbackFailed { reason }),
                }
            }
            CallOutput::DialOut { number, trunk } => {
                // R3.4: the external number takes the agent leg's place (its answers come
                // back through the agent leg's path). The call data carried along: the
                // external party sees the caller's number.
                let caller_id = state.machine.cdr_so_far().caller.clone();
                let dialled =
                    dial_number(rt, state, myself, LegId::Agent, &number, &trunk, &caller_id).await;
                match dialled {
                    Ok(leg) => {
                        info!(call = %call_id, %number, "transferring to an external number");
                        state.agent = Some(Box::new(leg));
                    }
                    Err(reason) => state.machine.handle(
                        rt.now_ms(),
                        CallInput::AgentFailed {
                            no_answer: false,
                            reason,
                        },
                    ),
                }
            }
            CallOutput::DialAgent {
                extension,
                callback_to,
                ..
            } => {
                if let (Some(customer), Some(agent)) = (&callback_to, state.machine.offered_agent())
                {
                    rt.broadcast(Envelope::Event {
                        event: Box::new(Event::VirtualCall {
                            call_id: call_id.clone(),
                            tenant: state.tenant.clone(),
                            agent,
                            customer: customer.clone(),
                            at_ms: rt.now_ms(),
                        }),
                    });
                }
                let bindings = rt.cluster.read(|s| {
                    s.live_bindings(&state.tenant, &extension, rt.now_ms())
                        .into_iter()
                        .cloned()
                        .collect::<Vec<_>>()
                });
                let Some(binding) = bindings.into_iter().next() else {
                    state.machine.handle(
                        rt.now_ms(),
                        CallInput::AgentFailed {
                            no_answer: true,
                            reason: format!("extension {extension} is not registered"),
                        },
                    );
                    continue;
                };
                let port = match state.media.add_leg(LegId::Agent).await {
                    Ok(port) => port,
                    Err(error) => {
                        warn!(%error, "no media port for the agent leg");
                        state.machine.handle(
                            rt.now_ms(),
                            CallInput::AgentFailed {
                                no_answer: false,
                                reason: "no media port".into(),
                            },
                        );
                        continue;
                    }
                };
                let offer = local_description(
                    rt,
                    port,
                    vec![Codec::Pcma, Codec::Pcmu],
                    Some(media::sdp::DEFAULT_DTMF_PAYLOAD_TYPE),
                );
                let caller = state.machine.cdr_so_far().caller.clone();
                match AgentLeg::invite(
                    rt,
                    myself.clone(),
                    &binding,
                    &extension,
                    &state.domain,
                    &caller,
                    &call_id,
                    &offer,
                ) {
                    Some(leg) => state.agent = Some(Box::new(leg)),
                    None => state.machine.handle(
                        rt.now_ms(),
                        CallInput::AgentFailed {
                            no_answer: true,
                            reason: "bad contact".into(),
                        },
                    ),
                }
            }
            CallOutput::CancelAgent => {
                if let Some(agent) = state.agent.as_mut() {
                    agent.cancel_or_bye(rt);
                }
            }
            CallOutput::Bridge if state.takeover_since_ms.is_some() => {
                if !record_failover_part(rt, state, &call_id, Recording::Bridge).await {
                    warn!(call = %call_id, "recording unavailable after the takeover");
                    let _ = state.media.bridge(None).await;
                }
            }
            CallOutput::RecordVoicemail
                if state.takeover_since_ms.is_some()
                    && state.machine.cdr_so_far().recording_id.is_some() =>
            {
                // R3.20: the rest of the message, in this node's part.
                if !record_failover_part(rt, state, &call_id, Recording::Voicemail).await {
                    warn!(call = %call_id, "voicemail recording unavailable after the takeover");
                }
            }
            CallOutput::Bridge => {
                if !start_recording(rt, state, &call_id, Recording::Bridge).await {
                    warn!(call = %call_id, "recording unavailable; bridging unrecorded");
                    let _ = state.media.bridge(None).await;
                }
                metrics::counter!("callgrid_calls_answered_total", "tenant" => state.tenant.to_string()).increment(1);
            }
            CallOutput::RecordVoicemail => {
                // R3.20: the message goes into the call's recording (the caller's channel).
                if !start_recording(rt, state, &call_id, Recording::Voicemail).await {
                    warn!(call = %call_id, "voicemail recording unavailable");
                }
            }
            CallOutput::HangupCustomer => match state.callback.as_mut() {
                Some(leg) => leg.cancel_or_bye(rt),
                None => state.customer.bye(rt),
            },
            CallOutput::HangupAgent => {
                if let Some(agent) = state.agent.as_mut() {
                    agent.cancel_or_bye(rt);
                }
            }
            CallOutput::Cdr(cdr) => state.pending_cdr = Some(cdr),
            CallOutput::Finished => {
                // Close the recording before the CDR appears, so a CDR's recording is complete.
                let _ = state.media.stop().await;
                if let Some(cdr) = state.pending_cdr.take() {
                    if cdr.disposition == model::Disposition::Abandoned {
                        metrics::counter!("callgrid_calls_abandoned_total", "tenant" => state.tenant.to_string()).increment(1);
                    }
                    rt.checkpoints.submit(model::Command::RecordCdr {
                        cdr: cdr.into(),
                        fence: Some(rt.fence()),
                    });
                }
                myself.stop(None);
                return;
            }
        }
    }
    if let Some(committed) = checkpoint(rt, state, state.ack_pending) {
        state.commit_wait = Some(committed);
    }
    update_live(rt, state);
    // One pending timer per call: a new deadline replaces the old one.
    if let Some(old) = state.timer.take() {
        old.abort();
    }
    if let Some(at) = state.machine.poll_timeout() {
        state.timer = Some(myself.send_after(
            Duration::from_millis(at.saturating_sub(rt.now_ms())),
            || CallMsg::Tick,
        ));
    }
}

/// What the call's recording holds: the bridge, or a voicemail (R3.20).
enum Recording {
    Bridge,
    Voicemail,
}

/// Our INVITE to `number` through `trunk`'s outbound address (R3.11 callbacks, R3.4
/// transfers out), its media on `leg`; the reason if it cannot be sent.
async fn dial_number(
    rt: &Runtime,
    state: &mut CallState,
    myself: &ActorRef<CallMsg>,
    leg: LegId,
    number: &str,
    trunk: &model::TrunkId,
    caller_id: &str,
) -> Result<AgentLeg, String> {
    let gateway = rt
        .cluster
        .read(|s| s.trunks.get(trunk.as_str()).and_then(|t| t.outbound))
        .ok_or_else(|| format!("trunk {trunk} has no outbound address"))?;
    let port = state
        .media
        .add_leg(leg)
        .await
        .map_err(|error| format!("no media port: {error}"))?;
    let offer = local_description(
        rt,
        port,
        vec![Codec::Pcma, Codec::Pcmu],
        Some(media::sdp::DEFAULT_DTMF_PAYLOAD_TYPE),
    );
    let call_id = state.machine.call_id().clone();
    debug!(call = %call_id, %number, %gateway, "INVITE out through the trunk");
    Ok(AgentLeg::invite_number(
        rt,
        myself.clone(),
        number,
        gateway,
        caller_id,
        &call_id,
        &offer,
    ))
}

/// After a takeover, the recording goes on in a new part on this node: the CDR's failover
/// mark names it and where it starts in the call's timeline (from the bridge, or from the
/// start of the message; the gap is silence). False if it could not be started.
async fn record_failover_part(
    rt: &Runtime,
    state: &mut CallState,
    call_id: &CallId,
    what: Recording,
) -> bool {
    let cdr = state.machine.cdr_so_far();
    let part = format!("{}-f{}-{call_id}", rt.node_id(), cdr.failovers.len());
    let from_ms = match what {
        Recording::Bridge => cdr
            .agent_answered_at_ms
            .or_else(|| cdr.external.as_ref().and_then(|e| e.answered_at_ms)),
        Recording::Voicemail => cdr.voicemail.as_ref().map(|v| v.started_at_ms),
    };
    let offset = rt.now_ms().saturating_sub(from_ms.unwrap_or(0));
    let dir = recording_dir(rt);
    let path = dir.join(format!("{part}.wav"));
    let recorded = std::fs::create_dir_all(&dir).is_ok()
        && match what {
            Recording::Bridge => state.media.bridge(Some(path)).await.is_ok(),
            Recording::Voicemail => state.media.record(path).await.is_ok(),
        };
    state
        .machine
        .set_failover_recording(recorded.then_some(part), offset);
    recorded
}

/// Starts the call's recording (`DATA_DIR/recordings/<call id>.wav`) and tells the machine
/// its id; false if it could not be started (the caller decides what to do without it).
async fn start_recording(
    rt: &Runtime,
    state: &mut CallState,
    call_id: &CallId,
    what: Recording,
) -> bool {
    let dir = recording_dir(rt);
    let path = dir.join(format!("{call_id}.wav"));
    if std::fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let started = match what {
        Recording::Bridge => state.media.bridge(Some(path)).await,
        Recording::Voicemail => state.media.record(path).await,
    };
    if started.is_ok() {
        state.machine.handle(
            rt.now_ms(),
            CallInput::Recording {
                id: call_id.to_string(),
            },
        );
    }
    started.is_ok()
}

fn update_live(rt: &Runtime, state: &CallState) {
    let cdr = state.machine.cdr_so_far();
    let live = LiveCall {
        call_id: cdr.call_id.clone(),
        node: rt.node_id(),
        tenant: cdr.tenant.clone(),
        caller: cdr.caller.clone(),
        state: state.machine.state_name().to_string(),
        queue: state.queue.clone(),
        waiting_in: state.machine.waiting_in(),
        agent: cdr.agent.clone(),
        started_at_ms: cdr.started_at_ms,
    };
    rt.live
        .lock()
        .expect("live lock")
        .insert(CallId(live.call_id.0.clone()), live);
}

fn local_description(
    rt: &Runtime,
    port: u16,
    codecs: Vec<Codec>,
    dtmf: Option<u8>,
) -> MediaDescription {
    MediaDescription {
        addr: rt.config.media_ip,
        port,
        codecs,
        dtmf_payload_type: dtmf,
        ptime_ms: 20,
        direction: media::sdp::Direction::SendRecv,
    }
}

pub(crate) fn with_sdp(mut response: Response, sdp: &str) -> Response {
    response.headers.set("Content-Type", "application/sdp");
    response.body = sdp.as_bytes().to_vec();
    response
}

fn response_sdp(response: &Response) -> Option<MediaDescription> {
    let text = std::str::from_utf8(&response.body).ok()?;
    media::sdp::parse_sdp(text).ok()
}
