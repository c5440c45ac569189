//! The storage crate's one error type.

use std::path::PathBuf;

/// What went wrong in local storage, and what we were doing when it did. Every variant is a
/// local fault (disk, corruption, a bug), never the peer's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("opening RocksDB at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error(
        "RocksDB at {path} lacks column family {name:?} (created by an older or foreign program?)"
    )]
    MissingColumnFamily { path: PathBuf, name: &'static str },
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: rocksdb::Error,
    },
    #[error("writing {what}: {source}")]
    Write {
        what: &'static str,
        source: rocksdb::Error,
    },
    #[error("decoding {what} (corrupt or written by an incompatible version): {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("log key of {len} bytes is not a big-endian u64 (corrupt logs column family)")]
    BadLogKey { len: usize },
}
