//! `caps` and `ceiling`: SIPp as the carrier at stepped rates.
//!
//! Each step runs one SIPp carrier per node at an equal share of the rate (carriers send to
//! any node), for `step_secs`. The carrier logs when it sends each INVITE and times
//! INVITE-to-200 (`-trace_rtt`); the answering side logs each INVITE's arrival, the ring.
//! In `ceiling` the answering side is SIPp too (`answer.xml`, one per carrier), so the
//! figures are what SIPp and loopback manage on this machine; in `caps` it is the cluster,
//! with the bench queue's agents answered by our phones. A step holds when at most 0.1% of
//! its calls fail and the latency p99s stay under 100 ms; the bench stops at the first step
//! that does not.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;
use tokio::process::Command;

use super::calls;
use super::report::{unix_ms, Quantiles};
use super::setup::{self, Api, Phones};
use super::{BenchArgs, Report, Target};
use crate::traffic::phone::{PhoneEvent, PhoneReport};
use crate::traffic::ClusterInfo;

const CARRIER_XML: &str = include_str!("scenarios/carrier.xml");
const ANSWER_XML: &str = include_str!("scenarios/answer.xml");

/// A step holds while at most this share of calls fails...
const MAX_FAILED_RATIO: f64 = 0.001;
/// ...and the setup latency p99s stay under this.
const MAX_SETUP_P99_MS: f64 = 100.0;
/// Targets of issue 5.
const CAPS_MIN: f64 = 1_000.0;
const RING_MAX_P99_MS: f64 = 50.0;
/// Ports of the SIPp instances (signalling; media two apart).
const SIPP_PORT_BASE: u16 = 15_100;
const ANSWER_PORT_BASE: u16 = 15_300;
const MEDIA_PORT_BASE: u16 = 16_000;

/// One step's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: u32,
    /// Calls per second the carriers actually sent (first to last INVITE).
    pub sent_rate: f64,
    pub calls: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failed_ratio: f64,
    /// INVITE sent to the answering side's ring (INVITE received), ms.
    pub ring_latency_ms: Quantiles,
    /// Calls whose ring was never seen.
    pub unrung: u64,
    /// INVITE sent to its 200, ms (SIPp's rtd).
    pub answer_latency_ms: Quantiles,
    pub held: bool,
    /// Calls the carriers placed (SIPp's successful and failed calls; `calls` counts those
    /// it never started too).
    pub placed: u64,
    /// What the nodes spent on the step (`caps` only, when the nodes could be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<StepCost>,
}

/// What the nodes spent on a step's calls, read before the carriers start and after they
/// end (so every call's BYE is in): the cost of a call, which sets how far the rate can go
/// on these cores (docs/PERFORMANCE.md, "Caps: what one call costs"). The window also holds
/// what the nodes do anyway (leases, 0.05 cores for an idle cluster).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepCost {
    /// Cores the nodes used together, on average from the step's start to its last BYE.
    pub node_cores: f64,
    /// The nodes' CPU (user and system, all nodes together) per call placed, ms.
    pub node_cpu_ms_per_call: f64,
    /// Raft entries committed in that window, the leases' included.
    pub raft_entries: u64,
    pub raft_entries_per_call: f64,
}

/// Reads the nodes' CPU (`/proc`, pids from `cluster up`) and Raft's applied index (`/health`).
struct Meter<'a> {
    api: &'a Api,
    pids: BTreeMap<u64, u32>,
    nodes: usize,
}

#[derive(Clone, Copy)]
struct Reading {
    at: std::time::Instant,
    cpu_seconds: f64,
    applied: u64,
}

impl Meter<'_> {
    async fn read(&self) -> anyhow::Result<Reading> {
        let cpu_seconds = calls::cpu_seconds(&self.pids)?;
        let at = std::time::Instant::now();
        let mut applied = None;
        for n in 0..self.nodes {
            if let Some(index) = self.api.health(n).await["last_applied"].as_u64() {
                applied = applied.max(Some(index));
            }
        }
        Ok(Reading {
            at,
            cpu_seconds,
            applied: applied.context("no node answered /health")?,
        })
    }

    /// A reading, or None with a warning: a node gone or unreadable costs the step its cost
    /// figures, never the run.
    async fn read_or_warn(&self) -> Option<Reading> {
        if self.pids.is_empty() {
            return None;
        }
        self.read()
            .await
            .inspect_err(
                |e| tracing::warn!(error = %format!("{e:#}"), "the nodes' cost could not be read"),
            )
            .ok()
    }
}

impl StepCost {
    fn between(before: Reading, after: Reading, calls: u64) -> StepCost {
        let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        let entries = after.applied.saturating_sub(before.applied);
        let calls = calls.max(1) as f64;
        StepCost {
            node_cores: cpu / after.at.duration_since(before.at).as_secs_f64().max(1e-9),
            node_cpu_ms_per_call: cpu * 1000.0 / calls,
            raft_entries: entries,
            raft_entries_per_call: entries as f64 / calls,
        }
    }
}

/// Checks that SIPp is there; the README's set-up installs it (package sip-tester).
pub async fn require_sipp() -> anyhow::Result<()> {
    let found = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if found.is_err() {
        bail!("sipp is not installed: `apt-get install -y sip-tester` (scripts/run does it)");
    }
    Ok(())
}

fn rates(args: &BenchArgs) -> anyhow::Result<Vec<u32>> {
    if args.start_rate == 0 || args.rate_step == 0 || args.max_rate < args.start_rate {
        bail!("rates: need 0 < --start-rate <= --max-rate and --rate-step > 0");
    }
    if args.step_secs == 0 {
        bail!("--step-secs must be at least 1");
    }
    Ok((args.start_rate..=args.max_rate)
        .step_by(args.rate_step as usize)
        .collect())
}

/// Agents for the top rate: every call holds one for its talk time plus setup.
pub fn default_agents(max_rate: u32, talk_ms: u64) -> usize {
    let busy_secs = talk_ms as f64 / 1000.0 + 0.5;
    ((f64::from(max_rate) * busy_secs * 1.25).ceil() as usize).clamp(20, 4_000)
}

pub async fn caps(
    cluster: &ClusterInfo,
    args: &BenchArgs,
    with_cluster: bool,
) -> anyhow::Result<Report> {
    require_sipp().await?;
    let rates = rates(args)?;
    let instances = cluster.nodes.len().max(1);
    let agents = args
        .agents
        .unwrap_or_else(|| default_agents(args.max_rate, args.talk_ms));
    let scenario = if with_cluster { "caps" } else { "ceiling" };
    let mut report = Report::new(
        scenario,
        json!({
            "start_rate": args.start_rate, "rate_step": args.rate_step, "max_rate": args.max_rate,
            "step_secs": args.step_secs, "talk_ms": args.talk_ms, "carriers": instances,
            "agents": if with_cluster { Some(agents) } else { None },
            "max_failed_ratio": MAX_FAILED_RATIO, "max_setup_p99_ms": MAX_SETUP_P99_MS,
        }),
    );
    let work = args.dir.join("bench").join(format!("sipp-{}", unix_ms()));
    std::fs::create_dir_all(&work)?;
    // The ceiling first: SIPp to SIPp, the same steps.
    let ceiling = run_steps(&work, "ceiling", &rates, args, instances, None).await?;
    let ceiling_max = max_sustained(&ceiling);
    report.figure("ceiling_steps", &ceiling);
    report.figure("ceiling_max_caps", ceiling_max);
    add_rows(&mut report, "ceiling", &ceiling);
    if !with_cluster {
        report.figure("max_sustained_caps", ceiling_max);
        return Ok(report);
    }

    let api = Api::new(cluster)?;
    // The nodes' pids, for what each step costs them: a cluster not started by `cluster up`
    // has none, and its steps go without.
    let pids = match calls::node_pids(&args.dir) {
        Ok(pids) => pids,
        Err(e) => {
            report.note(format!("no step costs: {e:#}"));
            BTreeMap::new()
        }
    };
    setup::ensure_tenant(&api, agents).await?;
    setup::sign_out_all(&api, agents).await;
    let mut phones =
        Phones::start(cluster, &api, agents, Duration::from_millis(args.talk_ms)).await?;
    let rings: Rings = Arc::default();
    let collector = {
        let rings = rings.clone();
        let mut reports = std::mem::replace(
            &mut phones.reports,
            tokio::sync::mpsc::unbounded_channel().1,
        );
        tokio::spawn(async move {
            while let Some(PhoneReport { event, .. }) = reports.recv().await {
                if let PhoneEvent::Ringing {
                    caller, at_unix_us, ..
                } = event
                {
                    rings.lock().expect("rings").insert(caller, at_unix_us);
                }
            }
        })
    };
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.sip.clone()).collect();
    let meter = Meter {
        api: &api,
        pids,
        nodes: cluster.nodes.len(),
    };
    let steps = run_steps(
        &work,
        "caps",
        &rates,
        args,
        instances,
        Some((&nodes, &rings, &meter)),
    )
    .await;
    collector.abort();
    phones.stop().await;
    setup::sign_out_all(&api, agents).await;
    let steps = steps?;
    // The figures of the highest step that held; when none held, of the first (lowest) one,
    // so the report shows why.
    let best = steps
        .iter()
        .filter(|s| s.held)
        .max_by_key(|s| s.rate)
        .or(steps.first());
    let max_caps = max_sustained(&steps);
    report.figure("steps", &steps);
    report.figure("max_sustained_caps", max_caps);
    report.figure(
        "ceiling_ratio",
        if ceiling_max > 0 {
            f64::from(max_caps) / f64::from(ceiling_max)
        } else {
            0.0
        },
    );
    let (failed_ratio, ring, answer) = best
        .map_or((1.0, Quantiles::default(), Quantiles::default()), |s| {
            (s.failed_ratio, s.ring_latency_ms, s.answer_latency_ms)
        });
    report.figure("failed_ratio", failed_ratio);
    report.figure("ring_latency_ms", ring);
    report.figure("answer_latency_ms", answer);
    report.figure("work_dir", work.display().to_string());
    add_rows(&mut report, "caps", &steps);
    report.target(Target::at_least(
        "max_sustained_caps",
        f64::from(max_caps),
        CAPS_MIN,
    ));
    report.target(Target::at_most(
        "failed_ratio",
        failed_ratio,
        MAX_FAILED_RATIO,
    ));
    report.target(Target::at_most("ring_p99_ms", ring.p99, RING_MAX_P99_MS));
    if args.step_secs < 60 {
        report.note(format!(
            "steps of {} s: the target asks for 60 s sustained",
            args.step_secs
        ));
    }
    Ok(report)
}

type Rings = Arc<Mutex<HashMap<String, u64>>>;

fn max_sustained(steps: &[Step]) -> u32 {
    steps
        .iter()
        .filter(|s| s.held)
        .map(|s| s.rate)
        .max()
        .unwrap_or(0)
}

fn add_rows(report: &mut Report, what: &str, steps: &[Step]) {
    for s in steps {
        report.rows.push((
            format!("{what} {}/s", s.rate),
            vec![
                ("sent/s".into(), format!("{:.0}", s.sent_rate)),
                ("failed".into(), format!("{}/{}", s.failed, s.calls)),
                (
                    "ring p50/p99/p999 ms".into(),
                    format!(
                        "{:.1}/{:.1}/{:.1}",
                        s.ring_latency_ms.p50, s.ring_latency_ms.p99, s.ring_latency_ms.p999
                    ),
                ),
                (
                    "answer p99 ms".into(),
                    format!("{:.1}", s.answer_latency_ms.p99),
                ),
                ("held".into(), s.held.to_string()),
            ]
            .into_iter()
            .chain(s.cost.map(|c| {
                (
                    "node ms/call, entries/call".into(),
                    format!(
                        "{:.1}, {:.2}",
                        c.node_cpu_ms_per_call, c.raft_entries_per_call
                    ),
                )
            }))
            .collect(),
        ));
    }
}

/// Runs the steps in turn until one does not hold. `cluster`: the nodes' SIP addresses, the
/// phones' rings and the nodes' meter; `None` for the SIPp-to-SIPp ceiling.
async fn run_steps(
    work: &Path,
    what: &str,
    rates: &[u32],
    args: &BenchArgs,
    instances: usize,
    cluster: Option<(&[String], &Rings, &Meter<'_>)>,
) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        let dir = work.join(format!("{what}-{rate}"));
        std::fs::create_dir_all(&dir)?;
        let targets = cluster.map(|(nodes, rings, _)| (nodes, rings));
        let meter = cluster.map(|(_, _, meter)| meter);
        let before = match meter {
            Some(meter) => meter.read_or_warn().await,
            None => None,
        };
        let mut step = run_step(&dir, i, rate, args, instances, targets).await?;
        if let (Some(meter), Some(before)) = (meter, before) {
            if let Some(after) = meter.read_or_warn().await {
                step.cost = Some(StepCost::between(before, after, step.placed));
            }
        }
        tracing::info!(what, rate, held = step.held, "bench step done");
        let cost = step.cost.map_or(String::new(), |c| {
            format!(
                ", {:.1} ms of node CPU and {:.2} Raft entries per call",
                c.node_cpu_ms_per_call, c.raft_entries_per_call
            )
        });
        eprintln!(
            "{what} {rate}/s: {}/{} failed, ring p99 {:.1} ms, answer p99 {:.1} ms{cost}{}",
            step.failed,
            step.calls,
            step.ring_latency_ms.p99,
            step.answer_latency_ms.p99,
            if step.held { "" } else { " (did not hold)" }
        );
        let held = step.held;
        steps.push(step);
        if !held {
            break;
        }
    }
    Ok(steps)
}

async fn run_step(
    dir: &Path,
    index: usize,
    rate: u32,
    args: &BenchArgs,
    instances: usize,
    cluster: Option<(&[String], &Rings)>,
) -> anyhow::Result<Step> {
    let total = u64::from(rate) * u64::from(args.step_secs);
    let bye_wait_ms = args.talk_ms + 15_000;
    let limit = Duration::from_secs(u64::from(args.step_secs) + bye_wait_ms / 1000 + 30);
    std::fs::write(
        dir.join("carrier.xml"),
        CARRIER_XML.replace("BYE_WAIT_MS", &bye_wait_ms.to_string()),
    )?;
    std::fs::write(
        dir.join("answer.xml"),
        ANSWER_XML.replace("TALK_MS", &args.talk_ms.to_string()),
    )?;
    if let Some((_, rings)) = cluster {
        rings.lock().expect("rings").clear();
    }
    let share =
        |i: usize| total / instances as u64 + u64::from((i as u64) < total % instances as u64);
    let mut answers = Vec::new();
    let mut targets = Vec::new();
    for i in 0..instances {
        match cluster {
            Some((nodes, _)) => targets.push(nodes[i % nodes.len()].clone()),
            None => {
                let port = ANSWER_PORT_BASE + i as u16;
                let sub = dir.join(format!("answer-{i}"));
                std::fs::create_dir_all(&sub)?;
                let child = sipp(&sub)
                    .args(["-sf", "../answer.xml", "-i", "127.0.0.1"])
                    .args(["-p", &port.to_string()])
                    .args(["-mp", &(MEDIA_PORT_BASE + 100 + 4 * i as u16).to_string()])
                    .args(["-m", &share(i).to_string()])
                    .args(["-trace_logs", "-log_file", "rings.log"])
                    .spawn()
                    .context("starting sipp (answering side)")?;
                answers.push(child);
                targets.push(format!("127.0.0.1:{port}"));
            }
        }
    }
    let mut carriers = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let sub = dir.join(format!("carrier-{i}"));
        std::fs::create_dir_all(&sub)?;
        let child = sipp(&sub)
            .args(["-sf", "../carrier.xml", "-i", "127.0.0.1"])
            .args(["-p", &(SIPP_PORT_BASE + i as u16).to_string()])
            .args(["-mp", &(MEDIA_PORT_BASE + 4 * i as u16).to_string()])
            .args(["-s", &setup::dialled()])
            .args(["-key", "caller_prefix", &caller_prefix(index, i)])
            .args(["-key", "direction", "sendrecv"])
            // `rate` calls per `instances` seconds each: `rate` per second in all.
            .args(["-r", &rate.to_string()])
            .args(["-rp", &(1000 * instances).to_string()])
            .args(["-m", &share(i).to_string()])
            .args([
                "-l",
                &(u64::from(rate) * (bye_wait_ms / 1000 + 5)).to_string(),
            ])
            .args(["-trace_logs", "-log_file", "sent.log"])
            .args(["-trace_rtt", "-rtt_freq", "1"])
            .args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"])
            .arg(target)
            .spawn()
            .context("starting sipp (carrier)")?;
        carriers.push(child);
    }
    for child in carriers.iter_mut().chain(answers.iter_mut()) {
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill().await;
            }
        }
    }
    // Let the last rings' reports arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut sent = HashMap::new();
    let (mut succeeded, mut failed, mut answer_ms) = (0, 0, Vec::new());
    for i in 0..instances {
        let sub = dir.join(format!("carrier-{i}"));
        read_times(&sub.join("sent.log"), &mut sent)?;
        let (ok, ko) = read_stat(&sub.join("stat.csv"))?;
        succeeded += ok;
        failed += ko;
        answer_ms.extend(read_rtt(&sub)?);
    }
    let rang: HashMap<String, u64> = match cluster {
        Some((_, rings)) => rings.lock().expect("rings").clone(),
        None => {
            let mut rang = HashMap::new();
            for i in 0..instances {
                read_times(
                    &dir.join(format!("answer-{i}")).join("rings.log"),
                    &mut rang,
                )?;
            }
            rang
        }
    };
    let mut ring_ms = Vec::new();
    let mut unrung = 0;
    for (caller, at) in &sent {
        match rang.get(caller) {
            Some(r) => ring_ms.push(r.saturating_sub(*at) as f64 / 1000.0),
            None => unrung += 1,
        }
    }
    let (first, last) = sent
        .values()
        .fold((u64::MAX, 0), |(a, b), &t| (a.min(t), b.max(t)));
    let sent_rate = if last > first {
        (sent.len() as f64 - 1.0) / ((last - first) as f64 / 1e6)
    } else {
        0.0
    };
    // Calls SIPp never started (it could not keep up) count as failed, and so does a call
    // whose ring was never seen (a step cannot hold on latencies it did not measure).
    let placed = succeeded + failed;
    let failed = (failed + total.saturating_sub(placed)).max(unrung);
    let failed_ratio = failed as f64 / total.max(1) as f64;
    let measured = !ring_ms.is_empty() && !answer_ms.is_empty();
    let ring = Quantiles::of(&mut ring_ms);
    let answer = Quantiles::of(&mut answer_ms);
    let held = measured
        && failed_ratio <= MAX_FAILED_RATIO
        && ring.p99 <= MAX_SETUP_P99_MS
        && answer.p99 <= MAX_SETUP_P99_MS;
    Ok(Step {
        rate,
        sent_rate,
        calls: total,
        succeeded,
        failed,
        failed_ratio,
        ring_latency_ms: ring,
        unrung,
        answer_latency_ms: answer,
        held,
        placed,
        cost: None,
    })
}

fn sipp(dir: &Path) -> Command {
    let mut command = Command::new("sipp");
    command
        .current_dir(dir)
        // In the foreground (no -bg), so the bench waits on the process itself.
        .args(["-nostdin", "-aa"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The caller numbers of step `step`, carrier `carrier`: unique across the run.
fn caller_prefix(step: usize, carrier: usize) -> String {
    format!("8{:02}{carrier}", step % 100)
}

/// Lines "CALLER SECONDS MICROS" (SIPp prints the numbers as doubles).
fn read_times(path: &Path, into: &mut HashMap<String, u64>) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(caller), Some(s), Some(us)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(s), Ok(us)) = (s.parse::<f64>(), us.parse::<f64>()) else {
            continue;
        };
        into.insert(caller.to_string(), s as u64 * 1_000_000 + us as u64);
    }
    Ok(())
}

/// Successful and failed calls from the last row of SIPp's `-trace_stat` file.
pub(super) fn read_stat(path: &Path) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading SIPp statistics {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.next_back().unwrap_or_default().split(';').collect();
    let column = |name: &str| -> u64 {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((column("SuccessfulCall(C)"), column("FailedCall(C)")))
}

/// SIPp's `-trace_rtt` file (`*_rtt.csv`: date;response time ms;rtd number).
pub(super) fn read_rtt(dir: &Path) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path: PathBuf = entry?.path();
        if !path.to_string_lossy().ends_with("_rtt.csv") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines().skip(1) {
            if let Some(v) = line.split(';').nth(1).and_then(|v| v.trim().parse().ok()) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipp_logs_and_statistics_parse() {
        let dir = std::env::temp_dir().join(format!("cg-bench-parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("sent.log"),
            "80001 1796596323.000000 369145.000000\nnoise\n80002 1796596323.000000 469145.000000 sip:80002@\n",
        )
        .unwrap();
        let mut times = HashMap::new();
        read_times(&dir.join("sent.log"), &mut times).unwrap();
        assert_eq!(times["80001"], 1_796_596_323_369_145);
        assert_eq!(times["80002"], 1_796_596_323_469_145);
        std::fs::write(
            dir.join("stat.csv"),
            "StartTime;SuccessfulCall(C);FailedCall(C);\nx;1;0;\nx;249;1;\n",
        )
        .unwrap();
        assert_eq!(read_stat(&dir.join("stat.csv")).unwrap(), (249, 1));
        std::fs::write(
            dir.join("carrier_123_rtt.csv"),
            "Date_ms;response_time_ms;rtd_no\n104.001;3;setup\n204.001;12;setup\n",
        )
        .unwrap();
        assert_eq!(read_rtt(&dir).unwrap(), vec![3.0, 12.0]);
        assert!(read_stat(&dir.join("missing.csv")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_steps_cost_is_what_the_nodes_spent_per_call() {
        let at = std::time::Instant::now();
        let before = Reading {
            at,
            cpu_seconds: 10.0,
            applied: 1_000,
        };
        let after = Reading {
            at: at + Duration::from_secs(3),
            cpu_seconds: 11.5,
            applied: 1_585,
        };
        let cost = StepCost::between(before, after, 150);
        assert!((cost.node_cores - 0.5).abs() < 1e-9);
        assert!((cost.node_cpu_ms_per_call - 10.0).abs() < 1e-9);
        assert_eq!(cost.raft_entries, 585);
        assert!((cost.raft_entries_per_call - 3.9).abs() < 1e-9);
    }

    #[test]
    fn steps_and_agents_follow_the_arguments() {
        assert_eq!(default_agents(1000, 1000), 1875);
        assert_eq!(default_agents(10, 100), 20, "at least 20");
        let step = |rate, held| Step {
            rate,
            sent_rate: 0.0,
            calls: 0,
            succeeded: 0,
            failed: 0,
            failed_ratio: 0.0,
            ring_latency_ms: Quantiles::default(),
            unrung: 0,
            answer_latency_ms: Quantiles::default(),
            held,
            placed: 0,
            cost: None,
        };
        assert_eq!(
            max_sustained(&[step(100, true), step(200, true), step(300, false)]),
            200
        );
        assert_eq!(max_sustained(&[step(100, false)]), 0);
    }
}
