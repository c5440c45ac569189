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

pub mod agent_actor;
pub mod api;
pub mod call_actor;
pub mod endpoint;
pub mod mesh;
pub mod placement;
mod prompts;
pub mod queue_actor;
mod registrar;
mod sip_legs;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use cluster::{Cluster, NodeInfo};
use model::{AgentId, AgentSession, CallId, NodeId, QueueId, TenantId};

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
}

/// What all drivers of a node share.
pub struct Runtime {
    pub config: NodeConfig,
    pub cluster: Arc<Cluster>,
    mesh: MeshClient,
    queues: Mutex<HashMap<String, ActorRef<QueueMsg>>>,
    agents: Mutex<HashMap<String, ActorRef<AgentMsg>>>,
    calls: Mutex<HashMap<CallId, ActorRef<CallMsg>>>,
    /// What the API shows of this node's calls; each call actor keeps its entry current.
    pub(crate) live: Mutex<HashMap<CallId, LiveCall>>,
    events: broadcast::Sender<Event>,
    endpoint: std::sync::OnceLock<endpoint::EndpointHandle>,
    /// Envelopes for local actors, from the mesh and from this node, in arrival order.
    dispatch: tokio::sync::mpsc::UnboundedSender<Envelope>,
    pub media_ports: media::session::PortAllocator,
    call_counter: std::sync::atomic::AtomicU64,
}

impl Runtime {
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Wall-clock Unix milliseconds: the time base of checkpoints and CDRs.
    pub fn now_ms(&self) -> u64 {
        model::unix_ms(std::time::SystemTime::now())
    }

    /// The voting nodes placement hashes over (from the replicated membership).
    pub fn voters(&self) -> Vec<NodeId> {
        let voters: Vec<NodeId> = self.cluster.status().voters.keys().copied().collect();
        if voters.is_empty() {
            self.config.peers.keys().copied().collect()
        } else {
            voters
        }
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
            node,
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
        } else if !self.mesh.cast(node, &envelope) {
            warn!(node, "mesh: envelope for an unreachable node dropped");
        }
    }

    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Replicates an agent session. Fire and forget with retries: versions make late or
    /// repeated writes harmless.
    pub fn checkpoint_agent(self: &Arc<Self>, session: AgentSession) {
        let rt = Arc::clone(self);
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                match rt
                    .cluster
                    .write(model::Command::PutAgentSession {
                        session: session.clone(),
                    })
                    .await
                {
                    Ok(_) => return,
                    Err(error) => {
                        warn!(%error, attempt, agent = %session.agent, "agent checkpoint failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
        });
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
                let actor = self
                    .calls
                    .lock()
                    .expect("registry lock")
                    .get(&call)
                    .cloned();
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
                                call,
                                agent,
                                answered: false,
                            },
                        );
                    }
                }
            }
            Envelope::QueueStats {
                tenant,
                queue,
                owner,
                stats,
                at_ms,
            } => {
                self.publish(Event::Queue {
                    tenant,
                    queue,
                    owner,
                    stats,
                    at_ms,
                });
            }
        }
    }
}

impl Dispatch for Runtime {
    fn deliver(self: Arc<Self>, envelope: Envelope) {
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
        let runtime = Arc::new(Runtime {
            mesh: MeshClient {
                node_id: config.node_id,
            },
            config,
            cluster,
            queues: Mutex::default(),
            agents: Mutex::default(),
            calls: Mutex::default(),
            live: Mutex::default(),
            events,
            endpoint: std::sync::OnceLock::new(),
            dispatch,
            media_ports,
            call_counter: std::sync::atomic::AtomicU64::new(1),
        });
        let mut tasks = Vec::new();
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
            Response::QueueStatus(_) => Err(NodeError::Cluster("mismatched answer".into())),
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
            Response::Agent(_) => return Err(NodeError::Cluster("mismatched answer".into())),
        };
        let now = self.runtime.now_ms();
        let agents = self.runtime.cluster.read(|s| {
            s.agents
                .values()
                .filter(|a| &a.tenant == tenant && a.skills.contains(queue))
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
        for call in self.runtime.call_actors() {
            call.stop(Some("node shutting down".into()));
        }
        for task in &self.tasks {
            task.abort();
        }
        self.mesh_server.stop(None);
    }
}

/// Keeps the mesh connected: dial every lower-id peer whose mesh group we cannot see.
async fn dial_peers(rt: Arc<Runtime>, server: ActorRef<ractor_cluster::NodeServerMessage>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for (id, info) in rt.config.peers.iter().filter(|(id, _)| **id < rt.node_id()) {
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
            Ok(a) => publish_command(&rt, &a.command),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(n, "event stream lagged behind Raft")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
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
        model::Command::RecordCdr { cdr } => rt.publish(Event::CallEnded {
            call_id: cdr.call_id.clone(),
            tenant: cdr.tenant.clone(),
            disposition: cdr.disposition,
            at_ms: cdr.ended_at_ms,
        }),
        model::Command::Batch { commands } => commands.iter().for_each(|c| publish_command(rt, c)),
        _ => {}
    }
}
