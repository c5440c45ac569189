//! The node's checkpoint writer: agent sessions, call checkpoints and CDRs go through Raft in
//! batches (one entry carries many, DESIGN.md "Replicated state and checkpoints"), and are
//! kept here while Raft has no quorum (degraded mode, R1.6).
//!
//! Pending checkpoints are coalesced by key: only the newest checkpoint of a call or an agent
//! is worth writing (versions make the order of different keys irrelevant), and a call's CDR
//! replaces its pending checkpoint. The backlog is bounded (`MAX_PENDING` keys); past it a
//! new checkpoint is refused and counted, never blocking call handling. The backlog size is
//! on `/health` and in `callgrid_checkpoint_backlog`; it drains by itself when quorum returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

use cluster::Cluster;
use model::Command;

/// Most keys kept while Raft cannot commit.
pub const MAX_PENDING: usize = 50_000;
/// Most commands in one Raft entry.
pub const MAX_BATCH: usize = 512;

/// Told when the checkpoint (or a newer one of its key) is committed.
type Waiter = tokio::sync::oneshot::Sender<()>;

#[derive(Default)]
struct Pending {
    by_key: BTreeMap<String, Command>,
    waiters: BTreeMap<String, Vec<Waiter>>,
    /// Keys in arrival order of their first pending write (oldest first).
    order: Vec<String>,
}

/// Handle to the writer task.
pub struct Checkpointer {
    pending: Mutex<Pending>,
    wake: Arc<Notify>,
    degraded: std::sync::atomic::AtomicBool,
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
        Command::PutCall { checkpoint } => checkpoint.fence = fence,
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
            return true;
        }
        if !pending.by_key.contains_key(&key) {
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

    /// Checkpoints not yet committed.
    pub fn backlog(&self) -> usize {
        self.pending.lock().expect("checkpoint lock").by_key.len()
    }

    /// True while the last write attempt failed (no quorum): the node is degraded.
    pub fn degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take_batch(&self) -> Vec<(String, Command)> {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        let n = pending.order.len().min(MAX_BATCH);
        let keys: Vec<String> = pending.order.drain(..n).collect();
        keys.into_iter()
            .filter_map(|k| pending.by_key.remove(&k).map(|c| (k, c)))
            .collect()
    }

    /// The batch is committed: wake whoever waits on its keys (unless a newer checkpoint of
    /// the key is pending again: they wait for that one).
    fn committed(&self, batch: &[(String, Command)]) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        for (key, _) in batch {
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
    fn restore(&self, batch: Vec<(String, Command)>) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        let mut front = Vec::new();
        for (key, command) in batch {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                pending.by_key.entry(key.clone())
            {
                slot.insert(command);
                front.push(key);
            }
        }
        front.append(&mut pending.order);
        pending.order = front;
    }
}

async fn run(me: std::sync::Weak<Checkpointer>, cluster: Arc<Cluster>) {
    let mut failures = 0u32;
    let node = cluster.node_id();
    loop {
        let Some(cp) = me.upgrade() else { return };
        if cluster.read(|s| s.is_down(node)) {
            // Declared down: anything written now is refused. Wait for the rejoin (the
            // backlog is kept, and what belongs to calls this node keeps is re-fenced below).
            drop(cp);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut batch = cp.take_batch();
        // Calls the cluster has never heard of (no checkpoint, no CDR) are still this node's
        // after a rejoin (kept through the NodeDown): their pending writes, fenced with the old
        // epoch, get the current one; a known call's stay as they are and are refused.
        let unknown: Vec<String> = cluster.read(|s| {
            let current = model::Fence {
                node,
                epoch: s.epoch(node),
            };
            let mut unknown = Vec::new();
            for (key, command) in &mut batch {
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
        });
        if batch.is_empty() {
            let wake = Arc::clone(&cp.wake);
            drop(cp);
            // notify_one keeps a permit when nobody waits, so no wake-up is lost.
            wake.notified().await;
            continue;
        }
        let commands: Vec<Command> = batch.iter().map(|(_, c)| c.clone()).collect();
        let count = commands.len();
        let command = if count == 1 {
            commands.into_iter().next().expect("one command")
        } else {
            Command::Batch { commands }
        };
        match cluster.write(command).await {
            Ok(outcome) => {
                if let Some(error) = outcome.error {
                    // Independent checkpoints: a refused one (fenced: this node was declared
                    // down) is not retried, and whoever waits on it is not told "committed"
                    // (its receiver is dropped instead).
                    debug!(%error, "a checkpoint in the batch was refused");
                    let refused: Vec<String> = cluster.read(|s| {
                        batch
                            .iter()
                            .filter(|(_, c)| fence_of(c).is_some_and(|f| s.fenced_out(f)))
                            .map(|(k, _)| k.clone())
                            .collect()
                    });
                    cp.refused(&refused);
                    // A call nobody else knows must not lose its checkpoint or CDR: it is
                    // written again once this node has rejoined (re-fenced above).
                    let retry: Vec<(String, Command)> = batch
                        .iter()
                        .filter(|(k, _)| refused.contains(k) && unknown.contains(k))
                        .cloned()
                        .collect();
                    if !retry.is_empty() {
                        cp.restore(retry);
                    }
                    batch.retain(|(k, _)| !refused.contains(k));
                }
                failures = 0;
                cp.committed(&batch);
                cp.degraded
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("callgrid_checkpoints_committed_total").increment(count as u64);
                metrics::histogram!("callgrid_checkpoint_batch_size").record(count as f64);
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    warn!(%error, count, "checkpoints not committed; keeping them (degraded)");
                }
                cp.degraded
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                cp.restore(batch);
                drop(cp);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10)))).await;
                continue;
            }
        }
        metrics::gauge!("callgrid_checkpoint_backlog").set(cp.backlog() as f64);
    }
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

    fn cp() -> Checkpointer {
        Checkpointer {
            pending: Mutex::default(),
            wake: Arc::new(Notify::new()),
            degraded: Default::default(),
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
    }

    #[test]
    fn a_refused_checkpoint_is_not_reported_committed() {
        let c = cp();
        let mut refused = c.submit_waiting(session("1001", 1));
        let mut accepted = c.submit_waiting(session("1002", 1));
        let batch = c.take_batch();
        c.refused(&["agent:gd/1001".to_string()]);
        c.committed(&batch[1..]);
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
    fn a_failed_batch_goes_back_unless_superseded() {
        let c = cp();
        c.submit(session("1001", 1));
        c.submit(session("1002", 1));
        let batch = c.take_batch();
        c.submit(session("1002", 5));
        c.restore(batch);
        let again = c.take_batch();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].1, session("1001", 1));
        assert!(again.iter().any(|(_, x)| *x == session("1002", 5)));
    }
}
