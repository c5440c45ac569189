//! The cluster crate's one error type.

use std::time::Duration;

use crate::network::CallError;

/// What failed while running this node's part of the Raft group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Local storage failed (disk, corruption, directory locked by another process).
    #[error("local storage failed while {doing}: {source}")]
    Storage {
        doing: &'static str,
        source: storage::StorageError,
    },
    /// The state machine or log could not be loaded by openraft.
    #[error("local raft storage failed while {doing}: {reason}")]
    RaftStorage { doing: &'static str, reason: String },
    /// The configuration is unusable (bad timeouts, node not in peers...).
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// The Raft listen address could not be bound.
    #[error("cannot listen for raft traffic on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// No leader was known (or reachable) within the write deadline: the cluster has no quorum.
    #[error("no raft leader reachable within {waited:?} (is a majority of voters up?)")]
    NoLeader { waited: Duration },
    /// An operation did not finish in time; it may still complete.
    #[error("timed out after {after:?} while {doing}")]
    Timeout {
        doing: &'static str,
        after: Duration,
    },
    /// Forwarding to the leader failed after the request may have been sent, so it is not
    /// retried automatically (it may have been applied).
    #[error("forwarding the write to the leader failed: {0}")]
    Network(#[from] CallError),
    /// openraft reported an error (fatal or unexpected API error).
    #[error("raft: {0}")]
    Raft(String),
    /// This node is shut down.
    #[error("this cluster node is shut down")]
    ShutDown,
}
