//! `POST /api/v1/dr/seed`: the first step of a DR takeover (see `crate::dr`). The node saves
//! its last applied state for a new lineage; refused while it still reaches a quorum (it
//! holds a lease), unless forced. And the membership changes of a DR failback:
//! `POST /api/v1/cluster/learners`, `PUT /api/v1/cluster/voters` (leader only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::Shared;
use crate::dr::SeedError;

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
    let holds_lease = state.node.runtime().holds_lease();
    let seed = crate::dr::write_seed(
        &state.cluster,
        &state.data_dir,
        holds_lease,
        body.left_behind,
        body.force,
    )
    .map_err(|e| match e {
        SeedError::Quorum => ApiError::new(
            StatusCode::CONFLICT,
            "E-DR-QUORUM",
            e.to_string(),
            "DR takeover is for the loss of both active sites; use --force only if you are sure",
        ),
        SeedError::LeftBehindSelf => ApiError::new(
            StatusCode::BAD_REQUEST,
            "E-INVALID",
            e.to_string(),
            "list the nodes of the lost sites",
        ),
        SeedError::Write(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "E-DR-SEED",
            e.to_string(),
            "check the data directory",
        ),
    })?;
    Ok(Json(json!({
        "node": state.node_id,
        "last_applied": seed.last_applied,
        "last_log": seed.last_log,
        "seed": crate::dr::seed_path(&state.data_dir).display().to_string(),
    })))
}

/// A recovered node to add (DR failback).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerRequest {
    pub node_id: u64,
    pub site: String,
    pub raft_addr: String,
    pub api_addr: String,
    pub sip_addr: String,
    pub mesh_addr: String,
}

/// `POST /api/v1/cluster/learners`: the leader adds a node as a learner and answers once it
/// has caught up with the log (DR failback).
pub async fn add_learner(
    State(state): State<Shared>,
    body: Result<Json<LearnerRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(ApiError::bad_body)?;
    leader_only(&state)?;
    if body.node_id == 0 || body.node_id == state.node_id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E-INVALID",
            format!("node {} cannot be added", body.node_id),
            "name a recovered node by its id",
        ));
    }
    let info = cluster::NodeInfo {
        site: body.site,
        raft_addr: body.raft_addr,
        api_addr: body.api_addr,
        sip_addr: body.sip_addr,
        mesh_addr: body.mesh_addr,
    };
    let started = std::time::Instant::now();
    let index = state
        .cluster
        .add_learner(body.node_id, info)
        .await
        .map_err(membership_error)?;
    Ok(Json(json!({
        "node": body.node_id,
        "caught_up_to": index,
        "catch_up_ms": started.elapsed().as_millis() as u64,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VotersRequest {
    pub voters: Vec<u64>,
}

/// `PUT /api/v1/cluster/voters`: the leader makes these members the voters (DR failback).
pub async fn set_voters(
    State(state): State<Shared>,
    body: Result<Json<VotersRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(ApiError::bad_body)?;
    leader_only(&state)?;
    let voters: std::collections::BTreeSet<u64> = body.voters.into_iter().collect();
    let members = state.cluster.members();
    if voters.is_empty() || !voters.iter().all(|v| members.contains_key(v)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E-INVALID",
            format!(
                "voters {voters:?} must be members ({:?})",
                members.keys().collect::<Vec<_>>()
            ),
            "add each recovered node as a learner first",
        ));
    }
    state
        .cluster
        .set_voters(voters.clone())
        .await
        .map_err(membership_error)?;
    Ok(Json(json!({ "voters": voters })))
}

fn leader_only(state: &Shared) -> ApiResult<()> {
    let leader = state.cluster.status().leader;
    if leader == Some(state.node_id) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "E-NOT-LEADER",
        format!(
            "node {} is not the Raft leader (leader: {leader:?})",
            state.node_id
        ),
        "send membership changes to the leader (see /health)",
    ))
}

fn membership_error(e: cluster::ClusterError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "E-MEMBERSHIP",
        e.to_string(),
        "check the node is running and reachable, then retry",
    )
}
