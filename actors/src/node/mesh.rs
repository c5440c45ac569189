//! The mesh: how actors on different nodes talk. Each node runs one `MeshActor`, joined to the
//! process group `callgrid.mesh.<node id>`; ractor_cluster connects the nodes (every node
//! dials the peers with a lower id and re-dials while they are missing) and syncs the groups.
//! A message for an actor on another node is an `Envelope`, serialised and cast to that node's
//! MeshActor, which hands it to the local actor (spawning it if this node owns it).
//!
//! Why one mesh actor per node instead of one remote ref per actor: calls are short-lived and
//! numerous, and ractor_cluster syncs process groups asynchronously; addressing nodes (stable,
//! few) and resolving actors locally avoids both the churn and the race. ractor_cluster drops
//! a message to a missing actor silently (DESIGN.md), so every cross-node exchange here has a
//! timeout or an expiring reservation behind it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use model::{AgentId, AgentSession, CallId, ExtensionId, NodeId, QueueId, TenantId};

use super::api::{AgentCommand, NodeError};
use crate::call::AgentNotice;
use crate::queue::{QueueInput, QueueStats};

/// A one-way message to an actor somewhere in the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "to")]
pub enum Envelope {
    Queue {
        tenant: TenantId,
        queue: QueueId,
        input: QueueInput,
    },
    Agent {
        tenant: TenantId,
        agent: AgentId,
        input: AgentEnvelope,
    },
    Call {
        call: CallId,
        input: CallEnvelope,
    },
    /// A queue's figures, broadcast to every node for the event stream.
    QueueStats {
        tenant: TenantId,
        queue: QueueId,
        owner: NodeId,
        stats: QueueStats,
        at_ms: u64,
    },
    /// An event of one node's actors for every node's event stream (R3.11's virtual call:
    /// the agent's desktop may watch any node).
    Event {
        event: Box<super::api::Event>,
    },
    /// For node `node`, through this node: the sender cannot reach it directly (a cut link
    /// between two live nodes that both still reach the others). One hop, never relayed on.
    Relay {
        node: NodeId,
        envelope: Box<Envelope>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AgentEnvelope {
    Reserve {
        call: CallId,
        queue: QueueId,
    },
    CancelReservation {
        call: CallId,
    },
    Notice {
        call: CallId,
        notice: AgentNotice,
    },
    /// A queue (re)started and asks ready agents to announce themselves.
    Announce {
        queue: QueueId,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CallEnvelope {
    Offer {
        /// The queue's tenant: an offer for a call that has ended is refused to this tenant's
        /// agent and queue (agent numbers repeat across tenants).
        tenant: TenantId,
        queue: QueueId,
        agent: AgentId,
        agent_node: NodeId,
        extension: ExtensionId,
    },
    /// A rule of the queue the call asked to join turned it away (R3.3, R3.5).
    TurnedAway {
        queue: QueueId,
        rule: model::QueueRule,
    },
    /// R3.9: the queue's estimate for the call (`QueueOutput::WaitEstimate`).
    WaitEstimate {
        queue: QueueId,
        ahead: usize,
        wait_ms: Option<u64>,
    },
}

/// A request that expects an answer (the API asking the owner of an actor).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Agent {
        tenant: TenantId,
        agent: AgentId,
        command: AgentCommand,
    },
    QueueStatus {
        tenant: TenantId,
        queue: QueueId,
    },
    /// R3.10: change the queues a call waits in (to the call's node).
    Requeue {
        call: CallId,
        change: super::api::Requeue,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Agent(Result<AgentSession, String>),
    QueueStatus(Option<(QueueStats, usize)>),
    Requeue(Result<Vec<QueueId>, String>),
    Error(String),
}

/// The wire message of the mesh actor: opaque bytes, so ractor_cluster needs no knowledge of
/// our types (serde_json inside).
#[derive(RactorClusterMessage)]
pub enum MeshMsg {
    Deliver(Vec<u8>),
    #[rpc]
    Ask(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// What the mesh hands incoming traffic to (the node runtime).
pub trait Dispatch: Send + Sync + 'static {
    fn deliver(self: Arc<Self>, envelope: Envelope);
    fn ask(self: Arc<Self>, request: Request) -> futures::future::BoxFuture<'static, Response>;
}

pub fn group_name(node: NodeId) -> String {
    format!("callgrid.mesh.{node}")
}

pub struct MeshActor<D: Dispatch> {
    pub dispatch: Weak<D>,
}

impl<D: Dispatch> Actor for MeshActor<D> {
    type Msg = MeshMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<MeshMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<MeshMsg>,
        message: MeshMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let Some(dispatch) = self.dispatch.upgrade() else {
            return Ok(());
        };
        match message {
            MeshMsg::Deliver(bytes) => match serde_json::from_slice::<Envelope>(&bytes) {
                Ok(envelope) => dispatch.deliver(envelope),
                Err(error) => warn!(%error, "mesh: undecodable envelope dropped"),
            },
            MeshMsg::Ask(bytes, reply) => {
                // Answer off the mesh actor's loop so a slow request never stalls delivery.
                tokio::spawn(async move {
                    let response = match serde_json::from_slice::<Request>(&bytes) {
                        Ok(request) => dispatch.ask(request).await,
                        Err(error) => Response::Error(format!("undecodable request: {error}")),
                    };
                    let bytes = serde_json::to_vec(&response).expect("responses serialise");
                    let _ = reply.send(bytes);
                });
            }
        }
        Ok(())
    }
}

/// Sends to the mesh actor of another node.
#[derive(Clone)]
pub struct MeshClient {
    pub node_id: NodeId,
    /// Drill faults (shared with the Raft transport): drop or delay traffic to a peer.
    pub faults: cluster::network::FaultTable,
}

impl MeshClient {
    fn remote(&self, node: NodeId) -> Option<ActorRef<MeshMsg>> {
        ractor::pg::get_members(&group_name(node))
            .into_iter()
            .next()
            .map(ActorRef::from)
    }

    /// Casts an envelope to `node`'s mesh actor. Returns false when the node is not connected
    /// (the sender's timeouts take over).
    pub fn cast(&self, node: NodeId, envelope: &Envelope) -> bool {
        let fault = self.faults.get(node);
        if fault == Some(cluster::network::Fault::Drop) {
            metrics::counter!("callgrid_mesh_dropped_by_fault_total").increment(1);
            return false;
        }
        let Some(actor) = self.remote(node) else {
            debug!(node, "mesh: no route to node");
            metrics::counter!("callgrid_mesh_undeliverable_total").increment(1);
            return false;
        };
        let bytes = serde_json::to_vec(envelope).expect("envelopes serialise");
        if let Some(cluster::network::Fault::Delay(delay)) = fault {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = actor.cast(MeshMsg::Deliver(bytes));
            });
            return true;
        }
        actor.cast(MeshMsg::Deliver(bytes)).is_ok()
    }

    pub async fn ask(
        &self,
        node: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, NodeError> {
        match self.faults.get(node) {
            Some(cluster::network::Fault::Drop) => {
                return Err(NodeError::Timeout(format!(
                    "node {node} (cut off by fault injection)"
                )))
            }
            Some(cluster::network::Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        // A peer that just (re)started may not be connected yet: wait for the mesh, within
        // the same deadline, rather than failing an operator's request at once.
        let deadline = tokio::time::Instant::now() + timeout;
        let actor = loop {
            if let Some(actor) = self.remote(node) {
                break actor;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Timeout(format!("node {node} (not connected)")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let bytes = serde_json::to_vec(request).expect("requests serialise");
        let answer = ractor::call_t!(actor, MeshMsg::Ask, timeout.as_millis() as u64, bytes)
            .map_err(|e| NodeError::Timeout(format!("node {node}: {e}")))?;
        serde_json::from_slice(&answer)
            .map_err(|e| NodeError::Cluster(format!("bad answer from node {node}: {e}")))
    }
}
