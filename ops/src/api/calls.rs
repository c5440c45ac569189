//! Live calls of the whole cluster: this node's, plus each peer's (`?local=true` on the peer,
//! short timeout). A peer that does not answer is skipped (its calls are missing from the
//! answer) and a warning is logged.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use actors::node::LiveCall;

use super::Shared;

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
