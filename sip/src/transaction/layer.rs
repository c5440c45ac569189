//! The transaction table: matching, dispatch and timer aggregation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::client::{ClientState, ClientTransaction};
use super::server::{ServerState, ServerTransaction};
use super::{Timers, TransactionKey, TransactionOutput, Transport};
use crate::message::{Message, Method, Request, Response, SipMessage, BRANCH_COOKIE};

/// Mistakes by the transaction user (not the network).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionError {
    #[error("no server transaction {0:?}: it ended or never existed")]
    UnknownTransaction(TransactionKey),
    #[error("server transaction {0:?} already sent a final response")]
    AlreadyFinal(TransactionKey),
}

/// All transactions of one node. See the module docs for the call order.
///
/// Every operation but a transport error touches one transaction, so it costs O(log n) in
/// the number of live transactions (a transport error still scans the client transactions
/// for those towards its destination): a transaction
/// is dropped when it terminates, and its next deadline goes into a timer heap. The heap is
/// lazy: each key keeps only its earliest scheduled entry (`scheduled`); an entry that fires
/// before the transaction is due just reschedules it, and an entry whose key was rescheduled
/// or dropped is skipped (its `slots` entry is gone).
#[derive(Debug, Default)]
pub struct TransactionLayer {
    timers: Timers,
    clients: HashMap<TransactionKey, ClientTransaction>,
    servers: HashMap<TransactionKey, ServerTransaction>,
    outputs: VecDeque<TransactionOutput>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    slots: HashMap<u64, TransactionKey>,
    scheduled: HashMap<TransactionKey, (Instant, u64)>,
    next_slot: u64,
}

/// The transaction key of a message per RFC 3261 17.1.3 / 17.2.3. Requests
/// whose branch lacks the RFC 3261 magic cookie come from RFC 2543 peers;
/// for them a key is synthesised from Call-ID, CSeq number, From tag and the
/// top Via, which is what 17.2.3's fallback compares and which an ACK or
/// CANCEL shares with its INVITE.
fn key_for(message: &impl SipMessage, method: &Method, server: bool) -> Option<TransactionKey> {
    let via = message.top_via()?;
    let method = if *method == Method::Ack {
        Method::Invite
    } else {
        method.clone()
    };
    let branch = match via.branch() {
        Some(b) if b.starts_with(BRANCH_COOKIE) => b.to_string(),
        other => {
            let (number, _) = message.cseq()?;
            let from_tag = message
                .from()
                .and_then(|f| f.tag().map(str::to_string))
                .unwrap_or_default();
            format!(
                "rfc2543;{};{number};{from_tag};{}",
                message.call_id()?,
                other.unwrap_or("")
            )
        }
    };
    Some(TransactionKey {
        branch,
        sent_by: via.sent_by(),
        method,
        server,
    })
}

impl TransactionLayer {
    pub fn new() -> TransactionLayer {
        TransactionLayer::default()
    }

    pub fn with_timers(timers: Timers) -> TransactionLayer {
        TransactionLayer {
            timers,
            ..TransactionLayer::default()
        }
    }

    /// Number of live transactions (client, server).
    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// A message parsed from the network.
    pub fn handle_incoming(
        &mut self,
        now: Instant,
        message: Message,
        source: SocketAddr,
        transport: Transport,
    ) {
        match message {
            Message::Request(request) => self.handle_request(now, request, source, transport),
            Message::Response(response) => self.handle_response(now, response, source),
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        mut request: Request,
        source: SocketAddr,
        transport: Transport,
    ) {
        // RFC 3261 18.2.1 / RFC 3581 4: record where the request really
        // came from in the top Via before anyone copies it into a response.
        if let Some(mut via) = request.top_via() {
            via.stamp_source(source);
            request.headers.remove_first_value("Via");
            request.headers.push_front("Via", via.to_string());
        }
        let Some(key) = key_for(&request, &request.method, true) else {
            tracing::warn!(%source, "request without a usable Via dropped");
            return;
        };
        if request.method == Method::Ack {
            // RFC 3261 17.2.3: an ACK matches the INVITE server transaction
            // only for non-2xx responses; any other ACK is end-to-end.
            let to_tu = match self.servers.get_mut(&key) {
                Some(tx) => {
                    let to_tu = tx.handle_ack(now);
                    self.touch(&key);
                    to_tu
                }
                None => true,
            };
            if to_tu {
                self.outputs
                    .push_back(TransactionOutput::IncomingAck { request, source });
            }
            return;
        }
        if let Some(tx) = self.servers.get_mut(&key) {
            tracing::trace!(method = %request.method, "request retransmission absorbed");
            tx.handle_retransmission(&mut self.outputs);
            self.touch(&key);
            return;
        }
        let tx = ServerTransaction::new(
            now,
            key.clone(),
            request.clone(),
            source,
            transport,
            self.timers,
        );
        self.servers.insert(key.clone(), tx);
        self.touch(&key);
        if request.method == Method::Cancel {
            // RFC 3261 9.2: a CANCEL matches the INVITE server transaction
            // with the same branch and sent-by.
            let invite_key = TransactionKey {
                method: Method::Invite,
                ..key.clone()
            };
            if self.servers.contains_key(&invite_key) {
                self.outputs.push_back(TransactionOutput::Cancelled {
                    invite_key,
                    cancel_key: key,
                    request,
                    source,
                });
                return;
            }
        }
        self.outputs.push_back(TransactionOutput::IncomingRequest {
            key,
            request,
            source,
            transport,
        });
    }

    fn handle_response(&mut self, now: Instant, response: Response, source: SocketAddr) {
        let key = response
            .cseq()
            .and_then(|(_, method)| key_for(&response, &method, false))
            .filter(|key| self.clients.contains_key(key));
        match key {
            // RFC 3261 17.1.3: branch, sent-by and CSeq method all match.
            Some(key) => {
                if let Some(tx) = self.clients.get_mut(&key) {
                    tx.handle_response(now, response, &mut self.outputs);
                }
                self.touch(&key);
            }
            None => self
                .outputs
                .push_back(TransactionOutput::StrayResponse { response, source }),
        }
    }

    /// Starts a client transaction for `request`, whose top Via must carry a
    /// fresh branch. An ACK creates no transaction (RFC 3261 17.1.1.3: the
    /// ACK for a 2xx is the TU's); it is just transmitted.
    pub fn send_request(
        &mut self,
        now: Instant,
        request: Request,
        dest: SocketAddr,
        transport: Transport,
    ) -> TransactionKey {
        let key = key_for(&request, &request.method, false).unwrap_or_else(|| TransactionKey {
            branch: String::new(),
            sent_by: String::new(),
            method: request.method.clone(),
            server: false,
        });
        if key.branch.is_empty() {
            // The TU broke the contract; report it as a failed send rather
            // than putting a request we cannot match on the wire.
            tracing::error!(method = %request.method, "request without Via branch not sent");
            self.outputs
                .push_back(TransactionOutput::TransportError { key: key.clone() });
            return key;
        }
        if request.method == Method::Ack {
            self.outputs.push_back(TransactionOutput::Transmit {
                dest,
                transport,
                bytes: request.to_bytes(),
            });
            return key;
        }
        let tx = ClientTransaction::start(
            now,
            key.clone(),
            request,
            dest,
            transport,
            self.timers,
            &mut self.outputs,
        );
        self.clients.insert(key.clone(), tx);
        self.touch(&key);
        key
    }

    /// Sends the TU's response on server transaction `key`.
    pub fn send_response(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        response: Response,
    ) -> Result<(), TransactionError> {
        let tx = self
            .servers
            .get_mut(key)
            .ok_or_else(|| TransactionError::UnknownTransaction(key.clone()))?;
        let sent = tx.send_response(now, response, &mut self.outputs);
        self.touch(key);
        if sent {
            Ok(())
        } else {
            Err(TransactionError::AlreadyFinal(key.clone()))
        }
    }

    /// The driver failed to send to `dest`: RFC 3261 17.1.4 says every
    /// client transaction towards it has failed.
    pub fn handle_transport_error(
        &mut self,
        _now: Instant,
        dest: SocketAddr,
        transport: Transport,
    ) {
        let mut failed = Vec::new();
        for tx in self.clients.values_mut() {
            if tx.dest == dest && tx.transport == transport && tx.state != ClientState::Terminated {
                tx.state = ClientState::Terminated;
                self.outputs.push_back(TransactionOutput::TransportError {
                    key: tx.key.clone(),
                });
                failed.push(tx.key.clone());
            }
        }
        for key in &failed {
            self.touch(key);
        }
    }

    /// Fires the timers due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, slot))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            // Rescheduled or dropped since: skip.
            let Some(key) = self.slots.remove(&slot) else {
                continue;
            };
            self.scheduled.remove(&key);
            if key.server {
                if let Some(tx) = self.servers.get_mut(&key) {
                    if tx.next_deadline().is_some_and(|t| t <= now) {
                        tx.handle_timeout(now, &mut self.outputs);
                    }
                }
            } else if let Some(tx) = self.clients.get_mut(&key) {
                if tx.next_deadline().is_some_and(|t| t <= now) {
                    tx.handle_timeout(now, &mut self.outputs);
                }
            }
            self.touch(&key);
        }
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<TransactionOutput> {
        self.outputs.pop_front()
    }

    /// The earliest timer of any transaction. Stale heap entries on top (a timer that was
    /// stopped or moved later) are dropped here, so the answer is exact.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, slot))) = self.heap.peek().copied() {
            let Some(key) = self.slots.get(&slot).cloned() else {
                self.heap.pop();
                continue;
            };
            let actual = self.deadline_of(&key);
            if actual == Some(at) {
                return Some(at);
            }
            self.heap.pop();
            self.slots.remove(&slot);
            self.scheduled.remove(&key);
            self.schedule(&key, actual);
        }
        None
    }

    /// The next deadline of live transaction `key`; a terminated one is dropped here.
    fn deadline_of(&mut self, key: &TransactionKey) -> Option<Instant> {
        if key.server {
            match self.servers.get(key) {
                Some(tx) if tx.state == ServerState::Terminated => {
                    self.servers.remove(key);
                    None
                }
                Some(tx) => tx.next_deadline(),
                None => None,
            }
        } else {
            match self.clients.get(key) {
                Some(tx) if tx.state == ClientState::Terminated => {
                    self.clients.remove(key);
                    None
                }
                Some(tx) => tx.next_deadline(),
                None => None,
            }
        }
    }

    /// After anything happened to transaction `key`: drop it if it terminated, else make
    /// sure its next deadline is in the heap.
    fn touch(&mut self, key: &TransactionKey) {
        let deadline = self.deadline_of(key);
        self.schedule(key, deadline);
    }

    fn schedule(&mut self, key: &TransactionKey, deadline: Option<Instant>) {
        match deadline {
            None => {
                if let Some((_, slot)) = self.scheduled.remove(key) {
                    self.slots.remove(&slot);
                }
            }
            // An entry at or before it is already there: it fires first and reschedules.
            Some(at) if self.scheduled.get(key).is_some_and(|(t, _)| *t <= at) => {}
            Some(at) => {
                if let Some((_, old)) = self.scheduled.remove(key) {
                    self.slots.remove(&old);
                }
                let slot = self.next_slot;
                self.next_slot = self.next_slot.wrapping_add(1);
                self.heap.push(Reverse((at, slot)));
                self.slots.insert(slot, key.clone());
                self.scheduled.insert(key.clone(), (at, slot));
            }
        }
    }
}
