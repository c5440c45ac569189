//! `callgrid demo`: a sample cluster under synthetic load, with live figures and a summary.
//!
//! Call order: `run` brings the cluster up in a directory (through the `bring_up` hook main.rs
//! passes in), starts [`crate::traffic::Traffic`], prints figures every 2 s computed from the
//! API (CDRs, queues, agents) and the traffic's counters, stops on the duration or Ctrl-C,
//! lets calls in progress end (bounded), prints the summary (table or JSON) and always tears
//! the cluster down, also when something failed on the way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::traffic::{ApiClient, ClusterInfo, Traffic, TrafficConfig, TrafficStats};

/// Service level threshold: answered within 20 s (the classic 80/20 target's 20).
pub const SERVICE_LEVEL_MS: u64 = 20_000;
/// Live figures refresh period.
const TICK: Duration = Duration::from_secs(2);
/// How long calls in progress may take to end once generation stops.
const DRAIN_GRACE: Duration = Duration::from_secs(45);

#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub duration: Duration,
    pub output_json: bool,
    /// Where the cluster lives; a fresh temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Mean calls per second.
    pub rate: f64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            duration: Duration::from_secs(120),
            output_json: false,
            dir: None,
            rate: 2.0,
        }
    }
}

/// Figures for one node, one province or the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub released: u64,
    pub other: u64,
    /// Answered within [`SERVICE_LEVEL_MS`] / offered.
    pub service_level: f64,
    pub avg_wait_ms: u64,
    #[serde(skip)]
    answered_in_time: u64,
    #[serde(skip)]
    wait_sum_ms: u64,
    #[serde(skip)]
    waited: u64,
}

impl Figures {
    fn add_cdr(&mut self, cdr: &Value) {
        self.offered += 1;
        let wait_ms = cdr.get("wait_ms").and_then(Value::as_u64).unwrap_or(0);
        match cdr.get("disposition").and_then(Value::as_str).unwrap_or("") {
            "answered" => {
                self.answered += 1;
                if wait_ms <= SERVICE_LEVEL_MS {
                    self.answered_in_time += 1;
                }
            }
            "abandoned" => self.abandoned += 1,
            "released" => self.released += 1,
            _ => self.other += 1,
        }
        if cdr.get("queue").is_some_and(|q| !q.is_null()) {
            self.wait_sum_ms += wait_ms;
            self.waited += 1;
        }
    }

    fn finish(&mut self) {
        self.service_level = if self.offered == 0 {
            0.0
        } else {
            self.answered_in_time as f64 / self.offered as f64
        };
        self.avg_wait_ms = self.wait_sum_ms.checked_div(self.waited).unwrap_or(0);
    }
}

/// The summary `--output json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub duration_s: f64,
    pub totals: Figures,
    pub per_node: BTreeMap<String, Figures>,
    pub per_province: BTreeMap<String, Figures>,
    /// What the synthetic endpoints saw (calls placed, failures, RTP).
    pub traffic: TrafficStats,
}

/// Totals, per node (by `entry_node`) and per province (by `tenant`) from CDRs.
pub fn summarise_cdrs(
    cdrs: &[Value],
) -> (
    Figures,
    BTreeMap<String, Figures>,
    BTreeMap<String, Figures>,
) {
    let mut totals = Figures::default();
    let mut per_node: BTreeMap<String, Figures> = BTreeMap::new();
    let mut per_province: BTreeMap<String, Figures> = BTreeMap::new();
    for cdr in cdrs {
        totals.add_cdr(cdr);
        let node = cdr
            .get("entry_node")
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default();
        per_node.entry(node).or_default().add_cdr(cdr);
        let tenant = cdr
            .get("tenant")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        per_province.entry(tenant).or_default().add_cdr(cdr);
    }
    totals.finish();
    per_node.values_mut().for_each(Figures::finish);
    per_province.values_mut().for_each(Figures::finish);
    (totals, per_node, per_province)
}

/// Runs the demo. `bring_up(dir)` must start a sample cluster and write `dir/cluster.json`;
/// `tear_down(dir)` stops it. Both are blocking; they run on a blocking-capable thread.
pub async fn run(
    args: DemoArgs,
    bring_up: impl FnOnce(&Path) -> anyhow::Result<()>,
    tear_down: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("callgrid-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    if !args.output_json {
        println!("starting a three-node sample cluster in {}", dir.display());
    }
    let result = blocking(|| bring_up(&dir));
    let result = match result {
        Ok(()) => drive(&args, &dir).await,
        Err(error) => Err(error.context("bringing the demo cluster up")),
    };
    if !args.output_json {
        println!("tearing the cluster down");
    }
    let down = blocking(|| tear_down(&dir));
    match (result, down) {
        (Ok(summary), Ok(())) => {
            print_summary(&summary, args.output_json)?;
            Ok(())
        }
        (Ok(summary), Err(error)) => {
            print_summary(&summary, args.output_json)?;
            Err(error.context("tearing the demo cluster down"))
        }
        (Err(error), _) => Err(error),
    }
}

/// Runs a blocking hook without stalling the runtime's other tasks (and so that a hook that
/// builds its own runtime does not panic inside ours).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

async fn drive(args: &DemoArgs, dir: &Path) -> anyhow::Result<Summary> {
    let cluster = crate::traffic::load_cluster(dir)?;
    let api = ApiClient::new(&cluster)?;
    let config = TrafficConfig {
        rate_cps: args.rate,
        duration: args.duration,
        ..TrafficConfig::default()
    };
    if !args.output_json {
        println!("registering agent phones and signing agents in...");
    }
    let traffic = Traffic::start(&cluster, config).await?;
    let started = Instant::now();
    let stop_at = started + args.duration;
    let mut ticker = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if !args.output_json {
                    match live_figures(&api, &cluster, &traffic.stats(), started.elapsed()).await {
                        Ok(text) => println!("{text}"),
                        Err(error) => println!("(figures unavailable: {error:#})"),
                    }
                }
                if Instant::now() >= stop_at {
                    break;
                }
            }
            _ = &mut ctrl_c => {
                if !args.output_json {
                    println!("interrupted: stopping the calls");
                }
                break;
            }
        }
    }
    if !args.output_json {
        println!(
            "no new calls; waiting up to {} s for calls in progress to end",
            DRAIN_GRACE.as_secs()
        );
    }
    let traffic_stats = traffic.finish(DRAIN_GRACE).await;
    let cdrs = wait_for_cdrs(&api, &traffic_stats).await;
    let (totals, per_node, per_province) = summarise_cdrs(&cdrs);
    Ok(Summary {
        duration_s: started.elapsed().as_secs_f64(),
        totals,
        per_node,
        per_province,
        traffic: traffic_stats,
    })
}

/// CDRs are written when a call ends, through Raft: wait (bounded) until there is one per
/// call the traffic placed.
async fn wait_for_cdrs(api: &ApiClient, stats: &TrafficStats) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let expected = stats.started() as usize;
    let mut cdrs = Vec::new();
    loop {
        if let Ok(Value::Array(found)) = api.get(0, "/api/v1/cdrs").await {
            cdrs = found;
        }
        if cdrs.len() >= expected || Instant::now() >= deadline {
            return cdrs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One screen of live figures.
async fn live_figures(
    api: &ApiClient,
    cluster: &ClusterInfo,
    stats: &TrafficStats,
    elapsed: Duration,
) -> anyhow::Result<String> {
    let cdrs = match api.get(0, "/api/v1/cdrs").await? {
        Value::Array(cdrs) => cdrs,
        _ => Vec::new(),
    };
    let (totals, per_node, per_province) = summarise_cdrs(&cdrs);
    let mut waiting: BTreeMap<String, u64> = BTreeMap::new();
    let mut agents_by_province: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut agents_by_node: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (n, tenant) in cluster.tenants().iter().enumerate() {
        if let Ok(Value::Array(queues)) = api
            .get(n, &format!("/api/v1/queues?tenant={}", tenant.id))
            .await
        {
            let sum = queues
                .iter()
                .filter_map(|q| q.get("waiting").and_then(Value::as_u64))
                .sum();
            waiting.insert(tenant.id.clone(), sum);
        }
        if let Ok(Value::Array(agents)) = api
            .get(n, &format!("/api/v1/tenants/{}/agents", tenant.id))
            .await
        {
            for agent in &agents {
                let state = agent
                    .get("state")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                if state == "signed_out" {
                    continue;
                }
                *agents_by_province
                    .entry(tenant.id.clone())
                    .or_default()
                    .entry(state.clone())
                    .or_default() += 1;
                let owner = agent
                    .get("owner")
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                *agents_by_node
                    .entry(owner)
                    .or_default()
                    .entry(state)
                    .or_default() += 1;
            }
        }
    }
    let mut out = format!(
        "\n== t={:>4}s  offered {}  answered {}  abandoned {}  released {}  in progress {}  SL {:.0}%  avg wait {} ms\n",
        elapsed.as_secs(),
        totals.offered + stats.in_progress(),
        totals.answered,
        totals.abandoned,
        totals.released,
        stats.in_progress(),
        totals.service_level * 100.0,
        totals.avg_wait_ms
    );
    out.push_str(&format!(
        "{:<10} {:>8} {:>8} {:>9} {:>8} {:>6}  agents\n",
        "node", "offered", "answered", "abandoned", "waiting", "SL"
    ));
    for node in &cluster.nodes {
        let key = node.id.to_string();
        let figures = per_node.get(&key).cloned().unwrap_or_default();
        let live = stats.per_node.get(&node.id).map_or(0, |c| c.in_progress);
        out.push_str(&format!(
            "{:<10} {:>8} {:>8} {:>9} {:>8} {:>5.0}%  {}\n",
            format!("{} ({})", node.id, node.site),
            figures.offered + live,
            figures.answered,
            figures.abandoned,
            format!("{live}*"),
            figures.service_level * 100.0,
            states(agents_by_node.get(&key))
        ));
    }
    out.push_str(&format!(
        "{:<10} {:>8} {:>8} {:>9} {:>8} {:>6}  agents\n",
        "province", "offered", "answered", "abandoned", "waiting", "SL"
    ));
    for tenant in cluster.tenants() {
        let figures = per_province.get(&tenant.id).cloned().unwrap_or_default();
        let live = stats
            .per_province
            .get(&tenant.id)
            .map_or(0, |c| c.in_progress);
        out.push_str(&format!(
            "{:<10} {:>8} {:>8} {:>9} {:>8} {:>5.0}%  {}\n",
            tenant.id,
            figures.offered + live,
            figures.answered,
            figures.abandoned,
            waiting
                .get(&tenant.id)
                .map_or("-".to_string(), u64::to_string),
            figures.service_level * 100.0,
            states(agents_by_province.get(&tenant.id))
        ));
    }
    out.push_str(
        "(* node rows: calls in progress entered there; agents by the node hosting their actor)",
    );
    Ok(out)
}

fn states(counts: Option<&BTreeMap<String, u64>>) -> String {
    counts.map_or_else(String::new, |m| {
        m.iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    println!("\n== summary after {:.0} s", summary.duration_s);
    println!(
        "{:<10} {:>8} {:>8} {:>9} {:>8} {:>6} {:>9}",
        "", "offered", "answered", "abandoned", "released", "SL", "avg wait"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:<10} {:>8} {:>8} {:>9} {:>8} {:>5.0}% {:>6} ms",
            name,
            f.offered,
            f.answered,
            f.abandoned,
            f.released,
            f.service_level * 100.0,
            f.avg_wait_ms
        )
    };
    row("total", &summary.totals);
    for (node, figures) in &summary.per_node {
        row(&format!("node {node}"), figures);
    }
    for (province, figures) in &summary.per_province {
        row(province, figures);
    }
    let t = &summary.traffic;
    println!(
        "synthetic traffic: {} calls placed, {} failed at setup, {} phones registered, {} agent answers, RTP in: callers {} / agents {}",
        t.started(),
        t.per_node.values().map(|c| c.failed).sum::<u64>(),
        t.phones_registered,
        t.agent_answers,
        t.caller_rtp_in,
        t.agent_rtp_in
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdrs_summarise_per_node_and_province() {
        let cdrs: Vec<Value> = serde_json::from_str(
            r#"[
            {"tenant":"gd","entry_node":1,"disposition":"answered","wait_ms":1000,"queue":"general"},
            {"tenant":"gd","entry_node":2,"disposition":"answered","wait_ms":30000,"queue":"billing"},
            {"tenant":"yn","entry_node":1,"disposition":"abandoned","wait_ms":5000,"queue":"general"},
            {"tenant":"yn","entry_node":3,"disposition":"released","wait_ms":0,"queue":null}
        ]"#,
        )
        .expect("json");
        let (totals, per_node, per_province) = summarise_cdrs(&cdrs);
        assert_eq!(
            (
                totals.offered,
                totals.answered,
                totals.abandoned,
                totals.released
            ),
            (4, 2, 1, 1)
        );
        assert!((totals.service_level - 0.25).abs() < 1e-9);
        assert_eq!(totals.avg_wait_ms, 12_000);
        assert_eq!(per_node["1"].offered, 2);
        assert_eq!(per_province["gd"].answered, 2);
        let json = serde_json::to_value(&totals).expect("serialises");
        assert!(json.get("answered_in_time").is_none());
    }
}
