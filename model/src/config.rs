//! The configuration schema: what admins create through the API and Raft replicates.
//! Every item validates itself (`validate`) before it is proposed, and the state machine
//! checks references between items when it applies them (see `state.rs`).

use serde::{Deserialize, Serialize};
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
}

/// Which queue rule turned a call away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRule {
    /// R3.5: the queue holds `max_queued` calls.
    MaxQueued,
    /// R3.3: no signed-in agent of the queue is ready.
    AllBusy,
}

impl QueueRule {
    /// The CDR's `reason` for a call this rule released.
    pub fn reason(self) -> &'static str {
        match self {
            QueueRule::MaxQueued => "max_queued",
            QueueRule::AllBusy => "all_busy",
        }
    }
}

impl Queue {
    /// The action of `rule`, if configured.
    pub fn rule_action(&self, rule: QueueRule) -> Option<&RuleAction> {
        match rule {
            QueueRule::MaxQueued => self.on_max_queued.as_ref(),
            QueueRule::AllBusy => self.on_all_busy.as_ref(),
        }
    }
}

/// What a queue rule does with a call (R3.3-R3.6): release it, with a prompt played first if
/// one is named, or transfer it to another queue of the tenant (it waits there from then).
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
}

/// An agent (R4.8). The agent signs in at a phone extension to take calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub tenant: TenantId,
    pub id: AgentId,
    pub name: String,
    /// The queues whose calls this agent takes.
    pub skills: Vec<QueueId>,
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
    Queue(Queue),
    Agent(Agent),
    Extension(Extension),
    Trunk(Trunk),
    Flow(Flow),
    Prompt(Prompt),
}

/// The key of a configuration item, for delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ConfigKey {
    Tenant { id: TenantId },
    Queue { tenant: TenantId, id: QueueId },
    Agent { tenant: TenantId, id: AgentId },
    Extension { tenant: TenantId, id: ExtensionId },
    Trunk { id: TrunkId },
    Flow { tenant: TenantId, id: FlowId },
    Prompt { tenant: TenantId, id: PromptId },
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
                for (field, rule) in [
                    ("on_max_queued", &q.on_max_queued),
                    ("on_all_busy", &q.on_all_busy),
                ] {
                    if let Some(RuleAction::TransferQueue { queue }) = rule {
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
        }
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ModelError> {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ModelError::Invalid {
            field,
            why: "1 to 64 printable characters",
        });
    }
    Ok(())
}

fn check_digits(field: &'static str, value: &str, max: usize) -> Result<(), ModelError> {
    if crate::ids::is_digits(value, max) {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            field,
            why: "digits only, not too long",
        })
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ModelError> {
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
