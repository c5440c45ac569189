//! The `callgrid` command line (clap derive): the node daemon, local clusters, admin verbs
//! over the REST API, and agent control. Ids typed by the operator are parsed with `model`'s
//! id types, so a bad id fails before any request is sent (exit status 2).

pub mod admin;
pub mod agent;
pub mod call;
pub mod client;
pub mod cluster;
pub mod customer;
pub mod output;
pub mod voicemail;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "callgrid",
    version,
    about = "callgrid: a distributed contact-center call-control cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node (SIP, API, Raft, actor mesh) from its config file.
    Node {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start, stop and inspect a local multi-process cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Virtual call centers (tenants).
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// Skill queues of a tenant.
    #[command(subcommand)]
    Queue(admin::QueueCommand),
    /// Agents of a tenant: configuration and runtime control (sign-in, ready...).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Queue voicemails: list, mark handled (R3.20).
    #[command(subcommand)]
    Voicemail(voicemail::VoicemailCommand),
    /// Live calls, and the queues a waiting call waits in (R3.10).
    #[command(subcommand)]
    Call(call::CallCommand),
    /// Known callers (customer lists) that routing rules match (R3.12).
    #[command(subcommand)]
    Customer(customer::CustomerCommand),
    /// Phone extensions with digest credentials.
    #[command(subcommand)]
    Extension(admin::ExtensionCommand),
    /// Carrier trunks, recognised by source address.
    #[command(subcommand)]
    Trunk(admin::TrunkCommand),
    /// IVR flows (given as JSON with --file).
    #[command(subcommand)]
    Flow(admin::FlowCommand),
    /// Prompts (recorded announcements).
    #[command(subcommand)]
    Prompt(admin::PromptCommand),
    /// Start a local three-node cluster with the sample centers, drive synthetic callers and
    /// agent phones, show live figures, print a summary, and tear the cluster down.
    Demo(DemoArgs),
    /// Failover drills against a cluster from `cluster up --sample`: kill a node or a site,
    /// partition a node; prints one JSON report.
    Drill(crate::drill::DrillArgs),
    /// Performance scenarios against a cluster from `cluster up --sample` (caps, ceiling,
    /// concurrent, signin, events, raft, media): prints one JSON document per run.
    Bench(crate::bench::BenchArgs),
    /// Disaster recovery: turn the dr site into the cluster when both active sites are lost.
    #[command(subcommand)]
    Dr(DrCommand),
}

#[derive(Debug, Subcommand)]
pub enum DrCommand {
    /// The dr site's nodes restart as a new cluster from their last applied state; prints a
    /// JSON report (last applied index, entries not applied at dr, time taken).
    Takeover {
        #[arg(long)]
        dir: PathBuf,
        /// Take over even though the dr node still reaches a quorum.
        #[arg(long)]
        force: bool,
    },
    /// After a takeover, the recovered nodes of the active sites rejoin: each starts afresh
    /// (its old log kept aside), is added as a learner, catches up, and votes again; prints
    /// a JSON report.
    Failback {
        #[arg(long)]
        dir: PathBuf,
        /// The recovered nodes (default: every node of DIR not in the running membership).
        #[arg(long, value_delimiter = ',')]
        nodes: Option<Vec<u64>>,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to drive traffic, in seconds.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Where the cluster lives (a fresh temporary directory by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Mean new calls per second.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
}

/// Where the API is and how to authenticate; shared by every admin verb.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of any node's API.
    #[arg(long, env = "CALLGRID_API", default_value = "http://127.0.0.11:8000")]
    pub api: String,
    /// Admin bearer token (see DIR/cluster.json).
    #[arg(long, env = "CALLGRID_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node { config } => crate::node::run(&config).await,
        Command::Cluster(c) => cluster::run(c).await,
        Command::Tenant(c) => admin::run_tenant(c).await,
        Command::Queue(c) => admin::run_queue(c).await,
        Command::Agent(c) => agent::run(c).await,
        Command::Customer(c) => customer::run(c).await,
        Command::Call(c) => call::run(c).await,
        Command::Voicemail(c) => voicemail::run(c).await,
        Command::Extension(c) => admin::run_extension(c).await,
        Command::Trunk(c) => admin::run_trunk(c).await,
        Command::Flow(c) => admin::run_flow(c).await,
        Command::Prompt(c) => admin::run_prompt(c).await,
        Command::Demo(args) => run_demo(args).await,
        Command::Drill(args) => crate::drill::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Dr(DrCommand::Takeover { dir, force }) => {
            let report = cluster::dr_takeover(&dir, force).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Dr(DrCommand::Failback { dir, nodes }) => {
            let report = cluster::dr_failback(&dir, nodes).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 200.0) || args.duration == 0 {
        return Err(crate::error::usage_err(
            "E-BAD-DEMO-ARGS",
            "the rate must be in (0, 200] calls/s and the duration at least 1 s",
            "pass e.g. --rate 2 --duration 120",
        ));
    }
    let demo_args = crate::demo::DemoArgs {
        duration: std::time::Duration::from_secs(args.duration),
        output_json: args.output == OutputFormat::Json,
        dir: args.dir,
        rate: args.rate,
    };
    let runtime = tokio::runtime::Handle::current();
    let up_runtime = runtime.clone();
    crate::demo::run(
        demo_args,
        move |dir| {
            up_runtime.block_on(cluster::run(cluster::ClusterCommand::Up(cluster::UpArgs {
                dir: dir.to_path_buf(),
                sample: true,
                layout: "1,1,1".into(),
                allow_faults: false,
                dr_auto_takeover_ms: None,
                output: OutputFormat::Table,
            })))
        },
        move |dir| {
            runtime.block_on(cluster::run(cluster::ClusterCommand::Down(
                cluster::DirArgs {
                    dir: dir.to_path_buf(),
                    output: OutputFormat::Table,
                },
            )))
        },
    )
    .await
}
