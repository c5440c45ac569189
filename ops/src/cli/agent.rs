//! `callgrid agent ...`: agent configuration (create, list, show, update, delete) and runtime
//! control on any node (`sign-in --extension E`, `ready`, `not-ready --reason R`, `sign-out`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use model::{AgentId, ExtensionId, QueueId, TenantId};

use super::admin::{execute, read_file, resolve_id, set, TenantScope, Verb};
use super::client::ApiClient;
use super::{output, ApiArgs};
use crate::error::usage_err;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an agent.
    Create(AgentFields),
    /// List a tenant's agents with their state.
    List(TenantScope),
    /// Show one agent with its state.
    Show(AgentKey),
    /// Change an agent (only the fields given).
    Update(AgentFields),
    /// Delete an agent.
    Delete(AgentKey),
    /// Sign the agent in at an extension.
    SignIn(AgentControl),
    /// Make the agent ready for calls.
    Ready(AgentControl),
    /// Make the agent not ready (with --reason).
    NotReady(AgentControl),
    /// Sign the agent out.
    SignOut(AgentControl),
    /// R4.7: a manager (team lead or supervisor) sends the agent away: --reason training,
    /// study, meeting or interview, --manager M.
    Away(AgentControl),
    /// R4.7: a manager ends the agent's away state (--manager M, --ready to make it ready).
    Back(AgentControl),
    /// R4.9: the agent-state view: agents per state, and each agent's state, time in it,
    /// calls and talk time (--group, --queue to narrow it; --watch N to refresh every N s).
    States(StatesArgs),
}

#[derive(Debug, Args)]
pub struct StatesArgs {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub queue: Option<QueueId>,
    /// Refresh every N seconds (1-3600) until interrupted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watch: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct AgentKey {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long, alias = "agent")]
    pub id: AgentId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct AgentFields {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long, alias = "agent")]
    pub id: Option<AgentId>,
    #[arg(long)]
    pub name: Option<String>,
    /// Queues whose calls the agent takes, comma separated. On `update` this is a live
    /// skill reset (R3.19): a signed-in agent moves without signing in again.
    #[arg(long, value_delimiter = ',')]
    pub skills: Option<Vec<QueueId>>,
    /// R3.18: agent, team-lead or supervisor (only agents take calls by default).
    #[arg(long, value_parser = parse_role)]
    pub role: Option<model::AgentRole>,
    /// Whether the agent is offered calls, overriding its role's default.
    #[arg(long)]
    pub takes_calls: Option<bool>,
    /// R3.12: the agent's tags, comma separated (cantonese,senior); empty to clear.
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// The agent's skill level in a queue, QUEUE=1..10 (repeatable; replaces all levels).
    #[arg(long = "level", value_parser = parse_level)]
    pub levels: Vec<(QueueId, u8)>,
    /// R4.8: the agent's group (team); empty to clear.
    #[arg(long)]
    pub group: Option<String>,
    /// R4.8: the hotline (an access code of the tenant) the agent works for; empty to clear.
    #[arg(long)]
    pub hotline: Option<String>,
    /// R4.8: what the agent may do, comma separated: set_away, handle_voicemail,
    /// manage_calls; `default` for its role's defaults, `none` for nothing.
    #[arg(long, value_parser = parse_permissions)]
    pub permissions: Option<PermissionsArg>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct AgentControl {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub agent: AgentId,
    /// The extension to sign in at (sign-in only).
    #[arg(long)]
    pub extension: Option<ExtensionId>,
    /// Why the agent is not ready (not-ready), or away (away).
    #[arg(long)]
    pub reason: Option<String>,
    /// The manager who sets or ends an away state (away, back).
    #[arg(long)]
    pub manager: Option<AgentId>,
    /// Ready after an away state (back only).
    #[arg(long)]
    pub ready: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn agents_path(tenant: &TenantId) -> String {
    format!("/api/v1/tenants/{tenant}/agents")
}

pub async fn run(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::List(s) => {
            execute(
                &s.api,
                Verb::List {
                    collection: agents_path(&s.tenant),
                },
            )
            .await
        }
        AgentCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{}/{}", agents_path(&k.tenant), k.id),
                },
            )
            .await
        }
        AgentCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{}/{}", agents_path(&k.tenant), k.id),
                },
            )
            .await
        }
        AgentCommand::Create(f) => {
            let (mut body, _) = agent_body(&f)?;
            body.entry("skills").or_insert(json!([]));
            execute(
                &f.api,
                Verb::Create {
                    collection: agents_path(&f.tenant),
                    body,
                },
            )
            .await
        }
        AgentCommand::Update(f) => {
            let (overlay, id) = agent_body(&f)?;
            execute(
                &f.api,
                Verb::Update {
                    item: format!("{}/{id}", agents_path(&f.tenant)),
                    overlay,
                },
            )
            .await
        }
        AgentCommand::SignIn(c) => {
            let extension = c.extension.clone().ok_or_else(|| {
                usage_err(
                    "E-NO-EXTENSION",
                    "sign-in needs the extension the agent sits at",
                    "pass --extension E",
                )
            })?;
            control(&c, "sign-in", json!({"extension": extension.as_str()})).await
        }
        AgentCommand::Ready(c) => control(&c, "ready", json!({})).await,
        AgentCommand::NotReady(c) => {
            let reason = c.reason.clone().unwrap_or_else(|| "break".to_string());
            if reason.is_empty()
                || reason.chars().count() > 64
                || reason.chars().any(char::is_control)
            {
                return Err(usage_err(
                    "E-BAD-ARG",
                    "the reason must be 1-64 printable characters",
                    "pass --reason lunch",
                ));
            }
            control(&c, "not-ready", json!({"reason": reason})).await
        }
        AgentCommand::SignOut(c) => control(&c, "sign-out", json!({})).await,
        AgentCommand::Away(c) => {
            let manager = need_manager(&c)?;
            let reason = c.reason.clone().ok_or_else(|| {
                usage_err(
                    "E-BAD-ARG",
                    "an away state needs its reason",
                    "pass --reason training|study|meeting|interview",
                )
            })?;
            control(&c, "away", json!({"reason": reason, "manager": manager})).await
        }
        AgentCommand::Back(c) => {
            let manager = need_manager(&c)?;
            control(&c, "back", json!({"manager": manager, "ready": c.ready})).await
        }
        AgentCommand::States(a) => {
            let client = ApiClient::new(&a.api.api, a.api.token.as_deref())?;
            // The query, encoded by `url` (a group name may hold spaces or `&`).
            let mut query = reqwest::Url::parse("http://localhost/")?;
            if let Some(group) = &a.group {
                query.query_pairs_mut().append_pair("group", group);
            }
            if let Some(queue) = &a.queue {
                query.query_pairs_mut().append_pair("queue", queue.as_str());
            }
            let path = match query.query() {
                Some(q) => format!("/api/v1/tenants/{}/agent-states?{q}", a.tenant),
                None => format!("/api/v1/tenants/{}/agent-states", a.tenant),
            };
            loop {
                let view = client.request(Method::GET, &path, None).await?;
                print_states(&view, a.api.output);
                let Some(every) = a.watch else {
                    return Ok(());
                };
                tokio::time::sleep(std::time::Duration::from_secs(every)).await;
                println!();
            }
        }
    }
}

fn need_manager(c: &AgentControl) -> anyhow::Result<String> {
    c.manager.as_ref().map(|m| m.to_string()).ok_or_else(|| {
        usage_err(
            "E-BAD-ARG",
            "away states are set and ended by a manager",
            "pass --manager <team lead or supervisor id>",
        )
    })
}

fn agent_body(f: &AgentFields) -> anyhow::Result<(Map<String, Value>, AgentId)> {
    let mut body = read_file(f.file.as_deref())?;
    if let Some(t) = body.get("tenant").and_then(Value::as_str) {
        if t != f.tenant.as_str() {
            return Err(usage_err(
                "E-TENANT-MISMATCH",
                format!("--tenant {} but the file says {t:?}", f.tenant),
                "make them agree",
            ));
        }
    }
    let id = resolve_id(f.id.clone(), &body, "agent")?;
    set(
        &mut body,
        vec![
            ("tenant", Some(json!(f.tenant.as_str()))),
            ("id", Some(json!(id.as_str()))),
            ("name", f.name.clone().map(Value::String)),
            (
                "skills",
                f.skills
                    .as_ref()
                    .map(|s| json!(s.iter().map(QueueId::as_str).collect::<Vec<_>>())),
            ),
            ("role", f.role.map(|r| json!(r))),
            ("group", f.group.as_ref().map(|g| optional(g))),
            ("hotline", f.hotline.as_ref().map(|h| optional(h))),
            (
                "permissions",
                f.permissions.as_ref().map(|p| match p {
                    PermissionsArg::Default => Value::Null,
                    PermissionsArg::These(list) => json!(list),
                }),
            ),
            ("takes_calls", f.takes_calls.map(|t| json!(t))),
            (
                "tags",
                f.tags
                    .as_ref()
                    .map(|t| json!(t.iter().filter(|t| !t.is_empty()).collect::<Vec<_>>())),
            ),
            (
                "levels",
                (!f.levels.is_empty()).then(|| {
                    json!(f
                        .levels
                        .iter()
                        .map(|(q, l)| (q.to_string(), *l))
                        .collect::<std::collections::BTreeMap<_, _>>())
                }),
            ),
        ],
    );
    Ok((body, id))
}

/// An empty text clears an optional field (JSON null).
fn optional(text: &str) -> Value {
    match text {
        "" => Value::Null,
        text => json!(text),
    }
}

/// `--permissions`: the role's defaults, or a list (possibly empty).
#[derive(Clone, Debug)]
pub enum PermissionsArg {
    Default,
    These(Vec<model::Permission>),
}

fn parse_permissions(s: &str) -> Result<PermissionsArg, String> {
    match s {
        "default" => Ok(PermissionsArg::Default),
        "none" | "" => Ok(PermissionsArg::These(Vec::new())),
        list => list
            .split(',')
            .map(|p| {
                serde_json::from_value(json!(p.trim().replace('-', "_"))).map_err(|_| {
                    format!("{p:?}: use set_away, handle_voicemail, manage_calls, default or none")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PermissionsArg::These),
    }
}

/// Prints the agent-state view (R4.9): the counts, then one row per agent.
fn print_states(view: &Value, format: super::OutputFormat) {
    if matches!(format, super::OutputFormat::Json) {
        return output::print(view, format);
    }
    let counts = view["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64() != Some(0))
                .map(|(state, n)| format!("{state} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!("{}: {}", view["tenant"].as_str().unwrap_or("?"), counts);
    let rows: Vec<Value> = view["agents"]
        .as_array()
        .map(|agents| {
            agents
                .iter()
                .map(|a| {
                    json!({
                        "agent": a["agent"],
                        "name": a["name"],
                        "state": a["state"],
                        "group": a["group"],
                        "reason": a["reason"],
                        "in_state_s": a["in_state_ms"].as_u64().unwrap_or(0) / 1_000,
                        "calls": a["calls_answered"],
                        "talk_s": a["talk_ms"].as_u64().unwrap_or(0) / 1_000,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    println!("{}", output::table(&Value::Array(rows)));
}

/// `QUEUE=LEVEL`, the level 1-10.
fn parse_level(s: &str) -> Result<(QueueId, u8), String> {
    let (queue, level) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write QUEUE=LEVEL, e.g. billing=3"))?;
    let queue = queue.parse::<QueueId>().map_err(|e| e.to_string())?;
    match level.parse::<u8>() {
        Ok(l) if (1..=10).contains(&l) => Ok((queue, l)),
        _ => Err(format!("{level:?}: a skill level is 1 to 10")),
    }
}

fn parse_role(s: &str) -> Result<model::AgentRole, String> {
    serde_json::from_value(json!(s.replace('-', "_")))
        .map_err(|_| format!("{s:?}: use agent, team-lead or supervisor"))
}

async fn control(c: &AgentControl, action: &str, body: Value) -> anyhow::Result<()> {
    let client = ApiClient::new(&c.api.api, c.api.token.as_deref())?;
    let path = format!("{}/{}/{action}", agents_path(&c.tenant), c.agent);
    let answer = client.request(Method::POST, &path, Some(&body)).await?;
    output::print(&answer, c.api.output);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_as_a_list_the_defaults_or_none() {
        use model::Permission::*;
        let these = |s: &str| match parse_permissions(s) {
            Ok(PermissionsArg::These(list)) => Some(list),
            _ => None,
        };
        assert_eq!(
            these("set_away,handle-voicemail"),
            Some(vec![SetAway, HandleVoicemail])
        );
        assert_eq!(these("none"), Some(vec![]));
        assert!(matches!(
            parse_permissions("default"),
            Ok(PermissionsArg::Default)
        ));
        assert!(parse_permissions("set_away,fly").is_err());
        assert_eq!(optional(""), Value::Null);
        assert_eq!(optional("team1"), json!("team1"));
    }
}
