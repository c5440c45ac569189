//! A thin user-agent driver shared by the synthetic phones and callers: one UDP/TCP
//! `SipTransport` plus the sans-IO `TransactionLayer`, driven the way the node's endpoint
//! drives it (feed input, drain outputs, sleep until the layer's next timer). It makes no
//! call decisions: it hands the transaction user one [`UaEvent`] at a time, and the phone or
//! caller logic answers through `send_request` / `respond` / `transmit`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::sync::mpsc;

use sip::message::{Request, Response};
use sip::transaction::{TransactionKey, TransactionLayer, TransactionOutput, Transport};
use sip::transport::{Inbound, SipTransport};
use sip::uri::Uri;

/// What the transaction layer reports to the user agent's logic.
#[derive(Debug)]
pub enum UaEvent {
    Request {
        key: TransactionKey,
        request: Request,
        source: SocketAddr,
    },
    Ack {
        request: Request,
    },
    Response {
        key: TransactionKey,
        response: Response,
    },
    /// A response no transaction matched: typically a retransmitted 2xx to re-ACK.
    Stray {
        response: Response,
    },
    Cancelled {
        invite_key: TransactionKey,
        cancel_key: TransactionKey,
        request: Request,
    },
    /// The client transaction `key` timed out or could not be sent.
    Failed {
        key: TransactionKey,
    },
}

pub struct Ua {
    transport: SipTransport,
    inbound: mpsc::Receiver<Inbound>,
    layer: TransactionLayer,
    pending: VecDeque<UaEvent>,
    pub local: SocketAddr,
}

impl Ua {
    /// Binds UDP (and TCP) on `ip`, port chosen by the OS.
    pub async fn bind(ip: IpAddr) -> std::io::Result<Ua> {
        let (transport, inbound) = SipTransport::bind(SocketAddr::new(ip, 0)).await?;
        let local = transport.local_addr();
        Ok(Ua {
            transport,
            inbound,
            layer: TransactionLayer::new(),
            pending: VecDeque::new(),
            local,
        })
    }

    /// `host:port` for Via headers.
    pub fn via_host_port(&self) -> String {
        self.local.to_string()
    }

    /// Our Contact URI for `user`.
    pub fn contact(&self, user: &str) -> Uri {
        Uri::sip(
            Some(user),
            &self.local.ip().to_string(),
            Some(self.local.port()),
        )
    }

    pub fn send_request(&mut self, request: Request, dest: SocketAddr) -> TransactionKey {
        self.layer
            .send_request(Instant::now(), request, dest, Transport::Udp)
    }

    pub fn respond(&mut self, key: &TransactionKey, response: Response) {
        if let Err(error) = self.layer.send_response(Instant::now(), key, response) {
            tracing::debug!(?error, "response for a finished transaction dropped");
        }
    }

    /// Sends bytes outside any transaction (ACK for a 2xx, a retransmitted 2xx).
    pub async fn transmit(&self, dest: SocketAddr, bytes: Vec<u8>) {
        if let Err(error) = self.transport.send(dest, Transport::Udp, bytes).await {
            tracing::debug!(%dest, %error, "SIP send failed");
        }
    }

    /// The next event, or `None` once `deadline` passes (or the transport closed).
    pub async fn next_event(&mut self, deadline: Option<Instant>) -> Option<UaEvent> {
        loop {
            self.drain().await;
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return None;
            }
            let timer = self.layer.poll_timeout();
            let sleep_until = |at: Option<Instant>| async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = self.inbound.recv() => match packet {
                    Some(Inbound { result: Ok(message), source, transport }) => {
                        self.layer.handle_incoming(Instant::now(), message, source, transport);
                    }
                    Some(Inbound { result: Err((error, _)), source, .. }) => {
                        tracing::warn!(%source, %error, "malformed SIP message to a synthetic UA");
                    }
                    None => return None,
                },
                () = sleep_until(timer) => self.layer.handle_timeout(Instant::now()),
                () = sleep_until(deadline) => return None,
            }
        }
    }

    /// Sends what the transaction layer has queued (a response just given to `respond`)
    /// without waiting for an event: for a UA about to be dropped, whose last answer (the
    /// 200 to the far end's BYE) would otherwise never leave.
    pub async fn flush(&mut self) {
        self.drain().await;
    }

    async fn drain(&mut self) {
        while let Some(output) = self.layer.poll_output() {
            let event = match output {
                TransactionOutput::Transmit {
                    dest,
                    transport,
                    bytes,
                } => {
                    if let Err(error) = self.transport.send(dest, transport, bytes).await {
                        tracing::debug!(%dest, %error, "SIP send failed");
                    }
                    continue;
                }
                TransactionOutput::IncomingRequest {
                    key,
                    request,
                    source,
                    ..
                } => UaEvent::Request {
                    key,
                    request,
                    source,
                },
                TransactionOutput::IncomingAck { request, .. } => UaEvent::Ack { request },
                TransactionOutput::IncomingResponse { key, response } => {
                    UaEvent::Response { key, response }
                }
                TransactionOutput::StrayResponse { response, .. } => UaEvent::Stray { response },
                TransactionOutput::Cancelled {
                    invite_key,
                    cancel_key,
                    request,
                    ..
                } => UaEvent::Cancelled {
                    invite_key,
                    cancel_key,
                    request,
                },
                TransactionOutput::Timeout { key } | TransactionOutput::TransportError { key } => {
                    UaEvent::Failed { key }
                }
            };
            self.pending.push_back(event);
        }
    }
}

/// Where to send an in-dialog request: the remote target, which on loopback is an IP URI.
pub fn target_addr(uri: &Uri) -> Option<SocketAddr> {
    let host = uri.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}
