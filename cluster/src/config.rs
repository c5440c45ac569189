//! `ClusterConfig`: what a node needs to join the Raft group, and the openraft settings
//! derived from it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openraft::SnapshotPolicy;

use crate::types::NodeInfo;
use crate::ClusterError;

/// Build a snapshot after this many applied entries since the last one; logs behind the
/// snapshot are purged (keeping `LOGS_KEPT_BEHIND_SNAPSHOT` for slow followers).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 5000;
pub const LOGS_KEPT_BEHIND_SNAPSHOT: u64 = 1000;

/// One node's view of the cluster at start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id. Ids are never reused, even after a node is removed.
    pub node_id: u64,
    pub info: NodeInfo,
    /// Directory of this node's RocksDB database.
    pub data_dir: PathBuf,
    /// All initial voters, this node included.
    pub peers: BTreeMap<u64, NodeInfo>,
    pub heartbeat_ms: u64,
    /// Election timeout range (min, max), randomized by openraft in between.
    pub election_timeout_ms: (u64, u64),
    /// Never initialize: this node joins a running cluster, whose leader adds it (DR
    /// failback). A fresh store then waits to be added as a learner.
    pub join: bool,
}

impl ClusterConfig {
    /// A config with the default timings (heartbeat 100 ms, election 300-600 ms).
    pub fn new(
        node_id: u64,
        info: NodeInfo,
        data_dir: PathBuf,
        peers: BTreeMap<u64, NodeInfo>,
    ) -> ClusterConfig {
        ClusterConfig {
            node_id,
            info,
            data_dir,
            peers,
            heartbeat_ms: 100,
            election_timeout_ms: (300, 600),
            join: false,
        }
    }

    /// openraft's configuration, validated.
    pub fn raft_config(&self) -> Result<openraft::Config, ClusterError> {
        let config = openraft::Config {
            cluster_name: "callgrid".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms.0,
            election_timeout_max: self.election_timeout_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
            max_in_snapshot_log_to_keep: LOGS_KEPT_BEHIND_SNAPSHOT,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::Config(e.to_string()))
    }

    /// True when this node must initialize a fresh cluster: it has the lowest id among the
    /// initial voters (so exactly one node proposes the initial membership).
    pub fn is_initializer(&self) -> bool {
        !self.join && self.peers.keys().next() == Some(&self.node_id)
    }
}
