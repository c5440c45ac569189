//! `StateMachineStore`: openraft's state machine over `model::ReplicatedState`.
//!
//! The state lives in memory behind an `Arc<RwLock>` shared with local readers; it is made
//! durable by snapshots (the `snapshot` column family) plus the Raft log: on open the store
//! restores the last snapshot and openraft re-applies the committed entries after it.
//! Applying is pure (`ReplicatedState::apply`), so every replica computes the same state.

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};
use storage::Db;
use tokio::sync::broadcast;

use crate::types::{
    Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};

/// Capacity of the applied-command channel; a subscriber that falls further behind lags
/// (sees `RecvError::Lagged`) instead of slowing down the state machine.
pub const APPLIED_CHANNEL_CAPACITY: usize = 4096;

/// One normal entry this node has applied, in log order; or a snapshot installed from the
/// leader (`snapshot`, with an empty `Batch` as command), which replaced the state without
/// per-command events: subscribers must re-read the state.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub command: model::Command,
    pub snapshot: bool,
}

/// What a snapshot's data holds (JSON).
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: model::ReplicatedState,
}

/// What the `snapshot` column family holds (JSON): the meta and the data of the snapshot.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The replicated state machine of one node.
pub struct StateMachineStore {
    db: Arc<Db>,
    state: Arc<RwLock<model::ReplicatedState>>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    applied_tx: broadcast::Sender<Applied>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_counter: u64,
}

fn read_error(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

fn write_error(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the state machine, restoring the persisted snapshot if there is one.
    pub fn open(db: Arc<Db>) -> Result<StateMachineStore, RaftStorageError> {
        let (applied_tx, _) = broadcast::channel(APPLIED_CHANNEL_CAPACITY);
        let mut store = StateMachineStore {
            db,
            state: Arc::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            applied_tx,
            snapshot_counter: 0,
        };
        if let Some(stored) = store.stored_snapshot()? {
            store.restore(&stored.data)?;
            tracing::info!(last_applied = ?store.last_applied, "restored the state machine from its snapshot");
        }
        Ok(store)
    }

    /// The state, shared with readers (they take the read lock briefly).
    pub fn state(&self) -> Arc<RwLock<model::ReplicatedState>> {
        self.state.clone()
    }

    /// The sender of applied commands; `subscribe()` on it to follow the state machine.
    pub fn applied_sender(&self) -> broadcast::Sender<Applied> {
        self.applied_tx.clone()
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, RaftStorageError> {
        match self.db.get_snapshot().map_err(read_error)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(read_error),
        }
    }

    /// Replaces the state with a snapshot's data.
    fn restore(&mut self, data: &[u8]) -> Result<(), RaftStorageError> {
        let body: SnapshotBody = serde_json::from_slice(data).map_err(read_error)?;
        self.last_applied = body.last_applied;
        self.last_membership = body.membership;
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = body.state;
        Ok(())
    }

    fn persist(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), RaftStorageError> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(write_error)?;
        self.db.put_snapshot(&bytes).map_err(write_error)
    }
}

/// Builds a snapshot from the state captured when openraft asked for the builder, so applying
/// may continue while the snapshot is encoded and written.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    body: SnapshotBody,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let data = serde_json::to_vec(&self.body).map_err(write_error)?;
        let meta = SnapshotMeta {
            last_log_id: self.body.last_applied,
            last_membership: self.body.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        // A snapshot installed from the leader while this one was being built may be newer;
        // never replace it with an older one (the logs before it may be gone).
        let newer_stored = match self.db.get_snapshot().map_err(read_error)? {
            Some(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(read_error)?;
                stored.meta.last_log_id > meta.last_log_id
            }
            None => false,
        };
        if !newer_stored {
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            };
            let bytes = serde_json::to_vec(&stored).map_err(write_error)?;
            self.db.put_snapshot(&bytes).map_err(write_error)?;
        }
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<model::Outcome>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            self.last_applied = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(model::Outcome::default()),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(log_id), membership);
                    outcomes.push(model::Outcome::default());
                }
                EntryPayload::Normal(command) => {
                    let outcome = self
                        .state
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .apply(&command);
                    outcomes.push(outcome);
                    // No receivers is fine: nobody is following yet.
                    let _ = self.applied_tx.send(Applied {
                        index: log_id.index,
                        command,
                        snapshot: false,
                    });
                }
            }
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_counter += 1;
        let state = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let snapshot_id = match self.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, self.snapshot_counter
            ),
            None => format!("none-{}", self.snapshot_counter),
        };
        SnapshotBuilder {
            db: self.db.clone(),
            body: SnapshotBody {
                last_applied: self.last_applied,
                membership: self.last_membership.clone(),
                state,
            },
            snapshot_id,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        self.restore(&data)?;
        // The meta openraft hands us is authoritative for what the snapshot covers.
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.persist(meta, &data)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot from the leader");
        let _ = self.applied_tx.send(Applied {
            index: meta.last_log_id.map(|id| id.index).unwrap_or(0),
            command: model::Command::Batch {
                commands: Vec::new(),
            },
            snapshot: true,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        Ok(self.stored_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
