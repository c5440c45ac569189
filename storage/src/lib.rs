//! # storage: callgrid's local, durable storage
//!
//! This crate owns the bytes a node keeps on its own disk. Today that is the Raft node's
//! RocksDB database (`Db`), opened at one directory with three column families:
//! - `logs`: Raft log entries, key = big-endian u64 index (so byte order is index order),
//!   value = the entry as JSON;
//! - `meta`: small Raft metadata (vote, committed log id, last purged log id);
//! - `snapshot`: the current state-machine snapshot (meta and data).
//!
//! The crate knows nothing of openraft: it stores encoded bytes (plus small JSON helpers), and
//! the `cluster` crate maps openraft's types onto it.
//!
//! Call order: `Db::open(dir)` once per process and directory (RocksDB locks the directory),
//! share it behind an `Arc`, drop every clone before opening the directory again.
//!
//! Invariants:
//! - Every write is synced (`Durability::Synced`, WAL fsynced) before the method returns, so a
//!   caller may acknowledge an append or a vote as soon as `Ok` comes back: nothing
//!   acknowledged is lost in a crash. The one exception is a metadata value its caller asks
//!   to be `Buffered` (the committed log id): it is durable from the next synced write on,
//!   since all column families share one WAL and RocksDB recovers a prefix of it.
//! - A purge deletes logs and records the last purged log id in one atomic batch.

mod db;
mod error;

pub use db::{log_key, write_options, Db, Durability, CF_LOGS, CF_META, CF_SNAPSHOT};
pub use error::StorageError;

#[cfg(test)]
mod tests;
