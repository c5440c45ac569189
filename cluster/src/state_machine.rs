//! `StateMachineStore`: openraft's state machine over `model::ReplicatedState`.
//!
//! The state lives in memory behind an `Arc<RwLock>` shared with local readers; it is made
//! durable by snapshots plus the Raft log: on open the store restores the last snapshot and
//! openraft re-applies the committed entries after it.
//! A snapshot is megabytes of JSON (every call's checkpoint): encoding, decoding and writing
//! it run on the blocking pool, never on the runtime's workers, which also carry Raft's
//! heartbeats (a node stalled for a second by a snapshot looks dead, docs/PERFORMANCE.md).
//! The snapshot's meta is in the database (the `snapshot` column family), its data in a file
//! (`snapshot_files`), encoded straight to disk and sent to followers in chunks from there.
//! Applying is pure (`ReplicatedState::apply`), so every replica computes the same state.

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};
use storage::Db;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::snapshot_files::SnapshotFiles;
use crate::types::{
    Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};

/// Capacity of the applied-command channel; a subscriber that falls further behind lags
/// (sees `RecvError::Lagged`) instead of slowing down the state machine.
pub const APPLIED_CHANNEL_CAPACITY: usize = 4096;

/// One normal entry this node has applied, in log order; or a snapshot installed from the
/// leader (`snapshot`, with an empty `Batch` as command), which replaced the state without
/// per-command events: subscribers must re-read the state. The command is shared: the
/// channel hands every subscriber its own `Applied`, and a batch of hundreds of checkpoints
/// cloned per subscriber was a tenth of a follower's CPU under load (docs/PERFORMANCE.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub command: Arc<model::Command>,
    pub snapshot: bool,
}

/// What a snapshot's data holds (JSON).
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: model::ReplicatedState,
}

/// What the `snapshot` column family held before meta and data were split (one JSON
/// document); still read, so a node upgraded in place restores its last snapshot (and moves
/// it to a file).
#[derive(Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The replicated state machine of one node.
pub struct StateMachineStore {
    db: Arc<Db>,
    files: Arc<SnapshotFiles>,
    /// The part file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
    state: Arc<RwLock<model::ReplicatedState>>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    applied_tx: broadcast::Sender<Applied>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_counter: u64,
    /// Held while a snapshot is compared with the stored one and written, and while the
    /// current one is opened: openraft builds in a task of its own, so a build and an
    /// install may write at the same time, an older build must not overwrite a newer
    /// installed snapshot, and a reader must not open a file being replaced.
    snapshot_write: Arc<std::sync::Mutex<()>>,
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
        let files = Arc::new(SnapshotFiles::open(db.path()).map_err(read_error)?);
        let (applied_tx, _) = broadcast::channel(APPLIED_CHANNEL_CAPACITY);
        let mut store = StateMachineStore {
            db,
            files,
            receiving: None,
            state: Arc::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            applied_tx,
            snapshot_counter: 0,
            snapshot_write: Arc::default(),
        };
        let stored = stored_snapshot(&store.db, &store.files)?;
        // Files no meta names: written before a crash let the meta name them.
        store
            .files
            .remove_except(stored.as_ref().map(|(meta, _)| meta.snapshot_id.as_str()));
        if let Some((_, data)) = stored {
            store.restore(decode_body(&data)?);
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

    /// Replaces the state with a snapshot's data.
    fn restore(&mut self, body: SnapshotBody) {
        self.last_applied = body.last_applied;
        self.last_membership = body.membership;
        let old = std::mem::replace(
            &mut *self
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            body.state,
        );
        // Freeing megabytes of replaced state is work too: off the runtime when there is one.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(old))),
            Err(_) => drop(old),
        }
    }
}

/// The stored snapshot's meta and data, if any. A snapshot an older version stored in the
/// database is moved to a file here, once.
fn stored_snapshot(
    db: &Db,
    files: &SnapshotFiles,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, RaftStorageError> {
    let legacy = match stored_meta(db)? {
        Some(meta) => {
            if let Some(data) = files.read_data(&meta.snapshot_id).map_err(read_error)? {
                return Ok(Some((meta, data)));
            }
            match db.get_snapshot_data().map_err(read_error)? {
                Some(data) => (meta, data),
                None => return Err(missing_data(files, &meta)),
            }
        }
        None => match db.get_legacy_snapshot().map_err(read_error)? {
            Some(bytes) => {
                let legacy: LegacySnapshot = serde_json::from_slice(&bytes).map_err(read_error)?;
                (legacy.meta, legacy.data)
            }
            None => return Ok(None),
        },
    };
    let (meta, data) = legacy;
    let (part, _) = files
        .write_part(|out| out.write_all(&data))
        .map_err(write_error)?;
    persist(db, files, &meta, &part)?;
    tracing::info!(snapshot_id = %meta.snapshot_id, "moved the stored snapshot to a file");
    Ok(Some((meta, data)))
}

/// The error of a meta whose data file is gone: never read as an empty state.
fn missing_data(files: &SnapshotFiles, meta: &SnapshotMeta) -> RaftStorageError {
    read_error(std::io::Error::other(format!(
        "snapshot {} has no data: {} is missing",
        meta.snapshot_id,
        files.data_path(&meta.snapshot_id).display()
    )))
}

/// The stored snapshot's meta alone (a legacy snapshot is decoded whole, once).
fn stored_meta(db: &Db) -> Result<Option<SnapshotMeta>, RaftStorageError> {
    match db.get_snapshot_meta().map_err(read_error)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(read_error),
        None => match db.get_legacy_snapshot().map_err(read_error)? {
            Some(bytes) => serde_json::from_slice::<LegacySnapshot>(&bytes)
                .map(|l| Some(l.meta))
                .map_err(read_error),
            None => Ok(None),
        },
    }
}

fn decode_body(data: &[u8]) -> Result<SnapshotBody, RaftStorageError> {
    serde_json::from_slice(data).map_err(read_error)
}

/// Makes a complete, synced part file the stored snapshot: the file first, then the meta
/// that names it, then the older snapshots' files go. Called with `snapshot_write` held. The
/// part file is removed if it cannot be published.
fn persist(
    db: &Db,
    files: &SnapshotFiles,
    meta: &SnapshotMeta,
    part: &std::path::Path,
) -> Result<(), RaftStorageError> {
    let published = serde_json::to_vec(meta)
        .map_err(std::io::Error::from)
        .and_then(|encoded| files.publish(part, &meta.snapshot_id).map(|()| encoded));
    let encoded = match published {
        Ok(encoded) => encoded,
        Err(e) => {
            files.discard(part);
            return Err(write_error(e));
        }
    };
    db.put_snapshot_meta(&encoded).map_err(write_error)?;
    files.remove_except(Some(&meta.snapshot_id));
    Ok(())
}

/// Runs CPU-heavy snapshot work on the blocking pool.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
) -> Result<T, RaftStorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| write_error(std::io::Error::other(e.to_string())))?
}

/// Runs the encoding of a snapshot on a thread of its own at idle priority (Linux's
/// `SCHED_IDLE`): it gets a core only when the node's workers leave one free. Every node
/// builds its snapshot at the same applied index, so at normal priority three encoders of
/// the whole state take the 2 cores from every node's Raft and calls at once: at 1,000
/// checkpoints/s, over half the commits slower than 10 ms came in those 100 ms
/// (docs/PERFORMANCE.md, "Raft: the latency at a set rate"). Nothing waits for the encoding
/// but the next snapshot and log purging, so it may take longer; the work must hold no
/// lock or resource that others wait for. Where the policy cannot be set, the thread runs
/// at normal priority; if only the nice value cannot be (a niced process may not lower it
/// back to 0), the policy is set and it is not worth a warning.
async fn at_idle_priority<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
) -> Result<T, RaftStorageError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raft-snapshot".into())
        .spawn(move || {
            lower_to_idle_priority();
            let _ = done.send(work());
        })
        .map_err(write_error)?;
    result
        .await
        .map_err(|_| write_error(std::io::Error::other("the snapshot thread died")))?
}

/// Puts the calling thread in Linux's `SCHED_IDLE` class (elsewhere: leaves it be).
#[cfg(target_os = "linux")]
fn lower_to_idle_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        // The crate sets the policy, then the nice value; only the policy matters here.
        if thread_schedule_policy().ok() != Some(idle) {
            tracing::warn!(error = ?e, "snapshot thread keeps normal priority");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_to_idle_priority() {}

/// Builds a snapshot from the state captured when openraft asked for the builder, so applying
/// may continue while the snapshot is encoded and written.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    files: Arc<SnapshotFiles>,
    /// Taken by `build_snapshot` (a builder builds one snapshot).
    body: Option<SnapshotBody>,
    snapshot_id: String,
    snapshot_write: Arc<std::sync::Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let body = self.body.take().ok_or_else(|| {
            write_error(std::io::Error::other(
                "this snapshot builder was already used",
            ))
        })?;
        let meta = SnapshotMeta {
            last_log_id: body.last_applied,
            last_membership: body.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let db = self.db.clone();
        let files = self.files.clone();
        let stored = meta.clone();
        let lock = self.snapshot_write.clone();
        // Only the encoding runs at idle priority: it holds nothing anyone else waits for.
        // Publishing takes the snapshot lock, which applying and installing take too, and
        // writes the meta to the database the Raft log is appended to; a preempted idle
        // thread must not hold either.
        let encoder_files = files.clone();
        let (part, file) = at_idle_priority(move || {
            // Encoded straight into the file: the JSON is never whole in memory.
            let written = encoder_files
                .write_part(|out| serde_json::to_writer(out, &body).map_err(std::io::Error::from))
                .map_err(write_error);
            drop(body);
            written
        })
        .await?;
        let (file, bytes) = off_runtime(move || {
            let _writing = lock.lock().unwrap_or_else(|p| p.into_inner());
            // A snapshot installed from the leader while this one was being built may be
            // newer; never replace it with an older one (the logs before it may be gone).
            let newer_stored = match stored_meta(&db) {
                Ok(current) => {
                    current.is_some_and(|current| current.last_log_id > stored.last_log_id)
                }
                Err(e) => {
                    files.discard(&part);
                    return Err(e);
                }
            };
            let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            if newer_stored {
                // The open file stays readable for the snapshot returned below.
                files.discard(&part);
            } else {
                persist(&db, &files, &stored, &part)?;
            }
            Ok((file, bytes))
        })
        .await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
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
            files: self.files.clone(),
            body: Some(SnapshotBody {
                last_applied: self.last_applied,
                membership: self.last_membership.clone(),
                state,
            }),
            snapshot_id,
            snapshot_write: self.snapshot_write.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        // openraft receives one snapshot at a time: one it gave up on is not coming back.
        if let Some(abandoned) = self.receiving.take() {
            self.files.discard(&abandoned);
        }
        let files = self.files.clone();
        let (path, file) = off_runtime(move || files.new_part().map_err(write_error)).await?;
        self.receiving = Some(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        // openraft wrote the snapshot into the part file `begin_receiving_snapshot` made (it
        // receives one at a time): synced, that file becomes the stored snapshot as it is.
        // It is read back whole to decode the state.
        snapshot.flush().await.map_err(write_error)?;
        snapshot.sync_all().await.map_err(write_error)?;
        snapshot
            .seek(SeekFrom::Start(0))
            .await
            .map_err(read_error)?;
        let mut data = Vec::new();
        snapshot.read_to_end(&mut data).await.map_err(read_error)?;
        drop(snapshot);
        let received = self.receiving.take();
        let db = self.db.clone();
        let files = self.files.clone();
        let stored = meta.clone();
        let lock = self.snapshot_write.clone();
        let body = off_runtime(move || {
            let body = match decode_body(&data) {
                Ok(body) => body,
                Err(e) => {
                    if let Some(received) = &received {
                        files.discard(received);
                    }
                    return Err(e);
                }
            };
            let part = match received {
                Some(part) => part,
                // Not received through `begin_receiving_snapshot`: store the bytes read.
                None => {
                    files
                        .write_part(|out| out.write_all(&data))
                        .map_err(write_error)?
                        .0
                }
            };
            drop(data);
            let _writing = lock.lock().unwrap_or_else(|p| p.into_inner());
            persist(&db, &files, &stored, &part)?;
            Ok(body)
        })
        .await?;
        self.restore(body);
        // The meta openraft hands us is authoritative for what the snapshot covers.
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot from the leader");
        let _ = self.applied_tx.send(Applied {
            index: meta.last_log_id.map(|id| id.index).unwrap_or(0),
            command: Arc::new(model::Command::Batch {
                commands: Vec::new(),
            }),
            snapshot: true,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let db = self.db.clone();
        let files = self.files.clone();
        let lock = self.snapshot_write.clone();
        let current = off_runtime(move || {
            let _writing = lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(meta) = stored_meta(&db)? else {
                return Ok(None);
            };
            match files.open_data(&meta.snapshot_id).map_err(read_error)? {
                Some(file) => Ok(Some((meta, file))),
                None => Err(missing_data(&files, &meta)),
            }
        })
        .await?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use thread_priority::{
        thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };

    #[tokio::test]
    async fn snapshot_work_runs_at_idle_priority_off_the_runtime() {
        let (policy, answer) = at_idle_priority(|| Ok((thread_schedule_policy().ok(), 42)))
            .await
            .expect("the work's result");
        assert_eq!(answer, 42);
        assert_eq!(
            policy,
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            ))
        );
        // The caller's thread keeps its priority.
        assert_ne!(
            thread_schedule_policy().ok(),
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            ))
        );
        // The work's error is the caller's.
        let failed =
            at_idle_priority::<()>(|| Err(write_error(std::io::Error::other("disk full")))).await;
        assert!(failed.is_err_and(|e| e.to_string().contains("disk full")));
    }
}
