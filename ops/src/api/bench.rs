//! `POST /api/v1/bench/raft`: the Raft scenario of `callgrid bench`, run inside a node so it
//! measures the path calls use: synthetic call checkpoints (the size of a real one,
//! `model::bench::call_checkpoint`) go through this node's checkpoint writer, which batches
//! them into Raft entries; each is timed from submission to commit.
//!
//! Two ways to load it:
//! - **closed loop** (`concurrency` writers, each submitting its next checkpoint once the last
//!   is committed): the most the node commits. Each writer has one checkpoint in flight, so
//!   the latency is the writers over the rate (Little's law) whatever the code does.
//! - **open loop** (`rate` checkpoints/s, submitted on schedule whatever is in flight), as
//!   calls write theirs: the commit latency at that rate. A checkpoint is timed from its
//!   scheduled time, not from when the pacer got to it, so a late pacer counts against the
//!   figure (no coordinated omission).
//!
//! Afterwards the synthetic
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
/// Synthetic calls of one node's run by default: its share of the 4,000 concurrent calls a
/// data center holds (issue 5). Every checkpoint to a new call would grow the state, and the
/// snapshots with it, far past anything live calls make (99 MB after 75,000 checkpoints).
pub const DEFAULT_LIVE_CALLS: u32 = 1_334;
/// Most checkpoints per second asked of one node in open loop. What is in flight is bounded
/// by the checkpoints of the run (`MAX_CHECKPOINTS`, under the writer's backlog bound) and by
/// the commit deadline.
pub const MAX_RATE: u32 = 100_000;
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
    /// for its checkpoint only at a few points; most are fire-and-forget). Unused with `rate`.
    pub concurrency: u32,
    /// Checkpoints per second submitted on schedule (open loop) instead of by writers.
    #[serde(default)]
    pub rate: Option<u32>,
    /// Synthetic calls the checkpoints go to in turn (`DEFAULT_LIVE_CALLS` when absent): the
    /// replicated state holds this many of them at most, as it holds the live calls.
    #[serde(default)]
    pub live_calls: Option<u32>,
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
    /// Open loop: the rate asked for, and the most checkpoints submitted and not yet seen
    /// committed at once (a peak; the mean is the rate times the mean latency).
    #[serde(default)]
    pub offered_per_sec: Option<f64>,
    #[serde(default)]
    pub most_in_flight: Option<u64>,
    /// Checkpoints this node's writer never wrote because a newer one of the same synthetic
    /// call replaced them while they waited (a call checkpointed again before its last was
    /// taken). They are counted committed when the newer one is, which is their latency.
    #[serde(default)]
    pub coalesced: u64,
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
    if body.live_calls == Some(0) {
        return Err(ApiError::invalid("live_calls: at least 1"));
    }
    let live = body.live_calls.unwrap_or(DEFAULT_LIVE_CALLS);
    if body.rate.is_none() && live < body.concurrency {
        // Each writer would soon write a call another writer's checkpoint is still on.
        return Err(ApiError::invalid(format!(
            "live_calls ({live}) must be at least concurrency ({}) without a rate",
            body.concurrency
        )));
    }
    if body.rate.is_some_and(|r| r == 0 || r > MAX_RATE) {
        return Err(ApiError::invalid(format!("rate: 1 to {MAX_RATE}")));
    }
    // In its own task: a client that goes away must not stop the clean-up.
    let run = tokio::spawn(run_raft(state, body));
    run.await
        .map_err(|e| ApiError::invalid(format!("raft bench task: {e}")))?
        .map(Json)
}

/// What one run's load gave: each committed checkpoint's latency (ms), how many missed
/// their deadline, and (open loop) the most in flight at once.
struct Load {
    latencies: Vec<f64>,
    failed: u64,
    most_in_flight: Option<u64>,
}

/// The run's synthetic calls: `live` of them, checkpointed in turn, each new checkpoint of
/// a call a newer version of it, as a live call's are.
#[derive(Clone)]
struct Synthetic {
    rt: Arc<actors::node::Runtime>,
    run: u64,
    fence: model::Fence,
    live: u64,
}

impl Synthetic {
    /// Submits the run's `i`th checkpoint; the receiver completes at its commit.
    fn submit(&self, i: u64) -> tokio::sync::oneshot::Receiver<()> {
        let id = model::bench::synthetic_id(self.run, i % self.live);
        let version = i / self.live + 1;
        let checkpoint = model::bench::call_checkpoint(&id, self.fence, version, self.rt.now_ms());
        self.rt.checkpoints.submit_waiting(model::Command::PutCall {
            checkpoint: Arc::new(checkpoint),
        })
    }
}

/// `concurrency` writers, each submitting its next checkpoint once the last is committed.
async fn closed_loop(calls: Synthetic, total: u64, concurrency: u32) -> ApiResult<Load> {
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let calls = calls.clone();
        let next = Arc::clone(&next);
        writers.spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let submitted = Instant::now();
                let committed = calls.submit(i);
                match tokio::time::timeout(COMMIT_TIMEOUT, committed).await {
                    Ok(Ok(())) => latencies.push(ms_since(submitted)),
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        });
    }
    let mut load = Load {
        latencies: Vec::with_capacity(total as usize),
        failed: 0,
        most_in_flight: None,
    };
    while let Some(done) = writers.join_next().await {
        let (mine, lost) = done.map_err(|e| ApiError::invalid(format!("bench writer: {e}")))?;
        load.latencies.extend(mine);
        load.failed += lost;
    }
    Ok(load)
}

/// `rate` checkpoints per second on schedule, however many are waiting for their commit;
/// each timed from its scheduled time. The pacer sleeps until the next checkpoint is due and
/// then submits every one that has come due. tokio's timer rounds a wake-up to the next
/// millisecond, so a checkpoint may wait up to about a millisecond for the pacer, and that
/// wait is in its latency; at high rates the pacer wakes once a millisecond, at low rates
/// once per checkpoint (it once woke every millisecond whatever the rate, a cost counted
/// against the cluster at low rates).
async fn open_loop(calls: Synthetic, total: u64, rate: u32) -> Load {
    use futures::stream::{FuturesUnordered, StreamExt};
    let started = Instant::now();
    let scheduled = |i: u64| started + Duration::from_secs_f64(i as f64 / f64::from(rate));
    let mut waiting = FuturesUnordered::new();
    let mut load = Load {
        latencies: Vec::with_capacity(total as usize),
        failed: 0,
        most_in_flight: None,
    };
    let mut most = 0u64;
    let mut sent = 0u64;
    let next_due = tokio::time::sleep_until(scheduled(0).into());
    tokio::pin!(next_due);
    while sent < total || !waiting.is_empty() {
        tokio::select! {
            () = &mut next_due, if sent < total => {
                let now = Instant::now();
                while sent < total && scheduled(sent) <= now {
                    let due = scheduled(sent);
                    let committed = calls.submit(sent);
                    waiting.push(async move {
                        (tokio::time::timeout(COMMIT_TIMEOUT, committed).await, due)
                    });
                    sent += 1;
                }
                if sent < total {
                    next_due.as_mut().reset(scheduled(sent).into());
                }
                most = most.max(waiting.len() as u64);
            }
            Some((result, due)) = waiting.next() => match result {
                Ok(Ok(())) => load.latencies.push(ms_since(due)),
                _ => load.failed += 1,
            },
        }
    }
    load.most_in_flight = Some(most);
    load
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn run_raft(state: Shared, body: RaftBench) -> ApiResult<RaftBenchResult> {
    let rt = Arc::clone(state.node.runtime());
    let run: u64 = rand::random::<u32>().into();
    let total = u64::from(body.checkpoints);
    let calls = Synthetic {
        fence: rt.fence(),
        rt: Arc::clone(&rt),
        run,
        live: u64::from(body.live_calls.unwrap_or(DEFAULT_LIVE_CALLS)).min(total),
    };
    let applied_before = state.cluster.status().last_applied.unwrap_or(0);
    let coalesced_before = rt.checkpoints.coalesced();
    let started = Instant::now();
    let Load {
        mut latencies,
        failed,
        most_in_flight,
    } = match body.rate {
        Some(rate) => open_loop(calls.clone(), total, rate).await,
        None => closed_loop(calls.clone(), total, body.concurrency).await?,
    };
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
    let coalesced = rt.checkpoints.coalesced().saturating_sub(coalesced_before);
    let left_behind = discard(&state, run, calls.live).await;
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
        offered_per_sec: body.rate.map(f64::from),
        most_in_flight,
        coalesced,
    })
}

/// Removes the run's synthetic calls, each entry tried a few times; how many could not be
/// removed.
async fn discard(state: &Shared, run: u64, live: u64) -> u64 {
    let ids: Vec<model::CallId> = (0..live)
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
