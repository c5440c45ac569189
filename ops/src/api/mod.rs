//! The REST/WebSocket API of one node (axum), under `/api/v1`, plus `/health` and `/metrics`.
//!
//! Every `/api/v1` route except the OpenAPI document needs the admin bearer token (compared in
//! constant time). Path ids go through `model`'s id types (a bad id is a 400). Writes go
//! through Raft (`cluster.write`); reads come from this node's applied state; runtime views
//! (agents, queues, calls) come from the call-control runtime (`actors::node::Node`).

mod agents;
pub mod bench;
mod calls;
mod cdrs;
mod commands;
mod config_items;
mod customers;
mod dr;
pub mod error;
mod events;
mod extensions;
mod faults;
mod health;
mod openapi;
mod queues;
mod recordings;
mod voicemails;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::NodeFileConfig;
use crate::error::ops_err;
use error::ApiError;

/// The largest request body accepted (a config item or a command batch).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a request to a peer node (calls, recordings) may take.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler shares.
pub struct AppState {
    pub cluster: Arc<cluster::Cluster>,
    pub node: Arc<actors::node::Node>,
    pub node_id: u64,
    pub site: String,
    /// SHA-256 of the admin token: compared in constant time whatever the presented length.
    token_hash: [u8; 32],
    token: String,
    pub peers: BTreeMap<u64, cluster::NodeInfo>,
    pub prometheus: Option<PrometheusHandle>,
    pub http: reqwest::Client,
    /// Drills may inject faults through the API (config `fault_injection`).
    pub fault_injection: bool,
    pub data_dir: std::path::PathBuf,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(
        config: &NodeFileConfig,
        cluster: Arc<cluster::Cluster>,
        node: Arc<actors::node::Node>,
        prometheus: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            .build()
            .map_err(|e| {
                ops_err(
                    "E-HTTP-CLIENT",
                    format!("cannot build the peer HTTP client: {e}"),
                    "report this bug",
                )
            })?;
        Ok(AppState {
            cluster,
            node,
            node_id: config.node_id,
            site: config.site.clone(),
            token_hash: Sha256::digest(config.admin_token.as_bytes()).into(),
            token: config.admin_token.clone(),
            peers: config.peer_infos(),
            prometheus,
            http,
            fault_injection: config.fault_injection,
            data_dir: config.data_dir.clone(),
        })
    }

    fn token_ok(&self, presented: &str) -> bool {
        token_matches(&self.token_hash, presented)
    }

    /// The token, for requests this node makes to its peers on behalf of a client.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The API base URL of node `id`: from the replicated membership, else the config.
    pub fn peer_api(&self, id: u64) -> Option<String> {
        let voters = self.cluster.status().voters;
        let addr = voters
            .get(&id)
            .or_else(|| self.peers.get(&id))
            .map(|n| n.api_addr.clone())?;
        Some(if addr.contains("://") {
            addr
        } else {
            format!("http://{addr}")
        })
    }

    /// Every other node's id (membership, else config).
    pub fn other_nodes(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.cluster.status().voters.keys().copied().collect();
        if ids.is_empty() {
            ids = self.peers.keys().copied().collect();
        }
        ids.retain(|id| *id != self.node_id);
        ids
    }
}

/// Compares hashes in constant time, so neither the token's bytes nor its length leak
/// through timing.
fn token_matches(expected_hash: &[u8; 32], presented: &str) -> bool {
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    hash.ct_eq(expected_hash).into()
}

/// The whole HTTP surface of a node.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/commands", post(commands::submit))
        .merge(config_items::routes())
        .merge(extensions::routes())
        .merge(agents::routes())
        .merge(queues::routes())
        .merge(customers::routes())
        .merge(voicemails::routes())
        .route("/calls", get(calls::list))
        .route("/calls/{call}/queues", post(calls::requeue))
        .route("/dr/seed", post(dr::seed))
        .route("/cluster/learners", post(dr::add_learner))
        .route("/cluster/voters", put(dr::set_voters))
        .route(
            "/faults",
            get(faults::list).post(faults::set).delete(faults::clear),
        )
        .route("/cdrs", get(cdrs::list))
        .route("/recordings/{id}", get(recordings::download))
        .route("/events", get(events::stream))
        .route("/bench/raft", post(bench::raft))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .nest("/api/v1", api)
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::map_response(json_rejections))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// axum's own rejections (body too large, bad query string, wrong method) are plain text;
/// give them the API's JSON error shape so every client parses one format.
async fn json_rejections(response: Response) -> Response {
    use axum::http::{header::CONTENT_TYPE, StatusCode};
    use axum::response::IntoResponse;
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json")
                || v.starts_with("audio/")
                || v.starts_with("text/plain; version")
        });
    let status = response.status();
    if is_json || status.is_success() || status.is_informational() || status.is_redirection() {
        return response;
    }
    let (code, hint) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("E-TOO-LARGE", "send at most 1 MiB"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "E-METHOD",
            "see /api/v1/openapi.json for the methods of this path",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("E-BAD-BODY", "send JSON"),
        _ if status.is_client_error() => ("E-BAD-REQUEST", "see /api/v1/openapi.json"),
        _ => ("E-INTERNAL", "check the node's log"),
    };
    let reason = status.canonical_reason().unwrap_or("request failed");
    let detail = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&detail).trim().to_string();
    let message = if detail.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {detail}")
    };
    ApiError::new(status, code, message, hint).into_response()
}

/// Bearer-token check. `/api/v1/events` also accepts `?access_token=` (browsers cannot set
/// headers on a WebSocket).
async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query = if request.uri().path().ends_with("/events") {
        request.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("access_token=").map(str::to_string))
        })
    } else {
        None
    };
    match header.or(query) {
        Some(token) if state.token_ok(token.trim()) => next.run(request).await,
        _ => {
            metrics::counter!(crate::metrics_catalog::API_UNAUTHORIZED_TOTAL).increment(1);
            axum::response::IntoResponse::into_response(ApiError::unauthorized())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let expected: [u8; 32] = Sha256::digest(b"0123456789abcdef").into();
        assert!(token_matches(&expected, "0123456789abcdef"));
        assert!(!token_matches(&expected, "0123456789abcdeF"));
        assert!(!token_matches(&expected, ""));
    }
}
