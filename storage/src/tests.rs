use std::ops::Bound::{Excluded, Included, Unbounded};

use crate::{log_key, Db, Durability, StorageError};

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open");
    (dir, db)
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|i| (i, format!("entry-{i}").into_bytes()))
        .collect()
}

#[test]
fn log_keys_sort_by_index() {
    assert!(log_key(255) < log_key(256));
    assert!(log_key(0) < log_key(u64::MAX));
}

#[test]
fn append_read_and_last() {
    let (_dir, db) = open();
    assert_eq!(db.last_log().unwrap(), None);
    db.append_logs(entries(1..=10)).unwrap();
    assert_eq!(
        db.read_logs(Included(3), Excluded(6)).unwrap(),
        entries(3..=5)
    );
    assert_eq!(
        db.read_logs(Excluded(8), Unbounded).unwrap(),
        entries(9..=10)
    );
    assert_eq!(
        db.read_logs(Unbounded, Included(2)).unwrap(),
        entries(1..=2)
    );
    assert_eq!(db.read_logs(Excluded(u64::MAX), Unbounded).unwrap(), vec![]);
    assert_eq!(db.last_log().unwrap(), Some((10, b"entry-10".to_vec())));
}

#[test]
fn truncate_and_purge() {
    let (_dir, db) = open();
    db.append_logs(entries(1..=10)).unwrap();
    db.delete_logs_from(8).unwrap();
    assert_eq!(db.last_log().unwrap().map(|(i, _)| i), Some(7));
    db.purge_logs_upto(3, "last_purged", b"3").unwrap();
    assert_eq!(db.read_logs(Unbounded, Unbounded).unwrap(), entries(4..=7));
    assert_eq!(db.get_meta("last_purged").unwrap(), Some(b"3".to_vec()));
}

#[test]
fn a_limited_read_stops_at_the_byte_budget_but_never_returns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.append_logs(entries(1..=5)).unwrap();
    let all = db.read_logs(Unbounded, Unbounded).unwrap();
    let one = all[0].1.len();
    let got = db
        .read_logs_upto(Included(1), Excluded(6), 2 * one)
        .unwrap();
    assert_eq!(got, all[..2].to_vec(), "stops once the budget is reached");
    let got = db.read_logs_upto(Included(3), Excluded(6), 1).unwrap();
    assert_eq!(got, all[2..3].to_vec(), "one entry even over the budget");
    assert_eq!(
        db.read_logs_upto(Included(1), Excluded(6), usize::MAX)
            .unwrap(),
        all
    );
}

#[test]
fn meta_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        db.put_meta_json("vote", &(3u64, 2u64), Durability::Synced)
            .unwrap();
        db.put_snapshot(b"meta", b"snap").unwrap();
        db.append_logs(entries(1..=2)).unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(
        db.get_meta_json::<(u64, u64)>("vote").unwrap(),
        Some((3, 2))
    );
    assert_eq!(db.get_meta_json::<(u64, u64)>("absent").unwrap(), None);
    assert_eq!(db.get_snapshot_meta().unwrap(), Some(b"meta".to_vec()));
    assert_eq!(db.get_snapshot_data().unwrap(), Some(b"snap".to_vec()));
    assert_eq!(db.get_legacy_snapshot().unwrap(), None);
    assert_eq!(db.read_logs(Unbounded, Unbounded).unwrap(), entries(1..=2));
}

#[test]
fn snapshot_meta_replaces_the_data_an_older_version_stored() {
    let (_dir, db) = open();
    db.put_snapshot(b"old meta", b"old data").unwrap();
    db.put_snapshot_meta(b"new meta").unwrap();
    assert_eq!(db.get_snapshot_meta().unwrap(), Some(b"new meta".to_vec()));
    assert_eq!(db.get_snapshot_data().unwrap(), None);
    assert_eq!(db.get_legacy_snapshot().unwrap(), None);
}

#[test]
fn corrupt_meta_is_a_decode_error() {
    let (_dir, db) = open();
    db.put_meta("vote", b"not json", Durability::Synced)
        .unwrap();
    let err = db.get_meta_json::<u64>("vote").unwrap_err();
    assert!(
        matches!(err, StorageError::Decode { what: "vote", .. }),
        "{err}"
    );
}

#[test]
fn second_open_of_same_directory_fails_cleanly() {
    let (dir, _db) = open();
    let err = Db::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Open { .. }), "{err}");
}

/// Durability: the append, purge, vote and snapshot paths all sync the WAL before they return;
/// a meta value asked for as buffered does not. `write_options` is the one place write options
/// are made; RocksDB's own `wal.synced` ticker shows that a write really synced.
#[test]
fn appends_and_votes_sync_the_wal() {
    // `WriteOptions` has no getter, so check the observable effect: a synced write bumps the
    // ticker, a buffered one does not.
    let (_dir, db) = open();
    let before = db.wal_syncs().expect("statistics are enabled");
    db.append_logs(entries(1..=3)).unwrap();
    let after_append = db.wal_syncs().unwrap();
    assert!(
        after_append > before,
        "append did not sync the WAL ({before} -> {after_append})"
    );
    db.put_meta_json("vote", &1u64, Durability::Synced).unwrap();
    let after_vote = db.wal_syncs().unwrap();
    assert!(after_vote > after_append, "vote did not sync the WAL");
    db.delete_logs_from(2).unwrap();
    let after_truncate = db.wal_syncs().unwrap();
    assert!(after_truncate > after_vote, "truncate did not sync the WAL");
    db.put_meta_json("committed", &2u64, Durability::Buffered)
        .unwrap();
    assert_eq!(
        db.wal_syncs().unwrap(),
        after_truncate,
        "a buffered meta value synced the WAL"
    );
    assert_eq!(db.get_meta_json::<u64>("committed").unwrap(), Some(2));
}

/// A buffered meta value is in the WAL like any other write, so a reopen reads it back. (A
/// crash that loses the page cache cannot be simulated here: rust-rocksdb exposes no fault
/// injection. That a later synced write makes it durable is RocksDB's WAL order, `put_meta`.)
#[test]
fn buffered_meta_is_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        db.put_meta_json("committed", &7u64, Durability::Buffered)
            .unwrap();
        db.append_logs(entries(1..=2)).unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get_meta_json::<u64>("committed").unwrap(), Some(7));
    assert_eq!(db.read_logs(Unbounded, Unbounded).unwrap(), entries(1..=2));
}
