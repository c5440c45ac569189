//! `POST /api/v1/bench/raft`: the Raft scenario of `callgrid bench`, run inside a node so it
//! measures the path calls use: synthetic call checkpoints (the size of a real one,
//! `model::bench::call_checkpoint`) go through this node's checkpoint writer, which batches
//! them into Raft entries; each is timed from submission to commit. Afterwards the synthetic
//! checkpoints are discarded (`Command::DiscardCalls`), so no call, CDR or statistic is left:
//! the run and its clean-up go on in their own task even if the client goes away, late
//! commits are waited for before the discard, and a node that takes calls over skips
//! synthetic ids (`model::bench::is_synthetic`) should one be declared down meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::Shared;

/// Most checkpoints one run may write. Writers wait for their commits, so at most
/// `MAX_CONCURRENCY` are pending at once, well within the writer's backlog bound.
pub const MAX_CHECKPOINTS: u32 = 200_000;
/// Most writers at once.
pub const MAX_CONCURRENCY: u32 = 4_096;
/// A checkpoint not committed within this is counted failed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Discards per Raft entry when cleaning up.
const DISCARD_CHUNK: usize = 2_000;
/// How long the clean-up waits for checkpoints still pending in the writer.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// Attempts per discard entry.
const DISCARD_ATTEMPTS: usize = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftBench {
    pub checkpoints: u32,
    /// Writers at once, each writing its checkpoints one after another (a call actor waits
    /// for its checkpoint only at a few points; most are fire-and-forget).
    pub concurrency: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RaftBenchResult {
    pub node: u64,
    pub checkpoints: u64,
    pub committed: u64,
    pub failed: u64,
    pub seconds: f64,
    pub committed_per_sec: f64,
    /// Raft entries the run took (applied-index delta): checkpoints per entry is the batching.
    pub raft_entries: u64,
    /// Submission to commit, per checkpoint, in milliseconds (sorted samples' quantiles).
    pub commit_ms: Quantiles,
    /// Synthetic checkpoints the clean-up could not discard (0 unless Raft lost its quorum).
    #[serde(default)]
    pub left_behind: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Quantiles {
    /// Nearest-rank quantiles of `samples` (sorted here).
    pub fn of(samples: &mut [f64]) -> Quantiles {
        if samples.is_empty() {
            return Quantiles::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Quantiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        }
    }
}

pub async fn raft(
    State(state): State<Shared>,
    body: Result<Json<RaftBench>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<RaftBenchResult>> {
    let Json(body) = body.map_err(ApiError::bad_body)?;
    if body.checkpoints == 0 || body.checkpoints > MAX_CHECKPOINTS {
        return Err(ApiError::invalid(format!(
            "checkpoints: 1 to {MAX_CHECKPOINTS}"
        )));
    }
    if body.concurrency == 0 || body.concurrency > MAX_CONCURRENCY {
        return Err(ApiError::invalid(format!(
            "concurrency: 1 to {MAX_CONCURRENCY}"
        )));
    }
    // In its own task: a client that goes away must not stop the clean-up.
    let run = tokio::spawn(run_raft(state, body.checkpoints, body.concurrency));
    run.await
        .map_err(|e| ApiError::invalid(format!("raft bench task: {e}")))?
        .map(Json)
}

async fn run_raft(state: Shared, checkpoints: u32, concurrency: u32) -> ApiResult<RaftBenchResult> {
    let body = RaftBench {
        checkpoints,
        concurrency,
    };
    let rt = Arc::clone(state.node.runtime());
    let run: u64 = rand::random::<u32>().into();
    let fence = rt.fence();
    let total = u64::from(body.checkpoints);
    let next = Arc::new(AtomicU64::new(0));
    let applied_before = state.cluster.status().last_applied.unwrap_or(0);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..body.concurrency {
        let rt = Arc::clone(&rt);
        let next = Arc::clone(&next);
        writers.spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let id = model::bench::synthetic_id(run, i);
                let checkpoint = model::bench::call_checkpoint(&id, fence, 1, rt.now_ms());
                let submitted = Instant::now();
                let committed = rt.checkpoints.submit_waiting(model::Command::PutCall {
                    checkpoint: Arc::new(checkpoint),
                });
                match tokio::time::timeout(COMMIT_TIMEOUT, committed).await {
                    Ok(Ok(())) => latencies.push(submitted.elapsed().as_secs_f64() * 1e3),
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut failed = 0;
    while let Some(done) = writers.join_next().await {
        let (mine, lost) = done.map_err(|e| ApiError::invalid(format!("bench writer: {e}")))?;
        latencies.extend(mine);
        failed += lost;
    }
    let seconds = started.elapsed().as_secs_f64();
    let raft_entries = state
        .cluster
        .status()
        .last_applied
        .unwrap_or(0)
        .saturating_sub(applied_before);
    // A checkpoint that missed its commit deadline may still be in the writer: let it land
    // first, or it would re-create its call after the discard.
    let drain_until = Instant::now() + DRAIN_WAIT;
    while rt.checkpoints.backlog() > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left_behind = discard(&state, run, total).await;
    let committed = latencies.len() as u64;
    Ok(RaftBenchResult {
        node: state.node_id,
        checkpoints: total,
        committed,
        failed,
        seconds,
        committed_per_sec: committed as f64 / seconds.max(1e-9),
        raft_entries,
        commit_ms: Quantiles::of(&mut latencies),
        left_behind,
    })
}

/// Removes the run's synthetic checkpoints, each entry tried a few times; how many could
/// not be removed.
async fn discard(state: &Shared, run: u64, total: u64) -> u64 {
    let ids: Vec<model::CallId> = (0..total)
        .map(|i| model::CallId(model::bench::synthetic_id(run, i)))
        .collect();
    let mut left = 0;
    for chunk in ids.chunks(DISCARD_CHUNK) {
        let mut done = false;
        for _ in 0..DISCARD_ATTEMPTS {
            let command = model::Command::DiscardCalls {
                call_ids: chunk.to_vec(),
            };
            if super::commands::write(state, command).await.is_ok() {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !done {
            tracing::warn!(
                count = chunk.len(),
                "raft bench: synthetic checkpoints not discarded"
            );
            left += chunk.len() as u64;
        }
    }
    left
}
