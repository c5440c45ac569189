//! The server side of the Raft transport: accept connections on `raft_addr`, one task per
//! connection, each answering request frames in order.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::frame::{read_frame, write_frame, FrameError};
use super::message::{Request, Response, WriteRejection};
use crate::combiner::{Combiner, WriteError};
use crate::types::Raft;

/// Accepts connections until the returned task is aborted; aborting it also aborts every
/// connection task (they live in its `JoinSet`).
pub fn spawn_server(
    listener: TcpListener,
    raft: Raft,
    combiner: Arc<Combiner>,
    node_id: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        tracing::trace!(node = node_id, %remote, "raft connection accepted");
                        connections.spawn(serve_connection(
                            stream,
                            raft.clone(),
                            Arc::clone(&combiner),
                            node_id,
                        ));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::error!(node = node_id, error = %e, "accepting a raft connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                // Reap finished connection tasks so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn serve_connection(
    mut stream: TcpStream,
    raft: Raft,
    combiner: Arc<Combiner>,
    node_id: u64,
) {
    loop {
        let request: Request = match read_frame(&mut stream).await {
            Ok(request) => request,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                // A peer that sends garbage or oversized frames is misbehaving: drop it.
                tracing::warn!(node = node_id, error = %e, "bad raft frame; closing the connection");
                return;
            }
        };
        let response = handle(&raft, &combiner, request).await;
        if let Err(e) = write_frame(&mut stream, &response).await {
            tracing::debug!(node = node_id, error = %e, "raft response not delivered");
            return;
        }
    }
}

async fn handle(raft: &Raft, combiner: &Combiner, request: Request) -> Response {
    match request {
        Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
        Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        Request::ClientWrite(command) => {
            Response::ClientWrite(local_write(combiner, command).await)
        }
    }
}

/// Commits a forwarded write if this node is the leader. Never forwards again: the original
/// node retries with the leader hint, so a stale hint cannot make a forwarding loop.
async fn local_write(
    combiner: &Combiner,
    command: Arc<model::Command>,
) -> Result<model::Outcome, WriteRejection> {
    match combiner.write(command).await {
        Ok(outcome) => Ok(outcome),
        Err(WriteError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(WriteRejection::NotLeader {
                leader_id: forward.leader_id,
            })
        }
        Err(e) => Err(WriteRejection::Failed {
            reason: e.to_string(),
        }),
    }
}
