//! # actors: the call-control brain
//!
//! Pure state machines and their ractor drivers:
//! - `agent::AgentMachine` (one per agent): sign in/out, ready/not-ready, reservations, ACW.
//!   It alone decides whether an agent may take a call (I1).
//! - `queue::QueueMachine` (one per skill queue): waiting calls by priority then arrival (I4),
//!   idle agents by idle time; offers by reserve-then-offer.
//! - `call::CallMachine` (one per call): IVR, queueing, offer, bridge, hang-up, CDR (I2).
//!
//! Each machine takes `handle(now_ms, input)`, yields `poll_output()`, and asks to be woken at
//! `poll_timeout()`: no clock, no IO, so tests run on a virtual clock. The drivers in `node`
//! (ractor actors, the SIP endpoint, the mesh over ractor_cluster) turn outputs into messages,
//! SIP and RTP.

pub mod agent;
pub mod call;
pub mod node;
pub mod queue;
