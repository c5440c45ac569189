//! Admin verbs over the REST API: `callgrid tenant|queue|extension|trunk|flow|prompt
//! create|list|show|update|delete` (agents are in `agent.rs`, which adds runtime control).
//!
//! An item is given by flags for its common fields and/or `--file item.json` for the full
//! JSON; flags win over the file. `update` reads the current item, overlays the file and the
//! flags, and writes the result back, so changing one field needs only that flag.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use model::{ExtensionId, FlowId, PromptId, QueueId, TenantId, TrunkId};

use super::client::ApiClient;
use super::output;
use super::ApiArgs;
use crate::error::usage_err;

/// The largest `--file` accepted.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

// ---- shared plumbing ----------------------------------------------------------------------

/// What to do with one kind of item.
pub(crate) enum Verb {
    Create {
        collection: String,
        body: Map<String, Value>,
    },
    Update {
        item: String,
        overlay: Map<String, Value>,
    },
    Replace {
        item: String,
        body: Map<String, Value>,
    },
    List {
        collection: String,
    },
    Show {
        item: String,
    },
    Delete {
        item: String,
    },
}

pub(crate) async fn execute(api: &ApiArgs, verb: Verb) -> anyhow::Result<()> {
    let client = ApiClient::new(&api.api, api.token.as_deref())?;
    let answer = match verb {
        Verb::Create { collection, body } => {
            client
                .request(Method::POST, &collection, Some(&Value::Object(body)))
                .await?
        }
        Verb::Update { item, overlay } => {
            let mut current = match client.get(&item).await? {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            current.extend(overlay);
            client
                .request(Method::PUT, &item, Some(&Value::Object(current)))
                .await?
        }
        Verb::Replace { item, body } => {
            client
                .request(Method::PUT, &item, Some(&Value::Object(body)))
                .await?
        }
        Verb::List { collection } => client.get(&collection).await?,
        Verb::Show { item } => client.get(&item).await?,
        Verb::Delete { item } => {
            client.request(Method::DELETE, &item, None).await?;
            json!({"deleted": item})
        }
    };
    output::print(&answer, api.output);
    Ok(())
}

/// Reads `--file` as a JSON object.
pub(crate) fn read_file(path: Option<&Path>) -> anyhow::Result<Map<String, Value>> {
    let Some(path) = path else {
        return Ok(Map::new());
    };
    match read_json(path, "one item as a JSON object")? {
        Value::Object(map) => Ok(map),
        _ => Err(usage_err(
            "E-FILE-JSON",
            format!("{} is not a JSON object", path.display()),
            "give one item as a JSON object",
        )),
    }
}

/// Reads a JSON file of at most 1 MiB; `what` says what it should hold.
pub(crate) fn read_json(path: &Path, what: &str) -> anyhow::Result<Value> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| {
            usage_err(
                "E-FILE-READ",
                format!("cannot read {shown}: {e}"),
                "pass an existing JSON file",
            )
        })?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(usage_err(
            "E-FILE-READ",
            format!("{shown} is larger than 1 MiB"),
            format!("pass {what}"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage_err(
            "E-FILE-READ",
            format!("cannot read {shown}: {e}"),
            "pass an existing UTF-8 JSON file",
        )
    })?;
    match serde_json::from_str::<Value>(&text) {
        Ok(value) => Ok(value),
        Err(e) => Err(usage_err(
            "E-FILE-JSON",
            format!("{shown}: {e}"),
            "fix the JSON syntax",
        )),
    }
}

/// Overlays `fields` (only those given) on `map`.
pub(crate) fn set(map: &mut Map<String, Value>, fields: Vec<(&str, Option<Value>)>) {
    for (key, value) in fields {
        if let Some(value) = value {
            map.insert(key.to_string(), value);
        }
    }
}

/// Fills `fields` only where the map has no value yet (create-time defaults).
pub(crate) fn defaults(map: &mut Map<String, Value>, fields: Vec<(&str, Value)>) {
    for (key, value) in fields {
        map.entry(key.to_string()).or_insert(value);
    }
}

/// The item id: from `--id`, else from the file's `"id"`, validated with `T`.
pub(crate) fn resolve_id<T: std::str::FromStr + std::fmt::Display>(
    flag: Option<T>,
    file: &Map<String, Value>,
    what: &str,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    if let Some(id) = flag {
        return Ok(id);
    }
    let raw = file.get("id").and_then(Value::as_str).ok_or_else(|| {
        usage_err(
            "E-NO-ID",
            format!("no {what} id given"),
            "pass --id or put \"id\" in the --file JSON",
        )
    })?;
    raw.parse::<T>()
        .map_err(|e| usage_err("E-BAD-ID", e.to_string(), "fix the id in the --file JSON"))
}

/// Checks that a `"tenant"` inside the file agrees with `--tenant`.
fn check_tenant(file: &Map<String, Value>, tenant: &TenantId) -> anyhow::Result<()> {
    match file.get("tenant").and_then(Value::as_str) {
        Some(t) if t != tenant.as_str() => Err(usage_err(
            "E-TENANT-MISMATCH",
            format!("--tenant {tenant} but the file says tenant {t:?}"),
            "make --tenant and the file's \"tenant\" agree",
        )),
        _ => Ok(()),
    }
}

fn str_value(v: Option<String>) -> Option<Value> {
    v.map(Value::String)
}

fn list_value<T: ToString>(v: Option<Vec<T>>) -> Option<Value> {
    v.map(|items| Value::Array(items.iter().map(|i| Value::String(i.to_string())).collect()))
}

fn num_value(v: Option<u64>) -> Option<Value> {
    v.map(|n| json!(n))
}

fn tenant_path(tenant: &TenantId, kind: &str) -> String {
    format!("/api/v1/tenants/{tenant}/{kind}")
}

#[derive(Debug, Args)]
pub struct TenantScope {
    /// The tenant (virtual center) id, e.g. gd.
    #[arg(long)]
    pub tenant: TenantId,
    #[command(flatten)]
    pub api: ApiArgs,
}

// ---- tenants ------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create(TenantFields),
    /// List tenants.
    List(ApiOnly),
    /// Show one tenant.
    Show(TenantKey),
    /// Change a tenant (only the fields given).
    Update(TenantFields),
    /// Delete a tenant (it must have no items left).
    Delete(TenantKey),
}

#[derive(Debug, Args)]
pub struct ApiOnly {
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct TenantKey {
    #[arg(long)]
    pub id: TenantId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct TenantFields {
    #[arg(long)]
    pub id: Option<TenantId>,
    #[arg(long)]
    pub name: Option<String>,
    /// SIP domain (also the digest realm), e.g. gd.callgrid.local.
    #[arg(long)]
    pub domain: Option<String>,
    /// Landing (area) codes, comma separated: 020,0755.
    #[arg(long = "landing-codes", value_delimiter = ',')]
    pub landing_codes: Option<Vec<String>>,
    /// Access codes as CODE=flow:ID or CODE=queue:ID (repeatable).
    #[arg(long = "access-code")]
    pub access_codes: Vec<String>,
    /// R3.14: the tenant's routing script, a JSON array of rules (see README); `[]` clears.
    #[arg(long)]
    pub routing_file: Option<PathBuf>,
    /// The full item as JSON; flags override its fields.
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn access_codes(specs: &[String]) -> anyhow::Result<Option<Value>> {
    if specs.is_empty() {
        return Ok(None);
    }
    let hint = "write --access-code 95598=flow:main or 95598=queue:general";
    let mut out = Vec::new();
    for spec in specs {
        let (code, entry) = spec.split_once('=').ok_or_else(|| {
            usage_err(
                "E-BAD-ARG",
                format!("access code {spec:?} has no '='"),
                hint,
            )
        })?;
        let entry = match entry.split_once(':') {
            Some(("flow", id)) => {
                json!({"kind": "flow", "id": id.parse::<FlowId>().map_err(|e| usage_err("E-BAD-ID", e.to_string(), hint))?})
            }
            Some(("queue", id)) => {
                json!({"kind": "queue", "id": id.parse::<QueueId>().map_err(|e| usage_err("E-BAD-ID", e.to_string(), hint))?})
            }
            _ => {
                return Err(usage_err(
                    "E-BAD-ARG",
                    format!("access code entry {entry:?} is not flow:ID or queue:ID"),
                    hint,
                ))
            }
        };
        out.push(json!({"code": code, "entry": entry}));
    }
    Ok(Some(Value::Array(out)))
}

pub async fn run_tenant(command: TenantCommand) -> anyhow::Result<()> {
    let collection = "/api/v1/tenants".to_string();
    match command {
        TenantCommand::List(a) => execute(&a.api, Verb::List { collection }).await,
        TenantCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{collection}/{}", k.id),
                },
            )
            .await
        }
        TenantCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{collection}/{}", k.id),
                },
            )
            .await
        }
        TenantCommand::Create(f) => {
            let (body, _) = tenant_body(&f)?;
            execute(&f.api, Verb::Create { collection, body }).await
        }
        TenantCommand::Update(f) => {
            let (overlay, id) = tenant_body(&f)?;
            execute(
                &f.api,
                Verb::Update {
                    item: format!("{collection}/{id}"),
                    overlay,
                },
            )
            .await
        }
    }
}

fn tenant_body(f: &TenantFields) -> anyhow::Result<(Map<String, Value>, TenantId)> {
    let mut body = read_file(f.file.as_deref())?;
    let id = resolve_id(f.id.clone(), &body, "tenant")?;
    set(
        &mut body,
        vec![
            ("id", Some(json!(id.as_str()))),
            ("name", str_value(f.name.clone())),
            ("domain", str_value(f.domain.clone())),
            ("landing_codes", list_value(f.landing_codes.clone())),
            ("access_codes", access_codes(&f.access_codes)?),
            (
                "routing",
                f.routing_file
                    .as_deref()
                    .map(|p| read_json(p, "a JSON array of routing rules"))
                    .transpose()?,
            ),
        ],
    );
    Ok((body, id))
}

// ---- queues -------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a skill queue.
    Create(Box<QueueFields>),
    /// List a tenant's queues.
    List(TenantScope),
    /// Show one queue's configuration.
    Show(QueueKey),
    /// Change a queue (only the fields given).
    Update(Box<QueueFields>),
    /// Delete a queue.
    Delete(QueueKey),
    /// Live status of one queue (waiting, longest wait, agents, idle agents).
    Status(QueueKey),
}

#[derive(Debug, Args)]
pub struct QueueKey {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: QueueId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct QueueFields {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: Option<QueueId>,
    #[arg(long)]
    pub name: Option<String>,
    /// Longest wait before the call is released (default 300000 on create).
    #[arg(long)]
    pub max_wait_ms: Option<u64>,
    /// How long an agent's phone rings before the offer moves on (default 20000).
    #[arg(long)]
    pub ring_timeout_ms: Option<u64>,
    /// After-call work time (default 5000).
    #[arg(long)]
    pub acw_ms: Option<u64>,
    #[arg(long)]
    pub music_prompt: Option<PromptId>,
    #[arg(long)]
    pub timeout_prompt: Option<PromptId>,
    /// Most calls that may wait (R3.5); the next one gets --on-max-queued.
    #[arg(long)]
    pub max_queued: Option<u32>,
    /// What a call finding the queue full gets: `release`, `queue:<id>`,
    /// `interflow:<id>,<id>..` (R3.17) or `flow:<id>[:<node>]` (transfer).
    #[arg(long, value_parser = parse_rule_target)]
    pub on_max_queued: Option<model::RuleAction>,
    /// With `--on-max-queued release`: the prompt played before the release.
    #[arg(long)]
    pub on_max_queued_prompt: Option<PromptId>,
    /// R3.3: what a call arriving while no agent of the queue is ready gets: `release`,
    /// `queue:<id>` or `flow:<id>[:<node>]` (unset: it waits).
    #[arg(long, value_parser = parse_rule_target)]
    pub on_all_busy: Option<model::RuleAction>,
    /// With `--on-all-busy release`: the prompt played before the release.
    #[arg(long)]
    pub on_all_busy_prompt: Option<PromptId>,
    /// R3.4: what a call that waited --max-wait-ms gets: `release`, `queue:<id>` or
    /// `flow:<id>[:<node>]` (unset: released with --timeout-prompt).
    #[arg(long, value_parser = parse_rule_target)]
    pub on_max_wait: Option<model::RuleAction>,
    /// With `--on-max-wait release`: the prompt played before the release.
    #[arg(long)]
    pub on_max_wait_prompt: Option<PromptId>,
    /// R3.6: the key (0-9, *, #) a waiting caller presses to leave the line.
    #[arg(long)]
    pub cancel_key: Option<char>,
    /// What a caller who pressed --cancel-key gets: `release`, `queue:<id>` or
    /// `flow:<id>[:<node>]` (unset: released).
    #[arg(long, value_parser = parse_rule_target)]
    pub on_cancel: Option<model::RuleAction>,
    /// With `--on-cancel release`: the prompt played before the release.
    #[arg(long)]
    pub on_cancel_prompt: Option<PromptId>,
    /// R3.9: the estimated-wait announcement's first prompt ("your wait is about"); with
    /// --wait-suffix.
    #[arg(long, requires = "wait_suffix")]
    pub wait_prefix: Option<PromptId>,
    /// The announcement's last prompt, after the minutes ("minutes").
    #[arg(long, requires = "wait_prefix")]
    pub wait_suffix: Option<PromptId>,
    /// When the announcement is first played, after joining (default 15000).
    #[arg(long, requires = "wait_prefix")]
    pub wait_after_ms: Option<u64>,
    /// Repeat the announcement this often (default: once).
    #[arg(long, requires = "wait_prefix")]
    pub wait_every_ms: Option<u64>,
    /// R3.8: a prompt played to waiting callers every --periodic-every-ms, between music.
    #[arg(long, requires = "periodic_every_ms")]
    pub periodic_prompt: Option<PromptId>,
    #[arg(long, requires = "periodic_prompt")]
    pub periodic_every_ms: Option<u64>,
    /// R4.5: on answer the caller hears this prompt, then the agent's number digit by digit.
    #[arg(long)]
    pub agent_prefix: Option<PromptId>,
    /// With --agent-prefix: the prompt after the number ("at your service").
    #[arg(long, requires = "agent_prefix")]
    pub agent_suffix: Option<PromptId>,
    /// R3.11: callbacks go out through this trunk (it needs an outbound address); with
    /// --callback-key and/or --callback-after-ms.
    #[arg(long)]
    pub callback_trunk: Option<TrunkId>,
    /// The key a waiting caller presses to be called back instead of holding.
    #[arg(long, requires = "callback_trunk")]
    pub callback_key: Option<char>,
    /// A caller who hangs up after waiting this long keeps its place and is called back.
    #[arg(long, requires = "callback_trunk")]
    pub callback_after_ms: Option<u64>,
    /// Played after the callback key, before the platform hangs up.
    #[arg(long, requires = "callback_trunk")]
    pub callback_prompt: Option<PromptId>,
    /// R3.20: the key (0-9, *) a waiting caller presses to leave a message.
    #[arg(long, requires = "voicemail_prompt")]
    pub voicemail_key: Option<char>,
    /// With --voicemail-key: played before recording ("after the tone ...").
    #[arg(long, requires = "voicemail_key")]
    pub voicemail_prompt: Option<PromptId>,
    /// The longest message, 1000-30000 ms (default 30000).
    #[arg(long, requires = "voicemail_key")]
    pub voicemail_max_ms: Option<u64>,
    /// Played after the message, before the platform hangs up.
    #[arg(long, requires = "voicemail_key")]
    pub voicemail_thanks: Option<PromptId>,
    /// R3.16: repeat callers (at least --repeat-count calls in this period: hour, day, month
    /// or year) are offered first to the agents who served them.
    #[arg(long, requires_all = ["repeat_mode", "repeat_wait_ms"])]
    pub repeat_period: Option<model::Period>,
    #[arg(long, requires = "repeat_period")]
    pub repeat_count: Option<u32>,
    /// familiar (most calls served first) or last (the last agent first).
    #[arg(long, requires = "repeat_period")]
    pub repeat_mode: Option<model::RepeatMode>,
    /// How long a repeat caller waits for those agents before any agent may take it.
    #[arg(long, requires = "repeat_period")]
    pub repeat_wait_ms: Option<u64>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// What a queue rule does, from the command line: `release`, `queue:<id>`,
/// `agent:<number>@<queue>`, `number:<digits>@<trunk>`, `interflow:<ids>` or
/// `flow:<id>[:<node>]` (the prompt of a release comes from its own flag).
fn parse_rule_target(s: &str) -> Result<model::RuleAction, String> {
    let bad = |what: &str, id: &str| format!("{id:?} is not a {what} id");
    match s.split_once(':') {
        None if s == "release" => Ok(model::RuleAction::Release { prompt: None }),
        Some(("queue", id)) => id
            .parse()
            .map(|queue| model::RuleAction::TransferQueue { queue })
            .map_err(|_| bad("queue", id)),
        Some(("agent", rest)) => {
            let (agent, queue) = rest
                .split_once('@')
                .ok_or_else(|| format!("{s:?}: write agent:<number>@<queue>"))?;
            Ok(model::RuleAction::TransferAgent {
                agent: agent.parse().map_err(|_| bad("agent", agent))?,
                queue: queue.parse().map_err(|_| bad("queue", queue))?,
            })
        }
        Some(("number", rest)) => {
            let (number, trunk) = rest
                .split_once('@')
                .ok_or_else(|| format!("{s:?}: write number:<digits>@<trunk>"))?;
            Ok(model::RuleAction::TransferNumber {
                number: number.to_string(),
                trunk: trunk.parse().map_err(|_| bad("trunk", trunk))?,
            })
        }
        Some(("interflow", list)) => {
            let queues = list
                .split(',')
                .map(|id| id.parse().map_err(|_| bad("queue", id)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(model::RuleAction::Interflow { queues })
        }
        Some(("flow", rest)) => {
            let (id, node) = match rest.split_once(':') {
                Some((id, node)) if !node.is_empty() => (id, Some(node.to_string())),
                Some(_) => return Err(format!("{s:?}: the node after `flow:<id>:` is empty")),
                None => (rest, None),
            };
            id.parse()
                .map(|flow| model::RuleAction::TransferFlow { flow, node })
                .map_err(|_| bad("flow", id))
        }
        _ => Err(format!(
            "{s:?}: use `release`, `queue:<id>`, `agent:<number>@<queue>`, `number:<digits>@<trunk>`, `interflow:<id>,<id>..` or `flow:<id>[:<node>]`"
        )),
    }
}

/// The rule's JSON (`model::RuleAction`), or a usage error for a prompt without a release.
fn rule_value(
    target: Option<&model::RuleAction>,
    prompt: Option<&PromptId>,
    flag: &str,
) -> anyhow::Result<Option<Value>> {
    let action = match (target, prompt) {
        (None, None) => return Ok(None),
        (Some(model::RuleAction::Release { .. }), prompt) => model::RuleAction::Release {
            prompt: prompt.cloned(),
        },
        (Some(transfer), None) => transfer.clone(),
        (_, Some(_)) => {
            return Err(crate::error::usage_err(
                "E-BAD-RULE",
                "a rule's prompt goes with its `release` action",
                format!("pass e.g. --{flag} release --{flag}-prompt <prompt>"),
            ))
        }
    };
    Ok(Some(serde_json::to_value(action)?))
}

pub async fn run_queue(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::List(s) => {
            execute(
                &s.api,
                Verb::List {
                    collection: tenant_path(&s.tenant, "queues"),
                },
            )
            .await
        }
        QueueCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{}/{}", tenant_path(&k.tenant, "queues"), k.id),
                },
            )
            .await
        }
        QueueCommand::Status(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{}/{}/status", tenant_path(&k.tenant, "queues"), k.id),
                },
            )
            .await
        }
        QueueCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{}/{}", tenant_path(&k.tenant, "queues"), k.id),
                },
            )
            .await
        }
        QueueCommand::Create(f) => {
            let (mut body, _) = queue_body(&f)?;
            defaults(
                &mut body,
                vec![
                    ("max_wait_ms", json!(300_000)),
                    ("ring_timeout_ms", json!(20_000)),
                    ("acw_ms", json!(5_000)),
                ],
            );
            execute(
                &f.api,
                Verb::Create {
                    collection: tenant_path(&f.tenant, "queues"),
                    body,
                },
            )
            .await
        }
        QueueCommand::Update(f) => {
            let (overlay, id) = queue_body(&f)?;
            execute(
                &f.api,
                Verb::Update {
                    item: format!("{}/{id}", tenant_path(&f.tenant, "queues")),
                    overlay,
                },
            )
            .await
        }
    }
}

fn queue_body(f: &QueueFields) -> anyhow::Result<(Map<String, Value>, QueueId)> {
    let mut body = read_file(f.file.as_deref())?;
    check_tenant(&body, &f.tenant)?;
    let id = resolve_id(f.id.clone(), &body, "queue")?;
    set(
        &mut body,
        vec![
            ("tenant", Some(json!(f.tenant.as_str()))),
            ("id", Some(json!(id.as_str()))),
            ("name", str_value(f.name.clone())),
            ("max_wait_ms", num_value(f.max_wait_ms)),
            ("ring_timeout_ms", num_value(f.ring_timeout_ms)),
            ("acw_ms", num_value(f.acw_ms)),
            (
                "music_prompt",
                f.music_prompt.as_ref().map(|p| json!(p.as_str())),
            ),
            (
                "timeout_prompt",
                f.timeout_prompt.as_ref().map(|p| json!(p.as_str())),
            ),
            ("max_queued", f.max_queued.map(|m| json!(m))),
            (
                "on_max_queued",
                rule_value(
                    f.on_max_queued.as_ref(),
                    f.on_max_queued_prompt.as_ref(),
                    "on-max-queued",
                )?,
            ),
            (
                "on_all_busy",
                rule_value(
                    f.on_all_busy.as_ref(),
                    f.on_all_busy_prompt.as_ref(),
                    "on-all-busy",
                )?,
            ),
            (
                "on_max_wait",
                rule_value(
                    f.on_max_wait.as_ref(),
                    f.on_max_wait_prompt.as_ref(),
                    "on-max-wait",
                )?,
            ),
            ("cancel_key", f.cancel_key.map(|k| json!(k.to_string()))),
            (
                "on_cancel",
                rule_value(
                    f.on_cancel.as_ref(),
                    f.on_cancel_prompt.as_ref(),
                    "on-cancel",
                )?,
            ),
            (
                "wait_announcement",
                f.wait_prefix
                    .as_ref()
                    .zip(f.wait_suffix.as_ref())
                    .map(|(p, x)| {
                        let mut w = json!({"prefix": p.as_str(), "suffix": x.as_str()});
                        if let Some(after) = f.wait_after_ms {
                            w["after_ms"] = json!(after);
                        }
                        if let Some(every) = f.wait_every_ms {
                            w["every_ms"] = json!(every);
                        }
                        w
                    }),
            ),
            (
                "periodic_announcement",
                f.periodic_prompt
                    .as_ref()
                    .zip(f.periodic_every_ms)
                    .map(|(p, every)| json!({"prompt": p.as_str(), "every_ms": every})),
            ),
            (
                "callback",
                f.callback_trunk.as_ref().map(|trunk| {
                    let mut c = json!({"trunk": trunk.as_str()});
                    if let Some(key) = f.callback_key {
                        c["key"] = json!(key.to_string());
                    }
                    if let Some(after) = f.callback_after_ms {
                        c["after_ms"] = json!(after);
                    }
                    if let Some(prompt) = &f.callback_prompt {
                        c["prompt"] = json!(prompt.as_str());
                    }
                    c
                }),
            ),
            (
                "voicemail",
                f.voicemail_key
                    .zip(f.voicemail_prompt.as_ref())
                    .map(|(key, prompt)| {
                        let mut v = json!({"key": key.to_string(), "prompt": prompt.as_str()});
                        if let Some(max) = f.voicemail_max_ms {
                            v["max_ms"] = json!(max);
                        }
                        if let Some(thanks) = &f.voicemail_thanks {
                            v["thanks"] = json!(thanks.as_str());
                        }
                        v
                    }),
            ),
            (
                "repeat_caller",
                f.repeat_period.map(|period| {
                    json!({
                        "period": period,
                        "count": f.repeat_count.unwrap_or(1),
                        "mode": f.repeat_mode,
                        "wait_ms": f.repeat_wait_ms,
                    })
                }),
            ),
            (
                "agent_announcement",
                f.agent_prefix.as_ref().map(|p| {
                    let mut a = json!({"prefix": p.as_str()});
                    if let Some(x) = &f.agent_suffix {
                        a["suffix"] = json!(x.as_str());
                    }
                    a
                }),
            ),
        ],
    );
    Ok((body, id))
}

// ---- extensions ---------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ExtensionCommand {
    /// Create an extension with a digest password (only its hashes are stored).
    Create(ExtensionFields),
    /// List a tenant's extensions.
    List(TenantScope),
    /// Show one extension.
    Show(ExtensionKey),
    /// Set a new password.
    Update(ExtensionFields),
    /// Delete an extension.
    Delete(ExtensionKey),
}

#[derive(Debug, Args)]
pub struct ExtensionKey {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: ExtensionId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct ExtensionFields {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: ExtensionId,
    /// At least 8 characters with letters, digits and symbols (or CALLGRID_EXTENSION_PASSWORD).
    #[arg(long, env = "CALLGRID_EXTENSION_PASSWORD", hide_env_values = true)]
    pub password: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run_extension(command: ExtensionCommand) -> anyhow::Result<()> {
    match command {
        ExtensionCommand::List(s) => {
            execute(
                &s.api,
                Verb::List {
                    collection: tenant_path(&s.tenant, "extensions"),
                },
            )
            .await
        }
        ExtensionCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{}/{}", tenant_path(&k.tenant, "extensions"), k.id),
                },
            )
            .await
        }
        ExtensionCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{}/{}", tenant_path(&k.tenant, "extensions"), k.id),
                },
            )
            .await
        }
        ExtensionCommand::Create(f) => {
            model::validate_password(&f.password).map_err(|e| {
                usage_err(
                    "E-BAD-PASSWORD",
                    e.to_string(),
                    "choose a longer password mixing letters, digits and symbols",
                )
            })?;
            let body = extension_body(&f);
            execute(
                &f.api,
                Verb::Create {
                    collection: tenant_path(&f.tenant, "extensions"),
                    body,
                },
            )
            .await
        }
        ExtensionCommand::Update(f) => {
            model::validate_password(&f.password).map_err(|e| {
                usage_err(
                    "E-BAD-PASSWORD",
                    e.to_string(),
                    "choose a longer password mixing letters, digits and symbols",
                )
            })?;
            let body = extension_body(&f);
            execute(
                &f.api,
                Verb::Replace {
                    item: format!("{}/{}", tenant_path(&f.tenant, "extensions"), f.id),
                    body,
                },
            )
            .await
        }
    }
}

fn extension_body(f: &ExtensionFields) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("tenant".into(), json!(f.tenant.as_str()));
    body.insert("id".into(), json!(f.id.as_str()));
    body.insert("password".into(), json!(f.password));
    body
}

// ---- trunks -------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum TrunkCommand {
    /// Create a carrier trunk.
    Create(TrunkFields),
    /// List trunks.
    List(ApiOnly),
    /// Show one trunk.
    Show(TrunkKey),
    /// Change a trunk (only the fields given).
    Update(TrunkFields),
    /// Delete a trunk.
    Delete(TrunkKey),
}

#[derive(Debug, Args)]
pub struct TrunkKey {
    #[arg(long)]
    pub id: TrunkId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct TrunkFields {
    #[arg(long)]
    pub id: Option<TrunkId>,
    #[arg(long)]
    pub name: Option<String>,
    /// Source addresses the carrier sends from, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub sources: Option<Vec<IpAddr>>,
    /// Where the platform's own calls go out (R3.11 callbacks): the carrier's ip:port.
    #[arg(long)]
    pub outbound: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run_trunk(command: TrunkCommand) -> anyhow::Result<()> {
    let collection = "/api/v1/trunks".to_string();
    match command {
        TrunkCommand::List(a) => execute(&a.api, Verb::List { collection }).await,
        TrunkCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{collection}/{}", k.id),
                },
            )
            .await
        }
        TrunkCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{collection}/{}", k.id),
                },
            )
            .await
        }
        TrunkCommand::Create(f) => {
            let (body, _) = trunk_body(&f)?;
            execute(&f.api, Verb::Create { collection, body }).await
        }
        TrunkCommand::Update(f) => {
            let (overlay, id) = trunk_body(&f)?;
            execute(
                &f.api,
                Verb::Update {
                    item: format!("{collection}/{id}"),
                    overlay,
                },
            )
            .await
        }
    }
}

fn trunk_body(f: &TrunkFields) -> anyhow::Result<(Map<String, Value>, TrunkId)> {
    let mut body = read_file(f.file.as_deref())?;
    let id = resolve_id(f.id.clone(), &body, "trunk")?;
    set(
        &mut body,
        vec![
            ("id", Some(json!(id.as_str()))),
            ("name", str_value(f.name.clone())),
            ("sources", list_value(f.sources.clone())),
            ("outbound", f.outbound.map(|a| json!(a.to_string()))),
        ],
    );
    Ok((body, id))
}

// ---- flows --------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Create an IVR flow from --file flow.json.
    Create(FlowFields),
    /// List a tenant's flows.
    List(TenantScope),
    /// Show one flow.
    Show(FlowKey),
    /// Replace a flow with --file flow.json.
    Update(FlowFields),
    /// Delete a flow.
    Delete(FlowKey),
}

#[derive(Debug, Args)]
pub struct FlowKey {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: FlowId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct FlowFields {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: Option<FlowId>,
    /// The flow as JSON: {"start": "welcome", "nodes": {...}}.
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run_flow(command: FlowCommand) -> anyhow::Result<()> {
    match command {
        FlowCommand::List(s) => {
            execute(
                &s.api,
                Verb::List {
                    collection: tenant_path(&s.tenant, "flows"),
                },
            )
            .await
        }
        FlowCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{}/{}", tenant_path(&k.tenant, "flows"), k.id),
                },
            )
            .await
        }
        FlowCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{}/{}", tenant_path(&k.tenant, "flows"), k.id),
                },
            )
            .await
        }
        FlowCommand::Create(f) => {
            let (body, _) = flow_body(&f)?;
            execute(
                &f.api,
                Verb::Create {
                    collection: tenant_path(&f.tenant, "flows"),
                    body,
                },
            )
            .await
        }
        FlowCommand::Update(f) => {
            let (body, id) = flow_body(&f)?;
            execute(
                &f.api,
                Verb::Replace {
                    item: format!("{}/{id}", tenant_path(&f.tenant, "flows")),
                    body,
                },
            )
            .await
        }
    }
}

fn flow_body(f: &FlowFields) -> anyhow::Result<(Map<String, Value>, FlowId)> {
    let mut body = read_file(Some(&f.file))?;
    check_tenant(&body, &f.tenant)?;
    let id = resolve_id(f.id.clone(), &body, "flow")?;
    set(
        &mut body,
        vec![
            ("tenant", Some(json!(f.tenant.as_str()))),
            ("id", Some(json!(id.as_str()))),
        ],
    );
    Ok((body, id))
}

// ---- prompts ------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum PromptCommand {
    /// Create a prompt.
    Create(PromptFields),
    /// List a tenant's prompts.
    List(TenantScope),
    /// Show one prompt.
    Show(PromptKey),
    /// Change a prompt's WAV.
    Update(PromptFields),
    /// Delete a prompt.
    Delete(PromptKey),
}

#[derive(Debug, Args)]
pub struct PromptKey {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: PromptId,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct PromptFields {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub id: Option<PromptId>,
    /// The WAV: `builtin:welcome` or a path on the nodes' shared prompt directory.
    #[arg(long)]
    pub wav: Option<String>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run_prompt(command: PromptCommand) -> anyhow::Result<()> {
    match command {
        PromptCommand::List(s) => {
            execute(
                &s.api,
                Verb::List {
                    collection: tenant_path(&s.tenant, "prompts"),
                },
            )
            .await
        }
        PromptCommand::Show(k) => {
            execute(
                &k.api,
                Verb::Show {
                    item: format!("{}/{}", tenant_path(&k.tenant, "prompts"), k.id),
                },
            )
            .await
        }
        PromptCommand::Delete(k) => {
            execute(
                &k.api,
                Verb::Delete {
                    item: format!("{}/{}", tenant_path(&k.tenant, "prompts"), k.id),
                },
            )
            .await
        }
        PromptCommand::Create(f) => {
            let (body, _) = prompt_body(&f)?;
            execute(
                &f.api,
                Verb::Create {
                    collection: tenant_path(&f.tenant, "prompts"),
                    body,
                },
            )
            .await
        }
        PromptCommand::Update(f) => {
            let (overlay, id) = prompt_body(&f)?;
            execute(
                &f.api,
                Verb::Update {
                    item: format!("{}/{id}", tenant_path(&f.tenant, "prompts")),
                    overlay,
                },
            )
            .await
        }
    }
}

fn prompt_body(f: &PromptFields) -> anyhow::Result<(Map<String, Value>, PromptId)> {
    let mut body = read_file(f.file.as_deref())?;
    check_tenant(&body, &f.tenant)?;
    let id = resolve_id(f.id.clone(), &body, "prompt")?;
    set(
        &mut body,
        vec![
            ("tenant", Some(json!(f.tenant.as_str()))),
            ("id", Some(json!(id.as_str()))),
            ("file", str_value(f.wav.clone())),
        ],
    );
    Ok((body, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_rule_flags_become_the_rule_json() {
        use model::RuleAction;
        assert_eq!(
            parse_rule_target("release"),
            Ok(RuleAction::Release { prompt: None })
        );
        assert_eq!(
            parse_rule_target("queue:billing"),
            Ok(RuleAction::TransferQueue {
                queue: "billing".parse().unwrap()
            })
        );
        assert_eq!(
            parse_rule_target("flow:main"),
            Ok(RuleAction::TransferFlow {
                flow: "main".parse().unwrap(),
                node: None
            })
        );
        assert_eq!(
            parse_rule_target("flow:main:menu"),
            Ok(RuleAction::TransferFlow {
                flow: "main".parse().unwrap(),
                node: Some("menu".into())
            })
        );
        assert_eq!(
            parse_rule_target("interflow:billing,outage"),
            Ok(RuleAction::Interflow {
                queues: vec!["billing".parse().unwrap(), "outage".parse().unwrap()]
            })
        );
        assert_eq!(
            parse_rule_target("number:95598@carrier"),
            Ok(RuleAction::TransferNumber {
                number: "95598".into(),
                trunk: "carrier".parse().unwrap()
            })
        );
        for bad in [
            "queue:",
            "flow:",
            "flow:main:",
            "hangup",
            "number:95598",
            "number:95598@",
            "agent:1001",
            "interflow:",
            "interflow:a,,b",
        ] {
            assert!(parse_rule_target(bad).is_err(), "{bad}");
        }
        let prompt: PromptId = "full".parse().unwrap();
        let release = rule_value(
            Some(&RuleAction::Release { prompt: None }),
            Some(&prompt),
            "on-cancel",
        )
        .unwrap()
        .unwrap();
        let parsed: RuleAction = serde_json::from_value(release).unwrap();
        assert_eq!(
            parsed,
            RuleAction::Release {
                prompt: Some(prompt.clone())
            }
        );
        let flow = parse_rule_target("flow:main:menu").unwrap();
        let json = rule_value(Some(&flow), None, "on-max-wait")
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_value::<RuleAction>(json).unwrap(), flow);
        assert!(
            rule_value(Some(&flow), Some(&prompt), "on-max-wait").is_err(),
            "a prompt only goes with a release"
        );
        assert_eq!(rule_value(None, None, "on-cancel").unwrap(), None);
    }
}
