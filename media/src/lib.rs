//! Media plane of callgrid: the RTP side of the B2BUA, for calls whose media
//! is anchored on this node.
//!
//! # What this crate owns
//! Everything between a UDP socket and a call-control decision: G.711
//! companding ([`g711`]), RTP packets and our outgoing numbering ([`rtp`]),
//! RFC 4733 DTMF ([`dtmf`]), the audio subset of SDP and codec negotiation
//! ([`sdp`]), prompts and tones ([`prompt`]), stereo call recording
//! ([`recorder`]) and the per-call media session ([`session`]) that plays
//! prompts, relays and transcodes between the customer and agent legs, and
//! reports DTMF and RTP timeouts. It does not own SIP, queues or agents; the
//! call-control actors drive it and consume its [`session::MediaEvent`]s.
//!
//! # Main types and call order
//! 1. A node creates one [`session::PortAllocator`] and spawns a
//!    [`session::CallMedia`] per call, getting a [`session::CallMediaHandle`]
//!    and an event receiver.
//! 2. For each leg, call control calls `add_leg` (binds a socket, returns the
//!    port for our SDP via [`sdp::build_sdp`]), parses the peer's SDP with
//!    [`sdp::parse_sdp`], picks a codec with [`sdp::negotiate`], and calls
//!    `set_remote`.
//! 3. It plays prompts (`play` / `stop_play`, awaiting `PlayDone`), collects
//!    `Dtmf` events, then `bridge`s customer and agent (optionally
//!    recording), `unbridge`s for holds or transfers, and finally `stop`s,
//!    which finishes the recording and releases the ports.
//!
//! The session's decisions live in a pure core, [`session::MediaCore`]
//! (time and bytes passed in, outputs polled); the tokio task around it only
//! moves datagrams, commands and timers.
//!
//! # Invariants
//! - Packets from the network are never trusted: a malformed or unexpected
//!   packet is counted and dropped, never a panic or an error to the caller.
//! - Each leg has its own SSRC, sequence and timestamp space; whatever we
//!   send on a leg (prompt, relayed audio, DTMF) continues that space.
//! - Until a leg's first packet arrives we send to its SDP address; after
//!   that we send to where its packets come from (symmetric RTP, RFC 4961).
//! - A recording's two channels stay sample-aligned and memory stays bounded.

pub mod dtmf;
pub mod error;
pub mod g711;
pub mod prompt;
pub mod recorder;
pub mod rtp;
pub mod sdp;
pub mod session;

pub use error::MediaError;
pub use g711::Codec;
