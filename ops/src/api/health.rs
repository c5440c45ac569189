//! `/health` (no token: load balancers and `cluster up` poll it) and `/metrics` (Prometheus).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::Shared;

/// 200 with the Raft status while a leader is known, 503 otherwise.
pub async fn health(State(state): State<Shared>) -> impl IntoResponse {
    let status = state.cluster.status();
    let ok = status.leader.is_some();
    let mesh_missing = state.node.mesh_missing();
    let body = json!({
        "status": if ok { "ok" } else { "no_leader" },
        // Ready for calls and agents: a leader, and a mesh route to every voting peer.
        "ready": ok && mesh_missing.is_empty(),
        "mesh_missing": mesh_missing,
        "node": state.node_id,
        "site": state.site,
        "leader": status.leader,
        "raft_state": status.state,
        "term": status.term,
        "last_applied": status.last_applied.unwrap_or(0),
        "voters": status.voters.keys().collect::<Vec<_>>(),
        "live_calls": state.node.live_calls().len(),
        // Failover: this node's lease, the nodes the cluster declared down, and checkpoints
        // waiting for a quorum (degraded mode when non-zero and not draining).
        "lease": state.node.runtime().holds_lease(),
        "epoch": state.node.runtime().fence().epoch,
        "down_nodes": state.cluster.read(|s| s.nodes.iter().filter(|(_, n)| n.down).map(|(id, _)| *id).collect::<Vec<_>>()),
        "checkpoint_backlog": state.node.runtime().checkpoints.backlog(),
        "degraded": state.node.runtime().checkpoints.degraded(),
        "last_detection_ms": state.node.runtime().liveness.last_detection_ms(),
        // Admission control (DESIGN.md "Overload"): whether new calls are taken, and why not.
        "admission": admission(state.node.runtime()),
        // Lets `cluster up` tell its own node from another process on the same address.
        "pid": std::process::id(),
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

fn admission(rt: &actors::node::Runtime) -> serde_json::Value {
    let load = rt.load();
    let refusal = actors::node::admission::decide(&rt.config.admission, &load).err();
    json!({
        "open": refusal.is_none(),
        "refusing": refusal.map(|r| r.label()),
        "calls": load.calls,
        "checkpoint_backlog": load.checkpoint_backlog,
        "loop_lag_ms": load.loop_lag_ms,
        "heartbeat_ms": load.heartbeat_ms,
        "degraded": load.degraded,
    })
}

pub async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let text = state
        .prometheus
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
