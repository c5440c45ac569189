//! The API-side scenarios: `raft` (inside the nodes), `signin` and `events`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::report::Quantiles;
use super::setup::{self, Api};
use super::{BenchArgs, Report, Target};
use crate::api::bench::RaftBenchResult;
use crate::traffic::ClusterInfo;

/// Targets of issue 5.
const RAFT_MIN_PER_SEC: f64 = 20_000.0;
const RAFT_MAX_P99_MS: f64 = 10.0;
const SIGNIN_MIN_PER_SEC: f64 = 2_000.0;
const EVENTS_MAX_P99_MS: f64 = 250.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every node writes its share of the checkpoints at once, as calls on every node do: by
/// writers that wait for their commits, or at its share of `--rate`.
pub async fn raft(cluster: &ClusterInfo, args: &BenchArgs) -> anyhow::Result<Report> {
    let api = Api::new(cluster)?;
    let nodes = cluster.nodes.len().max(1);
    let concurrency = args.concurrency.unwrap_or(768).max(nodes);
    let rate_per_node = args.rate.map(|r| (r as usize).div_ceil(nodes));
    let live_per_node = (args.live_calls as usize).div_ceil(nodes);
    let mut report = Report::new(
        "raft",
        match args.rate {
            Some(rate) => json!({
                "checkpoints": args.checkpoints, "rate": rate, "nodes": nodes,
                "live_calls": args.live_calls,
                "load": "open loop: each node submits its share of the rate on schedule",
            }),
            None => json!({
                "checkpoints": args.checkpoints, "concurrency": concurrency, "nodes": nodes,
                "live_calls": args.live_calls,
                "load": "closed loop: each writer waits for its commit",
            }),
        },
    );
    // The nodes' CPU over the run (clean-up included), when their pids are known: a cluster
    // not started by `cluster up` has none, and the run goes without, as caps steps do.
    let pids = match super::calls::node_pids(&args.dir) {
        Ok(pids) => Some(pids),
        Err(e) => {
            report.note(format!("no node CPU figures: {e:#}"));
            None
        }
    };
    let cpu = || {
        pids.as_ref()
            .and_then(|p| super::calls::cpu_seconds(p).ok())
    };
    let cpu_before = cpu();
    let started = Instant::now();
    let runs = (0..nodes).map(|n| {
        let api = api.clone();
        let body = json!({
            "checkpoints": (args.checkpoints as usize / nodes).max(1),
            "concurrency": concurrency / nodes,
            "rate": rate_per_node,
            "live_calls": live_per_node,
        });
        async move {
            let (status, answer) = api.post(n, "/api/v1/bench/raft", &body).await?;
            if status != 200 {
                bail!("node {}: raft bench: {status} {answer}", n + 1);
            }
            Ok(serde_json::from_value::<RaftBenchResult>(answer)?)
        }
    });
    let results: Vec<RaftBenchResult> = futures::future::try_join_all(runs).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_used = cpu()
        .zip(cpu_before)
        .map(|(after, before)| (after - before).max(0.0));
    let committed: u64 = results.iter().map(|r| r.committed).sum();
    let failed: u64 = results.iter().map(|r| r.failed).sum();
    let longest = results.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let per_sec = committed as f64 / longest.max(1e-9);
    // Quantiles cannot be merged exactly; the worst node's is the cluster's bound.
    let p50 = results.iter().map(|r| r.commit_ms.p50).fold(0.0, f64::max);
    let p99 = results.iter().map(|r| r.commit_ms.p99).fold(0.0, f64::max);
    let entries = results.iter().map(|r| r.raft_entries).max().unwrap_or(0);
    let left_behind: u64 = results.iter().map(|r| r.left_behind).sum();
    let coalesced: u64 = results.iter().map(|r| r.coalesced).sum();
    report.figure("committed", committed);
    report.figure("failed", failed);
    report.figure("left_behind", left_behind);
    // Checkpoints answered by a newer one of their synthetic call, never written themselves.
    report.figure("coalesced", coalesced);
    report.figure("seconds", longest);
    report.figure("wall_seconds_with_cleanup", seconds);
    report.figure("committed_per_sec", per_sec);
    report.figure("commit_ms", json!({ "p50": p50, "p99": p99 }));
    report.figure("raft_entries", entries);
    report.figure(
        "checkpoints_per_entry",
        committed as f64 / (entries.max(1)) as f64,
    );
    if pids.is_some() && cpu_used.is_none() {
        report.note("no node CPU figures: a node's /proc could not be read");
    }
    if let Some(cpu) = cpu_used {
        report.figure("node_cores", cpu / seconds.max(1e-9));
        report.figure(
            "node_cpu_ms_per_1000_checkpoints",
            cpu * 1e6 / committed.max(1) as f64,
        );
    }
    if rate_per_node.is_some() {
        let offered: f64 = results.iter().filter_map(|r| r.offered_per_sec).sum();
        let in_flight: u64 = results.iter().filter_map(|r| r.most_in_flight).sum();
        report.figure("offered_per_sec", offered);
        report.figure("most_in_flight", in_flight);
    }
    report.figure("per_node", &results);
    for r in &results {
        report.rows.push((
            format!("node {}", r.node),
            vec![
                ("committed/s".into(), format!("{:.0}", r.committed_per_sec)),
                ("p50 ms".into(), format!("{:.2}", r.commit_ms.p50)),
                ("p99 ms".into(), format!("{:.2}", r.commit_ms.p99)),
            ],
        ));
    }
    report.target(Target::at_least(
        "committed_per_sec",
        per_sec,
        RAFT_MIN_PER_SEC,
    ));
    report.target(Target::at_most("commit_p99_ms", p99, RAFT_MAX_P99_MS));
    report.target(Target::at_most("failed", failed as f64, 0.0));
    report.target(Target::at_most("left_behind", left_behind as f64, 0.0));
    Ok(report)
}

/// Rounds of sign-in, ready, not-ready, sign-out for every bench agent, `concurrency`
/// agents at a time, spread over the nodes.
pub async fn signin(cluster: &ClusterInfo, args: &BenchArgs) -> anyhow::Result<Report> {
    let api = Api::new(cluster)?;
    let agents = args.agents.unwrap_or(1_000).max(1);
    let concurrency = args.concurrency.unwrap_or(64).max(1);
    let rounds = args.rounds.max(1);
    let mut report = Report::new(
        "signin",
        json!({ "agents": agents, "rounds": rounds, "concurrency": concurrency }),
    );
    setup::ensure_tenant(&api, agents).await?;
    setup::sign_out_all(&api, agents).await;
    // Each phase does one verb for every agent, `concurrency` requests at a time, spread
    // over the nodes; a sign-in phase's rate is the sign-ins/s figure.
    const VERBS: [&str; 4] = ["sign-in", "ready", "not-ready", "sign-out"];
    let mut phase_secs = [0.0f64; 4];
    let mut samples: [Vec<f64>; 4] = Default::default();
    let mut errors = Vec::new();
    for _ in 0..rounds {
        for (v, verb) in VERBS.iter().enumerate() {
            let started = Instant::now();
            let results: Vec<Result<f64, String>> = stream::iter(0..agents)
                .map(|n| {
                    let api = &api;
                    async move {
                        let number = setup::agent_number(n);
                        let path =
                            format!("/api/v1/tenants/{}/agents/{number}/{verb}", setup::TENANT);
                        let body = match *verb {
                            "sign-in" => json!({ "extension": number }),
                            "not-ready" => json!({ "reason": "break" }),
                            _ => Value::Null,
                        };
                        let t = Instant::now();
                        match api.post(n + v, &path, &body).await {
                            Ok((200, _)) => Ok(ms(t.elapsed())),
                            Ok((status, answer)) => {
                                Err(format!("{verb} {number}: {status} {answer}"))
                            }
                            Err(e) => Err(format!("{verb} {number}: {e:#}")),
                        }
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            phase_secs[v] += started.elapsed().as_secs_f64();
            for r in results {
                match r {
                    Ok(took) => samples[v].push(took),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    let seconds: f64 = phase_secs.iter().sum();
    let changes_total: usize = samples.iter().map(Vec::len).sum();
    let sign_ins_per_sec = samples[0].len() as f64 / phase_secs[0].max(1e-9);
    let changes_per_sec = changes_total as f64 / seconds.max(1e-9);
    report.figure("seconds", seconds);
    report.figure("sign_ins", samples[0].len());
    report.figure("state_changes", changes_total);
    report.figure("sign_ins_per_sec", sign_ins_per_sec);
    report.figure("state_changes_per_sec", changes_per_sec);
    for (v, verb) in VERBS.iter().enumerate() {
        let per_sec = samples[v].len() as f64 / phase_secs[v].max(1e-9);
        let q = Quantiles::of(&mut samples[v]);
        report.rows.push((
            verb.to_string(),
            vec![
                ("per s".into(), format!("{per_sec:.0}")),
                ("p50 ms".into(), format!("{:.1}", q.p50)),
                ("p99 ms".into(), format!("{:.1}", q.p99)),
            ],
        ));
        report.figure(&format!("{}_ms", verb.replace('-', "_")), q);
    }
    report.figure("errors", errors.len());
    if let Some(first) = errors.first() {
        report.note(format!("first error: {first}"));
    }
    report.target(Target::at_least(
        "sign_ins_per_sec",
        sign_ins_per_sec,
        SIGNIN_MIN_PER_SEC,
    ));
    report.target(Target::at_most("errors", errors.len() as f64, 0.0));
    Ok(report)
}

type Waiting = Arc<Mutex<HashMap<String, VecDeque<(String, oneshot::Sender<Instant>)>>>>;

/// An agent-state change posted to node 1; the time until node 2's WebSocket streams it.
/// `AGENTS` agents change state at once, each waiting for its event before the next change.
pub async fn events(cluster: &ClusterInfo, args: &BenchArgs) -> anyhow::Result<Report> {
    const AGENTS: usize = 10;
    let api = Api::new(cluster)?;
    if cluster.nodes.len() < 2 {
        bail!("the events bench needs two nodes");
    }
    let agents = args.agents.unwrap_or(AGENTS).clamp(1, 1_000);
    let changes = args.changes.max(1);
    let mut report = Report::new(
        "events",
        json!({ "changes": changes, "agents": agents, "change_node": cluster.nodes[0].id,
                "event_node": cluster.nodes[1].id }),
    );
    setup::ensure_tenant(&api, agents).await?;
    setup::sign_out_all(&api, agents).await;
    for n in 0..agents {
        setup::sign_in_ready(&api, n).await?;
    }
    let waiting: Waiting = Arc::default();
    let reader = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}/api/v1/events",
            api.bases[1].replacen("http://", "ws://", 1)
        );
        let mut request = url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", cluster.token).parse()?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let waiting = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let at = Instant::now();
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if event["type"] != "agent_state" || event["tenant"] != setup::TENANT {
                    continue;
                }
                let agent = event["agent"].as_str().unwrap_or_default();
                let state = event["state"].as_str().unwrap_or_default();
                let mut waiting = waiting.lock().expect("waiting");
                if let Some(queue) = waiting.get_mut(agent) {
                    if queue.front().is_some_and(|(s, _)| s == state) {
                        if let Some((_, tx)) = queue.pop_front() {
                            let _ = tx.send(at);
                        }
                    }
                }
            }
        })
    };
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let lost = Arc::new(Mutex::new(0usize));
    let per_agent = changes.div_ceil(agents);
    let started = Instant::now();
    let tasks = (0..agents).map(|n| {
        let (api, waiting, latencies, lost) =
            (&api, waiting.clone(), latencies.clone(), lost.clone());
        async move {
            let number = setup::agent_number(n);
            let base = format!("/api/v1/tenants/{}/agents/{number}", setup::TENANT);
            for i in 0..per_agent {
                let (verb, state, body) = if i % 2 == 0 {
                    ("not-ready", "not_ready", json!({ "reason": "break" }))
                } else {
                    ("ready", "ready", Value::Null)
                };
                let (tx, rx) = oneshot::channel();
                waiting
                    .lock()
                    .expect("waiting")
                    .entry(number.clone())
                    .or_default()
                    .push_back((state.to_string(), tx));
                let sent = Instant::now();
                let posted = api.post(0, &format!("{base}/{verb}"), &body).await;
                if !matches!(posted, Ok((200, _))) {
                    waiting.lock().expect("waiting").remove(&number);
                    *lost.lock().expect("lost") += 1;
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(5), rx).await {
                    Ok(Ok(at)) => latencies.lock().expect("samples").push(ms(at - sent)),
                    _ => {
                        waiting.lock().expect("waiting").remove(&number);
                        *lost.lock().expect("lost") += 1;
                    }
                }
            }
        }
    });
    futures::future::join_all(tasks).await;
    let seconds = started.elapsed().as_secs_f64();
    reader.abort();
    setup::sign_out_all(&api, agents).await;
    let mut samples = std::mem::take(&mut *latencies.lock().expect("samples"));
    let lost = *lost.lock().expect("lost");
    let quantiles = Quantiles::of(&mut samples);
    report.figure("seconds", seconds);
    report.figure("events", samples.len());
    report.figure("lost", lost);
    report.figure("latency_ms", quantiles);
    report.target(Target::at_most(
        "event_p99_ms",
        quantiles.p99,
        EVENTS_MAX_P99_MS,
    ));
    report.target(Target::at_most("lost", lost as f64, 0.0));
    Ok(report)
}
