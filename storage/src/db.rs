//! `Db`: one RocksDB instance with the column families the Raft node needs.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StorageError;

/// Column family of Raft log entries: key = big-endian u64 index, value = the JSON entry.
pub const CF_LOGS: &str = "logs";
/// Column family of small Raft metadata: vote, committed log id, last purged log id.
pub const CF_META: &str = "meta";
/// Column family holding the current snapshot (meta + data).
pub const CF_SNAPSHOT: &str = "snapshot";
/// Keys of the snapshot column family.
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";
/// Before meta and data were split, one JSON document under this key held both.
const SNAPSHOT_LEGACY: &str = "current";

const COLUMN_FAMILIES: [&str; 3] = [CF_LOGS, CF_META, CF_SNAPSHOT];
/// The snapshot column family's memtable, in bytes (see `Db::open`).
const SNAPSHOT_WRITE_BUFFER: usize = 256 * 1024;
/// The log column family's memtable, in bytes, and how many may exist at once (see
/// `Db::open`).
const LOG_WRITE_BUFFER: usize = 16 * 1024 * 1024;
const LOG_WRITE_BUFFERS: i32 = 4;

/// Whether a write must reach the disk before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The WAL is fsynced before the write returns: required for log appends, truncation,
    /// votes and anything else openraft must find again after a crash.
    Synced,
    /// The write may sit in the OS page cache; fine for data that can be rebuilt.
    Buffered,
}

/// The RocksDB write options for a durability level. Every write in this crate goes through
/// here, so a test of this function is a test of what the append path does.
pub fn write_options(durability: Durability) -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(durability == Durability::Synced);
    options
}

/// The key of log entry `index`: big-endian, so RocksDB's byte order is index order.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn parse_log_key(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::BadLogKey { len: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

/// A RocksDB database with the `logs`, `meta` and `snapshot` column families.
///
/// All methods are synchronous and short; callers on an async runtime accept the fsync latency
/// of a synced write (a few milliseconds) as the price of durability.
pub struct Db {
    db: DB,
    options: Options,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Db, StorageError> {
        let path = dir.as_ref().to_path_buf();
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Statistics let tests (and operators) see that appends really sync the WAL.
        options.enable_statistics();
        let descriptors = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_options = Options::default();
            if *name == CF_SNAPSHOT {
                // Only a snapshot's meta is written here now (its data is a file), but a
                // store from an older version holds its whole state here, in one value of
                // megabytes. A memtable sized for the log would keep that value in memory
                // until a flush; a small one is flushed at the next write. Room for a few of
                // them, so that this column family never stalls the Raft log's writes.
                cf_options.set_write_buffer_size(SNAPSHOT_WRITE_BUFFER);
                cf_options.set_max_write_buffer_number(4);
            }
            if *name == CF_LOGS {
                // Every entry appended stays in the memtable until it is flushed, whether or
                // not a snapshot has since purged it: with RocksDB's default (64 MiB) that is
                // the last 64 MiB of the log in memory, 12 of a node's 88 KiB of growth per
                // call at 1,000 calls (docs/PERFORMANCE.md, "Memory per call"). Smaller memtables
                // flush more often, the same bytes in all; four of them, so a burst of
                // appends faster than a flush does not stall the log, at most the default's
                // 128 MiB.
                cf_options.set_write_buffer_size(LOG_WRITE_BUFFER);
                cf_options.set_max_write_buffer_number(LOG_WRITE_BUFFERS);
            }
            ColumnFamilyDescriptor::new(*name, cf_options)
        });
        let db = DB::open_cf_descriptors(&options, &path, descriptors).map_err(|source| {
            StorageError::Open {
                path: path.clone(),
                source,
            }
        })?;
        let this = Db { db, options, path };
        for name in COLUMN_FAMILIES {
            this.cf(name)?;
        }
        Ok(this)
    }

    /// The directory this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::MissingColumnFamily {
                path: self.path.clone(),
                name,
            })
    }

    fn write(&self, batch: WriteBatch, what: &'static str) -> Result<(), StorageError> {
        self.write_with(batch, what, Durability::Synced)
    }

    fn write_with(
        &self,
        batch: WriteBatch,
        what: &'static str,
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.db
            .write_opt(batch, &write_options(durability))
            .map_err(|source| StorageError::Write { what, source })
    }

    /// Appends (or overwrites) log entries, already encoded, in one synced batch: when this
    /// returns `Ok`, every entry survives a crash.
    pub fn append_logs<I, V>(&self, entries: I) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = (u64, V)>,
        V: AsRef<[u8]>,
    {
        let cf = self.cf(CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for (index, value) in entries {
            batch.put_cf(cf, log_key(index), value);
        }
        self.write(batch, "log entries")
    }

    /// Log entries with index in `(start, end)`, in index order.
    pub fn read_logs(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.read_logs_upto(start, end, usize::MAX)
    }

    /// Like `read_logs`, but stops once the entries read hold `max_bytes` (always at least
    /// one entry when the range has one): what one replication message may carry.
    pub fn read_logs_upto(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let first = match start {
            Bound::Included(i) => i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let cf = self.cf(CF_LOGS)?;
        let key = log_key(first);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&key, Direction::Forward))
        {
            let (key, value) = item.map_err(|source| StorageError::Read {
                what: "log entries",
                source,
            })?;
            let index = parse_log_key(&key)?;
            let past_end = match end {
                Bound::Included(e) => index > e,
                Bound::Excluded(e) => index >= e,
                Bound::Unbounded => false,
            };
            if past_end || (!out.is_empty() && bytes + value.len() > max_bytes) {
                break;
            }
            bytes += value.len();
            out.push((index, value.into_vec()));
        }
        Ok(out)
    }

    /// The entry with the highest index, if any.
    pub fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let cf = self.cf(CF_LOGS)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(|source| StorageError::Read {
                    what: "last log entry",
                    source,
                })?;
                Ok(Some((parse_log_key(&key)?, value.into_vec())))
            }
        }
    }

    /// Deletes every entry with index >= `from` (conflict truncation), synced.
    pub fn delete_logs_from(&self, from: u64) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOGS)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, log_key(from), log_key(u64::MAX));
        batch.delete_cf(cf, log_key(u64::MAX));
        self.write(batch, "log truncation")
    }

    /// Deletes every entry with index <= `upto` and records `meta_key = meta_value` in the same
    /// atomic, synced batch (the last purged log id must never lag the deletion).
    pub fn purge_logs_upto(
        &self,
        upto: u64,
        meta_key: &str,
        meta_value: &[u8],
    ) -> Result<(), StorageError> {
        let logs = self.cf(CF_LOGS)?;
        let meta = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, meta_key, meta_value);
        batch.delete_range_cf(logs, log_key(0), log_key(upto));
        batch.delete_cf(logs, log_key(upto));
        self.write(batch, "log purge")
    }

    /// Stores a metadata value. A `Buffered` one is not synced itself, but it is in the one
    /// WAL every column family shares, and RocksDB recovers a prefix of that WAL: it survives
    /// any crash that the next synced write (say, the next log append) survives.
    pub fn put_meta(
        &self,
        key: &str,
        value: &[u8],
        durability: Durability,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, key, value);
        self.write_with(batch, "raft metadata", durability)
    }

    /// Reads a metadata value.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(CF_META)?, key)
            .map_err(|source| StorageError::Read {
                what: "raft metadata",
                source,
            })
    }

    /// Replaces the stored snapshot's meta, synced. Its data lives in a file the caller
    /// wrote before (`cluster::snapshot_files`); the data an older version kept in this
    /// column family is removed in the same write.
    pub fn put_snapshot_meta(&self, meta: &[u8]) -> Result<(), StorageError> {
        let cf = self.cf(CF_SNAPSHOT)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, SNAPSHOT_LEGACY);
        batch.delete_cf(cf, SNAPSHOT_DATA);
        batch.put_cf(cf, SNAPSHOT_META, meta);
        self.write(batch, "snapshot")
    }

    /// Stores a snapshot as the previous version did, meta and data (the state, megabytes)
    /// as two keys written together, synced. Only for tests of an upgrade in place: a
    /// running node stores its snapshots with `put_snapshot_meta`.
    pub fn put_snapshot(&self, meta: &[u8], data: &[u8]) -> Result<(), StorageError> {
        let cf = self.cf(CF_SNAPSHOT)?;
        let mut batch = WriteBatch::default();
        // The small records first: the batch's buffer then grows once, to fit the data,
        // instead of doubling (a second copy of the snapshot) for a record after it.
        batch.delete_cf(cf, SNAPSHOT_LEGACY);
        batch.put_cf(cf, SNAPSHOT_META, meta);
        batch.put_cf(cf, SNAPSHOT_DATA, data);
        self.write(batch, "snapshot")
    }

    /// The stored snapshot's meta, if any.
    pub fn get_snapshot_meta(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_snapshot_key(SNAPSHOT_META)
    }

    /// The snapshot data a previous version stored here, if any.
    pub fn get_snapshot_data(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_snapshot_key(SNAPSHOT_DATA)
    }

    /// A snapshot stored by an older version, as one document holding meta and data; read
    /// only (the next snapshot replaces it).
    pub fn get_legacy_snapshot(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_snapshot_key(SNAPSHOT_LEGACY)
    }

    fn get_snapshot_key(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(CF_SNAPSHOT)?, key)
            .map_err(|source| StorageError::Read {
                what: "snapshot",
                source,
            })
    }

    /// JSON helper: stores `value` under a metadata key (see `put_meta`).
    pub fn put_meta_json<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|source| StorageError::Encode { what: key, source })?;
        self.put_meta(key, &bytes, durability)
    }

    /// JSON helper: reads a metadata key.
    pub fn get_meta_json<T: DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        match self.get_meta(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StorageError::Decode { what: key, source }),
        }
    }

    /// How many times RocksDB has synced its WAL since this database was opened (the
    /// `rocksdb.wal.synced` ticker), or `None` if statistics are unavailable.
    pub fn wal_syncs(&self) -> Option<u64> {
        let stats = self.options.get_statistics()?;
        stats.lines().find_map(|line| {
            let rest = line.strip_prefix("rocksdb.wal.synced COUNT : ")?;
            rest.trim().parse().ok()
        })
    }
}
