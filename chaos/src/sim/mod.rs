//! The deterministic simulation harness (DESIGN.md "Testing"; issue 3, item 9).
//!
//! One run ("seed") simulates a three-node callgrid cluster on one thread, on a virtual
//! clock, with every random choice drawn from the seed:
//! - `runtime`: the executor and clock (openraft's `AsyncRuntime`), seeded randomness;
//! - `raft`: real openraft 0.9.25 over `model::Command`, an in-memory store that survives
//!   crashes, Raft RPCs through `net`;
//! - `net`: running processes, cut and slow links, message loss;
//! - `node`: a node's failover logic around the real `QueueMachine`, `AgentMachine` and
//!   `CallMachine` (placement, leases, NodeDown/NodeUp, fences, takeover, queue rebuild,
//!   checkpoint batching), mirroring `actors::node` and `cluster::liveness`;
//! - `workload`: configuration, callers and agents' phones;
//! - `world`: the steps, the faults and the checks.
//!
//! What one seed covers: three voters; 3-6 agents with random skills over two queues; a
//! trivial IVR per access code (four codes, priorities 0-2); about 30 callers over 19.5 s
//! (patience 3-20 s, talk 0.3-4 s, one in three conversations ended by the agent); agents
//! who sign in, go ready, take breaks, miss one call in eight; a few configuration writes;
//! faults from 3 s to 21 s, one at a time with 1-4 s of quiet between (0.5-5 s each): a node
//! crashes (its memory is lost, its Raft disk kept) and restarts, a node is isolated, two
//! nodes lose their link, or a node's links slow down by up to 100 ms (slower is a failure
//! the detector is meant to see); Raft messages are lost at 0-0.5%. Then the faults heal and
//! the run drains (at most 75 s simulated).
//!
//! Each 10 ms step: Raft and the network run up to the step's time; a fault may start or
//! heal; mesh messages due are delivered (in order per link, lost when the link breaks);
//! callers, phones, agents and admins act; every running node steps its machines; then the
//! checks run:
//! - Raft: at most one leader per term; every replica applies the same entry at an index;
//! - I1: no agent's phone is rung for a call while it rings or talks for another; no agent is
//!   bound to two calls on the nodes that hold a lease;
//! - I3: a call established on a node no fault touched at that moment (and that the cluster
//!   had not declared down) never goes back in line (on a node the cluster has not declared
//!   down) and ends answered;
//! - I4: when an offer passes a call of the same queue that was ahead of it (priority, then
//!   the time it joined the queue) and had waited visibly for 1.5 s, that call must be
//!   offered within 1.5 s;
//! - I6: a replica that applied past a committed configuration write holds it (or a later
//!   write of the same item);
//! - liveness: a node's actors never message each other endlessly within one instant.
//!
//! At the end: I2 (every call the platform answered, or re-INVITEd after a takeover, has
//! exactly one CDR, none failed, no checkpoint left: a run that does not drain fails I2),
//! `no_double_booking` over the CDRs, I3 over the CDRs, and all replicas agree.
//!
//! The mirror follows the node as it is (G1 calls nobody knows kept through a NodeDown and
//! re-checkpointed after the rejoin, G2 503 and rejoin at start-up, G3 an offer for a call
//! nobody hosts removes it from its queue, G4 own calls resumed at start-up under a lease,
//! G5 agents restored engaged, G6 via the real `QueueMachine`, G7 the agent ACKed once the
//! Talking checkpoint commits or after 300 ms; NodeDown only as leader and only under its
//! own lease; stale-fenced checkpoints are orphans; reconcile after a snapshot install;
//! periodic re-Enqueue; zombie Enqueues dropped; refused checkpoints dropped with their
//! waiters; the mesh relays an envelope one hop through another live node when the direct
//! link is cut; the checkpoint writer holds its backlog while the node is declared down,
//! re-fences the checkpoints and CDRs of calls the cluster does not know and keeps them when
//! refused; an agent API request on a rejoined node waits for `serve_after`; a call ringing
//! an agent whose Offering checkpoint has not committed withdraws the ring once its node has
//! no lease; the media session's RTP timeout: a leg that sent RTP to a node and fell silent
//! for 30 s ends the call there, under a lease only; a Talking call whose agent's committed
//! session moved on is only recorded, ended when the agent was freed; the queue frees the
//! agent a lost offer held once the call re-joins from another node), each place citing the
//! real function it mirrors. Callers send RTP to the node their dialog points at once answered, phones to the
//! node they are connected to.
//! What openraft re-applies inside `Raft::new` is not reacted to (the node subscribes
//! later). The phones' I1 check ignores a dialog whose customer another node re-INVITEd.
//!
//! Limits: SIP and RTP are abstract (a leg is a caller or a phone that answers, hangs up,
//! retransmits BYE and gives up on 481); the node logic mirrors `actors::node` and
//! `cluster::liveness` rather than running their tokio/ractor drivers, so a change there must
//! be mirrored here; membership is fixed; clocks do not drift; disks never lose a synced
//! write.

mod net;
mod node;
mod raft;
mod runtime;
mod workload;
mod world;

use crate::Violation;

/// A deliberate bug in the simulated node, to prove the checks catch broken failover logic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    #[default]
    None,
    /// Placement ignores the nodes declared down: a dead node's actors are never rebuilt.
    PlacementIgnoresNodeDown,
    /// A node acts as if it always held its lease (reserves agents while cut off).
    IgnoreLease,
}

/// Which faults a run draws from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Faults {
    /// Crashes and restarts, isolated nodes, cut links between two nodes, slow links.
    #[default]
    All,
    /// Crashes and restarts only.
    CrashOnly,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Print the step trace.
    pub verbose: bool,
    pub mutation: Mutation,
    pub faults: Faults,
    /// Run to the end after a violation (to measure a full run's cost).
    pub keep_going: bool,
}

/// What one run covered.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub sim_ms: u64,
    pub calls: usize,
    pub answered: usize,
    pub established: usize,
    pub cdrs: usize,
    pub crashes: usize,
    pub restarts: usize,
    pub partitions: usize,
    pub slow: usize,
    pub takeovers: usize,
    pub trace_lines: usize,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub options: Options,
    /// FNV-1a over the whole step trace: the same seed gives the same hash.
    pub trace_hash: u64,
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Report {
    /// The line a failing seed prints, with the command that replays it.
    pub fn failure_line(&self) -> Option<String> {
        let first = self.violations.first()?;
        let mut env = String::new();
        match self.options.mutation {
            Mutation::None => {}
            Mutation::PlacementIgnoresNodeDown => env.push_str("CALLGRID_SIM_MUTATION=placement "),
            Mutation::IgnoreLease => env.push_str("CALLGRID_SIM_MUTATION=lease "),
        }
        if self.options.faults == Faults::CrashOnly {
            env.push_str("CALLGRID_SIM_FAULTS=crash ");
        }
        Some(format!(
            "seed {} failed: {}: {}; replay: {env}CALLGRID_SIM_SEED={} cargo test -p chaos --test simulation -- --nocapture",
            self.seed, first.invariant, first.detail, self.seed
        ))
    }
}

/// Runs one seed to the end (or to its first violation).
pub fn run_seed(seed: u64, options: Options) -> Report {
    world::World::new(seed, options).run(seed)
}
