//! Client transactions (RFC 3261 17.1).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Timers, TransactionKey, TransactionOutput, Transport};
use crate::message::{Method, Request, Response, SipMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientState {
    /// INVITE only (17.1.1.2).
    Calling,
    /// Non-INVITE only (17.1.2.2).
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Debug)]
pub(crate) struct ClientTransaction {
    pub key: TransactionKey,
    pub dest: SocketAddr,
    pub transport: Transport,
    pub state: ClientState,
    request: Request,
    bytes: Vec<u8>,
    /// Bytes of the ACK we generated for a non-2xx final response.
    ack: Option<Vec<u8>>,
    timers: Timers,
    /// Timer A (INVITE) or E (non-INVITE).
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timer B or F.
    timeout_at: Option<Instant>,
    /// Timer D or K.
    linger_until: Option<Instant>,
}

impl ClientTransaction {
    pub fn start(
        now: Instant,
        key: TransactionKey,
        request: Request,
        dest: SocketAddr,
        transport: Transport,
        timers: Timers,
        out: &mut VecDeque<TransactionOutput>,
    ) -> Self {
        let invite = request.method == Method::Invite;
        let bytes = request.to_bytes();
        out.push_back(TransactionOutput::Transmit {
            dest,
            transport,
            bytes: bytes.clone(),
        });
        // RFC 3261 17.1.1.2 / 17.1.2.2: timers A/E start at T1 only on
        // unreliable transports; B/F always fire after 64*T1.
        let retransmit_at = (!transport.is_reliable()).then(|| now + timers.t1);
        ClientTransaction {
            key,
            dest,
            transport,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            request,
            bytes,
            ack: None,
            timers,
            retransmit_at,
            retransmit_interval: timers.t1,
            timeout_at: Some(now + timers.t1 * 64),
            linger_until: None,
        }
    }

    fn is_invite(&self) -> bool {
        self.request.method == Method::Invite
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.linger_until]
            .into_iter()
            .flatten()
            .min()
    }

    fn transmit(&self, bytes: Vec<u8>, out: &mut VecDeque<TransactionOutput>) {
        out.push_back(TransactionOutput::Transmit {
            dest: self.dest,
            transport: self.transport,
            bytes,
        });
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<TransactionOutput>) {
        if self.linger_until.is_some_and(|t| t <= now) {
            // RFC 3261 17.1.1.2 timer D / 17.1.2.2 timer K: stop absorbing
            // retransmitted responses.
            self.state = ClientState::Terminated;
            return;
        }
        if self.timeout_at.is_some_and(|t| t <= now) {
            // RFC 3261 17.1.1.2 timer B (Calling) / 17.1.2.2 timer F
            // (Trying or Proceeding): the transaction failed.
            self.state = ClientState::Terminated;
            out.push_back(TransactionOutput::Timeout {
                key: self.key.clone(),
            });
            return;
        }
        while let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            self.transmit(self.bytes.clone(), out);
            // RFC 3261 17.1.1.2: timer A doubles without bound for INVITE.
            // 17.1.2.2: timer E doubles up to T2, and sits at T2 once a
            // provisional response has arrived.
            self.retransmit_interval = if self.is_invite() {
                self.retransmit_interval * 2
            } else if self.state == ClientState::Proceeding {
                self.timers.t2
            } else {
                (self.retransmit_interval * 2).min(self.timers.t2)
            };
            self.retransmit_at = Some(at + self.retransmit_interval);
        }
    }

    pub fn handle_response(
        &mut self,
        now: Instant,
        response: Response,
        out: &mut VecDeque<TransactionOutput>,
    ) {
        let provisional = response.status < 200;
        match self.state {
            ClientState::Calling | ClientState::Trying | ClientState::Proceeding if provisional => {
                // RFC 3261 17.1.1.2: a provisional response in Calling moves
                // to Proceeding and stops timer A (and, for INVITE, timer B).
                // 17.1.2.2: in non-INVITE Proceeding, E keeps firing at T2.
                if self.is_invite() {
                    self.retransmit_at = None;
                    self.timeout_at = None;
                } else if self.retransmit_at.is_some() {
                    self.retransmit_interval = self.timers.t2;
                }
                self.state = ClientState::Proceeding;
                out.push_back(TransactionOutput::IncomingResponse {
                    key: self.key.clone(),
                    response,
                });
            }
            ClientState::Calling | ClientState::Proceeding
                if self.is_invite() && response.status < 300 =>
            {
                // RFC 3261 17.1.1.2: a 2xx terminates the INVITE client
                // transaction; the TU ACKs it end-to-end.
                self.state = ClientState::Terminated;
                out.push_back(TransactionOutput::IncomingResponse {
                    key: self.key.clone(),
                    response,
                });
            }
            ClientState::Calling | ClientState::Proceeding if self.is_invite() => {
                // RFC 3261 17.1.1.2: 300-699 -> send ACK, go to Completed,
                // timer D = 32 s on unreliable transports, zero otherwise.
                let ack = build_ack(&self.request, &response).to_bytes();
                self.transmit(ack.clone(), out);
                self.ack = Some(ack);
                self.enter_completed(now, Duration::from_secs(32));
                out.push_back(TransactionOutput::IncomingResponse {
                    key: self.key.clone(),
                    response,
                });
            }
            ClientState::Trying | ClientState::Proceeding => {
                // RFC 3261 17.1.2.2: a final response -> Completed, timer K
                // = T4 on unreliable transports.
                self.enter_completed(now, self.timers.t4);
                out.push_back(TransactionOutput::IncomingResponse {
                    key: self.key.clone(),
                    response,
                });
            }
            ClientState::Completed => {
                // RFC 3261 17.1.1.2: retransmitted finals are re-ACKed, not
                // passed up; 17.1.2.2 absorbs them silently.
                if let (Some(ack), false) = (&self.ack, provisional) {
                    self.transmit(ack.clone(), out);
                }
            }
            _ => {}
        }
    }

    fn enter_completed(&mut self, now: Instant, linger: Duration) {
        self.state = ClientState::Completed;
        self.retransmit_at = None;
        self.timeout_at = None;
        if self.transport.is_reliable() {
            self.state = ClientState::Terminated;
        } else {
            self.linger_until = Some(now + linger);
        }
    }
}

/// RFC 3261 17.1.1.3: the ACK for a non-2xx final response copies the
/// Request-URI, Call-ID, From, top Via and Route of the INVITE, takes To
/// (with its tag) from the response and uses the INVITE's CSeq number.
pub(crate) fn build_ack(invite: &Request, response: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(via) = invite.headers.get_all_split("Via").first() {
        ack.headers.push("Via", *via);
    }
    for route in invite.headers.get_all("Route") {
        ack.headers.push("Route", route);
    }
    ack.headers.push("Max-Forwards", "70");
    if let Some(from) = invite.headers.get("From") {
        ack.headers.push("From", from);
    }
    if let Some(to) = response.headers.get("To") {
        ack.headers.push("To", to);
    }
    if let Some(call_id) = invite.call_id() {
        ack.headers.push("Call-ID", call_id);
    }
    let number = invite.cseq().map(|(n, _)| n).unwrap_or(0);
    ack.headers.push("CSeq", format!("{number} ACK"));
    ack
}
