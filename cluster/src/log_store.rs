//! `LogStore`: openraft's log storage (`RaftLogStorage` + `RaftLogReader`) on `storage::Db`.
//!
//! Every mutation goes through a synced RocksDB write, and `append` fires openraft's
//! `LogFlushed` callback only after that write returned: an entry is acknowledged only when
//! it survives a crash (DESIGN.md, "flush the WAL before acknowledging an append or a vote").

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError,
};
use storage::Db;

use crate::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The Raft log of one node. Cheap to clone: clones share the database (the clone handed out
/// by `get_log_reader` reads the same log).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Db>,
}

fn io_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: storage::StorageError,
) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

impl LogStore {
    pub fn new(db: Arc<Db>) -> LogStore {
        LogStore { db }
    }

    /// True when this node has never voted nor stored a log entry or snapshot: a brand new
    /// member, allowed to initialize the cluster.
    pub fn is_fresh(&self) -> Result<bool, storage::StorageError> {
        Ok(self.db.get_meta(KEY_VOTE)?.is_none()
            && self.db.last_log()?.is_none()
            && self.db.get_meta(KEY_LAST_PURGED)?.is_none()
            && self.db.get_snapshot_meta()?.is_none()
            && self.db.get_legacy_snapshot()?.is_none())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, RaftStorageError> {
        self.db
            .get_meta_json(key)
            .map_err(|e| io_error(subject, ErrorVerb::Read, e))
    }

    fn decode(index: u64, bytes: &[u8]) -> Result<Entry, RaftStorageError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)).into())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, RaftStorageError> {
        let last = self
            .db
            .last_log()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match last {
            None => Ok(None),
            Some((index, bytes)) => Ok(Some(*Self::decode(index, &bytes)?.get_log_id())),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let raw = self
            .db
            .read_logs(start, end)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter()
            .map(|(index, bytes)| Self::decode(*index, bytes))
            .collect()
    }

    /// What one AppendEntries carries: openraft gives each message one heartbeat interval, so
    /// a follower that fell behind must be sent its backlog in pieces it can take within that
    /// time. Sent whole (up to 300 entries of hundreds of checkpoints each), every attempt
    /// timed out and was retried from the start: the follower never caught up, lost its
    /// lease and was declared down (docs/PERFORMANCE.md).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let raw = self
            .db
            .read_logs_upto(
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
                MAX_APPEND_BYTES,
            )
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter()
            .map(|(index, bytes)| Self::decode(*index, bytes))
            .collect()
    }
}

/// Most bytes of stored entries in one AppendEntries (one entry larger than this goes alone).
pub const MAX_APPEND_BYTES: usize = 512 * 1024;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> =
            self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.db
            .put_meta_json(KEY_VOTE, vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        self.db
            .put_meta_json(KEY_COMMITTED, &committed)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| {
                RaftStorageError::from(StorageIOError::write_log_entry(
                    *entry.get_log_id(),
                    AnyError::new(&e),
                ))
            })?;
            encoded.push((entry.get_log_id().index, bytes));
        }
        // `append_logs` returns only after the WAL is synced; only then may openraft count
        // these entries as durable.
        match self.db.append_logs(encoded) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        tracing::debug!(index = log_id.index, "truncating the raft log");
        self.db
            .delete_logs_from(log_id.index)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        tracing::debug!(index = log_id.index, "purging the raft log");
        let value = serde_json::to_vec(&log_id)
            .map_err(|e| RaftStorageError::from(StorageIOError::write_logs(AnyError::new(&e))))?;
        self.db
            .purge_logs_upto(log_id.index, KEY_LAST_PURGED, &value)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
