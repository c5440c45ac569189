//! The node's checkpoint writer: agent sessions, call checkpoints and CDRs go through Raft in
//! batches (one entry carries many, DESIGN.md "Replicated state and checkpoints"), and are
//! kept here while Raft has no quorum (degraded mode, R1.6).
//!
//! Pending checkpoints are coalesced by key: only the newest checkpoint of a call or an agent
//! is worth writing (versions make the order of different keys irrelevant), and a call's CDR
//! replaces its pending checkpoint. The backlog is bounded (`MAX_PENDING` keys); past it a
//! new checkpoint is refused and counted, never blocking call handling. The backlog size is
//! on `/health` and in `callgrid_checkpoint_backlog`; it drains by itself when quorum returns.
//!
//! Up to `MAX_IN_FLIGHT` batches are written at once (docs/PERFORMANCE.md, "Caps"): a new
//! checkpoint goes out while earlier batches wait for their commit, instead of waiting for
//! them first. Writes of different keys commute (each key carries its own version), so the
//! only order to keep is per key: a key with a batch in flight is not taken into another
//! until that batch is done, and its newer checkpoint waits in the backlog meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use cluster::Cluster;
use model::Command;

/// Most keys kept while Raft cannot commit.
pub const MAX_PENDING: usize = 50_000;
/// Most commands in one Raft entry.
pub const MAX_BATCH: usize = 512;
/// Most batches written at once. Two: a checkpoint that arrives while a batch is being
/// committed goes out at once instead of waiting for that commit (commit p50 8-9 ms → 6-7 ms
/// at 10 writers per node, `callgrid bench raft`), and at saturation batches stay as large as
/// with one in flight. Four halved the checkpoints per entry there and lost throughput to the
/// per-entry costs (docs/PERFORMANCE.md). A follower forwards them on as many connections
/// (`cluster::Cluster::write`).
pub const MAX_IN_FLIGHT: usize = 2;

/// Told when the checkpoint (or a newer one of its key) is committed.
type Waiter = tokio::sync::oneshot::Sender<()>;

#[derive(Default)]
struct Pending {
    by_key: BTreeMap<String, Command>,
    waiters: BTreeMap<String, Vec<Waiter>>,
    /// Keys in arrival order of their first pending write (oldest first).
    order: Vec<String>,
    /// Keys of the batches being written: not taken again until their batch is done.
    in_flight: HashSet<String>,
}

/// Handle to the writer task.
pub struct Checkpointer {
    pending: Mutex<Pending>,
    wake: Arc<Notify>,
    degraded: std::sync::atomic::AtomicBool,
    /// Checkpoints replaced by a newer one of their key before they were written.
    coalesced: std::sync::atomic::AtomicU64,
}

fn key_of(command: &Command) -> Option<String> {
    match command {
        Command::PutAgentSession { session } => {
            Some(format!("agent:{}/{}", session.tenant, session.agent))
        }
        Command::PutCall { checkpoint } => Some(format!("call:{}", checkpoint.call_id)),
        // A call's CDR supersedes its checkpoint: same key.
        Command::RecordCdr { cdr, .. } => Some(format!("call:{}", cdr.call_id)),
        _ => None,
    }
}

/// The writer's fence a checkpoint carries (the state machine refuses it once fenced out).
fn fence_of(command: &Command) -> Option<model::Fence> {
    match command {
        Command::PutAgentSession { session } => session.fence,
        Command::PutCall { checkpoint } => Some(checkpoint.fence),
        Command::RecordCdr { fence, .. } => *fence,
        _ => None,
    }
}

/// Replaces the fence a checkpoint carries.
fn refence(command: &mut Command, fence: model::Fence) {
    match command {
        Command::PutAgentSession { session } => session.fence = Some(fence),
        Command::PutCall { checkpoint } => Arc::make_mut(checkpoint).fence = fence,
        Command::RecordCdr { fence: f, .. } => *f = Some(fence),
        _ => {}
    }
}

impl Checkpointer {
    pub fn start(cluster: Arc<Cluster>) -> (Arc<Checkpointer>, tokio::task::JoinHandle<()>) {
        let me = Arc::new(Checkpointer {
            pending: Mutex::default(),
            wake: Arc::new(Notify::new()),
            degraded: Default::default(),
            coalesced: Default::default(),
        });
        let task = tokio::spawn(run(Arc::downgrade(&me), cluster));
        (me, task)
    }

    /// Queues a checkpoint. False when the backlog is full (the checkpoint is lost and
    /// counted; the previous one of the same key, if any, stays).
    pub fn submit(&self, command: Command) -> bool {
        self.submit_inner(command, None)
    }

    /// Like `submit`, and the receiver completes once this checkpoint (or a newer one of the
    /// same key) is committed. Dropped unanswered if the checkpoint is refused.
    pub fn submit_waiting(&self, command: Command) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_inner(command, Some(tx));
        rx
    }

    fn submit_inner(&self, command: Command, waiter: Option<Waiter>) -> bool {
        let Some(key) = key_of(&command) else {
            warn!("not a checkpoint command; ignored");
            return false;
        };
        let mut pending = self.pending.lock().expect("checkpoint lock");
        // A CDR already pending for a call beats any later checkpoint of that call.
        let cdr_pending = matches!(pending.by_key.get(&key), Some(Command::RecordCdr { .. }));
        if cdr_pending && matches!(command, Command::PutCall { .. }) {
            self.count_coalesced();
            return true;
        }
        if pending.by_key.contains_key(&key) {
            self.count_coalesced();
        } else {
            if pending.by_key.len() >= MAX_PENDING {
                metrics::counter!("callgrid_checkpoints_dropped_total").increment(1);
                return false;
            }
            pending.order.push(key.clone());
        }
        if let Some(waiter) = waiter {
            pending.waiters.entry(key.clone()).or_default().push(waiter);
        }
        pending.by_key.insert(key, command);
        let backlog = pending.by_key.len();
        drop(pending);
        metrics::gauge!("callgrid_checkpoint_backlog").set(backlog as f64);
        self.wake.notify_one();
        true
    }

    fn count_coalesced(&self) {
        self.coalesced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("callgrid_checkpoints_coalesced_total").increment(1);
    }

    /// Checkpoints never written because a newer one of their key (or the call's CDR)
    /// replaced them while they waited, since the node started. Their waiters are answered
    /// when the newer one commits.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checkpoints not yet committed.
    pub fn backlog(&self) -> usize {
        self.pending.lock().expect("checkpoint lock").by_key.len()
    }

    /// True while the last write attempt failed (no quorum): the node is degraded.
    pub fn degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The oldest pending checkpoints, up to `MAX_BATCH`, of keys with no batch in flight;
    /// their keys are in flight from now until `release`.
    fn take_batch(&self) -> Vec<(String, Command)> {
        let mut guard = self.pending.lock().expect("checkpoint lock");
        let pending = &mut *guard;
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        for key in pending.order.drain(..) {
            if batch.len() == MAX_BATCH || pending.in_flight.contains(&key) {
                waiting.push(key);
            } else if let Some(command) = pending.by_key.remove(&key) {
                pending.in_flight.insert(key.clone());
                batch.push((key, command));
            }
        }
        pending.order = waiting;
        batch
    }

    /// The batch with these keys is done (committed, refused or failed): they may be taken
    /// again.
    fn release(&self, keys: &[String]) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        for key in keys {
            pending.in_flight.remove(key);
        }
    }

    /// The batch is committed: wake whoever waits on its keys (unless a newer checkpoint of
    /// the key is pending again: they wait for that one).
    fn committed<'a>(&self, keys: impl IntoIterator<Item = &'a String>) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        for key in keys {
            if pending.by_key.contains_key(key) {
                continue;
            }
            for waiter in pending.waiters.remove(key).unwrap_or_default() {
                let _ = waiter.send(());
            }
        }
    }

    /// These keys' checkpoints were refused: drop their waiters (unless a newer checkpoint
    /// of the key is pending: they wait for that one).
    fn refused(&self, keys: &[String]) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        for key in keys {
            if !pending.by_key.contains_key(key) {
                pending.waiters.remove(key);
            }
        }
    }

    /// Puts a failed batch back, unless a newer checkpoint of the same key arrived meanwhile.
    /// A call's CDR always goes back: a checkpoint of the call that arrived while the CDR was
    /// being written is older news than the CDR (the call had ended), and would otherwise
    /// replace it and bring the call back as live.
    fn restore(&self, batch: Vec<(String, Command)>) {
        use std::collections::btree_map::Entry;
        let mut pending = self.pending.lock().expect("checkpoint lock");
        let mut front = Vec::new();
        for (key, command) in batch {
            match pending.by_key.entry(key.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(command);
                    front.push(key);
                }
                Entry::Occupied(mut slot) => {
                    if matches!(command, Command::RecordCdr { .. })
                        && matches!(slot.get(), Command::PutCall { .. })
                    {
                        slot.insert(command);
                    }
                }
            }
        }
        front.append(&mut pending.order);
        pending.order = front;
    }
}

/// One batch being written, and what its outcome is handled with.
struct Written {
    /// The checkpoints' keys, in the order of their commands in `command`.
    keys: Vec<String>,
    /// The batch (or its one checkpoint), shared with the cluster's write: not cloned.
    command: Arc<Command>,
    /// Keys of calls the cluster had never heard of when the batch was taken.
    unknown: Vec<String>,
    result: Result<model::Outcome, cluster::ClusterError>,
}

impl Written {
    /// Each key with its checkpoint.
    fn checkpoints(&self) -> impl Iterator<Item = (&String, &Command)> {
        let commands = match &*self.command {
            Command::Batch { commands } => commands.as_slice(),
            single => std::slice::from_ref(single),
        };
        self.keys.iter().zip(commands)
    }
}

async fn write_batch(
    cluster: Arc<Cluster>,
    batch: Vec<(String, Command)>,
    unknown: Vec<String>,
) -> Written {
    let (keys, mut commands): (Vec<String>, Vec<Command>) = batch.into_iter().unzip();
    let command = Arc::new(if commands.len() == 1 {
        commands.pop().expect("one command")
    } else {
        Command::Batch { commands }
    });
    let result = cluster.write_shared(Arc::clone(&command)).await;
    Written {
        keys,
        command,
        unknown,
        result,
    }
}

/// Calls the cluster has never heard of (no checkpoint, no CDR) are still this node's after
/// a rejoin (kept through the NodeDown): their pending writes, fenced with the old epoch, get
/// the current one; a known call's stay as they are and are refused. Returns their keys.
fn refence_unknown(cluster: &Cluster, batch: &mut [(String, Command)]) -> Vec<String> {
    let node = cluster.node_id();
    cluster.read(|s| {
        let current = model::Fence {
            node,
            epoch: s.epoch(node),
        };
        let mut unknown = Vec::new();
        for (key, command) in batch.iter_mut() {
            let Some(id) = key.strip_prefix("call:") else {
                continue;
            };
            if s.calls.contains_key(id) || s.cdrs.contains_key(id) {
                continue;
            }
            unknown.push(key.clone());
            if fence_of(command).is_some_and(|f| f != current) {
                refence(command, current);
            }
        }
        unknown
    })
}

async fn run(me: std::sync::Weak<Checkpointer>, cluster: Arc<Cluster>) {
    let mut failures = 0u32;
    let node = cluster.node_id();
    let mut writes = FuturesUnordered::new();
    // After a failed write, no new batch starts before this (backing off while degraded).
    let mut pause_until: Option<Instant> = None;
    loop {
        let Some(cp) = me.upgrade() else { return };
        // Declared down: anything written now is refused. Wait for the rejoin (the backlog is
        // kept, and what belongs to calls this node keeps is re-fenced when it is taken).
        let down = cluster.read(|s| s.is_down(node));
        let paused = pause_until.is_some_and(|t| Instant::now() < t);
        if !down && !paused {
            while writes.len() < MAX_IN_FLIGHT {
                let mut batch = cp.take_batch();
                if batch.is_empty() {
                    break;
                }
                let unknown = refence_unknown(&cluster, &mut batch);
                writes.push(write_batch(Arc::clone(&cluster), batch, unknown));
            }
        }
        let wake = Arc::clone(&cp.wake);
        drop(cp);
        let may_start = !down && !paused && writes.len() < MAX_IN_FLIGHT;
        let resume_at = if down {
            Some(Instant::now() + Duration::from_millis(50))
        } else if paused {
            pause_until
        } else {
            None
        };
        tokio::select! {
            Some(written) = writes.next(), if !writes.is_empty() => {
                let Some(cp) = me.upgrade() else { return };
                // A batch that went through ends the back-off too: the leader is reachable.
                pause_until = finish(&cp, &cluster, written, &mut failures)
                    .map(|backoff| Instant::now() + backoff);
            }
            // notify_one keeps a permit when nobody waits, so no wake-up is lost.
            _ = wake.notified(), if may_start => {}
            _ = tokio::time::sleep_until(resume_at.unwrap_or_else(Instant::now)), if resume_at.is_some() => {}
        }
    }
}

/// Handles a finished write; returns how long to wait before the next batch when it failed.
fn finish(
    cp: &Checkpointer,
    cluster: &Cluster,
    written: Written,
    failures: &mut u32,
) -> Option<Duration> {
    cp.release(&written.keys);
    let count = written.keys.len();
    let backoff = match &written.result {
        Ok(outcome) => {
            let mut refused = Vec::new();
            if let Some(error) = &outcome.error {
                // Independent checkpoints: a refused one (fenced: this node was declared
                // down) is not retried, and whoever waits on it is not told "committed"
                // (its receiver is dropped instead).
                debug!(%error, "a checkpoint in the batch was refused");
                refused = cluster.read(|s| {
                    written
                        .checkpoints()
                        .filter(|(_, c)| fence_of(c).is_some_and(|f| s.fenced_out(f)))
                        .map(|(k, _)| k.clone())
                        .collect()
                });
                cp.refused(&refused);
                // A call nobody else knows must not lose its checkpoint or CDR: it is
                // written again once this node has rejoined (re-fenced when taken).
                let retry: Vec<(String, Command)> = written
                    .checkpoints()
                    .filter(|(k, _)| refused.contains(k) && written.unknown.contains(k))
                    .map(|(k, c)| (k.clone(), c.clone()))
                    .collect();
                if !retry.is_empty() {
                    cp.restore(retry);
                }
            }
            *failures = 0;
            cp.committed(written.keys.iter().filter(|k| !refused.contains(*k)));
            cp.degraded
                .store(false, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("callgrid_checkpoints_committed_total").increment(count as u64);
            metrics::histogram!("callgrid_checkpoint_batch_size").record(count as f64);
            None
        }
        Err(error) => {
            *failures += 1;
            if *failures == 1 {
                warn!(%error, count, "checkpoints not committed; keeping them (degraded)");
            }
            cp.degraded
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let batch = written
                .checkpoints()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect();
            cp.restore(batch);
            Some(Duration::from_millis(100 * u64::from((*failures).min(10))))
        }
    };
    metrics::gauge!("callgrid_checkpoint_backlog").set(cp.backlog() as f64);
    backoff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(agent: &str, version: u64) -> Command {
        Command::PutAgentSession {
            session: model::AgentSession {
                tenant: "gd".parse().unwrap(),
                agent: agent.parse().unwrap(),
                extension: agent.parse().unwrap(),
                status: model::AgentStatus::Ready,
                since_ms: 0,
                idle_since_ms: 0,
                calls_answered: 0,
                away_ms: Default::default(),
                state_ms: Default::default(),
                owner: 1,
                version,
                fence: None,
            },
        }
    }

    fn keys(batch: &[(String, Command)]) -> Vec<String> {
        batch.iter().map(|(k, _)| k.clone()).collect()
    }

    fn cp() -> Checkpointer {
        Checkpointer {
            pending: Mutex::default(),
            wake: Arc::new(Notify::new()),
            degraded: Default::default(),
            coalesced: Default::default(),
        }
    }

    #[test]
    fn coalesces_by_key_and_keeps_order() {
        let c = cp();
        assert!(c.submit(session("1001", 1)));
        assert!(c.submit(session("1002", 1)));
        assert!(c.submit(session("1001", 2)));
        assert_eq!(c.backlog(), 2);
        let batch = c.take_batch();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].0, "agent:gd/1001");
        assert_eq!(
            batch[0].1,
            session("1001", 2),
            "the newest checkpoint is written"
        );
        assert_eq!(c.backlog(), 0);
        assert_eq!(
            c.coalesced(),
            1,
            "1001's first checkpoint was never written"
        );
    }

    #[test]
    fn a_refused_checkpoint_is_not_reported_committed() {
        let c = cp();
        let mut refused = c.submit_waiting(session("1001", 1));
        let mut accepted = c.submit_waiting(session("1002", 1));
        let batch = c.take_batch();
        c.refused(&["agent:gd/1001".to_string()]);
        c.committed(&keys(&batch[1..]));
        assert!(
            matches!(
                refused.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed)
            ),
            "the waiter of a refused checkpoint is dropped, not told committed"
        );
        assert!(accepted.try_recv().is_ok());
    }

    #[test]
    fn a_key_in_flight_is_not_taken_again_until_released() {
        let c = cp();
        c.submit(session("1001", 1));
        let first = c.take_batch();
        assert_eq!(first.len(), 1);
        c.submit(session("1001", 2));
        c.submit(session("1002", 1));
        let second = c.take_batch();
        assert_eq!(
            second,
            vec![("agent:gd/1002".to_string(), session("1002", 1))],
            "another key goes out beside the batch in flight; 1001's newer one waits"
        );
        assert_eq!(c.backlog(), 1);
        assert_eq!(c.coalesced(), 0, "a checkpoint in flight is not replaced");
        assert!(c.take_batch().is_empty(), "nothing else may go out yet");
        c.release(&keys(&first));
        c.committed(&keys(&first));
        assert_eq!(
            c.take_batch(),
            vec![("agent:gd/1001".to_string(), session("1001", 2))],
            "once its batch is done, the key's newer checkpoint goes out"
        );
    }

    #[test]
    fn a_waiter_is_told_only_when_the_newest_checkpoint_commits() {
        let c = cp();
        let mut first = c.submit_waiting(session("1001", 1));
        let batch = c.take_batch();
        let mut second = c.submit_waiting(session("1001", 2));
        c.release(&keys(&batch));
        c.committed(&keys(&batch));
        assert!(
            first.try_recv().is_err(),
            "a newer checkpoint is still pending"
        );
        let batch = c.take_batch();
        c.release(&keys(&batch));
        c.committed(&keys(&batch));
        assert!(first.try_recv().is_ok());
        assert!(second.try_recv().is_ok());
    }

    #[test]
    fn a_batch_holds_at_most_max_batch() {
        let c = cp();
        for n in 0..MAX_BATCH + 3 {
            c.submit(session(&format!("{}", 1000 + n), 1));
        }
        assert_eq!(c.take_batch().len(), MAX_BATCH);
        let rest = c.take_batch();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].0, format!("agent:gd/{}", 1000 + MAX_BATCH));
    }

    #[test]
    fn a_failed_cdr_goes_back_over_a_later_checkpoint_of_its_call() {
        let fence = model::Fence { node: 1, epoch: 0 };
        let checkpoint = model::bench::call_checkpoint("1-1-x", fence, 4, 0);
        let cdr = Command::RecordCdr {
            cdr: Arc::new(checkpoint.cdr.clone()),
            fence: Some(fence),
        };
        let late = Command::PutCall {
            checkpoint: Arc::new(checkpoint),
        };
        let c = cp();
        c.submit(cdr.clone());
        let batch = c.take_batch();
        c.submit(late);
        c.release(&keys(&batch));
        c.restore(batch);
        assert_eq!(
            c.take_batch(),
            vec![("call:1-1-x".to_string(), cdr)],
            "the CDR is written, not the call's older state"
        );
    }

    #[test]
    fn a_failed_batch_goes_back_unless_superseded() {
        let c = cp();
        c.submit(session("1001", 1));
        c.submit(session("1002", 1));
        let batch = c.take_batch();
        c.submit(session("1002", 5));
        c.release(&keys(&batch));
        c.restore(batch);
        let again = c.take_batch();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].1, session("1001", 1));
        assert!(again.iter().any(|(_, x)| *x == session("1002", 5)));
    }
}
