//! `Cluster`: the handle the rest of callgrid uses to write through Raft and read the
//! replicated state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use serde::Serialize;
use storage::Db;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::{timeout_at, Instant};

use crate::combiner::{is_liveness, Combiner, WriteError};
use crate::config::ClusterConfig;
use crate::log_store::LogStore;
use crate::network::{
    spawn_server, CallError, Connection, FaultTable, NetworkFactory, Request, Response,
    WriteRejection,
};
use crate::state_machine::{Applied, StateMachineStore};
use crate::types::{NodeInfo, Raft};
use crate::ClusterError;

/// Upper bound on one `Cluster::write`, forwarding and retries included.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while no leader is known or the leader hint is stale.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Bulk forwarding connections per leader: as many forwarded writes wait for their commit at
/// once. Two for the checkpoint writer's batches in flight, one more so that a configuration
/// write does not wait behind both.
const BULK_CONNECTIONS: usize = 3;

/// A snapshot of this node's Raft status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub last_log: Option<u64>,
    pub voters: BTreeMap<u64, NodeInfo>,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub state: String,
}

/// One running node of the Raft group.
pub struct Cluster {
    node_id: u64,
    raft: Raft,
    /// The leader's write path: writes that arrive together share a Raft entry.
    combiner: Arc<Combiner>,
    state: Arc<RwLock<model::ReplicatedState>>,
    applied_tx: broadcast::Sender<Applied>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Connections used to forward writes, by leader, lane and slot: a connection carries one
    /// request at a time, so liveness writes get their own and never wait behind a batch of
    /// checkpoints (an alive but busy node must not look dead, docs/PERFORMANCE.md), and
    /// bulk writes have `BULK_CONNECTIONS` of them.
    forwards: Mutex<HashMap<(u64, Lane, usize), SharedConnection>>,
    /// Which bulk connection a write waits for when all are busy (round robin).
    next_bulk: std::sync::atomic::AtomicUsize,
    faults: FaultTable,
}

/// A forwarding connection, used by one write at a time.
type SharedConnection = Arc<tokio::sync::Mutex<Connection>>;

/// Which forwarding connection a write takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Leases and membership: small, and late means a node is declared down.
    Liveness,
    /// Everything else: checkpoint batches, configuration.
    Bulk,
}

impl Lane {
    /// How many connections to one leader the lane has.
    fn connections(self) -> usize {
        match self {
            Lane::Liveness => 1,
            Lane::Bulk => BULK_CONNECTIONS,
        }
    }

    fn of(command: &model::Command) -> Lane {
        if is_liveness(command) {
            Lane::Liveness
        } else {
            Lane::Bulk
        }
    }
}

/// The outcome of one forwarding attempt.
enum Forwarded {
    Done(model::Outcome),
    /// Not applied; try again (stale leader hint, or the leader was unreachable).
    Retry,
}

impl Cluster {
    /// Opens the store, starts the RPC server and openraft, and initializes a fresh cluster if
    /// this node is the designated initializer (lowest id among `peers`).
    pub async fn start(config: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let node_id = config.node_id;
        let raft_config = Arc::new(config.raft_config()?);
        let db = Arc::new(
            Db::open(&config.data_dir).map_err(|source| ClusterError::Storage {
                doing: "opening the raft database",
                source,
            })?,
        );
        let log_store = LogStore::new(db.clone());
        let fresh = log_store
            .is_fresh()
            .map_err(|source| ClusterError::Storage {
                doing: "reading the raft log state",
                source,
            })?;
        let state_machine = StateMachineStore::open(db).map_err(|e| ClusterError::RaftStorage {
            doing: "restoring the state machine",
            reason: e.to_string(),
        })?;
        let state = state_machine.state();
        let applied_tx = state_machine.applied_sender();
        let addr = config.info.raft_addr.clone();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ClusterError::Bind { addr, source })?;
        let faults = FaultTable::default();
        let network = NetworkFactory::new(faults.clone(), log_store.encoded());
        let raft = Raft::new(node_id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let combiner = Arc::new(Combiner::spawn(raft.clone()));
        let server = spawn_server(listener, raft.clone(), Arc::clone(&combiner), node_id);
        tracing::info!(node = node_id, fresh, "raft node started");
        if fresh && config.is_initializer() {
            match raft.initialize(config.peers.clone()).await {
                Ok(()) => tracing::info!(
                    node = node_id,
                    voters = config.peers.len(),
                    "initialized a new cluster"
                ),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ClusterError::Raft(e.to_string())),
            }
        }
        Ok(Arc::new(Cluster {
            node_id,
            raft,
            combiner,
            state,
            applied_tx,
            server: Mutex::new(Some(server)),
            forwards: Mutex::default(),
            next_bulk: Default::default(),
            faults,
        }))
    }

    /// Commits `command` only if this node is the leader, never forwarding. For decisions
    /// only a current leader may take (declaring a node down): a deposed leader that has not
    /// noticed yet must not get its stale verdict committed by the new one.
    pub async fn write_as_leader(
        &self,
        command: model::Command,
    ) -> Result<model::Outcome, ClusterError> {
        let written = timeout_at(
            Instant::now() + WRITE_TIMEOUT,
            self.raft.client_write(Arc::new(command)),
        )
        .await
        .map_err(|_| ClusterError::Timeout {
            doing: "committing a write as leader",
            after: WRITE_TIMEOUT,
        })?;
        written
            .map(|response| response.data)
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Replicates `command` and returns its outcome once committed and applied on the leader.
    /// A rejected command is an `Ok(Outcome)` with an error; `Err` means it may not have been
    /// replicated (no leader, timeout, network).
    pub async fn write(&self, command: model::Command) -> Result<model::Outcome, ClusterError> {
        self.write_shared(Arc::new(command)).await
    }

    /// `write` of a command the caller keeps too (never cloned: the Raft entry shares it).
    pub async fn write_shared(
        &self,
        command: Arc<model::Command>,
    ) -> Result<model::Outcome, ClusterError> {
        let started = Instant::now();
        let deadline = started + WRITE_TIMEOUT;
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            match metrics.current_leader {
                Some(leader) if leader == self.node_id => {
                    let written = timeout_at(deadline, self.combiner.write(Arc::clone(&command)))
                        .await
                        .map_err(|_| ClusterError::Timeout {
                            doing: "committing a write",
                            after: WRITE_TIMEOUT,
                        })?;
                    match written {
                        Ok(outcome) => {
                            tracing::debug!(node = self.node_id, elapsed = ?started.elapsed(), "write committed");
                            return Ok(outcome);
                        }
                        // Leadership moved before the entry was accepted: retry at the new leader.
                        Err(WriteError::Raft(RaftError::APIError(
                            ClientWriteError::ForwardToLeader(_),
                        ))) => {}
                        Err(WriteError::Unanswered) => {
                            return Err(ClusterError::Timeout {
                                doing: "committing a write",
                                after: WRITE_TIMEOUT,
                            })
                        }
                        Err(WriteError::Raft(e)) => return Err(ClusterError::Raft(e.to_string())),
                    }
                }
                Some(leader) => {
                    let node = metrics
                        .membership_config
                        .membership()
                        .get_node(&leader)
                        .cloned();
                    if let Some(node) = node {
                        if let Forwarded::Done(outcome) =
                            self.forward(leader, &node, &command, deadline).await?
                        {
                            tracing::debug!(node = self.node_id, leader, elapsed = ?started.elapsed(), "forwarded write committed");
                            return Ok(outcome);
                        }
                    }
                }
                None => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ClusterError::NoLeader {
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn forward(
        &self,
        leader: u64,
        node: &NodeInfo,
        command: &Arc<model::Command>,
        deadline: Instant,
    ) -> Result<Forwarded, ClusterError> {
        let mut connection = self.connection(leader, node, Lane::of(command)).await;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match connection
            .call(&Request::ClientWrite(Arc::clone(command)), remaining)
            .await
        {
            Ok(Response::ClientWrite(Ok(outcome))) => Ok(Forwarded::Done(outcome)),
            Ok(Response::ClientWrite(Err(WriteRejection::NotLeader { .. }))) => {
                Ok(Forwarded::Retry)
            }
            Ok(Response::ClientWrite(Err(WriteRejection::Failed { reason }))) => {
                Err(ClusterError::Raft(reason))
            }
            Ok(_) => Err(CallError::UnexpectedResponse {
                peer: leader,
                kind: "client_write",
            }
            .into()),
            // Nothing was sent: safe to retry.
            Err(CallError::Unreachable { .. }) => Ok(Forwarded::Retry),
            Err(CallError::Timeout { timeout, .. }) => Err(ClusterError::Timeout {
                doing: "waiting for the leader to commit a forwarded write",
                after: timeout,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// A free connection of `lane` to `leader`, or, when all are busy, the next one in turn
    /// once it is free.
    async fn connection(
        &self,
        leader: u64,
        node: &NodeInfo,
        lane: Lane,
    ) -> tokio::sync::OwnedMutexGuard<Connection> {
        let slots: Vec<SharedConnection> = {
            let mut forwards = self.forwards.lock().unwrap_or_else(|p| p.into_inner());
            (0..lane.connections())
                .map(|slot| {
                    forwards
                        .entry((leader, lane, slot))
                        .or_insert_with(|| {
                            Arc::new(tokio::sync::Mutex::new(Connection::new(
                                leader,
                                node.raft_addr.clone(),
                                self.faults.clone(),
                            )))
                        })
                        .clone()
                })
                .collect()
        };
        for slot in &slots {
            if let Ok(free) = Arc::clone(slot).try_lock_owned() {
                return free;
            }
        }
        let turn = self
            .next_bulk
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % slots.len();
        Arc::clone(&slots[turn]).lock_owned().await
    }

    /// Runs `f` on this node's applied state (possibly behind the leader by a few entries).
    pub fn read<R>(&self, f: impl FnOnce(&model::ReplicatedState) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every normal entry applied from now on, in log order. A subscriber that falls more
    /// than `APPLIED_CHANNEL_CAPACITY` behind gets `Lagged` and should re-read the state. A
    /// snapshot installed from the leader replaces the state without per-command events.
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.applied_tx.subscribe()
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// This node's Raft status, from openraft's metrics.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|node| (id, node.clone())))
            .collect();
        ClusterStatus {
            node_id: self.node_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|id| id.index),
            last_log: metrics.last_log_index,
            voters,
            state: format!("{:?}", metrics.state),
        }
    }

    /// Waits until a leader is known and this node has applied an entry of the leader's term.
    /// A new leader's first entry (a blank one) follows every entry committed before it, so
    /// once it is applied here, every write committed before the leader appeared is visible.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                let applied_term = m.last_applied.map(|id| id.leader_id.term);
                if m.current_leader.is_some() && applied_term == Some(m.current_term) {
                    return Ok(());
                }
            }
            match timeout_at(deadline, metrics.changed()).await {
                Err(_) => {
                    return Err(ClusterError::Timeout {
                        doing: "waiting for a leader and catch-up",
                        after: timeout,
                    })
                }
                Ok(Err(_)) => return Err(ClusterError::ShutDown),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Stops the RPC server and openraft. Idempotent.
    pub async fn shutdown(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(server) = server else { return };
        server.abort();
        let _ = server.await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(node = self.node_id, error = %e, "raft shutdown failed");
        }
        tracing::info!(node = self.node_id, "raft node stopped");
    }

    /// Every member (voters and learners) with its addresses, from the committed membership.
    pub fn members(&self) -> BTreeMap<u64, NodeInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect()
    }

    /// Adds `id` as a learner and waits until it has caught up with the log as it was when
    /// added (openraft's blocking `add_learner`). Leader only. Returns the index it reached.
    pub async fn add_learner(&self, id: u64, info: NodeInfo) -> Result<u64, ClusterError> {
        let response = self
            .raft
            .add_learner(id, info, true)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(response.log_id.index)
    }

    /// Makes `voters` the voting membership (joint consensus inside openraft); every voter
    /// must already be a member. Members left out stay learners. Leader only.
    pub async fn set_voters(&self, voters: BTreeSet<u64>) -> Result<(), ClusterError> {
        self.raft
            .change_membership(voters, true)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(())
    }

    /// The openraft handle, for membership changes and metrics.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Per-peer fault injection on this node's outgoing Raft traffic.
    pub fn faults(&self) -> &FaultTable {
        &self.faults
    }
}
