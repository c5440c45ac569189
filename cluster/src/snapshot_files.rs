//! A snapshot's data as a file, next to the Raft database.
//!
//! A snapshot is the whole replicated state: tens of megabytes of JSON at 20,000 calls. Kept
//! as a RocksDB value it was in memory three times while it was written (the encoded JSON,
//! the write batch, the memtable), and the node's memory per call showed it
//! (docs/PERFORMANCE.md, "Memory per call"). As a file it is encoded straight to disk, and
//! openraft reads it in chunks to send it to a follower.
//!
//! Layout, in the directory `snapshots` of the database's directory (so a DR lineage change,
//! which moves the database aside, moves its snapshots too):
//! - `<id>.json`: the data of the snapshot whose meta (in the database) has that id; only
//!   the current one is kept.
//! - `<n>.part`: a snapshot being written or received. It becomes `<id>.json` by a rename
//!   once it is complete and synced, so a crash leaves either the old snapshot or the new
//!   one, never half of one; part files left by a crash are removed when the store opens.
//!
//! The meta is written to the database after the rename, and names the file, so the meta
//! never points at a file that is not complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory, inside the database's.
pub const SNAPSHOT_DIR: &str = "snapshots";
const DATA_SUFFIX: &str = "json";
const PART_SUFFIX: &str = "part";
/// Encoding writes through a buffer of this size: large enough that the file is written in
/// few system calls, small beside a snapshot.
const WRITE_BUFFER: usize = 1024 * 1024;

/// The snapshot files of one node.
#[derive(Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
    next_part: AtomicU64,
}

impl SnapshotFiles {
    /// Opens the snapshot directory in `db_dir`, creating it, and removes the part files an
    /// interrupted write left.
    pub fn open(db_dir: &Path) -> io::Result<SnapshotFiles> {
        let dir = db_dir.join(SNAPSHOT_DIR);
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            // The directory's entry must be durable before a meta names a file in it.
            File::open(db_dir)?.sync_all()?;
        }
        let files = SnapshotFiles {
            dir,
            next_part: AtomicU64::new(0),
        };
        for path in files.with_suffix(PART_SUFFIX)? {
            tracing::info!(path = %path.display(), "removing an unfinished snapshot");
            fs::remove_file(&path)?;
        }
        Ok(files)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the data of snapshot `snapshot_id` is kept. The id comes from the leader, so it
    /// is used as a file name only if it is a plain one (ours and openraft's are:
    /// `term-index-counter`); otherwise a `~` (which no plain name holds) and a hash of it.
    pub fn data_path(&self, snapshot_id: &str) -> PathBuf {
        let plain = !snapshot_id.is_empty()
            && snapshot_id.len() <= 128
            && snapshot_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let name = if plain {
            snapshot_id.to_string()
        } else {
            format!("~{:016x}", fnv1a(snapshot_id.as_bytes()))
        };
        self.dir.join(format!("{name}.{DATA_SUFFIX}"))
    }

    /// A new, empty part file, open for reading and writing.
    pub fn new_part(&self) -> io::Result<(PathBuf, File)> {
        loop {
            let n = self.next_part.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{n}.{PART_SUFFIX}"));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                // Left by an earlier process that this one's counter has not passed yet.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes a part file with `write`, synced, and returns it positioned at its start.
    /// On an error the part file is removed.
    pub fn write_part(
        &self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<(PathBuf, File)> {
        let (path, file) = self.new_part()?;
        let written = (|| {
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, &file);
            write(&mut out)?;
            out.flush()?;
            drop(out);
            file.sync_all()?;
            (&file).seek(SeekFrom::Start(0))?;
            Ok(())
        })();
        match written {
            Ok(()) => Ok((path, file)),
            Err(e) => {
                self.discard(&path);
                Err(e)
            }
        }
    }

    /// Makes a complete part file the data of snapshot `snapshot_id`: a rename, made durable
    /// by syncing the directory.
    pub fn publish(&self, part: &Path, snapshot_id: &str) -> io::Result<()> {
        fs::rename(part, self.data_path(snapshot_id))?;
        File::open(&self.dir)?.sync_all()
    }

    /// The data of snapshot `snapshot_id`, open for reading; `None` if there is no such file.
    pub fn open_data(&self, snapshot_id: &str) -> io::Result<Option<File>> {
        match File::open(self.data_path(snapshot_id)) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The data of snapshot `snapshot_id`, read whole; `None` if there is no such file.
    pub fn read_data(&self, snapshot_id: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(mut file) = self.open_data(snapshot_id)? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(Some(data))
    }

    /// Removes every snapshot's data but `snapshot_id`'s (all of them for `None`). Part
    /// files are left alone: one may be a snapshot being built or received right now.
    pub fn remove_except(&self, snapshot_id: Option<&str>) {
        let keep = snapshot_id.map(|id| self.data_path(id));
        let stale = match self.with_suffix(DATA_SUFFIX) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list snapshots");
                return;
            }
        };
        for path in stale.into_iter().filter(|p| Some(p) != keep.as_ref()) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot");
            }
        }
    }

    /// Removes a part file that will not be published.
    pub fn discard(&self, part: &Path) {
        if let Err(e) = fs::remove_file(part) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %part.display(), error = %e, "cannot remove a snapshot part");
            }
        }
    }

    fn with_suffix(&self, suffix: &str) -> io::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == suffix) {
                paths.push(path);
            }
        }
        Ok(paths)
    }
}

/// FNV-1a, 64 bits: a file name for an id that cannot be one. Written here because the name
/// must not change between builds (std's hasher may) and a cryptographic hash would be a
/// dependency for a file name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
