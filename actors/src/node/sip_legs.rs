//! The two legs of a B2BUA call, as SIP: the customer leg (we are the UAS: the carrier's
//! INVITE) and the agent leg (we are the UAC: our INVITE to the agent's phone). Each wraps
//! the leg's `sip::dialog::Dialog` and builds the requests and responses the call actor needs;
//! the endpoint sends them.

use std::net::SocketAddr;

use ractor::ActorRef;
use tracing::warn;

use media::sdp::MediaDescription;
use model::{Binding, CallId, ExtensionId, LegCheckpoint, PendingInvite};
use sip::dialog::Dialog;
use sip::message::{Method, Request, Response};
use sip::name_addr::NameAddr;
use sip::transaction::{TransactionKey, Transport};
use sip::uri::Uri;
use sip::via::Via;
use sip::SipMessage;

use super::call_actor::{with_sdp, CallMsg};
use super::Runtime;

fn contact_uri(rt: &Runtime) -> Uri {
    Uri::sip(
        Some("callgrid"),
        &rt.config.sip_addr.ip().to_string(),
        Some(rt.config.sip_addr.port()),
    )
}

fn sdp_text(description: &MediaDescription) -> String {
    media::sdp::build_sdp(rand::random::<u32>().into(), 1, description)
}

/// The carrier side: we answered its INVITE.
pub struct CustomerLeg {
    pub sip_call_id: String,
    /// The carrier's INVITE and its server transaction, until we answer it (None for a leg
    /// rebuilt from a checkpoint).
    pending: Option<(TransactionKey, Request)>,
    source: SocketAddr,
    transport: Transport,
    local_tag: String,
    dialog: Option<Dialog>,
    pub local_sdp: Option<String>,
    /// The carrier's last SDP (the INVITE's offer, or a re-INVITE answer).
    pub remote_sdp: Option<String>,
    ok_bytes: Option<Vec<u8>>,
    /// The 2xx built by `prepare_answer`, until `send_answer`.
    answer: Option<Response>,
    acked: bool,
    pub closed: bool,
    /// CSeq of our outstanding re-INVITE (after a takeover).
    pub reinvite: Option<u32>,
}

impl CustomerLeg {
    pub fn new(
        key: TransactionKey,
        invite: Request,
        source: SocketAddr,
        transport: Transport,
    ) -> Self {
        Self {
            sip_call_id: invite.call_id().unwrap_or_default().to_string(),
            remote_sdp: String::from_utf8(invite.body.clone()).ok(),
            pending: Some((key, invite)),
            source,
            transport,
            local_tag: sip::message::new_tag(&mut rand::thread_rng()),
            dialog: None,
            local_sdp: None,
            ok_bytes: None,
            answer: None,
            acked: false,
            closed: false,
            reinvite: None,
        }
    }

    /// The leg as a new owner rebuilt it from a checkpoint: answered and acknowledged.
    pub fn restore(checkpoint: &LegCheckpoint) -> Option<CustomerLeg> {
        let (dialog, source, transport) = restore_dialog(checkpoint)?;
        Some(CustomerLeg {
            sip_call_id: checkpoint.sip_call_id.clone(),
            pending: None,
            source,
            transport,
            local_tag: checkpoint.local_tag.clone(),
            dialog: Some(dialog),
            local_sdp: None,
            remote_sdp: checkpoint.remote_sdp.clone(),
            ok_bytes: None,
            answer: None,
            acked: true,
            closed: false,
            reinvite: None,
        })
    }

    /// What a new owner needs to resume the leg; None before the dialog exists.
    pub fn checkpoint(&self) -> Option<LegCheckpoint> {
        self.dialog
            .as_ref()
            .map(|d| leg_checkpoint(d, self.source, self.transport, self.remote_sdp.clone()))
    }

    pub fn reject(&mut self, rt: &Runtime, status: u16, reason: &str) {
        if let Some((key, invite)) = &self.pending {
            let response =
                Response::for_request(invite, status, reason).with_to_tag(&self.local_tag);
            rt.endpoint().respond(key.clone(), response);
        }
        self.closed = true;
    }

    /// Builds our answer: 200 OK with our SDP, a To tag and our Contact (RFC 3261
    /// 13.3.1.4), and the dialog it makes; `send_answer` sends it.
    pub fn prepare_answer(&mut self, rt: &Runtime, description: &MediaDescription) {
        let Some((_, invite)) = &self.pending else {
            return;
        };
        let sdp = sdp_text(description);
        let mut response = Response::for_request(invite, 200, "OK").with_to_tag(&self.local_tag);
        response
            .headers
            .set("Contact", format!("<{}>", contact_uri(rt)));
        let response = with_sdp(response, &sdp);
        self.dialog = Dialog::uas_from_invite(invite, &self.local_tag, &contact_uri(rt)).ok();
        self.ok_bytes = Some(response.to_bytes());
        self.local_sdp = Some(sdp);
        self.answer = Some(response);
    }

    pub fn send_answer(&mut self, rt: &Runtime) {
        if let (Some((key, _)), Some(response)) = (&self.pending, self.answer.take()) {
            rt.endpoint().respond(key.clone(), response);
        }
    }

    /// A target refresh from this node (after a takeover): re-INVITE with our SDP and
    /// Contact, so the carrier's media and requests come here (RFC 3261 14).
    pub fn reinvite(
        &mut self,
        rt: &Runtime,
        owner: ActorRef<CallMsg>,
        description: &MediaDescription,
    ) {
        let sdp = sdp_text(description);
        if let Some(cseq) = send_reinvite(
            rt,
            owner,
            &mut self.dialog,
            self.source,
            self.transport,
            &sdp,
        ) {
            self.reinvite = Some(cseq);
            self.local_sdp = Some(sdp);
        }
    }

    /// A 2xx to our re-INVITE: ACK it; true for the first one.
    pub fn on_reinvite_2xx(&mut self, rt: &Runtime, response: &Response) -> bool {
        ack_reinvite(
            rt,
            &mut self.reinvite,
            &mut self.dialog,
            response,
            self.source,
            self.transport,
            &mut self.remote_sdp,
        )
    }

    /// Resends our 2xx if the ACK has not come (UDP only). False once there is nothing to do.
    pub fn retransmit_2xx(&self, rt: &Runtime) -> bool {
        if self.acked || self.closed || self.transport.is_reliable() {
            return false;
        }
        if let Some(bytes) = &self.ok_bytes {
            rt.endpoint()
                .transmit(self.source, self.transport, bytes.clone());
        }
        true
    }

    /// Marks the 2xx acknowledged; true the first time.
    pub fn acked(&mut self) -> bool {
        !std::mem::replace(&mut self.acked, true)
    }

    pub fn bye(&mut self, rt: &Runtime) {
        // Requests go where the INVITE came from: the carrier's signalling address
        // (symmetric signalling, robust behind NAT and the same as the remote target here).
        send_bye(
            rt,
            &mut self.dialog,
            &mut self.closed,
            self.source,
            self.transport,
        );
    }
}

/// Sends BYE in a dialog once; later calls do nothing.
fn send_bye(
    rt: &Runtime,
    dialog: &mut Option<Dialog>,
    closed: &mut bool,
    dest: SocketAddr,
    transport: Transport,
) {
    if std::mem::replace(closed, true) {
        return;
    }
    let Some(dialog) = dialog.as_mut() else {
        return;
    };
    let branch = sip::message::new_branch(&mut rand::thread_rng());
    let bye = dialog.new_request(
        Method::Bye,
        &contact_uri(rt),
        &rt.config.sip_addr.to_string(),
        &branch,
    );
    rt.endpoint().send_request(bye, dest, transport, None);
}

/// The agent side: our INVITE to the agent's registered phone.
pub struct AgentLeg {
    pub sip_call_id: String,
    invite: Request,
    dest: SocketAddr,
    transport: Transport,
    dialog: Option<Dialog>,
    pub local_sdp: Option<String>,
    /// The phone's SDP answer.
    pub remote_sdp: Option<String>,
    answered: bool,
    pub final_failure: bool,
    pub closed: bool,
    /// CSeq of our outstanding re-INVITE (after a takeover).
    pub reinvite: Option<u32>,
}

impl AgentLeg {
    /// Builds and sends the INVITE to the agent's phone at its binding.
    #[allow(clippy::too_many_arguments)] // One call site; a struct would only rename these.
    pub fn invite(
        rt: &Runtime,
        owner: ActorRef<CallMsg>,
        binding: &Binding,
        extension: &ExtensionId,
        domain: &str,
        caller: &str,
        call: &CallId,
        offer: &MediaDescription,
    ) -> Option<AgentLeg> {
        let target = Uri::parse(&binding.contact).ok()?;
        let transport = if binding.transport == "tcp" {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let from = NameAddr::new(Uri::sip(Some(caller), domain, None));
        let to = NameAddr::new(Uri::sip(Some(extension.as_str()), domain, None));
        Some(Self::send_invite(
            rt,
            owner,
            target,
            binding.source,
            transport,
            from,
            to,
            call,
            offer,
        ))
    }

    /// R3.11: our INVITE to `number` through a carrier's `gateway` (a callback); the caller
    /// id is the access code the customer dialled.
    #[allow(clippy::too_many_arguments)] // Like `invite`.
    pub fn invite_number(
        rt: &Runtime,
        owner: ActorRef<CallMsg>,
        number: &str,
        gateway: SocketAddr,
        caller_id: &str,
        call: &CallId,
        offer: &MediaDescription,
    ) -> AgentLeg {
        let host = gateway.ip().to_string();
        let target = Uri::sip(Some(number), &host, Some(gateway.port()));
        let local = rt.config.sip_addr.ip().to_string();
        let from = NameAddr::new(Uri::sip(Some(caller_id), &local, None));
        let to = NameAddr::new(Uri::sip(Some(number), &host, None));
        Self::send_invite(
            rt,
            owner,
            target,
            gateway,
            Transport::Udp,
            from,
            to,
            call,
            offer,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_invite(
        rt: &Runtime,
        owner: ActorRef<CallMsg>,
        target: Uri,
        dest: SocketAddr,
        transport: Transport,
        mut from: NameAddr,
        to: NameAddr,
        call: &CallId,
        offer: &MediaDescription,
    ) -> AgentLeg {
        let mut rng = rand::thread_rng();
        let sip_call_id = sip::message::new_call_id(&mut rng, &rt.config.sip_addr.ip().to_string());
        let branch = sip::message::new_branch(&mut rng);
        from.set_tag(&sip::message::new_tag(&mut rng));
        let sdp = sdp_text(offer);
        let mut invite = Request::new(Method::Invite, target);
        let via = Via::new(
            transport.as_str(),
            &rt.config.sip_addr.ip().to_string(),
            Some(rt.config.sip_addr.port()),
            &branch,
        );
        invite.headers.push("Via", via.to_string());
        invite.headers.push("Max-Forwards", "70");
        invite.headers.push("From", from.to_string());
        invite.headers.push("To", to.to_string());
        invite.headers.push("Call-ID", sip_call_id.clone());
        invite.headers.push("CSeq", "1 INVITE");
        invite
            .headers
            .push("Contact", format!("<{}>", contact_uri(rt)));
        // Call-associated data for the agent desktop (R4.2).
        invite.headers.push("X-Callgrid-Call", call.to_string());
        invite.headers.push("Content-Type", "application/sdp");
        invite.body = sdp.clone().into_bytes();
        rt.endpoint()
            .send_request(invite.clone(), dest, transport, Some(owner));
        AgentLeg {
            sip_call_id,
            invite,
            dest,
            transport,
            dialog: None,
            local_sdp: Some(sdp),
            remote_sdp: None,
            answered: false,
            final_failure: false,
            closed: false,
            reinvite: None,
        }
    }

    /// The answered leg as a new owner rebuilt it from a checkpoint.
    pub fn restore(checkpoint: &LegCheckpoint) -> Option<AgentLeg> {
        let (dialog, dest, transport) = restore_dialog(checkpoint)?;
        // Only CANCEL reads `invite`, and an answered leg is never cancelled.
        let invite = Request::new(Method::Invite, dialog.remote_target.clone());
        Some(AgentLeg {
            sip_call_id: checkpoint.sip_call_id.clone(),
            invite,
            dest,
            transport,
            dialog: Some(dialog),
            local_sdp: None,
            remote_sdp: checkpoint.remote_sdp.clone(),
            answered: true,
            final_failure: false,
            closed: false,
            reinvite: None,
        })
    }

    /// The answered leg's dialog, for a checkpoint.
    pub fn checkpoint(&self) -> Option<LegCheckpoint> {
        self.dialog
            .as_ref()
            .map(|d| leg_checkpoint(d, self.dest, self.transport, self.remote_sdp.clone()))
    }

    /// The INVITE while it is still ringing, so a new owner can CANCEL it.
    pub fn pending_invite(&self) -> Option<PendingInvite> {
        (!self.answered && !self.closed && !self.final_failure).then(|| PendingInvite {
            sip_call_id: self.sip_call_id.clone(),
            invite: String::from_utf8_lossy(&self.invite.to_bytes()).into_owned(),
            dest: self.dest.to_string(),
            transport: self.transport.as_str().to_string(),
        })
    }

    /// CANCELs an INVITE another node sent and can no longer withdraw (it died while the
    /// phone rang). The phone matches the CANCEL to its transaction by the Via branch.
    pub fn cancel_stale(rt: &Runtime, pending: &PendingInvite) {
        let Ok(sip::Message::Request(invite)) = sip::parse_message(pending.invite.as_bytes())
        else {
            warn!("checkpointed INVITE does not parse; cannot CANCEL it");
            return;
        };
        let Ok(dest) = pending.dest.parse() else {
            return;
        };
        let cancel = cancel_for(&invite);
        rt.endpoint()
            .send_request(cancel, dest, parse_transport(&pending.transport), None);
    }

    pub fn reinvite(
        &mut self,
        rt: &Runtime,
        owner: ActorRef<CallMsg>,
        description: &MediaDescription,
    ) {
        let sdp = sdp_text(description);
        if let Some(cseq) =
            send_reinvite(rt, owner, &mut self.dialog, self.dest, self.transport, &sdp)
        {
            self.reinvite = Some(cseq);
            self.local_sdp = Some(sdp);
        }
    }

    pub fn on_reinvite_2xx(&mut self, rt: &Runtime, response: &Response) -> bool {
        ack_reinvite(
            rt,
            &mut self.reinvite,
            &mut self.dialog,
            response,
            self.dest,
            self.transport,
            &mut self.remote_sdp,
        )
    }

    /// A 2xx to our INVITE: ACK it (every copy: retransmissions need their ACK too) and
    /// set up the dialog. True for the first 2xx.
    /// A 2xx to our INVITE: set up the dialog (first one) and ACK it — every retransmission
    /// at once, the first only when `ack_first` (the caller may ACK it later with `ack`, once
    /// the call's Talking checkpoint is committed). True for the first 2xx.
    pub fn on_2xx(&mut self, rt: &Runtime, response: &Response, ack_first: bool) -> bool {
        let first = !self.answered;
        if first {
            self.answered = true;
            match Dialog::uac_from_response(&self.invite, response) {
                Ok(dialog) => self.dialog = Some(dialog),
                Err(error) => warn!(?error, "agent 2xx does not make a dialog"),
            }
            if !response.body.is_empty() {
                self.remote_sdp = String::from_utf8(response.body.clone()).ok();
            }
        }
        if !first || ack_first {
            self.ack(rt);
        }
        first
    }

    /// ACKs the 2xx to our INVITE (RFC 3261 13.2.2.4).
    pub fn ack(&self, rt: &Runtime) {
        if let Some(dialog) = &self.dialog {
            let branch = sip::message::new_branch(&mut rand::thread_rng());
            let ack = dialog.ack_for_2xx(
                1,
                &contact_uri(rt),
                &rt.config.sip_addr.to_string(),
                &branch,
            );
            rt.endpoint()
                .send_request(ack, self.dest, self.transport, None);
        }
    }

    pub fn bye(&mut self, rt: &Runtime) {
        send_bye(
            rt,
            &mut self.dialog,
            &mut self.closed,
            self.dest,
            self.transport,
        );
    }

    /// Withdraws the INVITE: CANCEL while it is pending (RFC 3261 9.1), BYE once answered.
    pub fn cancel_or_bye(&mut self, rt: &Runtime) {
        if self.answered {
            return self.bye(rt);
        }
        if self.final_failure || std::mem::replace(&mut self.closed, true) {
            return;
        }
        let cancel = cancel_for(&self.invite);
        rt.endpoint()
            .send_request(cancel, self.dest, self.transport, None);
    }
}

/// RFC 3261 9.1: a CANCEL copies the INVITE's Request-URI, top Via, From, To and Call-ID.
fn cancel_for(invite: &Request) -> Request {
    let mut cancel = Request::new(Method::Cancel, invite.uri.clone());
    for name in ["Via", "From", "To", "Call-ID"] {
        if let Some(value) = invite.headers.get(name) {
            cancel.headers.push(name, value.to_string());
        }
    }
    cancel.headers.push("Max-Forwards", "70");
    let seq = invite.cseq().map_or(1, |(n, _)| n);
    cancel.headers.push("CSeq", format!("{seq} CANCEL"));
    cancel
}

fn parse_transport(name: &str) -> Transport {
    if name.eq_ignore_ascii_case("tcp") {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

fn leg_checkpoint(
    d: &Dialog,
    peer: SocketAddr,
    transport: Transport,
    remote_sdp: Option<String>,
) -> LegCheckpoint {
    LegCheckpoint {
        sip_call_id: d.call_id.clone(),
        local_tag: d.local_tag.clone(),
        remote_tag: d.remote_tag.clone(),
        local_uri: d.local_uri.to_string(),
        remote_uri: d.remote_uri.to_string(),
        local_seq: d.local_seq,
        remote_seq: d.remote_seq,
        remote_target: d.remote_target.to_string(),
        route_set: d.route_set.clone(),
        peer: peer.to_string(),
        transport: transport.as_str().to_string(),
        remote_sdp,
    }
}

fn restore_dialog(c: &LegCheckpoint) -> Option<(Dialog, SocketAddr, Transport)> {
    let parse = || -> Result<Dialog, String> {
        Ok(Dialog {
            call_id: c.sip_call_id.clone(),
            local_tag: c.local_tag.clone(),
            remote_tag: c.remote_tag.clone(),
            local_uri: NameAddr::parse(&c.local_uri).map_err(|e| format!("{e:?}"))?,
            remote_uri: NameAddr::parse(&c.remote_uri).map_err(|e| format!("{e:?}"))?,
            local_seq: c.local_seq,
            remote_seq: c.remote_seq,
            remote_target: Uri::parse(&c.remote_target).map_err(|e| format!("{e:?}"))?,
            route_set: c.route_set.clone(),
            secure: false,
            local_target: Uri::sip(None, "invalid", None),
        })
    };
    match (parse(), c.peer.parse()) {
        (Ok(dialog), Ok(peer)) => Some((dialog, peer, parse_transport(&c.transport))),
        (dialog, peer) => {
            warn!(call = %c.sip_call_id, ?peer, ok = dialog.is_ok(), "checkpointed dialog unusable");
            None
        }
    }
}

/// Sends a re-INVITE with `sdp` in the dialog; returns its CSeq.
fn send_reinvite(
    rt: &Runtime,
    owner: ActorRef<CallMsg>,
    dialog: &mut Option<Dialog>,
    dest: SocketAddr,
    transport: Transport,
    sdp: &str,
) -> Option<u32> {
    let dialog = dialog.as_mut()?;
    let branch = sip::message::new_branch(&mut rand::thread_rng());
    let mut invite = dialog.new_request(
        Method::Invite,
        &contact_uri(rt),
        &rt.config.sip_addr.to_string(),
        &branch,
    );
    invite.headers.push("Content-Type", "application/sdp");
    invite.body = sdp.as_bytes().to_vec();
    let cseq = dialog.local_seq;
    rt.endpoint()
        .send_request(invite, dest, transport, Some(owner));
    Some(cseq)
}

/// ACKs a 2xx to our re-INVITE (every copy); true for the first. Takes the 2xx's SDP as the
/// peer's new description.
fn ack_reinvite(
    rt: &Runtime,
    pending: &mut Option<u32>,
    dialog: &mut Option<Dialog>,
    response: &Response,
    dest: SocketAddr,
    transport: Transport,
    remote_sdp: &mut Option<String>,
) -> bool {
    let Some(dialog) = dialog.as_mut() else {
        return false;
    };
    let Some((cseq, _)) = response.cseq() else {
        return false;
    };
    let branch = sip::message::new_branch(&mut rand::thread_rng());
    let ack = dialog.ack_for_2xx(
        cseq,
        &contact_uri(rt),
        &rt.config.sip_addr.to_string(),
        &branch,
    );
    rt.endpoint().send_request(ack, dest, transport, None);
    if *pending != Some(cseq) {
        return false;
    }
    *pending = None;
    // RFC 3261 12.2.1.2: a 2xx to a target refresh updates the remote target.
    if let Some(contact) = response.contact() {
        dialog.remote_target = contact.uri;
    }
    if !response.body.is_empty() {
        *remote_sdp = String::from_utf8(response.body.clone()).ok();
    }
    true
}
