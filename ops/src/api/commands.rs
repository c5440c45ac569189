//! `POST /api/v1/commands`: submit one replicated `model::Command` (used by `cluster up
//! --sample` and tooling). Answers the `Outcome`: applied, or rejected with the reason.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::Shared;

pub async fn submit(State(state): State<Shared>, body: Bytes) -> ApiResult<Json<model::Outcome>> {
    let command: model::Command = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    let outcome = timed_write(&state, command).await?;
    Ok(Json(outcome))
}

/// `cluster.write`, timed into the Raft commit latency histogram.
pub async fn timed_write(state: &Shared, command: model::Command) -> ApiResult<model::Outcome> {
    let started = Instant::now();
    let outcome = state
        .cluster
        .write(command)
        .await
        .map_err(ApiError::cluster)?;
    metrics::histogram!(crate::metrics_catalog::RAFT_COMMIT_SECONDS)
        .record(started.elapsed().as_secs_f64());
    Ok(outcome)
}

/// Writes a command and turns a rejection into its HTTP error.
pub async fn write(state: &Shared, command: model::Command) -> ApiResult<()> {
    match timed_write(state, command).await?.error {
        None => Ok(()),
        Some(e) => Err(ApiError::apply(e)),
    }
}
