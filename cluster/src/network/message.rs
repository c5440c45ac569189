//! The messages of the Raft transport. One request frame gets one response frame.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::types::TypeConfig;

#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a client write to the node it believes is the leader (shared:
    /// the sender keeps the command for a retry without cloning it).
    ClientWrite(Arc<model::Command>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    ClientWrite(Result<model::Outcome, WriteRejection>),
}

/// Why the receiver of a forwarded write did not commit it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteRejection {
    /// The receiver is not the leader (any more); `leader_id` is its best guess.
    #[error("not the leader (leader hint: {leader_id:?})")]
    NotLeader { leader_id: Option<u64> },
    /// The leader failed to commit it (shutting down, membership change in progress...).
    #[error("the leader failed to commit the write: {reason}")]
    Failed { reason: String },
}

impl Request {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::AppendEntries(_) => "append_entries",
            Request::Vote(_) => "vote",
            Request::InstallSnapshot(_) => "install_snapshot",
            Request::ClientWrite(_) => "client_write",
        }
    }
}
