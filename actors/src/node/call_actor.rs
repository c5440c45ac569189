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
use model::{CallId, Cdr};
use sip::message::{Method, Request, Response};
use sip::transaction::{TransactionKey, Transport};
use sip::SipMessage;

use super::api::LiveCall;
use super::mesh::{AgentEnvelope, CallEnvelope};
use super::sip_legs::{AgentLeg, CustomerLeg};
use super::Runtime;
use crate::call::{CallInput, CallMachine, CallOutput, CallSetup};
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
}

/// Everything the endpoint resolved before spawning the actor.
pub struct CallArgs {
    pub setup: CallSetup,
    pub customer: CustomerLeg,
    pub offer: MediaDescription,
}

pub struct CallActor {
    pub runtime: Arc<Runtime>,
}

pub struct CallState {
    machine: CallMachine,
    customer: CustomerLeg,
    agent: Option<AgentLeg>,
    media: CallMediaHandle,
    tenant: model::TenantId,
    domain: String,
    pending_cdr: Option<Box<Cdr>>,
    queue: Option<model::QueueId>,
    timer: Option<ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<CallMsg>>>>,
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
        let rt = &self.runtime;
        let CallArgs {
            setup,
            mut customer,
            offer,
        } = args;
        let call_id = setup.call_id.clone();
        rt.register_call(call_id.clone(), myself.clone());
        rt.endpoint().bind(&customer.sip_call_id, myself.clone());
        let tenant = setup.route.tenant.clone();
        let domain = rt
            .cluster
            .read(|s| s.tenants.get(tenant.as_str()).map(|t| t.domain.clone()))
            .unwrap_or_default();

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
        customer.answer(rt, &answer);
        drop(
            myself.send_after(Duration::from_millis(500), || CallMsg::Retransmit2xx {
                attempt: 1,
            }),
        );

        metrics::counter!("callgrid_calls_offered_total", "tenant" => tenant.to_string())
            .increment(1);
        metrics::gauge!("callgrid_calls_active").increment(1.0);
        info!(call = %call_id, tenant = %tenant, "call answered by the platform");
        let machine = CallMachine::new(setup);
        let state = CallState {
            machine,
            customer,
            agent: None,
            media,
            tenant,
            domain,
            pending_cdr: None,
            queue: None,
            timer: None,
        };
        update_live(rt, &state);
        Ok(state)
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
            CallMsg::Sip(event) => on_sip(rt, state, now, *event).await,
            CallMsg::Media(event) => match event {
                MediaEvent::Dtmf {
                    leg: LegId::Customer,
                    digit,
                } => state.machine.handle(now, CallInput::Digit(digit)),
                MediaEvent::PlayDone {
                    leg: LegId::Customer,
                } => state.machine.handle(now, CallInput::PlayDone),
                MediaEvent::RtpTimeout { leg } => {
                    warn!(call = %state.machine.call_id(), ?leg, "no RTP for too long; ending the call");
                    let input = if leg == LegId::Customer {
                        CallInput::CustomerHangup
                    } else {
                        CallInput::AgentHangup
                    };
                    state.machine.handle(now, input);
                    if leg == LegId::Customer {
                        state.customer.bye(rt);
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
            CallMsg::Tick => state.machine.handle_timeout(now),
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
        drive(rt, &myself, state).await;
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
        if !state.machine.is_ended() {
            // Stopped from outside (node shutdown): the media stops with the node.
            let _ = state.media.stop().await;
        }
        metrics::gauge!("callgrid_calls_active").decrement(1.0);
        Ok(())
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
            let from_customer = request.call_id() == Some(state.customer.sip_call_id.as_str());
            match request.method {
                Method::Bye => {
                    rt.endpoint()
                        .respond(key, Response::for_request(&request, 200, "OK"));
                    if from_customer {
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
                    let leg_sdp = if from_customer {
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
            let Some(agent) = state.agent.as_mut() else {
                return;
            };
            if response.call_id() != Some(agent.sip_call_id.as_str()) {
                return;
            }
            let method = response.cseq().map(|(_, m)| m);
            if method != Some(Method::Invite) {
                return;
            }
            match response.status {
                100 => {}
                101..=199 => state.machine.handle(now, CallInput::AgentRinging),
                200..=299 => {
                    let first = agent.on_2xx(rt, &response);
                    if !first {
                        return;
                    }
                    if state.machine.state_name() != "ringing_agent" {
                        // The offer was withdrawn while the phone answered: hang it up.
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
                        }
                        None => {
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
        } => {
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
            CallOutput::DialAgent { extension, .. } => {
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
                    Some(leg) => state.agent = Some(leg),
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
            CallOutput::Bridge => {
                let dir = recording_dir(rt);
                let path = dir.join(format!("{call_id}.wav"));
                let recorded = match std::fs::create_dir_all(&dir) {
                    Ok(()) => state.media.bridge(Some(path)).await.is_ok(),
                    Err(_) => false,
                };
                if recorded {
                    state.machine.handle(
                        rt.now_ms(),
                        CallInput::Recording {
                            id: call_id.to_string(),
                        },
                    );
                } else {
                    warn!(call = %call_id, "recording unavailable; bridging unrecorded");
                    let _ = state.media.bridge(None).await;
                }
                metrics::counter!("callgrid_calls_answered_total", "tenant" => state.tenant.to_string()).increment(1);
            }
            CallOutput::HangupCustomer => state.customer.bye(rt),
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
                    write_cdr(rt, cdr);
                }
                myself.stop(None);
                return;
            }
        }
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

fn write_cdr(rt: &Arc<Runtime>, cdr: Box<Cdr>) {
    let rt = Arc::clone(rt);
    tokio::spawn(async move {
        // Idempotent by call id in the state machine, so retrying is safe (I2).
        for attempt in 0..10u32 {
            match rt
                .cluster
                .write(model::Command::RecordCdr { cdr: cdr.clone() })
                .await
            {
                Ok(_) => return,
                Err(error) => {
                    warn!(%error, attempt, call = %cdr.call_id, "CDR write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200u64 << attempt.min(5))).await;
                }
            }
        }
        tracing::error!(call = %cdr.call_id, "CDR could not be written");
    });
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
