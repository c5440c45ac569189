//! A synthetic carrier caller (UAC): one call from 127.0.0.1 (the sample trunk's address) to
//! `sip:<landing><access>@<node>`, with SDP; it ACKs the 2xx, plays a tone, presses one menu
//! key (RFC 4733) after a delay, stays for a random total time and hangs up, or answers the
//! node's BYE. What happened to the call inside the cluster (agent or not) is read from the
//! CDR afterwards; the caller only knows its own side.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;

use sip::dialog::Dialog;
use sip::message::{new_branch, new_call_id, new_tag, Method, Request, Response};
use sip::name_addr::NameAddr;
use sip::uri::Uri;
use sip::SipMessage;

use super::media::{local_description, negotiate, sdp_body, RtpLeg};
use super::ua::{target_addr, Ua, UaEvent};

/// How long a BYE may take before we consider the call over anyway.
const BYE_WAIT: Duration = Duration::from_secs(5);
/// Timer B covers an unanswered INVITE; this bounds a call that rings forever (182s...).
const SETUP_LIMIT: Duration = Duration::from_secs(60);

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
    Ended {
        call: String,
        duration_ms: u64,
        rtp_in: u64,
        rtp_out: u64,
        by_me: bool,
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

/// Places one call and runs it to the end; returns its events in order (at most two).
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
    let invite = build_invite(&plan, ua.local, rtp_socket.local_addr()?.port());
    let call_id = invite.call_id().unwrap_or_default().to_string();
    let invite_cseq = 1;
    let invite_key = ua.send_request(invite.clone(), plan.node);

    // Setup: wait for a final response (RFC 3261 13.2.2).
    let setup_deadline = (started + SETUP_LIMIT).min(limit_at);
    let (mut dialog, answer) = loop {
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
    let media =
        negotiate(&answer.body).map(|negotiated| RtpLeg::start(rtp_socket, negotiated, 440.0));

    let mut digit_at = plan.digit.map(|d| (d, answered_at + plan.digit_delay));
    let hangup_at = (answered_at + plan.stay).min(limit_at);
    let mut by_me = true;
    // The talk: until our hang-up time, the node's BYE, or a stop.
    loop {
        if *stop.borrow() {
            break;
        }
        let mut deadline = hangup_at;
        if let Some((_, at)) = digit_at {
            deadline = deadline.min(at);
        }
        let event = tokio::select! {
            event = ua.next_event(Some(deadline)) => event,
            _ = stop.changed() => continue,
        };
        match event {
            Some(UaEvent::Request { key, request, .. })
                if request.call_id() == Some(call_id.as_str()) =>
            {
                if request.method == Method::Bye {
                    ua.respond(&key, Response::for_request(&request, 200, "OK"));
                    by_me = false;
                    break;
                }
                ua.respond(&key, Response::for_request(&request, 200, "OK"));
            }
            Some(UaEvent::Request { key, request, .. }) => {
                ua.respond(
                    &key,
                    Response::for_request(&request, 481, "Call/Transaction Does Not Exist"),
                );
            }
            Some(UaEvent::Stray { response }) | Some(UaEvent::Response { response, .. })
                if response.status >= 200
                    && response.status < 300
                    && response.call_id() == Some(call_id.as_str()) =>
            {
                ua.transmit(dest, ack_bytes.clone()).await;
            }
            Some(_) => {}
            None => {
                let now = Instant::now();
                if let Some((key, at)) = digit_at {
                    if at <= now {
                        if let Some(media) = media.as_ref() {
                            media.dtmf(key);
                        }
                        digit_at = None;
                    }
                }
                if hangup_at <= now {
                    break;
                }
            }
        }
    }
    if by_me {
        // RFC 3261 15.1.1: end the dialog; wait (bounded) for the final response.
        let bye = dialog.new_request(
            Method::Bye,
            &contact,
            &via,
            &new_branch(&mut rand::thread_rng()),
        );
        let bye_key = ua.send_request(bye, dest);
        let wait_until = Instant::now() + BYE_WAIT;
        while let Some(event) = ua.next_event(Some(wait_until)).await {
            match event {
                UaEvent::Response { key, response } if key == bye_key && response.status >= 200 => {
                    break
                }
                UaEvent::Failed { key } if key == bye_key => break,
                UaEvent::Request { key, request, .. } => {
                    // The node's BYE crossed ours: answer it, the call is over either way.
                    let status = if request.method == Method::Bye {
                        200
                    } else {
                        481
                    };
                    ua.respond(&key, Response::for_request(&request, status, "OK"));
                }
                _ => {}
            }
        }
    }
    let (rtp_in, rtp_out) = media.map_or((0, 0), RtpLeg::stop);
    report(CallerEvent::Ended {
        call: call_id,
        duration_ms: ms(answered_at.elapsed()),
        rtp_in,
        rtp_out,
        by_me,
    });
    Ok(())
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
