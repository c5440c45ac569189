//! Agents: configuration writes (shared generic handlers), runtime views merged with the
//! configuration, and runtime control (sign-in, ready, not-ready, sign-out) on any node.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use actors::node::{AgentCommand, AgentStates, AgentView};
use model::{Agent, AgentId, AgentSession, ExtensionId, QueueId, TenantId};

use super::config_items::{create_scoped, delete_scoped, update_scoped};
use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/tenants/{tenant}/agents",
            get(list).post(create_scoped::<Agent>),
        )
        .route(
            "/tenants/{tenant}/agents/{id}",
            get(show)
                .put(update_scoped::<Agent>)
                .delete(delete_scoped::<Agent>),
        )
        .route("/tenants/{tenant}/agent-states", get(states))
        .route("/tenants/{tenant}/agents/{id}/sign-in", post(sign_in))
        .route("/tenants/{tenant}/agents/{id}/ready", post(ready))
        .route("/tenants/{tenant}/agents/{id}/not-ready", post(not_ready))
        .route("/tenants/{tenant}/agents/{id}/sign-out", post(sign_out))
        .route("/tenants/{tenant}/agents/{id}/away", post(away))
        .route("/tenants/{tenant}/agents/{id}/back", post(back))
}

/// The runtime view with the configuration's `id` added, so `GET` then `PUT` round-trips.
fn merged(view: AgentView) -> Value {
    let mut value = serde_json::to_value(&view).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("id".into(), Value::String(view.agent.to_string()));
    }
    value
}

fn ids(tenant: &str, agent: &str) -> ApiResult<(TenantId, AgentId)> {
    Ok((parse_id(tenant)?, parse_id(agent)?))
}

async fn list(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let tenant: TenantId = parse_id(&tenant)?;
    Ok(Json(
        state
            .node
            .agent_views(&tenant)
            .into_iter()
            .map(merged)
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatesQuery {
    group: Option<String>,
    queue: Option<String>,
}

/// R4.9: `GET /tenants/{tenant}/agent-states[?group=G][&queue=Q]`.
async fn states(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Query(query): Query<StatesQuery>,
) -> ApiResult<Json<AgentStates>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let queue: Option<QueueId> = query.queue.as_deref().map(parse_id).transpose()?;
    state
        .node
        .agent_states(&tenant, query.group.as_deref(), queue.as_ref())
        .map(Json)
        .map_err(ApiError::node)
}

async fn show(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (tenant, agent) = ids(&tenant, &agent)?;
    let view = state
        .node
        .agent_view(&tenant, &agent)
        .map_err(ApiError::node)?;
    Ok(Json(merged(view)))
}

async fn command(
    state: &Shared,
    tenant: &str,
    agent: &str,
    command: AgentCommand,
) -> ApiResult<Json<AgentSession>> {
    let (tenant, agent) = ids(tenant, agent)?;
    state
        .node
        .agent_command(&tenant, &agent, command)
        .await
        .map(Json)
        .map_err(ApiError::node)
}

/// Parses an optional JSON body (empty means `{}`).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(ApiError::bad_body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    extension: ExtensionId,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotReady {
    reason: Option<String>,
}

async fn sign_in(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<AgentSession>> {
    let body: SignIn = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    command(
        &state,
        &tenant,
        &agent,
        AgentCommand::SignIn {
            extension: body.extension,
        },
    )
    .await
}

async fn ready(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
) -> ApiResult<Json<AgentSession>> {
    command(&state, &tenant, &agent, AgentCommand::Ready).await
}

async fn not_ready(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<AgentSession>> {
    let body: NotReady = optional_body(&body)?;
    let reason = body.reason.unwrap_or_else(|| "break".to_string());
    if reason.is_empty() || reason.chars().count() > 64 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid("reason: 1 to 64 printable characters"));
    }
    command(&state, &tenant, &agent, AgentCommand::NotReady { reason }).await
}

async fn sign_out(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
) -> ApiResult<Json<AgentSession>> {
    command(&state, &tenant, &agent, AgentCommand::SignOut).await
}

/// R4.7: who asks for an away state must be a manager of the tenant: one with the
/// `set_away` permission (R4.8; by default team leads and supervisors, R3.18).
fn check_manager(state: &Shared, tenant: &str, manager: &AgentId) -> ApiResult<()> {
    let tenant: TenantId = parse_id(tenant)?;
    check_permission(state, &tenant, manager, model::Permission::SetAway)
}

/// R4.8: `agent` of `tenant` exists and has `permission`.
pub fn check_permission(
    state: &Shared,
    tenant: &TenantId,
    agent: &AgentId,
    permission: model::Permission,
) -> ApiResult<()> {
    let may = state
        .cluster
        .read(|s| s.agent(tenant, agent).map(|a| a.may(permission)))
        .ok_or_else(|| ApiError::not_found(format!("agent {tenant}/{agent}")))?;
    if !may {
        let name = serde_json::to_value(permission).unwrap_or_default();
        return Err(ApiError::forbidden(format!(
            "agent {agent} has no {} permission",
            name.as_str().unwrap_or("such")
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Away {
    reason: model::AwayReason,
    manager: AgentId,
}

/// R4.7: a manager sends the agent away (training, study, meeting, interview).
async fn away(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<AgentSession>> {
    let body: Away = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    check_manager(&state, &tenant, &body.manager)?;
    let command_ = AgentCommand::Away {
        reason: body.reason,
        by: body.manager,
    };
    command(&state, &tenant, &agent, command_).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Back {
    manager: AgentId,
    #[serde(default)]
    ready: bool,
}

/// R4.7: a manager ends the agent's away state (ready, or not ready).
async fn back(
    State(state): State<Shared>,
    Path((tenant, agent)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<AgentSession>> {
    let body: Back = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    check_manager(&state, &tenant, &body.manager)?;
    command(
        &state,
        &tenant,
        &agent,
        AgentCommand::EndAway { ready: body.ready },
    )
    .await
}
