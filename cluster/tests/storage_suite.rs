//! openraft's storage test suite against our RocksDB-backed `LogStore` and
//! `StateMachineStore`, each test on a fresh temporary directory.

// openraft's `StorageError` is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use cluster::log_store::LogStore;
use cluster::state_machine::StateMachineStore;
use cluster::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(storage::Db::open(dir.path()).expect("open rocksdb"));
        let log_store = LogStore::new(db.clone());
        let state_machine = StateMachineStore::open(db)?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(RocksBuilder)
}
