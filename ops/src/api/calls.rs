//! Live calls of the whole cluster: this node's, plus each peer's (`?local=true` on the peer,
//! short timeout). A peer that does not answer is skipped (its calls are missing from the
//! answer) and a warning is logged.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use actors::node::{LiveCall, Requeue};
use model::{CallId, QueueId};

use super::error::{ApiError, ApiResult};
use super::Shared;

#[derive(Serialize, Deserialize)]
pub struct Requeued {
    pub call: String,
    /// The queues the call waits in now, its own first.
    pub queues: Vec<QueueId>,
}

/// The body of a queue change: the change, and who makes it (R4.8: an agent named here
/// needs the `manage_calls` permission; a business system or the IVR names nobody).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    #[serde(default)]
    add: Vec<QueueId>,
    #[serde(default)]
    remove: Vec<QueueId>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    by: Option<model::AgentId>,
}

/// `POST /api/v1/calls/{call}/queues` (R3.10): `{"add": [...], "remove": [...],
/// "priority": n, "by": agent}` for a call that waits in line (or rings an agent);
/// forwarded to the call's node.
pub async fn requeue(
    State(state): State<Shared>,
    Path(call): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Requeued>> {
    let valid = (1..=64).contains(&call.len())
        && call.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(ApiError::bad_id(format!("{call:?} is not a call id")));
    }
    let body: RequeueBody = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    if let Some(by) = &body.by {
        // R4.8: the call's tenant from its replicated checkpoint (a waiting call has one).
        let tenant = state
            .cluster
            .read(|s| s.calls.get(call.as_str()).map(|c| c.route.tenant.clone()))
            .ok_or_else(|| ApiError::not_found(format!("waiting call {call}")))?;
        super::agents::check_permission(&state, &tenant, by, model::Permission::ManageCalls)?;
    }
    let change = Requeue {
        add: body.add,
        remove: body.remove,
        priority: body.priority,
    };
    if change.add.is_empty() && change.remove.is_empty() && change.priority.is_none() {
        return Err(ApiError::bad_body(
            "nothing to change: give add, remove or priority",
        ));
    }
    if change.priority.is_some_and(|p| p > 254) {
        return Err(ApiError::bad_body("priority is 0 to 254 (R3.7)"));
    }
    let queues = state
        .node
        .requeue_call(&CallId(call.clone()), change)
        .await
        .map_err(ApiError::node)?;
    Ok(Json(Requeued { call, queues }))
}

#[derive(Deserialize)]
pub struct CallsQuery {
    #[serde(default)]
    local: bool,
}

pub async fn list(
    State(state): State<Shared>,
    Query(query): Query<CallsQuery>,
) -> Json<Vec<LiveCall>> {
    let mut calls = state.node.live_calls();
    if !query.local {
        let fetches = state.other_nodes().into_iter().map(|id| {
            let state = state.clone();
            async move { (id, fetch_peer(&state, id).await) }
        });
        for (id, result) in futures::future::join_all(fetches).await {
            match result {
                Ok(peer_calls) => calls.extend(peer_calls),
                Err(error) => tracing::warn!(peer = id, %error, "live calls of a peer unavailable"),
            }
        }
    }
    calls.sort_by_key(|c| c.started_at_ms);
    Json(calls)
}

async fn fetch_peer(state: &Shared, id: u64) -> Result<Vec<LiveCall>, String> {
    let base = state.peer_api(id).ok_or("no API address")?;
    let response = state
        .http
        .get(format!("{base}/api/v1/calls?local=true"))
        .bearer_auth(state.token())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}
