//! The node's public surface for the REST API (`ops`): what an API handler may ask of the
//! call-control runtime. Everything here is safe to call from any node: requests for actors
//! that live elsewhere travel over the mesh (ractor_cluster) with a timeout.

use serde::{Deserialize, Serialize};

use model::{AgentId, AgentSession, CallId, NodeId, QueueId, TenantId};

use crate::queue::QueueStats;

/// An operator's command to an agent (R4.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum AgentCommand {
    SignIn {
        extension: model::ExtensionId,
    },
    Ready,
    NotReady {
        reason: String,
    },
    SignOut,
    /// R4.7: a manager (checked by the caller) sends the agent away.
    Away {
        reason: model::AwayReason,
        by: AgentId,
    },
    /// R4.7: a manager ends the away state.
    EndAway {
        ready: bool,
    },
}

/// An agent as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub name: String,
    pub skills: Vec<QueueId>,
    pub role: model::AgentRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takes_calls: Option<bool>,
    /// R3.12: the agent's tags and skill levels (the view carries every configured field, so
    /// that GET then PUT round-trips).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub levels: std::collections::BTreeMap<QueueId, u8>,
    /// R4.8: group, hotline and permissions as configured (none: the role's defaults), and
    /// the permissions in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<std::collections::BTreeSet<model::Permission>>,
    pub effective_permissions: std::collections::BTreeSet<model::Permission>,
    pub state: String,
    pub session: Option<AgentSession>,
    /// The node hosting the agent's actor (rendezvous placement).
    pub owner: NodeId,
}

/// R4.9: the agent-state view of a tenant (or one group, or one queue's agents) at `at_ms`:
/// how many agents are in each state, and each agent's state, time in it, calls and talk
/// time. Read from the replicated agent sessions, so any node answers the same within the
/// replication lag; the `agent_state` events on `/api/v1/events` carry each change live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStates {
    pub tenant: TenantId,
    pub at_ms: u64,
    /// Agents per state name (`signed_out`, `ready`, `talking`, ...); every state is listed.
    pub counts: std::collections::BTreeMap<String, usize>,
    pub agents: Vec<AgentStateRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStateRow {
    pub agent: AgentId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub state: String,
    /// The not-ready reason, or the away reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since_ms: u64,
    pub in_state_ms: u64,
    pub calls_answered: u64,
    /// Time talking, the current call included.
    pub talk_ms: u64,
    /// Time in each state, the current stretch included.
    pub state_ms: std::collections::BTreeMap<String, u64>,
}

/// A queue as the API and wallboard show it (R4.9).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    pub tenant: TenantId,
    pub queue: QueueId,
    pub name: String,
    pub owner: NodeId,
    pub waiting: usize,
    pub longest_wait_ms: u64,
    pub agents: usize,
    pub idle_agents: usize,
    pub stats: QueueStats,
}

/// A live call on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveCall {
    pub call_id: CallId,
    pub node: NodeId,
    pub tenant: Option<TenantId>,
    pub caller: String,
    pub state: String,
    pub queue: Option<QueueId>,
    /// R3.10: every queue the call waits in (its own first), while it waits or rings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_in: Vec<QueueId>,
    pub agent: Option<AgentId>,
    pub started_at_ms: u64,
}

/// Events streamed to `/api/v1/events` (R8.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    AgentState {
        tenant: TenantId,
        agent: AgentId,
        state: String,
        session: AgentSession,
        at_ms: u64,
    },
    Queue {
        tenant: TenantId,
        queue: QueueId,
        owner: NodeId,
        stats: QueueStats,
        at_ms: u64,
    },
    /// R3.11: an agent is offered a virtual call: the platform calls `customer` back once
    /// the agent answers.
    VirtualCall {
        call_id: CallId,
        tenant: TenantId,
        agent: AgentId,
        customer: String,
        at_ms: u64,
    },
    CallEnded {
        call_id: CallId,
        tenant: Option<TenantId>,
        disposition: model::Disposition,
        at_ms: u64,
    },
}

/// Errors the API maps to HTTP statuses.
/// R3.10: a change to the queues a waiting call waits in, and its priority.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requeue {
    #[serde(default)]
    pub add: Vec<QueueId>,
    #[serde(default)]
    pub remove: Vec<QueueId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the node that owns {0} did not answer in time")]
    Timeout(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
