//! A synthetic agent softphone (UAS) on our own SIP stack: it registers its extension with
//! digest authentication (SHA-256 when offered, RFC 8760), re-registers before expiry,
//! answers every INVITE with 180 then 200 + SDP, plays a tone and counts incoming RTP, and
//! hangs up after a talk time drawn from a range, or answers the far end's BYE.
//!
//! One tokio task per phone; it drives a [`Ua`] and keeps at most one call (an agent has
//! one call at a time, DESIGN.md I1); a second INVITE gets 486.
//!
//! In an answered call it accepts re-INVITEs (a surviving node taking the call over, see
//! [`super::reinvite`]): 200 with the same SDP, remote target and RTP moved to the new node,
//! the BYE sent there. Each call's report names the caller number and the cluster's call id
//! (`X-Callgrid-Call`) so a drill can pair it with the caller's side, and carries the media
//! measurements ([`MediaReport`]).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use sip::dialog::Dialog;
use sip::digest::{authorize, Algorithm, Challenge};
use sip::message::{new_branch, new_call_id, new_tag, Method, Request, Response};
use sip::name_addr::NameAddr;
use sip::transaction::{Retransmit2xx, Retransmit2xxOutput, TransactionKey, Transport};
use sip::uri::Uri;
use sip::SipMessage;

use super::media::{local_description, negotiate, sdp_body, Audio, MediaReport};
use super::reinvite::{has_to_tag, in_dialog, ok_with_sdp, Reinvite, Reinvites};
use super::ua::{target_addr, Ua, UaEvent};

/// Registration lifetime we ask for; the registrar's minimum is 60 s.
pub const REGISTER_EXPIRES_SECS: u32 = 300;
/// How long a BYE may take before the call is considered over anyway.
const BYE_WAIT: Duration = Duration::from_secs(5);
/// How often a BYE is sent again to a node that took the call over while it was out.
const MAX_BYE_RETARGETS: u32 = 3;
/// The header in which the cluster names its call on the agent leg (R4.2).
pub const CLUSTER_CALL_HEADER: &str = "X-Callgrid-Call";

#[derive(Debug, Clone)]
pub struct PhoneConfig {
    pub tenant: String,
    pub domain: String,
    pub extension: String,
    pub password: String,
    /// The node we register with.
    pub registrar: SocketAddr,
    pub bind_ip: IpAddr,
    /// Time between 180 and 200.
    pub ring_time: Duration,
    /// The agent talks for a random time in this range, then hangs up.
    pub talk_time: Range<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneEvent {
    Registered,
    RegisterFailed {
        status: u16,
    },
    Ringing {
        call: String,
        /// The caller number (the INVITE's From user).
        caller: String,
        /// When the INVITE arrived, in Unix microseconds (benches line it up with the
        /// carrier's send time).
        at_unix_us: u64,
    },
    Answered {
        call: String,
        /// The caller number (the INVITE's From user, which the cluster passes through).
        caller: String,
        /// The cluster's call id, from `X-Callgrid-Call`.
        cluster_call: Option<String>,
    },
    /// A node took the call over: its re-INVITE was accepted, the media moved to it.
    Refreshed {
        call: String,
    },
    Ended {
        call: String,
        talk_ms: u64,
        rtp_in: u64,
        rtp_out: u64,
        hung_up_by_me: bool,
        caller: String,
        cluster_call: Option<String>,
        /// Gaps and refresh counts for drills (`rtp_in`/`rtp_out` repeat its counts).
        media: MediaReport,
    },
}

#[derive(Debug, Clone)]
pub struct PhoneReport {
    pub tenant: String,
    pub extension: String,
    pub event: PhoneEvent,
}

/// Starts a phone task; it runs until `shutdown` turns true (hanging up any call first).
pub fn spawn(
    config: PhoneConfig,
    reports: mpsc::UnboundedSender<PhoneReport>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let ua = Ua::bind(config.bind_ip).await?;
        let mut phone = Phone::new(config, ua, reports);
        phone.run(shutdown).await
    })
}

struct Registration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    key: Option<TransactionKey>,
    refresh_at: Instant,
    challenged_once: bool,
}

struct Call {
    invite_key: TransactionKey,
    invite: Request,
    source: SocketAddr,
    dialog: Dialog,
    /// Who is calling and the cluster's name for the call, to pair this leg with the caller.
    caller: String,
    cluster_call: Option<String>,
    /// Our SDP for this call: the answer to the INVITE and, unchanged, to any re-INVITE
    /// (RFC 3264 8: same media, same `o=` version).
    local_sdp: String,
    answer_at: Option<Instant>,
    answered_at: Option<Instant>,
    hangup_at: Option<Instant>,
    retransmit: Option<Retransmit2xx>,
    /// Until the call ends; then `media` holds what it measured.
    audio: Option<Audio>,
    media: Option<MediaReport>,
    reinvites: Reinvites,
    bye: Option<(TransactionKey, Instant)>,
    bye_retargets: u32,
}

impl Call {
    /// Stops the audio (the session ends when we send or receive the BYE, RFC 3261 15)
    /// and keeps its report.
    fn finish_media(&mut self) {
        if let Some(audio) = self.audio.take() {
            self.media = Some(audio.finish(Instant::now()));
        }
    }
}

struct Phone {
    config: PhoneConfig,
    ua: Ua,
    reports: mpsc::UnboundedSender<PhoneReport>,
    registration: Registration,
    call: Option<Call>,
}

impl Phone {
    fn new(config: PhoneConfig, ua: Ua, reports: mpsc::UnboundedSender<PhoneReport>) -> Phone {
        let mut rng = rand::thread_rng();
        let registration = Registration {
            call_id: new_call_id(&mut rng, &ua.local.ip().to_string()),
            from_tag: new_tag(&mut rng),
            cseq: 0,
            key: None,
            refresh_at: Instant::now(),
            challenged_once: false,
        };
        Phone {
            config,
            ua,
            reports,
            registration,
            call: None,
        }
    }

    fn report(&self, event: PhoneEvent) {
        let _ = self.reports.send(PhoneReport {
            tenant: self.config.tenant.clone(),
            extension: self.config.extension.clone(),
            event,
        });
    }

    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        self.send_register(None);
        // The owner dropping its sender (it gave up) also means shut down, not spin.
        let mut owner_gone = false;
        loop {
            if *shutdown.borrow() || owner_gone {
                self.hang_up().await;
                // Answers given while hanging up must leave before the UA is dropped.
                self.ua.flush().await;
                return Ok(());
            }
            self.on_timers().await;
            let deadline = self.next_deadline();
            tokio::select! {
                event = self.ua.next_event(Some(deadline)) => {
                    if let Some(event) = event {
                        self.on_event(event).await;
                    }
                }
                changed = shutdown.changed() => owner_gone = changed.is_err(),
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.registration.refresh_at;
        if let Some(call) = &self.call {
            let timers = [
                call.answer_at,
                call.hangup_at,
                call.retransmit
                    .as_ref()
                    .and_then(Retransmit2xx::poll_timeout),
                call.bye.as_ref().map(|(_, at)| *at),
                call.reinvites.poll_timeout(),
            ];
            for at in timers.into_iter().flatten() {
                deadline = deadline.min(at);
            }
        }
        deadline
    }

    // ---- registration ----------------------------------------------------------------

    /// RFC 3261 10.2: REGISTER our contact for `sip:<ext>@<domain>`, with credentials when
    /// answering a challenge (RFC 7616 3.4).
    fn send_register(&mut self, authorization: Option<(&Challenge, u32)>) {
        let request = self.register_request(authorization);
        let key = self.ua.send_request(request, self.config.registrar);
        self.registration.key = Some(key);
        // If nothing answers, the transaction times out; try again in a while regardless.
        self.registration.refresh_at = Instant::now() + Duration::from_secs(40);
    }

    fn register_request(&mut self, authorization: Option<(&Challenge, u32)>) -> Request {
        let mut rng = rand::thread_rng();
        self.registration.cseq += 1;
        let registrar_uri = Uri::sip(None, &self.config.domain, None);
        let aor = Uri::sip(Some(&self.config.extension), &self.config.domain, None);
        let mut request = Request::new(Method::Register, registrar_uri.clone());
        let via = format!(
            "SIP/2.0/UDP {};branch={};rport",
            self.ua.via_host_port(),
            new_branch(&mut rng)
        );
        request.headers.push("Via", via);
        request.headers.push("Max-Forwards", "70");
        let mut from = NameAddr::new(aor.clone());
        from.set_tag(&self.registration.from_tag);
        request.headers.push("From", from.to_string());
        request.headers.push("To", NameAddr::new(aor).to_string());
        request
            .headers
            .push("Call-ID", self.registration.call_id.clone());
        request
            .headers
            .push("CSeq", format!("{} REGISTER", self.registration.cseq));
        request.headers.push(
            "Contact",
            format!("<{}>", self.ua.contact(&self.config.extension)),
        );
        request
            .headers
            .push("Expires", REGISTER_EXPIRES_SECS.to_string());
        request.headers.push("User-Agent", "callgrid-traffic");
        if let Some((challenge, nc)) = authorization {
            let cnonce = new_tag(&mut rng);
            let value = authorize(
                challenge,
                "REGISTER",
                &registrar_uri.to_string(),
                &self.config.extension,
                &self.config.password,
                &cnonce,
                nc,
            );
            request.headers.push("Authorization", value);
        }
        request
    }

    fn on_register_response(&mut self, response: &Response) {
        match response.status {
            100..=199 => {}
            200..=299 => {
                self.registration.key = None;
                self.registration.challenged_once = false;
                // Refresh well before expiry (RFC 3261 10.2.4 leaves the margin to the UA).
                let expires = granted_expires(response).unwrap_or(REGISTER_EXPIRES_SECS);
                let refresh =
                    Duration::from_secs(u64::from(expires) * 3 / 4).max(Duration::from_secs(10));
                self.registration.refresh_at = Instant::now() + refresh;
                self.report(PhoneEvent::Registered);
            }
            401 | 407 if !self.registration.challenged_once || is_stale(response) => {
                self.registration.challenged_once = true;
                match pick_challenge(response) {
                    Some(challenge) => self.send_register(Some((&challenge, 1))),
                    None => self.register_failed(response.status),
                }
            }
            status => self.register_failed(status),
        }
    }

    fn register_failed(&mut self, status: u16) {
        self.registration.key = None;
        self.registration.challenged_once = false;
        self.registration.refresh_at = Instant::now() + Duration::from_secs(5);
        self.report(PhoneEvent::RegisterFailed { status });
    }

    // ---- events ----------------------------------------------------------------------

    async fn on_event(&mut self, event: UaEvent) {
        match event {
            UaEvent::Response { key, response } => {
                if self.registration.key.as_ref() == Some(&key) {
                    self.on_register_response(&response);
                } else if self
                    .call
                    .as_ref()
                    .and_then(|c| c.bye.as_ref())
                    .is_some_and(|(k, _)| *k == key)
                    && response.status >= 200
                {
                    self.end_call(true);
                }
            }
            UaEvent::Failed { key } => {
                if self.registration.key.as_ref() == Some(&key) {
                    self.register_failed(408);
                } else if self
                    .call
                    .as_ref()
                    .and_then(|c| c.bye.as_ref())
                    .is_some_and(|(k, _)| *k == key)
                {
                    self.end_call(true);
                }
            }
            UaEvent::Request {
                key,
                request,
                source,
            } => self.on_request(key, request, source).await,
            UaEvent::Ack { request } => {
                let Some(call) = self
                    .call
                    .as_mut()
                    .filter(|c| in_dialog(&c.dialog, &request))
                else {
                    return;
                };
                let cseq = request.cseq().map(|(n, _)| n);
                if cseq == call.invite.cseq().map(|(n, _)| n) {
                    if let Some(retransmit) = call.retransmit.as_mut() {
                        retransmit.handle_ack();
                    }
                } else if let Some(negotiated) = call.reinvites.on_ack(&request) {
                    // The answer to the offer we put in a 200 to an offerless re-INVITE.
                    if let Some(audio) = call.audio.as_mut() {
                        audio.start(negotiated);
                    }
                }
            }
            UaEvent::Cancelled {
                invite_key,
                cancel_key,
                request,
            } => {
                // RFC 3261 9.2: 200 to the CANCEL, 487 to the INVITE if unanswered.
                self.ua
                    .respond(&cancel_key, Response::for_request(&request, 200, "OK"));
                let matches = self
                    .call
                    .as_ref()
                    .is_some_and(|c| c.invite_key == invite_key && c.answered_at.is_none());
                if matches {
                    if let Some(call) = self.call.take() {
                        let response =
                            Response::for_request(&call.invite, 487, "Request Terminated")
                                .with_to_tag(&call.dialog.local_tag);
                        self.ua.respond(&call.invite_key, response);
                        self.report(PhoneEvent::Ended {
                            call: call.dialog.call_id.clone(),
                            talk_ms: 0,
                            rtp_in: 0,
                            rtp_out: 0,
                            hung_up_by_me: false,
                            caller: call.caller,
                            cluster_call: call.cluster_call,
                            media: MediaReport::default(),
                        });
                    }
                }
            }
            UaEvent::Stray { .. } => {}
        }
    }

    async fn on_request(&mut self, key: TransactionKey, request: Request, source: SocketAddr) {
        let same_call_id = self
            .call
            .as_ref()
            .is_some_and(|c| Some(c.dialog.call_id.as_str()) == request.call_id());
        let in_call = self
            .call
            .as_ref()
            .is_some_and(|c| in_dialog(&c.dialog, &request));
        match request.method {
            Method::Invite if !same_call_id => self.on_invite(key, request, source).await,
            Method::Invite if !has_to_tag(&request) => {
                // RFC 3261 8.2.2.2: our call's INVITE again on a new transaction (merged or
                // re-sent with a new branch); its own transaction is answered already.
                self.ua
                    .respond(&key, Response::for_request(&request, 482, "Loop Detected"));
            }
            Method::Invite if in_call => self.on_reinvite(key, request, source),
            Method::Bye if in_call => {
                self.ua
                    .respond(&key, Response::for_request(&request, 200, "OK"));
                self.end_call(false);
            }
            Method::Options => self
                .ua
                .respond(&key, Response::for_request(&request, 200, "OK")),
            _ => self.ua.respond(
                &key,
                Response::for_request(&request, 481, "Call/Transaction Does Not Exist"),
            ),
        }
    }

    /// A re-INVITE in our call: typically a surviving node taking the call over.
    fn on_reinvite(&mut self, key: TransactionKey, request: Request, source: SocketAddr) {
        let contact = self.ua.contact(&self.config.extension);
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if call.answered_at.is_none() {
            // RFC 3261 14.2: our final response to the INVITE is not out yet.
            let mut response = Response::for_request(&request, 500, "Server Internal Error")
                .with_to_tag(&call.dialog.local_tag);
            response.headers.push("Retry-After", "1");
            self.ua.respond(&key, response);
            return;
        }
        let outcome = call.reinvites.on_reinvite(
            Instant::now(),
            &mut call.dialog,
            &request,
            source,
            &contact,
            &call.local_sdp,
        );
        let accepted = match &outcome {
            Reinvite::Accepted { media, .. } => {
                tracing::info!(
                    call = %call.dialog.call_id,
                    target = %call.dialog.remote_target,
                    media = ?media.map(|m| m.remote),
                    "re-INVITE accepted: call taken over"
                );
                if let Some(audio) = call.audio.as_mut() {
                    audio.refresh(*media);
                }
                true
            }
            Reinvite::Repeated { .. } => false,
            Reinvite::Rejected { reason, .. } => {
                tracing::warn!(call = %call.dialog.call_id, %source, %reason, "re-INVITE refused");
                false
            }
        };
        self.ua.respond(&key, outcome.into_response());
        if !accepted {
            return;
        }
        let id = call.dialog.call_id.clone();
        // Our BYE went to the old node (which may be dead): tell the new one the call is over.
        let resend_bye = call.bye.is_some() && call.bye_retargets < MAX_BYE_RETARGETS;
        if resend_bye {
            call.bye_retargets += 1;
            call.bye = None;
        }
        self.report(PhoneEvent::Refreshed { call: id });
        if resend_bye {
            self.send_bye();
        }
    }

    /// A new call: 180 now, 200 after the ring time (RFC 3261 13.3.1).
    async fn on_invite(&mut self, key: TransactionKey, request: Request, source: SocketAddr) {
        let arrived = unix_us();
        if self.call.is_some() {
            self.ua.respond(
                &key,
                Response::for_request(&request, 486, "Busy Here")
                    .with_to_tag(&new_tag(&mut rand::thread_rng())),
            );
            return;
        }
        let local_tag = new_tag(&mut rand::thread_rng());
        let contact = self.ua.contact(&self.config.extension);
        let dialog = match Dialog::uas_from_invite(&request, &local_tag, &contact) {
            Ok(dialog) => dialog,
            Err(error) => {
                tracing::warn!(%error, "unusable INVITE to a synthetic phone");
                self.ua
                    .respond(&key, Response::for_request(&request, 400, "Bad Request"));
                return;
            }
        };
        let rtp_socket = match UdpSocket::bind(SocketAddr::new(self.config.bind_ip, 0)).await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "no RTP port for a synthetic phone");
                self.ua.respond(
                    &key,
                    Response::for_request(&request, 503, "Service Unavailable"),
                );
                return;
            }
        };
        let audio = match Audio::new(rtp_socket, 660.0) {
            Ok(audio) => audio,
            Err(error) => {
                tracing::warn!(%error, "no RTP port for a synthetic phone");
                self.ua.respond(
                    &key,
                    Response::for_request(&request, 503, "Service Unavailable"),
                );
                return;
            }
        };
        let local_sdp = sdp_body(&local_description(self.config.bind_ip, audio.port()));
        let caller = request
            .from()
            .and_then(|from| from.uri.user)
            .unwrap_or_default();
        let cluster_call = request
            .headers
            .get(CLUSTER_CALL_HEADER)
            .map(|value| value.trim().to_string());
        let mut ringing = Response::for_request(&request, 180, "Ringing").with_to_tag(&local_tag);
        ringing.headers.set("Contact", format!("<{contact}>"));
        self.ua.respond(&key, ringing);
        self.report(PhoneEvent::Ringing {
            call: dialog.call_id.clone(),
            caller: caller.clone(),
            at_unix_us: arrived,
        });
        self.call = Some(Call {
            invite_key: key,
            invite: request,
            source,
            dialog,
            caller,
            cluster_call,
            local_sdp,
            answer_at: Some(Instant::now() + self.config.ring_time),
            answered_at: None,
            hangup_at: None,
            retransmit: None,
            audio: Some(audio),
            media: None,
            reinvites: Reinvites::default(),
            bye: None,
            bye_retargets: 0,
        });
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        if self.registration.refresh_at <= now {
            self.send_register(None);
        }
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if call.answer_at.is_some_and(|at| at <= now) {
            call.answer_at = None;
            self.answer().await;
            return;
        }
        if let Some(retransmit) = call.retransmit.as_mut() {
            retransmit.handle_timeout(now);
            let mut transmits = Vec::new();
            let mut ack_timeout = false;
            while let Some(output) = retransmit.poll_output() {
                match output {
                    Retransmit2xxOutput::Transmit { dest, bytes, .. } => {
                        transmits.push((dest, bytes))
                    }
                    Retransmit2xxOutput::AckTimeout => ack_timeout = true,
                }
            }
            if retransmit.is_done() {
                call.retransmit = None;
            }
            for (dest, bytes) in transmits {
                self.ua.transmit(dest, bytes).await;
            }
            if ack_timeout {
                // RFC 3261 13.3.1.4: no ACK, so the session failed; end it with a BYE.
                self.send_bye();
                return;
            }
        }
        let Some(call) = self.call.as_mut() else {
            return;
        };
        let due = call.reinvites.on_timeout(now);
        for (dest, bytes) in due.transmits {
            self.ua.transmit(dest, bytes).await;
        }
        if due.ack_timeout {
            // RFC 3261 13.3.1.4: our 2xx to a re-INVITE was never acknowledged.
            tracing::warn!("no ACK for our 2xx to a re-INVITE; hanging up");
            self.send_bye();
            return;
        }
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if call.hangup_at.is_some_and(|at| at <= now) {
            call.hangup_at = None;
            self.send_bye();
        } else if call.bye.as_ref().is_some_and(|(_, at)| *at <= now) {
            self.end_call(true);
        }
    }

    /// 200 OK with our SDP, start the tone, and draw the talk time.
    async fn answer(&mut self) {
        let contact = self.ua.contact(&self.config.extension);
        let Some(call) = self.call.as_ref() else {
            return;
        };
        let response = ok_with_sdp(
            &call.invite,
            &call.dialog.local_tag,
            &contact,
            &call.local_sdp,
        );
        let bytes = response.to_bytes();
        let invite_key = call.invite_key.clone();
        let remote_sdp = negotiate(&call.invite.body);
        self.ua.respond(&invite_key, response);
        let talk = random_in(&self.config.talk_time);
        let Some(call) = self.call.as_mut() else {
            return;
        };
        // Retransmit the 2xx to where the INVITE came from until the ACK (RFC 3261 13.3.1.4).
        call.retransmit = Some(Retransmit2xx::new(
            Instant::now(),
            call.source,
            Transport::Udp,
            bytes,
            Default::default(),
        ));
        let now = Instant::now();
        call.answered_at = Some(now);
        call.hangup_at = Some(now + talk);
        if let (Some(negotiated), Some(audio)) = (remote_sdp, call.audio.as_mut()) {
            audio.start(negotiated);
        }
        let event = PhoneEvent::Answered {
            call: call.dialog.call_id.clone(),
            caller: call.caller.clone(),
            cluster_call: call.cluster_call.clone(),
        };
        self.report(event);
    }

    /// RFC 3261 15.1.1: end the dialog with a BYE; the call ends on its final response.
    fn send_bye(&mut self) {
        let contact = self.ua.contact(&self.config.extension);
        let via = self.ua.via_host_port();
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if call.bye.is_some() {
            return;
        }
        let Some(dest) = target_addr(&call.dialog.remote_target) else {
            self.end_call(true);
            return;
        };
        call.finish_media();
        let branch = new_branch(&mut rand::thread_rng());
        let bye = call
            .dialog
            .new_request(Method::Bye, &contact, &via, &branch);
        let key = self.ua.send_request(bye, dest);
        if let Some(call) = self.call.as_mut() {
            call.bye = Some((key, Instant::now() + BYE_WAIT));
        }
    }

    fn end_call(&mut self, hung_up_by_me: bool) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let talk_ms = call
            .answered_at
            .map_or(0, |at| at.elapsed().as_millis() as u64);
        call.finish_media();
        let media = call.media.unwrap_or_default();
        self.report(PhoneEvent::Ended {
            call: call.dialog.call_id,
            talk_ms,
            rtp_in: media.rtp_in,
            rtp_out: media.rtp_out,
            hung_up_by_me,
            caller: call.caller,
            cluster_call: call.cluster_call,
            media,
        });
    }

    /// On shutdown: end a call in progress and wait (bounded) for the BYE's answer.
    async fn hang_up(&mut self) {
        if self.call.as_ref().is_some_and(|c| c.answered_at.is_some()) {
            self.send_bye();
            let deadline = Instant::now() + BYE_WAIT;
            while self.call.is_some() {
                match self.ua.next_event(Some(deadline)).await {
                    Some(event) => self.on_event(event).await,
                    None => break,
                }
            }
        }
        self.end_call(true);
    }
}

/// The strongest challenge we can answer: SHA-256 before MD5 (RFC 8760 2.4).
pub fn pick_challenge(response: &Response) -> Option<Challenge> {
    let name = if response.status == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    let mut challenges: Vec<Challenge> = response
        .headers
        .get_all(name)
        .into_iter()
        .filter_map(Challenge::parse)
        .collect();
    challenges.sort_by_key(|c| match c.algorithm {
        Algorithm::Sha256 => 0,
        _ => 1,
    });
    challenges.into_iter().next()
}

fn is_stale(response: &Response) -> bool {
    pick_challenge(response).is_some_and(|c| c.stale)
}

/// The lifetime the registrar granted: the Contact's expires, else the Expires header.
fn granted_expires(response: &Response) -> Option<u32> {
    let from_contact = response.contact().and_then(|c| {
        c.param("expires")
            .flatten()
            .and_then(|v| v.trim().parse::<u32>().ok())
    });
    from_contact
        .or_else(|| response.expires())
        .filter(|e| *e > 0)
}

/// A uniformly random duration in `range` (the start if the range is empty).
/// Now, in microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn random_in(range: &Range<Duration>) -> Duration {
    if range.end <= range.start {
        return range.start;
    }
    rand::thread_rng().gen_range(range.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Request {
        let mut request = Request::new(
            Method::Invite,
            Uri::parse("sip:1001@127.0.0.1:5070").expect("uri"),
        );
        request
            .headers
            .push("Via", "SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bKabc");
        request.headers.push("From", "<sip:node@127.0.0.11>;tag=n1");
        request.headers.push("To", "<sip:1001@gd.callgrid.local>");
        request.headers.push("Call-ID", "c1@node");
        request.headers.push("CSeq", "1 INVITE");
        request
            .headers
            .push("Contact", "<sip:node@127.0.0.11:5060>");
        request
    }

    #[test]
    fn answer_carries_tag_contact_and_sdp() {
        let contact = Uri::sip(Some("1001"), "127.0.0.1", Some(5070));
        let sdp = sdp_body(&local_description("127.0.0.1".parse().expect("ip"), 41_000));
        let response = ok_with_sdp(&invite(), "t9", &contact, &sdp);
        assert_eq!(response.status, 200);
        assert_eq!(
            response
                .to()
                .and_then(|t| t.tag().map(str::to_string))
                .as_deref(),
            Some("t9")
        );
        assert_eq!(response.contact().map(|c| c.uri), Some(contact));
        let negotiated = negotiate(&response.body).expect("our SDP is negotiable");
        assert_eq!(negotiated.remote.port(), 41_000);
        assert_eq!(negotiated.dtmf_payload_type, Some(101));
    }

    #[test]
    fn prefers_sha256_challenge() {
        let mut response = Response::new(401, "Unauthorized");
        response.headers.push(
            "WWW-Authenticate",
            "Digest realm=\"gd.callgrid.local\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
        );
        response.headers.push(
            "WWW-Authenticate",
            "Digest realm=\"gd.callgrid.local\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\"",
        );
        let challenge = pick_challenge(&response).expect("a challenge");
        assert_eq!(challenge.algorithm, Algorithm::Sha256);
        assert_eq!(challenge.nonce, "n2");
    }

    #[test]
    fn granted_expires_reads_contact_then_header() {
        let mut response = Response::new(200, "OK");
        response
            .headers
            .push("Contact", "<sip:1001@127.0.0.1:5070>;expires=120");
        assert_eq!(granted_expires(&response), Some(120));
        let mut response = Response::new(200, "OK");
        response.headers.push("Expires", "90");
        assert_eq!(granted_expires(&response), Some(90));
    }
}
