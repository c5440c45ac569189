//! Customer-aware routing (R3.12-R3.16): the callers a tenant knows (tags and priority level,
//! imported through the API), the tenant's routing script (declarative rules: conditions on
//! the caller, its tags and level, the time, the landing and access codes and the IVR's
//! choice of queue -> a queue or flow, a priority, the agents it needs), and repeat callers
//! (the agents who served a caller recently, preferred for a bounded time).
//!
//! Everything here is pure: the call machine evaluates it with the call's own clock readings,
//! so a call rebuilt after a takeover reaches the same decisions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{check_range, check_text};
use crate::ids::*;
use crate::ModelError;

/// A known caller (R3.12): imported from the customer's lists through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub tenant: TenantId,
    /// The caller's number, normalised (`075512345678`, not `+8675512345678`).
    pub number: CustomerId,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What the center knows of the caller (`elderly`, `vip`, `cantonese`), matched by
    /// routing rules (R3.12, R3.15).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// R3.7: the caller's priority level, 0-254; a call waits at least at this priority, so
    /// higher levels are served first (VIP layered routing, R3.12).
    #[serde(default)]
    pub level: u8,
}

impl Customer {
    pub fn validate(&self) -> Result<(), ModelError> {
        if !self.name.is_empty() {
            check_text("customer name", &self.name, 64)?;
        }
        check_tags("customer tags", &self.tags)?;
        check_range("level", u64::from(self.level), 0, 254)
    }
}

/// A tag: 1-32 characters of `a-z 0-9 _ -`, at most 16 per item.
pub(crate) fn check_tags(field: &'static str, tags: &[String]) -> Result<(), ModelError> {
    if tags.len() > 16 || !tags.iter().all(|t| is_name(t)) {
        return Err(ModelError::Invalid {
            field,
            why: "at most 16 tags of 1-32 characters a-z 0-9 _ -",
        });
    }
    Ok(())
}

/// One rule of a tenant's routing script (R3.14). Rules are tried in order; the first whose
/// conditions all hold applies. A rule without `ivr_queue` is tried when the call arrives
/// (before its IVR flow or queue); one with `ivr_queue` when the IVR sends the call to that
/// queue (R3.21: the IVR's result).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRule {
    /// Named in the CDR's `routed_by` when it applies.
    pub name: String,
    #[serde(default)]
    pub when: Condition,
    /// Where the call goes; unset: where it was going (the rule only sets priority and
    /// needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<RouteTarget>,
    /// The call waits at least at this priority (R3.7, VIP layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Only agents with all these tags are offered the call (R3.12).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_tags: Vec<String>,
    /// Only agents whose skill level in the queue is at least this are offered the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_level: Option<u8>,
    /// After this long in line, `agent_tags` and `min_level` no longer hold: the call goes
    /// to the next layer, any agent of the queue. Unset: they hold while the call waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relax_after_ms: Option<u64>,
}

/// A rule's conditions; all that are set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The caller's normalised number starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_prefix: Option<String>,
    /// The caller is a known customer with all these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_tags: Vec<String>,
    /// The caller is a known customer of at least this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_caller_level: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_code: Option<String>,
    /// R3.21: the queue an IVR node chose. Set: the rule is tried at that IVR step instead
    /// of on arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivr_queue: Option<QueueId>,
    /// Daily hours (R3.15 "in a time window").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<TimeWindow>,
    /// The rule holds from this Unix time (ms) on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// The rule holds until this Unix time (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// Daily hours `from` (inclusive) to `to` (exclusive), `HH:MM` local time at
/// `utc_offset_minutes` (480: China Standard Time); `to` before `from` spans midnight.
/// `days`: 1 (Monday) to 7 (Sunday); empty: every day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<u8>,
    #[serde(default = "china_standard_time")]
    pub utc_offset_minutes: i32,
}

fn china_standard_time() -> i32 {
    480
}

/// Where a routing rule sends a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteTarget {
    /// Straight to a queue (R3.13, R3.15: a special queue).
    Queue(QueueId),
    /// To an IVR flow of the tenant, at its start or a named node ("welcome, then a human").
    Flow {
        flow: FlowId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
}

/// When a routing rule is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage<'a> {
    /// The call arrives, before its entry.
    Arrival,
    /// An IVR node sends the call to this queue.
    Ivr(&'a QueueId),
}

/// What a routing rule is judged on.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// Normalised.
    pub number: &'a str,
    pub customer: Option<&'a Customer>,
    pub landing_code: Option<&'a str>,
    pub access_code: &'a str,
    pub now_ms: u64,
}

impl RoutingRule {
    pub fn validate(&self) -> Result<(), ModelError> {
        if !is_name(&self.name) {
            return Err(ModelError::Invalid {
                field: "routing rule name",
                why: "use 1-32 characters a-z 0-9 _ -",
            });
        }
        check_tags("agent_tags", &self.agent_tags)?;
        check_tags("caller_tags", &self.when.caller_tags)?;
        if let Some(level) = self.min_level {
            check_range("min_level", u64::from(level), 1, 10)?;
        }
        if let Some(relax) = self.relax_after_ms {
            check_range("relax_after_ms", relax, 1_000, 3_600_000)?;
        }
        if let Some(priority) = self.priority {
            check_range("priority", u64::from(priority), 0, 254)?;
        }
        for (field, code) in [
            ("caller_prefix", &self.when.caller_prefix),
            ("landing_code", &self.when.landing_code),
            ("access_code", &self.when.access_code),
        ] {
            if let Some(code) = code {
                if !is_digits(code, 20) {
                    return Err(ModelError::Invalid {
                        field,
                        why: "1-20 digits",
                    });
                }
            }
        }
        if let Some(window) = &self.when.window {
            window.validate()?;
        }
        if let (Some(from), Some(until)) = (self.when.from_ms, self.when.until_ms) {
            if until <= from {
                return Err(ModelError::Invalid {
                    field: "until_ms",
                    why: "must be after from_ms",
                });
            }
        }
        Ok(())
    }

    /// Whether the rule applies to `caller` at `stage`.
    pub fn matches(&self, caller: &Caller<'_>, stage: Stage<'_>) -> bool {
        let w = &self.when;
        let stage_ok = match (stage, &w.ivr_queue) {
            (Stage::Arrival, None) => true,
            (Stage::Ivr(q), Some(chosen)) => q == chosen,
            _ => false,
        };
        stage_ok
            && w.caller_prefix
                .as_ref()
                .is_none_or(|p| caller.number.starts_with(p.as_str()))
            && (w.caller_tags.is_empty()
                || caller
                    .customer
                    .is_some_and(|c| w.caller_tags.iter().all(|t| c.tags.contains(t))))
            && w.min_caller_level
                .is_none_or(|l| caller.customer.is_some_and(|c| c.level >= l))
            && w.landing_code
                .as_ref()
                .is_none_or(|l| caller.landing_code == Some(l.as_str()))
            && w.access_code
                .as_ref()
                .is_none_or(|a| caller.access_code == a)
            && w.window.as_ref().is_none_or(|t| t.contains(caller.now_ms))
            && w.from_ms.is_none_or(|f| caller.now_ms >= f)
            && w.until_ms.is_none_or(|u| caller.now_ms < u)
    }
}

/// The first rule of `rules` that applies to `caller` at `stage`.
pub fn first_match<'r>(
    rules: &'r [RoutingRule],
    caller: &Caller<'_>,
    stage: Stage<'_>,
) -> Option<&'r RoutingRule> {
    rules.iter().find(|r| r.matches(caller, stage))
}

impl TimeWindow {
    fn minutes(hhmm: &str) -> Option<u32> {
        let (h, m) = hhmm.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field| ModelError::Invalid {
            field,
            why: "use HH:MM (00:00-23:59)",
        };
        let from = Self::minutes(&self.from).ok_or(bad("window from"))?;
        let to = Self::minutes(&self.to).ok_or(bad("window to"))?;
        if from == to {
            return Err(ModelError::Invalid {
                field: "window",
                why: "from and to must differ",
            });
        }
        if self.days.iter().any(|d| !(1..=7).contains(d)) {
            return Err(ModelError::Invalid {
                field: "window days",
                why: "1 (Monday) to 7 (Sunday)",
            });
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err(ModelError::Invalid {
                field: "utc_offset_minutes",
                why: "-840 to 840",
            });
        }
        Ok(())
    }

    /// Whether Unix time `now_ms` falls in the window. A window that spans midnight belongs
    /// to the day it starts on.
    pub fn contains(&self, now_ms: u64) -> bool {
        let (Some(from), Some(to)) = (Self::minutes(&self.from), Self::minutes(&self.to)) else {
            return false;
        };
        let local_min = (now_ms / 60_000) as i64 + i64::from(self.utc_offset_minutes);
        let minute = local_min.rem_euclid(1440) as u32;
        let day_index = local_min.div_euclid(1440);
        // 1970-01-01 was a Thursday (day 4).
        let weekday = |day: i64| (day + 3).rem_euclid(7) as u8 + 1;
        let (inside, start_day) = if from < to {
            (from <= minute && minute < to, day_index)
        } else if minute >= from {
            (true, day_index)
        } else {
            (minute < to, day_index - 1)
        };
        inside && (self.days.is_empty() || self.days.contains(&weekday(start_day)))
    }
}

/// R3.16: a queue's repeat-caller routing. A caller with at least `count` earlier calls to
/// the tenant within `period` is a repeat caller; its call is offered first to the agents
/// who served it (`mode`), for up to `wait_ms`, then to any agent of the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatCaller {
    pub period: Period,
    #[serde(default = "one")]
    pub count: u32,
    pub mode: RepeatMode,
    pub wait_ms: u64,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
    Month,
    Year,
}

impl Period {
    pub fn ms(self) -> u64 {
        match self {
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
            Period::Month => 30 * 86_400_000,
            Period::Year => 365 * 86_400_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepeatMode {
    /// The agents who served the caller most often in the period, most often first.
    Familiar,
    /// The agent who served the caller last, then the ones before.
    Last,
}

/// How many agents a repeat caller's call is held for.
pub const MAX_PREFERRED: usize = 3;

impl RepeatCaller {
    pub fn validate(&self) -> Result<(), ModelError> {
        check_range("repeat count", u64::from(self.count), 1, 1_000)?;
        check_range("repeat wait_ms", self.wait_ms, 1_000, 600_000)
    }

    /// The agents to prefer for a caller with `history` calling at `now_ms`, best first;
    /// empty when it is not a repeat caller or no agent served it.
    pub fn preferred(&self, history: &[PastCall], now_ms: u64) -> Vec<AgentId> {
        let since = now_ms.saturating_sub(self.period.ms());
        let recent: Vec<&PastCall> = history
            .iter()
            .filter(|c| c.at_ms >= since && c.at_ms <= now_ms)
            .collect();
        if recent.len() < self.count as usize {
            return Vec::new();
        }
        // Per agent: how often it served the caller, and when last.
        let mut served: BTreeMap<&AgentId, (usize, u64)> = BTreeMap::new();
        for call in &recent {
            if let Some(agent) = &call.agent {
                let e = served.entry(agent).or_default();
                e.0 += 1;
                e.1 = e.1.max(call.at_ms);
            }
        }
        let mut agents: Vec<(&AgentId, (usize, u64))> = served.into_iter().collect();
        match self.mode {
            RepeatMode::Familiar => agents.sort_by_key(|(id, (n, last))| {
                (
                    std::cmp::Reverse(*n),
                    std::cmp::Reverse(*last),
                    (*id).clone(),
                )
            }),
            RepeatMode::Last => {
                agents.sort_by_key(|(id, (_, last))| (std::cmp::Reverse(*last), (*id).clone()))
            }
        }
        agents
            .into_iter()
            .take(MAX_PREFERRED)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// One earlier call of a caller (kept in the replicated state from the CDRs, R3.16).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastCall {
    pub at_ms: u64,
    /// The agent who answered it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
}

/// How many earlier calls are kept per caller.
pub const CALLER_HISTORY: usize = 32;

/// `CallNeeds::prefer_until_ms` for a call that waits for its preferred agents for good (a
/// transfer to an agent, R3.4): it never widens; the queue's own rules move it on.
pub const PREFER_ALWAYS: u64 = u64::MAX;

/// What a queue must know of a call to pick its agent: the agents it needs (R3.12) and the
/// agents it prefers (R3.16), each for a bounded time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallNeeds {
    /// Only agents with all these tags ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_tags: Vec<String>,
    /// ... and at least this skill level in the queue ...
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_level: u8,
    /// ... until this time (then any agent of the queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relax_at_ms: Option<u64>,
    /// Only these agents, best first, until `prefer_until_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer: Vec<AgentId>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub prefer_until_ms: u64,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// What a queue knows of an agent for `CallNeeds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFit {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The agent's skill level in the queue (1 unless configured).
    #[serde(default = "level_one")]
    pub level: u8,
}

fn level_one() -> u8 {
    1
}

impl Default for AgentFit {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            level: level_one(),
        }
    }
}

impl CallNeeds {
    pub fn is_empty(&self) -> bool {
        self.agent_tags.is_empty() && self.min_level == 0 && self.prefer.is_empty()
    }

    fn preferring(&self, now_ms: u64) -> bool {
        !self.prefer.is_empty() && now_ms < self.prefer_until_ms
    }

    fn requiring(&self, now_ms: u64) -> bool {
        (!self.agent_tags.is_empty() || self.min_level > 0)
            && self.relax_at_ms.is_none_or(|at| now_ms < at)
    }

    /// Whether `agent` may be offered the call at `now_ms`, and how good a match it is
    /// (lower is better: its place among the preferred agents).
    pub fn admits(&self, agent: &AgentId, fit: &AgentFit, now_ms: u64) -> Option<usize> {
        if self.preferring(now_ms) {
            return self.prefer.iter().position(|p| p == agent);
        }
        if self.requiring(now_ms)
            && (fit.level < self.min_level || !self.agent_tags.iter().all(|t| fit.tags.contains(t)))
        {
            return None;
        }
        Some(0)
    }

    /// The next time the needs widen, if they still will.
    pub fn next_change(&self, now_ms: u64) -> Option<u64> {
        let prefer = (self.preferring(now_ms) && self.prefer_until_ms != PREFER_ALWAYS)
            .then_some(self.prefer_until_ms);
        let relax = self.requiring(now_ms).then_some(self.relax_at_ms).flatten();
        prefer.into_iter().chain(relax).min()
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("{s:?}: use hour, day, month or year"))
    }
}

impl std::str::FromStr for RepeatMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("{s:?}: use familiar or last"))
    }
}
