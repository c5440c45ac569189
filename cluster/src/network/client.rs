//! The client side of the Raft transport: `Connection` (one TCP connection to one peer,
//! reconnected on error) and openraft's `RaftNetworkFactory` / `RaftNetwork` on top of it.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::net::TcpStream;

use super::fault::{Fault, FaultTable};
use super::frame::{encode_frame, read_frame, write_encoded, FrameError};
use super::message::{append_entries_frame, Request, Response};
use crate::log_store::EncodedEntries;
use crate::types::{NodeInfo, TypeConfig};

/// Deadline of an append-entries or vote RPC (connect included).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one install-snapshot chunk.
pub const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an RPC got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Nothing was sent: the peer could not be reached (or fault injection dropped it).
    #[error("peer {peer} at {addr} unreachable: {reason}")]
    Unreachable {
        peer: u64,
        addr: String,
        reason: String,
    },
    /// The request may have been sent but no answer came in time.
    #[error("peer {peer} at {addr} did not answer within {timeout:?}")]
    Timeout {
        peer: u64,
        addr: String,
        timeout: Duration,
    },
    /// The connection broke or the peer sent something we cannot read.
    #[error("peer {peer} at {addr}: {source}")]
    Transport {
        peer: u64,
        addr: String,
        source: FrameError,
    },
    /// The peer answered a different kind of message (a bug or a version mismatch).
    #[error("peer {peer} answered {kind} with an unexpected message")]
    UnexpectedResponse { peer: u64, kind: &'static str },
}

/// One request/response connection to one peer. Not shared: each user owns its own, so a
/// slow snapshot chunk never holds up another stream's heartbeats.
#[derive(Debug)]
pub struct Connection {
    peer: u64,
    addr: String,
    stream: Option<TcpStream>,
    faults: FaultTable,
}

impl Connection {
    pub fn new(peer: u64, addr: String, faults: FaultTable) -> Connection {
        Connection {
            peer,
            addr,
            stream: None,
            faults,
        }
    }

    /// Sends `request` and waits for its response, within `timeout` (connect included). Any
    /// failure drops the connection so the next call reconnects.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let frame = encode_frame(request).map_err(|source| self.transport(source))?;
        self.call_frame(&frame, timeout).await
    }

    /// `call` with the request already encoded as a frame.
    pub async fn call_frame(
        &mut self,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Response, CallError> {
        match self.faults.get(self.peer) {
            Some(Fault::Drop) => {
                return Err(self.unreachable("dropped by fault injection".to_string()))
            }
            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        match tokio::time::timeout(timeout, self.exchange(frame)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(CallError::Timeout {
                    peer: self.peer,
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    fn transport(&self, source: FrameError) -> CallError {
        CallError::Transport {
            peer: self.peer,
            addr: self.addr.clone(),
            source,
        }
    }

    fn unreachable(&self, reason: String) -> CallError {
        CallError::Unreachable {
            peer: self.peer,
            addr: self.addr.clone(),
            reason,
        }
    }

    /// One request and its response. Cancellation-safe: the stream is taken out for the
    /// exchange and put back only once the response is read, so a caller that gives up
    /// half-way (its future dropped between the write and the read) takes the connection
    /// with it, and the next request never reads the previous one's late response.
    async fn exchange(&mut self, frame: &[u8]) -> Result<Response, CallError> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(&self.addr)
                    .await
                    .map_err(|e| self.unreachable(e.to_string()))?;
                // Raft messages are small and latency-bound.
                let _ = stream.set_nodelay(true);
                stream
            }
        };
        let (peer, addr) = (self.peer, self.addr.clone());
        let transport = |source| CallError::Transport {
            peer,
            addr: addr.clone(),
            source,
        };
        write_encoded(&mut stream, frame).await.map_err(transport)?;
        let response = read_frame(&mut stream).await.map_err(transport)?;
        self.stream = Some(stream);
        Ok(response)
    }
}

/// Maps a transport failure onto openraft's error kinds: unreachable or timed out means
/// "back off before retrying"; a broken connection means "retry now, on a new connection".
fn rpc_error<E: std::error::Error>(e: CallError) -> RPCError<u64, NodeInfo, E> {
    match e {
        CallError::Unreachable { .. } | CallError::Timeout { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        CallError::Transport { .. } | CallError::UnexpectedResponse { .. } => {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

/// Creates one `PeerNetwork` per (target, stream) openraft asks for.
#[derive(Clone, Debug, Default)]
pub struct NetworkFactory {
    faults: FaultTable,
    /// The local log store's recent encodings: AppendEntries carry them as they are.
    encoded: EncodedEntries,
}

impl NetworkFactory {
    pub fn new(faults: FaultTable, encoded: EncodedEntries) -> NetworkFactory {
        NetworkFactory { faults, encoded }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            target,
            connection: Connection::new(target, node.raft_addr.clone(), self.faults.clone()),
            encoded: self.encoded.clone(),
        }
    }
}

/// openraft's view of one peer.
#[derive(Debug)]
pub struct PeerNetwork {
    target: u64,
    connection: Connection,
    encoded: EncodedEntries,
}

impl PeerNetwork {
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RPCError<u64, NodeInfo, E>> {
        let kind = request.kind();
        self.connection.call(&request, timeout).await.map_err(|e| {
            tracing::debug!(peer = self.target, rpc = kind, error = %e, "raft rpc failed");
            rpc_error(e)
        })
    }

    fn unexpected<E: std::error::Error>(&self, kind: &'static str) -> RPCError<u64, NodeInfo, E> {
        rpc_error(CallError::UnexpectedResponse {
            peer: self.target,
            kind,
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        let response = match append_entries_frame(&rpc, &self.encoded) {
            Some(frame) => {
                let frame = frame.map_err(|e| rpc_error(self.connection.transport(e)))?;
                self.connection
                    .call_frame(&frame, RPC_TIMEOUT)
                    .await
                    .map_err(|e| {
                        tracing::debug!(peer = self.target, rpc = "append_entries", error = %e, "raft rpc failed");
                        rpc_error(e)
                    })?
            }
            None => self.call(Request::AppendEntries(rpc), RPC_TIMEOUT).await?,
        };
        match response {
            Response::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected("append_entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(Request::InstallSnapshot(rpc), SNAPSHOT_RPC_TIMEOUT)
            .await?
        {
            Response::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        match self.call(Request::Vote(rpc), RPC_TIMEOUT).await? {
            Response::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected("vote")),
        }
    }
}
