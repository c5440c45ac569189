//! `callgrid cluster up|down|status --dir DIR`: a local cluster of node processes on loopback
//! (node i on 127.0.0.(10+i): SIP :5060, API :8000, Raft :8001, mesh :8002).
//!
//! `up` on a fresh DIR writes one config per node, starts the nodes as detached processes,
//! waits until every node is healthy and a leader exists, optionally loads the sample
//! configuration through node 1, and publishes DIR/cluster.json (the contract tests, drills
//! and benches read). `up` on an existing DIR restarts the nodes from their configs and data.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::http_client;
use super::{output, OutputFormat};
use crate::config::{self, NodeFileConfig, PeerConfig, SITES};
use crate::error::{ops_err, usage_err};

/// How long `up` waits for every node to be healthy with a leader.
const UP_DEADLINE: Duration = Duration::from_secs(60);
/// How long `down` waits for nodes to exit after SIGTERM before SIGKILL.
const DOWN_DEADLINE: Duration = Duration::from_secs(15);
const MAX_NODES: usize = 9;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start (or restart) a local cluster in DIR.
    Up(UpArgs),
    /// Stop the local cluster in DIR.
    Down(DirArgs),
    /// Show the health of each node of the cluster in DIR.
    Status(DirArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// Load the sample configuration (five provinces) on a fresh cluster.
    #[arg(long)]
    pub sample: bool,
    /// Nodes per site a,b,dr: 1,1,1 (three nodes) or 2,2,1 (five).
    #[arg(long, default_value = "1,1,1")]
    pub layout: String,
    /// Let drills inject faults through the API (`/api/v1/faults`, admin token).
    #[arg(long)]
    pub allow_faults: bool,
    /// Opt-in automatic DR takeover: the dr site's nodes take over by themselves after this
    /// many milliseconds without a lease and without any reachable active-site node.
    #[arg(long)]
    pub dr_auto_takeover_ms: Option<u64>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DirArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

pub use model::sample::{ClusterFile, ClusterNode};

/// DIR/pids.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PidsFile {
    nodes: BTreeMap<u64, u32>,
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up(args) => up(args).await,
        ClusterCommand::Down(args) => down(&args),
        ClusterCommand::Status(args) => status(&args).await,
    }
}

/// Parses `--layout a,b,dr` into the site of each node, in node id order.
pub fn parse_layout(layout: &str) -> anyhow::Result<Vec<&'static str>> {
    let hint = "pass --layout A,B,DR with the node count of each site, e.g. 1,1,1 or 2,2,1";
    let counts: Vec<usize> = layout
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            usage_err(
                "E-BAD-LAYOUT",
                format!("layout {layout:?} is not three numbers"),
                hint,
            )
        })?;
    if counts.len() != SITES.len() {
        return Err(usage_err(
            "E-BAD-LAYOUT",
            format!("layout {layout:?} has {} numbers, not 3", counts.len()),
            hint,
        ));
    }
    let total: usize = counts.iter().sum();
    if total == 0 || total > MAX_NODES {
        return Err(usage_err(
            "E-BAD-LAYOUT",
            format!("layout {layout:?} gives {total} nodes"),
            "use 1 to 9 nodes in all",
        ));
    }
    Ok(SITES
        .iter()
        .zip(&counts)
        .flat_map(|(site, n)| std::iter::repeat_n(*site, *n))
        .collect())
}

fn node_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}"))
}

fn config_path(dir: &Path, id: u64) -> PathBuf {
    node_dir(dir, id).join("node.toml")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> anyhow::Error {
    ops_err(
        "E-DIR",
        format!("cannot {what} {}: {e}", path.display()),
        "check that DIR is writable and not full",
    )
}

fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
}

/// The configs of a fresh cluster.
pub fn generate_configs(dir: &Path, sites: &[&str]) -> Vec<NodeFileConfig> {
    let token = random_secret();
    let cookie = random_secret();
    let secret = random_secret();
    let peer = |i: usize, site: &str| {
        let ip = format!("127.0.0.{}", 11 + i);
        let addr = |port: u16| {
            format!("{ip}:{port}")
                .parse()
                .expect("a loopback address is valid")
        };
        PeerConfig {
            site: site.to_string(),
            raft_addr: addr(8001),
            api_addr: addr(8000),
            sip_addr: addr(5060),
            mesh_addr: addr(8002),
        }
    };
    let peers: BTreeMap<u64, PeerConfig> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64 + 1, peer(i, s)))
        .collect();
    peers
        .iter()
        .map(|(id, p)| NodeFileConfig {
            node_id: *id,
            site: p.site.clone(),
            sip_addr: p.sip_addr,
            api_addr: p.api_addr,
            raft_addr: p.raft_addr,
            mesh_addr: p.mesh_addr,
            media_ip: p.sip_addr.ip(),
            // 20,000 even ports: room for 10,000 bridged calls (two legs each) per node; each
            // node has its own loopback address, so the ranges do not collide.
            rtp_port_min: 20000,
            rtp_port_max: 59999,
            data_dir: node_dir(dir, *id).join("data"),
            admin_token: token.clone(),
            mesh_cookie: cookie.clone(),
            secret: secret.clone(),
            peers: peers.clone(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            lease_heartbeat_ms: cluster::LeaseConfig::default().heartbeat_ms,
            lease_ms: cluster::LeaseConfig::default().lease_ms,
            down_after_ms: cluster::LeaseConfig::default().down_after_ms,
            fault_injection: false,
            join_existing: false,
            dr_auto_takeover_after_ms: None,
            admission: Default::default(),
        })
        .collect()
}

fn cluster_nodes(configs: &[NodeFileConfig]) -> Vec<ClusterNode> {
    configs
        .iter()
        .map(|c| ClusterNode {
            id: c.node_id,
            site: c.site.clone(),
            sip: c.sip_addr.to_string(),
            api: format!("http://{}", c.api_addr),
            raft: c.raft_addr.to_string(),
            mesh: c.mesh_addr.to_string(),
        })
        .collect()
}

fn read_cluster_file(dir: &Path) -> anyhow::Result<Option<ClusterFile>> {
    let path = dir.join("cluster.json");
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            ops_err(
                "E-CLUSTER-FILE",
                format!("{} is damaged: {e}", path.display()),
                "remove DIR and run `cluster up` again",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path, e)),
    }
}

fn read_pids(dir: &Path) -> anyhow::Result<PidsFile> {
    let path = dir.join("pids.json");
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            ops_err(
                "E-CLUSTER-FILE",
                format!("{} is damaged: {e}", path.display()),
                "remove pids.json and stop the nodes by hand",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PidsFile::default()),
        Err(e) => Err(io_err("read", &path, e)),
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text).map_err(|e| io_err("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("write", path, e))
}

/// True while `pid` is a live `callgrid node` process (a reused pid of another program is not).
fn node_alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_node = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .any(|a| a == "node");
    !stat.is_empty() && !zombie && is_node
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let sites = parse_layout(&args.layout)?;
    fs::create_dir_all(&args.dir).map_err(|e| io_err("create", &args.dir, e))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| io_err("open", &args.dir, e))?;
    let running: Vec<u64> = read_pids(&dir)?
        .nodes
        .iter()
        .filter(|(_, pid)| node_alive(**pid))
        .map(|(id, _)| *id)
        .collect();
    if !running.is_empty() {
        return Err(ops_err(
            "E-CLUSTER-RUNNING",
            format!(
                "nodes {running:?} of the cluster in {} are already running",
                dir.display()
            ),
            "run `callgrid cluster down --dir DIR` first",
        ));
    }
    let existing = read_cluster_file(&dir)?;
    let configs = match &existing {
        Some(file) => {
            let mut configs = file
                .nodes
                .iter()
                .map(|n| config::load(&config_path(&dir, n.id)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if args.allow_faults || args.dr_auto_takeover_ms.is_some() {
                for c in &mut configs {
                    c.fault_injection |= args.allow_faults;
                    if c.site == "dr" && args.dr_auto_takeover_ms.is_some() {
                        c.dr_auto_takeover_after_ms = args.dr_auto_takeover_ms;
                    }
                    check_config(c)?;
                    let path = config_path(&dir, c.node_id);
                    fs::write(&path, config::to_toml(c)?).map_err(|e| io_err("write", &path, e))?;
                }
            }
            configs
        }
        None => {
            remove_stale_nodes(&dir)?;
            let mut configs = generate_configs(&dir, &sites);
            for c in &mut configs {
                c.fault_injection = args.allow_faults;
                if c.site == "dr" {
                    c.dr_auto_takeover_after_ms = args.dr_auto_takeover_ms;
                }
                check_config(c)?;
            }
            for c in &configs {
                let path = config_path(&dir, c.node_id);
                fs::create_dir_all(node_dir(&dir, c.node_id))
                    .map_err(|e| io_err("create", &node_dir(&dir, c.node_id), e))?;
                fs::write(&path, config::to_toml(c)?).map_err(|e| io_err("write", &path, e))?;
            }
            configs
        }
    };
    let token = configs[0].admin_token.clone();
    check_ports_free(&configs)?;
    let mut children = spawn_nodes(&dir, &configs)?;
    let apis: Vec<(u64, String)> = configs
        .iter()
        .map(|c| (c.node_id, format!("http://{}", c.api_addr)))
        .collect();
    if let Err(e) = wait_healthy(&apis, &mut children).await {
        eprintln!("{}", log_tails(&dir, &configs));
        return Err(e);
    }
    let sample = match (&existing, args.sample) {
        (None, true) => {
            let info = load_sample(&apis[0].1, &token)
                .await
                .inspect_err(|_| eprintln!("{}", log_tails(&dir, &configs)))?;
            wait_caught_up(&apis).await?;
            Some(info)
        }
        (Some(file), sample) => {
            if sample {
                eprintln!(
                    "note: --sample ignored: the cluster in {} keeps its configuration",
                    dir.display()
                );
            }
            file.sample.clone()
        }
        (None, false) => None,
    };
    let file = ClusterFile {
        token,
        nodes: cluster_nodes(&configs),
        sample,
    };
    if existing.is_none() {
        write_json(&dir.join("cluster.json"), &file)?;
    }
    match args.output {
        OutputFormat::Json => output::print(
            &serde_json::to_value(&file).expect("plain data"),
            OutputFormat::Json,
        ),
        OutputFormat::Table => {
            let nodes = serde_json::to_value(&file.nodes).expect("plain data");
            println!("{}", output::table(&nodes));
            println!(
                "cluster is up; details and the admin token in {}",
                dir.join("cluster.json").display()
            );
        }
    }
    Ok(())
}

/// A DIR without cluster.json never finished `up`: whatever an earlier attempt left in the
/// node directories (Raft data of another layout, a half-loaded sample) must not be reused.
fn remove_stale_nodes(dir: &Path) -> anyhow::Result<()> {
    for id in 1..=MAX_NODES as u64 {
        let path = node_dir(dir, id);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| io_err("clean up", &path, e))?;
        }
    }
    Ok(())
}

fn spawn_nodes(
    dir: &Path,
    configs: &[NodeFileConfig],
) -> anyhow::Result<Vec<(u64, std::process::Child)>> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| {
        ops_err(
            "E-SPAWN",
            format!("cannot find the callgrid binary: {e}"),
            "run callgrid by its full path",
        )
    })?;
    let mut pids = PidsFile::default();
    let mut children = Vec::new();
    for c in configs {
        let log_path = node_dir(dir, c.node_id).join("node.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err("open", &log_path, e))?;
        let log2 = log.try_clone().map_err(|e| io_err("open", &log_path, e))?;
        let child = std::process::Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(config_path(dir, c.node_id))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own process group: a Ctrl-C in the terminal that ran `cluster up` does not
            // reach the nodes; `cluster down` stops them.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                ops_err(
                    "E-SPAWN",
                    format!("cannot start node {}: {e}", c.node_id),
                    "check the binary and DIR permissions",
                )
            })?;
        pids.nodes.insert(c.node_id, child.id());
        children.push((c.node_id, child));
    }
    write_json(&dir.join("pids.json"), &pids)?;
    Ok(children)
}

/// Refuses to start over another process's addresses (an old cluster in another DIR).
fn check_ports_free(configs: &[NodeFileConfig]) -> anyhow::Result<()> {
    for c in configs {
        for addr in [c.api_addr, c.raft_addr, c.mesh_addr] {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                return Err(ops_err(
                    "E-ADDR-IN-USE",
                    format!("node {} cannot use {addr}: {e}", c.node_id),
                    "stop the other cluster first (`callgrid cluster down --dir OTHER_DIR`)",
                ));
            }
        }
        if let Err(e) = std::net::UdpSocket::bind(c.sip_addr) {
            return Err(ops_err(
                "E-ADDR-IN-USE",
                format!("node {} cannot use SIP {}: {e}", c.node_id, c.sip_addr),
                "stop whatever listens there (another cluster or SIP server)",
            ));
        }
    }
    Ok(())
}

/// Polls every node's /health until all are ready (a leader is known and the actor mesh
/// reaches every peer) and answer from the processes
/// this command started.
async fn wait_healthy(
    apis: &[(u64, String)],
    children: &mut [(u64, std::process::Child)],
) -> anyhow::Result<()> {
    let pids: BTreeMap<u64, u32> = children
        .iter()
        .map(|(id, child)| (*id, child.id()))
        .collect();
    let http = http_client(Duration::from_secs(2))?;
    let deadline = Instant::now() + UP_DEADLINE;
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(ops_err(
                    "E-NODE-EXITED",
                    format!("node {id} exited during start-up ({exit})"),
                    "read its log below (DIR/node-<id>/node.log); a port may be in use",
                ));
            }
        }
        let mut down = Vec::new();
        for (id, api) in apis {
            let ok = match http.get(format!("{api}/health")).send().await {
                Ok(r) if r.status().is_success() => {
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    body["pid"].as_u64() == pids.get(id).map(|p| u64::from(*p))
                        && body["ready"].as_bool() == Some(true)
                }
                _ => false,
            };
            if !ok {
                down.push(*id);
            }
        }
        if down.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ops_err(
                "E-CLUSTER-NOT-READY",
                format!(
                    "nodes {down:?} not ready (a leader and the actor mesh to every peer) after {}s",
                    UP_DEADLINE.as_secs()
                ),
                "read the node logs below; then `callgrid cluster down --dir DIR`",
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Posts every sample command to node 1, in order.
async fn load_sample(api: &str, token: &str) -> anyhow::Result<model::sample::SampleInfo> {
    let (commands, info) = model::sample::sample(&mut rand::thread_rng());
    let http = http_client(Duration::from_secs(15))?;
    for (i, command) in commands.iter().enumerate() {
        let response = http
            .post(format!("{api}/api/v1/commands"))
            .bearer_auth(token)
            .json(command)
            .send()
            .await
            .map_err(|e| {
                ops_err(
                    "E-SAMPLE",
                    format!("sample command {i} not sent: {e}"),
                    "check node 1's log",
                )
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() || !body["error"].is_null() {
            return Err(ops_err(
                "E-SAMPLE",
                format!("sample command {i} failed (HTTP {status}): {body}"),
                "check node 1's log",
            ));
        }
    }
    Ok(info)
}

/// Waits until every node has applied as much as node 1 (bounded), so the sample is readable
/// everywhere once `up` returns.
async fn wait_caught_up(apis: &[(u64, String)]) -> anyhow::Result<()> {
    let http = http_client(Duration::from_secs(2))?;
    let applied = |v: &Value| v["last_applied"].as_u64().unwrap_or(0);
    let health = |api: String| {
        let http = http.clone();
        async move {
            http.get(format!("{api}/health"))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    let target = health(apis[0].1.clone())
        .await
        .map(|v| applied(&v))
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    for (id, api) in apis {
        loop {
            if health(api.clone())
                .await
                .is_some_and(|v| applied(&v) >= target)
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ops_err(
                    "E-CLUSTER-NOT-READY",
                    format!("node {id} did not catch up with the sample"),
                    "check its log",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn log_tails(dir: &Path, configs: &[NodeFileConfig]) -> String {
    let mut out = String::new();
    for c in configs {
        let path = node_dir(dir, c.node_id).join("node.log");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {} (last 20 lines) ---\n", path.display()));
        for line in &lines[lines.len().saturating_sub(20)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn down(args: &DirArgs) -> anyhow::Result<()> {
    let pids = read_pids(&args.dir)?;
    let signal = |sig: &str, pid: u32| {
        let _ = std::process::Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status();
    };
    for pid in pids.nodes.values() {
        if node_alive(*pid) {
            signal("-TERM", *pid);
        }
    }
    let deadline = Instant::now() + DOWN_DEADLINE;
    while pids.nodes.values().any(|pid| node_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut killed = Vec::new();
    for (id, pid) in &pids.nodes {
        if node_alive(*pid) {
            signal("-KILL", *pid);
            killed.push(*id);
        }
    }
    let path = args.dir.join("pids.json");
    if path.exists() {
        fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
    }
    let report = json!({"stopped": pids.nodes.keys().collect::<Vec<_>>(), "killed": killed});
    match args.output {
        OutputFormat::Json => output::print(&report, OutputFormat::Json),
        OutputFormat::Table if killed.is_empty() => {
            println!("cluster in {} stopped", args.dir.display())
        }
        OutputFormat::Table => println!(
            "cluster in {} stopped; nodes {killed:?} needed SIGKILL",
            args.dir.display()
        ),
    }
    Ok(())
}

async fn status(args: &DirArgs) -> anyhow::Result<()> {
    let file = require_cluster_file(&args.dir)?;
    let pids = read_pids(&args.dir)?;
    let http = http_client(Duration::from_secs(2))?;
    let mut rows = Vec::new();
    for node in &file.nodes {
        let pid = pids.nodes.get(&node.id).copied();
        let health: Option<Value> = match http.get(format!("{}/health", node.api)).send().await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let h = health.unwrap_or(Value::Null);
        rows.push(json!({
            "id": node.id,
            "site": node.site,
            "api": node.api,
            "sip": node.sip,
            "pid": pid,
            "running": pid.is_some_and(node_alive),
            "status": h["status"].as_str().unwrap_or("down"),
            "leader": h["leader"],
            "raft_state": h["raft_state"],
            "last_applied": h["last_applied"],
        }));
    }
    output::print(&Value::Array(rows), args.output);
    Ok(())
}

/// `callgrid dr takeover` (see `crate::dr`): the DR site's nodes save their last applied
/// state, restart as a new cluster of their own, and restore it. Returns the report.
pub async fn dr_takeover(dir: &Path, force: bool) -> anyhow::Result<Value> {
    let started = Instant::now();
    let dir = dir.canonicalize().map_err(|e| io_err("open", dir, e))?;
    let file = require_cluster_file(&dir)?;
    let dr: Vec<&ClusterNode> = file.nodes.iter().filter(|n| n.site == "dr").collect();
    if dr.is_empty() {
        return Err(ops_err(
            "E-DR-NO-SITE",
            "the cluster has no node in site dr",
            "use a layout with a dr site (1,1,1 or 2,2,1)",
        ));
    }
    let dr_ids: Vec<u64> = dr.iter().map(|n| n.id).collect();
    let left_behind: Vec<u64> = file
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| !dr_ids.contains(id))
        .collect();
    let http = http_client(Duration::from_secs(5))?;
    // Right after the active sites die the dr node may still hold its lease (under a
    // second): give it that long to notice before asking.
    if !force {
        let deadline = Instant::now() + Duration::from_secs(5);
        for n in &dr {
            while Instant::now() < deadline {
                let lease = match http.get(format!("{}/health", n.api)).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|h| h["lease"].as_bool()),
                    Err(_) => None,
                };
                if lease != Some(true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut seeds = Vec::new();
    for n in &dr {
        let request = http
            .post(format!("{}/api/v1/dr/seed", n.api))
            .bearer_auth(&file.token)
            .json(&serde_json::json!({"left_behind": left_behind, "force": force}));
        let body = admin_call(
            request,
            (
                "E-DR-UNREACHABLE",
                "the DR node must be running to take over",
            ),
            (
                "E-DR-REFUSED",
                "see the message; --force overrides the quorum check",
            ),
            &format!("dr node {}", n.id),
        )
        .await?;
        seeds.push(body);
    }
    // Stop the DR nodes, rewrite their membership to the DR site alone, start them again.
    let pids = read_pids(&dir)?;
    for id in &dr_ids {
        if let Some(pid) = pids.nodes.get(id) {
            stop_node(*pid).await;
        }
    }
    let mut configs = Vec::new();
    let keep: std::collections::BTreeSet<u64> = dr_ids.iter().copied().collect();
    for id in &dr_ids {
        crate::dr::rewrite_peers(&config_path(&dir, *id), &keep)?;
        configs.push(config::load(&config_path(&dir, *id))?);
    }
    let mut children = spawn_nodes(&dir, &configs)?;
    let mut merged = pids.clone();
    for (id, child) in &children {
        merged.nodes.insert(*id, child.id());
    }
    for id in &left_behind {
        merged.nodes.remove(id);
    }
    write_json(&dir.join("pids.json"), &merged)?;
    let apis: Vec<(u64, String)> = dr.iter().map(|n| (n.id, n.api.clone())).collect();
    if let Err(e) = wait_healthy(&apis, &mut children).await {
        eprintln!("{}", log_tails(&dir, &configs));
        return Err(e);
    }
    for (_, child) in children {
        drop(child);
    }
    let last_applied = seeds
        .iter()
        .filter_map(|s| s["last_applied"].as_u64())
        .max()
        .unwrap_or(0);
    let last_log = seeds
        .iter()
        .filter_map(|s| s["last_log"].as_u64())
        .max()
        .unwrap_or(0);
    Ok(serde_json::json!({
        "dr_nodes": dr_ids,
        "left_behind": left_behind,
        "last_applied": last_applied,
        "last_log": last_log,
        // Entries that reached the DR node but were not applied there (not known committed).
        "unapplied_at_dr": last_log.saturating_sub(last_applied),
        "takeover_ms": started.elapsed().as_millis() as u64,
    }))
}

/// A generated config changed by options must still be valid (a too short automatic DR
/// delay is refused before any node starts).
fn check_config(c: &NodeFileConfig) -> anyhow::Result<()> {
    c.validate()
        .map_err(|(message, hint)| ops_err("E-CONFIG", message, hint))
}

/// `cluster.json` of `dir`, or a clear error when there is none.
fn require_cluster_file(dir: &Path) -> anyhow::Result<ClusterFile> {
    read_cluster_file(dir)?.ok_or_else(|| {
        ops_err(
            "E-NO-CLUSTER",
            format!("no cluster.json in {}", dir.display()),
            "run `callgrid cluster up --dir DIR` first",
        )
    })
}

/// Sends an admin request to a node and returns its JSON answer. `unreachable` and `refused`
/// are (code, hint) of the error when the node does not answer or answers with an error;
/// `what` names the request in the message.
async fn admin_call(
    request: reqwest::RequestBuilder,
    unreachable: (&'static str, &str),
    refused: (&'static str, &str),
    what: &str,
) -> anyhow::Result<Value> {
    let response = request.send().await.map_err(|e| {
        ops_err(
            unreachable.0,
            format!("{what}: no answer: {e}"),
            unreachable.1,
        )
    })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(ops_err(
            refused.0,
            format!("{what}: refused ({status}): {body}"),
            refused.1,
        ));
    }
    Ok(body)
}

/// Stops a node process: SIGTERM, then SIGKILL if it has not exited within 15 s.
async fn stop_node(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if node_alive(pid) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// `callgrid dr failback` (see `crate::dr`): after a DR takeover, the recovered nodes of the
/// active sites (`nodes`, default: every node of the cluster file that is not a member of the
/// dr lineage) rejoin it. Each one's old log is moved aside and it starts in join mode; the
/// leader adds it as a learner and waits for it to catch up; then the whole set votes again
/// and every node must be ready with a lease. Returns the report.
pub async fn dr_failback(dir: &Path, nodes: Option<Vec<u64>>) -> anyhow::Result<Value> {
    let started = Instant::now();
    let dir = dir.canonicalize().map_err(|e| io_err("open", dir, e))?;
    let file = require_cluster_file(&dir)?;
    let http = http_client(Duration::from_secs(5))?;
    // The running lineage: its leader and members, asked of any node that answers.
    let mut leader = None;
    let mut voters: Vec<u64> = Vec::new();
    for n in &file.nodes {
        let Ok(r) = http.get(format!("{}/health", n.api)).send().await else {
            continue;
        };
        let h: Value = r.json().await.unwrap_or(Value::Null);
        if h["lease"].as_bool() == Some(true) {
            leader = h["leader"].as_u64();
            voters = h["voters"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            break;
        }
    }
    let (Some(leader), false) = (leader, voters.is_empty()) else {
        return Err(ops_err(
            "E-FAILBACK-NO-CLUSTER",
            "no node of the cluster holds a lease",
            "failback needs the running (dr) lineage; check `callgrid cluster status --dir DIR`",
        ));
    };
    let leader_api = file
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.api.clone())
        .ok_or_else(|| {
            ops_err(
                "E-FAILBACK-NO-CLUSTER",
                format!("the leader {leader} is not in cluster.json"),
                "run failback against the cluster directory the nodes came from",
            )
        })?;
    let recovered: Vec<u64> = match nodes {
        Some(ids) => ids,
        None => file
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| !voters.contains(id))
            .collect(),
    };
    for id in &recovered {
        if voters.contains(id) || !file.nodes.iter().any(|n| n.id == *id) {
            return Err(ops_err(
                "E-FAILBACK-NODE",
                format!("node {id} is not a recovered node of this cluster (voters {voters:?})"),
                "name nodes of cluster.json that are not members of the running lineage",
            ));
        }
    }
    if recovered.is_empty() {
        return Err(ops_err(
            "E-FAILBACK-NOTHING",
            format!("every node of the cluster is already a voter ({voters:?})"),
            "failback follows a DR takeover",
        ));
    }
    // Stop any recovered node still running its old lineage, retire that log, and start it
    // in join mode with the full membership in its config.
    let at_ms = model::unix_ms(std::time::SystemTime::now());
    let all: Vec<u64> = file.nodes.iter().map(|n| n.id).collect();
    // Each node's config names itself exactly: together they are the full membership.
    let mut every_peer = BTreeMap::new();
    for id in &all {
        let c = config::load(&config_path(&dir, *id))?;
        if let Some(me) = c.peers.get(id) {
            every_peer.insert(*id, me.clone());
        }
    }
    let mut pids = read_pids(&dir)?;
    let mut configs = Vec::new();
    for id in &recovered {
        if let Some(pid) = pids.nodes.get(id) {
            stop_node(*pid).await;
        }
        let mut c = config::load(&config_path(&dir, *id))?;
        crate::dr::retire_lineage(&c.data_dir, at_ms)?;
        c.join_existing = true;
        c.peers = every_peer.clone();
        let path = config_path(&dir, *id);
        fs::write(&path, config::to_toml(&c)?).map_err(|e| io_err("write", &path, e))?;
        configs.push(c);
    }
    let mut children = spawn_nodes(&dir, &configs)?;
    for (id, child) in &children {
        pids.nodes.insert(*id, child.id());
    }
    write_json(&dir.join("pids.json"), &pids)?;
    let token = file.token.clone();
    let mut joined = Vec::new();
    for c in &configs {
        wait_answering(&format!("http://{}", c.api_addr), &mut children).await?;
        let body = serde_json::json!({
            "node_id": c.node_id,
            "site": c.site,
            "raft_addr": c.raft_addr.to_string(),
            "api_addr": c.api_addr.to_string(),
            "sip_addr": c.sip_addr.to_string(),
            "mesh_addr": c.mesh_addr.to_string(),
        });
        let request = http_client(Duration::from_secs(120))?
            .post(format!("{leader_api}/api/v1/cluster/learners"))
            .bearer_auth(&token)
            .json(&body);
        let answer = admin_call(
            request,
            ("E-FAILBACK", "see the leader's log"),
            ("E-FAILBACK", "see the message and the leader's log"),
            &format!("adding node {}", c.node_id),
        )
        .await?;
        joined.push(answer);
    }
    let mut new_voters: Vec<u64> = voters.clone();
    new_voters.extend(&recovered);
    new_voters.sort_unstable();
    let request = http
        .put(format!("{leader_api}/api/v1/cluster/voters"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "voters": new_voters }));
    admin_call(
        request,
        ("E-FAILBACK", "see the leader's log"),
        ("E-FAILBACK", "see the message and the leader's log"),
        &format!("making {new_voters:?} the voters"),
    )
    .await?;
    // The recovered nodes' configs name every node again, and the dr nodes' too, so a later
    // restart of any of them matches the membership; join mode stays off from now on.
    for id in &all {
        let path = config_path(&dir, *id);
        let mut c = config::load(&path)?;
        c.join_existing = false;
        c.peers = every_peer.clone();
        fs::write(&path, config::to_toml(&c)?).map_err(|e| io_err("write", &path, e))?;
    }
    let apis: Vec<(u64, String)> = recovered
        .iter()
        .filter_map(|id| file.nodes.iter().find(|n| n.id == *id))
        .map(|n| (n.id, n.api.clone()))
        .collect();
    wait_healthy(&apis, &mut children).await?;
    // Every node back: a lease, and no longer declared down.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut missing = Vec::new();
        for n in &file.nodes {
            let h: Value = match http.get(format!("{}/health", n.api)).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let down = h["down_nodes"].as_array().is_some_and(|d| !d.is_empty());
            if h["lease"].as_bool() != Some(true) || down {
                missing.push(n.id);
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ops_err(
                "E-FAILBACK-NOT-BACK",
                format!("nodes {missing:?} hold no lease or see nodes down 20 s after failback"),
                "see their logs (DIR/node-<id>/node.log)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (_, child) in children {
        drop(child);
    }
    Ok(serde_json::json!({
        "leader": leader,
        "recovered": recovered,
        "voters": new_voters,
        "joined": joined,
        "failback_ms": started.elapsed().as_millis() as u64,
    }))
}

/// Waits until the node at `api` answers `/health` at all (a joining node is not ready until
/// the leader adds it).
async fn wait_answering(
    api: &str,
    children: &mut [(u64, std::process::Child)],
) -> anyhow::Result<()> {
    let http = http_client(Duration::from_secs(2))?;
    let deadline = Instant::now() + UP_DEADLINE;
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(ops_err(
                    "E-NODE-EXITED",
                    format!("node {id} exited during start-up ({exit})"),
                    "read its log (DIR/node-<id>/node.log); a port may be in use",
                ));
            }
        }
        if http.get(format!("{api}/health")).send().await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ops_err(
                "E-CLUSTER-NOT-READY",
                format!("{api} does not answer"),
                "read its log (DIR/node-<id>/node.log)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts node `id` of the local cluster in `dir` (SIGTERM, then the same config again)
/// and waits until it answers healthy; updates `pids.json`. For the rolling-restart drill.
pub async fn restart_node(dir: &Path, id: u64) -> anyhow::Result<()> {
    let pids = read_pids(dir)?;
    if let Some(pid) = pids.nodes.get(&id) {
        stop_node(*pid).await;
    }
    let config = config::load(&config_path(dir, id))?;
    let mut children = spawn_nodes(dir, std::slice::from_ref(&config))?;
    let mut merged = pids.clone();
    for (node, child) in &children {
        merged.nodes.insert(*node, child.id());
    }
    write_json(&dir.join("pids.json"), &merged)?;
    let apis = vec![(id, format!("http://{}", config.api_addr))];
    wait_healthy(&apis, &mut children).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(parse_layout("1,1,1").unwrap(), vec!["a", "b", "dr"]);
        assert_eq!(
            parse_layout("2,2,1").unwrap(),
            vec!["a", "a", "b", "b", "dr"]
        );
        assert!(parse_layout("1,1").is_err());
        assert!(parse_layout("x").is_err());
        assert!(parse_layout("0,0,0").is_err());
        assert!(parse_layout("5,5,5").is_err());
    }

    #[test]
    fn generated_configs_validate() {
        let configs = generate_configs(Path::new("/tmp/cg"), &parse_layout("2,2,1").unwrap());
        assert_eq!(configs.len(), 5);
        for c in &configs {
            let text = config::to_toml(c).unwrap();
            assert_eq!(&config::parse(&text).unwrap(), c);
        }
        assert_eq!(configs[4].sip_addr.to_string(), "127.0.0.15:5060");
    }
}
