//! One run: three nodes, the workload, the faults, and the checks after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actors::node::mesh::Envelope;
use actors::node::AgentCommand;
use model::{AgentStatus, CallId, CallPhase, Command, ConfigItem, ConfigKey, Disposition, NodeId};

mod checks;
mod outside;

use super::net::Net;
use super::node::{clock_ms, Ctx, Event, Input, Msg, SimNode};
use super::raft::{raft_config, LogStore, NetworkFactory, Raft, Replica, SharedDisk, StateMachine};
use super::runtime;
use super::workload::{self, Caller, Phone, Ring, Rng};
use super::{Faults, Mutation, Options, Report, Stats};
use crate::Violation;

pub const NODES: [NodeId; 3] = [1, 2, 3];
const STEP_MS: u64 = 10;
/// Calls arrive from here until `TRAFFIC_END_MS`; faults happen in between too.
const TRAFFIC_START_MS: u64 = 2_500;
const TRAFFIC_END_MS: u64 = 22_000;
/// After the traffic: faults healed, every node restarted, every call allowed to end.
const DRAIN_LIMIT_MS: u64 = 75_000;
/// How long an offer may skip a call that waited in line before it counts against I4:
/// covers a reservation round trip, a queue rebuilt after a takeover and a rejoined node's
/// wait for old leases.
const ORDER_SLACK_MS: u64 = 1_500;
/// A phone whose call's media no node carries hangs up after this long (RTP timeout).
const PHONE_MEDIA_TIMEOUT_MS: u64 = 3_000;
/// A phone rings at most this long when nobody cancels the INVITE.
const PHONE_RING_LIMIT_MS: u64 = 30_000;
/// SIP gives up retransmitting a BYE after 64*T1.
const BYE_GIVE_UP_MS: u64 = 32_000;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Crash(NodeId),
    Isolate(NodeId),
    /// The two nodes cannot talk; the third talks to both.
    Cut(NodeId, NodeId),
    Slow(NodeId, u64),
}

/// (offered at, call, queue, calls ahead of it: (call, waiting since))
type OfferToJudge = (u64, CallId, model::QueueId, Vec<(CallId, u64)>);

struct Slot {
    disk: SharedDisk,
    node: Option<SimNode>,
}

struct Flight {
    from: NodeId,
    to: NodeId,
    generation: u64,
    msg: Msg,
}

pub struct World {
    opts: Options,
    rng: Rng,
    net: Net,
    slots: BTreeMap<NodeId, Slot>,
    flights: BTreeMap<(u64, u64), Flight>,
    link_last: BTreeMap<(NodeId, NodeId), u64>,
    seq: u64,
    agents: usize,
    callers: BTreeMap<CallId, Caller>,
    phones: BTreeMap<model::AgentId, Phone>,
    next_call: u64,
    // Configuration writes.
    setup: std::collections::VecDeque<Command>,
    setup_sent: Option<(u64, u64)>,
    tags: BTreeMap<u64, Command>,
    next_tag: u64,
    /// The newest committed configuration write per key: (log index, tag, item).
    committed_config: BTreeMap<String, (u64, u64, ConfigItem)>,
    // Faults.
    fault: Option<(Fault, u64)>,
    quiet_until: u64,
    // Raft safety.
    leaders: BTreeMap<u64, NodeId>,
    applied: BTreeMap<u64, u64>,
    // I4.
    /// Since when each call waits visibly, and its place in line (when it joined the queue).
    queued_since: BTreeMap<CallId, (u64, u64)>,
    /// Offers to judge once the slack has passed: (offered at, call, queue, calls that were
    /// ahead of it and waiting since at least the slack: (call, since)).
    offers_to_judge: Vec<OfferToJudge>,
    /// When each call last took an offer.
    offered_at: BTreeMap<CallId, u64>,
    /// Re-INVITEs that found their leg gone, answered once the events of the instant that
    /// sent them are handled.
    leg_gone: Vec<(NodeId, Input)>,
    trace_hash: u64,
    trace_lines: usize,
    violations: Vec<Violation>,
    stats: Stats,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn v(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

fn config_key_name(k: &ConfigKey) -> String {
    format!("{k:?}")
}

fn lookup(s: &model::ReplicatedState, k: &ConfigKey) -> Option<ConfigItem> {
    use model::state::key;
    Some(match k {
        ConfigKey::Tenant { id } => ConfigItem::Tenant(s.tenants.get(id.as_str())?.clone()),
        ConfigKey::Queue { tenant, id } => {
            ConfigItem::Queue(Box::new(s.queues.get(&key(tenant, id.as_str()))?.clone()))
        }
        ConfigKey::Agent { tenant, id } => {
            ConfigItem::Agent(s.agents.get(&key(tenant, id.as_str()))?.clone())
        }
        ConfigKey::Extension { tenant, id } => {
            ConfigItem::Extension(s.extensions.get(&key(tenant, id.as_str()))?.clone())
        }
        ConfigKey::Trunk { id } => ConfigItem::Trunk(s.trunks.get(id.as_str())?.clone()),
        ConfigKey::Flow { tenant, id } => {
            ConfigItem::Flow(s.flows.get(&key(tenant, id.as_str()))?.clone())
        }
        ConfigKey::Prompt { tenant, id } => {
            ConfigItem::Prompt(s.prompts.get(&key(tenant, id.as_str()))?.clone())
        }
        ConfigKey::Customer { tenant, number } => {
            ConfigItem::Customer(s.customers.get(&key(tenant, number.as_str()))?.clone())
        }
    })
}

impl World {
    pub fn new(seed: u64, opts: Options) -> World {
        runtime::reset(seed);
        let mut rng = Rng::new(seed);
        let agents = rng.range(3, 6) as usize;
        let setup = workload::config(&mut rng, agents).into();
        let net = Net::default();
        net.with(|n| n.loss_ppm = rng.range(0, 5_000));
        let slots = NODES
            .iter()
            .map(|id| {
                (
                    *id,
                    Slot {
                        disk: SharedDisk::default(),
                        node: None,
                    },
                )
            })
            .collect();
        let mut w = World {
            opts,
            rng,
            net,
            slots,
            flights: BTreeMap::new(),
            link_last: BTreeMap::new(),
            seq: 0,
            agents,
            callers: BTreeMap::new(),
            phones: (0..agents)
                .map(|i| (workload::agent_id(i), Phone::default()))
                .collect(),
            next_call: 0,
            setup,
            setup_sent: None,
            tags: BTreeMap::new(),
            next_tag: 0,
            committed_config: BTreeMap::new(),
            fault: None,
            quiet_until: TRAFFIC_START_MS + 500,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            queued_since: BTreeMap::new(),
            offers_to_judge: Vec::new(),
            offered_at: BTreeMap::new(),
            leg_gone: Vec::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace_lines: 0,
            violations: Vec::new(),
            stats: Stats::default(),
        };
        w.trace(format!(
            "seed {seed}: {agents} agents, loss {} ppm",
            w.net.with(|n| n.loss_ppm)
        ));
        for id in NODES {
            w.start_node(id);
        }
        // The lowest id initializes the cluster (cluster/src/config.rs).
        let raft = w.raft(1);
        runtime::spawn_owned(1, async move {
            let members: BTreeMap<u64, openraft::EmptyNode> =
                NODES.iter().map(|n| (*n, openraft::EmptyNode {})).collect();
            let _ = raft.initialize(members).await;
        });
        w
    }

    fn raft(&self, id: NodeId) -> Raft {
        self.slots[&id]
            .node
            .as_ref()
            .expect("node running")
            .raft
            .clone()
    }

    fn trace(&mut self, line: String) {
        let now = runtime::now_ms();
        fnv(&mut self.trace_hash, &now.to_le_bytes());
        fnv(&mut self.trace_hash, line.as_bytes());
        self.trace_lines += 1;
        if self.opts.verbose {
            println!("{now:>6} {line}");
        }
    }

    /// Starts (or restarts) a node's process on its disk: openraft re-reads its log and
    /// re-applies what was committed.
    fn start_node(&mut self, id: NodeId) {
        let disk = self.slots[&id].disk.clone();
        let replica = Replica::default();
        let sm = StateMachine::open(disk.clone(), replica.clone()).expect("state machine opens");
        let factory = NetworkFactory {
            net: self.net.clone(),
            me: id,
        };
        let made: Arc<std::sync::Mutex<Option<Raft>>> = Arc::default();
        let slot = Arc::clone(&made);
        runtime::spawn_owned(id, async move {
            let raft = Raft::new(id, raft_config(), factory, LogStore::new(disk), sm)
                .await
                .expect("raft starts");
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(raft);
        });
        runtime::run_until_stalled();
        let raft = made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("Raft::new completes without waiting");
        self.net.with(|n| n.running.insert(id, raft.clone()));
        let mut node = SimNode::new(id, NODES.to_vec(), raft, replica, self.net.clone());
        node.mutation = self.opts.mutation;
        self.slots.get_mut(&id).expect("slot").node = Some(node);
        self.trace(format!("n{id} starts"));
    }

    fn crash(&mut self, id: NodeId) {
        runtime::kill_owner(id);
        self.net.with(|n| n.running.remove(&id));
        self.net.break_links(id, &NODES);
        self.slots.get_mut(&id).expect("slot").node = None;
        self.stats.crashes += 1;
        self.trace(format!("n{id} crashes"));
    }

    fn running(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Runs the whole scenario; returns the report.
    pub fn run(mut self, seed: u64) -> Report {
        let mut now = 0;
        let mut drained_at = None;
        while now < DRAIN_LIMIT_MS {
            now += STEP_MS;
            runtime::run_until(now * 1_000_000);
            self.step(now);
            self.check_step(now);
            if !self.violations.is_empty() && !self.opts.keep_going {
                break;
            }
            if now > TRAFFIC_END_MS + 2_000 && now % 500 == 0 && self.drained() {
                drained_at = Some(now);
                break;
            }
        }
        if self.violations.is_empty() || self.opts.keep_going {
            match drained_at {
                Some(_) => self.check_end(),
                None => self.violations.push(v(
                    "I2",
                    format!(
                        "the run did not drain within {DRAIN_LIMIT_MS} ms: {}",
                        self.undrained()
                    ),
                )),
            }
        }
        self.stats.sim_ms = now;
        self.stats.calls = self.callers.len();
        self.stats.answered = self.callers.values().filter(|c| c.answered).count();
        self.stats.established = self
            .callers
            .values()
            .filter(|c| c.established_at.is_some())
            .count();
        self.stats.trace_lines = self.trace_lines;
        Report {
            seed,
            options: self.opts,
            trace_hash: self.trace_hash,
            violations: self.violations,
            stats: self.stats,
        }
    }

    fn step(&mut self, now: u64) {
        self.faults(now);
        let clock = clock_ms();
        let mut ctx = Ctx {
            now: clock,
            out: Vec::new(),
            events: Vec::new(),
            trace: Vec::new(),
        };
        // The mesh: messages due now, in their order (a relay node casts what it passes on
        // into `ctx`).
        let due: Vec<(u64, u64)> = self
            .flights
            .range(..=(clock, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let f = self.flights.remove(&key).expect("due flight");
            let alive =
                self.net.link_up(f.from, f.to) && self.net.generation(f.from, f.to) == f.generation;
            if alive {
                if let Some(node) = self.slots.get_mut(&f.to).and_then(|s| s.node.as_mut()) {
                    node.deliver(&mut ctx, f.msg);
                }
            }
        }
        self.outside(&mut ctx, now);
        for id in NODES {
            if let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.as_mut()) {
                node.step(&mut ctx);
            }
        }
        self.finish_ctx(ctx);
    }

    /// Routes what nodes sent, and reacts to what they told the outside world.
    fn finish_ctx(&mut self, ctx: Ctx) {
        let Ctx {
            now,
            out,
            events,
            trace,
        } = ctx;
        for line in trace {
            self.trace(line);
        }
        for (from, to, msg) in out {
            self.seq += 1;
            let generation = self.net.generation(from, to);
            let delay = self.net.sample(from, to, || self.rng.next()).unwrap_or(1);
            let last = self.link_last.get(&(from, to)).copied().unwrap_or(0);
            // TCP keeps a link's order.
            let at = (now + delay).max(last);
            self.link_last.insert((from, to), at);
            if let Msg::Mesh(Envelope::Call { call, .. }) = &msg {
                self.trace(format!("mesh n{from}->n{to} offer for {call}"));
            }
            self.flights.insert(
                (at, self.seq),
                Flight {
                    from,
                    to,
                    generation,
                    msg,
                },
            );
        }
        for (node, event) in events {
            self.on_event(now, node, event);
        }
        // A re-INVITE's failure (the leg had hung up) reaches the node after what it did in
        // the same instant (a ring it started then is cancelled after it was sent, not
        // before).
        for (node, input) in std::mem::take(&mut self.leg_gone) {
            self.with_node(node, now, |n, ctx| n.input(ctx, input));
        }
    }

    fn with_node(
        &mut self,
        id: NodeId,
        now: u64,
        f: impl FnOnce(&mut SimNode, &mut Ctx) -> bool,
    ) -> Option<bool> {
        let mut ctx = Ctx {
            now,
            out: Vec::new(),
            events: Vec::new(),
            trace: Vec::new(),
        };
        let node = self.slots.get_mut(&id)?.node.as_mut()?;
        let r = f(node, &mut ctx);
        self.finish_ctx(ctx);
        Some(r)
    }

    // ---- faults --------------------------------------------------------------------

    /// True while the current fault touches `node` (I3 covers calls established before
    /// their node was lost, not those set up on a node already cut off).
    fn impaired(&self, node: NodeId) -> bool {
        match self.fault {
            Some((Fault::Crash(n) | Fault::Isolate(n) | Fault::Slow(n, _), _)) => n == node,
            Some((Fault::Cut(a, b), _)) => a == node || b == node,
            None => false,
        }
    }

    fn faults(&mut self, now: u64) {
        if let Some((fault, until)) = self.fault {
            if now >= until || now >= TRAFFIC_END_MS {
                self.heal(fault);
                self.fault = None;
                self.quiet_until = now + self.rng.range(1_000, 4_000);
            }
            return;
        }
        if now < self.quiet_until || now >= TRAFFIC_END_MS - 1_000 {
            return;
        }
        let node = self.rng.pick(&NODES);
        let other = self.rng.pick(
            &NODES
                .iter()
                .copied()
                .filter(|n| *n != node)
                .collect::<Vec<_>>(),
        );
        let kind = match self.opts.faults {
            Faults::All => self.rng.range(0, 9),
            Faults::CrashOnly => 0,
        };
        let fault = match kind {
            0..=3 => Fault::Crash(node),
            4..=5 => Fault::Isolate(node),
            6 => Fault::Cut(node, other),
            // Slow, within what the failure detector tolerates: a slower link is a failure
            // (and a slow leader would declare every other node down).
            _ => Fault::Slow(node, self.rng.range(20, 100)),
        };
        let until = now + self.rng.range(500, 5_000);
        self.trace(format!("fault {fault:?} until {until}"));
        match fault {
            Fault::Crash(n) => self.crash(n),
            Fault::Isolate(n) => {
                self.stats.partitions += 1;
                self.net.with(|s| {
                    for p in NODES.iter().filter(|p| **p != n) {
                        s.cut.insert((n, *p));
                        s.cut.insert((*p, n));
                    }
                });
                self.net.break_links(n, &NODES);
            }
            Fault::Cut(a, b) => {
                self.stats.partitions += 1;
                self.net.with(|s| {
                    s.cut.insert((a, b));
                    s.cut.insert((b, a));
                });
                self.net.break_links(a, &[b]);
            }
            Fault::Slow(n, ms) => {
                self.stats.slow += 1;
                self.net.with(|s| {
                    for p in NODES.iter().filter(|p| **p != n) {
                        s.slow.insert((n, *p), ms);
                        s.slow.insert((*p, n), ms);
                    }
                });
            }
        }
        self.fault = Some((fault, until));
    }

    fn heal(&mut self, fault: Fault) {
        self.trace(format!("heal {fault:?}"));
        match fault {
            Fault::Crash(n) => {
                self.stats.restarts += 1;
                self.start_node(n);
            }
            Fault::Isolate(_) | Fault::Cut(..) => self.net.with(|s| s.cut.clear()),
            Fault::Slow(..) => self.net.with(|s| s.slow.clear()),
        }
    }
}
