//! One simulated callgrid node: the same pure machines the real node drives
//! (`QueueMachine`, `AgentMachine`, `CallMachine`) and the same decisions its drivers make
//! (`actors/src/node/*.rs`, `cluster/src/liveness.rs`, `actors/src/node/checkpoints.rs`),
//! with the IO replaced: Raft is real openraft on the simulated runtime, the mesh and the
//! SIP legs are messages the world delivers.
//!
//! Mirrored here, each next to the rule it follows:
//! - placement of queue and agent actors by rendezvous over the live voters (voters minus
//!   nodes declared down in the local replica); envelopes for actors another node owns are
//!   passed on; the dispatcher holds everything while a rejoined node waits out old leases;
//! - leases from committed-and-applied heartbeats; a node without a lease holds queue inputs
//!   and refuses reservations; the leader declares a silent node down;
//! - a node declared down drops its actors and calls and commits `NodeUp`;
//! - the checkpoint writer (coalesced by key, one batch in flight, kept while Raft fails);
//! - call takeover by placement from the checkpoint (`CallMachine::restore`), queue rebuild
//!   from call checkpoints plus `resync`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::agent::{AgentInput, AgentMachine, AgentOutput};
use actors::call::{flows_and_queues, AgentNotice, CallInput, CallMachine, CallOutput, CallSetup};
use actors::node::mesh::{AgentEnvelope, CallEnvelope, Envelope};
use actors::node::placement;
use actors::node::AgentCommand;
use actors::queue::{QueueInput, QueueMachine, QueueOutput};
use model::routing::Route;
use model::{
    AgentId, AgentSession, AgentStatus, CallCheckpoint, CallId, CallPhase, Cdr, Command,
    FailoverMark, Fence, NodeId, QueueId, TenantId,
};

mod calls;
mod hosts;
mod liveness;

use super::net::Net;
use super::raft::{Raft, Replica};
use super::runtime::{self, sleep, SimInstant};

/// Lease and detection timings: the cluster's defaults.
pub const HEARTBEAT_MS: u64 = 150;
pub const LEASE_MS: u64 = 500;
pub const DOWN_AFTER_MS: u64 = 700;
/// `cluster::WRITE_TIMEOUT` and the pause between tries to find a leader.
const WRITE_TIMEOUT_MS: u64 = 5_000;
const RETRY_PAUSE_MS: u64 = 50;
/// How long a new call's 200 waits for its first checkpoint (call_actor.rs).
const FIRST_CHECKPOINT_BOUND_MS: u64 = 300;
/// Most commands in one checkpoint batch (checkpoints.rs).
const MAX_BATCH: usize = 512;
/// Mirrors `actors::node::call_actor::RESYNC_EVERY` (`CallMsg::ResyncTick`): a waiting or
/// ringing call re-states its place in line this often (idempotent at the queue), so an
/// Enqueue lost on a mesh link that broke between two live nodes (no NodeDown, so no resync)
/// is made good.
const RESYNC_EVERY_MS: u64 = 1_000;
/// `media::session::MediaConfig::rtp_timeout` (the default the node runs with): a leg that
/// has sent RTP and then falls silent this long is reported dead (`MediaEvent::RtpTimeout`).
const RTP_TIMEOUT_MS: u64 = 30_000;
/// Mirrors `actors::node::Node::start`'s resume task: it polls for a lease this often.
const RESUME_POLL_MS: u64 = 50;

/// A message between nodes: a mesh envelope, or an API request for an agent's owner.
#[derive(Clone, Debug)]
pub enum Msg {
    Mesh(Envelope),
    AgentRequest {
        tenant: TenantId,
        agent: AgentId,
        command: AgentCommand,
    },
}

/// What the node tells the outside world (customers, phones, the checker).
#[derive(Clone, Debug)]
pub enum Event {
    /// The platform answered the customer (200 OK); `checkpointed`: after its first
    /// checkpoint committed (else in degraded mode, after the bound).
    Answered {
        call: CallId,
        checkpointed: bool,
    },
    /// A new owner re-INVITEd the customer (and the agent, if `agent`).
    ReInvite {
        call: CallId,
        agent: bool,
    },
    Dial {
        call: CallId,
        agent: AgentId,
        dial: u64,
    },
    CancelAgent {
        call: CallId,
    },
    HangupCustomer {
        call: CallId,
    },
    HangupAgent {
        call: CallId,
    },
    /// The call took an offer for `agent` (for the order check); `enqueued_at_ms`: when it
    /// joined the queue (its place in line).
    Offered {
        call: CallId,
        queue: QueueId,
        agent: AgentId,
        enqueued_at_ms: u64,
    },
    /// The agent answered: the call is established.
    Established {
        call: CallId,
    },
    /// The call ended here and submitted its CDR.
    Finished {
        cdr: Box<Cdr>,
    },
    /// An admin write through this node committed (`index` is its log index).
    ConfigCommitted {
        tag: u64,
        index: u64,
    },
}

/// Inputs from outside the cluster, delivered to one node.
#[derive(Clone, Debug)]
pub enum Input {
    NewCall {
        call: CallId,
        route: Route,
    },
    CustomerBye {
        call: CallId,
    },
    AgentBye {
        call: CallId,
    },
    /// A re-INVITE found the leg gone (its side had hung up meanwhile).
    LegGone {
        call: CallId,
        agent: bool,
    },
    Api {
        tenant: TenantId,
        agent: AgentId,
        command: AgentCommand,
    },
    Config {
        command: Command,
        tag: u64,
    },
}

/// What one step of a node produced.
pub struct Ctx {
    pub now: u64,
    /// (from, to, message)
    pub out: Vec<(NodeId, NodeId, Msg)>,
    pub events: Vec<(NodeId, Event)>,
    pub trace: Vec<String>,
}

enum WriteKind {
    Heartbeat { sent: u64, epoch: u64, at_ms: u64 },
    Batch(Vec<(String, Command)>),
    NodeDown,
    NodeUp,
    Config { tag: u64 },
}

type Written = Result<(model::Outcome, u64), String>;
type Mailbox = Arc<Mutex<Vec<(WriteKind, Written)>>>;

struct QueueHost {
    tenant: TenantId,
    queue: QueueId,
    machine: QueueMachine,
    held: VecDeque<QueueInput>,
    flush_at: Option<u64>,
}

struct CallHost {
    machine: CallMachine,
    tenant: TenantId,
    version: u64,
    checkpointed: Option<(CallPhase, usize)>,
    /// Waiting for the first checkpoint before answering the customer (until this time).
    answer_by: Option<u64>,
    pending_cdr: Option<Box<Cdr>>,
    play_done_at: Option<u64>,
    dial: u64,
    /// The agent's 200 waits for its ACK until the Talking checkpoint is committed (until
    /// this time at most; call_actor.rs `ack_pending`, G7).
    ack_by: Option<u64>,
    /// When a waiting call next says again where it waits (`RESYNC_EVERY_MS`).
    resync_at: u64,
    /// The media session's legs (`media::session::engine` `Leg`): the last RTP packet heard
    /// and whether its timeout was reported; [customer, agent].
    rtp: [LegMedia; 2],
}

/// `last_packet_at` and `timeout_reported` of a media leg.
#[derive(Clone, Copy, Default)]
struct LegMedia {
    last_packet_at: Option<u64>,
    timeout_reported: bool,
}

pub struct SimNode {
    pub id: NodeId,
    /// A deliberate bug, to prove the checker catches broken failover logic.
    pub mutation: super::Mutation,
    /// Set when the node's actors messaged each other endlessly within one instant.
    pub livelock: Option<String>,
    pub voters: Vec<NodeId>,
    pub raft: Raft,
    pub replica: Replica,
    net: Net,
    mailbox: Mailbox,
    queues: BTreeMap<String, QueueHost>,
    agents: BTreeMap<String, AgentMachine>,
    calls: BTreeMap<CallId, CallHost>,
    inbox: VecDeque<Msg>,
    serve_after: Option<u64>,
    // Liveness (cluster/src/liveness.rs).
    lease_until: Option<u64>,
    beat_busy: bool,
    next_beat: u64,
    /// A committed heartbeat waiting to be applied here: (sent, epoch, at_ms).
    lease_pending: Option<(u64, u64, u64)>,
    heard: BTreeMap<NodeId, u64>,
    leader_since: Option<u64>,
    detect_busy: bool,
    next_detect: u64,
    rejoin_busy: bool,
    rejoin_at: Option<u64>,
    // Checkpoint writer (actors/src/node/checkpoints.rs).
    pending: BTreeMap<String, Command>,
    order: VecDeque<String>,
    batch_busy: bool,
    batch_retry_at: u64,
    failures: u32,
    /// Calls waiting for their first checkpoint to commit, by checkpoint key.
    first_waiters: BTreeMap<String, CallId>,
    /// Calls whose agent waits for the ACK until the Talking checkpoint commits, by key.
    ack_waiters: BTreeMap<String, CallId>,
    /// Start-up done: Raft had a leader and this node caught up (`Node::start`).
    ready: bool,
    /// `Cluster::wait_ready` returned (a leader, and this node applied its term).
    caught_up: bool,
    /// When the resume task next looks for a lease.
    resume_poll_at: u64,
}

/// Wall-clock stamps start here, so no time is ever zero.
pub const CLOCK_BASE_MS: u64 = 1_000_000;

pub fn clock_ms() -> u64 {
    CLOCK_BASE_MS + runtime::now_ms()
}

fn key_of(command: &Command) -> Option<String> {
    match command {
        Command::PutAgentSession { session } => {
            Some(format!("agent:{}/{}", session.tenant, session.agent))
        }
        Command::PutCall { checkpoint } => Some(format!("call:{}", checkpoint.call_id)),
        Command::RecordCdr { cdr, .. } => Some(format!("call:{}", cdr.call_id)),
        _ => None,
    }
}

/// Commits `command` through the cluster from `me` (cluster/src/node.rs `write`): locally on
/// the leader, else forwarded to the leader over the network; retried while no leader is
/// known, until the write deadline.
pub async fn write(net: Net, raft: Raft, me: NodeId, command: Command) -> Written {
    let deadline = runtime::now_ns() + WRITE_TIMEOUT_MS * 1_000_000;
    loop {
        let leader = raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == me => {
                let written = runtime::timeout_at(
                    SimInstant::from_ns(deadline),
                    raft.client_write(command.clone()),
                )
                .await
                .map_err(|_| "write timed out".to_string())?;
                match written {
                    Ok(r) => return Ok((r.data, r.log_id.index)),
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::ClientWriteError::ForwardToLeader(_),
                    )) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Some(l) => {
                let c = command.clone();
                let forwarded = runtime::timeout_at(
                    SimInstant::from_ns(deadline),
                    net.rpc(
                        me,
                        l,
                        move |leader| async move { leader.client_write(c).await },
                    ),
                )
                .await
                .map_err(|_| "forwarded write timed out".to_string())?;
                match forwarded {
                    Ok(Ok(r)) => return Ok((r.data, r.log_id.index)),
                    Ok(Err(openraft::error::RaftError::APIError(
                        openraft::error::ClientWriteError::ForwardToLeader(_),
                    ))) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            None => {}
        }
        if runtime::now_ns() + RETRY_PAUSE_MS * 1_000_000 >= deadline {
            return Err("no leader".into());
        }
        sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    }
}

/// Mirrors `cluster::Cluster::write_as_leader` (used by `cluster::liveness` `detect`).
/// Commits `command` only as the leader that decided it:
/// a `NodeDown` judged by a leader that has since been deposed (cut off, it heard nobody)
/// must not be forwarded to the new leader, which would declare a live node down while its
/// lease runs.
pub async fn write_as_leader(raft: Raft, command: Command) -> Written {
    let written = runtime::timeout(
        Duration::from_millis(WRITE_TIMEOUT_MS),
        raft.client_write(command),
    )
    .await
    .map_err(|_| "write timed out".to_string())?;
    match written {
        Ok(r) => Ok((r.data, r.log_id.index)),
        Err(e) => Err(e.to_string()),
    }
}

impl SimNode {
    pub fn new(id: NodeId, voters: Vec<NodeId>, raft: Raft, replica: Replica, net: Net) -> Self {
        let now = clock_ms();
        // What openraft re-applied while it started (`Raft::new` re-applies the committed
        // log) happened before the runtime subscribed to applied entries: the real node never
        // reacts to it (`publish_applied` starts in `Node::start`, after `Cluster::start`).
        // It acts on the state it finds once ready instead (`start_up`).
        drop(replica.take_applied());
        replica.take_snapshot_installed();
        SimNode {
            id,
            mutation: super::Mutation::None,
            livelock: None,
            voters,
            raft,
            replica,
            net,
            mailbox: Arc::default(),
            queues: BTreeMap::new(),
            agents: BTreeMap::new(),
            calls: BTreeMap::new(),
            inbox: VecDeque::new(),
            serve_after: None,
            lease_until: None,
            beat_busy: false,
            next_beat: now,
            lease_pending: None,
            heard: BTreeMap::new(),
            leader_since: None,
            detect_busy: false,
            next_detect: now,
            rejoin_busy: false,
            rejoin_at: None,
            pending: BTreeMap::new(),
            order: VecDeque::new(),
            batch_busy: false,
            batch_retry_at: now,
            failures: 0,
            first_waiters: BTreeMap::new(),
            ack_waiters: BTreeMap::new(),
            ready: false,
            caught_up: false,
            resume_poll_at: now,
        }
    }

    // ---- what the checker reads -------------------------------------------------------

    pub fn holds_lease(&self, now: u64) -> bool {
        self.mutation == super::Mutation::IgnoreLease || self.lease_until.is_some_and(|u| now < u)
    }

    pub fn hosted_calls(&self) -> impl Iterator<Item = (&CallId, &CallMachine)> {
        self.calls.iter().map(|(id, c)| (id, &c.machine))
    }

    /// An RTP packet from a leg of `call` reached this node (`MediaCore`: it stamps
    /// `last_packet_at` and clears `timeout_reported`).
    pub fn rtp_heard(&mut self, call: &CallId, agent: bool, now: u64) {
        if let Some(c) = self.calls.get_mut(call) {
            let leg = &mut c.rtp[usize::from(agent)];
            leg.last_packet_at = Some(now);
            leg.timeout_reported = false;
        }
    }

    pub fn hosts_call(&self, call: &CallId) -> bool {
        self.calls.contains_key(call)
    }

    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    // ---- placement (actors/src/node/mod.rs) -------------------------------------------

    fn live_voters(&self) -> Vec<NodeId> {
        let mut voters = self.voters.clone();
        if self.mutation == super::Mutation::PlacementIgnoresNodeDown {
            return voters;
        }
        self.replica.read(|s| voters.retain(|n| !s.is_down(*n)));
        voters
    }

    fn is_down(&self, node: NodeId) -> bool {
        self.replica.read(|s| s.is_down(node))
    }

    fn fence(&self) -> Fence {
        Fence {
            node: self.id,
            epoch: self.replica.read(|s| s.epoch(self.id)),
        }
    }

    fn queue_owner(&self, tenant: &TenantId, queue: &QueueId) -> NodeId {
        placement::owner(&placement::queue_key(tenant, queue), self.live_voters())
            .unwrap_or(self.id)
    }

    fn agent_owner(&self, tenant: &TenantId, agent: &AgentId) -> NodeId {
        placement::owner(&placement::agent_key(tenant, agent), self.live_voters())
            .unwrap_or(self.id)
    }

    fn call_owner(&self, call: &CallId, hint: NodeId) -> NodeId {
        if !self.is_down(hint) {
            return hint;
        }
        placement::owner(&placement::call_key(call), self.live_voters()).unwrap_or(self.id)
    }

    /// Mirrors `actors::node::Runtime::orphan_taker`: placement's answer while the owner is
    /// down; if the owner rejoined (`stale` fence), one of the other live voters.
    fn orphan_taker(&self, c: &CallCheckpoint, stale: bool) -> Option<NodeId> {
        if stale {
            let others = self
                .live_voters()
                .into_iter()
                .filter(|n| *n != c.fence.node);
            placement::owner(&placement::call_key(&c.call_id), others)
        } else {
            Some(self.call_owner(&c.call_id, c.fence.node))
        }
    }

    /// Mirrors `actors::node::Runtime::send`: to this node, straight to the dispatcher; else
    /// a direct cast if the mesh reaches the node; else, for a mesh envelope, wrapped in
    /// `Envelope::Relay` and cast to the first other live voter the mesh reaches (one hop:
    /// that node unwraps it or casts it on, see `deliver`); else dropped. (An API request
    /// is a mesh `ask`, never relayed.)
    fn send(&mut self, ctx: &mut Ctx, to: NodeId, msg: Msg) {
        if to == self.id {
            self.inbox.push_back(msg);
            return;
        }
        if self.cast(ctx, to, msg.clone()) {
            return;
        }
        let Msg::Mesh(envelope) = msg else {
            return;
        };
        let relay = Msg::Mesh(Envelope::Relay {
            node: to,
            envelope: Box::new(envelope),
        });
        let me = self.id;
        let via = self
            .live_voters()
            .into_iter()
            .filter(|v| *v != me && *v != to)
            .find(|v| self.net.link_up(me, *v));
        match via {
            Some(via) => {
                ctx.trace
                    .push(format!("n{me} relays for n{to} through n{via}"));
                ctx.out.push((me, via, relay));
            }
            None => ctx
                .trace
                .push(format!("n{me} drops an envelope for n{to}: unreachable")),
        }
    }

    /// Mirrors `MeshClient::cast`: false when the mesh does not reach `to` now (the link is
    /// cut, or either process is not running); a message cast may still be lost if the link
    /// breaks before it arrives (the world delivers it only under the same link generation).
    fn cast(&self, ctx: &mut Ctx, to: NodeId, msg: Msg) -> bool {
        if !self.net.link_up(self.id, to) {
            return false;
        }
        ctx.out.push((self.id, to, msg));
        true
    }

    fn send_queue(&mut self, ctx: &mut Ctx, tenant: &TenantId, queue: &QueueId, input: QueueInput) {
        let owner = self.queue_owner(tenant, queue);
        let msg = Msg::Mesh(Envelope::Queue {
            tenant: tenant.clone(),
            queue: queue.clone(),
            input,
        });
        self.send(ctx, owner, msg);
    }

    fn send_agent(
        &mut self,
        ctx: &mut Ctx,
        tenant: &TenantId,
        agent: &AgentId,
        input: AgentEnvelope,
    ) {
        let owner = self.agent_owner(tenant, agent);
        let msg = Msg::Mesh(Envelope::Agent {
            tenant: tenant.clone(),
            agent: agent.clone(),
            input,
        });
        self.send(ctx, owner, msg);
    }

    fn send_call(&mut self, ctx: &mut Ctx, node: NodeId, call: &CallId, input: CallEnvelope) {
        let owner = self.call_owner(call, node);
        let msg = Msg::Mesh(Envelope::Call {
            call: call.clone(),
            input,
        });
        self.send(ctx, owner, msg);
    }

    // ---- the step ------------------------------------------------------------------------

    /// Everything the node does at `ctx.now`, in the order its tasks would.
    pub fn step(&mut self, ctx: &mut Ctx) {
        self.on_written(ctx);
        for (index, command) in self.replica.take_applied() {
            self.on_applied(ctx, index, &command);
        }
        if self.replica.take_snapshot_installed() {
            self.on_snapshot_installed(ctx);
        }
        self.liveness(ctx);
        self.start_up(ctx);
        self.dispatch(ctx);
        self.timers(ctx);
        self.dispatch(ctx);
        self.write_checkpoints(ctx);
    }

    fn spawn_write(&self, kind: WriteKind, command: Command) {
        let (net, raft, me, mailbox) = (
            self.net.clone(),
            self.raft.clone(),
            self.id,
            Arc::clone(&self.mailbox),
        );
        runtime::spawn_owned(me, async move {
            let result = match kind {
                WriteKind::NodeDown => write_as_leader(raft, command).await,
                _ => write(net, raft, me, command).await,
            };
            mailbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((kind, result));
        });
    }

    fn on_written(&mut self, ctx: &mut Ctx) {
        let done: Vec<(WriteKind, Written)> =
            std::mem::take(&mut *self.mailbox.lock().unwrap_or_else(|p| p.into_inner()));
        for (kind, result) in done {
            match kind {
                WriteKind::Heartbeat { sent, epoch, at_ms } => {
                    self.beat_busy = false;
                    // The write had `LEASE_MS` to commit (liveness.rs `beat`).
                    if matches!(&result, Ok((o, _)) if o.error.is_none())
                        && ctx.now < sent + LEASE_MS
                    {
                        self.lease_pending = Some((sent, epoch, at_ms));
                    }
                    self.next_beat = self.next_beat.max(ctx.now);
                }
                WriteKind::Batch(batch) => {
                    self.batch_busy = false;
                    match result {
                        Ok((outcome, _)) => {
                            self.failures = 0;
                            // Mirrors `actors::node::checkpoints::run`: a checkpoint refused
                            // by its fence (this node was declared down, or has rejoined at
                            // a newer epoch) is dropped, not retried, and whoever waits on it
                            // is not told "committed" (`Checkpointer::refused`; the customer's
                            // 200 and the agent's ACK then wait out their bound,
                            // call_actor.rs `wait_committed`); the others are
                            // (`Checkpointer::committed`).
                            let refused = if outcome.error.is_some() {
                                self.refused(&batch)
                            } else {
                                Vec::new()
                            };
                            for key in &refused {
                                if !self.pending.contains_key(key) {
                                    self.first_waiters.remove(key);
                                    self.ack_waiters.remove(key);
                                }
                            }
                            self.keep_refused(batch.clone(), &refused);
                            for (key, _) in &batch {
                                if self.pending.contains_key(key) || refused.contains(key) {
                                    continue;
                                }
                                if let Some(call) = self.first_waiters.remove(key) {
                                    self.answer(ctx, &call, true);
                                }
                                if let Some(call) = self.ack_waiters.remove(key) {
                                    self.ack_agent(ctx, &call);
                                }
                            }
                        }
                        Err(e) => {
                            self.failures += 1;
                            ctx.trace
                                .push(format!("n{} checkpoints not committed: {e}", self.id));
                            let mut front = VecDeque::new();
                            for (key, command) in batch {
                                if let std::collections::btree_map::Entry::Vacant(slot) =
                                    self.pending.entry(key.clone())
                                {
                                    slot.insert(command);
                                    front.push_back(key);
                                }
                            }
                            front.append(&mut self.order);
                            self.order = front;
                            self.batch_retry_at = ctx.now + 100 * u64::from(self.failures.min(10));
                        }
                    }
                }
                WriteKind::NodeDown => {
                    self.detect_busy = false;
                    self.next_detect = ctx.now;
                }
                WriteKind::NodeUp => {
                    self.rejoin_busy = false;
                    self.rejoin_at = Some(ctx.now + 200);
                }
                WriteKind::Config { tag } => {
                    if let Ok((outcome, index)) = result {
                        if outcome.error.is_none() {
                            ctx.events
                                .push((self.id, Event::ConfigCommitted { tag, index }));
                        }
                    }
                }
            }
        }
    }

    // ---- the dispatcher (Runtime::route) -------------------------------------------------

    /// Takes an input from outside the cluster.
    pub fn input(&mut self, ctx: &mut Ctx, input: Input) -> bool {
        match input {
            Input::NewCall { call, route } => return self.new_call(ctx, call, route),
            Input::CustomerBye { call } => {
                if !self.calls.contains_key(&call) {
                    return false;
                }
                self.call_input(ctx, &call, CallInput::CustomerHangup);
            }
            Input::AgentBye { call } => {
                if !self.calls.contains_key(&call) {
                    return false;
                }
                self.call_input(ctx, &call, CallInput::AgentHangup);
            }
            Input::LegGone { call, agent } => {
                if self.calls.contains_key(&call) {
                    let input = if agent {
                        CallInput::AgentHangup
                    } else {
                        CallInput::CustomerHangup
                    };
                    self.call_input(ctx, &call, input);
                }
            }
            Input::Api {
                tenant,
                agent,
                command,
            } => {
                let owner = self.agent_owner(&tenant, &agent);
                self.send(
                    ctx,
                    owner,
                    Msg::AgentRequest {
                        tenant,
                        agent,
                        command,
                    },
                );
            }
            Input::Config { command, tag } => {
                self.spawn_write(WriteKind::Config { tag }, command);
            }
        }
        true
    }

    /// A phone's answer to the INVITE `dial` of `call`; false when nobody here expects it.
    pub fn phone(&mut self, ctx: &mut Ctx, call: &CallId, dial: u64, answered: bool) -> bool {
        let Some(c) = self.calls.get(call) else {
            return false;
        };
        if c.dial != dial || c.machine.state_name() != "ringing_agent" {
            return false;
        }
        let input = if answered {
            CallInput::AgentAnswered
        } else {
            CallInput::AgentRinging
        };
        self.call_input(ctx, call, input);
        true
    }

    /// Delivers a message from another node to the dispatcher. Mirrors
    /// `actors::node::Runtime::deliver`: a relayed envelope for this node is unwrapped; one
    /// for another node is cast on to it once (dropped if the mesh does not reach it).
    pub fn deliver(&mut self, ctx: &mut Ctx, msg: Msg) {
        match msg {
            Msg::Mesh(Envelope::Relay { node, envelope }) if node == self.id => {
                self.inbox.push_back(Msg::Mesh(*envelope));
            }
            Msg::Mesh(Envelope::Relay { node, envelope }) => {
                if !self.cast(ctx, node, Msg::Mesh(*envelope)) {
                    ctx.trace.push(format!(
                        "n{} drops a relayed envelope for n{node}: unreachable",
                        self.id
                    ));
                }
            }
            msg => self.inbox.push_back(msg),
        }
    }

    fn dispatch(&mut self, ctx: &mut Ctx) {
        let mut budget = 10_000;
        loop {
            let serving = self.serve_after.is_none_or(|at| ctx.now >= at);
            let held = matches!(
                self.inbox.front(),
                Some(Msg::Mesh(Envelope::Queue { .. } | Envelope::Agent { .. }))
            );
            // Mirrors `actors::node::Runtime::handle_request` (`Request::Agent`): an agent API
            // request on a rejoined node waits for `serve_after` like the queue and agent
            // envelopes, or it would spawn an agent actor it gains from a session the previous
            // owner has not finished checkpointing, while that owner may still act on it.
            let request = matches!(self.inbox.front(), Some(Msg::AgentRequest { .. }));
            if (held || request) && !serving {
                // Rejoined: a queue or agent envelope waits out the leases of the nodes that
                // held our actors meanwhile; `Runtime::route` sleeps on the one dispatcher
                // task, holding everything behind it.
                return;
            }
            let Some(msg) = self.inbox.pop_front() else {
                return;
            };
            budget -= 1;
            if budget == 0 {
                // Actors on this node keep messaging each other without time passing: in the
                // real node a message storm. Stop it and report it.
                self.livelock = Some(format!("{msg:?}"));
                self.inbox.clear();
                return;
            }
            self.route(ctx, msg);
        }
    }

    fn route(&mut self, ctx: &mut Ctx, msg: Msg) {
        match msg {
            // Unwrapped (or passed on) in `deliver`, before dispatch.
            Msg::Mesh(Envelope::Relay { .. }) => {}
            Msg::AgentRequest {
                tenant,
                agent,
                command,
            } => {
                // Like handle_request: the owner the requester picked serves it.
                if self.agent_actor(ctx, &tenant, &agent) {
                    let exists = |s: &model::ReplicatedState, e: &model::ExtensionId| {
                        s.extension(&tenant, e).is_some()
                    };
                    let input = match command {
                        AgentCommand::SignIn { extension } => {
                            if !self.replica.read(|s| exists(s, &extension)) {
                                return;
                            }
                            AgentInput::SignIn { extension }
                        }
                        AgentCommand::Ready => AgentInput::Ready,
                        AgentCommand::NotReady { reason } => AgentInput::NotReady { reason },
                        AgentCommand::SignOut => AgentInput::SignOut,
                        AgentCommand::Away { reason, by } => AgentInput::Away { reason, by },
                        AgentCommand::EndAway { ready } => AgentInput::EndAway { ready },
                    };
                    self.agent_input(ctx, &tenant, &agent, input);
                }
            }
            Msg::Mesh(Envelope::Queue {
                tenant,
                queue,
                input,
            }) => {
                if self.queue_owner(&tenant, &queue) != self.id {
                    return self.send_queue(ctx, &tenant, &queue, input);
                }
                if let QueueInput::Enqueue {
                    call, call_node, ..
                } = &input
                {
                    if *call_node != self.id && self.is_down(*call_node) {
                        // Mirrors `actors::node::Runtime::route` (zombie Enqueue): from a
                        // node declared down that does not know it yet (cut off from the
                        // leader, not from us); it would point the queue's offers back at
                        // it and, saying nobody rings the call, wipe the new owner's offer.
                        // Its calls that nobody else knows re-join once it has rejoined (G1).
                        ctx.trace.push(format!(
                            "n{} drops Enqueue of {call} from n{call_node}, declared down",
                            self.id
                        ));
                        return;
                    }
                }
                if self.queue_actor(ctx, &tenant, &queue) {
                    self.queue_input(ctx, &tenant, &queue, input);
                }
            }
            Msg::Mesh(Envelope::Agent {
                tenant,
                agent,
                input,
            }) => {
                if self.agent_owner(&tenant, &agent) != self.id {
                    return self.send_agent(ctx, &tenant, &agent, input);
                }
                if self.agent_actor(ctx, &tenant, &agent) {
                    self.agent_mesh(ctx, &tenant, &agent, input);
                }
            }
            Msg::Mesh(Envelope::Call { call, input }) => {
                let here = self.calls.contains_key(&call) || self.take_over_call(ctx, &call);
                let (tenant, queue, agent, agent_node, extension) = match input {
                    // Mirrors `actors::node::Runtime::route` and the call actor (R3.5).
                    CallEnvelope::TurnedAway { queue, rule } => {
                        if here {
                            self.call_input(ctx, &call, CallInput::TurnedAway { queue, rule });
                        }
                        return;
                    }
                    CallEnvelope::WaitEstimate {
                        queue,
                        ahead,
                        wait_ms,
                    } => {
                        if here {
                            let input = CallInput::WaitEstimate {
                                queue,
                                ahead,
                                wait_ms,
                            };
                            self.call_input(ctx, &call, input);
                        }
                        return;
                    }
                    CallEnvelope::Offer {
                        tenant,
                        queue,
                        agent,
                        agent_node,
                        extension,
                    } => (tenant, queue, agent, agent_node, extension),
                };
                if here {
                    self.call_input(
                        ctx,
                        &call,
                        CallInput::Offer {
                            queue,
                            agent,
                            agent_node,
                            extension,
                        },
                    );
                } else {
                    ctx.trace
                        .push(format!("n{} refuses offer of gone call {call}", self.id));
                    self.send_agent(
                        ctx,
                        &tenant,
                        &agent,
                        AgentEnvelope::Notice {
                            call: call.clone(),
                            notice: AgentNotice::Failed { no_answer: false },
                        },
                    );
                    self.send_queue(
                        ctx,
                        &tenant,
                        &queue,
                        QueueInput::OfferDone {
                            call: call.clone(),
                            agent,
                            answered: false,
                        },
                    );
                    // Mirrors `actors::node::Runtime::route` (G3): nobody here hosts the call
                    // and this node does not take it over: it leaves the line. It has
                    // vanished (it ended, possibly here with its CDR not yet committed, or
                    // its node died before checkpointing it), or it runs elsewhere and
                    // re-joins from there (periodic re-Enqueue, a takeover's resync, a
                    // rejoined node's own calls).
                    // Left in line, a call that ended here would be offered again at once to
                    // the agent just freed, endlessly when queue and agent live here too.
                    self.send_queue(ctx, &tenant, &queue, QueueInput::Remove { call });
                }
            }
            Msg::Mesh(Envelope::QueueStats { .. } | Envelope::Event { .. }) => {}
        }
    }

    /// The agents this node hosts, as sessions (for the checker).
    pub fn agent_sessions(&self) -> Vec<AgentSession> {
        self.agents.values().map(|m| m.session()).collect()
    }
}

/// A placeholder SIP leg: the checkpoint format wants one; the simulation's legs are
/// abstract.
fn leg(call: &CallId) -> model::LegCheckpoint {
    model::LegCheckpoint {
        sip_call_id: call.to_string(),
        local_tag: "l".into(),
        remote_tag: "r".into(),
        local_uri: "<sip:platform@sim>".into(),
        remote_uri: "<sip:customer@sim>".into(),
        local_seq: 1,
        remote_seq: None,
        remote_target: "sip:customer@sim".into(),
        route_set: Vec::new(),
        peer: "127.0.0.1:5060".into(),
        transport: "udp".into(),
        remote_sdp: None,
    }
}
