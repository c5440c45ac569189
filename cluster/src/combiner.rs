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
//! `Outcome::parts` slot), as if it had been an entry of its own. A group holds at most
//! `MAX_GROUP_COMMANDS` commands (a batch counts as its commands), so an entry is never
//! larger than the largest batch a single writer sends, and a follower takes it in one
//! AppendEntries as before.
//!
//! When does a write go? With no entry in flight, at once: an idle cluster adds no latency.
//! With one in flight, it waits up to `LINGER` for company before it takes the second slot
//! alone, and goes at once with whatever came meanwhile if the first entry is answered
//! sooner. With both in flight, it waits for a slot. Under calls, most writes are a single
//! checkpoint from one node's writer, and a Raft entry costs about the same CPU whatever it
//! carries (about 1.3 ms over the three nodes: an fsync and a virtio notification on each,
//! two AppendEntries, the applies), so entries, not checkpoints, are what a call costs
//! (docs/PERFORMANCE.md, "Caps: fewer entries per call").
//!
//! Writes go straight to openraft, as before the combiner, when this node does not lead
//! (openraft refuses them at once with `ForwardToLeader`, and the writer retries at the
//! leader) and for liveness (leases, node up/down), so a busy leader's queue can never make
//! a live node look dead.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::RaftServerMetrics;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::node::WRITE_TIMEOUT;
use crate::types::{NodeInfo, Raft};

/// Entries of grouped writes waiting for their answer at once. Two: one being replicated
/// while the next is appended, as the checkpoint writer keeps two batches in flight.
pub const MAX_ENTRIES_IN_FLIGHT: usize = 2;
/// The most commands one group carries, a batch counting as its commands: the checkpoint
/// writer's largest batch (`actors::node::checkpoints::MAX_BATCH`).
pub const MAX_GROUP_COMMANDS: usize = 512;
/// How long a write that finds one entry in flight waits for company before it takes the
/// second slot (the timer's resolution is 1 ms, so 1-2 ms in practice). Short beside the
/// commit itself (3-5 ms at low load on these machines), and at 150 calls/s the writes come
/// about 1.3 ms apart.
pub const LINGER: Duration = Duration::from_millis(1);

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

/// A write waiting in the combiner's queue.
struct Write {
    command: Arc<model::Command>,
    reply: Reply,
    /// When it was queued: its linger counts from here, so a write that already waited for a
    /// slot does not wait again.
    queued: Instant,
}
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
        let entry = {
            let raft = raft.clone();
            move |command| {
                let raft = raft.clone();
                async move { write_alone(&raft, command).await }
            }
        };
        tokio::spawn(run(entry, server.clone(), rx, LINGER));
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
        let write = Write {
            command,
            reply,
            queued: Instant::now(),
        };
        if self.queue.send(write).is_err() {
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

/// When the group headed by `first` may go with `busy` entries in flight: at once with none,
/// after its linger with one, and not before a slot frees with both.
fn due(first: &Write, busy: usize, linger: Duration) -> Option<Instant> {
    match busy {
        0 => Some(first.queued),
        n if n < MAX_ENTRIES_IN_FLIGHT => Some(first.queued + linger),
        _ => None,
    }
}

/// The combining loop. `entry` commits one Raft entry (`write_alone` on the node's Raft; a
/// stand-in in the tests).
async fn run<E, F>(
    entry: E,
    mut server: ServerMetrics,
    mut queue: mpsc::UnboundedReceiver<Write>,
    linger: Duration,
) where
    E: Fn(Arc<model::Command>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<model::Outcome, WriteError>> + Send + 'static,
{
    let mut in_flight = FuturesUnordered::new();
    // The first write of the next group: it did not fit in the last group, or it waits for a
    // slot or for company.
    let mut next: Option<Write> = None;
    let mut raft_running = true;
    loop {
        if let Some(first) = next.take() {
            if due(&first, in_flight.len(), linger).is_some_and(|at| at <= Instant::now()) {
                if let Some(group) = take_group(first, &mut queue, &mut next) {
                    in_flight.push(commit(entry.clone(), group));
                }
                continue;
            }
            next = Some(first);
        }
        let wake_at = next
            .as_ref()
            .and_then(|first| due(first, in_flight.len(), linger));
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
                    let queued = next.take().into_iter().chain(std::iter::from_fn(|| queue.try_recv().ok()));
                    for write in queued {
                        let entry = entry.clone();
                        tokio::spawn(async move {
                            let _ = write.reply.send(entry(write.command).await);
                        });
                    }
                }
            }
            // The linger is over.
            () = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
            received = queue.recv(), if next.is_none() && in_flight.len() < MAX_ENTRIES_IN_FLIGHT => {
                let Some(first) = received else { break };
                next = Some(first);
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
    let mut room = MAX_GROUP_COMMANDS.saturating_sub(weight(&first.command));
    let mut group = vec![first];
    while room > 0 {
        let Ok(next) = queue.try_recv() else { break };
        let needs = weight(&next.command);
        if needs > room {
            *carried = Some(next);
            break;
        }
        room -= needs;
        group.push(next);
    }
    group.retain(|write| !write.reply.is_closed());
    (!group.is_empty()).then_some(group)
}

/// Commits one entry: the write itself when it is alone, else a `Group` of them, and answers
/// every writer. An entry not answered within `WRITE_TIMEOUT` (a leader cut off from the
/// others, which openraft answers only once it hears from them again) gives its slot back,
/// and its writers are told so (`Unanswered`): their own deadline has passed by then.
async fn commit<E, F>(entry: E, group: Vec<Write>)
where
    E: Fn(Arc<model::Command>) -> F,
    F: Future<Output = Result<model::Outcome, WriteError>>,
{
    let (commands, replies): (Vec<_>, Vec<_>) =
        group.into_iter().map(|w| (w.command, w.reply)).unzip();
    let command = match commands.as_slice() {
        [command] => Arc::clone(command),
        _ => Arc::new(model::Command::Group { commands }),
    };
    let written = entry(command).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{ServerState, Vote};

    /// An entry handed to the stand-in for Raft, answered when the test says.
    type Proposed = (Arc<model::Command>, Reply);
    type Answer = oneshot::Receiver<Result<model::Outcome, WriteError>>;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A combiner whose Raft is the test: every entry it commits comes out of `proposed`, and
    /// stays in flight until the test answers it.
    struct Harness {
        queue: mpsc::UnboundedSender<Write>,
        proposed: mpsc::UnboundedReceiver<Proposed>,
        _leads: watch::Sender<RaftServerMetrics<u64, NodeInfo>>,
    }

    fn start(linger: Duration) -> Harness {
        let (queue, rx) = mpsc::unbounded_channel();
        let (propose, proposed) = mpsc::unbounded_channel::<Proposed>();
        let entry = move |command| {
            let propose = propose.clone();
            async move {
                let (reply, answer) = oneshot::channel();
                propose
                    .send((command, reply))
                    .map_err(|_| WriteError::Unanswered)?;
                answer.await.unwrap_or(Err(WriteError::Unanswered))
            }
        };
        let (leads, server) = watch::channel(RaftServerMetrics {
            id: 1,
            vote: Vote::default(),
            state: ServerState::Leader,
            current_leader: Some(1),
            membership_config: Arc::default(),
        });
        tokio::spawn(run(entry, server, rx, linger));
        Harness {
            queue,
            proposed,
            _leads: leads,
        }
    }

    impl Harness {
        /// Queues write number `n`, as `Combiner::write` does.
        fn write(&self, n: u64) -> Answer {
            let (reply, answer) = oneshot::channel();
            let command = Arc::new(model::Command::DiscardCalls {
                call_ids: vec![model::CallId(format!("call-{n}"))],
            });
            let queued = Instant::now();
            let write = Write {
                command,
                reply,
                queued,
            };
            assert!(self.queue.send(write).is_ok(), "the combiner has stopped");
            answer
        }

        /// The next entry the combiner commits: the numbers of its writes, and its answer.
        async fn next_entry(&mut self) -> (Vec<u64>, Reply) {
            let (command, reply) = tokio::time::timeout(DEADLINE, self.proposed.recv())
                .await
                .expect("no entry within the deadline")
                .expect("the combiner has stopped");
            (numbers(&command), reply)
        }

        /// True when the combiner has committed nothing more (after `settle`).
        fn nothing_proposed(&mut self) -> bool {
            self.proposed.try_recv().is_err()
        }
    }

    /// Lets the combiner take in what was queued. The tests run on one thread, so the
    /// combiner runs only while the test yields: a write queued before `settle` has been
    /// received, and one queued after it has not.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn numbers(command: &model::Command) -> Vec<u64> {
        match command {
            model::Command::Group { commands } => {
                commands.iter().flat_map(|c| numbers(c)).collect()
            }
            model::Command::DiscardCalls { call_ids } => call_ids
                .iter()
                .map(|id| id.0["call-".len()..].parse().expect("a test write"))
                .collect(),
            other => panic!("not a test write: {other:?}"),
        }
    }

    async fn outcome(answer: Answer) -> model::Outcome {
        tokio::time::timeout(DEADLINE, answer)
            .await
            .expect("no answer within the deadline")
            .expect("the reply was dropped")
            .expect("the write failed")
    }

    #[tokio::test]
    async fn a_write_behind_one_entry_waits_for_company_and_none_waits_on_an_idle_leader() {
        // A linger far longer than the test: any write that lingered would miss its deadline.
        let mut h = start(Duration::from_secs(3600));
        let first = h.write(1);
        let (entry, reply) = h.next_entry().await;
        assert_eq!(
            entry,
            [1],
            "with nothing in flight, a write goes at once, alone"
        );

        let second = h.write(2);
        settle().await;
        let third = h.write(3);
        settle().await;
        assert!(
            h.nothing_proposed(),
            "with one entry in flight, a write waits for company"
        );

        // The entry in flight is answered: the two waiting go at once, together.
        reply.send(Ok(model::Outcome::default())).unwrap();
        assert_eq!(outcome(first).await, model::Outcome::default());
        let (entry, reply) = h.next_entry().await;
        assert_eq!(entry, [2, 3]);
        let refused = model::Outcome::failed(model::ApplyError::NotFound("call-3".into()));
        reply
            .send(Ok(model::Outcome {
                error: None,
                parts: vec![model::Outcome::default(), refused.clone()],
            }))
            .unwrap();
        assert_eq!(outcome(second).await, model::Outcome::default());
        assert_eq!(
            outcome(third).await,
            refused,
            "each writer gets its own part"
        );

        // Idle again: at once.
        let _fourth = h.write(4);
        let (entry, _reply) = h.next_entry().await;
        assert_eq!(entry, [4]);
    }

    #[tokio::test]
    async fn a_write_lingers_no_longer_than_the_linger() {
        let mut h = start(Duration::from_millis(20));
        let _first = h.write(1);
        let (entry, first_reply) = h.next_entry().await;
        assert_eq!(entry, [1]);
        let _second = h.write(2);
        settle().await;
        let _third = h.write(3);
        // The first entry is never answered: the two go when their linger ends.
        let (entry, _group_reply) = h.next_entry().await;
        assert_eq!(entry, [2, 3]);

        // Both slots taken: a write waits for one, however long.
        let _fourth = h.write(4);
        settle().await;
        assert!(h.nothing_proposed());
        first_reply.send(Ok(model::Outcome::default())).unwrap();
        let (entry, _reply) = h.next_entry().await;
        assert_eq!(entry, [4]);
    }

    /// The control for the two tests above: without a linger, the same sequence sends the
    /// second write alone, so `settle` does hand each write to the combiner before the next.
    #[tokio::test]
    async fn without_a_linger_the_second_slot_is_taken_at_once() {
        let mut h = start(Duration::ZERO);
        let _first = h.write(1);
        let (entry, _first_reply) = h.next_entry().await;
        assert_eq!(entry, [1]);
        let _second = h.write(2);
        settle().await;
        let _third = h.write(3);
        let (entry, _reply) = h.next_entry().await;
        assert_eq!(entry, [2]);
    }
}
