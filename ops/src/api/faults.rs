//! Fault injection for drills (`/api/v1/faults`): drop or delay this node's cluster traffic
//! (Raft, forwarded writes, actor mesh) to chosen peers, so a drill can partition the cluster
//! without firewall tools. Off unless the node's config sets `fault_injection = true`, and
//! behind the admin token like every `/api/v1` route. A partition is two-sided: the drill
//! sets it on the nodes of both sides.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use cluster::network::Fault;

use super::error::{ApiError, ApiResult};
use super::Shared;

/// One fault, as the API shows and takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub peer: u64,
    /// "drop" or "delay".
    pub fault: String,
    #[serde(default)]
    pub delay_ms: u64,
}

/// Body of POST: set faults to several peers at once (a partition in one request).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFaults {
    pub faults: Vec<FaultSpec>,
}

fn enabled(state: &Shared) -> ApiResult<()> {
    if state.fault_injection {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "E-FAULTS-DISABLED",
            "fault injection is off on this node",
            "set fault_injection = true in the node config (cluster up --allow-faults) for drills",
        ))
    }
}

fn spec(peer: u64, fault: Fault) -> FaultSpec {
    match fault {
        Fault::Drop => FaultSpec {
            peer,
            fault: "drop".into(),
            delay_ms: 0,
        },
        Fault::Delay(d) => FaultSpec {
            peer,
            fault: "delay".into(),
            delay_ms: d.as_millis() as u64,
        },
    }
}

pub async fn list(State(state): State<Shared>) -> ApiResult<Json<Vec<FaultSpec>>> {
    enabled(&state)?;
    Ok(Json(
        state
            .cluster
            .faults()
            .list()
            .into_iter()
            .map(|(p, f)| spec(p, f))
            .collect(),
    ))
}

pub async fn set(
    State(state): State<Shared>,
    body: Result<Json<SetFaults>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Vec<FaultSpec>>> {
    enabled(&state)?;
    let Json(body) = body.map_err(ApiError::bad_body)?;
    let mut parsed = Vec::new();
    for f in &body.faults {
        if f.peer == state.node_id {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "E-INVALID",
                format!("peer {} is this node", f.peer),
                "name the other nodes' ids",
            ));
        }
        let fault = match (f.fault.as_str(), f.delay_ms) {
            ("drop", _) => Fault::Drop,
            ("delay", ms @ 1..=60_000) => Fault::Delay(Duration::from_millis(ms)),
            ("delay", ms) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E-INVALID",
                    format!("delay_ms {ms} is out of range"),
                    "use 1..=60000",
                ))
            }
            (other, _) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E-INVALID",
                    format!("unknown fault {other:?}"),
                    "use \"drop\" or \"delay\"",
                ))
            }
        };
        parsed.push((f.peer, fault));
    }
    for (peer, fault) in parsed {
        tracing::warn!(peer, ?fault, "fault injected");
        state.cluster.faults().set(peer, fault);
    }
    list(State(state)).await
}

pub async fn clear(State(state): State<Shared>) -> ApiResult<Json<Vec<FaultSpec>>> {
    enabled(&state)?;
    state.cluster.faults().clear_all();
    tracing::warn!("faults cleared");
    Ok(Json(Vec::new()))
}
