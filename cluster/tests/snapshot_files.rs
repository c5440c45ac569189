//! Snapshots kept as files: built, sent in chunks and installed, restored after a restart,
//! and a snapshot an older version kept in the database moved to a file.

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::sync::Arc;

use cluster::snapshot_files::{SnapshotFiles, SNAPSHOT_DIR};
use cluster::state_machine::StateMachineStore;
use cluster::types::SnapshotMeta;
use cluster::TypeConfig;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn put_call(index: u64) -> Entry<TypeConfig> {
    let id = model::bench::synthetic_id(1, index);
    let checkpoint =
        model::bench::call_checkpoint(&id, model::Fence { node: 1, epoch: 0 }, 1, 1_000 + index);
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Arc::new(model::Command::PutCall {
            checkpoint: Arc::new(checkpoint),
        })),
    }
}

fn open(dir: &Path) -> (Arc<storage::Db>, StateMachineStore) {
    let db = Arc::new(storage::Db::open(dir).expect("open rocksdb"));
    let store = StateMachineStore::open(db.clone()).expect("open the state machine");
    (db, store)
}

/// Builds a snapshot of `calls` calls in a store on `dir`, then closes the store: the
/// snapshot's meta and data.
async fn snapshot_in(dir: &Path, calls: u64) -> (SnapshotMeta, Vec<u8>) {
    let (db, mut store) = open(dir);
    store.apply((1..=calls).map(put_call)).await.unwrap();
    let mut built = store
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut data = Vec::new();
    built.snapshot.read_to_end(&mut data).await.unwrap();
    drop((store, db));
    (built.meta, data)
}

fn calls(store: &StateMachineStore) -> usize {
    store.state().read().unwrap().calls.len()
}

/// The files in the snapshot directory, by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_built_snapshot_is_one_file_and_restores_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut store) = open(dir.path());
    store.apply((1..=3).map(put_call)).await.unwrap();
    let first = store
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    store.apply((4..=5).map(put_call)).await.unwrap();
    let mut second = store
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(second.meta.last_log_id.map(|id| id.index), Some(5));
    // Only the newer snapshot's data is kept.
    assert_eq!(
        listing(dir.path()),
        vec![format!("{}.json", second.meta.snapshot_id)]
    );
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    // The snapshot handed to openraft reads as the file does.
    let mut handed = Vec::new();
    second.snapshot.read_to_end(&mut handed).await.unwrap();
    let path = dir
        .path()
        .join(SNAPSHOT_DIR)
        .join(format!("{}.json", second.meta.snapshot_id));
    assert_eq!(handed, std::fs::read(path).unwrap());
    let current = store.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second.meta);
    drop((store, db));

    let (_db, mut store) = open(dir.path());
    assert_eq!(calls(&store), 5);
    let (last, _) = store.applied_state().await.unwrap();
    assert_eq!(last.map(|id| id.index), Some(5));
}

#[tokio::test]
async fn a_snapshot_received_in_chunks_is_installed_and_kept() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (meta, data) = snapshot_in(leader_dir.path(), 4).await;

    let dir = tempfile::tempdir().unwrap();
    let (db, mut follower) = open(dir.path());
    // A transfer given up half way, then a complete one, as openraft would write them.
    let mut abandoned = follower.begin_receiving_snapshot().await.unwrap();
    abandoned.write_all(&data[..data.len() / 2]).await.unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    for chunk in data.chunks(1000) {
        receiving.write_all(chunk).await.unwrap();
    }
    receiving.shutdown().await.unwrap();
    follower.install_snapshot(&meta, receiving).await.unwrap();
    assert_eq!(calls(&follower), 4);
    assert_eq!(
        listing(dir.path()),
        vec![format!("{}.json", meta.snapshot_id)],
        "the abandoned transfer's part file is gone"
    );
    drop((follower, db));

    let (_db, store) = open(dir.path());
    assert_eq!(calls(&store), 4);
}

#[tokio::test]
async fn a_snapshot_an_older_version_kept_in_the_database_moves_to_a_file() {
    // The data and meta of a snapshot, as the previous version stored them.
    let source = tempfile::tempdir().unwrap();
    let (meta, data) = snapshot_in(source.path(), 2).await;

    let dir = tempfile::tempdir().unwrap();
    {
        let db = storage::Db::open(dir.path()).unwrap();
        db.put_snapshot(&serde_json::to_vec(&meta).unwrap(), &data)
            .unwrap();
    }
    let (db, mut store) = open(dir.path());
    assert_eq!(calls(&store), 2);
    assert_eq!(
        db.get_snapshot_data().unwrap(),
        None,
        "moved out of the database"
    );
    let current = store.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    assert_eq!(
        listing(dir.path()),
        vec![format!("{}.json", meta.snapshot_id)]
    );
}

#[tokio::test]
async fn what_a_crash_left_is_cleared_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, _) = snapshot_in(dir.path(), 2).await;
    // A snapshot written but never named by the meta, and one half written.
    let snapshots = dir.path().join(SNAPSHOT_DIR);
    std::fs::write(snapshots.join("1-9-9.json"), b"{}").unwrap();
    std::fs::write(snapshots.join("7.part"), b"{\"last_app").unwrap();

    let (_db, store) = open(dir.path());
    assert_eq!(calls(&store), 2);
    assert_eq!(
        listing(dir.path()),
        vec![format!("{}.json", meta.snapshot_id)]
    );
}

#[tokio::test]
async fn meta_without_its_file_is_an_error_not_an_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, _) = snapshot_in(dir.path(), 2).await;
    let path = dir
        .path()
        .join(SNAPSHOT_DIR)
        .join(format!("{}.json", meta.snapshot_id));
    std::fs::remove_file(&path).unwrap();

    let db = Arc::new(storage::Db::open(dir.path()).unwrap());
    let err = StateMachineStore::open(db)
        .err()
        .expect("a missing snapshot fails the open");
    assert!(err.to_string().contains("is missing"), "{err}");
}

#[test]
fn a_snapshot_id_is_a_file_name_only_when_it_is_a_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let files = SnapshotFiles::open(dir.path()).unwrap();
    let plain = files.data_path("3-5000-2");
    assert_eq!(plain, files.dir().join("3-5000-2.json"));
    let odd = files.data_path("../x");
    assert_eq!(odd.parent(), Some(files.dir()));
    let name = odd.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with('~') && name.len() == 22, "{name}");
    // A long id gets a short name, and two ids never share one by construction.
    let long = files.data_path(&"9".repeat(300));
    assert!(long.file_name().unwrap().len() < 64);
    assert_ne!(files.data_path("2e2e2f78"), odd);
    assert_ne!(files.data_path("../y"), odd);
}

#[test]
fn a_snapshot_file_no_meta_names_is_removed_even_before_the_first_meta() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join("1-5-1.json"), b"{}").unwrap();
    let (_db, store) = open(dir.path());
    assert_eq!(calls(&store), 0);
    assert!(listing(dir.path()).is_empty());
}
