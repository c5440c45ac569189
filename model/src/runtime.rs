//! Runtime records replicated through Raft so that any node can act on them: phone
//! registrations (so the node that owns a call can ring any phone), agent sessions, and
//! final CDRs. Times are Unix milliseconds stamped by the proposer (STYLE.md 1: apply is a
//! pure function of the state and the entry).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use crate::ids::*;

/// One registered contact of an extension (RFC 3261 10). A phone registering with two
/// nodes (R1.3) has two bindings, one per node, told apart by `node`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub tenant: TenantId,
    pub extension: ExtensionId,
    /// The Contact URI as the phone gave it.
    pub contact: String,
    /// Where the REGISTER came from: requests go here (the phone may sit behind NAT).
    pub source: SocketAddr,
    pub transport: String,
    /// The node that took the REGISTER.
    pub node: NodeId,
    pub call_id: String,
    pub cseq: u32,
    pub expires_at_ms: u64,
}

/// Where an agent is in its state machine (R4.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum AgentStatus {
    SignedOut,
    NotReady { reason: String },
    Ready,
    Reserved { call: CallId },
    Ringing { call: CallId },
    Talking { call: CallId },
    AfterCallWork { until_ms: u64 },
}

impl AgentStatus {
    pub fn name(&self) -> &'static str {
        match self {
            AgentStatus::SignedOut => "signed_out",
            AgentStatus::NotReady { .. } => "not_ready",
            AgentStatus::Ready => "ready",
            AgentStatus::Reserved { .. } => "reserved",
            AgentStatus::Ringing { .. } => "ringing",
            AgentStatus::Talking { .. } => "talking",
            AgentStatus::AfterCallWork { .. } => "after_call_work",
        }
    }
    /// The call the agent is bound to, if any (I1: at most one).
    pub fn call(&self) -> Option<&CallId> {
        match self {
            AgentStatus::Reserved { call }
            | AgentStatus::Ringing { call }
            | AgentStatus::Talking { call } => Some(call),
            _ => None,
        }
    }
}

/// A signed-in agent's session, as its AgentActor last checkpointed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSession {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub extension: ExtensionId,
    pub status: AgentStatus,
    /// When the agent entered `status`.
    pub since_ms: u64,
    /// When the agent last became ready: the longest-idle rule (R3.2) orders by this.
    pub idle_since_ms: u64,
    pub calls_answered: u64,
    /// The node hosting the AgentActor when this was written.
    pub owner: NodeId,
    /// Monotonic per agent; a checkpoint older than the stored one is ignored.
    pub version: u64,
}

/// Why a call ended the way it did (R8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// An agent answered.
    Answered,
    /// The caller hung up before reaching an agent.
    Abandoned,
    /// The platform released the call (max wait, IVR hang-up node, no route).
    Released,
    /// Refused before answer (unknown number, not a trunk, overload).
    Rejected,
    /// A technical failure ended the call.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupBy {
    Caller,
    Agent,
    System,
}

/// One IVR step of a call's trail (R5.6): node, key pressed if any, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IvrStep {
    pub node: String,
    pub key: Option<String>,
    pub at_ms: u64,
}

/// The call detail record, one per call (I2), with the multi-leg trail (R1.7, R8.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cdr {
    pub call_id: CallId,
    pub tenant: Option<TenantId>,
    pub entry_node: NodeId,
    pub access_code: Option<String>,
    pub landing_code: Option<String>,
    pub caller: String,
    pub dialled: String,
    pub trunk: Option<TrunkId>,
    pub started_at_ms: u64,
    pub answered_at_ms: Option<u64>,
    pub ended_at_ms: u64,
    pub ivr: Vec<IvrStep>,
    pub queue: Option<QueueId>,
    pub enqueued_at_ms: Option<u64>,
    pub wait_ms: u64,
    pub agent: Option<AgentId>,
    pub extension: Option<ExtensionId>,
    pub agent_node: Option<NodeId>,
    /// When the queue last handed the call an agent (stamped by the call's node on the offer):
    /// the order of offers within a queue is read from this (I4).
    #[serde(default)]
    pub offered_at_ms: Option<u64>,
    /// When the agent's phone started ringing and when it answered.
    pub ring_started_at_ms: Option<u64>,
    pub agent_answered_at_ms: Option<u64>,
    pub ring_ms: u64,
    pub talk_ms: u64,
    pub hangup_by: HangupBy,
    pub disposition: Disposition,
    pub reason: Option<String>,
    pub recording_id: Option<String>,
}
