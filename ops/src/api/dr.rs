//! `POST /api/v1/dr/seed`: the first step of a DR takeover (see `crate::dr`). The node saves
//! its last applied state for a new lineage; refused while it still reaches a quorum (it
//! holds a lease), unless forced.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::Shared;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRequest {
    /// The nodes that will not be members of the new lineage.
    pub left_behind: Vec<u64>,
    #[serde(default)]
    pub force: bool,
}

pub async fn seed(
    State(state): State<Shared>,
    body: Result<Json<SeedRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(ApiError::bad_body)?;
    if state.node.runtime().holds_lease() && !body.force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "E-DR-QUORUM",
            "this node still reaches a quorum of the cluster",
            "DR takeover is for the loss of both active sites; use --force only if you are sure",
        ));
    }
    if body.left_behind.contains(&state.node_id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E-INVALID",
            "this node cannot be left behind",
            "list the nodes of the lost sites",
        ));
    }
    let status = state.cluster.status();
    let seed = crate::dr::Seed {
        state: state.cluster.read(Clone::clone),
        last_applied: status.last_applied.unwrap_or(0),
        last_log: status.last_log.unwrap_or(0),
        left_behind: body.left_behind,
        at_ms: model::unix_ms(std::time::SystemTime::now()),
    };
    let path = crate::dr::seed_path(&state.data_dir);
    let text = serde_json::to_vec(&seed).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "E-DR-SEED",
            e.to_string(),
            "report it",
        )
    })?;
    std::fs::write(&path, text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "E-DR-SEED",
            format!("writing {}: {e}", path.display()),
            "check the data directory",
        )
    })?;
    tracing::warn!(
        last_applied = seed.last_applied,
        "DR seed written; restart this node to take over"
    );
    Ok(Json(json!({
        "node": state.node_id,
        "last_applied": seed.last_applied,
        "last_log": seed.last_log,
        "seed": path.display().to_string(),
    })))
}
