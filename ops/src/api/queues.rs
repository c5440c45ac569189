//! Queue status from the queue actors (waiting, longest wait, agents, idle agents).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use actors::node::QueueView;
use model::{QueueId, TenantId};

use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/queues", get(list))
        .route("/tenants/{tenant}/queues/{id}/status", get(status))
}

#[derive(Deserialize)]
pub struct TenantFilter {
    tenant: Option<String>,
}

async fn list(
    State(state): State<Shared>,
    Query(filter): Query<TenantFilter>,
) -> ApiResult<Json<Vec<QueueView>>> {
    let tenants: Vec<TenantId> = match filter.tenant.as_deref() {
        Some(t) => vec![parse_id(t)?],
        None => state
            .cluster
            .read(|s| s.tenants.values().map(|t| t.id.clone()).collect()),
    };
    let mut views = Vec::new();
    for tenant in &tenants {
        views.extend(state.node.queue_views(tenant).await);
    }
    Ok(Json(views))
}

async fn status(
    State(state): State<Shared>,
    Path((tenant, queue)): Path<(String, String)>,
) -> ApiResult<Json<QueueView>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let queue: QueueId = parse_id(&queue)?;
    state
        .node
        .queue_view(&tenant, &queue)
        .await
        .map(Json)
        .map_err(ApiError::node)
}
