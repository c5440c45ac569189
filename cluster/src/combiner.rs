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
//! The combiner keeps at most `MAX_ENTRIES_IN_FLIGHT` entries of its own on their way to
//! commit. Writes that arrive meanwhile wait, and go together into the next entry, a
//! `model::Command::Group`; each writer gets back its own command's outcome (its
//! `Outcome::parts` slot), as if it had been an entry of its own. A write that arrives when
//! nothing is in flight goes at once, alone: no write ever waits for company.
//!
//! Liveness writes (leases, node up/down) never wait here: they go to openraft directly, as
//! before, so a busy leader's queue cannot make a live node look dead.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, Fatal, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::node::WRITE_TIMEOUT;
use crate::types::{NodeInfo, Raft};

/// Entries of grouped writes on their way to commit at once. Two: one being replicated while
/// the next is appended, as the checkpoint writer keeps two batches in flight.
pub const MAX_ENTRIES_IN_FLIGHT: usize = 2;
/// The most writes one entry carries. A write is itself a batch of up to 512 checkpoints
/// (`actors::node::checkpoints`, about 2.5 KB each), so this bounds an entry near 10 MB.
pub const MAX_GROUP: usize = 8;

/// Why a write was not committed, as openraft reports it.
pub type WriteError = RaftError<u64, ClientWriteError<u64, NodeInfo>>;

type Reply = oneshot::Sender<Result<model::Outcome, WriteError>>;

/// The leader's write path: cheap to share (`Arc`), one task behind it.
pub struct Combiner {
    raft: Raft,
    queue: mpsc::UnboundedSender<(Arc<model::Command>, Reply)>,
}

impl Combiner {
    /// Starts the combining task for `raft`. It ends when the combiner is dropped, after the
    /// entries in flight are done.
    pub fn spawn(raft: Raft) -> Combiner {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft.clone(), rx));
        Combiner { raft, queue }
    }

    /// Commits `command` through this node's Raft (which must be the leader, or this fails
    /// with `ForwardToLeader` as openraft's `client_write` does) and returns its outcome once
    /// applied.
    pub async fn write(&self, command: Arc<model::Command>) -> Result<model::Outcome, WriteError> {
        if is_liveness(&command) {
            return self.raft.client_write(command).await.map(|r| r.data);
        }
        let (reply, answer) = oneshot::channel();
        if self.queue.send((command, reply)).is_err() {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        answer
            .await
            .unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
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

async fn run(raft: Raft, mut queue: mpsc::UnboundedReceiver<(Arc<model::Command>, Reply)>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            // A finished entry first: its slot lets the writes queued meanwhile go, together.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            received = queue.recv(), if in_flight.len() < MAX_ENTRIES_IN_FLIGHT => {
                let Some(first) = received else { break };
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                // A writer that gave up (its deadline passed while it waited here) is not
                // written for: it will retry, or has reported the failure.
                group.retain(|(_, reply)| !reply.is_closed());
                if !group.is_empty() {
                    in_flight.push(commit(raft.clone(), group));
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Commits one entry: the write itself when it is alone, else a `Group` of them, and answers
/// every writer. An entry not answered within `WRITE_TIMEOUT` (a leader cut off from the
/// others, which openraft answers only once it hears from them again) gives its slot back:
/// its writers have given up by then, since their deadline came first.
async fn commit(raft: Raft, group: Vec<(Arc<model::Command>, Reply)>) {
    let (commands, mut replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
    let alone = commands.len() == 1;
    let command = match commands.as_slice() {
        [command] => Arc::clone(command),
        _ => Arc::new(model::Command::Group { commands }),
    };
    let Ok(written) = tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await else {
        tracing::debug!(
            writes = replies.len(),
            "a combined entry was not answered in time"
        );
        return;
    };
    if alone {
        if let Some(reply) = replies.pop() {
            let _ = reply.send(written.map(|r| r.data));
        }
        return;
    }
    match written {
        Ok(response) => {
            let mut parts = response.data.parts.into_iter();
            for reply in replies {
                // Applying a group yields one outcome per command; a missing one would be a
                // bug in `ReplicatedState::apply`, reported as a failure, never as success.
                let outcome = parts.next().unwrap_or_else(|| model::Outcome {
                    error: Some(model::ApplyError::Invalid(
                        "no outcome for this write in its group".into(),
                    )),
                    parts: Vec::new(),
                });
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
