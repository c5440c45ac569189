//! The configuration schema: what admins create through the API and Raft replicates.
//! Every item validates itself (`validate`) before it is proposed, and the state machine
//! checks references between items when it applies them (see `state.rs`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::flow::Flow;
use crate::ids::*;
use crate::ModelError;

/// A virtual call center (R7.1): one province, isolated from the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    /// The SIP domain its phones register in; also the digest realm.
    pub domain: String,
    /// Carrier landing (area) codes whose callers belong to this tenant (R2.2).
    #[serde(default)]
    pub landing_codes: Vec<String>,
    /// The numbers callers dial, each with its own entry point (R2.3).
    #[serde(default)]
    pub access_codes: Vec<AccessCode>,
    /// R3.14: the tenant's routing script, tried in order (see `script::RoutingRule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<crate::script::RoutingRule>,
}

/// A dialled access code and where its calls go first (R3.13).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessCode {
    pub code: String,
    pub entry: Entry,
}

/// Where a call starts inside its tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Entry {
    Flow(FlowId),
    Queue(QueueId),
}

/// A skill queue (R3.1-R3.4, R3.8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub tenant: TenantId,
    pub id: QueueId,
    pub name: String,
    /// The longest a call may wait before it is released with `timeout_prompt` (R3.4).
    pub max_wait_ms: u64,
    /// Played in a loop while the caller waits (R3.8).
    pub music_prompt: Option<PromptId>,
    /// Played before a call is released for waiting too long.
    pub timeout_prompt: Option<PromptId>,
    /// How long an offered agent's phone may ring before the offer is withdrawn.
    pub ring_timeout_ms: u64,
    /// After-call work time before the agent is ready again.
    pub acw_ms: u64,
    /// The most calls that may wait (R3.5); a call beyond it gets `on_max_queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// What a call that finds the queue full gets (default: released without a prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_max_queued: Option<RuleAction>,
    /// R3.3: what a call gets when it arrives while no signed-in agent of the queue is ready
    /// (all busy, or nobody signed in). Unset: it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_all_busy: Option<RuleAction>,
    /// R3.4: what a call that waited `max_wait_ms` gets. Unset: released with
    /// `timeout_prompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_max_wait: Option<RuleAction>,
    /// R3.6: the key (0-9, *, #) a waiting caller presses to leave the line. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_key: Option<char>,
    /// What a caller who pressed `cancel_key` gets. Unset: released without a prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_cancel: Option<RuleAction>,
    /// R3.9: the estimated-wait announcement, if the queue has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_announcement: Option<WaitAnnouncement>,
    /// R3.8: a prompt played to waiting callers every `every_ms` ("all our agents are busy,
    /// please hold"), between stretches of music.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_announcement: Option<PeriodicAnnouncement>,
    /// R4.5: on answer, the caller hears `prefix`, the agent's number digit by digit, then
    /// `suffix` ("Hello, billing desk agent 1 0 0 1 at your service"), before the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_announcement: Option<AgentAnnouncement>,
    /// R3.16: repeat callers are offered first to the agents who served them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_caller: Option<crate::script::RepeatCaller>,
    /// R3.20: waiting callers may leave a message instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<VoicemailBox>,
    /// R3.11: waiting callers may be called back instead of holding the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackOffer>,
}

/// R3.11 virtual queueing: a waiting caller who presses `key` (offline waiting), or who hangs
/// up after waiting at least `after_ms`, keeps its place without a line open. When its turn
/// comes and an agent answers the offer, the platform calls the caller back through `trunk`
/// and bridges them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackOffer {
    pub trunk: TrunkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<char>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    /// Played to a caller who pressed `key` before the platform hangs up ("we will call you
    /// back").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptId>,
}

/// R3.20: a queue's voicemail. A waiting caller who presses `key` leaves the line, hears
/// `prompt` ("leave your message after the tone"), and up to `max_ms` (at most 30 s) of what
/// it says is recorded with the call; `#` or hanging up ends the message early, then
/// `thanks` plays (if set) and the platform hangs up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicemailBox {
    pub key: char,
    pub prompt: PromptId,
    #[serde(default = "voicemail_max_ms")]
    pub max_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thanks: Option<PromptId>,
}

/// The longest queue voicemail (R3.20).
pub const VOICEMAIL_MAX_MS: u64 = 30_000;

fn voicemail_max_ms() -> u64 {
    VOICEMAIL_MAX_MS
}

/// R4.5: the agent-number announcement of a queue; the digits are the number prompts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAnnouncement {
    pub prefix: PromptId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<PromptId>,
}

impl AgentAnnouncement {
    /// What the caller hears for `agent`: prefix, one number prompt per digit, suffix.
    pub fn prompts(&self, agent: &AgentId) -> Vec<PromptId> {
        let digits = agent
            .as_str()
            .chars()
            .filter_map(|c| c.to_digit(10))
            .map(|d| {
                format!("number_{d}")
                    .parse()
                    .expect("number prompt ids are valid")
            });
        std::iter::once(self.prefix.clone())
            .chain(digits)
            .chain(self.suffix.clone())
            .collect()
    }
}

/// R3.8: `prompt` every `every_ms` while a call waits, counted from when it joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodicAnnouncement {
    pub prompt: PromptId,
    pub every_ms: u64,
}

impl PeriodicAnnouncement {
    /// The first announcement after `now_ms` for a call that joined at `enqueued_at_ms`.
    pub fn next_at(&self, enqueued_at_ms: u64, now_ms: u64) -> u64 {
        let every = self.every_ms.max(1);
        enqueued_at_ms + (now_ms.saturating_sub(enqueued_at_ms) / every + 1) * every
    }
}

/// R3.9: after `after_ms` in line (and every `every_ms` after that, if set) the caller hears
/// `prefix`, the estimated wait in minutes, then `suffix`. The estimate comes from the
/// queue's recent service rate and the call's place in line; the minutes are spoken with the
/// number prompts (`number_0` .. `number_20`, `number_30` .. `number_90`: bundled, or the
/// tenant's own prompts of those ids). A queue that has not answered calls lately has no
/// estimate, and the caller hears music instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitAnnouncement {
    #[serde(default = "WaitAnnouncement::default_after_ms")]
    pub after_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    pub prefix: PromptId,
    pub suffix: PromptId,
}

impl WaitAnnouncement {
    /// R3.9: "after 15 s in queue".
    pub const DEFAULT_AFTER_MS: u64 = 15_000;

    fn default_after_ms() -> u64 {
        Self::DEFAULT_AFTER_MS
    }

    /// When the announcement is due for a call that joined at `enqueued_at_ms`, given it is
    /// `now_ms`: the first one not yet past (a call restored late skips the ones it missed).
    pub fn next_at(&self, enqueued_at_ms: u64, now_ms: u64) -> Option<u64> {
        let first = enqueued_at_ms + self.after_ms;
        match self.every_ms {
            _ if first >= now_ms => Some(first),
            None => None,
            Some(every) => Some(first + (now_ms - first).div_ceil(every) * every),
        }
    }
}

/// How long an external number (R3.4) may ring before the transfer is given up.
pub const EXTERNAL_RING_MS: u64 = 30_000;

/// A number the platform may dial out to: 3 to 24 digits, a leading `+` allowed.
fn check_dial_number(field: &'static str, number: &str) -> Result<(), ModelError> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    if (3..=24).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            field,
            why: "an external number is 3 to 24 digits, a leading + allowed",
        })
    }
}

/// The prompts that speak `minutes` (1 to 99): "twenty", "three" for 23.
pub fn number_prompts(minutes: u64) -> Vec<PromptId> {
    let n = minutes.clamp(1, 99);
    let id = |n: u64| {
        format!("number_{n}")
            .parse()
            .expect("number prompt ids are valid")
    };
    match n {
        0..=20 => vec![id(n)],
        _ if n % 10 == 0 => vec![id(n)],
        _ => vec![id(n / 10 * 10), id(n % 10)],
    }
}

/// Which queue rule turned a call away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRule {
    /// R3.5: the queue holds `max_queued` calls.
    MaxQueued,
    /// R3.3: no signed-in agent of the queue is ready.
    AllBusy,
    /// R3.4: the call waited the queue's `max_wait_ms`.
    MaxWait,
    /// R3.6: the caller pressed the queue's `cancel_key`.
    CancelKey,
}

impl QueueRule {
    /// The CDR's `reason` for a call this rule released.
    pub fn reason(self) -> &'static str {
        match self {
            QueueRule::MaxQueued => "max_queued",
            QueueRule::AllBusy => "all_busy",
            QueueRule::MaxWait => "max_wait",
            QueueRule::CancelKey => "cancel_key",
        }
    }
}

impl Queue {
    /// A queue with its timings and no prompts, rules or announcements; set the rest with
    /// struct update syntax.
    pub fn new(
        tenant: TenantId,
        id: QueueId,
        name: impl Into<String>,
        max_wait_ms: u64,
        ring_timeout_ms: u64,
        acw_ms: u64,
    ) -> Queue {
        Queue {
            tenant,
            id,
            name: name.into(),
            max_wait_ms,
            music_prompt: None,
            timeout_prompt: None,
            ring_timeout_ms,
            acw_ms,
            max_queued: None,
            on_max_queued: None,
            on_all_busy: None,
            on_max_wait: None,
            cancel_key: None,
            on_cancel: None,
            wait_announcement: None,
            periodic_announcement: None,
            agent_announcement: None,
            repeat_caller: None,
            voicemail: None,
            callback: None,
        }
    }

    /// The action of `rule`, if configured.
    pub fn rule_action(&self, rule: QueueRule) -> Option<&RuleAction> {
        match rule {
            QueueRule::MaxQueued => self.on_max_queued.as_ref(),
            QueueRule::AllBusy => self.on_all_busy.as_ref(),
            QueueRule::MaxWait => self.on_max_wait.as_ref(),
            QueueRule::CancelKey => self.on_cancel.as_ref(),
        }
    }

    /// What `rule` does with a call, defaults included: a max-wait release plays
    /// `timeout_prompt`; every other unset rule releases without a prompt.
    pub fn rule_or_default(&self, rule: QueueRule) -> RuleAction {
        self.rule_action(rule)
            .cloned()
            .unwrap_or_else(|| RuleAction::Release {
                prompt: match rule {
                    QueueRule::MaxWait => self.timeout_prompt.clone(),
                    _ => None,
                },
            })
    }

    /// Every configured rule, with its field name.
    pub fn rules(&self) -> [(&'static str, Option<&RuleAction>); 4] {
        [
            ("on_max_queued", self.on_max_queued.as_ref()),
            ("on_all_busy", self.on_all_busy.as_ref()),
            ("on_max_wait", self.on_max_wait.as_ref()),
            ("on_cancel", self.on_cancel.as_ref()),
        ]
    }

    /// The trunks the queue's rules and callback offer dial out through.
    pub fn trunks(&self) -> Vec<&TrunkId> {
        let rules = self.rules().into_iter().filter_map(|(_, rule)| match rule {
            Some(RuleAction::TransferNumber { trunk, .. }) => Some(trunk),
            _ => None,
        });
        rules
            .chain(self.callback.as_ref().map(|c| &c.trunk))
            .collect()
    }

    /// The queues, flows and prompts the queue refers to, for reference checks.
    pub fn references(&self) -> (Vec<&QueueId>, Vec<&FlowId>, Vec<&PromptId>) {
        let (mut queues, mut flows, mut prompts) = (Vec::new(), Vec::new(), Vec::new());
        prompts.extend(self.music_prompt.iter().chain(self.timeout_prompt.iter()));
        if let Some(w) = &self.wait_announcement {
            prompts.extend([&w.prefix, &w.suffix]);
        }
        if let Some(p) = &self.periodic_announcement {
            prompts.push(&p.prompt);
        }
        if let Some(a) = &self.agent_announcement {
            prompts.push(&a.prefix);
            prompts.extend(a.suffix.iter());
        }
        if let Some(v) = &self.voicemail {
            prompts.push(&v.prompt);
            prompts.extend(v.thanks.iter());
        }
        if let Some(c) = &self.callback {
            prompts.extend(c.prompt.iter());
        }
        for (_, rule) in self.rules() {
            match rule {
                Some(RuleAction::TransferQueue { queue })
                | Some(RuleAction::TransferAgent { queue, .. }) => queues.push(queue),
                Some(RuleAction::Interflow { queues: to }) => queues.extend(to),
                Some(RuleAction::TransferFlow { flow, .. }) => flows.push(flow),
                Some(RuleAction::Release { prompt: Some(p) }) => prompts.push(p),
                _ => {}
            }
        }
        (queues, flows, prompts)
    }
}

/// What a queue rule does with a call (R3.3-R3.6): release it, with a prompt played first if
/// one is named; transfer it to another queue of the tenant (it waits there from then); or
/// transfer it to an IVR flow of the tenant, at `node` or the flow's start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleAction {
    Release {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<PromptId>,
    },
    TransferQueue {
        queue: QueueId,
    },
    /// R3.4: to one agent: the call waits in `queue` (one the agent serves) for that agent
    /// only, until that queue's own rules move it on.
    TransferAgent {
        agent: AgentId,
        queue: QueueId,
    },
    TransferFlow {
        flow: FlowId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// R3.4 transfer to an external number: the platform calls `number` through `trunk`'s
    /// outbound address and bridges the caller to whoever answers (the call then leaves the
    /// center; its CDR's `external` mark has the course). Not answered within
    /// `EXTERNAL_RING_MS`, or refused: the call is released with the reason.
    TransferNumber {
        number: String,
        trunk: TrunkId,
    },
    /// R3.17 interflow: to the first of `queues` that takes the call (each judges it with
    /// its own max-queued and all-busy rules as it arrives; a refusal moves it to the next).
    /// When all refuse, the last one's own rule applies.
    Interflow {
        queues: Vec<QueueId>,
    },
}

/// An agent (R4.8). The agent signs in at a phone extension to take calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub tenant: TenantId,
    pub id: AgentId,
    pub name: String,
    /// The queues whose calls this agent takes. A change applies live (R3.19 skill reset):
    /// a signed-in agent leaves the old queues and joins the new ones without signing in
    /// again.
    pub skills: Vec<QueueId>,
    /// R3.18: the agent's role; with `takes_calls` it decides whether the agent is offered
    /// calls at all.
    #[serde(default)]
    pub role: AgentRole,
    /// Overrides the role's default (agents take calls, team leads and supervisors do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takes_calls: Option<bool>,
    /// R3.12: what the agent is (`cantonese`, `vip`, `senior`), matched against the tags a
    /// routing rule asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The agent's skill level (1-10) per queue; 1 where unset. A routing rule may ask for a
    /// minimum (VIP layers, R3.12).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub levels: BTreeMap<QueueId, u8>,
    /// R4.8: the agent's group (team), for the agent-state view and a team's supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// R4.8: the hotline (one of the tenant's access codes) the agent works for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotline: Option<String>,
    /// R4.8: what the agent may do, overriding its role's defaults (`Permission::defaults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<std::collections::BTreeSet<Permission>>,
}

/// R4.8: an operation the platform allows an agent only with the permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// R4.7: send an agent away (training, study, meeting, interview) and end it.
    SetAway,
    /// R3.20: mark a queue voicemail handled.
    HandleVoicemail,
    /// R3.10: add or remove a waiting call's queues, or change its priority, when the request
    /// names who makes it.
    ManageCalls,
}

impl Permission {
    pub const ALL: [Permission; 3] = [
        Permission::SetAway,
        Permission::HandleVoicemail,
        Permission::ManageCalls,
    ];

    /// What a role may do unless the agent's `permissions` say otherwise: agents handle
    /// voicemail; team leads and supervisors also manage agents' away states and calls.
    pub fn defaults(role: AgentRole) -> std::collections::BTreeSet<Permission> {
        match role {
            AgentRole::Agent => [Permission::HandleVoicemail].into(),
            AgentRole::TeamLead | AgentRole::Supervisor => Permission::ALL.into(),
        }
    }
}

/// R3.18: who an agent is in the center.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRole {
    #[default]
    Agent,
    TeamLead,
    Supervisor,
}

impl Agent {
    /// Whether the agent is offered calls (R3.18): its `takes_calls`, else its role's
    /// default.
    pub fn takes_calls(&self) -> bool {
        self.takes_calls.unwrap_or(self.role == AgentRole::Agent)
    }

    /// The agent's permissions (R4.8): its own list, else its role's defaults.
    pub fn permissions(&self) -> std::collections::BTreeSet<Permission> {
        self.permissions
            .clone()
            .unwrap_or_else(|| Permission::defaults(self.role))
    }

    pub fn may(&self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }

    /// What a queue knows of the agent to match a call's needs (R3.12).
    pub fn fit(&self, queue: &QueueId) -> crate::script::AgentFit {
        crate::script::AgentFit {
            tags: self.tags.clone(),
            level: self.levels.get(queue).copied().unwrap_or(1),
        }
    }

    /// The queues the agent is offered calls of: its skills, or none for a role that takes
    /// no calls.
    pub fn serving_queues(&self) -> Vec<QueueId> {
        if self.takes_calls() {
            self.skills.clone()
        } else {
            Vec::new()
        }
    }
}

/// A phone extension with its digest credentials. Only the HA1 hashes are kept, never
/// the password (R10.1); one per algorithm the registrar accepts (RFC 8760).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    pub tenant: TenantId,
    pub id: ExtensionId,
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

impl Extension {
    /// Builds an extension from a clear password, hashing it for `realm` (the tenant domain).
    pub fn with_password(
        tenant: TenantId,
        id: ExtensionId,
        password: &str,
        realm: &str,
    ) -> Result<Self, ModelError> {
        validate_password(password)?;
        let ha1_md5 = crate::digest_ha1_md5(id.as_str(), realm, password);
        let ha1_sha256 = crate::digest_ha1_sha256(id.as_str(), realm, password);
        Ok(Self {
            tenant,
            id,
            ha1_md5,
            ha1_sha256,
        })
    }
}

/// A carrier trunk, recognised by the source address of its requests (R2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trunk {
    pub id: TrunkId,
    pub name: String,
    pub sources: Vec<IpAddr>,
    /// Where the platform sends its own calls out through this trunk (R3.11 callbacks):
    /// the carrier's SIP address, `ip:port` (UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<std::net::SocketAddr>,
}

/// A recorded prompt. `file` names a WAV known to every node: a bundled sample prompt
/// (`builtin:welcome`) or a path on the nodes' shared prompt directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub tenant: TenantId,
    pub id: PromptId,
    pub file: String,
}

/// Any configuration item, for the generic create/update path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "item")]
pub enum ConfigItem {
    Tenant(Tenant),
    /// Boxed: a queue with all its rules is by far the largest item.
    Queue(Box<Queue>),
    Agent(Agent),
    Extension(Extension),
    Trunk(Trunk),
    Flow(Flow),
    Prompt(Prompt),
    /// R3.12: a known caller.
    Customer(crate::script::Customer),
}

/// The key of a configuration item, for delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ConfigKey {
    Tenant {
        id: TenantId,
    },
    Queue {
        tenant: TenantId,
        id: QueueId,
    },
    Agent {
        tenant: TenantId,
        id: AgentId,
    },
    Extension {
        tenant: TenantId,
        id: ExtensionId,
    },
    Trunk {
        id: TrunkId,
    },
    Flow {
        tenant: TenantId,
        id: FlowId,
    },
    Prompt {
        tenant: TenantId,
        id: PromptId,
    },
    Customer {
        tenant: TenantId,
        number: CustomerId,
    },
}

impl ConfigItem {
    pub fn key(&self) -> ConfigKey {
        match self {
            ConfigItem::Tenant(t) => ConfigKey::Tenant { id: t.id.clone() },
            ConfigItem::Queue(q) => ConfigKey::Queue {
                tenant: q.tenant.clone(),
                id: q.id.clone(),
            },
            ConfigItem::Agent(a) => ConfigKey::Agent {
                tenant: a.tenant.clone(),
                id: a.id.clone(),
            },
            ConfigItem::Extension(e) => ConfigKey::Extension {
                tenant: e.tenant.clone(),
                id: e.id.clone(),
            },
            ConfigItem::Trunk(t) => ConfigKey::Trunk { id: t.id.clone() },
            ConfigItem::Flow(f) => ConfigKey::Flow {
                tenant: f.tenant.clone(),
                id: f.id.clone(),
            },
            ConfigItem::Prompt(p) => ConfigKey::Prompt {
                tenant: p.tenant.clone(),
                id: p.id.clone(),
            },
            ConfigItem::Customer(c) => ConfigKey::Customer {
                tenant: c.tenant.clone(),
                number: c.number.clone(),
            },
        }
    }

    /// Checks the item on its own (formats, lengths, ranges); references are checked on apply.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ConfigItem::Tenant(t) => {
                check_text("tenant name", &t.name, 64)?;
                check_domain(&t.domain)?;
                for code in &t.landing_codes {
                    check_digits("landing code", code, 8)?;
                }
                for access in &t.access_codes {
                    check_digits("access code", &access.code, 20)?;
                }
                if t.routing.len() > 200 {
                    return Err(ModelError::Invalid {
                        field: "routing",
                        why: "at most 200 rules",
                    });
                }
                let mut names = std::collections::BTreeSet::new();
                for rule in &t.routing {
                    rule.validate()?;
                    if !names.insert(rule.name.as_str()) {
                        return Err(ModelError::Invalid {
                            field: "routing",
                            why: "rule names must be unique",
                        });
                    }
                }
                Ok(())
            }
            ConfigItem::Queue(q) => {
                check_text("queue name", &q.name, 64)?;
                check_range("max_wait_ms", q.max_wait_ms, 1_000, 24 * 3_600_000)?;
                check_range("ring_timeout_ms", q.ring_timeout_ms, 1_000, 300_000)?;
                check_range("acw_ms", q.acw_ms, 0, 3_600_000)?;
                if let Some(max) = q.max_queued {
                    check_range("max_queued", u64::from(max), 0, 100_000)?;
                }
                if let Some(w) = &q.wait_announcement {
                    check_range("wait_announcement.after_ms", w.after_ms, 1_000, 3_600_000)?;
                    if let Some(every) = w.every_ms {
                        check_range("wait_announcement.every_ms", every, 10_000, 3_600_000)?;
                    }
                }
                if let Some(p) = &q.periodic_announcement {
                    check_range(
                        "periodic_announcement.every_ms",
                        p.every_ms,
                        5_000,
                        3_600_000,
                    )?;
                }
                if q.cancel_key.is_some_and(|k| !"0123456789*#".contains(k)) {
                    return Err(ModelError::Invalid {
                        field: "cancel_key",
                        why: "one of 0-9 * #",
                    });
                }
                if let Some(r) = &q.repeat_caller {
                    r.validate()?;
                }
                if let Some(c) = &q.callback {
                    if c.key.is_none() && c.after_ms.is_none() {
                        return Err(ModelError::Invalid {
                            field: "callback",
                            why: "set a key, after_ms, or both",
                        });
                    }
                    if let Some(after) = c.after_ms {
                        check_range("callback after_ms", after, 0, 3_600_000)?;
                    }
                    let taken = [q.cancel_key, q.voicemail.as_ref().map(|v| v.key)];
                    if c.key
                        .is_some_and(|k| !"0123456789*#".contains(k) || taken.contains(&Some(k)))
                    {
                        return Err(ModelError::Invalid {
                            field: "callback key",
                            why: "one of 0-9 * #, not the cancel or voicemail key",
                        });
                    }
                }
                if let Some(v) = &q.voicemail {
                    check_range("voicemail max_ms", v.max_ms, 1_000, VOICEMAIL_MAX_MS)?;
                    if !"0123456789*".contains(v.key) || q.cancel_key == Some(v.key) {
                        return Err(ModelError::Invalid {
                            field: "voicemail key",
                            why: "one of 0-9 * (# ends a message), not the cancel key",
                        });
                    }
                }
                for (field, rule) in q.rules() {
                    if let Some(RuleAction::Interflow { queues }) = rule {
                        if queues.is_empty() || queues.len() > 8 || queues.contains(&q.id) {
                            return Err(ModelError::Invalid {
                                field,
                                why: "interflow to 1 to 8 other queues",
                            });
                        }
                    }
                    if let Some(RuleAction::TransferNumber { number, .. }) = rule {
                        check_dial_number(field, number)?;
                    }
                    if let Some(
                        RuleAction::TransferQueue { queue }
                        | RuleAction::TransferAgent { queue, .. },
                    ) = rule
                    {
                        if *queue == q.id {
                            return Err(ModelError::Invalid {
                                field,
                                why: "a queue cannot transfer calls to itself",
                            });
                        }
                    }
                }
                Ok(())
            }
            ConfigItem::Agent(a) => {
                check_text("agent name", &a.name, 64)?;
                if a.skills.len() > 64 {
                    return Err(ModelError::Invalid {
                        field: "skills",
                        why: "at most 64 queues",
                    });
                }
                crate::script::check_tags("agent tags", &a.tags)?;
                for level in a.levels.values() {
                    check_range("skill level", u64::from(*level), 1, 10)?;
                }
                if let Some(group) = &a.group {
                    check_text("agent group", group, 64)?;
                }
                if a.hotline.as_ref().is_some_and(|h| {
                    h.is_empty() || h.len() > 24 || !h.bytes().all(|b| b.is_ascii_digit())
                }) {
                    return Err(ModelError::Invalid {
                        field: "hotline",
                        why: "an access code of the tenant, digits",
                    });
                }
                Ok(())
            }
            ConfigItem::Extension(e) => {
                let hex_len =
                    |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex_len(&e.ha1_md5, 32) || !hex_len(&e.ha1_sha256, 64) {
                    return Err(ModelError::Invalid {
                        field: "ha1",
                        why: "not a digest hash",
                    });
                }
                Ok(())
            }
            ConfigItem::Trunk(t) => {
                check_text("trunk name", &t.name, 64)?;
                if t.sources.is_empty() || t.sources.len() > 64 {
                    return Err(ModelError::Invalid {
                        field: "sources",
                        why: "1 to 64 addresses",
                    });
                }
                Ok(())
            }
            ConfigItem::Flow(f) => f.validate(),
            ConfigItem::Prompt(p) => check_text("prompt file", &p.file, 256),
            ConfigItem::Customer(c) => c.validate(),
        }
    }
}

pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ModelError> {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ModelError::Invalid {
            field,
            why: "1 to 64 printable characters",
        });
    }
    Ok(())
}

pub(crate) fn check_digits(field: &'static str, value: &str, max: usize) -> Result<(), ModelError> {
    if crate::ids::is_digits(value, max) {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            field,
            why: "digits only, not too long",
        })
    }
}

pub(crate) fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ModelError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            field,
            why: "out of range",
        })
    }
}

fn check_domain(domain: &str) -> Result<(), ModelError> {
    let ok = (1..=253).contains(&domain.len())
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            field: "domain",
            why: "not a DNS name",
        })
    }
}

/// R10.1: at least 8 characters mixing letters, digits and symbols.
pub fn validate_password(password: &str) -> Result<(), ModelError> {
    let long = password.chars().count() >= 8 && password.len() <= 128;
    let letter = password.chars().any(|c| c.is_ascii_alphabetic());
    let digit = password.chars().any(|c| c.is_ascii_digit());
    let symbol = password.chars().any(|c| c.is_ascii_punctuation());
    if long && letter && digit && symbol {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            field: "password",
            why: "at least 8 characters with letters, digits and symbols",
        })
    }
}
