//! SIP for callgrid: messages, parsing, digest auth, transactions, dialogs,
//! registrar rules and a thin tokio transport.
//!
//! **What this crate owns.** Everything between bytes on a socket and the
//! call-control code: framing, parsing and validating SIP messages, the
//! RFC 3261 transaction layer, dialog state, REGISTER interpretation and
//! digest authentication. It owns its message model and parser instead of
//! using rsip 0.4, because rsip mis-parses real traffic: measured against
//! the RFC 4475 torture messages it rejects compact header names, `tel:` and
//! IPv6 URIs, folded headers, bare-LF line ends and extension methods, does
//! not frame a stream and does not enforce Content-Length. Carriers send all
//! of those, so rsip is not used.
//!
//! **Main types.** [`message::Request`], [`message::Response`] and
//! [`message::Message`] with typed accessors through
//! [`message::SipMessage`]; [`uri::Uri`], [`name_addr::NameAddr`],
//! [`via::Via`]; [`parse::parse_message`] for datagrams and
//! [`framing::StreamFramer`] for TCP; [`transaction::TransactionLayer`];
//! [`dialog::Dialog`]; [`registrar::parse_register`]; [`digest`]'s
//! challenge/credentials/nonce helpers; [`transport::SipTransport`].
//!
//! **Call order.** The driver (see `transport`) receives bytes, parses
//! them, and feeds messages to `TransactionLayer::handle_incoming(now, ..)`.
//! It then drains `poll_output()` until `None` (transmits go to the
//! transport, events to the call logic), and sleeps until `poll_timeout()`,
//! calling `handle_timeout(now)` when it passes. The call logic answers with
//! `send_response`/`send_request` and drains outputs again. A UAS that
//! sends a 2xx to INVITE also runs a [`transaction::Retransmit2xx`] until
//! the ACK arrives (RFC 3261 13.3.1.4), and a [`dialog::Dialog`] built from
//! the INVITE to make in-dialog requests. Bad input from the network comes
//! out of the transport as an error; answer it with
//! [`parse::error_response`] when that returns a 400.
//!
//! **Invariants.** Everything except `transport` is sans-IO: time is passed
//! in as `now: Instant`, randomness as an RNG argument (or `thread_rng` for
//! identifiers), and nothing here reads the clock or touches a socket. Bytes
//! from the network never cause a panic: a bad message is an `Err` carrying
//! what is wrong, and [`parse::error_response`] turns it into a 400 when the
//! request can be addressed. Serialised messages always carry a correct
//! Content-Length.

pub mod dialog;
pub mod digest;
pub mod framing;
pub mod headers;
pub mod message;
pub mod name_addr;
pub mod parse;
pub mod registrar;
mod text;
pub mod transaction;
pub mod transport;
pub mod uri;
pub mod via;

pub use framing::StreamFramer;
pub use message::{Message, Method, Request, Response, SipMessage};
pub use parse::{error_response, parse_message, ParseError, MAX_MESSAGE_BYTES};
pub use text::Param;
pub use transaction::{TransactionKey, TransactionLayer, TransactionOutput, Transport};
