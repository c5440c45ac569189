//! The messages of the Raft transport. One request frame gets one response frame.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::frame::{finish_frame, FrameError};
use crate::log_store::EncodedEntries;
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

/// `Request::AppendEntries(rpc)` as a frame, the entries copied in as the log store encoded
/// them instead of being encoded again (once per follower, it was a fifth of the leader's
/// CPU under load: docs/PERFORMANCE.md). Byte for byte what `encode_frame` gives (tested), so
/// the receiver decodes it as any other. None when an entry's encoding is no longer kept, or
/// there is no entry (a heartbeat): encode the request as usual then.
pub fn append_entries_frame(
    rpc: &AppendEntriesRequest<TypeConfig>,
    encoded: &EncodedEntries,
) -> Option<Result<Vec<u8>, FrameError>> {
    if rpc.entries.is_empty() {
        return None;
    }
    let entries = encoded.of(&rpc.entries)?;
    let size: usize = entries.iter().map(|e| e.len() + 1).sum();
    let mut frame = Vec::with_capacity(4 + size + 256);
    frame.extend_from_slice(&[0; 4]);
    // The field order of openraft's derived Serialize, inside the externally tagged variant.
    let mut encode = || -> Result<Vec<u8>, FrameError> {
        frame.extend_from_slice(br#"{"AppendEntries":{"vote":"#);
        serde_json::to_writer(&mut frame, &rpc.vote).map_err(FrameError::Encode)?;
        frame.extend_from_slice(br#","prev_log_id":"#);
        serde_json::to_writer(&mut frame, &rpc.prev_log_id).map_err(FrameError::Encode)?;
        frame.extend_from_slice(br#","entries":["#);
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                frame.push(b',');
            }
            frame.extend_from_slice(entry);
        }
        frame.extend_from_slice(br#"],"leader_commit":"#);
        serde_json::to_writer(&mut frame, &rpc.leader_commit).map_err(FrameError::Encode)?;
        frame.extend_from_slice(b"}}");
        finish_frame(std::mem::take(&mut frame))
    };
    Some(encode())
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    use super::*;
    use crate::network::frame::encode_frame;
    use crate::types::Entry;

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload,
        }
    }

    fn put_call(n: u64) -> model::Command {
        let id = model::bench::synthetic_id(7, n);
        model::Command::PutCall {
            checkpoint: Arc::new(model::bench::call_checkpoint(
                &id,
                model::Fence { node: 2, epoch: 1 },
                1,
                1_700_000_000_000 + n,
            )),
        }
    }

    #[test]
    fn append_entries_from_stored_encodings_is_the_same_frame() {
        let entries = [
            entry(10, EntryPayload::Blank),
            entry(11, EntryPayload::Normal(Arc::new(put_call(1)))),
            entry(
                12,
                EntryPayload::Normal(Arc::new(model::Command::Batch {
                    commands: vec![put_call(2), put_call(3)],
                })),
            ),
        ];
        let encoded = EncodedEntries::default();
        encoded.keep(
            entries
                .iter()
                .map(|e| (e.clone(), serde_json::to_vec(e).unwrap().into()))
                .collect(),
        );
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
            entries: entries[1..].to_vec(),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 10)),
        };
        let usual = encode_frame(&Request::AppendEntries(rpc.clone())).unwrap();
        let shortcut = append_entries_frame(&rpc, &encoded)
            .expect("every entry is kept")
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&shortcut),
            String::from_utf8_lossy(&usual)
        );
        assert_eq!(shortcut, usual);

        let first_only = AppendEntriesRequest::<TypeConfig> {
            prev_log_id: None,
            leader_commit: None,
            entries: entries[..1].to_vec(),
            ..rpc.clone()
        };
        assert_eq!(
            append_entries_frame(&first_only, &encoded)
                .unwrap()
                .unwrap(),
            encode_frame(&Request::AppendEntries(first_only)).unwrap()
        );
    }

    #[test]
    fn append_entries_falls_back_when_an_entry_is_not_kept() {
        let encoded = EncodedEntries::default();
        let kept = entry(5, EntryPayload::Blank);
        encoded.keep(vec![(
            kept.clone(),
            serde_json::to_vec(&kept).unwrap().into(),
        )]);
        let rpc = |entries: Vec<Entry>| AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        };
        assert!(append_entries_frame(
            &rpc(vec![kept.clone(), entry(6, EntryPayload::Blank)]),
            &encoded
        )
        .is_none());
        assert!(
            append_entries_frame(&rpc(vec![]), &encoded).is_none(),
            "a heartbeat"
        );
    }
}
