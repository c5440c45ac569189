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
    NotReady {
        reason: String,
    },
    Ready,
    Reserved {
        call: CallId,
    },
    Ringing {
        call: CallId,
    },
    Talking {
        call: CallId,
    },
    AfterCallWork {
        until_ms: u64,
    },
    /// R4.7: away for `reason`, set by manager `by`; only a manager ends it.
    Away {
        reason: AwayReason,
        by: AgentId,
    },
}

/// R4.7: the away states only a manager sets (training, study, meeting, interview).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwayReason {
    Training,
    Study,
    Meeting,
    Interview,
}

impl AwayReason {
    pub fn name(self) -> &'static str {
        match self {
            AwayReason::Training => "training",
            AwayReason::Study => "study",
            AwayReason::Meeting => "meeting",
            AwayReason::Interview => "interview",
        }
    }
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
            AgentStatus::Away { .. } => "away",
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
    /// R4.7: time spent in each manager-set away state (by reason name), ended stretches
    /// only (the current one runs from `since_ms`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub away_ms: std::collections::BTreeMap<String, u64>,
    /// R4.9: time spent in each state (by `AgentStatus::name`), ended stretches only (the
    /// current one runs from `since_ms`): `talking` is the agent's talk time.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub state_ms: std::collections::BTreeMap<String, u64>,
    /// The node hosting the AgentActor when this was written.
    pub owner: NodeId,
    /// Monotonic per agent; a checkpoint older than the stored one is ignored.
    pub version: u64,
    /// The owner that wrote it (absent in records older than failover).
    #[serde(default)]
    pub fence: Option<Fence>,
}

/// Why a call ended the way it did (R8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// An agent answered.
    Answered,
    /// The caller hung up before reaching an agent.
    Abandoned,
    /// R3.4: a queue rule transferred the call to an external number, which answered.
    Transferred,
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
    /// The call's priority in its queue (higher first, then arrival: I4).
    #[serde(default)]
    pub priority: u8,
    pub wait_ms: u64,
    pub agent: Option<AgentId>,
    pub extension: Option<ExtensionId>,
    pub agent_node: Option<NodeId>,
    /// When the queue last handed the call an agent (stamped by the call's node on the offer):
    /// the order of offers within a queue is read from this (I4).
    #[serde(default)]
    pub offered_at_ms: Option<u64>,
    /// When the queue first handed the call an agent: a call offered, then put back (the
    /// agent did not answer, or its node died), keeps its turn from here (I4).
    #[serde(default)]
    pub first_offered_at_ms: Option<u64>,
    /// When the agent's phone started ringing and when it answered.
    pub ring_started_at_ms: Option<u64>,
    pub agent_answered_at_ms: Option<u64>,
    pub ring_ms: u64,
    pub talk_ms: u64,
    pub hangup_by: HangupBy,
    pub disposition: Disposition,
    pub reason: Option<String>,
    pub recording_id: Option<String>,
    /// One mark per takeover of the call by another node (I3): where it moved, the media
    /// gap, and the recording part the new node wrote.
    #[serde(default)]
    pub failovers: Vec<FailoverMark>,
    /// The queue rules that moved the call on (R3.3-R3.6), in order: the trail of its
    /// transfers between queues and flows, and the rule behind a release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleStep>,
    /// R3.9: the estimated-wait announcements the caller heard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wait_announcements: Vec<WaitAnnounced>,
    /// R3.8: how many periodic announcements the caller heard while waiting.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub periodic_announcements: u32,
    /// R4.5: when the caller started hearing the agent's number (the bridge followed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_announced_at_ms: Option<u64>,
    /// R3.14: the routing rules that applied to the call, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed_by: Vec<String>,
    /// R3.16: the call came from a repeat caller and was held for these agents first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_caller: Option<RepeatMark>,
    /// R3.20: the caller left a message in this queue's voicemail (in the call's recording).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<VoicemailMark>,
    /// R3.11: the caller chose to be called back (or hung up and kept its place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackMark>,
    /// R3.4: a queue rule transferred the call to an external number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalMark>,
}

/// R3.4: the course of a transfer to an external number: dialled through `trunk` when the
/// rule fired, answered (the caller was bridged to it) or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalMark {
    pub number: String,
    pub trunk: TrunkId,
    pub dialled_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at_ms: Option<u64>,
}

/// R3.11: a virtual call: when the caller left the line, how, and the callback's course.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackMark {
    pub queue: QueueId,
    pub requested_at_ms: u64,
    /// `key` (offline waiting) or `hangup` (an early hang-up kept its place).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialled_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at_ms: Option<u64>,
}

/// R3.20: a message left while queued: when recording started and how long it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoicemailMark {
    pub queue: QueueId,
    pub started_at_ms: u64,
    pub duration_ms: u64,
}

/// R3.20: a queue voicemail as the center works it: listed by time and status, handled by
/// an agent, with the handling time. Created from the CDR of the call that left it (so it is
/// stored with the call: its id is the call id, its audio the call's recording).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voicemail {
    pub tenant: TenantId,
    pub id: String,
    pub queue: QueueId,
    pub caller: String,
    pub at_ms: u64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<String>,
    pub status: VoicemailStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_by: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_at_ms: Option<u64>,
}

impl Voicemail {
    /// From the message to its handling (R3.20's "handling time").
    pub fn handling_ms(&self) -> Option<u64> {
        self.handled_at_ms.map(|h| h.saturating_sub(self.at_ms))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoicemailStatus {
    New,
    Handled,
}

impl Cdr {
    /// The agent who answered the call, if one did.
    pub fn answered_by(&self) -> Option<&AgentId> {
        self.agent_answered_at_ms.and(self.agent.as_ref())
    }
}

/// R3.16: how a repeat caller's call was routed: its earlier calls in the queue's period,
/// and the agents it was held for (best first) until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatMark {
    pub queue: QueueId,
    pub calls: u32,
    pub preferred: Vec<AgentId>,
    pub until_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An estimated-wait announcement (R3.9): when, with how many calls ahead, and the minutes
/// spoken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitAnnounced {
    pub at_ms: u64,
    pub ahead: usize,
    pub minutes: u64,
}

/// A queue rule applied to a call: in `queue`, `rule` held at `at_ms` and did `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleStep {
    pub queue: QueueId,
    pub rule: crate::config::QueueRule,
    pub action: crate::config::RuleAction,
    pub at_ms: u64,
}

/// A call moved to another node because its node was declared down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailoverMark {
    pub from_node: NodeId,
    pub to_node: NodeId,
    /// When the new owner took the call over.
    pub at_ms: u64,
    /// Media silence: from the old node's last heartbeat (the last moment it is known to have
    /// been alive) to the new node's re-INVITE being answered by the customer.
    pub gap_ms: u64,
    /// The recording part written by the new node (its id names the node), and where it
    /// starts in the call's recording timeline (from the bridge).
    pub recording_id: Option<String>,
    pub recording_offset_ms: u64,
}

/// Who writes a checkpoint: a node at an epoch. The state machine refuses writes from a node
/// that is declared down, or from an older epoch of it, so an owner that lost its actors to
/// another node can never overwrite the new owner's state (no split brain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub node: NodeId,
    pub epoch: u64,
}

/// A node's liveness as the cluster decided it (through Raft).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLiveness {
    /// Bumped each time the node rejoins after being declared down.
    pub epoch: u64,
    pub down: bool,
    /// The proposer's clock at the node's last committed heartbeat.
    pub last_heartbeat_ms: u64,
    /// When `down` last changed.
    pub since_ms: u64,
}

/// One SIP dialog leg of a call, as checkpointed: enough to send in-dialog requests from
/// another node (RFC 3261 12: Call-ID, tags, CSeq, route set, remote target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegCheckpoint {
    pub sip_call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Name-addrs without tags, as SIP text.
    pub local_uri: String,
    pub remote_uri: String,
    pub local_seq: u32,
    pub remote_seq: Option<u32>,
    pub remote_target: String,
    pub route_set: Vec<String>,
    /// Where the peer's signalling came from (we send there: symmetric signalling).
    pub peer: String,
    pub transport: String,
    /// The peer's last SDP, so media can be pointed at it before the re-INVITE's answer.
    pub remote_sdp: Option<String>,
}

/// An outstanding INVITE to an agent phone (ringing), so a new owner can CANCEL it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingInvite {
    pub sip_call_id: String,
    /// The INVITE as sent (SIP text): a CANCEL copies its Via, From, To, Call-ID and URI.
    pub invite: String,
    pub dest: String,
    pub transport: String,
}

/// Where a call stands, as far as a new owner needs to resume it (DESIGN.md "Failover").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum CallPhase {
    /// Answered by the platform; the IVR has not started.
    Setup,
    /// In the IVR, at `node` of `flow` (resumes there); no `flow`: the access code's entry
    /// flow.
    Ivr {
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<FlowId>,
    },
    Queued {
        queue: QueueId,
        priority: u8,
        enqueued_at_ms: u64,
        /// R3.10: the other queues the call waits in at the same time.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<QueueId>,
        /// R3.11: a virtual call: the caller is not on the line (it is called back).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        callback: bool,
    },
    /// Ringing `agent` for `queue` (offered again after a takeover).
    Offering {
        queue: QueueId,
        priority: u8,
        enqueued_at_ms: u64,
        agent: AgentId,
        extension: ExtensionId,
        /// R3.10: the other queues the call waits in again if the agent does not answer.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<QueueId>,
        /// R3.11: ringing the agent for a virtual call (the caller is called back on answer).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        callback: bool,
    },
    Talking {
        queue: QueueId,
        agent: AgentId,
        bridged_at_ms: u64,
    },
    /// R3.4: transferred to an external number (the CDR's `external` mark): dialled, or
    /// `answered` and bridged. A new owner re-INVITEs both legs of an answered transfer and
    /// dials a ringing one again.
    External {
        number: String,
        trunk: TrunkId,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        answered: bool,
    },
    /// R3.20: leaving a message in `queue`'s voicemail: its prompt plays (`until_ms` None),
    /// or the caller is recorded until `until_ms`. A new owner re-INVITEs the caller and
    /// plays the prompt again, or records the rest of the message in a part of its own (the
    /// failover mark names it).
    Voicemail {
        queue: QueueId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<u64>,
    },
    /// Playing a last prompt before the platform hangs up.
    Releasing,
}

/// A call's compact checkpoint: replicated at key transitions, so any node can rebuild the
/// CallActor exactly (I3). Removed by the call's CDR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallCheckpoint {
    pub call_id: CallId,
    pub fence: Fence,
    /// Monotonic per call across owners; an older checkpoint never replaces a newer one.
    pub version: u64,
    pub at_ms: u64,
    pub route: crate::routing::Route,
    pub phase: CallPhase,
    /// The CDR so far (trail, times, failover marks).
    pub cdr: Cdr,
    pub customer: LegCheckpoint,
    pub agent: Option<LegCheckpoint>,
    pub ringing: Option<PendingInvite>,
}
