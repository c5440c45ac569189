//! Queue voicemails (R3.20): listed by time and status, handled by an agent, with the
//! handling time. A voicemail's audio is its call's recording
//! (`GET /api/v1/recordings/{recording_id}`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use model::state::key;
use model::{AgentId, Command, QueueId, TenantId, Voicemail, VoicemailStatus};

use super::commands::write;
use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/tenants/{tenant}/voicemails", get(list))
        .route("/tenants/{tenant}/voicemails/{id}/handle", post(handle))
}

/// A voicemail with its handling time.
#[derive(Serialize, Deserialize)]
pub struct VoicemailView {
    #[serde(flatten)]
    pub voicemail: Voicemail,
    /// From the message to its handling, once handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handling_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<VoicemailStatus>,
    queue: Option<String>,
    /// Messages left at or after this Unix time (ms).
    from: Option<u64>,
    /// Messages left before this Unix time (ms).
    to: Option<u64>,
}

async fn list(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<VoicemailView>>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let queue: Option<QueueId> = query.queue.as_deref().map(parse_id).transpose()?;
    let prefix = format!("{tenant}/");
    let mut all: Vec<VoicemailView> = state.cluster.read(|s| {
        s.voicemails
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .filter(|v| query.status.is_none_or(|st| v.status == st))
            .filter(|v| queue.as_ref().is_none_or(|q| &v.queue == q))
            .filter(|v| query.from.is_none_or(|f| v.at_ms >= f))
            .filter(|v| query.to.is_none_or(|t| v.at_ms < t))
            .map(|v| VoicemailView {
                handling_ms: v.handling_ms(),
                voicemail: v.clone(),
            })
            .collect()
    });
    all.sort_by_key(|v| v.voicemail.at_ms);
    Ok(Json(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandleBody {
    agent: AgentId,
}

/// `POST .../voicemails/{id}/handle {"agent"}`: the agent dealt with the message (called
/// back, noted it). Handling it again by the same agent changes nothing; by another, 409.
async fn handle(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<VoicemailView>> {
    let tenant: TenantId = parse_id(&tenant)?;
    if !(1..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::bad_id(format!("{id:?} is not a voicemail id")));
    }
    let body: HandleBody = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    super::agents::check_permission(
        &state,
        &tenant,
        &body.agent,
        model::Permission::HandleVoicemail,
    )?;
    write(
        &state,
        Command::HandleVoicemail {
            tenant: tenant.clone(),
            id: id.clone(),
            agent: body.agent,
            at_ms: model::unix_ms(std::time::SystemTime::now()),
        },
    )
    .await?;
    state
        .cluster
        .read(|s| s.voicemails.get(&key(&tenant, &id)).cloned())
        .map(|v| {
            Json(VoicemailView {
                handling_ms: v.handling_ms(),
                voicemail: v,
            })
        })
        .ok_or_else(|| ApiError::not_found(format!("voicemail {tenant}/{id}")))
}
