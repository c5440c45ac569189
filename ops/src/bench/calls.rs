//! `concurrent` and `media`: calls held up while the nodes are measured from outside
//! (`/proc/<pid>` of each node: resident memory and CPU time; `/health`: live calls).
//!
//! - `concurrent`: SIPp carriers place N calls into the bench's `hold` queue, which nobody
//!   serves: each call is answered, checkpointed and waits with music (RTP to the carrier),
//!   or, with `--signalling-only`, offered `a=inactive` so no RTP flows either way. Memory
//!   per call is the growth of each node's RSS divided by the calls it holds.
//! - `media`: N calls bridged between our carrier callers and our agent phones, both
//!   sending G.711 every 20 ms, the nodes relaying and recording both directions. Packets
//!   relayed per second per core is what the endpoints received over the CPU time the nodes
//!   spent; jitter is each receiver's RFC 3550 estimate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;
use tokio::process::Command;
use tokio::sync::watch;

use super::report::{unix_ms, Quantiles};
use super::setup::{self, Api, Phones};
use super::{BenchArgs, Report, Target};
use crate::traffic::caller::{self, CallPlan, CallerEvent};
use crate::traffic::phone::{PhoneEvent, PhoneReport};
use crate::traffic::{sip_addr, ClusterInfo, LOOPBACK};

const HOLD_XML: &str = include_str!("scenarios/hold.xml");
/// Targets of issue 5.
const CONCURRENT_RTP_MIN: f64 = 4_000.0;
const CONCURRENT_SIGNALLING_MIN: f64 = 20_000.0;
const MEMORY_PER_CALL_MAX_KIB: f64 = 64.0;
/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every architecture it
/// runs callgrid on.
const TICKS_PER_SEC: f64 = 100.0;
const SIPP_PORT_BASE: u16 = 15_200;
const MEDIA_PORT_BASE: u16 = 17_000;

/// A node process seen from `/proc`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_ticks: u64,
}

pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the node running?)"))?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        rss_kib,
        cpu_ticks: tick(11) + tick(12),
    })
}

/// Node id to pid, from `DIR/pids.json` (written by `cluster up`).
pub fn node_pids(dir: &Path) -> anyhow::Result<BTreeMap<u64, u32>> {
    #[derive(serde::Deserialize)]
    struct Pids {
        nodes: BTreeMap<u64, u32>,
    }
    let path = dir.join("pids.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (start the cluster with `cluster up`)",
            path.display()
        )
    })?;
    Ok(serde_json::from_str::<Pids>(&text)?.nodes)
}

/// CPU seconds (user and system) the processes have used, together.
pub fn cpu_seconds(pids: &BTreeMap<u64, u32>) -> anyhow::Result<f64> {
    let mut ticks = 0;
    for pid in pids.values() {
        ticks += sample(*pid)?.cpu_ticks;
    }
    Ok(ticks as f64 / TICKS_PER_SEC)
}

fn sample_all(pids: &BTreeMap<u64, u32>) -> anyhow::Result<BTreeMap<u64, ProcSample>> {
    pids.iter()
        .map(|(id, pid)| Ok((*id, sample(*pid)?)))
        .collect()
}

/// Live calls per node (`/health`).
async fn live_calls(api: &Api, cluster: &ClusterInfo) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let live = api.health(i).await["live_calls"].as_u64().unwrap_or(0);
        out.insert(node.id, live);
    }
    out
}

/// Per node: calls held, memory growth per call, CPU over the window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFigures {
    pub node: u64,
    pub calls: u64,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    pub memory_per_call_kib: f64,
    /// Share of one core over the measuring window, in percent.
    pub cpu_pct: f64,
    pub cpu_pct_per_100_calls: f64,
}

fn node_figures(
    before: &BTreeMap<u64, ProcSample>,
    start: &BTreeMap<u64, ProcSample>,
    end: &BTreeMap<u64, ProcSample>,
    calls: &BTreeMap<u64, u64>,
    window: Duration,
) -> Vec<NodeFigures> {
    before
        .iter()
        .map(|(id, b)| {
            let s = start.get(id).copied().unwrap_or_default();
            let e = end.get(id).copied().unwrap_or_default();
            let n = calls.get(id).copied().unwrap_or(0);
            let cpu_pct = e.cpu_ticks.saturating_sub(s.cpu_ticks) as f64
                / TICKS_PER_SEC
                / window.as_secs_f64().max(1e-9)
                * 100.0;
            NodeFigures {
                node: *id,
                calls: n,
                rss_before_kib: b.rss_kib,
                rss_held_kib: s.rss_kib,
                memory_per_call_kib: if n > 0 {
                    s.rss_kib.saturating_sub(b.rss_kib) as f64 / n as f64
                } else {
                    0.0
                },
                cpu_pct,
                cpu_pct_per_100_calls: if n > 0 {
                    cpu_pct / (n as f64 / 100.0)
                } else {
                    0.0
                },
            }
        })
        .collect()
}

pub async fn concurrent(cluster: &ClusterInfo, args: &BenchArgs) -> anyhow::Result<Report> {
    super::sipp::require_sipp().await?;
    let api = Api::new(cluster)?;
    let pids = node_pids(&args.dir)?;
    let target = if args.signalling_only {
        CONCURRENT_SIGNALLING_MIN
    } else {
        CONCURRENT_RTP_MIN
    };
    let calls = args.calls.unwrap_or(target as usize).max(1);
    let rate = args.start_rate.max(1);
    let instances = cluster.nodes.len().max(1);
    let ramp_secs = calls as u64 / u64::from(rate) + 1;
    // Calls come up within `wait_secs`; the first hangs up only after that wait and the
    // measuring window, so the window never overlaps hang-ups.
    let wait_secs = ramp_secs * 2 + 30;
    let hold_ms = (wait_secs + args.hold_secs + 10) * 1000;
    let mut report = Report::new(
        "concurrent",
        json!({ "calls": calls, "signalling_only": args.signalling_only, "setup_rate": rate,
                "hold_secs": args.hold_secs, "carriers": instances }),
    );
    setup::ensure_tenant(&api, 0).await?;
    let work = args
        .dir
        .join("bench")
        .join(format!("concurrent-{}", unix_ms()));
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("hold.xml"),
        HOLD_XML.replace("HOLD_MS", &hold_ms.to_string()),
    )?;
    let before = sample_all(&pids)?;
    let share = |i: usize| calls / instances + usize::from(i < calls % instances);
    let mut carriers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let sub = work.join(format!("carrier-{i}"));
        std::fs::create_dir_all(&sub)?;
        let child = Command::new("sipp")
            .current_dir(&sub)
            .args(["-nostdin", "-aa", "-sf", "../hold.xml", "-i", "127.0.0.1"])
            .args(["-p", &(SIPP_PORT_BASE + i as u16).to_string()])
            .args(["-mp", &(MEDIA_PORT_BASE + 4 * i as u16).to_string()])
            .args(["-s", &setup::dialled_hold()])
            .args(["-key", "caller_prefix", &format!("70{i}")])
            .args([
                "-key",
                "direction",
                if args.signalling_only {
                    "inactive"
                } else {
                    "sendrecv"
                },
            ])
            .args([
                "-r",
                &rate.to_string(),
                "-rp",
                &(1000 * instances).to_string(),
            ])
            .args([
                "-m",
                &share(i).to_string(),
                "-l",
                &(share(i) + 10).to_string(),
            ])
            .args(["-max_socket", "65000"])
            .args(["-trace_rtt", "-rtt_freq", "1"])
            .args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"])
            .arg(&node.sip)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting sipp (carrier)")?;
        carriers.push(child);
    }
    // Wait until the calls are up (or stop growing).
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let mut held = BTreeMap::new();
    let mut best = 0;
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        held = live_calls(&api, cluster).await;
        let total: u64 = held.values().sum();
        if total as usize >= calls {
            break;
        }
        if total > best {
            best = total;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let established: u64 = held.values().sum();
    let start = sample_all(&pids)?;
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_secs.max(1))).await;
    let end = sample_all(&pids)?;
    let window = window_start.elapsed();
    let held_end: u64 = live_calls(&api, cluster).await.values().sum();
    let limit = Duration::from_millis(hold_ms) + Duration::from_secs(60);
    for child in &mut carriers {
        if tokio::time::timeout(limit, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    let after = sample_all(&pids)?;
    let (mut succeeded, mut failed, mut answer_ms) = (0, 0, Vec::new());
    for i in 0..instances {
        let sub = work.join(format!("carrier-{i}"));
        let (ok, ko) = super::sipp::read_stat(&sub.join("stat.csv"))?;
        succeeded += ok;
        failed += ko;
        answer_ms.extend(super::sipp::read_rtt(&sub)?);
    }
    let nodes = node_figures(&before, &start, &end, &held, window);
    let worst_memory = nodes
        .iter()
        .map(|n| n.memory_per_call_kib)
        .fold(0.0, f64::max);
    let total_cpu: f64 = nodes.iter().map(|n| n.cpu_pct).sum();
    report.figure("established", established);
    report.figure("established_peak_while_ramping", best.max(established));
    report.figure("established_at_window_end", held_end);
    report.figure("succeeded", succeeded);
    report.figure("failed", failed);
    report.figure("answer_latency_ms", Quantiles::of(&mut answer_ms));
    report.figure("memory_per_call_kib", worst_memory);
    report.figure(
        "cpu_pct_per_100_calls",
        if established > 0 {
            total_cpu / (established as f64 / 100.0)
        } else {
            0.0
        },
    );
    report.figure(
        "rss_after_kib",
        after
            .iter()
            .map(|(id, s)| (id.to_string(), s.rss_kib))
            .collect::<BTreeMap<_, _>>(),
    );
    report.figure("per_node", &nodes);
    report.figure("work_dir", work.display().to_string());
    for n in &nodes {
        report.rows.push((
            format!("node {}", n.node),
            vec![
                ("calls".into(), n.calls.to_string()),
                ("KiB/call".into(), format!("{:.1}", n.memory_per_call_kib)),
                ("cpu %".into(), format!("{:.1}", n.cpu_pct)),
                (
                    "cpu %/100 calls".into(),
                    format!("{:.2}", n.cpu_pct_per_100_calls),
                ),
            ],
        ));
    }
    report.target(Target::at_least("established", established as f64, target));
    report.target(Target::at_most(
        "memory_per_call_kib",
        worst_memory,
        MEMORY_PER_CALL_MAX_KIB,
    ));
    report.target(Target::at_most("failed", failed as f64, 0.0));
    report.note("memory per call is the growth of the node's RSS, media buffers included");
    if nodes
        .iter()
        .any(|n| n.calls > 0 && n.memory_per_call_kib < 1.0)
    {
        report.note(
            "a node's RSS hardly grew: its allocator reused memory an earlier run freed; \
             measure memory on a freshly started cluster",
        );
    }
    Ok(report)
}

/// What one endpoint of a media call measured.
#[derive(Default)]
struct Received {
    packets: u64,
    sent: u64,
    secs: f64,
    jitter_us: Vec<f64>,
}

pub async fn media(cluster: &ClusterInfo, args: &BenchArgs) -> anyhow::Result<Report> {
    let api = Api::new(cluster)?;
    let pids = node_pids(&args.dir)?;
    let calls = args.calls.unwrap_or(300).max(1);
    let rate = f64::from(args.start_rate.clamp(1, 500));
    let ramp = Duration::from_secs_f64(calls as f64 / rate + 5.0);
    let hold = Duration::from_secs(args.hold_secs.max(1));
    let mut report = Report::new(
        "media",
        json!({ "calls": calls, "setup_rate": rate, "hold_secs": hold.as_secs(),
                "recording": true, "codec": "PCMA", "ptime_ms": 20 }),
    );
    setup::ensure_tenant(&api, calls).await?;
    setup::sign_out_all(&api, calls).await;
    // Agents stay on until the callers hang up.
    let talk = ramp + hold + Duration::from_secs(60);
    let mut phones = Phones::start(cluster, &api, calls, talk).await?;
    let nodes: Vec<SocketAddr> = cluster
        .nodes
        .iter()
        .map(sip_addr)
        .collect::<anyhow::Result<_>>()?;
    let received = Arc::new(Mutex::new(Received::default()));
    let failed = Arc::new(Mutex::new(0u64));
    let (stop_tx, stop) = watch::channel(false);
    let mut callers = Vec::new();
    let started = Instant::now();
    for i in 0..calls {
        let at = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let plan = CallPlan {
            node: nodes[i % nodes.len()],
            bind_ip: LOOPBACK,
            caller: format!("66{i:06}"),
            landing_code: setup::LANDING.into(),
            access_code: setup::ACCESS.into(),
            digit: None,
            digit_delay: Duration::ZERO,
            // Everyone stays until the measuring window is over: the bench then hangs them
            // up (`stop`); `stay` only bounds a run that goes wrong.
            stay: ramp + hold + Duration::from_secs(60),
            limit: ramp + hold + Duration::from_secs(90),
        };
        let (received, failed) = (received.clone(), failed.clone());
        callers.push(tokio::spawn(caller::run_call(
            plan,
            move |event| match event {
                CallerEvent::Ended {
                    duration_ms, media, ..
                } => {
                    let mut r = received.lock().expect("received");
                    r.packets += media.rtp_in;
                    r.sent += media.rtp_out;
                    r.secs += duration_ms as f64 / 1000.0;
                    r.jitter_us.push(media.jitter_us as f64);
                }
                CallerEvent::Failed { .. } => *failed.lock().expect("failed") += 1,
                _ => {}
            },
            stop.clone(),
        )));
    }
    // Every call bridged: its agent answered.
    let mut answered = 0;
    let deadline = started + ramp + Duration::from_secs(30);
    while answered < calls {
        match tokio::time::timeout_at(deadline.into(), phones.reports.recv()).await {
            Ok(Some(PhoneReport {
                event: PhoneEvent::Answered { .. },
                ..
            })) => answered += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let start = sample_all(&pids)?;
    let window_start = Instant::now();
    // The agents' reports keep coming; drain them during the window.
    let drain = tokio::time::sleep(hold);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = &mut drain => break,
            _ = phones.reports.recv() => {}
        }
    }
    let end = sample_all(&pids)?;
    let window = window_start.elapsed();
    let held = live_calls(&api, cluster).await;
    // The callers hang up now; the agents' phones report their side.
    let _ = stop_tx.send(true);
    let mut agent_side = Received::default();
    let finish = Instant::now() + Duration::from_secs(60);
    let mut ended = 0;
    while ended < answered {
        match tokio::time::timeout_at(finish.into(), phones.reports.recv()).await {
            Ok(Some(PhoneReport {
                event: PhoneEvent::Ended { talk_ms, media, .. },
                ..
            })) => {
                ended += 1;
                agent_side.packets += media.rtp_in;
                agent_side.sent += media.rtp_out;
                agent_side.secs += talk_ms as f64 / 1000.0;
                agent_side.jitter_us.push(media.jitter_us as f64);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for task in callers {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    phones.stop().await;
    setup::sign_out_all(&api, calls).await;

    let caller_side = std::mem::take(&mut *received.lock().expect("received"));
    let failed = *failed.lock().expect("failed");
    if caller_side.secs <= 0.0 && agent_side.secs <= 0.0 {
        bail!("no media call completed ({failed} failed)");
    }
    // Packets per second each side received while bridged, scaled to all calls up at once.
    let per_call = |r: &Received| {
        if r.secs > 0.0 {
            r.packets as f64 / r.secs
        } else {
            0.0
        }
    };
    let relayed_pps = (per_call(&caller_side) + per_call(&agent_side)) * answered as f64;
    let nodes = node_figures(&start, &start, &end, &held, window);
    let cores_used: f64 = nodes.iter().map(|n| n.cpu_pct).sum::<f64>() / 100.0;
    let pps_per_core = if cores_used > 0.0 {
        relayed_pps / cores_used
    } else {
        0.0
    };
    let sent = caller_side.sent + agent_side.sent;
    let got = caller_side.packets + agent_side.packets;
    let mut jitter: Vec<f64> = caller_side
        .jitter_us
        .iter()
        .chain(agent_side.jitter_us.iter())
        .map(|us| us / 1000.0)
        .collect();
    let jitter = Quantiles::of(&mut jitter);
    report.figure("bridged", answered);
    report.figure("failed", failed);
    report.figure("relayed_pps", relayed_pps);
    report.figure("node_cores_used", cores_used);
    report.figure("relayed_pps_per_core", pps_per_core);
    report.figure(
        "loss_ratio",
        if sent > 0 {
            1.0 - got as f64 / sent as f64
        } else {
            0.0
        },
    );
    report.figure("jitter_ms", jitter);
    report.figure("per_node", &nodes);
    for n in &nodes {
        report.rows.push((
            format!("node {}", n.node),
            vec![
                ("calls".into(), n.calls.to_string()),
                ("cpu %".into(), format!("{:.1}", n.cpu_pct)),
            ],
        ));
    }
    report.target(Target::at_least("bridged", answered as f64, calls as f64));
    report.note(
        "jitter is each receiver's RFC 3550 estimate at the end of its call; it includes the \
         sender's own 20 ms timer jitter (both ends are tokio tasks on this machine)",
    );
    Ok(report)
}
