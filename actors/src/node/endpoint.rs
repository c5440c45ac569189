//! The SIP endpoint of a node: the thin driver around `sip::transaction::TransactionLayer`.
//! One tokio task owns the transport and the transaction layer; it answers what needs no
//! call (OPTIONS, bad messages, REGISTER through the registrar), admits new INVITEs from
//! trunks and spawns a CallActor for each, and routes everything inside a dialog to the call
//! actor that owns its Call-ID. Call actors talk back through `EndpointHandle`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use model::routing::{resolve, RouteError};
use sip::message::{Method, Request, Response};
use sip::transaction::{TransactionKey, TransactionLayer, TransactionOutput, Transport};
use sip::transport::{Inbound, SipTransport};
use sip::SipMessage;

use super::api::NodeError;
use super::call_actor::{CallActor, CallArgs, CallMsg, SipEvent};
use super::sip_legs::CustomerLeg;
use super::Runtime;
use crate::call::CallSetup;

pub enum EndpointCmd {
    SendRequest {
        request: Request,
        dest: SocketAddr,
        transport: Transport,
        owner: Option<ActorRef<CallMsg>>,
    },
    Respond {
        key: TransactionKey,
        response: Response,
    },
    Transmit {
        dest: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
    },
    Bind {
        sip_call_id: String,
        owner: ActorRef<CallMsg>,
    },
    Unbind {
        sip_call_id: String,
    },
}

/// How call actors and the registrar reach the endpoint. Sends never block: the endpoint
/// task drains its mailbox as fast as the transport takes bytes.
#[derive(Clone)]
pub struct EndpointHandle {
    tx: mpsc::UnboundedSender<EndpointCmd>,
    pub local: SocketAddr,
}

impl EndpointHandle {
    pub fn send_request(
        &self,
        request: Request,
        dest: SocketAddr,
        transport: Transport,
        owner: Option<ActorRef<CallMsg>>,
    ) {
        let _ = self.tx.send(EndpointCmd::SendRequest {
            request,
            dest,
            transport,
            owner,
        });
    }
    pub fn respond(&self, key: TransactionKey, response: Response) {
        let _ = self.tx.send(EndpointCmd::Respond { key, response });
    }
    pub fn transmit(&self, dest: SocketAddr, transport: Transport, bytes: Vec<u8>) {
        let _ = self.tx.send(EndpointCmd::Transmit {
            dest,
            transport,
            bytes,
        });
    }
    pub fn bind(&self, sip_call_id: &str, owner: ActorRef<CallMsg>) {
        let _ = self.tx.send(EndpointCmd::Bind {
            sip_call_id: sip_call_id.to_string(),
            owner,
        });
    }
    pub fn unbind(&self, sip_call_id: &str) {
        let _ = self.tx.send(EndpointCmd::Unbind {
            sip_call_id: sip_call_id.to_string(),
        });
    }
}

pub async fn start(rt: Arc<Runtime>) -> Result<EndpointHandle, NodeError> {
    let (transport, inbound) = SipTransport::bind(rt.config.sip_addr).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = EndpointHandle {
        tx,
        local: rt.config.sip_addr,
    };
    let endpoint = Endpoint {
        rt,
        transport,
        layer: TransactionLayer::new(),
        dialogs: HashMap::new(),
        client_keys: HashMap::new(),
        handle: handle.clone(),
    };
    tokio::spawn(endpoint.run(inbound, rx));
    Ok(handle)
}

struct Endpoint {
    rt: Arc<Runtime>,
    transport: SipTransport,
    layer: TransactionLayer,
    /// SIP Call-ID -> the call actor owning that dialog (a B2BUA call has two).
    dialogs: HashMap<String, ActorRef<CallMsg>>,
    /// Our client transactions -> (Call-ID, method), to route their timeouts.
    client_keys: HashMap<TransactionKey, (String, Method)>,
    handle: EndpointHandle,
}

impl Endpoint {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::UnboundedReceiver<EndpointCmd>,
    ) {
        info!(addr = %self.rt.config.sip_addr, "SIP endpoint listening (UDP and TCP)");
        loop {
            let timeout = self.layer.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = inbound.recv() => match packet {
                    Some(packet) => self.on_inbound(packet),
                    None => return,
                },
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                () = sleep => self.layer.handle_timeout(std::time::Instant::now()),
            }
            self.drain().await;
        }
    }

    fn on_inbound(&mut self, packet: Inbound) {
        match packet.result {
            Ok(message) => self.layer.handle_incoming(
                std::time::Instant::now(),
                message,
                packet.source,
                packet.transport,
            ),
            Err((error, bytes)) => {
                // A bad message is a normal event: count it, answer 400 when we can.
                metrics::counter!("callgrid_sip_bad_messages_total").increment(1);
                warn!(source = %packet.source, %error, "malformed SIP message");
                if let Some(response) = sip::parse::error_response(&bytes, &error) {
                    self.handle
                        .transmit(packet.source, packet.transport, response.to_bytes());
                }
            }
        }
    }

    fn on_command(&mut self, command: EndpointCmd) {
        let now = std::time::Instant::now();
        match command {
            EndpointCmd::SendRequest {
                request,
                dest,
                transport,
                owner,
            } => {
                let call_id = request.call_id().unwrap_or_default().to_string();
                let method = request.method.clone();
                if let Some(owner) = owner {
                    self.dialogs.insert(call_id.clone(), owner);
                }
                if method == Method::Ack {
                    // ACK to a 2xx is its own transaction-less request (RFC 3261 17.1.1.3).
                    let _ = self.handle.tx.send(EndpointCmd::Transmit {
                        dest,
                        transport,
                        bytes: request.to_bytes(),
                    });
                    return;
                }
                let key = self.layer.send_request(now, request, dest, transport);
                self.client_keys.insert(key, (call_id, method));
            }
            EndpointCmd::Respond { key, response } => self.respond(&key, response),
            EndpointCmd::Transmit {
                dest,
                transport,
                bytes,
            } => {
                let t = self.transport.clone();
                tokio::spawn(async move {
                    if let Err(error) = t.send(dest, transport, bytes).await {
                        debug!(%dest, %error, "SIP send failed");
                    }
                });
            }
            EndpointCmd::Bind { sip_call_id, owner } => {
                self.dialogs.insert(sip_call_id, owner);
            }
            EndpointCmd::Unbind { sip_call_id } => {
                self.dialogs.remove(&sip_call_id);
                self.client_keys.retain(|_, (c, _)| *c != sip_call_id);
            }
        }
    }

    fn respond(&mut self, key: &TransactionKey, response: Response) {
        if let Err(error) = self
            .layer
            .send_response(std::time::Instant::now(), key, response)
        {
            // The transaction is gone (timed out, or the peer gave up): nothing to answer.
            debug!(?error, "response for a finished transaction dropped");
        }
    }

    async fn drain(&mut self) {
        while let Some(output) = self.layer.poll_output() {
            match output {
                TransactionOutput::Transmit {
                    dest,
                    transport,
                    bytes,
                } => {
                    if let Err(error) = self.transport.send(dest, transport, bytes).await {
                        debug!(%dest, %error, "SIP send failed");
                    }
                }
                TransactionOutput::IncomingRequest {
                    key,
                    request,
                    source,
                    transport,
                } => self.on_request(key, request, source, transport),
                TransactionOutput::IncomingAck { request, .. } => {
                    if let Some(owner) = request.call_id().and_then(|c| self.dialogs.get(c)) {
                        let _ = owner.cast(CallMsg::Sip(Box::new(SipEvent::Ack { request })));
                    }
                }
                TransactionOutput::Cancelled {
                    invite_key,
                    cancel_key,
                    request,
                    ..
                } => {
                    // RFC 3261 9.2: 200 to the CANCEL, 487 to the INVITE, if still pending.
                    self.respond(&cancel_key, Response::for_request(&request, 200, "OK"));
                    let _ = invite_key;
                    if let Some(owner) = request.call_id().and_then(|c| self.dialogs.get(c)) {
                        let _ = owner.cast(CallMsg::Sip(Box::new(SipEvent::Cancel)));
                    }
                }
                TransactionOutput::IncomingResponse { response, .. }
                | TransactionOutput::StrayResponse { response, .. } => {
                    if let Some(owner) = response.call_id().and_then(|c| self.dialogs.get(c)) {
                        let _ = owner.cast(CallMsg::Sip(Box::new(SipEvent::Response { response })));
                    }
                }
                TransactionOutput::Timeout { key }
                | TransactionOutput::TransportError { key, .. } => {
                    if let Some((call_id, method)) = self.client_keys.remove(&key) {
                        if let Some(owner) = self.dialogs.get(&call_id) {
                            let _ = owner.cast(CallMsg::Sip(Box::new(SipEvent::Timeout {
                                sip_call_id: call_id,
                                method,
                            })));
                        }
                    }
                }
            }
        }
    }

    fn on_request(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    ) {
        let call_id = request.call_id().unwrap_or_default().to_string();
        let in_dialog = request
            .to()
            .and_then(|to| to.tag().map(str::to_string))
            .is_some();
        if let Some(owner) = self.dialogs.get(&call_id) {
            let _ = owner.cast(CallMsg::Sip(Box::new(SipEvent::Request {
                key,
                request,
                source,
                transport,
            })));
            return;
        }
        match request.method {
            Method::Register => {
                let rt = Arc::clone(&self.rt);
                let handle = self.handle.clone();
                tokio::spawn(async move {
                    let response = super::registrar::handle(&rt, &request, source, transport).await;
                    handle.respond(key, response);
                });
            }
            Method::Options => {
                let mut response = Response::for_request(&request, 200, "OK");
                response.headers.set(
                    "Allow",
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE",
                );
                response.headers.set("Accept", "application/sdp");
                self.respond(&key, response);
            }
            Method::Invite if !in_dialog => self.on_new_invite(key, request, source, transport),
            _ => {
                // RFC 3261 12.2.2: a request for a dialog we do not know.
                self.respond(
                    &key,
                    Response::for_request(&request, 481, "Call/Transaction Does Not Exist"),
                );
            }
        }
    }

    /// A new call: admit, check the trunk, route by dialled number, then hand it to a
    /// CallActor (R2.1, R2.2, R2.3).
    fn on_new_invite(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    ) {
        let reply = |endpoint: &mut Endpoint, status: u16, reason: &str| {
            endpoint.respond(&key, Response::for_request(&request, status, reason));
        };
        let me = self.rt.node_id();
        if self.rt.cluster.read(|s| s.is_down(me)) {
            // Declared down and not yet rejoined: calls taken now could not be checkpointed.
            let mut response = Response::for_request(&request, 503, "Service Unavailable");
            response.headers.set("Retry-After", "1");
            metrics::counter!("callgrid_calls_rejected_total", "reason" => "node_down")
                .increment(1);
            return self.respond(&key, response);
        }
        if let Err(refusal) = self.rt.admit() {
            // Past this node's headroom: the carrier tries another node (DESIGN.md "Overload").
            let mut response = Response::for_request(&request, 503, "Service Unavailable");
            response
                .headers
                .set("Retry-After", refusal.retry_after_secs().to_string());
            metrics::counter!("callgrid_calls_rejected_total", "reason" => refusal.label())
                .increment(1);
            debug!(?refusal, load = ?self.rt.load(), "new call refused: overload");
            return self.respond(&key, response);
        }
        let state = &self.rt.cluster;
        let Some(trunk) = state.read(|s| s.trunk_for(source.ip()).map(|t| t.id.clone())) else {
            metrics::counter!("callgrid_calls_rejected_total", "reason" => "not_a_trunk")
                .increment(1);
            return reply(self, 403, "Forbidden");
        };
        let dialled = request.uri.user.clone().unwrap_or_default();
        let route = match state.read(|s| resolve(s, &dialled)) {
            Ok(route) => route,
            Err(RouteError::NoRoute) => return reply(self, 404, "Not Found"),
            Err(RouteError::Ambiguous) => return reply(self, 484, "Address Incomplete"),
        };
        let offer = std::str::from_utf8(&request.body)
            .ok()
            .and_then(|s| media::sdp::parse_sdp(s).ok());
        let Some(offer) = offer else {
            // We answer with an offer-less INVITE nowhere yet: late offer is not supported.
            return reply(self, 488, "Not Acceptable Here");
        };
        let caller = request
            .from()
            .and_then(|f| f.uri.user.clone())
            .unwrap_or_else(|| "anonymous".into());
        let (flows, queues, profile) = state.read(|s| {
            let (flows, queues) = self.rt.tenant_configs.flows_and_queues(s, &route);
            (
                flows,
                queues,
                crate::call::caller_profile(s, &route, &caller),
            )
        });
        let setup = CallSetup {
            call_id: self.rt.new_call_id(),
            entry_node: self.rt.node_id(),
            route,
            caller,
            dialled,
            trunk: Some(trunk),
            started_at_ms: self.rt.now_ms(),
            flows,
            queues,
            profile,
        };
        let customer = CustomerLeg::new(key, request, source, transport);
        let rt = Arc::clone(&self.rt);
        // The actor binds its Call-ID itself before it answers, so the ACK finds it.
        tokio::spawn(async move {
            let actor = CallActor { runtime: rt };
            if let Err(error) = Actor::spawn(
                None,
                actor,
                CallArgs::New {
                    setup: Box::new(setup),
                    customer: Box::new(customer),
                    offer,
                },
            )
            .await
            {
                warn!(%error, "call actor failed to start");
            }
        });
    }
}
