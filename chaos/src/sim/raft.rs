//! Real openraft (0.9.25) for the simulation: the type configuration over `model::Command`
//! on the simulated runtime, an in-memory store that survives a node's crash (its "disk"),
//! a state machine applying `model::ReplicatedState`, and Raft RPCs through the simulated
//! network (`net`).
//!
//! The store acknowledges an append only once it is on the "disk" (the same rule as the
//! RocksDB store); the state machine lives in the node's memory and is lost in a crash:
//! a restarted node restores its last snapshot and openraft re-applies the committed log.

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftLogId, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use serde::{Deserialize, Serialize};

use super::net::Net;
use super::runtime::SimRuntime;

openraft::declare_raft_types!(
    /// The simulation's Raft types: `model::Command` entries on the simulated runtime.
    pub SimTypes:
        D = model::Command,
        R = model::Outcome,
        NodeId = u64,
        Node = openraft::EmptyNode,
        Entry = openraft::Entry<SimTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SimRuntime,
);

pub type Raft = openraft::Raft<SimTypes>;
pub type LogId = openraft::LogId<u64>;
type Vote = openraft::Vote<u64>;
type Entry = openraft::Entry<SimTypes>;
type StoredMembership = openraft::StoredMembership<u64, openraft::EmptyNode>;
type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::EmptyNode>;
type Snapshot = openraft::Snapshot<SimTypes>;
type StorageError = openraft::StorageError<u64>;

/// openraft's settings in the simulation: the cluster's timings, and snapshots often enough
/// that restarted and lagging nodes get installed ones.
pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "callgrid-sim".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(400),
        max_in_snapshot_log_to_keep: 50,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// What survives a node's crash.
#[derive(Default)]
pub struct Disk {
    vote: Option<Vote>,
    log: BTreeMap<u64, Entry>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

pub type SharedDisk = Arc<Mutex<Disk>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
pub struct LogStore {
    disk: SharedDisk,
}

impl LogStore {
    pub fn new(disk: SharedDisk) -> Self {
        LogStore { disk }
    }
}

impl RaftLogReader<SimTypes> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.disk)
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<SimTypes> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<SimTypes>, StorageError> {
        let disk = lock(&self.disk);
        let last = disk.log.values().next_back().map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: disk.last_purged,
            last_log_id: last.or(disk.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        lock(&self.disk).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.disk).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        lock(&self.disk).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.disk).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<SimTypes>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut disk = lock(&self.disk);
            for entry in entries {
                disk.log.insert(entry.get_log_id().index, entry);
            }
        }
        // On the disk: only now is the append acknowledged.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.disk).log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut disk = lock(&self.disk);
        let kept = disk.log.split_off(&(log_id.index + 1));
        disk.log = kept;
        disk.last_purged = Some(log_id);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: model::ReplicatedState,
}

/// What a node's logic reads of its replica: the state, and the commands applied since it
/// last looked, in log order (with their index).
#[derive(Clone, Default)]
pub struct Replica {
    pub state: Arc<Mutex<model::ReplicatedState>>,
    pub applied: Arc<Mutex<VecDeque<(u64, model::Command)>>>,
    pub last_applied: Arc<Mutex<u64>>,
    /// (index, hash of the command) of every entry applied, for the Raft safety check.
    pub hashes: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Set when a snapshot from the leader replaced the state: the commands it covers were
    /// never applied here one by one.
    pub snapshot_installed: Arc<Mutex<bool>>,
}

impl Replica {
    pub fn read<T>(&self, f: impl FnOnce(&model::ReplicatedState) -> T) -> T {
        f(&lock(&self.state))
    }
    pub fn last_applied(&self) -> u64 {
        *lock(&self.last_applied)
    }
    /// True once after a snapshot from the leader was installed.
    pub fn take_snapshot_installed(&self) -> bool {
        std::mem::take(&mut *lock(&self.snapshot_installed))
    }
    pub fn take_applied(&self) -> Vec<(u64, model::Command)> {
        lock(&self.applied).drain(..).collect()
    }
    pub fn applied_hashes(&self) -> Vec<(u64, u64)> {
        lock(&self.hashes).drain(..).collect()
    }
}

pub struct StateMachine {
    disk: SharedDisk,
    replica: Replica,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    counter: u64,
}

fn read_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachine {
    /// A state machine in fresh memory, restored from the disk's snapshot if any.
    pub fn open(disk: SharedDisk, replica: Replica) -> Result<Self, StorageError> {
        let mut sm = StateMachine {
            disk,
            replica,
            last_applied: None,
            last_membership: StoredMembership::default(),
            counter: 0,
        };
        let stored = lock(&sm.disk).snapshot.clone();
        if let Some((_, data)) = stored {
            sm.restore(&data)?;
        }
        Ok(sm)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let body: SnapshotBody = serde_json::from_slice(data).map_err(read_error)?;
        self.last_applied = body.last_applied;
        self.last_membership = body.membership;
        *lock(&self.replica.state) = body.state;
        *lock(&self.replica.last_applied) = body.last_applied.map_or(0, |l| l.index);
        Ok(())
    }
}

pub struct SnapshotBuilder {
    disk: SharedDisk,
    body: SnapshotBody,
    id: String,
}

impl RaftSnapshotBuilder<SimTypes> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = serde_json::to_vec(&self.body).map_err(read_error)?;
        let meta = SnapshotMeta {
            last_log_id: self.body.last_applied,
            last_membership: self.body.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let mut disk = lock(&self.disk);
        let newer = disk
            .snapshot
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id);
        if !newer {
            disk.snapshot = Some((meta.clone(), data.clone()));
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<SimTypes> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<model::Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            self.last_applied = Some(log_id);
            *lock(&self.replica.last_applied) = log_id.index;
            match entry.payload {
                EntryPayload::Blank => outcomes.push(model::Outcome::default()),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(log_id), m);
                    outcomes.push(model::Outcome::default());
                }
                EntryPayload::Normal(command) => {
                    let bytes = serde_json::to_vec(&command).map_err(read_error)?;
                    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                    for b in bytes {
                        hash ^= u64::from(b);
                        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                    }
                    lock(&self.replica.hashes).push((log_id.index, hash));
                    outcomes.push(lock(&self.replica.state).apply(&command));
                    lock(&self.replica.applied).push_back((log_id.index, command));
                }
            }
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.counter += 1;
        SnapshotBuilder {
            disk: self.disk.clone(),
            body: SnapshotBody {
                last_applied: self.last_applied,
                membership: self.last_membership.clone(),
                state: lock(&self.replica.state).clone(),
            },
            id: format!(
                "{}-{}",
                self.last_applied.map_or(0, |l| l.index),
                self.counter
            ),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.restore(&data)?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        *lock(&self.replica.last_applied) = meta.last_log_id.map_or(0, |l| l.index);
        *lock(&self.replica.snapshot_installed) = true;
        lock(&self.disk).snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(lock(&self.disk)
            .snapshot
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

/// openraft's network: every RPC goes through `Net`, which delays, drops or cuts it.
pub struct NetworkFactory {
    pub net: Net,
    pub me: u64,
}

impl RaftNetworkFactory<SimTypes> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, _node: &openraft::EmptyNode) -> PeerNetwork {
        PeerNetwork {
            net: self.net.clone(),
            from: self.me,
            to: target,
        }
    }
}

pub struct PeerNetwork {
    net: Net,
    from: u64,
    to: u64,
}

/// How long a sender waits for an answer that never comes (a lost message or a cut link).
pub const RPC_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimNetError(pub String);

fn net_error<E: std::error::Error>(why: String) -> RPCError<u64, openraft::EmptyNode, E> {
    // Never `Unreachable`: openraft's back-off after it uses an unseeded `select!`.
    RPCError::Network(NetworkError::new(&SimNetError(why)))
}

impl RaftNetwork<SimTypes> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimTypes>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, openraft::EmptyNode, RaftError<u64>>>
    {
        let to = self.to;
        match self
            .net
            .rpc(self.from, to, move |raft| async move {
                raft.append_entries(rpc).await
            })
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(to, e))),
            Err(why) => Err(net_error(why)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimTypes>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, openraft::EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let to = self.to;
        match self
            .net
            .rpc(self.from, to, move |raft| async move {
                raft.install_snapshot(rpc).await
            })
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(to, e))),
            Err(why) => Err(net_error(why)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, openraft::EmptyNode, RaftError<u64>>> {
        let to = self.to;
        match self
            .net
            .rpc(
                self.from,
                to,
                move |raft| async move { raft.vote(rpc).await },
            )
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(to, e))),
            Err(why) => Err(net_error(why)),
        }
    }
}
