//! The openraft type configuration: what callgrid replicates and how nodes are described.

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// callgrid's Raft types: entries carry `model::Command`, applying one yields `model::Outcome`.
    /// The command is shared (`Arc`): openraft clones entries as it reads them back for
    /// replication and apply, and the writer, the log store's recent entries and the applied
    /// events all hold the same one (the encoding is the command's, as if unshared).
    pub TypeConfig:
        D = std::sync::Arc<model::Command>,
        R = model::Outcome,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Everything other nodes need to reach a node; stored in the Raft membership, so every
/// voter's addresses are replicated with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub site: String,
    /// Raft RPCs (this crate's TCP transport).
    pub raft_addr: String,
    /// REST/WebSocket API.
    pub api_addr: String,
    /// SIP signalling.
    pub sip_addr: String,
    /// Actor mesh (ractor_cluster).
    pub mesh_addr: String,
}

/// Short aliases for openraft types instantiated with `TypeConfig`.
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<u64>;
pub type Raft = openraft::Raft<TypeConfig>;
