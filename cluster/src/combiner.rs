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
//! a slot is free goes at once, alone: no write ever waits for company. (A write that found
//! one entry in flight was once made to linger 1 ms for company: a quarter fewer entries
//! under calls, and no CPU saved; docs/PERFORMANCE.md, "Caps: fewer entries per call,
//! measured".)
//! A group holds at most `MAX_GROUP_COMMANDS` commands (a batch counts as its commands), so
//! an entry is never larger than the largest batch a single writer sends, and a follower
//! takes it in one AppendEntries as before.
//!
//! Writes go straight to openraft, as before the combiner, when this node does not lead
//! (openraft refuses them at once with `ForwardToLeader`, and the writer retries at the
//! leader) and for liveness (leases, node up/down), so a busy leader's queue can never make
//! a live node look dead.
//!
//! Should the combining task ever fail (a panic), the writes it held are told `Unanswered`,
//! as a write not answered in time is (the checkpoint writer keeps those and writes them
//! again), and every later write goes straight to openraft, alone, as before group commit,
//! until the node restarts: slower under load, never stuck. The failure is logged and
//! counted (`FAILURES_TOTAL`).

use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::RaftServerMetrics;
use tokio::sync::{mpsc, oneshot, watch};

use crate::node::WRITE_TIMEOUT;
use crate::types::{NodeInfo, Raft};

/// Entries of grouped writes waiting for their answer at once. Two: one being replicated
/// while the next is appended, as the checkpoint writer keeps two batches in flight.
pub const MAX_ENTRIES_IN_FLIGHT: usize = 2;
/// Combining tasks that failed (a panic); see the module docs.
pub const FAILURES_TOTAL: &str = "callgrid_combiner_failures_total";
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

type Reply = oneshot::Sender<Written>;

/// A write waiting in the combiner's queue.
struct Write {
    command: Arc<model::Command>,
    reply: Reply,
}

type ServerMetrics = watch::Receiver<RaftServerMetrics<u64, NodeInfo>>;

type Written = Result<model::Outcome, WriteError>;

/// Commits one command as an entry of its own.
type Alone = Arc<dyn Fn(Arc<model::Command>) -> BoxFuture<'static, Written> + Send + Sync>;

/// The leader's write path: cheap to share (`Arc`), one task behind it.
pub struct Combiner {
    alone: Alone,
    server: ServerMetrics,
    queue: mpsc::UnboundedSender<Write>,
}

impl Combiner {
    /// Starts the combining task for `raft`. It ends when the combiner is dropped, after the
    /// entries in flight are answered.
    pub fn spawn(raft: Raft) -> Combiner {
        let server = raft.server_metrics();
        let entry = move |command| {
            let raft = raft.clone();
            async move { write_alone(&raft, command).await }
        };
        Combiner::start(entry, server)
    }

    /// Starts the combining task over `entry`, which commits one entry (`write_alone` on the
    /// node's Raft; a stand-in in the tests), and a watcher that reports its failure.
    fn start<E, F>(entry: E, server: ServerMetrics) -> Combiner
    where
        E: Fn(Arc<model::Command>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Written> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        // The series exists from the start, so an alert sees it before any failure.
        metrics::counter!(FAILURES_TOTAL).increment(0);
        let combining = tokio::spawn(run(entry.clone(), server.clone(), rx));
        tokio::spawn(async move {
            if let Err(failure) = combining.await {
                if failure.is_panic() {
                    tracing::error!(
                        "the leader's write combiner failed; writes now go to Raft one entry each"
                    );
                    metrics::counter!(FAILURES_TOTAL).increment(1);
                }
            }
        });
        Combiner {
            alone: Arc::new(move |command| entry(command).boxed()),
            server,
            queue,
        }
    }

    /// Commits `command` through this node's Raft and returns its outcome once applied; fails
    /// with `ForwardToLeader` when this node does not lead, as openraft's `client_write` does.
    pub async fn write(&self, command: Arc<model::Command>) -> Written {
        if is_liveness(&command) || !leads(&self.server) {
            return (self.alone)(command).await;
        }
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(write)) = self.queue.send(Write { command, reply }) {
            // The combining task has ended: it failed (its watcher logs that), or the runtime
            // is shutting down. Alone, as before group commit, from now on.
            return (self.alone)(write.command).await;
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

async fn write_alone(raft: &Raft, command: Arc<model::Command>) -> Written {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Ok(written) => Ok(written?.data),
        Err(_) => Err(WriteError::Unanswered),
    }
}

/// The combining loop. `entry` commits one Raft entry (`write_alone` on the node's Raft; a
/// stand-in in the tests).
async fn run<E, F>(entry: E, mut server: ServerMetrics, mut queue: mpsc::UnboundedReceiver<Write>)
where
    E: Fn(Arc<model::Command>) -> F + Clone + Send + 'static,
    F: Future<Output = Written> + Send + 'static,
{
    let mut in_flight = FuturesUnordered::new();
    // The write that did not fit in the last group: the first of the next.
    let mut carried: Option<Write> = None;
    let mut raft_running = true;
    loop {
        if in_flight.len() < MAX_ENTRIES_IN_FLIGHT {
            if let Some(first) = carried.take() {
                if let Some(group) = take_group(first, &mut queue, &mut carried) {
                    in_flight.push(commit(entry.clone(), group));
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
                    for write in queued {
                        let entry = entry.clone();
                        tokio::spawn(async move {
                            let _ = write.reply.send(entry(write.command).await);
                        });
                    }
                }
            }
            received = queue.recv(), if in_flight.len() < MAX_ENTRIES_IN_FLIGHT => {
                let Some(first) = received else { break };
                if let Some(group) = take_group(first, &mut queue, &mut carried) {
                    in_flight.push(commit(entry.clone(), group));
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
    F: Future<Output = Written>,
{
    let (commands, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|write| (write.command, write.reply))
        .unzip();
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
    type Answer = oneshot::Receiver<Written>;

    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

    /// A combiner whose Raft is the test: every entry it commits comes out of `proposed`, and
    /// stays in flight until the test answers it.
    struct Harness {
        combiner: Arc<Combiner>,
        proposed: mpsc::UnboundedReceiver<Proposed>,
        leadership: watch::Sender<RaftServerMetrics<u64, NodeInfo>>,
    }

    /// The write whose entry makes the stand-in for Raft panic.
    const FAILS: u64 = 666;

    fn start() -> Harness {
        let (propose, proposed) = mpsc::unbounded_channel::<Proposed>();
        let entry = move |command: Arc<model::Command>| {
            let propose = propose.clone();
            async move {
                assert!(
                    !numbers(&command).contains(&FAILS),
                    "the stand-in for Raft fails"
                );
                let (reply, answer) = oneshot::channel();
                propose
                    .send((command, reply))
                    .map_err(|_| WriteError::Unanswered)?;
                answer.await.unwrap_or(Err(WriteError::Unanswered))
            }
        };
        let (leadership, server) = watch::channel(RaftServerMetrics {
            id: 1,
            vote: Vote::default(),
            state: ServerState::Leader,
            current_leader: Some(1),
            membership_config: Arc::default(),
        });
        Harness {
            combiner: Arc::new(Combiner::start(entry, server)),
            proposed,
            leadership,
        }
    }

    /// Write number `n`: a command naming call `call-n`.
    fn command(n: u64) -> model::Command {
        model::Command::DiscardCalls {
            call_ids: vec![model::CallId(format!("call-{n}"))],
        }
    }

    impl Harness {
        /// Queues a write, as `Combiner::write` does.
        fn send(&self, command: model::Command) -> Answer {
            let (reply, answer) = oneshot::channel();
            let write = Write {
                command: Arc::new(command),
                reply,
            };
            assert!(
                self.combiner.queue.send(write).is_ok(),
                "the combiner has stopped"
            );
            answer
        }

        /// Writes `n` through `Combiner::write`, as the node does.
        fn write_through(&self, n: u64) -> tokio::task::JoinHandle<Written> {
            let combiner = Arc::clone(&self.combiner);
            tokio::spawn(async move { combiner.write(Arc::new(command(n))).await })
        }

        fn write(&self, n: u64) -> Answer {
            self.send(command(n))
        }

        /// The next entry the combiner commits: the numbers of its writes, and its answer.
        async fn next_entry(&mut self) -> (Vec<u64>, Reply) {
            let (command, reply) = tokio::time::timeout(DEADLINE, self.proposed.recv())
                .await
                .expect("no entry within the deadline")
                .expect("the combiner has stopped");
            (numbers(&command), reply)
        }

        /// The entry the combiner has committed already (after `settle`): it did not wait.
        fn proposed_at_once(&mut self) -> (Vec<u64>, Reply) {
            let (command, reply) = self
                .proposed
                .try_recv()
                .expect("the write waited instead of going at once");
            (numbers(&command), reply)
        }

        /// Writes 1 and 2, each an entry of its own: both slots are taken until the test
        /// answers them. Their answers.
        async fn fill_both_slots(&mut self) -> (Reply, Reply) {
            let _first = self.write(1);
            let (_, first_reply) = self.next_entry().await;
            let _second = self.write(2);
            let (_, second_reply) = self.next_entry().await;
            (first_reply, second_reply)
        }

        /// True when the combiner has committed nothing more (after `settle`).
        fn nothing_proposed(&mut self) -> bool {
            self.proposed.try_recv().is_err()
        }
    }

    /// Lets the combiner take in what was queued. The tests run on one thread, so the
    /// combiner runs only while the test yields.
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
            model::Command::Batch { commands } => commands.iter().flat_map(numbers).collect(),
            model::Command::DiscardCalls { call_ids } => call_ids
                .iter()
                .map(|id| id.0["call-".len()..].parse().expect("a test write"))
                .collect(),
            other => panic!("not a test write: {other:?}"),
        }
    }

    async fn answered(answer: Answer) -> Written {
        tokio::time::timeout(DEADLINE, answer)
            .await
            .expect("no answer within the deadline")
            .expect("the reply was dropped")
    }

    fn ok() -> model::Outcome {
        model::Outcome::default()
    }

    #[tokio::test]
    async fn writes_go_at_once_while_a_slot_is_free_and_together_when_none_is() {
        let mut h = start();
        let first = h.write(1);
        settle().await;
        let (entry, first_reply) = h.proposed_at_once();
        assert_eq!(entry, [1], "nothing in flight: at once, alone");
        let second = h.write(2);
        settle().await;
        let (entry, second_reply) = h.proposed_at_once();
        assert_eq!(entry, [2], "one in flight: the second slot, at once, alone");

        let queued: Vec<Answer> = (3..=5).map(|n| h.write(n)).collect();
        settle().await;
        assert!(h.nothing_proposed(), "both slots taken: the writes wait");

        // A slot frees: the three waiting go together, and each writer gets its own part.
        first_reply.send(Ok(ok())).unwrap();
        assert_eq!(answered(first).await.unwrap(), ok());
        let (entry, reply) = h.next_entry().await;
        assert_eq!(entry, [3, 4, 5]);
        let refused = model::Outcome::failed(model::ApplyError::NotFound("call-4".into()));
        let parts = vec![ok(), refused.clone(), ok()];
        reply
            .send(Ok(model::Outcome { error: None, parts }))
            .unwrap();
        let mut outcomes = Vec::new();
        for answer in queued {
            outcomes.push(answered(answer).await.unwrap());
        }
        assert_eq!(outcomes, [ok(), refused, ok()]);

        // An entry that fails fails its writer.
        second_reply.send(Err(WriteError::Unanswered)).unwrap();
        assert!(matches!(
            answered(second).await,
            Err(WriteError::Unanswered)
        ));
    }

    #[tokio::test]
    async fn a_group_holds_at_most_max_group_commands_and_the_rest_goes_next() {
        let batch = |from: u64| model::Command::Batch {
            commands: (from..from + 300).map(command).collect(),
        };
        let mut h = start();
        let (first_reply, second_reply) = h.fill_both_slots().await;
        let _a = h.send(batch(1_000));
        let _b = h.send(batch(2_000));
        let _c = h.write(3);
        settle().await;

        first_reply.send(Ok(ok())).unwrap();
        // Kept unanswered, so its slot stays taken until the test frees the other.
        let (entry, _first_group_reply) = h.next_entry().await;
        assert_eq!(
            entry,
            (1_000..1_300).collect::<Vec<_>>(),
            "600 would not fit in 512"
        );
        second_reply.send(Ok(ok())).unwrap();
        let (entry, _) = h.next_entry().await;
        let expected: Vec<u64> = (2_000..2_300).chain([3]).collect();
        assert_eq!(entry, expected, "the batch left over heads the next group");
    }

    #[tokio::test]
    async fn writers_that_gave_up_are_left_out_of_the_group() {
        let mut h = start();
        let (first_reply, _second_reply) = h.fill_both_slots().await;
        drop(h.write(3));
        let _fourth = h.write(4);
        settle().await;
        first_reply.send(Ok(ok())).unwrap();
        let (entry, _) = h.next_entry().await;
        assert_eq!(entry, [4]);
    }

    #[tokio::test]
    async fn when_the_leader_steps_down_the_writes_waiting_go_to_raft_alone() {
        let mut h = start();
        let _in_flight = h.fill_both_slots().await;
        let _third = h.write(3);
        let _fourth = h.write(4);
        settle().await;
        assert!(h.nothing_proposed());

        // Another node leads now: the entries in flight may wait for its word, and the writes
        // queued behind them are handed to openraft at once, each alone, to be refused there.
        h.leadership.send_modify(|m| {
            m.current_leader = Some(2);
            m.state = ServerState::Follower;
        });
        let (mut alone, _) = h.next_entry().await;
        let (other, _) = h.next_entry().await;
        alone.extend(other);
        alone.sort_unstable();
        assert_eq!(alone, [3, 4], "each alone, not grouped");
    }

    #[tokio::test]
    async fn when_the_combining_task_fails_its_writers_are_told_and_later_writes_go_alone() {
        let mut h = start();
        let (first_reply, _second_reply) = h.fill_both_slots().await;
        let doomed = h.write_through(FAILS);
        let queued = h.write_through(3);
        settle().await;
        // A slot frees: the two waiting go together, and the stand-in panics on them.
        first_reply.send(Ok(ok())).unwrap();
        for writer in [doomed, queued] {
            let written = tokio::time::timeout(DEADLINE, writer)
                .await
                .expect("no answer within the deadline")
                .expect("the writer panicked");
            assert!(matches!(written, Err(WriteError::Unanswered)));
        }

        // Writes still commit, each an entry of its own, even when they come at once.
        let later: Vec<_> = (4..=5).map(|n| h.write_through(n)).collect();
        let mut entries = Vec::new();
        for _ in 0..2 {
            let (entry, reply) = h.next_entry().await;
            reply.send(Ok(ok())).unwrap();
            entries.push(entry);
        }
        entries.sort_unstable();
        assert_eq!(entries, [[4], [5]]);
        for writer in later {
            assert_eq!(writer.await.unwrap().unwrap(), ok());
        }
    }
}
