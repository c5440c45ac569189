//! `callgrid drill <kind> --dir DIR`: a failover drill against a cluster from `cluster up`.
//!
//! The drill drives its own traffic (agent phones and carrier callers from `traffic`, RTP
//! both ways, measured at the endpoints), waits until `--calls` calls are established,
//! injects the fault, keeps traffic flowing for `--settle` seconds, stops it, and prints one
//! JSON report (keys other tools read: `calls_before`, `survived`, `dropped`,
//! `detection_ms`, `recovery_ms`, `media_gap_ms` {p50,p99,max}, `cdr_missing`,
//! `cdr_duplicated`, `invariants`, `data_loss_entries`). The exit status is non-zero when an
//! invariant fails.
//!
//! Faults: `kill-node` (`kill -9` of one node, by default the one holding the most calls),
//! `kill-site` (every node of a site, by default `a`), `partition` (cut one node off through
//! the fault-injection API, then heal), `dr-takeover` (kill sites a and b, then take over at
//! dr) and `rolling-restart` (restart every node in turn, waiting for it to rejoin).

mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::traffic::{self, ApiClient, ClusterInfo, Traffic, TrafficConfig};

pub use report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrillKind {
    KillNode,
    KillSite,
    Partition,
    DrTakeover,
    RollingRestart,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[arg(value_enum)]
    pub kind: DrillKind,
    /// The cluster's directory (from `cluster up --sample`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Calls to have established (talking to an agent) when the fault hits.
    #[arg(long, default_value_t = 30)]
    pub calls: usize,
    /// kill-node / partition: the node (default: the one holding the most calls).
    #[arg(long)]
    pub node: Option<u64>,
    /// partition: cut only the link between `--node` and this node (both keep reaching the
    /// others) instead of isolating `--node`.
    #[arg(long)]
    pub link_to: Option<u64>,
    /// kill-site: the site (default: a).
    #[arg(long, default_value = "a")]
    pub site: String,
    /// Seconds of traffic after the fault before the drill stops and checks.
    #[arg(long, default_value_t = 20)]
    pub settle: u64,
    /// Seed of the traffic.
    #[arg(long)]
    pub seed: Option<u64>,
    /// dr-takeover: do not run `dr takeover`; wait for the dr site's automatic takeover
    /// (a cluster from `cluster up --dr-auto-takeover-ms N`).
    #[arg(long)]
    pub auto: bool,
}

/// Waits for the dr site's automatic takeover (config `dr_auto_takeover_after_ms`): every dr
/// node holds a lease in a membership of the dr site alone. Returns what `dr takeover` would
/// report, the last applied index read from the seed the node saved.
async fn wait_auto_takeover(
    cluster: &ClusterInfo,
    dir: &std::path::Path,
    fault_at: Instant,
) -> anyhow::Result<Value> {
    let dr: Vec<_> = cluster.nodes.iter().filter(|n| n.site == "dr").collect();
    let dr_ids: Vec<u64> = dr.iter().map(|n| n.id).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut alone = true;
        for n in &dr {
            let h: Value = match http.get(format!("{}/health", n.api)).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let voters: Vec<u64> = h["voters"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            alone &= h["lease"].as_bool() == Some(true) && voters == dr_ids;
        }
        if alone {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the dr site did not take over by itself within 180 s (is dr_auto_takeover_after_ms set?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The seed the initializer saved (and retired once restored) holds its last applied index.
    let data = dir.join(format!("node-{}", dr_ids[0])).join("data");
    let mut last_applied = None;
    for entry in std::fs::read_dir(&data)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("dr-seed.applied-") {
            let seed: Value = serde_json::from_slice(&std::fs::read(entry.path())?)?;
            last_applied = seed["last_applied"].as_u64().max(last_applied);
        }
    }
    Ok(json!({
        "automatic": true,
        "dr_nodes": dr_ids,
        "last_applied": last_applied,
        "takeover_ms": fault_at.elapsed().as_millis() as u64,
    }))
}

/// What the drill saw of one call when the fault hit (from the cluster's live calls).
#[derive(Debug, Clone)]
struct Before {
    node: u64,
    state: String,
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let report = drill(&args).await?;
    println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    eprintln!("{}", report.table());
    if !report.invariants_hold() {
        bail!("an invariant failed (see \"invariants\" in the report)");
    }
    Ok(())
}

async fn drill(args: &DrillArgs) -> anyhow::Result<Report> {
    let cluster = traffic::load_cluster(&args.dir)?;
    let api = ApiClient::new(&cluster)?;
    let tenants = cluster.tenants().len().max(1);
    let agents_per_tenant = cluster
        .tenants()
        .iter()
        .map(|t| t.agents.len())
        .min()
        .unwrap_or(0);
    if agents_per_tenant == 0 {
        bail!("the cluster has no sample agents (start it with `cluster up --sample`)");
    }
    let target = args.calls.clamp(1, tenants * agents_per_tenant);
    // Calls stay up until the drill ends them: nobody hangs up inside the window.
    let config = TrafficConfig {
        agents_per_tenant,
        // Calls keep coming through the fault and the settle window (new calls must still
        // be answered by the survivors).
        rate_cps: (target as f64 / 10.0).max(3.0),
        duration: Duration::from_secs(600),
        max_calls: target * 3,
        // The established calls and a few to queue; more come after the fault.
        initial_calls: Some(target + target / 5),
        caller_stay: Duration::from_secs(900)..Duration::from_secs(901),
        digit_delay: Duration::from_secs(3),
        agent_talk: Duration::from_secs(900)..Duration::from_secs(901),
        agent_ring: Duration::from_millis(200),
        call_limit: Duration::from_secs(1200),
        seed: args.seed.unwrap_or_else(rand::random),
    };
    let traffic = Traffic::start(&cluster, config).await?;
    let calls = traffic.call_log();

    // Wait until `target` calls talk to agents.
    let deadline = Instant::now() + Duration::from_secs(120);
    let live = loop {
        let live = live_calls(&api).await.unwrap_or_default();
        let talking = live.values().filter(|b| b.state == "talking").count();
        if talking >= target {
            break live;
        }
        if Instant::now() >= deadline {
            traffic.finish(Duration::from_secs(5)).await;
            bail!("only {talking} of {target} calls reached an agent within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let applied_before = max_applied(&cluster).await;
    let started_before = traffic.stats().started();

    // The fault.
    let pids = read_pids(&args.dir)?;
    let fault_at = Instant::now();
    let fault_unix = model::unix_ms(std::time::SystemTime::now());
    let mut victims: Vec<u64> = Vec::new();
    let detection_ms;
    let mut extra = serde_json::Map::new();
    let mut dr_loss: Option<u64> = None;
    match args.kind {
        DrillKind::KillNode => {
            let node = args.node.unwrap_or_else(|| busiest(&live));
            kill(&pids, node)?;
            victims.push(node);
            detection_ms = wait_down(&cluster, &victims, fault_at).await;
        }
        DrillKind::KillSite => {
            victims = cluster
                .nodes
                .iter()
                .filter(|n| n.site == args.site)
                .map(|n| n.id)
                .collect();
            if victims.is_empty() {
                bail!("no node in site {}", args.site);
            }
            for n in &victims {
                kill(&pids, *n)?;
            }
            detection_ms = wait_down(&cluster, &victims, fault_at).await;
        }
        DrillKind::Partition => {
            let node = args.node.unwrap_or_else(|| busiest(&live));
            partition(&cluster, node, args.link_to, true).await?;
            if let Some(other) = args.link_to {
                // Only one link is cut: both nodes still reach the rest, nobody need go down.
                extra.insert("link_cut".into(), json!([node, other]));
                detection_ms = None;
                tokio::time::sleep(Duration::from_secs(args.settle / 2)).await;
                partition(&cluster, node, args.link_to, false).await?;
            } else {
                victims.push(node);
                detection_ms = wait_down(&cluster, &victims, fault_at).await;
                tokio::time::sleep(Duration::from_secs(args.settle / 2)).await;
                partition(&cluster, node, None, false).await?;
                let rejoined = wait_rejoined(&cluster, node, Instant::now()).await;
                extra.insert("rejoin_ms".into(), json!(rejoined));
            }
        }
        DrillKind::DrTakeover => {
            victims = cluster
                .nodes
                .iter()
                .filter(|n| n.site != "dr")
                .map(|n| n.id)
                .collect();
            for n in &victims {
                kill(&pids, *n)?;
            }
            let dr = if args.auto {
                wait_auto_takeover(&cluster, &args.dir, fault_at).await?
            } else {
                crate::cli::cluster::dr_takeover(&args.dir, false).await?
            };
            let took = Instant::now();
            detection_ms = Some(fault_at.elapsed().as_millis() as u64);
            let took_unix = model::unix_ms(std::time::SystemTime::now());
            traffic.allow_more(target);
            // The first call placed after the takeover that reaches an agent.
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut first = None;
            while Instant::now() < deadline {
                let live = live_calls_since(&api, took_unix).await;
                if live > 0 {
                    first = Some(took.elapsed().as_millis() as u64);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let dr_applied = dr["last_applied"].as_u64().unwrap_or(0);
            extra.insert("dr".into(), dr);
            extra.insert("first_answer_after_takeover_ms".into(), json!(first));
            extra.insert(
                "data_loss_window".into(),
                json!({"applied_before_loss": applied_before, "applied_at_dr": dr_applied}),
            );
            dr_loss = Some(applied_before.saturating_sub(dr_applied));
        }
        DrillKind::RollingRestart => {
            // Every node in turn: a graceful stop and start with the same config; the next
            // one only once the restarted node holds a lease again.
            let mut restarts = Vec::new();
            for n in &cluster.nodes {
                let began = Instant::now();
                crate::cli::cluster::restart_node(&args.dir, n.id).await?;
                let back = wait_rejoined(&cluster, n.id, began).await;
                restarts.push(json!({"node": n.id, "back_ms": back}));
            }
            detection_ms = None;
            extra.insert("restarts".into(), json!(restarts));
            // Every node's calls moved (or were resumed): measure their media gaps.
            victims = cluster.nodes.iter().map(|n| n.id).collect();
        }
    }
    traffic.allow_more(target);
    let survivors: Vec<usize> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            !victims.contains(&n.id)
                || matches!(args.kind, DrillKind::Partition | DrillKind::RollingRestart)
        })
        .map(|(i, _)| i)
        .collect();
    let applied_after = survivor_applied(&cluster, &survivors).await;

    // Keep the traffic going through the settle window, then end it.
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    // From here the drill ends the calls itself; a call that ended before was dropped.
    let end_unix = model::unix_ms(std::time::SystemTime::now());
    let stats = traffic.finish(Duration::from_secs(30)).await;
    let records = calls.records();

    // The cluster's record of every call.
    let cdrs = wait_cdrs(&api, &cluster, &survivors, &records).await;
    let by_caller: BTreeMap<&str, &traffic::CallRecord> =
        records.iter().map(|r| (r.caller.as_str(), r)).collect();

    let mut report = Report {
        kind: format!("{:?}", args.kind),
        victims: victims.clone(),
        calls_before: 0,
        queued_before: 0,
        survived: 0,
        dropped: 0,
        queued_kept: 0,
        detection_ms,
        recovery_ms: Vec::new(),
        media_gap_ms: Vec::new(),
        new_calls: stats.started().saturating_sub(started_before),
        new_calls_answered: 0,
        cdr_missing: 0,
        cdr_duplicated: 0,
        data_loss_entries: dr_loss
            .unwrap_or_else(|| applied_before.saturating_sub(applied_after.unwrap_or(0))),
        invariants: BTreeMap::new(),
        dropped_calls: Vec::new(),
        extra,
    };
    let moved = |b: &Before| victims.contains(&b.node);
    let mut moved_detail = Vec::new();
    let cdr_of: BTreeMap<&str, &model::Cdr> = cdrs.iter().map(|c| (c.caller.as_str(), c)).collect();
    for (caller, before) in &live {
        let record = by_caller.get(caller.as_str());
        // Up until the drill ended it (its CDR ends after that), or answered in the end.
        let kept = cdr_of.get(caller.as_str()).is_some_and(|c| {
            c.ended_at_ms >= end_unix
                || (before.state != "talking" && c.disposition == model::Disposition::Answered)
        });
        let both_ways = record.and_then(|r| r.both_ways_after_refresh) != Some(false);
        match before.state.as_str() {
            "talking" => {
                report.calls_before += 1;
                if kept && both_ways {
                    report.survived += 1;
                } else {
                    report.dropped += 1;
                    report.dropped_calls.push(caller.clone());
                }
                if let (true, Some(r)) = (moved(before), record) {
                    // A call whose media never came back counts its whole outage.
                    report
                        .media_gap_ms
                        .push(r.refresh_gap_ms.unwrap_or(r.media_gap_ms));
                    let gap = |m: Option<&traffic::media::MediaReport>| {
                        m.map(|m| json!({"refresh_gap_ms": m.refresh_gap_ms, "refreshes": m.refreshes,
                            "rtp_in_after_refresh": m.rtp_in_after_refresh,
                            "refresh_after_fault_ms": m.last_refresh_unix_ms.map(|t| t.saturating_sub(fault_unix))}))
                    };
                    moved_detail.push(json!({
                        "caller": caller,
                        "caller_side": gap(r.caller_media.as_ref()),
                        "agent_side": gap(r.agent_legs.last().map(|l| &l.media)),
                    }));
                    let refreshed_at = r
                        .caller_media
                        .as_ref()
                        .and_then(|m| m.last_refresh_unix_ms)
                        .unwrap_or(0);
                    // A rolling restart's nodes go one after the other: no single fault time.
                    if refreshed_at > fault_unix && args.kind != DrillKind::RollingRestart {
                        report.recovery_ms.push(refreshed_at - fault_unix);
                    }
                }
            }
            "queued" | "ringing_agent" => {
                report.queued_before += 1;
                if kept {
                    report.queued_kept += 1;
                } else {
                    report.dropped_calls.push(caller.clone());
                }
            }
            _ => {}
        }
    }
    report
        .extra
        .insert("moved_calls".into(), json!(moved_detail));
    report.new_calls_answered = records
        .iter()
        .filter(|r| r.seq >= started_before && !r.agent_legs.is_empty())
        .count() as u64;

    // CDRs: one per call that reached the cluster (I2).
    let reached: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.setup_ms.is_some())
        .map(|r| r.caller.as_str())
        .collect();
    let mut per_caller: BTreeMap<&str, usize> = BTreeMap::new();
    for cdr in &cdrs {
        *per_caller.entry(cdr.caller.as_str()).or_default() += 1;
    }
    let missing: Vec<Value> = records
        .iter()
        .filter(|r| r.setup_ms.is_some() && !per_caller.contains_key(r.caller.as_str()))
        .map(|r| json!({"caller": r.caller, "node": r.node, "seq": r.seq, "sip_call_id": r.sip_call_id}))
        .collect();
    report.cdr_missing = reached
        .iter()
        .filter(|c| !per_caller.contains_key(*c))
        .count() as u64;
    report
        .extra
        .insert("cdr_missing_calls".into(), json!(missing));
    report.cdr_duplicated = per_caller.values().filter(|n| **n > 1).count() as u64;
    report
        .invariants
        .insert("I1".into(), chaos::no_double_booking(&cdrs).is_empty());
    report.invariants.insert(
        "I2".into(),
        report.cdr_missing == 0 && report.cdr_duplicated == 0,
    );
    // I3 covers the loss of one node or one active site; losing both active sites (the DR
    // drill) is beyond it: the report still counts what survived.
    if args.kind != DrillKind::DrTakeover {
        report.invariants.insert(
            "I3".into(),
            report.dropped == 0 && report.queued_kept == report.queued_before,
        );
    }
    let order = chaos::served_in_order(&cdrs, 200);
    report.invariants.insert("I4".into(), order.is_empty());
    let double = chaos::no_double_booking(&cdrs);
    report.extra.insert(
        "violations".into(),
        json!(order
            .iter()
            .chain(double.iter())
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()),
    );
    // I6: nothing committed is lost while a quorum survives; a DR takeover may lose the
    // tail that had not reached dr, which the report states (data_loss_entries).
    let quorum_survived = args.kind != DrillKind::DrTakeover;
    report.invariants.insert(
        "I6".into(),
        !quorum_survived || report.data_loss_entries == 0,
    );
    Ok(report)
}

/// Live calls of the cluster by caller number.
async fn live_calls(api: &ApiClient) -> anyhow::Result<BTreeMap<String, Before>> {
    let calls = api.get(0, "/api/v1/calls").await?;
    Ok(calls
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["caller"].as_str().unwrap_or_default().to_string(),
                Before {
                    node: c["node"].as_u64().unwrap_or(0),
                    state: c["state"].as_str().unwrap_or_default().to_string(),
                },
            )
        })
        .collect())
}

/// Calls talking to an agent that started after `since_unix_ms`.
async fn live_calls_since(api: &ApiClient, since_unix_ms: u64) -> usize {
    let Ok(calls) = api.get(0, "/api/v1/calls").await else {
        return 0;
    };
    calls
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["state"].as_str() == Some("talking")
                && c["started_at_ms"].as_u64().unwrap_or(0) >= since_unix_ms
        })
        .count()
}

fn busiest(live: &BTreeMap<String, Before>) -> u64 {
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for b in live.values().filter(|b| b.state == "talking") {
        *per_node.entry(b.node).or_default() += 1;
    }
    per_node
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(1, |(node, _)| node)
}

fn read_pids(dir: &Path) -> anyhow::Result<BTreeMap<u64, u32>> {
    let path = dir.join("pids.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    Ok(v["nodes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()? as u32)))
        .collect())
}

fn kill(pids: &BTreeMap<u64, u32>, node: u64) -> anyhow::Result<()> {
    let pid = pids
        .get(&node)
        .with_context(|| format!("no pid for node {node} in pids.json"))?;
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {pid} (node {node}) failed");
    }
    Ok(())
}

async fn health(http: &reqwest::Client, base: &str) -> Option<Value> {
    let r = http
        .get(format!("{}/health", base.trim_end_matches('/')))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Milliseconds from the fault until a surviving node reports every victim down.
async fn wait_down(cluster: &ClusterInfo, victims: &[u64], since: Instant) -> Option<u64> {
    let http = reqwest::Client::new();
    let survivors: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| !victims.contains(&n.id))
        .map(|n| n.api.as_str())
        .collect();
    while since.elapsed() < Duration::from_secs(30) {
        for base in &survivors {
            if let Some(h) = health(&http, base).await {
                let down: Vec<u64> = h["down_nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect();
                if victims.iter().all(|v| down.contains(v)) {
                    return Some(since.elapsed().as_millis() as u64);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn wait_rejoined(cluster: &ClusterInfo, node: u64, since: Instant) -> Option<u64> {
    let http = reqwest::Client::new();
    let base = cluster.nodes.iter().find(|n| n.id == node)?.api.clone();
    while since.elapsed() < Duration::from_secs(30) {
        if let Some(h) = health(&http, &base).await {
            let down = h["down_nodes"].as_array().is_some_and(|d| !d.is_empty());
            if h["lease"].as_bool() == Some(true) && !down {
                return Some(since.elapsed().as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Isolates `node` (or heals it) by setting drop faults on both sides.
/// Cuts (or heals) `node` off from every other node, or with `link_to` only the link between
/// `node` and that one (both still reach the rest).
async fn partition(
    cluster: &ClusterInfo,
    node: u64,
    link_to: Option<u64>,
    cut: bool,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for n in &cluster.nodes {
        let peers: Vec<u64> = match link_to {
            Some(other) if n.id == node => vec![other],
            Some(other) if n.id == other => vec![node],
            Some(_) => continue,
            None if n.id == node => cluster
                .nodes
                .iter()
                .map(|m| m.id)
                .filter(|m| *m != node)
                .collect(),
            None => vec![node],
        };
        let url = format!("{}/api/v1/faults", n.api.trim_end_matches('/'));
        let request = if cut {
            let faults: Vec<Value> = peers
                .iter()
                .map(|p| json!({"peer": p, "fault": "drop"}))
                .collect();
            http.post(&url).json(&json!({ "faults": faults }))
        } else {
            http.delete(&url)
        };
        let response = request
            .bearer_auth(&cluster.token)
            .send()
            .await
            .with_context(|| format!("fault API of node {}", n.id))?;
        if !response.status().is_success() {
            bail!(
                "node {} refused the fault ({}): {} (start the cluster with `cluster up --allow-faults`)",
                n.id,
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn max_applied(cluster: &ClusterInfo) -> u64 {
    let http = reqwest::Client::new();
    let mut best = 0;
    for n in &cluster.nodes {
        if let Some(h) = health(&http, &n.api).await {
            best = best.max(h["last_applied"].as_u64().unwrap_or(0));
        }
    }
    best
}

/// The highest applied index among the survivors once one of them leads again.
async fn survivor_applied(cluster: &ClusterInfo, survivors: &[usize]) -> Option<u64> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut best = None;
        for i in survivors {
            if let Some(h) = health(&http, &cluster.nodes[*i].api).await {
                if h["leader"].as_u64().is_some() {
                    best = best.max(h["last_applied"].as_u64());
                }
            }
        }
        if best.is_some() {
            return best;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The CDRs of the run's callers, from a survivor, once every call that reached the cluster
/// has one (or 30 s passed).
async fn wait_cdrs(
    api: &ApiClient,
    cluster: &ClusterInfo,
    survivors: &[usize],
    records: &[traffic::CallRecord],
) -> Vec<model::Cdr> {
    let callers: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.setup_ms.is_some())
        .map(|r| r.caller.as_str())
        .collect();
    let node = survivors.first().copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cdrs = Vec::new();
        for t in cluster.tenants() {
            if let Ok(v) = api
                .get(node, &format!("/api/v1/cdrs?tenant={}", t.id))
                .await
            {
                if let Ok(list) = serde_json::from_value::<Vec<model::Cdr>>(v) {
                    cdrs.extend(
                        list.into_iter()
                            .filter(|c| callers.contains(c.caller.as_str())),
                    );
                }
            }
        }
        let have: BTreeSet<&str> = cdrs.iter().map(|c| c.caller.as_str()).collect();
        if callers.iter().all(|c| have.contains(c)) || Instant::now() >= deadline {
            return cdrs;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
