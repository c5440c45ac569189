//! The RFC 3261 section 17 transaction layer, sans-IO.
//!
//! [`TransactionLayer`] owns every client and server transaction of a node.
//! Feed it with `handle_incoming`, `send_request`, `send_response` and
//! `handle_timeout`; after each call drain `poll_output()` until `None`, then
//! sleep until `poll_timeout()`. Time is always an argument.
//!
//! Responses from a server transaction go back to the packet's source
//! address over the transport it arrived on (symmetric response routing,
//! RFC 3581), which is what NATed phones need; the Via is stamped with
//! `received`/`rport` so downstream hops see the same.

mod client;
mod layer;
mod retransmit;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use crate::message::{Method, Request, Response};

pub use layer::{TransactionError, TransactionLayer};
pub use retransmit::{Retransmit2xx, Retransmit2xxOutput};

/// The transport a message travels on. Only reliability matters to the
/// transaction layer (RFC 3261 17: no retransmissions on reliable ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// Identifies a transaction (RFC 3261 17.1.3 / 17.2.3): the top Via branch
/// and sent-by plus the method, where ACK maps to INVITE. `server`
/// separates the two halves so a node talking to itself cannot confuse
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    pub branch: String,
    pub sent_by: String,
    pub method: Method,
    pub server: bool,
}

/// RFC 3261 17.1.1.1 timer values; tests may shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// What the layer asks its driver or its transaction user to do.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionOutput {
    /// Send these bytes.
    Transmit {
        dest: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
    },
    /// A new request created a server transaction; answer it with
    /// `send_response(key, ..)`. Retransmissions are absorbed.
    IncomingRequest {
        key: TransactionKey,
        request: Request,
        source: SocketAddr,
        transport: Transport,
    },
    /// A CANCEL matched the INVITE server transaction `invite_key` (RFC 3261
    /// 9.2). Answer 200 on `cancel_key` and, if the INVITE is still
    /// unanswered, 487 on `invite_key`.
    Cancelled {
        invite_key: TransactionKey,
        cancel_key: TransactionKey,
        request: Request,
        source: SocketAddr,
    },
    /// An ACK outside any transaction: the ACK for a 2xx (RFC 3261 17.1.1.3
    /// makes it end-to-end); hand it to the dialog.
    IncomingAck {
        request: Request,
        source: SocketAddr,
    },
    /// A response matched a client transaction.
    IncomingResponse {
        key: TransactionKey,
        response: Response,
    },
    /// A response matched no transaction, e.g. a retransmitted 2xx to an
    /// INVITE whose transaction already ended; the TU re-ACKs it.
    StrayResponse {
        response: Response,
        source: SocketAddr,
    },
    /// Timer B or F (client) or H (server, no ACK) fired: the transaction
    /// failed (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1).
    Timeout { key: TransactionKey },
    /// The transport reported a failure sending for this client transaction
    /// (RFC 3261 17.1.4).
    TransportError { key: TransactionKey },
}

#[cfg(test)]
mod tests;
