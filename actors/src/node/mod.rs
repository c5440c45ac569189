//! The node runtime: the drivers that turn the pure machines into a running node.
//!
//! - `Runtime` holds what every driver shares: this node's identity, the Raft handle
//!   (`cluster::Cluster`), the registries of local actors, the mesh client, the event bus.
//! - `mesh`: one MeshActor per node over ractor_cluster carries `Envelope`s between nodes.
//! - `agent_actor`, `queue_actor`, `call_actor`: ractor drivers of the machines.
//! - `endpoint`: the SIP endpoint (transport + transaction layer), registrar, and the routing
//!   of SIP traffic to call actors.
//! - `api`: the surface the REST API uses (`Node`).
//!
//! Placement: queue and agent actors live on the node that rendezvous hashing picks among the
//! Raft voters; an envelope for one is sent to that node, whose runtime spawns it on demand
//! and rebuilds it from replicated state. A call actor lives on the node that took the call.

pub mod admission;
pub mod agent_actor;
pub mod api;
pub mod call_actor;
pub mod checkpoints;
pub mod endpoint;
pub mod mesh;
pub mod placement;
mod prompts;
pub mod queue_actor;
mod registrar;
mod sip_legs;
mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use cluster::{Cluster, LeaseConfig, Liveness, NodeInfo};
use model::{AgentId, AgentSession, CallCheckpoint, CallId, Fence, NodeId, QueueId, TenantId};

use agent_actor::{AgentActor, AgentArgs, AgentMsg};
pub use api::*;
use call_actor::CallMsg;
use mesh::{
    AgentEnvelope, CallEnvelope, Dispatch, Envelope, MeshActor, MeshClient, Request, Response,
};
use queue_actor::{QueueActor, QueueMsg};

/// How long an API request waits for the actor's node.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub site: String,
    pub sip_addr: SocketAddr,
    pub media_ip: IpAddr,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    pub mesh_addr: SocketAddr,
    pub mesh_cookie: String,
    pub data_dir: PathBuf,
    /// Shared by all nodes: digest nonces minted on one node validate on another.
    pub secret: String,
    pub peers: BTreeMap<NodeId, NodeInfo>,
    /// Lease and failure-detection timings.
    pub lease: LeaseConfig,
    /// When the node refuses new calls (DESIGN.md "Overload").
    pub admission: admission::AdmissionLimits,
}

/// What all drivers of a node share.
pub struct Runtime {
    pub config: NodeConfig,
    pub cluster: Arc<Cluster>,
    mesh: MeshClient,
    queues: Mutex<HashMap<String, ActorRef<QueueMsg>>>,
    /// Each queue's recent answers, from its owner's last stats broadcast: a queue rebuilt
    /// here starts its wait estimates (R3.9) from them.
    queue_answers: Mutex<HashMap<String, Vec<u64>>>,
    agents: Mutex<HashMap<String, ActorRef<AgentMsg>>>,
    calls: Mutex<HashMap<CallId, ActorRef<CallMsg>>>,
    /// Each tenant's flows and queues, one copy shared by its calls.
    pub(crate) tenant_configs: crate::call::TenantConfigs,
    /// What the API shows of this node's calls; each call actor keeps its entry current.
    pub(crate) live: Mutex<HashMap<CallId, LiveCall>>,
    events: broadcast::Sender<Event>,
    endpoint: std::sync::OnceLock<endpoint::EndpointHandle>,
    /// Envelopes for local actors, from the mesh and from this node, in arrival order.
    dispatch: tokio::sync::mpsc::UnboundedSender<Envelope>,
    pub media_ports: media::session::PortAllocator,
    call_counter: std::sync::atomic::AtomicU64,
    pub liveness: Arc<Liveness>,
    pub checkpoints: Arc<checkpoints::Checkpointer>,
    pub loop_lag: Arc<admission::LoopLag>,
    /// After this node rejoins, it serves queue and agent actors it gains only once the
    /// previous owners' leases have run out (no two live owners).
    serve_after: Mutex<Option<tokio::time::Instant>>,
    /// A rejoin (`NodeUp` retries) is running: a second trigger does not start another.
    rejoining: std::sync::atomic::AtomicBool,
}

impl Runtime {
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Wall-clock Unix milliseconds: the time base of checkpoints and CDRs.
    pub fn now_ms(&self) -> u64 {
        model::unix_ms(std::time::SystemTime::now())
    }

    /// The live voting nodes placement hashes over: the replicated membership minus the
    /// nodes the cluster declared down.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut voters: Vec<NodeId> = self.cluster.status().voters.keys().copied().collect();
        if voters.is_empty() {
            voters = self.config.peers.keys().copied().collect();
        }
        let down: Vec<NodeId> = self.cluster.read(|s| {
            s.nodes
                .iter()
                .filter(|(_, n)| n.down)
                .map(|(id, _)| *id)
                .collect()
        });
        voters.retain(|n| !down.contains(n));
        voters
    }

    /// What admission control sees now.
    pub fn load(&self) -> admission::Load {
        admission::Load {
            calls: self.call_count(),
            checkpoint_backlog: self.checkpoints.backlog(),
            loop_lag_ms: self.loop_lag.lag_ms(),
            heartbeat_ms: self.liveness.heartbeat_commit_ms(),
            degraded: self.checkpoints.degraded(),
        }
    }

    /// Whether this node takes a new call now (DESIGN.md "Overload").
    pub fn admit(&self) -> Result<(), admission::Refusal> {
        admission::decide(&self.config.admission, &self.load())
    }

    /// True while this node holds its lease (it may host queue and agent actors).
    pub fn holds_lease(&self) -> bool {
        self.liveness.lease_valid()
    }

    /// This node at its current epoch: the fence on everything it checkpoints.
    pub fn fence(&self) -> Fence {
        Fence {
            node: self.node_id(),
            epoch: self.cluster.read(|s| s.epoch(self.node_id())),
        }
    }

    /// Where a call lives: `hint` (its node) while that node is up, else the node that takes
    /// it over (rendezvous over the live voters, the same answer on every node).
    pub fn call_owner(&self, call: &CallId, hint: NodeId) -> NodeId {
        if !self.cluster.read(|s| s.is_down(hint)) {
            return hint;
        }
        placement::owner(&placement::call_key(call), self.voters()).unwrap_or(self.node_id())
    }

    pub fn queue_owner(&self, tenant: &TenantId, queue: &QueueId) -> NodeId {
        placement::owner(&placement::queue_key(tenant, queue), self.voters())
            .unwrap_or(self.node_id())
    }

    pub fn agent_owner(&self, tenant: &TenantId, agent: &AgentId) -> NodeId {
        placement::owner(&placement::agent_key(tenant, agent), self.voters())
            .unwrap_or(self.node_id())
    }

    pub fn endpoint(&self) -> &endpoint::EndpointHandle {
        self.endpoint
            .get()
            .expect("the endpoint starts before any call")
    }

    pub fn new_call_id(&self) -> CallId {
        let n = self
            .call_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CallId(format!(
            "{}-{}-{:06x}",
            self.node_id(),
            n,
            rand::random::<u32>() & 0xff_ffff
        ))
    }

    /// The recent answers of `queue` its last owner broadcast (empty if none heard).
    pub fn queue_answers(&self, tenant: &TenantId, queue: &QueueId) -> Vec<u64> {
        self.queue_answers
            .lock()
            .expect("queue answers lock")
            .get(&model::state::key(tenant, queue.as_str()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn send_queue(
        self: &Arc<Self>,
        tenant: &TenantId,
        queue: &QueueId,
        input: crate::queue::QueueInput,
    ) {
        let owner = self.queue_owner(tenant, queue);
        self.send(
            owner,
            Envelope::Queue {
                tenant: tenant.clone(),
                queue: queue.clone(),
                input,
            },
        );
    }

    pub fn send_agent(self: &Arc<Self>, tenant: &TenantId, agent: &AgentId, input: AgentEnvelope) {
        let owner = self.agent_owner(tenant, agent);
        self.send(
            owner,
            Envelope::Agent {
                tenant: tenant.clone(),
                agent: agent.clone(),
                input,
            },
        );
    }

    pub fn send_call(self: &Arc<Self>, node: NodeId, call: &CallId, input: CallEnvelope) {
        self.send(
            self.call_owner(call, node),
            Envelope::Call {
                call: call.clone(),
                input,
            },
        );
    }

    pub fn broadcast(self: &Arc<Self>, envelope: Envelope) {
        for node in self.voters() {
            self.send(node, envelope.clone());
        }
    }

    fn send(self: &Arc<Self>, node: NodeId, envelope: Envelope) {
        if node == self.node_id() {
            Arc::clone(self).deliver(envelope);
            return;
        }
        if self.mesh.cast(node, &envelope) {
            return;
        }
        // No direct route (the link between us is cut, or the node is gone): relay through
        // another live voter that reaches it. Without this, a cut between two live nodes
        // that both reach a quorum would stall every exchange between their actors (no
        // NodeDown comes to move them).
        let relay = Envelope::Relay {
            node,
            envelope: Box::new(envelope),
        };
        let me = self.node_id();
        let relayed = self
            .voters()
            .into_iter()
            .filter(|v| *v != me && *v != node)
            .any(|via| self.mesh.cast(via, &relay));
        if relayed {
            metrics::counter!("callgrid_mesh_relayed_total").increment(1);
        } else {
            warn!(node, "mesh: envelope for an unreachable node dropped");
        }
    }

    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Replicates an agent session through the node's checkpoint writer (batched, kept while
    /// Raft has no quorum): versions make late or repeated writes harmless, and the fence
    /// refuses them once this node has lost the agent to another.
    pub fn checkpoint_agent(self: &Arc<Self>, mut session: AgentSession) {
        session.fence = Some(self.fence());
        self.checkpoints
            .submit(model::Command::PutAgentSession { session });
    }

    async fn queue_actor(
        self: &Arc<Self>,
        tenant: &TenantId,
        queue: &QueueId,
    ) -> Option<ActorRef<QueueMsg>> {
        let key = model::state::key(tenant, queue.as_str());
        if let Some(actor) = self.queues.lock().expect("registry lock").get(&key) {
            return Some(actor.clone());
        }
        if !self.cluster.read(|s| s.queue(tenant, queue).is_some()) {
            return None;
        }
        let (actor, _) = Actor::spawn(
            None,
            QueueActor {
                runtime: Arc::clone(self),
            },
            (tenant.clone(), queue.clone()),
        )
        .await
        .ok()?;
        let mut queues = self.queues.lock().expect("registry lock");
        // Two envelopes may race to spawn the same queue: keep the first, stop the other.
        let kept = queues.entry(key).or_insert_with(|| actor.clone()).clone();
        if kept.get_id() != actor.get_id() {
            actor.stop(None);
        }
        Some(kept)
    }

    async fn agent_actor(
        self: &Arc<Self>,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Option<ActorRef<AgentMsg>> {
        let key = model::state::key(tenant, agent.as_str());
        if let Some(actor) = self.agents.lock().expect("registry lock").get(&key) {
            return Some(actor.clone());
        }
        if !self.cluster.read(|s| s.agent(tenant, agent).is_some()) {
            return None;
        }
        let args = AgentArgs {
            tenant: tenant.clone(),
            agent: agent.clone(),
        };
        let (actor, _) = Actor::spawn(
            None,
            AgentActor {
                runtime: Arc::clone(self),
            },
            args,
        )
        .await
        .ok()?;
        let mut agents = self.agents.lock().expect("registry lock");
        let kept = agents.entry(key).or_insert_with(|| actor.clone()).clone();
        if kept.get_id() != actor.get_id() {
            actor.stop(None);
        }
        Some(kept)
    }

    pub fn register_call(&self, call: CallId, actor: ActorRef<CallMsg>) {
        self.calls
            .lock()
            .expect("registry lock")
            .insert(call, actor);
    }

    pub fn unregister_call(&self, call: &CallId) {
        self.calls.lock().expect("registry lock").remove(call);
    }

    pub fn call_count(&self) -> usize {
        self.calls.lock().expect("registry lock").len()
    }

    pub fn call_actors(&self) -> Vec<ActorRef<CallMsg>> {
        self.calls
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    async fn handle_request(self: Arc<Self>, request: Request) -> Response {
        match request {
            Request::Agent {
                tenant,
                agent,
                command,
            } => {
                // Like a mesh envelope: a rejoined node serves an agent it gains only once the
                // old owner's lease ran out, so its session is the last one committed.
                let serve_after = *self.serve_after.lock().expect("serve lock");
                if let Some(at) = serve_after {
                    tokio::time::sleep_until(at).await;
                }
                let Some(actor) = self.agent_actor(&tenant, &agent).await else {
                    return Response::Agent(Err(format!("agent {tenant}/{agent} does not exist")));
                };
                match ractor::call_t!(
                    actor,
                    AgentMsg::Command,
                    ASK_TIMEOUT.as_millis() as u64,
                    command
                ) {
                    Ok(result) => Response::Agent(result),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::Requeue { call, change } => {
                let actor = self
                    .calls
                    .lock()
                    .expect("registry lock")
                    .get(&call)
                    .cloned();
                let Some(actor) = actor else {
                    return Response::Requeue(Err(format!("call {call} is not live on this node")));
                };
                match ractor::call_t!(
                    actor,
                    CallMsg::Requeue,
                    ASK_TIMEOUT.as_millis() as u64,
                    change
                ) {
                    Ok(result) => Response::Requeue(result),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::QueueStatus { tenant, queue } => {
                let Some(actor) = self.queue_actor(&tenant, &queue).await else {
                    return Response::QueueStatus(None);
                };
                match ractor::call_t!(actor, QueueMsg::Status, ASK_TIMEOUT.as_millis() as u64) {
                    Ok(status) => Response::QueueStatus(Some(status)),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
        }
    }
}

impl Runtime {
    /// Hands an envelope to its local actor (spawning it if this node owns it). Runs on the
    /// node's one dispatcher task, so envelopes keep their order: an Enqueue is never overtaken
    /// by the Remove that follows it.
    async fn route(self: Arc<Self>, envelope: Envelope) {
        if matches!(envelope, Envelope::Queue { .. } | Envelope::Agent { .. }) {
            let serve_after = *self.serve_after.lock().expect("serve lock");
            if let Some(at) = serve_after {
                // Rejoined: wait out the leases of the nodes that held our actors meanwhile.
                tokio::time::sleep_until(at).await;
            }
        }
        match envelope {
            Envelope::Queue {
                tenant,
                queue,
                input,
            } => {
                if self.queue_owner(&tenant, &queue) != self.node_id() {
                    // Membership changed while the envelope travelled: pass it on.
                    return self.send_queue(&tenant, &queue, input);
                }
                if let crate::queue::QueueInput::Enqueue {
                    call, call_node, ..
                } = &input
                {
                    // From a node declared down that does not know it yet: its call is another
                    // node's now (or re-joins once its node is back); this Enqueue would point
                    // the queue back at the zombie and clear the new owner's offer.
                    if *call_node != self.node_id() && self.cluster.read(|s| s.is_down(*call_node))
                    {
                        debug!(%call, call_node, "Enqueue from a node declared down dropped");
                        return;
                    }
                }
                match self.queue_actor(&tenant, &queue).await {
                    Some(actor) => drop(actor.cast(QueueMsg::Input(input))),
                    None => debug!(%tenant, %queue, "envelope for an unknown queue dropped"),
                }
            }
            Envelope::Agent {
                tenant,
                agent,
                input,
            } => {
                if self.agent_owner(&tenant, &agent) != self.node_id() {
                    return self.send_agent(&tenant, &agent, input);
                }
                match self.agent_actor(&tenant, &agent).await {
                    Some(actor) => drop(actor.cast(AgentMsg::Mesh(input))),
                    None => debug!(%tenant, %agent, "envelope for an unknown agent dropped"),
                }
            }
            Envelope::Call { call, input } => {
                let mut actor = self
                    .calls
                    .lock()
                    .expect("registry lock")
                    .get(&call)
                    .cloned();
                if actor.is_none() {
                    // Its node may be down with the takeover not yet started here.
                    actor = self.take_over_call(&call).await;
                }
                match (actor, input) {
                    (Some(actor), input) => drop(actor.cast(CallMsg::Mesh(input))),
                    (
                        None,
                        CallEnvelope::Offer {
                            tenant,
                            queue,
                            agent,
                            ..
                        },
                    ) => {
                        // The call is gone: refuse the offer so the agent and queue move on.
                        self.send_agent(
                            &tenant,
                            &agent,
                            AgentEnvelope::Notice {
                                call: call.clone(),
                                notice: crate::call::AgentNotice::Failed { no_answer: false },
                            },
                        );
                        self.send_queue(
                            &tenant,
                            &queue,
                            crate::queue::QueueInput::OfferDone {
                                call: call.clone(),
                                agent,
                                answered: false,
                            },
                        );
                        // Nobody hosts it here and no checkpoint rebuilds it (gone, or ended
                        // with its CDR still pending): it will never answer an offer, so it
                        // leaves the line. A live call elsewhere re-joins by its periodic
                        // Enqueue (a call kept by a node declared down, once that node is back).
                        self.send_queue(&tenant, &queue, crate::queue::QueueInput::Remove { call });
                    }
                    // The call is gone: the queue did not take it in, nothing to undo.
                    (None, CallEnvelope::TurnedAway { queue, .. }) => {
                        debug!(%call, %queue, "turned-away notice for a call not hosted here")
                    }
                    (None, CallEnvelope::WaitEstimate { .. }) => {}
                }
            }
            Envelope::Event { event } => self.publish(*event),
            Envelope::QueueStats {
                tenant,
                queue,
                owner,
                stats,
                at_ms,
            } => {
                if !stats.answered_at_ms.is_empty() {
                    self.queue_answers
                        .lock()
                        .expect("queue answers lock")
                        .insert(
                            model::state::key(&tenant, queue.as_str()),
                            stats.answered_at_ms.clone(),
                        );
                }
                self.publish(Event::Queue {
                    tenant,
                    queue,
                    owner,
                    stats,
                    at_ms,
                });
            }
            // Unwrapped (or passed on) in `deliver`, before dispatch.
            Envelope::Relay { node, .. } => debug!(node, "relay envelope in dispatch ignored"),
        }
    }
}

impl Runtime {
    /// Rebuilds the call here if its checkpoint's owner is down and this node is the one to
    /// take it over (the same rendezvous answer on every node).
    async fn take_over_call(self: &Arc<Self>, call: &CallId) -> Option<ActorRef<CallMsg>> {
        let (checkpoint, dead_since, stale) = self.cluster.read(|s| {
            let c = s.calls.get(call.as_str())?;
            s.orphaned(c)
                .map(|(since, stale)| (CallCheckpoint::clone(c), since, stale))
        })?;
        if self.orphan_taker(&checkpoint, stale) != Some(self.node_id()) {
            return None;
        }
        self.spawn_takeover(checkpoint, dead_since).await
    }

    /// The node that takes over an orphaned call: placement's answer while its owner is
    /// down; if the owner rejoined (`stale` fence), one of the other live voters.
    fn orphan_taker(&self, c: &CallCheckpoint, stale: bool) -> Option<NodeId> {
        if stale {
            let others = self.voters().into_iter().filter(|n| *n != c.fence.node);
            placement::owner(&placement::call_key(&c.call_id), others)
        } else {
            Some(self.call_owner(&c.call_id, c.fence.node))
        }
    }

    async fn spawn_takeover(
        self: &Arc<Self>,
        checkpoint: CallCheckpoint,
        dead_since_ms: u64,
    ) -> Option<ActorRef<CallMsg>> {
        let call = checkpoint.call_id.clone();
        if let Some(actor) = self.calls.lock().expect("registry lock").get(&call) {
            return Some(actor.clone());
        }
        let actor = call_actor::CallActor {
            runtime: Arc::clone(self),
        };
        match Actor::spawn(
            None,
            actor,
            call_actor::CallArgs::Takeover {
                checkpoint: Box::new(checkpoint),
                dead_since_ms,
            },
        )
        .await
        {
            Ok((actor, _)) => Some(actor),
            Err(error) => {
                warn!(%call, %error, "takeover failed");
                None
            }
        }
    }

    /// A node was declared down: take over the calls, agents and queues placement now gives
    /// this node, and tell every local queued call to re-join its queue (its owner may have
    /// changed). Runs on every node, each taking its share.
    async fn on_node_down(self: &Arc<Self>, dead: NodeId) {
        if dead == self.node_id() {
            return self.on_declared_down().await;
        }
        info!(dead, "node down");
        self.take_over_orphans(false).await;
    }

    /// Takes over this node's share of everything whose owner is down: calls (from their
    /// checkpoints), signed-in agents and queues (spawned, so their timers run), and has every
    /// local call re-state its queue place. After a node-down, and after a DR restore.
    ///
    /// A call is orphaned when its owner is down, or when its checkpoint is fenced with an
    /// epoch its owner has since left (the owner was declared down, dropped it and rejoined
    /// before this node reacted: the NodeDown alone would find the owner up again); such a
    /// call goes to the live voters other than its old owner. With `include_own` (start-up
    /// with a lease, DR restore) the calls still checkpointed as this node's that no actor
    /// here runs are resumed too; never otherwise, since such a call may have just ended
    /// with its CDR not yet committed.
    pub(crate) async fn take_over_orphans(self: &Arc<Self>, include_own: bool) {
        let me = self.node_id();
        // Every call whose owner is down, not only the dead node's: when several nodes die
        // (a site), a call placed on a node declared down a moment later must move again.
        let hosted: std::collections::HashSet<CallId> = self
            .calls
            .lock()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect();
        let (calls, sessions, queues) = self.cluster.read(|s| {
            let calls: Vec<(CallCheckpoint, u64, bool)> = s
                .calls
                .values()
                // The Raft bench's synthetic checkpoints are not calls.
                .filter(|c| !model::bench::is_synthetic(c.call_id.as_str()))
                .filter_map(|c| {
                    if let Some((since, stale)) = s.orphaned(c) {
                        return Some((CallCheckpoint::clone(c), since, stale));
                    }
                    // Ours but not running here: this process restarted (a restart, or a DR
                    // takeover's new lineage) and the call is still checkpointed as ours.
                    (include_own && c.fence.node == me && !hosted.contains(&c.call_id))
                        .then(|| (CallCheckpoint::clone(c), c.at_ms, false))
                })
                .collect();
            let sessions: Vec<(TenantId, AgentId)> = s
                .agent_sessions
                .values()
                .filter(|a| a.status != model::AgentStatus::SignedOut)
                .map(|a| (a.tenant.clone(), a.agent.clone()))
                .collect();
            let queues: Vec<(TenantId, QueueId)> = s
                .queues
                .values()
                .map(|q| (q.tenant.clone(), q.id.clone()))
                .collect();
            (calls, sessions, queues)
        });
        info!(
            orphaned_calls = calls.len(),
            "taking over this node's share"
        );
        for (c, dead_since, stale) in calls {
            if self.orphan_taker(&c, stale) == Some(me) && !hosted.contains(&c.call_id) {
                self.spawn_takeover(c, dead_since).await;
            }
        }
        for (tenant, agent) in sessions {
            if self.agent_owner(&tenant, &agent) == me {
                self.agent_actor(&tenant, &agent).await;
            }
        }
        for (tenant, queue) in queues {
            if self.queue_owner(&tenant, &queue) == me {
                self.queue_actor(&tenant, &queue).await;
            }
        }
        self.resync_calls();
    }

    /// Every local call re-states its queue place to the queue's (possibly new) owner.
    fn resync_calls(&self) {
        for call in self.call_actors() {
            let _ = call.cast(CallMsg::Resync);
        }
    }

    /// The cluster declared this node down (it was cut off or too slow): its calls, queues
    /// and agents now belong to other nodes. Drop them without a word, then rejoin.
    async fn on_declared_down(self: &Arc<Self>) {
        // Calls the cluster knows (a checkpoint or a CDR) are another node's now. A call no
        // checkpoint of which was committed yet (answered a moment ago, or not answered) is
        // known to nobody else: it stays here and is checkpointed again once this node has
        // rejoined (its pending checkpoints carry the old epoch and are refused).
        let hosted: Vec<(CallId, ActorRef<CallMsg>)> = self
            .calls
            .lock()
            .expect("registry lock")
            .iter()
            .map(|(id, call)| (id.clone(), call.clone()))
            .collect();
        let known: std::collections::HashSet<CallId> = self.cluster.read(|s| {
            hosted
                .iter()
                .filter(|(id, _)| {
                    let key = id.to_string();
                    s.calls.contains_key(&key) || s.cdrs.contains_key(&key)
                })
                .map(|(id, _)| id.clone())
                .collect()
        });
        warn!(
            abandoned = known.len(),
            kept = hosted.len() - known.len(),
            "this node was declared down: dropping its actors and rejoining"
        );
        for (id, call) in &hosted {
            if known.contains(id) {
                let _ = call.cast(CallMsg::Abandon);
            }
        }
        self.stop_actors_not_owned(true);
        if self
            .rejoining
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let rt = Arc::clone(self);
        tokio::spawn(async move {
            let me = rt.node_id();
            let mut attempt = 0u32;
            while rt.cluster.read(|s| s.is_down(me)) {
                let at_ms = rt.now_ms();
                match rt
                    .cluster
                    .write(model::Command::NodeUp { node: me, at_ms })
                    .await
                {
                    Ok(_) => {}
                    Err(error) => debug!(%error, attempt, "rejoin not committed yet"),
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            rt.rejoining
                .store(false, std::sync::atomic::Ordering::SeqCst);
            // The calls kept through the rejoin write their checkpoint again, now fenced
            // with the new epoch, and re-state their queue place.
            for call in rt.call_actors() {
                let _ = call.cast(CallMsg::Recheckpoint);
            }
            info!("rejoined the cluster");
        });
    }

    /// A node rejoined: hand it the queue and agent actors placement gives it back; if it is
    /// this node, serve gained actors only after the others' leases ran out.
    fn on_node_up(self: &Arc<Self>, node: NodeId) {
        if node == self.node_id() {
            let wait = Duration::from_millis(self.config.lease.lease_ms);
            *self.serve_after.lock().expect("serve lock") =
                Some(tokio::time::Instant::now() + wait);
        }
        self.stop_actors_not_owned(false);
        self.resync_calls();
    }

    /// After a snapshot from the leader (or a lagging event stream) replaced the state
    /// without per-command events: act as at start-up on what it says.
    async fn reconcile(self: &Arc<Self>) {
        if self.cluster.read(|s| s.is_down(self.node_id())) {
            self.on_declared_down().await;
        }
        self.take_over_orphans(false).await;
    }

    /// Stops local queue and agent actors this node no longer owns (all of them if `all`).
    /// Their state lives in Raft (agent sessions, call checkpoints), so the new owner rebuilds
    /// them.
    fn stop_actors_not_owned(&self, all: bool) {
        let me = self.node_id();
        let voters = self.voters();
        let owned = |key: &str| {
            !all && placement::owner(key, voters.clone()).is_none_or(|owner| owner == me)
        };
        let mut queues = self.queues.lock().expect("registry lock");
        queues.retain(|key, actor| {
            let keep = owned(&format!("queue/{key}"));
            if !keep {
                actor.stop(Some("owner changed".into()));
            }
            keep
        });
        drop(queues);
        let mut agents = self.agents.lock().expect("registry lock");
        agents.retain(|key, actor| {
            let keep = owned(&format!("agent/{key}"));
            if !keep {
                actor.stop(Some("owner changed".into()));
            }
            keep
        });
    }
}

impl Dispatch for Runtime {
    fn deliver(self: Arc<Self>, envelope: Envelope) {
        let envelope = match envelope {
            Envelope::Relay { node, envelope } if node == self.node_id() => *envelope,
            Envelope::Relay { node, envelope } => {
                // One hop only: a relay that cannot reach the node either drops it (the
                // sender's timeouts and periodic resyncs take over).
                if !self.mesh.cast(node, &envelope) {
                    debug!(node, "mesh: relayed envelope undeliverable");
                }
                return;
            }
            envelope => envelope,
        };
        if self.dispatch.send(envelope).is_err() {
            debug!("dispatcher stopped; envelope dropped");
        }
    }

    fn ask(self: Arc<Self>, request: Request) -> futures::future::BoxFuture<'static, Response> {
        Box::pin(self.handle_request(request))
    }
}

/// Which node holds a recording: ids are call ids, which start with the node id.
pub fn recording_node(id: &str) -> Option<NodeId> {
    id.split('-').next()?.parse().ok()
}

/// A running node: the handle the daemon and the API hold.
pub struct Node {
    runtime: Arc<Runtime>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    mesh_server: ActorRef<ractor_cluster::NodeServerMessage>,
}

impl Node {
    pub async fn start(config: NodeConfig, cluster: Arc<Cluster>) -> Result<Arc<Node>, NodeError> {
        let (events, _) = broadcast::channel(4096);
        let (dispatch, mut dispatched) = tokio::sync::mpsc::unbounded_channel();
        let media_ports =
            media::session::PortAllocator::new(config.rtp_port_min, config.rtp_port_max);
        config.lease.validate().map_err(NodeError::Cluster)?;
        config.admission.validate().map_err(NodeError::Cluster)?;
        let (loop_lag, lag_task) = admission::LoopLag::start();
        let liveness = Liveness::start(Arc::clone(&cluster), config.lease);
        let (checkpoints, checkpoint_task) = checkpoints::Checkpointer::start(Arc::clone(&cluster));
        let runtime = Arc::new(Runtime {
            mesh: MeshClient {
                node_id: config.node_id,
                faults: cluster.faults().clone(),
            },
            config,
            cluster,
            queues: Mutex::default(),
            queue_answers: Mutex::default(),
            agents: Mutex::default(),
            calls: Mutex::default(),
            tenant_configs: Default::default(),
            live: Mutex::default(),
            events,
            endpoint: std::sync::OnceLock::new(),
            dispatch,
            media_ports,
            call_counter: std::sync::atomic::AtomicU64::new(1),
            liveness,
            checkpoints,
            loop_lag,
            serve_after: Mutex::new(None),
            rejoining: std::sync::atomic::AtomicBool::new(false),
        });
        let mut tasks = vec![checkpoint_task, lag_task];
        let dispatcher = Arc::downgrade(&runtime);
        tasks.push(tokio::spawn(async move {
            while let Some(envelope) = dispatched.recv().await {
                let Some(rt) = dispatcher.upgrade() else {
                    return;
                };
                rt.route(envelope).await;
            }
        }));

        // The mesh: our actor, its group, the ractor_cluster node server, and dialling.
        let mesh_actor = MeshActor {
            dispatch: Arc::downgrade(&runtime),
        };
        let (mesh_ref, _) = Actor::spawn(
            Some(format!("callgrid.mesh.actor.{}", runtime.node_id())),
            mesh_actor,
            (),
        )
        .await
        .map_err(|e| NodeError::Cluster(format!("mesh actor: {e}")))?;
        ractor::pg::join(
            mesh::group_name(runtime.node_id()),
            vec![mesh_ref.get_cell()],
        );
        let server = ractor_cluster::NodeServer::new(
            runtime.config.mesh_addr.port(),
            runtime.config.mesh_cookie.clone(),
            format!("callgrid-{}", runtime.node_id()),
            runtime.config.mesh_addr.ip().to_string(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(runtime.config.mesh_addr.ip());
        let (mesh_server, _) = Actor::spawn(None, server, ()).await.map_err(|e| {
            NodeError::Cluster(format!("mesh server on {}: {e}", runtime.config.mesh_addr))
        })?;
        tasks.push(tokio::spawn(dial_peers(
            Arc::clone(&runtime),
            mesh_server.clone(),
        )));

        // SIP.
        let endpoint = endpoint::start(Arc::clone(&runtime)).await?;
        let _ = runtime.endpoint.set(endpoint);

        // Agent-state events come from Raft, so every node streams every agent's changes.
        tasks.push(tokio::spawn(publish_applied(Arc::clone(&runtime))));
        // After a restart, the calls still checkpointed as this node's are resumed here; a
        // node that finds itself declared down (while it was away, or a DR failback that
        // re-added it) rejoins.
        let resume = Arc::clone(&runtime);
        tasks.push(tokio::spawn(async move {
            loop {
                match resume.cluster.wait_ready(Duration::from_secs(60)).await {
                    Ok(()) => break,
                    Err(cluster::ClusterError::Timeout { .. }) => {
                        debug!("no leader yet: waiting to resume and rejoin")
                    }
                    Err(_) => return,
                }
            }
            // Resume its own calls only under a lease: a restarted follower's view may be
            // stale, and another node may have taken them over already.
            loop {
                if resume.cluster.read(|s| s.is_down(resume.node_id())) {
                    resume.on_declared_down().await;
                    resume.take_over_orphans(false).await;
                    return;
                }
                if resume.holds_lease() {
                    resume.take_over_orphans(true).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        info!(node = runtime.node_id(), sip = %runtime.config.sip_addr, "node runtime started");
        Ok(Arc::new(Node {
            runtime,
            tasks,
            mesh_server,
        }))
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The voting peers this node's actor mesh cannot reach right now. Empty means every
    /// cross-node actor message has a route (what `cluster up` waits for).
    pub fn mesh_missing(&self) -> Vec<NodeId> {
        let me = self.runtime.node_id();
        self.runtime
            .voters()
            .into_iter()
            .filter(|n| *n != me && ractor::pg::get_members(&mesh::group_name(*n)).is_empty())
            .collect()
    }

    pub async fn agent_command(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        command: AgentCommand,
    ) -> Result<AgentSession, NodeError> {
        if self
            .runtime
            .cluster
            .read(|s| s.agent(tenant, agent).is_none())
        {
            return Err(NodeError::NotFound(format!("agent {tenant}/{agent}")));
        }
        let owner = self.runtime.agent_owner(tenant, agent);
        let request = Request::Agent {
            tenant: tenant.clone(),
            agent: agent.clone(),
            command,
        };
        let response = if owner == self.runtime.node_id() {
            Arc::clone(&self.runtime).handle_request(request).await
        } else {
            self.runtime.mesh.ask(owner, &request, ASK_TIMEOUT).await?
        };
        match response {
            Response::Agent(Ok(session)) => Ok(session),
            Response::Agent(Err(refusal)) => Err(NodeError::Refused(refusal)),
            Response::Error(e) => Err(NodeError::Timeout(format!("agent {tenant}/{agent}: {e}"))),
            Response::QueueStatus(_) | Response::Requeue(_) => {
                Err(NodeError::Cluster("mismatched answer".into()))
            }
        }
    }

    /// R3.10: changes the queues live call `call` waits in, on the call's node.
    pub async fn requeue_call(
        &self,
        call: &CallId,
        change: api::Requeue,
    ) -> Result<Vec<QueueId>, NodeError> {
        let owner = self
            .runtime
            .cluster
            .read(|s| s.calls.get(call.as_str()).map(|c| c.fence.node))
            .ok_or_else(|| NodeError::NotFound(format!("live call {call}")))?;
        let request = Request::Requeue {
            call: call.clone(),
            change,
        };
        let response = if owner == self.runtime.node_id() {
            Arc::clone(&self.runtime).handle_request(request).await
        } else {
            self.runtime.mesh.ask(owner, &request, ASK_TIMEOUT).await?
        };
        match response {
            Response::Requeue(Ok(queues)) => Ok(queues),
            Response::Requeue(Err(refusal)) => Err(NodeError::Refused(refusal)),
            Response::Error(e) => Err(NodeError::Timeout(format!("call {call}: {e}"))),
            _ => Err(NodeError::Cluster("mismatched answer".into())),
        }
    }

    pub fn agent_view(&self, tenant: &TenantId, agent: &AgentId) -> Result<AgentView, NodeError> {
        let owner = self.runtime.agent_owner(tenant, agent);
        self.runtime
            .cluster
            .read(|s| {
                s.agent(tenant, agent).map(|a| {
                    let session = s.agent_session(tenant, agent).cloned();
                    AgentView {
                        tenant: tenant.clone(),
                        agent: agent.clone(),
                        name: a.name.clone(),
                        skills: a.skills.clone(),
                        role: a.role,
                        takes_calls: a.takes_calls,
                        tags: a.tags.clone(),
                        levels: a.levels.clone(),
                        group: a.group.clone(),
                        hotline: a.hotline.clone(),
                        permissions: a.permissions.clone(),
                        effective_permissions: a.permissions(),
                        state: session
                            .as_ref()
                            .map_or("signed_out", |s| s.status.name())
                            .to_string(),
                        session,
                        owner,
                    }
                })
            })
            .ok_or_else(|| NodeError::NotFound(format!("agent {tenant}/{agent}")))
    }

    /// R4.9: the agent-state view of `tenant`'s agents, of one `group` or one `queue` if
    /// given.
    pub fn agent_states(
        &self,
        tenant: &TenantId,
        group: Option<&str>,
        queue: Option<&QueueId>,
    ) -> Result<AgentStates, NodeError> {
        let now = self.runtime.now_ms();
        self.runtime.cluster.read(|s| {
            if !s.tenants.contains_key(tenant.as_str()) {
                return Err(NodeError::NotFound(format!("tenant {tenant}")));
            }
            if let Some(q) = queue {
                s.queue(tenant, q)
                    .ok_or_else(|| NodeError::NotFound(format!("queue {tenant}/{q}")))?;
            }
            let mut counts: std::collections::BTreeMap<String, usize> = [
                "signed_out",
                "not_ready",
                "ready",
                "reserved",
                "ringing",
                "talking",
                "after_call_work",
                "away",
            ]
            .into_iter()
            .map(|state| (state.to_string(), 0))
            .collect();
            let mut agents: Vec<AgentStateRow> = s
                .agents
                .values()
                .filter(|a| &a.tenant == tenant)
                .filter(|a| group.is_none_or(|g| a.group.as_deref() == Some(g)))
                .filter(|a| queue.is_none_or(|q| a.serving_queues().contains(q)))
                .map(|a| {
                    let session = s.agent_session(tenant, &a.id);
                    let status =
                        session.map_or(model::AgentStatus::SignedOut, |x| x.status.clone());
                    let since_ms = session.map_or(0, |x| x.since_ms);
                    let in_state_ms = match status {
                        model::AgentStatus::SignedOut => 0,
                        _ => now.saturating_sub(since_ms),
                    };
                    let mut state_ms = session.map(|x| x.state_ms.clone()).unwrap_or_default();
                    if in_state_ms > 0 {
                        *state_ms.entry(status.name().to_string()).or_default() += in_state_ms;
                    }
                    let reason = match &status {
                        model::AgentStatus::NotReady { reason } => Some(reason.clone()),
                        model::AgentStatus::Away { reason, .. } => Some(reason.name().to_string()),
                        _ => None,
                    };
                    *counts.entry(status.name().to_string()).or_default() += 1;
                    AgentStateRow {
                        agent: a.id.clone(),
                        name: a.name.clone(),
                        group: a.group.clone(),
                        state: status.name().to_string(),
                        reason,
                        since_ms,
                        in_state_ms,
                        calls_answered: session.map_or(0, |x| x.calls_answered),
                        talk_ms: state_ms.get("talking").copied().unwrap_or(0),
                        state_ms,
                    }
                })
                .collect();
            agents.sort_by(|a, b| a.agent.as_str().cmp(b.agent.as_str()));
            Ok(AgentStates {
                tenant: tenant.clone(),
                at_ms: now,
                counts,
                agents,
            })
        })
    }

    pub fn agent_views(&self, tenant: &TenantId) -> Vec<AgentView> {
        let ids: Vec<AgentId> = self.runtime.cluster.read(|s| {
            s.agents
                .values()
                .filter(|a| &a.tenant == tenant)
                .map(|a| a.id.clone())
                .collect()
        });
        ids.iter()
            .filter_map(|a| self.agent_view(tenant, a).ok())
            .collect()
    }

    pub async fn queue_view(
        &self,
        tenant: &TenantId,
        queue: &QueueId,
    ) -> Result<QueueView, NodeError> {
        let name = self
            .runtime
            .cluster
            .read(|s| s.queue(tenant, queue).map(|q| q.name.clone()))
            .ok_or_else(|| NodeError::NotFound(format!("queue {tenant}/{queue}")))?;
        let owner = self.runtime.queue_owner(tenant, queue);
        let request = Request::QueueStatus {
            tenant: tenant.clone(),
            queue: queue.clone(),
        };
        let response = if owner == self.runtime.node_id() {
            Arc::clone(&self.runtime).handle_request(request).await
        } else {
            self.runtime.mesh.ask(owner, &request, ASK_TIMEOUT).await?
        };
        let stats = match response {
            Response::QueueStatus(Some((stats, _))) => stats,
            Response::QueueStatus(None) => Default::default(),
            Response::Error(e) => {
                return Err(NodeError::Timeout(format!("queue {tenant}/{queue}: {e}")))
            }
            Response::Agent(_) | Response::Requeue(_) => {
                return Err(NodeError::Cluster("mismatched answer".into()))
            }
        };
        let now = self.runtime.now_ms();
        let agents = self.runtime.cluster.read(|s| {
            s.agents
                .values()
                .filter(|a| &a.tenant == tenant && a.serving_queues().contains(queue))
                .filter(|a| {
                    s.agent_session(tenant, &a.id)
                        .is_some_and(|x| x.status != model::AgentStatus::SignedOut)
                })
                .count()
        });
        Ok(QueueView {
            tenant: tenant.clone(),
            queue: queue.clone(),
            name,
            owner,
            waiting: stats.waiting,
            longest_wait_ms: stats
                .oldest_enqueued_at_ms
                .map_or(0, |t| now.saturating_sub(t)),
            agents,
            idle_agents: stats.agents_available,
            stats,
        })
    }

    pub async fn queue_views(&self, tenant: &TenantId) -> Vec<QueueView> {
        let ids: Vec<QueueId> = self.runtime.cluster.read(|s| {
            s.queues
                .values()
                .filter(|q| &q.tenant == tenant)
                .map(|q| q.id.clone())
                .collect()
        });
        let mut views = Vec::new();
        for q in ids {
            if let Ok(v) = self.queue_view(tenant, &q).await {
                views.push(v);
            }
        }
        views
    }

    pub fn live_calls(&self) -> Vec<LiveCall> {
        call_actor::live_calls(&self.runtime)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.runtime.events.subscribe()
    }

    pub fn recording_path(&self, id: &str) -> Option<PathBuf> {
        // Ids are call ids: `<node>-<n>-<hex>`; anything else cannot name a file of ours.
        let safe = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let path = call_actor::recording_dir(&self.runtime).join(format!("{id}.wav"));
        (safe && path.is_file()).then_some(path)
    }

    pub async fn shutdown(&self) {
        self.runtime.liveness.stop();
        for call in self.runtime.call_actors() {
            call.stop(Some("node shutting down".into()));
        }
        for task in &self.tasks {
            task.abort();
        }
        self.mesh_server.stop(None);
    }
}

/// Keeps the mesh connected: dial every lower-id peer whose mesh group we cannot see. Peers
/// are the committed Raft membership (voters and learners: a node re-added by DR failback
/// is reached without restarting anyone) plus the configured initial voters.
async fn dial_peers(rt: Arc<Runtime>, server: ActorRef<ractor_cluster::NodeServerMessage>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let mut peers = rt.config.peers.clone();
        peers.extend(rt.cluster.members());
        for (id, info) in peers.iter().filter(|(id, _)| **id < rt.node_id()) {
            if !ractor::pg::get_members(&mesh::group_name(*id)).is_empty() {
                continue;
            }
            match ractor_cluster::client_connect(&server, info.mesh_addr.as_str()).await {
                Ok(()) => info!(peer = id, "mesh: connected"),
                Err(error) => debug!(peer = id, %error, "mesh: peer not reachable yet"),
            }
        }
    }
}

async fn publish_applied(rt: Arc<Runtime>) {
    let mut applied = rt.cluster.subscribe();
    loop {
        match applied.recv().await {
            Ok(a) if a.snapshot => rt.reconcile().await,
            Ok(a) => {
                publish_command(&rt, &a.command);
                react(&rt, &a.command).await;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(n, "event stream lagged behind Raft: re-reading the state");
                rt.reconcile().await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Ownership changes committed through Raft, acted on in log order.
async fn react(rt: &Arc<Runtime>, command: &model::Command) {
    match command {
        model::Command::NodeDown { node, .. } => rt.on_node_down(*node).await,
        model::Command::NodeUp { node, .. } => {
            rt.on_node_up(*node);
            if *node != rt.node_id() {
                // Its old calls, fenced out now, may have had no taker yet.
                rt.take_over_orphans(false).await;
            }
        }
        // A restore (DR takeover) marks the lost nodes down; one of them re-added by failback
        // catches up with it and must rejoin.
        model::Command::Restore { .. } if rt.cluster.read(|s| s.is_down(rt.node_id())) => {
            rt.on_declared_down().await
        }
        model::Command::Restore { .. } => rt.take_over_orphans(true).await,
        // R3.18, R3.19: a signed-in agent's new skills or role apply live, on its owner.
        model::Command::Create {
            item: model::ConfigItem::Agent(a),
        }
        | model::Command::Update {
            item: model::ConfigItem::Agent(a),
        } => {
            let actor = rt
                .agents
                .lock()
                .expect("registry lock")
                .get(&model::state::key(&a.tenant, a.id.as_str()))
                .cloned();
            if let Some(actor) = actor {
                let _ = actor.cast(AgentMsg::Serving(a.serving_queues()));
            }
        }
        model::Command::Batch { commands } => {
            for c in commands {
                Box::pin(react(rt, c)).await;
            }
        }
        model::Command::Group { commands } => {
            for c in commands {
                Box::pin(react(rt, c)).await;
            }
        }
        _ => {}
    }
}

fn publish_command(rt: &Runtime, command: &model::Command) {
    match command {
        model::Command::PutAgentSession { session } => rt.publish(Event::AgentState {
            tenant: session.tenant.clone(),
            agent: session.agent.clone(),
            state: session.status.name().to_string(),
            session: session.clone(),
            at_ms: session.since_ms,
        }),
        model::Command::RecordCdr { cdr, .. } => rt.publish(Event::CallEnded {
            call_id: cdr.call_id.clone(),
            tenant: cdr.tenant.clone(),
            disposition: cdr.disposition,
            at_ms: cdr.ended_at_ms,
        }),
        model::Command::Batch { commands } => commands.iter().for_each(|c| publish_command(rt, c)),
        model::Command::Group { commands } => commands.iter().for_each(|c| publish_command(rt, c)),
        _ => {}
    }
}
