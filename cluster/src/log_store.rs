//! `LogStore`: openraft's log storage (`RaftLogStorage` + `RaftLogReader`) on `storage::Db`.
//!
//! Every mutation goes through a synced RocksDB write, and `append` fires openraft's
//! `LogFlushed` callback only after that write returned: an entry is acknowledged only when
//! it survives a crash (DESIGN.md, "flush the WAL before acknowledging an append or a vote").
//!
//! The entries appended last are also kept in memory, decoded and with their stored bytes
//! (`Recent`, up to `RECENT_BYTES` of those bytes). openraft reads each entry back right after
//! appending it: on every node to apply it, and on the leader once per follower to replicate
//! it. Decoding those reads from RocksDB was most of the leader's CPU under load
//! (docs/PERFORMANCE.md, "Raft"); a kept entry costs a clone of its `Arc`ed command, and an
//! AppendEntries copies its stored bytes (`EncodedEntries`, `network::message`).
//!
//! So the leader applies the commands it appended as they are, and the followers as decoded
//! from JSON: a `Command` must survive a JSON round trip unchanged (no skipped or lossy
//! fields; model's `every_sample_command_round_trips_through_json` checks it).

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError,
};
use storage::{Db, Durability};

use crate::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The Raft log of one node. Cheap to clone: clones share the database and the recent
/// entries (the clone handed out by `get_log_reader` reads the same log).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Db>,
    recent: EncodedEntries,
}

/// Most bytes (of their stored encoding) of recent entries kept decoded: about half a second
/// of the log at the raft bench's saturation, so that the reads that follow an append find
/// their entries here.
pub const RECENT_BYTES: usize = 16 * 1024 * 1024;

/// The last appended entries, a contiguous run of indexes, each with its stored encoding. It
/// mirrors the stored log's tail: appends, truncations and purges apply to both.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    entries: VecDeque<(Entry, Arc<[u8]>)>,
    bytes: usize,
}

/// The recent entries' encodings, for the transport: an AppendEntries carries entries as
/// they are stored (`network::client`), so the leader encodes each entry once, not once per
/// follower. Shared with the log store it comes from.
#[derive(Clone, Debug, Default)]
pub struct EncodedEntries(Arc<Mutex<Recent>>);

impl EncodedEntries {
    /// Keeps entries just appended, with their stored encodings.
    pub(crate) fn keep(&self, appended: Vec<(Entry, Arc<[u8]>)>) {
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (entry, encoded) in appended {
            recent.push(entry, encoded);
        }
    }

    /// The stored encoding of each entry, if every one is kept (same log id, not just the
    /// same index).
    pub fn of(&self, entries: &[Entry]) -> Option<Vec<Arc<[u8]>>> {
        let recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first = recent.entries.front()?.0.get_log_id().index;
        entries
            .iter()
            .map(|entry| {
                let at = entry.get_log_id().index.checked_sub(first)?;
                let (kept, bytes) = recent.entries.get(usize::try_from(at).ok()?)?;
                (kept.get_log_id() == entry.get_log_id()).then(|| Arc::clone(bytes))
            })
            .collect()
    }
}

impl Recent {
    fn push(&mut self, entry: Entry, encoded: Arc<[u8]>) {
        let size = encoded.len();
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.get_log_id().index + 1 == entry.get_log_id().index);
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push_back((entry, encoded));
        while self.bytes > RECENT_BYTES && self.entries.len() > 1 {
            self.purge(self.entries[0].0.get_log_id().index);
        }
    }

    /// Forgets entries from index `from` on.
    fn truncate(&mut self, from: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.get_log_id().index >= from)
        {
            if let Some((_, encoded)) = self.entries.pop_back() {
                self.bytes -= encoded.len();
            }
        }
    }

    /// Forgets entries up to index `upto`.
    fn purge(&mut self, upto: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.get_log_id().index <= upto)
        {
            if let Some((_, encoded)) = self.entries.pop_front() {
                self.bytes -= encoded.len();
            }
        }
    }

    /// Entries `start..end` as the database would give them, within `max_bytes` of encoding
    /// (never overshot, never empty), if every one of them is kept here; else None.
    fn get(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.get_log_id().index;
        let last = self.entries.back()?.0.get_log_id().index;
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (entry, encoded) in self
            .entries
            .range((start - first) as usize..(end - first) as usize)
        {
            if !out.is_empty() && bytes + encoded.len() > max_bytes {
                break;
            }
            bytes += encoded.len();
            out.push(entry.clone());
        }
        Some(out)
    }
}

/// `range` as `start..end`, end excluded; None when it cannot be (an overflow).
fn half_open(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1)?,
        Bound::Excluded(&i) => i,
        Bound::Unbounded => return None,
    };
    Some((start, end))
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
        LogStore {
            db,
            recent: EncodedEntries::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The encodings of the entries this store appended last, for the transport.
    pub fn encoded(&self) -> EncodedEntries {
        self.recent.clone()
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
        if let Some((start, end)) = half_open(&range) {
            if let Some(entries) = self.recent().get(start, end, usize::MAX) {
                return Ok(entries);
            }
        }
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
        if let Some(entries) = self.recent().get(start, end, MAX_APPEND_BYTES) {
            return Ok(entries);
        }
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
            .put_meta_json(KEY_VOTE, vote, Durability::Synced)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    /// Not synced. openraft calls this inline in its core loop at every advance of the commit
    /// index, before it applies, so a synced write here held every node's Raft core for an
    /// fsync per commit, and doubled the fsyncs of a loaded node (docs/PERFORMANCE.md, "Raft:
    /// one fsync per write"). The committed log id is optional in Raft: openraft re-learns it
    /// from the leader. A buffered write is durable from the next synced append on (one WAL,
    /// recovered as a prefix), so a crash can only leave an older committed id than the one
    /// last written, never one ahead of the log: the node then replays less at start and
    /// catches up at the leader's next message, as a lagging follower does.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        self.db
            .put_meta_json(KEY_COMMITTED, &committed, Durability::Buffered)
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
        let mut decoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| {
                RaftStorageError::from(StorageIOError::write_log_entry(
                    *entry.get_log_id(),
                    AnyError::new(&e),
                ))
            })?;
            let bytes: Arc<[u8]> = bytes.into();
            encoded.push((entry.get_log_id().index, Arc::clone(&bytes)));
            decoded.push((entry, bytes));
        }
        // `append_logs` returns only after the WAL is synced; only then may openraft count
        // these entries as durable.
        match self.db.append_logs(encoded) {
            Ok(()) => {
                self.recent.keep(decoded);
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
        self.recent().truncate(log_id.index);
        self.db
            .delete_logs_from(log_id.index)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        tracing::debug!(index = log_id.index, "purging the raft log");
        self.recent().purge(log_id.index);
        let value = serde_json::to_vec(&log_id)
            .map_err(|e| RaftStorageError::from(StorageIOError::write_logs(AnyError::new(&e))))?;
        self.db
            .purge_logs_upto(log_id.index, KEY_LAST_PURGED, &value)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.get_log_id().index).collect())
    }

    fn bytes(size: usize) -> Arc<[u8]> {
        vec![b' '; size].into()
    }

    fn recent(range: std::ops::RangeInclusive<u64>, size: usize) -> Recent {
        let mut recent = Recent::default();
        for i in range {
            recent.push(entry(i), bytes(size));
        }
        recent
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let r = recent(5..=9, 10);
        assert_eq!(indexes(r.get(5, 10, usize::MAX)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(7, 9, usize::MAX)), Some(vec![7, 8]));
        assert_eq!(
            r.get(4, 8, usize::MAX),
            None,
            "index 4 is only in the database"
        );
        assert_eq!(
            r.get(8, 11, usize::MAX),
            None,
            "index 10 does not exist here"
        );
        assert_eq!(r.get(8, 8, usize::MAX), None);
        assert_eq!(Recent::default().get(0, 1, usize::MAX), None);
    }

    #[test]
    fn keeps_the_byte_budget_of_a_limited_read() {
        let r = recent(1..=6, 100);
        assert_eq!(
            indexes(r.get(1, 7, 250)),
            Some(vec![1, 2]),
            "never overshot"
        );
        assert_eq!(indexes(r.get(3, 7, 50)), Some(vec![3]), "never empty");
    }

    #[test]
    fn follows_truncation_purge_and_gaps() {
        let mut r = recent(1..=6, 10);
        r.truncate(4);
        assert_eq!(indexes(r.get(1, 4, usize::MAX)), Some(vec![1, 2, 3]));
        assert_eq!(r.get(1, 5, usize::MAX), None, "4 was truncated");
        r.push(entry(4), bytes(10));
        assert_eq!(indexes(r.get(3, 5, usize::MAX)), Some(vec![3, 4]));
        r.purge(2);
        assert_eq!(r.get(2, 4, usize::MAX), None, "2 was purged");
        assert_eq!(r.bytes, 20);
        r.push(entry(9), bytes(10));
        assert_eq!(r.get(3, 5, usize::MAX), None, "a gap starts the run anew");
        assert_eq!(indexes(r.get(9, 10, usize::MAX)), Some(vec![9]));
        assert_eq!(r.bytes, 10);
    }

    #[test]
    fn forgets_the_oldest_past_its_bound() {
        let size = RECENT_BYTES / 4;
        let r = recent(1..=6, size);
        assert_eq!(r.bytes, 4 * size);
        assert_eq!(indexes(r.get(3, 7, usize::MAX)), Some(vec![3, 4, 5, 6]));
        assert_eq!(r.get(2, 7, usize::MAX), None);
        let huge = recent(1..=2, RECENT_BYTES + 1);
        assert_eq!(
            indexes(huge.get(2, 3, usize::MAX)),
            Some(vec![2]),
            "the last entry is kept however large"
        );
    }

    #[test]
    fn hands_out_encodings_only_of_the_same_entries() {
        let encoded = EncodedEntries::default();
        {
            let mut r = encoded.0.lock().unwrap();
            for i in 3..=5 {
                r.push(entry(i), format!("{{\"e\":{i}}}").into_bytes().into());
            }
        }
        let got = encoded.of(&[entry(4), entry(5)]).expect("both kept");
        assert_eq!(&*got[0], b"{\"e\":4}");
        assert_eq!(&*got[1], b"{\"e\":5}");
        assert!(encoded.of(&[entry(2)]).is_none(), "before the kept run");
        assert!(encoded.of(&[entry(5), entry(6)]).is_none(), "past it");
        let other_term = Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), 4),
            payload: openraft::EntryPayload::Blank,
        };
        assert!(
            encoded.of(&[other_term]).is_none(),
            "same index, another entry"
        );
        assert_eq!(encoded.of(&[]), Some(vec![]));
    }

    #[test]
    fn ranges_become_half_open() {
        assert_eq!(half_open(&(3..7)), Some((3, 7)));
        assert_eq!(half_open(&(3..=7)), Some((3, 8)));
        assert_eq!(half_open(&(..7)), Some((0, 7)));
        assert_eq!(half_open(&(3..)), None);
        assert_eq!(half_open(&(0..=u64::MAX)), None);
    }
}
