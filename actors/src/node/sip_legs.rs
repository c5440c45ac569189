//! The two legs of a B2BUA call, as SIP: the customer leg (we are the UAS: the carrier's
//! INVITE) and the agent leg (we are the UAC: our INVITE to the agent's phone). Each wraps
//! the leg's `sip::dialog::Dialog` and builds the requests and responses the call actor needs;
//! the endpoint sends them.

use std::net::SocketAddr;

use ractor::ActorRef;
use tracing::warn;

use media::sdp::MediaDescription;
use model::{Binding, CallId, ExtensionId};
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
    key: TransactionKey,
    invite: Request,
    source: SocketAddr,
    transport: Transport,
    local_tag: String,
    dialog: Option<Dialog>,
    pub local_sdp: Option<String>,
    ok_bytes: Option<Vec<u8>>,
    acked: bool,
    pub closed: bool,
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
            key,
            invite,
            source,
            transport,
            local_tag: sip::message::new_tag(&mut rand::thread_rng()),
            dialog: None,
            local_sdp: None,
            ok_bytes: None,
            acked: false,
            closed: false,
        }
    }

    pub fn reject(&mut self, rt: &Runtime, status: u16, reason: &str) {
        let response =
            Response::for_request(&self.invite, status, reason).with_to_tag(&self.local_tag);
        rt.endpoint().respond(self.key.clone(), response);
        self.closed = true;
    }

    /// Answers with our SDP: 200 OK with a To tag and our Contact (RFC 3261 13.3.1.4).
    pub fn answer(&mut self, rt: &Runtime, description: &MediaDescription) {
        let sdp = sdp_text(description);
        let mut response =
            Response::for_request(&self.invite, 200, "OK").with_to_tag(&self.local_tag);
        response
            .headers
            .set("Contact", format!("<{}>", contact_uri(rt)));
        let response = with_sdp(response, &sdp);
        self.dialog = Dialog::uas_from_invite(&self.invite, &self.local_tag, &contact_uri(rt)).ok();
        self.ok_bytes = Some(response.to_bytes());
        self.local_sdp = Some(sdp);
        rt.endpoint().respond(self.key.clone(), response);
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
    answered: bool,
    pub final_failure: bool,
    pub closed: bool,
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
        let mut rng = rand::thread_rng();
        let sip_call_id = sip::message::new_call_id(&mut rng, &rt.config.sip_addr.ip().to_string());
        let branch = sip::message::new_branch(&mut rng);
        let mut from = NameAddr::new(Uri::sip(Some(caller), domain, None));
        from.set_tag(&sip::message::new_tag(&mut rng));
        let to = NameAddr::new(Uri::sip(Some(extension.as_str()), domain, None));
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
            .send_request(invite.clone(), binding.source, transport, Some(owner));
        Some(AgentLeg {
            sip_call_id,
            invite,
            dest: binding.source,
            transport,
            dialog: None,
            local_sdp: Some(sdp),
            answered: false,
            final_failure: false,
            closed: false,
        })
    }

    /// A 2xx to our INVITE: ACK it (every copy: retransmissions need their ACK too) and
    /// set up the dialog. True for the first 2xx.
    pub fn on_2xx(&mut self, rt: &Runtime, response: &Response) -> bool {
        let first = !self.answered;
        if first {
            self.answered = true;
            match Dialog::uac_from_response(&self.invite, response) {
                Ok(dialog) => self.dialog = Some(dialog),
                Err(error) => warn!(?error, "agent 2xx does not make a dialog"),
            }
        }
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
        first
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
        let mut cancel = Request::new(Method::Cancel, self.invite.uri.clone());
        for name in ["Via", "From", "To", "Call-ID"] {
            if let Some(value) = self.invite.headers.get(name) {
                cancel.headers.push(name, value.to_string());
            }
        }
        cancel.headers.push("Max-Forwards", "70");
        cancel.headers.push("CSeq", "1 CANCEL");
        rt.endpoint()
            .send_request(cancel, self.dest, self.transport, None);
    }
}
