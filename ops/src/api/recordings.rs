//! `GET /api/v1/recordings/{id}`: the call's dual-channel WAV, from this node or proxied from
//! the node that recorded it (recording ids start with that node's id).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::Shared;

/// The longest a proxied download may take.
const PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn wav(bytes: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, "audio/wav")], bytes.into()).into_response()
}

pub async fn download(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    if !valid_id(&id) {
        return Err(ApiError::bad_id(format!(
            "recording id {:?} is not a call id",
            id.chars().take(40).collect::<String>()
        )));
    }
    if let Some(path) = state.node.recording_path(&id) {
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "E-RECORDING-READ",
                format!("cannot read recording {id}: {e}"),
                "check the node's disk",
            )
        })?;
        return Ok(wav(bytes));
    }
    let owner = actors::node::recording_node(&id)
        .ok_or_else(|| ApiError::not_found(format!("recording {id}")))?;
    if owner == state.node_id {
        return Err(ApiError::not_found(format!("recording {id}")));
    }
    let base = state
        .peer_api(owner)
        .ok_or_else(|| ApiError::not_found(format!("recording {id} (node {owner} unknown)")))?;
    let response = state
        .http
        .get(format!("{base}/api/v1/recordings/{id}"))
        .bearer_auth(state.token())
        .timeout(PROXY_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "E-PEER",
                format!("node {owner} holding recording {id} did not answer: {e}"),
                "retry when that node is up",
            )
        })?;
    match response.status().as_u16() {
        200 => {
            let bytes = response.bytes().await.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "E-PEER",
                    format!("download from node {owner} failed: {e}"),
                    "retry",
                )
            })?;
            Ok(wav(bytes))
        }
        404 => Err(ApiError::not_found(format!("recording {id}"))),
        other => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "E-PEER",
            format!("node {owner} answered HTTP {other}"),
            "check that node's log",
        )),
    }
}
