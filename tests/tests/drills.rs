//! Issue 3 acceptance through `callgrid drill` (its own callers and agent phones, RTP both
//! ways): losing a whole active site of a five-node cluster, and a partition that cuts one
//! node off and heals, a single cut link, DR takeover and failback, and a rolling restart.
//! The drill's JSON report is the contract checked here.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use callgrid_tests::*;
use serde_json::Value;

fn drill(c: &ClusterGuard, args: &[&str]) -> Result<(bool, Value)> {
    let out = Command::new(callgrid_bin())
        .arg("drill")
        .args(args)
        .arg("--dir")
        .arg(c.work())
        .output()
        .context("running callgrid drill")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("drill report is not JSON: {stdout}"))?;
    Ok((out.status.success(), report))
}

/// The node-log lines of each dropped call (CI keeps no cluster directory): the caller's
/// number names its call id in "call answered by the platform"; every line with that id,
/// from every node, in each node's order.
fn print_dropped_call_logs(c: &ClusterGuard, report: &Value) {
    let callers: Vec<&str> = report["dropped_calls"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if callers.is_empty() {
        return;
    }
    let logs: Vec<(String, String)> = std::fs::read_dir(c.work())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path().join("node.log");
            let text = std::fs::read_to_string(&path).ok()?;
            Some((path.display().to_string(), text))
        })
        .collect();
    for caller in callers {
        let ids: Vec<String> = logs
            .iter()
            .flat_map(|(_, text)| text.lines())
            .filter(|l| l.contains(&format!("caller={caller}")))
            .filter_map(|l| l.split("call=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .collect();
        eprintln!("--- dropped caller {caller}: call ids {ids:?}");
        for (path, text) in &logs {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
                .take(200)
                .collect();
            if !lines.is_empty() {
                eprintln!("--- {path}");
                for line in lines {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn check_kept(c: &ClusterGuard, report: &Value) -> Result<()> {
    print_dropped_call_logs(c, report);
    let invariants = report["invariants"]
        .as_object()
        .context("invariants")?
        .clone();
    ensure!(
        invariants.values().all(|v| v.as_bool() == Some(true)),
        "invariants: {report:#}"
    );
    ensure!(n(report, "calls_before") > 0, "{report:#}");
    ensure!(
        n(report, "survived") == n(report, "calls_before") && n(report, "dropped") == 0,
        "every established call kept: {report:#}"
    );
    ensure!(
        n(report, "queued_kept") == n(report, "queued_before"),
        "every queued call kept: {report:#}"
    );
    ensure!(
        n(report, "cdr_missing") == 0 && n(report, "cdr_duplicated") == 0,
        "{report:#}"
    );
    Ok(())
}

/// Five nodes (two per active site, one at dr); both nodes of site a die under traffic: every
/// established and queued call is kept, new calls are answered by b and dr, one CDR per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_site_a_keeps_every_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_with(true, "2,2,1", true)?;
    let (ok, report) = drill(&c, &["kill-site", "--site", "a", "--calls", "30"])?;
    check_kept(&c, &report)?;
    ensure!(ok, "drill exit status: {report:#}");
    ensure!(
        n(&report, "new_calls_answered") > 0,
        "new calls answered after the loss: {report:#}"
    );
    ensure!(
        report["victims"].as_array().map(Vec::len) == Some(2),
        "{report:#}"
    );
    Ok(())
}

/// One node is cut off (both directions, Raft and mesh) under traffic, then the partition
/// heals: no agent is ever offered two calls (I1, from the CDRs and from the agents' state
/// stream), and the node rejoins by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_never_double_books_and_the_node_rejoins() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_with(true, "1,1,1", true)?;
    let events = EventLog::connect(&c.api(0)).await?;
    let (ok, report) = drill(
        &c,
        &[
            "partition",
            "--node",
            "3",
            "--calls",
            "20",
            "--settle",
            "12",
        ],
    )?;
    check_kept(&c, &report)?;
    ensure!(ok, "drill exit status: {report:#}");
    ensure!(
        report["rejoin_ms"].as_u64().is_some(),
        "the isolated node rejoined: {report:#}"
    );
    let h = wait_until(
        Duration::from_secs(15),
        "node 3 back with a lease",
        || async {
            let h = c.api(2).health().await.ok()?;
            (h["lease"].as_bool() == Some(true)).then_some(h)
        },
    )
    .await?;
    ensure!(n(&h, "epoch") >= 1, "rejoined at a new epoch: {h}");
    let sessions: Vec<model::AgentSession> = events
        .snapshot()
        .iter()
        .filter(|e| s(e, "type") == "agent_state")
        .filter_map(|e| serde_json::from_value(e["session"].clone()).ok())
        .collect();
    ensure!(!sessions.is_empty(), "no agent events seen");
    let violations = chaos::agent_states_never_double_booked(&sessions);
    ensure!(violations.is_empty(), "{violations:?}");
    Ok(())
}

/// Both active sites die; `callgrid dr takeover` (run by the drill) turns the dr node into the
/// cluster from its last applied state: it answers new inbound calls, and the report gives
/// the data loss window and the time to the first answered call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_takeover_answers_new_calls() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_with(true, "1,1,1", true)?;
    let (ok, report) = drill(&c, &["dr-takeover", "--calls", "15"])?;
    ensure!(ok, "drill exit status: {report:#}");
    ensure!(
        report["first_answer_after_takeover_ms"].as_u64().is_some(),
        "dr answered a new call: {report:#}"
    );
    ensure!(n(&report, "new_calls_answered") > 0, "{report:#}");
    ensure!(
        report["data_loss_window"]["applied_at_dr"]
            .as_u64()
            .is_some()
            && report["data_loss_entries"].as_u64().is_some(),
        "the data loss window is reported: {report:#}"
    );
    ensure!(
        n(&report, "cdr_missing") == 0 && n(&report, "cdr_duplicated") == 0,
        "{report:#}"
    );
    // The dr node now leads a cluster of its own.
    let h = c.api(2).health().await?;
    ensure!(
        h["voters"].as_array().map(Vec::len) == Some(1) && n(&h, "leader") == 3,
        "{h}"
    );

    // Failback: the lost nodes come back empty-handed, catch up as learners and vote again.
    let out = Command::new(callgrid_bin())
        .args(["dr", "failback", "--dir"])
        .arg(c.work())
        .output()?;
    let failback: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "failback report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(out.status.success(), "dr failback: {failback:#}");
    ensure!(
        failback["recovered"] == serde_json::json!([1, 2]),
        "{failback:#}"
    );
    for i in 0..3 {
        let h = c.api(i).health().await?;
        ensure!(
            h["voters"].as_array().map(Vec::len) == Some(3)
                && h["lease"].as_bool() == Some(true)
                && h["down_nodes"].as_array().is_some_and(Vec::is_empty),
            "node {} after failback: {h}",
            i + 1
        );
    }
    // The restored cluster is whole: losing the dr node (its leader) now keeps every call,
    // served by the recovered nodes.
    let (ok, report) = drill(&c, &["kill-node", "--node", "3", "--calls", "8"])?;
    check_kept(&c, &report)?;
    ensure!(ok, "drill exit status: {report:#}");
    ensure!(n(&report, "new_calls_answered") > 0, "{report:#}");
    Ok(())
}

/// The opt-in automatic DR takeover: with `--dr-auto-takeover-ms`, the dr node takes over
/// by itself once both active sites are gone, and answers new calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dr_site_takes_over_by_itself_when_configured() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_args(
        true,
        "1,1,1",
        &["--allow-faults", "--dr-auto-takeover-ms", "3000"],
    )?;
    let (ok, report) = drill(&c, &["dr-takeover", "--auto", "--calls", "8"])?;
    ensure!(ok, "drill exit status: {report:#}");
    ensure!(report["dr"]["automatic"] == true, "{report:#}");
    ensure!(
        report["first_answer_after_takeover_ms"].as_u64().is_some()
            && n(&report, "new_calls_answered") > 0,
        "dr answered new calls: {report:#}"
    );
    ensure!(report["data_loss_entries"].as_u64().is_some(), "{report:#}");
    let h = c.api(2).health().await?;
    ensure!(
        h["voters"].as_array().map(Vec::len) == Some(1) && n(&h, "leader") == 3,
        "{h}"
    );
    Ok(())
}

/// Every node is restarted in turn (graceful stop, same config) under traffic: each comes back
/// with a lease, every established and queued call is kept, one CDR per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_every_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_with(true, "1,1,1", true)?;
    let (ok, report) = drill(&c, &["rolling-restart", "--calls", "15"])?;
    check_kept(&c, &report)?;
    ensure!(ok, "drill exit status: {report:#}");
    let restarts = report["restarts"].as_array().context("restarts")?;
    ensure!(
        restarts.len() == 3 && restarts.iter().all(|r| r["back_ms"].as_u64().is_some()),
        "every node restarted and rejoined: {report:#}"
    );
    for i in 0..3 {
        let h = c.api(i).health().await?;
        ensure!(h["lease"].as_bool() == Some(true), "node {i}: {h}");
    }
    Ok(())
}

/// Only the link between nodes 1 and 2 is cut (both still reach node 3), under traffic, then
/// healed: every established and queued call is kept (the mesh relays through node 3; Raft
/// may move its leader or declare one of the two down and take it back), one CDR per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_between_two_live_nodes_keeps_every_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_with(true, "1,1,1", true)?;
    let (ok, report) = drill(
        &c,
        &[
            "partition",
            "--node",
            "1",
            "--link-to",
            "2",
            "--calls",
            "15",
            "--settle",
            "12",
        ],
    )?;
    check_kept(&c, &report)?;
    ensure!(ok, "drill exit status: {report:#}");
    ensure!(
        report["link_cut"] == serde_json::json!([1, 2]),
        "{report:#}"
    );
    // Healed: every node holds a lease again, nobody is left declared down.
    wait_until(Duration::from_secs(20), "every node back", || async {
        for i in 0..3 {
            let h = c.api(i).health().await.ok()?;
            let down = h["down_nodes"].as_array().is_some_and(|d| !d.is_empty());
            if h["lease"].as_bool() != Some(true) || down {
                return None;
            }
        }
        Some(())
    })
    .await?;
    Ok(())
}
