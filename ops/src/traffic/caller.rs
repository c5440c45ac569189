//! A synthetic carrier caller (UAC): one call from 127.0.0.1 (the sample trunk's address) to
//! `sip:<landing><access>@<node>`, with SDP; it ACKs the 2xx, plays a tone, presses one menu
//! key (RFC 4733) after a delay, stays for a random total time and hangs up, or answers the
//! node's BYE. What happened to the call inside the cluster (agent or not) is read from the
//! CDR afterwards; the caller only knows its own side.
//!
//! During the call it answers in-dialog re-INVITEs (a surviving node taking the call over,
//! see [`super::reinvite`]): 200 with its SDP, the remote target and the RTP move to the new
//! node, and everything it sends afterwards (ACK copies, its BYE) goes there. Its report
//! carries the media measurements a failover drill needs ([`MediaReport`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;

use sip::dialog::Dialog;
use sip::message::{new_branch, new_call_id, new_tag, Method, Request, Response};
use sip::name_addr::NameAddr;
use sip::transaction::TransactionKey;
use sip::uri::Uri;
use sip::SipMessage;

use super::media::{local_description, negotiate, sdp_body, Audio, MediaReport};
use super::reinvite::{in_dialog, Reinvite, Reinvites};
use super::ua::{target_addr, Ua, UaEvent};

/// How long a BYE may take before we consider the call over anyway.
const BYE_WAIT: Duration = Duration::from_secs(5);
/// Timer B covers an unanswered INVITE; this bounds a call that rings forever (182s...).
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// How often a BYE is sent again to a node that took the call over while it was out.
const MAX_BYE_RETARGETS: u32 = 3;

#[derive(Debug, Clone)]
pub struct CallPlan {
    /// The node's SIP address.
    pub node: SocketAddr,
    pub bind_ip: IpAddr,
    /// Caller number (From user).
    pub caller: String,
    pub landing_code: String,
    pub access_code: String,
    /// The menu key to press, if any, and when (after the answer).
    pub digit: Option<char>,
    pub digit_delay: Duration,
    /// Total time the caller stays after the answer before hanging up.
    pub stay: Duration,
    /// Upper bound on the whole call (setup, stay and BYE), whatever happens.
    pub limit: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerEvent {
    Answered {
        call: String,
        setup_ms: u64,
    },
    /// A node took the call over: its re-INVITE was accepted, the media moved to it.
    Refreshed {
        call: String,
    },
    Ended {
        call: String,
        duration_ms: u64,
        rtp_in: u64,
        rtp_out: u64,
        by_me: bool,
        /// Gaps and refresh counts for drills (`rtp_in`/`rtp_out` repeat its counts).
        media: MediaReport,
    },
    Failed {
        call: String,
        status: u16,
    },
}

/// The dialled number: landing code then access code (issue 2, sample configuration).
pub fn dialled(plan: &CallPlan) -> String {
    format!("{}{}", plan.landing_code, plan.access_code)
}

/// RFC 3261 8.1.1: the initial INVITE with our SDP offer.
pub fn build_invite(plan: &CallPlan, local: SocketAddr, rtp_port: u16) -> Request {
    let mut rng = rand::thread_rng();
    let host = plan.node.ip().to_string();
    let uri = Uri::sip(Some(&dialled(plan)), &host, Some(plan.node.port()));
    let mut request = Request::new(Method::Invite, uri.clone());
    request.headers.push(
        "Via",
        format!("SIP/2.0/UDP {local};branch={};rport", new_branch(&mut rng)),
    );
    request.headers.push("Max-Forwards", "70");
    let mut from = NameAddr::new(Uri::sip(Some(&plan.caller), &local.ip().to_string(), None));
    from.set_tag(&new_tag(&mut rng));
    request.headers.push("From", from.to_string());
    request.headers.push("To", NameAddr::new(uri).to_string());
    request
        .headers
        .push("Call-ID", new_call_id(&mut rng, &local.ip().to_string()));
    request.headers.push("CSeq", "1 INVITE");
    let contact = Uri::sip(
        Some(&plan.caller),
        &local.ip().to_string(),
        Some(local.port()),
    );
    request.headers.push("Contact", format!("<{contact}>"));
    request.headers.push("User-Agent", "callgrid-traffic");
    request.headers.push("Content-Type", "application/sdp");
    request.body = sdp_body(&local_description(local.ip(), rtp_port)).into_bytes();
    request
}

/// Places one call and runs it to the end; returns its events in order.
/// `stop` turning true shortens the stay: the caller hangs up at once.
pub async fn run_call(
    plan: CallPlan,
    mut report: impl FnMut(CallerEvent),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let limit_at = started + plan.limit;
    let mut ua = Ua::bind(plan.bind_ip).await?;
    let rtp_socket = UdpSocket::bind(SocketAddr::new(plan.bind_ip, 0)).await?;
    let audio = Audio::new(rtp_socket, 440.0)?;
    let invite = build_invite(&plan, ua.local, audio.port());
    let call_id = invite.call_id().unwrap_or_default().to_string();
    let invite_cseq = 1;
    let invite_key = ua.send_request(invite.clone(), plan.node);

    // Setup: wait for a final response (RFC 3261 13.2.2).
    let setup_deadline = (started + SETUP_LIMIT).min(limit_at);
    let (dialog, answer) = loop {
        match ua.next_event(Some(setup_deadline)).await {
            Some(UaEvent::Response { key, response }) if key == invite_key => match response.status
            {
                100..=199 => {}
                200..=299 => match Dialog::uac_from_response(&invite, &response) {
                    Ok(dialog) => break (dialog, response),
                    Err(_) => {
                        report(CallerEvent::Failed {
                            call: call_id,
                            status: 502,
                        });
                        return Ok(());
                    }
                },
                status => {
                    // The transaction layer ACKs a non-2xx final response (RFC 3261 17.1.1.3).
                    report(CallerEvent::Failed {
                        call: call_id,
                        status,
                    });
                    return Ok(());
                }
            },
            Some(UaEvent::Failed { key }) if key == invite_key => {
                report(CallerEvent::Failed {
                    call: call_id,
                    status: 408,
                });
                return Ok(());
            }
            Some(UaEvent::Request { key, request, .. }) => {
                ua.respond(
                    &key,
                    Response::for_request(&request, 481, "Call/Transaction Does Not Exist"),
                );
            }
            Some(_) => {}
            None => {
                report(CallerEvent::Failed {
                    call: call_id,
                    status: 408,
                });
                return Ok(());
            }
        }
    };
    let answered_at = Instant::now();
    report(CallerEvent::Answered {
        call: call_id.clone(),
        setup_ms: ms(answered_at - started),
    });
    let contact = ua.contact(&plan.caller);
    let via = ua.via_host_port();
    let Some(dest) = target_addr(&dialog.remote_target) else {
        report(CallerEvent::Failed {
            call: call_id,
            status: 502,
        });
        return Ok(());
    };
    // RFC 3261 13.2.2.4: the ACK for a 2xx is ours to send (and to resend on each retransmitted 2xx).
    let ack = dialog.ack_for_2xx(
        invite_cseq,
        &contact,
        &via,
        &new_branch(&mut rand::thread_rng()),
    );
    let ack_bytes = ack.to_bytes();
    ua.transmit(dest, ack_bytes.clone()).await;
    let mut call = Established {
        ua,
        dialog,
        contact,
        via,
        // Our SDP for the whole call: the offer, and unchanged the answer to any re-INVITE.
        local_sdp: String::from_utf8_lossy(&invite.body).into_owned(),
        ack_bytes,
        audio: Some(audio),
        reinvites: Reinvites::default(),
    };
    if let (Some(negotiated), Some(audio)) = (negotiate(&answer.body), call.audio.as_mut()) {
        audio.start(negotiated);
    }

    let mut digit_at = plan.digit.map(|d| (d, answered_at + plan.digit_delay));
    let hangup_at = (answered_at + plan.stay).min(limit_at);
    let mut by_me = true;
    let mut stop_gone = false;
    // The talk: until our hang-up time, the node's BYE, or a stop.
    loop {
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        if let Some((key, at)) = digit_at {
            if at <= now {
                if let Some(audio) = call.audio.as_ref() {
                    audio.dtmf(key);
                }
                digit_at = None;
            }
        }
        if hangup_at <= now {
            break;
        }
        if call.on_timers(now).await {
            // RFC 3261 13.3.1.4: our 2xx to a re-INVITE was never acknowledged, so the
            // session failed; end it with a BYE.
            tracing::warn!(call = %call_id, "no ACK for our 2xx to a re-INVITE; hanging up");
            break;
        }
        let mut deadline = hangup_at;
        if let Some((_, at)) = digit_at {
            deadline = deadline.min(at);
        }
        if let Some(at) = call.reinvites.poll_timeout() {
            deadline = deadline.min(at);
        }
        let event = tokio::select! {
            event = call.ua.next_event(Some(deadline)) => event,
            changed = stop_changed(&mut stop, stop_gone) => {
                // With the sender gone nobody can stop us; stop watching (no busy loop).
                stop_gone |= changed.is_err();
                continue;
            }
        };
        match event {
            Some(UaEvent::Request {
                key,
                request,
                source,
            }) => match call.on_request(key, request, source) {
                InCall::Ended => {
                    by_me = false;
                    break;
                }
                InCall::Refreshed => report(CallerEvent::Refreshed {
                    call: call_id.clone(),
                }),
                InCall::Continues => {}
            },
            Some(UaEvent::Ack { request }) => call.on_ack(&request),
            Some(UaEvent::Stray { response }) | Some(UaEvent::Response { response, .. })
                if response.status >= 200
                    && response.status < 300
                    && response.call_id() == Some(call_id.as_str()) =>
            {
                call.resend_ack().await;
            }
            Some(_) | None => {}
        }
    }
    // RFC 3261 15.1.1: the session is over as soon as we hang up (or the BYE came in).
    let media = call
        .audio
        .take()
        .map_or_else(MediaReport::default, |audio| audio.finish(Instant::now()));
    if by_me {
        call.hang_up().await;
    }
    // The 200 to the node's BYE (or a last answer during our own BYE) must leave before
    // the UA is dropped.
    call.ua.flush().await;
    report(CallerEvent::Ended {
        call: call_id,
        duration_ms: ms(answered_at.elapsed()),
        rtp_in: media.rtp_in,
        rtp_out: media.rtp_out,
        by_me,
        media,
    });
    Ok(())
}

/// What a request did to an established call.
enum InCall {
    Continues,
    /// A re-INVITE was accepted: new remote target, media moved.
    Refreshed,
    /// The far end's BYE.
    Ended,
}

/// An answered call: the dialog and what is needed to act in it.
struct Established {
    ua: Ua,
    dialog: Dialog,
    contact: Uri,
    via: String,
    local_sdp: String,
    /// The ACK for the INVITE's 2xx, resent on each copy of that 2xx (RFC 3261 13.2.2.4).
    ack_bytes: Vec<u8>,
    /// Until the call ends (then its report is taken).
    audio: Option<Audio>,
    reinvites: Reinvites,
}

impl Established {
    /// Where in-dialog requests go now: the remote target, which each target refresh moves.
    fn target(&self) -> Option<SocketAddr> {
        target_addr(&self.dialog.remote_target)
    }

    /// A request during the call, from any source (after a takeover the new node writes from
    /// an address we have never seen): the dialog decides whether it is ours.
    fn on_request(&mut self, key: TransactionKey, request: Request, source: SocketAddr) -> InCall {
        if !in_dialog(&self.dialog, &request) {
            self.ua.respond(
                &key,
                Response::for_request(&request, 481, "Call/Transaction Does Not Exist"),
            );
            return InCall::Continues;
        }
        match request.method {
            Method::Bye => {
                self.ua
                    .respond(&key, Response::for_request(&request, 200, "OK"));
                InCall::Ended
            }
            Method::Invite => {
                if self.on_reinvite(key, &request, source) {
                    InCall::Refreshed
                } else {
                    InCall::Continues
                }
            }
            _ => {
                self.ua
                    .respond(&key, Response::for_request(&request, 200, "OK"));
                InCall::Continues
            }
        }
    }

    /// Answers a re-INVITE in the dialog; true when it was accepted (target refreshed).
    fn on_reinvite(&mut self, key: TransactionKey, request: &Request, source: SocketAddr) -> bool {
        let outcome = self.reinvites.on_reinvite(
            Instant::now(),
            &mut self.dialog,
            request,
            source,
            &self.contact,
            &self.local_sdp,
        );
        let accepted = match &outcome {
            Reinvite::Accepted { media, .. } => {
                tracing::info!(
                    call = %self.dialog.call_id,
                    target = %self.dialog.remote_target,
                    media = ?media.map(|m| m.remote),
                    "re-INVITE accepted: call taken over"
                );
                if let Some(audio) = self.audio.as_mut() {
                    audio.refresh(*media);
                }
                true
            }
            Reinvite::Repeated { .. } => false,
            Reinvite::Rejected { reason, .. } => {
                tracing::warn!(call = %self.dialog.call_id, %source, %reason, "re-INVITE refused");
                false
            }
        };
        self.ua.respond(&key, outcome.into_response());
        accepted
    }

    fn on_ack(&mut self, ack: &Request) {
        if !in_dialog(&self.dialog, ack) {
            return;
        }
        if let Some(negotiated) = self.reinvites.on_ack(ack) {
            if let Some(audio) = self.audio.as_mut() {
                audio.start(negotiated);
            }
        }
    }

    async fn resend_ack(&self) {
        if let Some(dest) = self.target() {
            self.ua.transmit(dest, self.ack_bytes.clone()).await;
        }
    }

    /// Resends a due 2xx to a re-INVITE; true when one was never acknowledged.
    async fn on_timers(&mut self, now: Instant) -> bool {
        let due = self.reinvites.on_timeout(now);
        for (dest, bytes) in due.transmits {
            self.ua.transmit(dest, bytes).await;
        }
        due.ack_timeout
    }

    /// RFC 3261 15.1.1: a BYE to the current remote target, or `None` if it has no address.
    fn send_bye(&mut self) -> Option<TransactionKey> {
        let dest = self.target()?;
        let bye = self.dialog.new_request(
            Method::Bye,
            &self.contact,
            &self.via,
            &new_branch(&mut rand::thread_rng()),
        );
        Some(self.ua.send_request(bye, dest))
    }

    /// Ends the dialog with a BYE and waits (bounded) for its final response.
    ///
    /// A node taking the call over while the BYE is out (the old node died with it) sends a
    /// re-INVITE: we answer it and send the BYE again, to the new target, so the surviving
    /// node learns the call is over (a few times at most, each with a fresh wait).
    async fn hang_up(&mut self) {
        let Some(mut bye_key) = self.send_bye() else {
            return;
        };
        let mut wait_until = Instant::now() + BYE_WAIT;
        let mut retargets = 0;
        loop {
            let deadline = self
                .reinvites
                .poll_timeout()
                .map_or(wait_until, |at| at.min(wait_until));
            let Some(event) = self.ua.next_event(Some(deadline)).await else {
                if Instant::now() >= wait_until {
                    return;
                }
                // Only 2xx retransmissions are due; an unacknowledged one changes nothing now.
                self.on_timers(Instant::now()).await;
                continue;
            };
            match event {
                UaEvent::Response { key, response } if key == bye_key && response.status >= 200 => {
                    return
                }
                UaEvent::Failed { key } if key == bye_key => return,
                UaEvent::Request {
                    key,
                    request,
                    source,
                } if request.method == Method::Invite && in_dialog(&self.dialog, &request) => {
                    // Answered whatever happens next; only a takeover re-sends the BYE.
                    let accepted = self.on_reinvite(key, &request, source);
                    if accepted && retargets < MAX_BYE_RETARGETS {
                        retargets += 1;
                        match self.send_bye() {
                            Some(key) => bye_key = key,
                            None => return,
                        }
                        wait_until = Instant::now() + BYE_WAIT;
                    }
                }
                UaEvent::Request { key, request, .. } => {
                    // The node's BYE crossed ours: answer it, the call is over either way.
                    let response =
                        if request.method == Method::Bye && in_dialog(&self.dialog, &request) {
                            Response::for_request(&request, 200, "OK")
                        } else {
                            Response::for_request(&request, 481, "Call/Transaction Does Not Exist")
                        };
                    self.ua.respond(&key, response);
                }
                UaEvent::Ack { request } => self.on_ack(&request),
                _ => {}
            }
        }
    }
}

/// `stop.changed()`, or never once its sender is gone.
async fn stop_changed(
    stop: &mut watch::Receiver<bool>,
    gone: bool,
) -> Result<(), watch::error::RecvError> {
    if gone {
        std::future::pending::<()>().await;
    }
    stop.changed().await
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> CallPlan {
        CallPlan {
            node: "127.0.0.11:5060".parse().expect("addr"),
            bind_ip: "127.0.0.1".parse().expect("ip"),
            caller: "13800000001".into(),
            landing_code: "0755".into(),
            access_code: "95598".into(),
            digit: Some('1'),
            digit_delay: Duration::from_secs(3),
            stay: Duration::from_secs(20),
            limit: Duration::from_secs(60),
        }
    }

    #[test]
    fn invite_dials_landing_then_access_code_with_an_offer() {
        let invite = build_invite(&plan(), "127.0.0.1:40000".parse().expect("addr"), 42_000);
        assert_eq!(invite.uri.to_string(), "sip:075595598@127.0.0.11:5060");
        assert!(invite
            .from()
            .and_then(|f| f.tag().map(str::to_string))
            .is_some());
        assert!(invite
            .to()
            .and_then(|t| t.tag().map(str::to_string))
            .is_none());
        assert_eq!(invite.cseq(), Some((1, Method::Invite)));
        assert_eq!(invite.contact().map(|c| c.uri.port), Some(Some(40_000)));
        let offer = negotiate(&invite.body).expect("negotiable offer");
        assert_eq!(offer.remote.port(), 42_000);
        assert_eq!(offer.dtmf_payload_type, Some(101));
        // It survives our own parser, as the node will see it.
        let parsed = sip::parse_message(&invite.to_bytes()).expect("parses");
        assert!(matches!(parsed, sip::Message::Request(r) if r.method == Method::Invite));
    }
}
