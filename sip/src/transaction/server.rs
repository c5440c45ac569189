//! Server transactions (RFC 3261 17.2).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Timers, TransactionKey, TransactionOutput, Transport};
use crate::message::{Method, Request, Response};

/// RFC 3261 17.2.1: send 100 Trying if the TU has not answered within
/// 200 ms.
const AUTO_TRYING_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerState {
    /// Non-INVITE only (17.2.2).
    Trying,
    Proceeding,
    Completed,
    /// INVITE only (17.2.1).
    Confirmed,
    /// RFC 6026 7.1: after a 2xx to INVITE, absorb retransmitted INVITEs
    /// for 64*T1 so the TU does not see the request twice.
    Accepted,
    Terminated,
}

#[derive(Debug)]
pub(crate) struct ServerTransaction {
    pub key: TransactionKey,
    pub source: SocketAddr,
    pub transport: Transport,
    pub state: ServerState,
    request: Request,
    last_response: Option<Vec<u8>>,
    timers: Timers,
    auto_trying_at: Option<Instant>,
    /// Timer G.
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timer H.
    timeout_at: Option<Instant>,
    /// Timer I or J.
    linger_until: Option<Instant>,
}

impl ServerTransaction {
    pub fn new(
        now: Instant,
        key: TransactionKey,
        request: Request,
        source: SocketAddr,
        transport: Transport,
        timers: Timers,
    ) -> Self {
        let invite = request.method == Method::Invite;
        ServerTransaction {
            key,
            source,
            transport,
            // RFC 3261 17.2.1: an INVITE server transaction starts in
            // Proceeding; 17.2.2: a non-INVITE one in Trying.
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            request,
            last_response: None,
            timers,
            auto_trying_at: invite.then(|| now + AUTO_TRYING_AFTER),
            retransmit_at: None,
            retransmit_interval: timers.t1,
            timeout_at: None,
            linger_until: None,
        }
    }

    fn is_invite(&self) -> bool {
        self.request.method == Method::Invite
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.auto_trying_at,
            self.retransmit_at,
            self.timeout_at,
            self.linger_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn transmit(&self, bytes: Vec<u8>, out: &mut VecDeque<TransactionOutput>) {
        out.push_back(TransactionOutput::Transmit {
            dest: self.source,
            transport: self.transport,
            bytes,
        });
    }

    /// A retransmission of the request that created this transaction.
    pub fn handle_retransmission(&mut self, out: &mut VecDeque<TransactionOutput>) {
        // RFC 3261 17.2.1 / 17.2.2: in Proceeding or Completed, resend the
        // most recent response; in Trying (nothing sent yet) absorb it.
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed) {
            if let Some(bytes) = &self.last_response {
                self.transmit(bytes.clone(), out);
            }
        }
    }

    /// An ACK matching this INVITE transaction. Returns true when the ACK
    /// belongs to the TU (RFC 6026 7.1: in Accepted it acknowledges a 2xx).
    pub fn handle_ack(&mut self, now: Instant) -> bool {
        if self.state == ServerState::Accepted {
            return true;
        }
        if self.state == ServerState::Completed {
            // RFC 3261 17.2.1: ACK in Completed -> Confirmed, stop G and H,
            // start timer I (T4, zero on reliable transports).
            self.state = ServerState::Confirmed;
            self.retransmit_at = None;
            self.timeout_at = None;
            if self.transport.is_reliable() {
                self.state = ServerState::Terminated;
            } else {
                self.linger_until = Some(now + self.timers.t4);
            }
        }
        false
    }

    pub fn send_response(
        &mut self,
        now: Instant,
        response: Response,
        out: &mut VecDeque<TransactionOutput>,
    ) -> bool {
        if !matches!(self.state, ServerState::Trying | ServerState::Proceeding) {
            return false;
        }
        let status = response.status;
        let bytes = response.to_bytes();
        self.transmit(bytes.clone(), out);
        self.last_response = Some(bytes);
        self.auto_trying_at = None;
        if status < 200 {
            // RFC 3261 17.2.2: Trying -> Proceeding on a provisional.
            self.state = ServerState::Proceeding;
        } else if self.is_invite() && status < 300 {
            // RFC 3261 17.2.1 as updated by RFC 6026 7.1: a 2xx moves the
            // INVITE server transaction to Accepted for 64*T1; the TU
            // retransmits the 2xx itself (13.3.1.4, see Retransmit2xx).
            self.state = ServerState::Accepted;
            self.linger_until = Some(now + self.timers.t1 * 64);
        } else if self.is_invite() {
            // RFC 3261 17.2.1: 300-699 -> Completed; timer G on unreliable
            // transports, timer H = 64*T1 always.
            self.state = ServerState::Completed;
            if !self.transport.is_reliable() {
                self.retransmit_at = Some(now + self.timers.t1);
            }
            self.timeout_at = Some(now + self.timers.t1 * 64);
        } else {
            // RFC 3261 17.2.2: final -> Completed, timer J = 64*T1 on
            // unreliable transports, zero on reliable ones.
            self.state = ServerState::Completed;
            if self.transport.is_reliable() {
                self.state = ServerState::Terminated;
            } else {
                self.linger_until = Some(now + self.timers.t1 * 64);
            }
        }
        true
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<TransactionOutput>) {
        if self.linger_until.is_some_and(|t| t <= now) {
            // RFC 3261 17.2.1 timer I / 17.2.2 timer J.
            self.state = ServerState::Terminated;
            return;
        }
        if self.timeout_at.is_some_and(|t| t <= now) {
            // RFC 3261 17.2.1 timer H: no ACK ever came.
            self.state = ServerState::Terminated;
            out.push_back(TransactionOutput::Timeout {
                key: self.key.clone(),
            });
            return;
        }
        if self.auto_trying_at.is_some_and(|t| t <= now) {
            self.auto_trying_at = None;
            if self.state == ServerState::Proceeding && self.last_response.is_none() {
                let trying = Response::for_request(&self.request, 100, "Trying").to_bytes();
                self.transmit(trying.clone(), out);
                self.last_response = Some(trying);
            }
        }
        while let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            // RFC 3261 17.2.1 timer G: resend the final, doubling to T2.
            if let Some(bytes) = &self.last_response {
                self.transmit(bytes.clone(), out);
            }
            self.retransmit_interval = (self.retransmit_interval * 2).min(self.timers.t2);
            self.retransmit_at = Some(at + self.retransmit_interval);
        }
    }
}
