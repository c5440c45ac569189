//! `callgrid bench <scenario> --dir DIR`: performance scenarios against a cluster from
//! `cluster up --sample` (issue 5, R9). Each run prints one JSON document on stdout (the
//! scenario, its parameters, the machine's cores, every figure, and each target with its
//! verdict), writes the same to `DIR/bench/<scenario>-<unix ms>.json`, and a short table on
//! stderr. A missed target is reported, not an error; `--strict` makes it the exit status.
//!
//! Scenarios (docs/PERFORMANCE.md has the figures and how they were taken):
//! - `caps`: SIPp as the carrier at stepped rates, into a queue whose agents (our phones)
//!   answer at once; per step the failed ratio and INVITE-to-answer and INVITE-to-agent-ring
//!   latency; the highest rate that held; the same steps SIPp-to-SIPp first, for the ratio.
//! - `ceiling`: only the SIPp-to-SIPp steps.
//! - `concurrent`: hold N established calls; memory per call and CPU per 100 calls per node.
//! - `signin`: agent sign-ins and state changes per second through the API.
//! - `events`: agent-state change on one node to its WebSocket event on another.
//! - `raft`: committed checkpoints per second and commit latency (inside a node), with
//!   writers that wait for their commits or at a set rate.
//! - `media`: RTP relayed per second per core, with recording on, and the jitter it adds.

mod api;
mod calls;
mod report;
mod setup;
mod sipp;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub use report::{Report, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Caps,
    Ceiling,
    Concurrent,
    Signin,
    Events,
    Raft,
    Media,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The cluster's directory (from `cluster up --sample`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Exit non-zero when a target is missed.
    #[arg(long)]
    pub strict: bool,

    /// caps/ceiling: first call rate (calls/s).
    #[arg(long, default_value_t = 100)]
    pub start_rate: u32,
    /// caps/ceiling: rate added at each step.
    #[arg(long, default_value_t = 100)]
    pub rate_step: u32,
    /// caps/ceiling: the last rate tried.
    #[arg(long, default_value_t = 1500)]
    pub max_rate: u32,
    /// caps/ceiling: seconds of calls at each step.
    #[arg(long, default_value_t = 60)]
    pub step_secs: u32,
    /// caps/concurrent/media/signin/events: agents of the bench tenant (phones registered
    /// for caps, concurrent and media).
    #[arg(long)]
    pub agents: Option<usize>,
    /// caps/ceiling: the agent's talk time before it hangs up (ms).
    #[arg(long, default_value_t = 1000)]
    pub talk_ms: u64,

    /// concurrent/media: calls to hold established.
    #[arg(long)]
    pub calls: Option<usize>,
    /// concurrent: calls without RTP (the carrier offers `a=inactive` and sends none).
    #[arg(long)]
    pub signalling_only: bool,
    /// concurrent/media: seconds to hold the calls once established, measuring.
    #[arg(long, default_value_t = 20)]
    pub hold_secs: u64,

    /// signin: rounds of sign-in, ready, not-ready, sign-out per agent.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// signin/raft: requests (signin) or writers (raft) at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// events: agent-state changes to time.
    #[arg(long, default_value_t = 500)]
    pub changes: usize,
    /// raft: checkpoints to commit.
    #[arg(long, default_value_t = 100_000)]
    pub checkpoints: u32,
    /// raft: checkpoints per second over the cluster, submitted on schedule whatever is in
    /// flight (open loop, as calls write theirs): the commit latency at that rate. Without
    /// it, `--concurrency` writers each wait for their commit (closed loop): the most the
    /// cluster commits.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// raft: synthetic calls over the cluster that the checkpoints go to in turn, each
    /// checkpoint a newer version of its call: the replicated state (and its snapshots)
    /// holds this many, as it holds the live calls.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub live_calls: u32,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cluster = crate::traffic::load_cluster(&args.dir)?;
    let report = match args.scenario {
        Scenario::Raft => api::raft(&cluster, &args).await?,
        Scenario::Signin => api::signin(&cluster, &args).await?,
        Scenario::Events => api::events(&cluster, &args).await?,
        Scenario::Caps => sipp::caps(&cluster, &args, true).await?,
        Scenario::Ceiling => sipp::caps(&cluster, &args, false).await?,
        Scenario::Concurrent => calls::concurrent(&cluster, &args).await?,
        Scenario::Media => calls::media(&cluster, &args).await?,
    };
    let text = serde_json::to_string_pretty(&report.to_json())?;
    let out = args.dir.join("bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join(format!("{}-{}.json", report.scenario, report::unix_ms()));
    std::fs::write(&file, &text)?;
    println!("{text}");
    eprintln!("{}", report.table());
    eprintln!("saved {}", file.display());
    if args.strict && !report.pass() {
        anyhow::bail!("a target was missed (see \"targets\" in the report)");
    }
    Ok(())
}
