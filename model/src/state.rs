//! The replicated state machine: every node holds one `ReplicatedState` and applies the same
//! `Command`s in the same order (openraft delivers them). `apply` is pure and deterministic:
//! it reads no clock (times are stamped into commands by the proposer) and never panics on a
//! command it rejects — a rejected command is an `Outcome` with an error, and the state is
//! unchanged, so a bad admin request can never wedge the log.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::*;
use crate::flow::Flow;
use crate::ids::*;
use crate::runtime::*;
use crate::script::*;
use crate::tagged::internally_tagged;

internally_tagged! {
tag = "op", rename_all = "snake_case", twin = CommandFields;
/// One replicated command. One Raft entry carries one command; `Batch` carries many
/// (checkpoint batching, DESIGN.md "Replicated state"). Encoded `{"op": "put_call", ...}`,
/// and decoded without buffering when `op` comes first, as serde writes it (`crate::tagged`).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Create {
        item: ConfigItem,
    },
    Update {
        item: ConfigItem,
    },
    Delete {
        key: ConfigKey,
    },
    /// Add or refresh a binding; bindings of the same AOR that expired by `now_ms` go.
    Register {
        binding: Binding,
        now_ms: u64,
    },
    /// Remove one contact (`contact: Some`) or every binding the node holds for the AOR.
    Unregister {
        tenant: TenantId,
        extension: ExtensionId,
        node: NodeId,
        contact: Option<String>,
    },
    PutAgentSession {
        session: AgentSession,
    },
    /// R3.20: an agent handled a voicemail (idempotent for the same agent).
    HandleVoicemail {
        tenant: TenantId,
        id: String,
        agent: AgentId,
        at_ms: u64,
    },
    /// The call's final record; removes its checkpoint. `fence`: the writing owner.
    /// The CDR and the checkpoint below are shared (`Arc`): the state keeps the command's
    /// own copy, so the Raft log's recent entries and the applied events, which hold the
    /// command too, cost no second copy (docs/PERFORMANCE.md, "Memory per call").
    RecordCdr {
        cdr: Arc<Cdr>,
        #[serde(default)]
        fence: Option<Fence>,
    },
    /// A call's checkpoint (newer version wins; refused after the call's CDR or from a fenced
    /// owner).
    PutCall {
        checkpoint: Arc<CallCheckpoint>,
    },
    /// Removes call checkpoints without a CDR: the synthetic calls of the Raft bench
    /// (`POST /api/v1/bench/raft`), which were never calls. Unknown ids are ignored.
    DiscardCalls {
        call_ids: Vec<CallId>,
    },
    /// A node proves it reaches a quorum (its lease, DESIGN.md "Placement and ownership").
    /// Ignored unless `epoch` is the node's current epoch and it is up.
    Heartbeat {
        node: NodeId,
        epoch: u64,
        at_ms: u64,
    },
    /// The leader declares a node down after it missed heartbeats: its actors move.
    NodeDown {
        node: NodeId,
        epoch: u64,
        at_ms: u64,
    },
    /// A node that was declared down and dropped its actors comes back, at a new epoch.
    NodeUp {
        node: NodeId,
        at_ms: u64,
    },
    /// DR takeover: the first entry of a new cluster lineage carries the DR node's last
    /// applied state; the nodes left behind (`down`) are marked down so their calls, queues
    /// and agents move to the new members.
    Restore {
        state: Box<ReplicatedState>,
        down: Vec<NodeId>,
        at_ms: u64,
    },
    Batch {
        commands: Vec<Command>,
    },
    /// The writes of several proposers that reached the leader together, committed as one
    /// Raft entry (`cluster::combiner`: openraft 0.9 appends and fsyncs each entry on its own,
    /// inside its core loop). Applied in order, each with its own outcome (`Outcome::parts`),
    /// exactly as if each had been an entry of its own.
    Group {
        commands: Vec<Arc<Command>>,
    },
}
}

/// Why a command was not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "code", content = "detail")]
pub enum ApplyError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("still in use: {0}")]
    InUse(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

/// The result of applying one command (a `Batch` reports its first failure; the commands
/// of a batch are independent checkpoints, so the others still apply).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub error: Option<ApplyError>,
    /// A `Group`'s outcome of each of its commands, in order; empty for any other command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Outcome>,
}

impl Outcome {
    /// The outcome of a command refused with `error`.
    pub fn failed(error: ApplyError) -> Outcome {
        Outcome {
            error: Some(error),
            parts: Vec::new(),
        }
    }
}

/// Everything Raft replicates. Maps are keyed by `tenant/id` strings so the state
/// serialises as plain JSON for snapshots. Calls and CDRs, the maps that grow with traffic,
/// hold `Arc`s: a snapshot clones the state to encode it while applying goes on, and a
/// clone that copied every checkpoint doubled a node's memory per call for the length of
/// the encode (docs/PERFORMANCE.md, "Memory per call"). The JSON is the same either way.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicatedState {
    pub tenants: BTreeMap<String, Tenant>,
    pub queues: BTreeMap<String, Queue>,
    pub agents: BTreeMap<String, Agent>,
    pub extensions: BTreeMap<String, Extension>,
    pub trunks: BTreeMap<String, Trunk>,
    pub flows: BTreeMap<String, Flow>,
    pub prompts: BTreeMap<String, Prompt>,
    pub bindings: BTreeMap<String, Vec<Binding>>,
    pub agent_sessions: BTreeMap<String, AgentSession>,
    pub cdrs: BTreeMap<String, Arc<Cdr>>,
    /// R3.12: known callers, by `tenant/number`.
    #[serde(default)]
    pub customers: BTreeMap<String, Customer>,
    /// R3.16: each caller's last `CALLER_HISTORY` calls, by `tenant/number` (normalised),
    /// oldest first; kept from the CDRs as they are recorded.
    #[serde(default)]
    pub callers: BTreeMap<String, Vec<PastCall>>,
    /// R3.20: queue voicemails, by `tenant/call id`.
    #[serde(default)]
    pub voicemails: BTreeMap<String, Voicemail>,
    /// Live calls' checkpoints, by call id.
    #[serde(default)]
    pub calls: BTreeMap<String, Arc<CallCheckpoint>>,
    /// Liveness of the nodes that ever sent a heartbeat. Serialised as a list of pairs:
    /// inside an internally tagged `Command` (`Restore`) serde cannot read integer map keys
    /// back from JSON strings.
    #[serde(default, with = "node_map")]
    pub nodes: BTreeMap<NodeId, NodeLiveness>,
    /// Bumped on every configuration change; actors compare it to notice new config.
    pub config_version: u64,
}

mod node_map {
    use super::{NodeId, NodeLiveness};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<NodeId, NodeLiveness>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<NodeId, NodeLiveness>, D::Error> {
        Ok(Vec::<(NodeId, NodeLiveness)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// `tenant/id`, the key of every per-tenant map.
pub fn key(tenant: &TenantId, id: &str) -> String {
    format!("{tenant}/{id}")
}

impl ReplicatedState {
    /// Applies one command. Pure: the same state and command give the same result anywhere.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let result = match command {
            Command::Create { item } => self.create(item),
            Command::Update { item } => self.update(item),
            Command::Delete { key } => self.delete(key),
            Command::Register { binding, now_ms } => self.register(binding, *now_ms),
            Command::Unregister {
                tenant,
                extension,
                node,
                contact,
            } => {
                self.unregister(tenant, extension, *node, contact.as_deref());
                Ok(())
            }
            Command::PutAgentSession { session } => {
                if session.fence.is_some_and(|f| self.fenced_out(f)) {
                    return Outcome::failed(ApplyError::Invalid(format!(
                        "agent {} checkpoint from a fenced owner",
                        session.agent
                    )));
                }
                let k = key(&session.tenant, session.agent.as_str());
                let newer = self
                    .agent_sessions
                    .get(&k)
                    .is_none_or(|old| old.version < session.version);
                if newer {
                    self.agent_sessions.insert(k, session.clone());
                }
                Ok(())
            }
            Command::RecordCdr { cdr, fence } => {
                if fence.is_some_and(|f| self.fenced_out(f)) {
                    return Outcome::failed(ApplyError::Invalid(format!(
                        "CDR of {} from a fenced owner",
                        cdr.call_id
                    )));
                }
                // Idempotent by call id (I2: exactly one CDR per call, even if the proposer
                // retries after a timeout).
                self.calls.remove(cdr.call_id.as_str());
                if !self.cdrs.contains_key(cdr.call_id.as_str()) {
                    self.remember_caller(cdr);
                    self.keep_voicemail(cdr);
                    self.cdrs.insert(cdr.call_id.0.clone(), Arc::clone(cdr));
                }
                Ok(())
            }
            Command::PutCall { checkpoint } => self.put_call(checkpoint),
            Command::HandleVoicemail {
                tenant,
                id,
                agent,
                at_ms,
            } => self.handle_voicemail(tenant, id, agent, *at_ms),
            Command::Restore { state, down, at_ms } => {
                // The restored configuration is new to every reader, even one that saw the
                // same version number before: readers compare versions to notice a change.
                let version = self.config_version.max(state.config_version) + 1;
                *self = (**state).clone();
                self.config_version = version;
                for node in down {
                    let n = self.nodes.entry(*node).or_insert(NodeLiveness {
                        epoch: 0,
                        down: true,
                        last_heartbeat_ms: *at_ms,
                        since_ms: *at_ms,
                    });
                    n.down = true;
                    n.since_ms = *at_ms;
                }
                Ok(())
            }
            Command::Heartbeat { node, epoch, at_ms } => {
                let entry = self.nodes.entry(*node).or_insert(NodeLiveness {
                    epoch: *epoch,
                    down: false,
                    last_heartbeat_ms: *at_ms,
                    since_ms: *at_ms,
                });
                if entry.epoch == *epoch && !entry.down {
                    entry.last_heartbeat_ms = entry.last_heartbeat_ms.max(*at_ms);
                    Ok(())
                } else {
                    Err(ApplyError::Invalid(format!(
                        "heartbeat of node {node} at a stale epoch or while down"
                    )))
                }
            }
            Command::NodeDown { node, epoch, at_ms } => match self.nodes.get_mut(node) {
                Some(n) if n.epoch == *epoch && !n.down => {
                    n.down = true;
                    n.since_ms = *at_ms;
                    Ok(())
                }
                _ => Err(ApplyError::Invalid(format!(
                    "node {node} is not up at epoch {epoch}"
                ))),
            },
            Command::NodeUp { node, at_ms } => match self.nodes.get_mut(node) {
                Some(n) if n.down => {
                    n.down = false;
                    n.epoch += 1;
                    n.since_ms = *at_ms;
                    n.last_heartbeat_ms = *at_ms;
                    Ok(())
                }
                _ => Err(ApplyError::Invalid(format!("node {node} is not down"))),
            },
            Command::DiscardCalls { call_ids } => {
                for id in call_ids {
                    self.calls.remove(id.as_str());
                }
                Ok(())
            }
            Command::Batch { commands } => {
                let mut first_error = None;
                for c in commands {
                    let outcome = self.apply(c);
                    if first_error.is_none() {
                        first_error = outcome.error;
                    }
                }
                return Outcome {
                    error: first_error,
                    parts: Vec::new(),
                };
            }
            Command::Group { commands } => {
                return Outcome {
                    error: None,
                    parts: commands.iter().map(|c| self.apply(c)).collect(),
                };
            }
        };
        Outcome {
            error: result.err(),
            parts: Vec::new(),
        }
    }

    fn create(&mut self, item: &ConfigItem) -> Result<(), ApplyError> {
        item.validate()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        if self.exists(&item.key()) {
            return Err(ApplyError::AlreadyExists(describe(&item.key())));
        }
        self.check_references(item)?;
        self.put(item.clone());
        Ok(())
    }

    fn update(&mut self, item: &ConfigItem) -> Result<(), ApplyError> {
        item.validate()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        if !self.exists(&item.key()) {
            return Err(ApplyError::NotFound(describe(&item.key())));
        }
        self.check_references(item)?;
        self.put(item.clone());
        Ok(())
    }

    fn put(&mut self, item: ConfigItem) {
        self.config_version += 1;
        match item {
            ConfigItem::Tenant(t) => {
                self.tenants.insert(t.id.to_string(), t);
            }
            ConfigItem::Queue(q) => {
                self.queues.insert(key(&q.tenant, q.id.as_str()), *q);
            }
            ConfigItem::Agent(a) => {
                self.agents.insert(key(&a.tenant, a.id.as_str()), a);
            }
            ConfigItem::Extension(e) => {
                self.extensions.insert(key(&e.tenant, e.id.as_str()), e);
            }
            ConfigItem::Trunk(t) => {
                self.trunks.insert(t.id.to_string(), t);
            }
            ConfigItem::Flow(f) => {
                self.flows.insert(key(&f.tenant, f.id.as_str()), f);
            }
            ConfigItem::Prompt(p) => {
                self.prompts.insert(key(&p.tenant, p.id.as_str()), p);
            }
            ConfigItem::Customer(c) => {
                self.customers.insert(key(&c.tenant, c.number.as_str()), c);
            }
        }
    }

    fn exists(&self, k: &ConfigKey) -> bool {
        match k {
            ConfigKey::Tenant { id } => self.tenants.contains_key(id.as_str()),
            ConfigKey::Queue { tenant, id } => self.queues.contains_key(&key(tenant, id.as_str())),
            ConfigKey::Agent { tenant, id } => self.agents.contains_key(&key(tenant, id.as_str())),
            ConfigKey::Extension { tenant, id } => {
                self.extensions.contains_key(&key(tenant, id.as_str()))
            }
            ConfigKey::Trunk { id } => self.trunks.contains_key(id.as_str()),
            ConfigKey::Flow { tenant, id } => self.flows.contains_key(&key(tenant, id.as_str())),
            ConfigKey::Prompt { tenant, id } => {
                self.prompts.contains_key(&key(tenant, id.as_str()))
            }
            ConfigKey::Customer { tenant, number } => {
                self.customers.contains_key(&key(tenant, number.as_str()))
            }
        }
    }

    /// Items may only point at items of their own tenant that exist (I5, R7.1).
    fn check_references(&self, item: &ConfigItem) -> Result<(), ApplyError> {
        let need = |k: ConfigKey| {
            if self.exists(&k) {
                Ok(())
            } else {
                Err(ApplyError::NotFound(describe(&k)))
            }
        };
        let tenant_of = |t: &TenantId| need(ConfigKey::Tenant { id: t.clone() });
        match item {
            ConfigItem::Tenant(t) => {
                for access in &t.access_codes {
                    match &access.entry {
                        Entry::Flow(id) => need(ConfigKey::Flow {
                            tenant: t.id.clone(),
                            id: id.clone(),
                        }),
                        Entry::Queue(id) => need(ConfigKey::Queue {
                            tenant: t.id.clone(),
                            id: id.clone(),
                        }),
                    }?;
                }
                // R4.8: an agent's hotline stays one of the tenant's access codes.
                let orphan = self.agents.values().find(|a| {
                    a.tenant == t.id
                        && a.hotline
                            .as_ref()
                            .is_some_and(|h| !t.access_codes.iter().any(|c| &c.code == h))
                });
                if let Some(a) = orphan {
                    return Err(ApplyError::InUse(format!(
                        "access code {} is agent {}'s hotline",
                        a.hotline.as_deref().unwrap_or_default(),
                        a.id
                    )));
                }
                // A routing rule only names this tenant's queues, flows and flow nodes.
                for rule in &t.routing {
                    for id in rule.when.ivr_queue.iter().chain(match &rule.then {
                        Some(RouteTarget::Queue(q)) => Some(q),
                        _ => None,
                    }) {
                        need(ConfigKey::Queue {
                            tenant: t.id.clone(),
                            id: id.clone(),
                        })?;
                    }
                    if let Some(RouteTarget::Flow { flow, node }) = &rule.then {
                        let known = self
                            .flow(&t.id, flow)
                            .is_some_and(|f| node.as_ref().is_none_or(|n| f.nodes.contains_key(n)));
                        if !known {
                            return Err(ApplyError::NotFound(format!(
                                "flow {flow}{} of routing rule {}",
                                node.as_ref()
                                    .map(|n| format!(" node {n}"))
                                    .unwrap_or_default(),
                                rule.name
                            )));
                        }
                    }
                }
                // A landing code selects exactly one tenant (R2.2).
                for code in &t.landing_codes {
                    if let Some(other) = self
                        .tenants
                        .values()
                        .find(|o| o.id != t.id && o.landing_codes.contains(code))
                    {
                        return Err(ApplyError::InUse(format!(
                            "landing code {code} belongs to tenant {}",
                            other.id
                        )));
                    }
                }
                Ok(())
            }
            ConfigItem::Queue(q) => {
                tenant_of(&q.tenant)?;
                let (queues, flows, prompts) = q.references();
                for id in queues {
                    need(ConfigKey::Queue {
                        tenant: q.tenant.clone(),
                        id: id.clone(),
                    })?;
                }
                for id in prompts {
                    need(ConfigKey::Prompt {
                        tenant: q.tenant.clone(),
                        id: id.clone(),
                    })?;
                }
                for id in flows {
                    need(ConfigKey::Flow {
                        tenant: q.tenant.clone(),
                        id: id.clone(),
                    })?;
                }
                for id in q.trunks() {
                    need(ConfigKey::Trunk { id: id.clone() })?;
                }
                // A transfer to an agent names an agent of the tenant.
                for (_, rule) in q.rules() {
                    if let Some(crate::config::RuleAction::TransferAgent { agent, .. }) = rule {
                        need(ConfigKey::Agent {
                            tenant: q.tenant.clone(),
                            id: agent.clone(),
                        })?;
                    }
                }
                // A transfer to a flow node names a node of that flow.
                for (_, rule) in q.rules() {
                    if let Some(crate::config::RuleAction::TransferFlow {
                        flow,
                        node: Some(node),
                    }) = rule
                    {
                        if !self
                            .flow(&q.tenant, flow)
                            .is_some_and(|f| f.nodes.contains_key(node))
                        {
                            return Err(ApplyError::NotFound(format!(
                                "node {node} of flow {flow}"
                            )));
                        }
                    }
                }
                Ok(())
            }
            ConfigItem::Agent(a) => {
                tenant_of(&a.tenant)?;
                if let Some(hotline) = &a.hotline {
                    let known = self
                        .tenants
                        .get(a.tenant.as_str())
                        .is_some_and(|t| t.access_codes.iter().any(|c| &c.code == hotline));
                    if !known {
                        return Err(ApplyError::NotFound(format!(
                            "hotline {hotline} (an access code of tenant {})",
                            a.tenant
                        )));
                    }
                }
                for s in &a.skills {
                    need(ConfigKey::Queue {
                        tenant: a.tenant.clone(),
                        id: s.clone(),
                    })?;
                }
                Ok(())
            }
            ConfigItem::Extension(e) => tenant_of(&e.tenant),
            ConfigItem::Trunk(_) => Ok(()),
            ConfigItem::Flow(f) => {
                tenant_of(&f.tenant)?;
                let (queues, prompts) = f.references();
                for q in queues {
                    need(ConfigKey::Queue {
                        tenant: f.tenant.clone(),
                        id: q.clone(),
                    })?;
                }
                for p in prompts {
                    need(ConfigKey::Prompt {
                        tenant: f.tenant.clone(),
                        id: p.clone(),
                    })?;
                }
                Ok(())
            }
            ConfigItem::Prompt(p) => tenant_of(&p.tenant),
            ConfigItem::Customer(c) => tenant_of(&c.tenant),
        }
    }

    fn delete(&mut self, k: &ConfigKey) -> Result<(), ApplyError> {
        if !self.exists(k) {
            return Err(ApplyError::NotFound(describe(k)));
        }
        if let Some(user) = self.users_of(k) {
            return Err(ApplyError::InUse(format!(
                "{} is used by {user}",
                describe(k)
            )));
        }
        self.config_version += 1;
        match k {
            ConfigKey::Tenant { id } => {
                self.tenants.remove(id.as_str());
            }
            ConfigKey::Queue { tenant, id } => {
                self.queues.remove(&key(tenant, id.as_str()));
            }
            ConfigKey::Agent { tenant, id } => {
                self.agents.remove(&key(tenant, id.as_str()));
                self.agent_sessions.remove(&key(tenant, id.as_str()));
            }
            ConfigKey::Extension { tenant, id } => {
                self.extensions.remove(&key(tenant, id.as_str()));
                self.bindings.remove(&key(tenant, id.as_str()));
            }
            ConfigKey::Trunk { id } => {
                self.trunks.remove(id.as_str());
            }
            ConfigKey::Flow { tenant, id } => {
                self.flows.remove(&key(tenant, id.as_str()));
            }
            ConfigKey::Prompt { tenant, id } => {
                self.prompts.remove(&key(tenant, id.as_str()));
            }
            ConfigKey::Customer { tenant, number } => {
                self.customers.remove(&key(tenant, number.as_str()));
            }
        }
        Ok(())
    }

    /// Something that still refers to `k`, which blocks its deletion.
    fn users_of(&self, k: &ConfigKey) -> Option<String> {
        match k {
            ConfigKey::Tenant { id } => {
                let prefix = format!("{id}/");
                let owned = [
                    &self.queues.keys().collect::<Vec<_>>(),
                    &self.agents.keys().collect(),
                    &self.extensions.keys().collect(),
                    &self.flows.keys().collect(),
                    &self.prompts.keys().collect(),
                    &self.customers.keys().collect(),
                ]
                .into_iter()
                .flat_map(|keys| keys.iter())
                .find(|k| k.starts_with(&prefix))
                .map(|k| k.to_string());
                owned
            }
            ConfigKey::Queue { tenant, id } => self
                .agents
                .values()
                .find(|a| &a.tenant == tenant && a.skills.contains(id))
                .map(|a| format!("agent {}", a.id))
                .or_else(|| {
                    self.flows
                        .values()
                        .find(|f| &f.tenant == tenant && f.references().0.contains(&id))
                        .map(|f| format!("flow {}", f.id))
                })
                .or_else(|| self.queue_user(tenant, |(queues, _, _)| queues.contains(&id)))
                .or_else(|| self.tenant_entry_user(tenant, &Entry::Queue(id.clone()))),
            ConfigKey::Flow { tenant, id } => self
                .tenant_entry_user(tenant, &Entry::Flow(id.clone()))
                .or_else(|| self.queue_user(tenant, |(_, flows, _)| flows.contains(&id))),
            ConfigKey::Prompt { tenant, id } => self
                .flows
                .values()
                .find(|f| &f.tenant == tenant && f.references().1.contains(&id))
                .map(|f| format!("flow {}", f.id))
                .or_else(|| self.queue_user(tenant, |(_, _, prompts)| prompts.contains(&id))),
            ConfigKey::Agent { tenant, id } => self
                .agent_sessions
                .get(&key(tenant, id.as_str()))
                .filter(|s| s.status != AgentStatus::SignedOut)
                .map(|_| "a signed-in session (sign the agent out first)".to_string())
                .or_else(|| {
                    self.queues
                        .values()
                        .find(|q| {
                            &q.tenant == tenant
                                && q.rules().iter().any(|(_, r)| {
                                    matches!(r, Some(crate::config::RuleAction::TransferAgent { agent, .. }) if agent == id)
                                })
                        })
                        .map(|q| format!("queue {} (a rule transfers to the agent)", q.id))
                }),
            ConfigKey::Trunk { id } => self
                .queues
                .values()
                .find(|q| q.trunks().contains(&id))
                .map(|q| format!("queue {} of tenant {}", q.id, q.tenant)),
            ConfigKey::Extension { .. } | ConfigKey::Customer { .. } => None,
        }
    }

    /// A queue of `tenant` whose references (queues, flows, prompts) match.
    fn queue_user(
        &self,
        tenant: &TenantId,
        refers: impl Fn(&(Vec<&QueueId>, Vec<&FlowId>, Vec<&PromptId>)) -> bool,
    ) -> Option<String> {
        self.queues
            .values()
            .find(|q| &q.tenant == tenant && refers(&q.references()))
            .map(|q| format!("queue {}", q.id))
    }

    /// An access code or routing rule of `tenant` that leads to `entry`.
    fn tenant_entry_user(&self, tenant: &TenantId, entry: &Entry) -> Option<String> {
        let t = self.tenants.get(tenant.as_str())?;
        t.access_codes
            .iter()
            .find(|a| &a.entry == entry)
            .map(|a| format!("access code {}", a.code))
            .or_else(|| {
                t.routing
                    .iter()
                    .find(|r| match (entry, &r.then) {
                        (Entry::Queue(q), Some(RouteTarget::Queue(t))) => q == t,
                        (Entry::Queue(q), _) => r.when.ivr_queue.as_ref() == Some(q),
                        (Entry::Flow(f), Some(RouteTarget::Flow { flow, .. })) => f == flow,
                        (Entry::Flow(_), _) => false,
                    })
                    .map(|r| format!("routing rule {}", r.name))
            })
    }

    /// R3.16: adds a recorded call to its caller's history (callers with a number only).
    fn remember_caller(&mut self, cdr: &Cdr) {
        let Some(tenant) = &cdr.tenant else { return };
        let number = crate::routing::normalise_number(&cdr.caller);
        if CustomerId::new(number.as_str()).is_err() {
            return;
        }
        let history = self.callers.entry(key(tenant, &number)).or_default();
        history.push(PastCall {
            at_ms: cdr.started_at_ms,
            agent: cdr.answered_by().cloned(),
        });
        history.sort_by_key(|c| c.at_ms);
        let excess = history.len().saturating_sub(CALLER_HISTORY);
        history.drain(..excess);
    }

    /// R3.20: a CDR with a message makes a new voicemail.
    fn keep_voicemail(&mut self, cdr: &Cdr) {
        let (Some(tenant), Some(mark)) = (&cdr.tenant, &cdr.voicemail) else {
            return;
        };
        self.voicemails.insert(
            key(tenant, cdr.call_id.as_str()),
            Voicemail {
                tenant: tenant.clone(),
                id: cdr.call_id.0.clone(),
                queue: mark.queue.clone(),
                caller: cdr.caller.clone(),
                at_ms: mark.started_at_ms,
                duration_ms: mark.duration_ms,
                recording_id: cdr.recording_id.clone(),
                status: VoicemailStatus::New,
                handled_by: None,
                handled_at_ms: None,
            },
        );
    }

    fn handle_voicemail(
        &mut self,
        tenant: &TenantId,
        id: &str,
        agent: &AgentId,
        at_ms: u64,
    ) -> Result<(), ApplyError> {
        if !self.agents.contains_key(&key(tenant, agent.as_str())) {
            return Err(ApplyError::NotFound(format!("agent {tenant}/{agent}")));
        }
        let v = self
            .voicemails
            .get_mut(&key(tenant, id))
            .ok_or_else(|| ApplyError::NotFound(format!("voicemail {tenant}/{id}")))?;
        match &v.handled_by {
            Some(by) if by == agent => Ok(()),
            Some(by) => Err(ApplyError::InUse(format!(
                "voicemail {id} was handled by agent {by}"
            ))),
            None => {
                v.status = VoicemailStatus::Handled;
                v.handled_by = Some(agent.clone());
                v.handled_at_ms = Some(at_ms.max(v.at_ms));
                Ok(())
            }
        }
    }

    /// A known caller of `tenant` (R3.12); `number` as dialled, normalised here.
    pub fn customer(&self, tenant: &TenantId, number: &str) -> Option<&Customer> {
        self.customers
            .get(&key(tenant, &crate::routing::normalise_number(number)))
    }

    /// A caller's earlier calls to `tenant`, oldest first (R3.16).
    pub fn caller_history(&self, tenant: &TenantId, number: &str) -> &[PastCall] {
        self.callers
            .get(&key(tenant, &crate::routing::normalise_number(number)))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn register(&mut self, binding: &Binding, now_ms: u64) -> Result<(), ApplyError> {
        let k = key(&binding.tenant, binding.extension.as_str());
        if !self.extensions.contains_key(&k) {
            return Err(ApplyError::NotFound(format!("extension {k}")));
        }
        let list = self.bindings.entry(k).or_default();
        list.retain(|b| {
            b.expires_at_ms > now_ms && !(b.node == binding.node && b.contact == binding.contact)
        });
        list.push(binding.clone());
        Ok(())
    }

    fn unregister(
        &mut self,
        tenant: &TenantId,
        extension: &ExtensionId,
        node: NodeId,
        contact: Option<&str>,
    ) {
        let k = key(tenant, extension.as_str());
        if let Some(list) = self.bindings.get_mut(&k) {
            list.retain(|b| b.node != node || contact.is_some_and(|c| c != b.contact));
            if list.is_empty() {
                self.bindings.remove(&k);
            }
        }
    }

    /// Live bindings of an extension at `now_ms`, newest first.
    pub fn live_bindings(
        &self,
        tenant: &TenantId,
        extension: &ExtensionId,
        now_ms: u64,
    ) -> Vec<&Binding> {
        let mut live: Vec<&Binding> = self
            .bindings
            .get(&key(tenant, extension.as_str()))
            .map(|list| list.iter().filter(|b| b.expires_at_ms > now_ms).collect())
            .unwrap_or_default();
        live.sort_by_key(|b| std::cmp::Reverse(b.expires_at_ms));
        live
    }

    /// True when `fence` names a node that is down, or an epoch it has left.
    pub fn fenced_out(&self, fence: Fence) -> bool {
        self.nodes
            .get(&fence.node)
            .is_some_and(|n| n.down || n.epoch != fence.epoch)
    }

    /// Whether checkpointed call `c` has lost its owner: the owner is down, or it rejoined
    /// at a newer epoch than the checkpoint's fence (it dropped the call when declared down).
    /// Gives the start of the media gap and whether the fence is stale: the owner's last
    /// heartbeat while it is down; once it rejoined, the time it rejoined (it dropped the call
    /// just before, when it learnt it had been declared down).
    pub fn orphaned(&self, c: &CallCheckpoint) -> Option<(u64, bool)> {
        let owner = self.nodes.get(&c.fence.node)?;
        if owner.down {
            return Some((owner.last_heartbeat_ms, false));
        }
        self.fenced_out(c.fence).then_some((owner.since_ms, true))
    }

    /// True when the cluster declared `node` down.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.down)
    }

    /// The node's current epoch (0 before its first heartbeat).
    pub fn epoch(&self, node: NodeId) -> u64 {
        self.nodes.get(&node).map_or(0, |n| n.epoch)
    }

    fn put_call(&mut self, checkpoint: &Arc<CallCheckpoint>) -> Result<(), ApplyError> {
        let id = checkpoint.call_id.as_str();
        if self.fenced_out(checkpoint.fence) {
            return Err(ApplyError::Invalid(format!(
                "checkpoint of {id} from a fenced owner"
            )));
        }
        if self.cdrs.contains_key(id) {
            // The call has ended; a late checkpoint must not resurrect it.
            return Ok(());
        }
        let newer = self
            .calls
            .get(id)
            .is_none_or(|old| old.version < checkpoint.version);
        if newer {
            self.calls.insert(id.to_string(), Arc::clone(checkpoint));
        }
        Ok(())
    }

    pub fn queue(&self, tenant: &TenantId, id: &QueueId) -> Option<&Queue> {
        self.queues.get(&key(tenant, id.as_str()))
    }
    pub fn agent(&self, tenant: &TenantId, id: &AgentId) -> Option<&Agent> {
        self.agents.get(&key(tenant, id.as_str()))
    }
    pub fn extension(&self, tenant: &TenantId, id: &ExtensionId) -> Option<&Extension> {
        self.extensions.get(&key(tenant, id.as_str()))
    }
    pub fn flow(&self, tenant: &TenantId, id: &FlowId) -> Option<&Flow> {
        self.flows.get(&key(tenant, id.as_str()))
    }
    pub fn prompt(&self, tenant: &TenantId, id: &PromptId) -> Option<&Prompt> {
        self.prompts.get(&key(tenant, id.as_str()))
    }
    pub fn agent_session(&self, tenant: &TenantId, id: &AgentId) -> Option<&AgentSession> {
        self.agent_sessions.get(&key(tenant, id.as_str()))
    }
    /// The tenant whose SIP domain is `domain`.
    pub fn tenant_by_domain(&self, domain: &str) -> Option<&Tenant> {
        self.tenants
            .values()
            .find(|t| t.domain.eq_ignore_ascii_case(domain))
    }
    /// The trunk a request from `ip` belongs to.
    pub fn trunk_for(&self, ip: std::net::IpAddr) -> Option<&Trunk> {
        self.trunks.values().find(|t| t.sources.contains(&ip))
    }
}

fn describe(k: &ConfigKey) -> String {
    match k {
        ConfigKey::Tenant { id } => format!("tenant {id}"),
        ConfigKey::Queue { tenant, id } => format!("queue {tenant}/{id}"),
        ConfigKey::Agent { tenant, id } => format!("agent {tenant}/{id}"),
        ConfigKey::Extension { tenant, id } => format!("extension {tenant}/{id}"),
        ConfigKey::Trunk { id } => format!("trunk {id}"),
        ConfigKey::Flow { tenant, id } => format!("flow {tenant}/{id}"),
        ConfigKey::Prompt { tenant, id } => format!("prompt {tenant}/{id}"),
        ConfigKey::Customer { tenant, number } => format!("customer {tenant}/{number}"),
    }
}
