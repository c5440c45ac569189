//! Group commit at the leader.
//!
//! openraft 0.9 takes client writes one at a time in its core loop: each becomes an entry of
//! its own, appended and fsynced before the loop reads the next message
//! (`RaftCore::process_raft_msg` runs the engine's commands after every message, and
//! `append_to_log` awaits the flush). So the writes that reach the leader together (its own
//! checkpoint writer's batches, those its followers forward, configuration) each wait behind
//! one fsync per write ahead of them, and each costs every node an entry: under load the
//! leader synced its log once per write (docs/PERFORMANCE.md, "Raft: one fsync per write").
//!
//! The combiner keeps at most `MAX_ENTRIES_IN_FLIGHT` entries of its own waiting for their
//! answer. Writes that arrive meanwhile wait, and go together into the next entry, a
//! `model::Command::Group`; each writer gets back its own command's outcome (its
//! `Outcome::parts` slot), as if it had been an entry of its own. A write that arrives when
//! a slot is free goes at once, alone: no write ever waits for company. A group holds at
//! most `MAX_GROUP_COMMANDS` commands (a batch counts as its commands), so an entry is never
//! larger than the largest batch a single writer sends, and a follower takes it in one
//! AppendEntries as before.
//!
//! Writes go straight to openraft, as before the combiner, when this node does not lead
//! (openraft refuses them at once with `ForwardToLeader`, and the writer retries at the
//! leader) and for liveness (leases, node up/down), so a busy leader's queue can never make
//! a live node look dead.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::RaftServerMetrics;
use tokio::sync::{mpsc, oneshot, watch};

use crate::node::WRITE_TIMEOUT;
use crate::types::{NodeInfo, Raft};

/// Entries of grouped writes waiting for their answer at once. Two: one being replicated
/// while the next is appended, as the checkpoint writer keeps two batches in flight.
pub const MAX_ENTRIES_IN_FLIGHT: usize = 2;
/// The most commands one group carries, a batch counting as its commands: the checkpoint
/// writer's largest batch (`actors::node::checkpoints::MAX_BATCH`).
pub const MAX_GROUP_COMMANDS: usize = 512;

/// Why a write through the combiner was not committed.
#[derive(Clone, Debug, thiserror::Error)]
#[allow(clippy::large_enum_variant)] // an error path, answered once per write
pub enum WriteError {
    /// openraft refused or failed it (`ForwardToLeader` when this node does not lead).
    #[error(transparent)]
    Raft(#[from] RaftError<u64, ClientWriteError<u64, NodeInfo>>),
    /// No answer within `WRITE_TIMEOUT` (a leader cut off from the others), or Raft has
    /// stopped: the write may still be committed later.
    #[error("the write was not answered within {WRITE_TIMEOUT:?}; it may still be committed")]
    Unanswered,
}

type Reply = oneshot::Sender<Result<model::Outcome, WriteError>>;
type Write = (Arc<model::Command>, Reply);
type ServerMetrics = watch::Receiver<RaftServerMetrics<u64, NodeInfo>>;

/// The leader's write path: cheap to share (`Arc`), one task behind it.
pub struct Combiner {
    raft: Raft,
    server: ServerMetrics,
    queue: mpsc::UnboundedSender<Write>,
}

impl Combiner {
    /// Starts the combining task for `raft`. It ends when the combiner is dropped, after the
    /// entries in flight are answered.
    pub fn spawn(raft: Raft) -> Combiner {
        let (queue, rx) = mpsc::unbounded_channel();
        let server = raft.server_metrics();
        tokio::spawn(run(raft.clone(), server.clone(), rx));
        Combiner {
            raft,
            server,
            queue,
        }
    }

    /// Commits `command` through this node's Raft and returns its outcome once applied; fails
    /// with `ForwardToLeader` when this node does not lead, as openraft's `client_write` does.
    pub async fn write(&self, command: Arc<model::Command>) -> Result<model::Outcome, WriteError> {
        if is_liveness(&command) || !leads(&self.server) {
            return write_alone(&self.raft, command).await;
        }
        let (reply, answer) = oneshot::channel();
        if self.queue.send((command, reply)).is_err() {
            return Err(WriteError::Unanswered);
        }
        answer.await.unwrap_or(Err(WriteError::Unanswered))
    }
}

/// Leases and membership: small, and late means a node is declared down.
pub(crate) fn is_liveness(command: &model::Command) -> bool {
    matches!(
        command,
        model::Command::Heartbeat { .. }
            | model::Command::NodeUp { .. }
            | model::Command::NodeDown { .. }
    )
}

fn leads(server: &ServerMetrics) -> bool {
    let metrics = server.borrow();
    metrics.current_leader == Some(metrics.id)
}

/// How much of a group's room a write takes: a batch counts as its commands.
fn weight(command: &model::Command) -> usize {
    match command {
        model::Command::Batch { commands } => commands.len().max(1),
        _ => 1,
    }
}

async fn write_alone(
    raft: &Raft,
    command: Arc<model::Command>,
) -> Result<model::Outcome, WriteError> {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Ok(written) => Ok(written?.data),
        Err(_) => Err(WriteError::Unanswered),
    }
}

async fn run(raft: Raft, mut server: ServerMetrics, mut queue: mpsc::UnboundedReceiver<Write>) {
    let mut in_flight = FuturesUnordered::new();
    // The write that did not fit in the last group: the first of the next.
    let mut carried: Option<Write> = None;
    let mut raft_running = true;
    loop {
        if in_flight.len() < MAX_ENTRIES_IN_FLIGHT {
            if let Some(first) = carried.take() {
                if let Some(group) = take_group(first, &mut queue, &mut carried) {
                    in_flight.push(commit(raft.clone(), group));
                }
                continue;
            }
        }
        tokio::select! {
            // A finished entry first: its slot lets the writes queued meanwhile go, together.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            // Both slots taken and this node stops leading: its entries may wait for the new
            // leader's word, so the writes queued behind them go to openraft now, which
            // refuses them at once, and their writers retry at the new leader.
            changed = server.changed(), if raft_running && in_flight.len() >= MAX_ENTRIES_IN_FLIGHT => {
                raft_running = changed.is_ok();
                if !leads(&server) {
                    let queued = carried.take().into_iter().chain(std::iter::from_fn(|| queue.try_recv().ok()));
                    for (command, reply) in queued {
                        let raft = raft.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(write_alone(&raft, command).await);
                        });
                    }
                }
            }
            received = queue.recv(), if in_flight.len() < MAX_ENTRIES_IN_FLIGHT => {
                let Some(first) = received else { break };
                if let Some(group) = take_group(first, &mut queue, &mut carried) {
                    in_flight.push(commit(raft.clone(), group));
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// `first` and the writes queued behind it, up to `MAX_GROUP_COMMANDS` commands; the one
/// that would not fit is `carried` to the next group. Writers that gave up while they waited
/// (their deadline passed) are left out: they retry, or have reported the failure. None when
/// all of them gave up.
fn take_group(
    first: Write,
    queue: &mut mpsc::UnboundedReceiver<Write>,
    carried: &mut Option<Write>,
) -> Option<Vec<Write>> {
    let mut room = MAX_GROUP_COMMANDS.saturating_sub(weight(&first.0));
    let mut group = vec![first];
    while room > 0 {
        let Ok(next) = queue.try_recv() else { break };
        let needs = weight(&next.0);
        if needs > room {
            *carried = Some(next);
            break;
        }
        room -= needs;
        group.push(next);
    }
    group.retain(|(_, reply)| !reply.is_closed());
    (!group.is_empty()).then_some(group)
}

/// Commits one entry: the write itself when it is alone, else a `Group` of them, and answers
/// every writer. An entry not answered within `WRITE_TIMEOUT` (a leader cut off from the
/// others, which openraft answers only once it hears from them again) gives its slot back,
/// and its writers are told so (`Unanswered`): their own deadline has passed by then.
async fn commit(raft: Raft, group: Vec<Write>) {
    let (commands, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
    let command = match commands.as_slice() {
        [command] => Arc::clone(command),
        _ => Arc::new(model::Command::Group { commands }),
    };
    let written = write_alone(&raft, command).await;
    let grouped = replies.len() > 1;
    match written {
        Ok(outcome) if grouped => {
            let mut parts = outcome.parts.into_iter();
            for reply in replies {
                // Applying a group yields one outcome per command; a missing one would be a
                // bug in `ReplicatedState::apply`, reported as a failure, never as success.
                let outcome = parts.next().unwrap_or_else(|| {
                    model::Outcome::failed(model::ApplyError::Invalid(
                        "no outcome for this write in its group".into(),
                    ))
                });
                let _ = reply.send(Ok(outcome));
            }
        }
        written => {
            for reply in replies {
                let _ = reply.send(written.clone());
            }
        }
    }
}
