//! Issue 5: a smoke run of every `callgrid bench` scenario (seconds, low rates) against one
//! sample cluster, so the benches never rot. The full runs are not part of the suite; their
//! figures are in docs/PERFORMANCE.md. What is checked is the contract of the JSON document
//! and that each scenario really measured something (calls answered, events seen,
//! checkpoints committed), not the performance targets.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use callgrid_tests::*;
use serde_json::{json, Value};

fn bench(c: &ClusterGuard, scenario: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(callgrid_bin())
        .arg("bench")
        .arg(scenario)
        .arg("--dir")
        .arg(c.work())
        .args(args)
        .output()
        .context("running callgrid bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "bench {scenario} failed: {stdout}");
    let report: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("bench report is not JSON: {stdout}"))?;
    ensure!(report["scenario"] == scenario, "{report}");
    ensure!(
        report["machine"]["cores"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    ensure!(report["parameters"].is_object(), "{report}");
    let targets = report["targets"].as_array().context("targets")?;
    ensure!(
        targets
            .iter()
            .all(|t| t["name"].is_string() && t["pass"].is_boolean()),
        "{report}"
    );
    let pass = targets.iter().all(|t| t["pass"] == true);
    ensure!(
        report["pass"] == pass,
        "pass is every target's verdict: {report}"
    );
    Ok(report)
}

fn figure(report: &Value, name: &str) -> f64 {
    report["figures"][name].as_f64().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_scenario_runs_and_reports() -> Result<()> {
    let c = ClusterGuard::up(true)?;

    let raft = bench(
        &c,
        "raft",
        &["--checkpoints", "3000", "--concurrency", "60"],
    )?;
    ensure!(figure(&raft, "committed") == 3000.0, "{raft}");
    ensure!(figure(&raft, "committed_per_sec") > 0.0, "{raft}");
    ensure!(
        raft["figures"]["commit_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0,
        "{raft}"
    );
    ensure!(figure(&raft, "checkpoints_per_entry") >= 1.0, "{raft}");
    ensure!(
        figure(&raft, "node_cpu_ms_per_1000_checkpoints") > 0.0,
        "the nodes' CPU is measured: {raft}"
    );
    ensure!(
        figure(&raft, "left_behind") == 0.0,
        "every synthetic checkpoint discarded: {raft}"
    );
    // Open loop: checkpoints on schedule at a set rate, over fewer synthetic calls than
    // checkpoints (each call checkpointed five times, newer versions of it).
    let open = bench(
        &c,
        "raft",
        &[
            "--checkpoints",
            "1500",
            "--rate",
            "1000",
            "--live-calls",
            "300",
        ],
    )?;
    ensure!(figure(&open, "committed") == 1500.0, "{open}");
    ensure!(figure(&open, "failed") == 0.0, "{open}");
    ensure!(open["parameters"]["rate"] == 1000, "{open}");
    ensure!(open["parameters"]["live_calls"] == 300, "{open}");
    ensure!(figure(&open, "offered_per_sec") >= 1000.0, "{open}");
    ensure!(figure(&open, "most_in_flight") >= 1.0, "{open}");
    ensure!(figure(&open, "coalesced") >= 0.0, "{open}");
    ensure!(
        open["figures"]["commit_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0,
        "{open}"
    );
    ensure!(
        figure(&open, "left_behind") == 0.0,
        "every synthetic call discarded: {open}"
    );
    // A bad rate or call count is refused, by the CLI and by the node, and runs nothing.
    let refused = Command::new(callgrid_bin())
        .args(["bench", "raft", "--rate", "0", "--dir"])
        .arg(c.work())
        .output()?;
    ensure!(!refused.status.success(), "--rate 0 was accepted");
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("--rate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for (field, body) in [
        (
            "rate",
            json!({ "checkpoints": 10, "concurrency": 1, "rate": 0 }),
        ),
        (
            "live_calls",
            json!({ "checkpoints": 10, "concurrency": 1, "live_calls": 0 }),
        ),
        (
            "live_calls",
            json!({ "checkpoints": 10, "concurrency": 8, "live_calls": 4 }),
        ),
    ] {
        let error = c
            .api(0)
            .post_json("/api/v1/bench/raft", &body)
            .await
            .err()
            .with_context(|| format!("{field} 0 was accepted"))?;
        let error = format!("{error:#}");
        ensure!(error.contains("422") && error.contains(field), "{error}");
    }
    // The synthetic calls left no record.
    let cdrs = c.api(0).get_cdrs("").await?;
    ensure!(
        !cdrs.iter().any(|c| c.to_string().contains("bench-")),
        "the raft bench left CDRs"
    );

    let signin = bench(&c, "signin", &["--agents", "40", "--rounds", "1"])?;
    ensure!(figure(&signin, "sign_ins") == 40.0, "{signin}");
    ensure!(figure(&signin, "state_changes") == 160.0, "{signin}");
    ensure!(figure(&signin, "errors") == 0.0, "{signin}");

    let events = bench(&c, "events", &["--changes", "40", "--agents", "4"])?;
    ensure!(figure(&events, "events") == 40.0, "{events}");
    ensure!(figure(&events, "lost") == 0.0, "{events}");

    let caps = bench(
        &c,
        "caps",
        &[
            "--start-rate",
            "10",
            "--rate-step",
            "10",
            "--max-rate",
            "20",
            "--step-secs",
            "3",
            "--talk-ms",
            "300",
            "--agents",
            "30",
        ],
    )?;
    let steps = caps["figures"]["steps"].as_array().context("steps")?;
    ensure!(!steps.is_empty(), "{caps}");
    ensure!(
        steps[0]["succeeded"] == 30,
        "every call of the first step answered: {caps}"
    );
    ensure!(
        steps[0]["unrung"] == 0,
        "every call rang an agent phone: {caps}"
    );
    ensure!(
        steps[0]["ring_latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0,
        "{caps}"
    );
    // What the nodes spent: every call costs CPU and at least part of a Raft entry.
    let cost = &steps[0]["cost"];
    ensure!(
        cost["node_cpu_ms_per_call"].as_f64().unwrap_or(0.0) > 0.0
            && cost["raft_entries_per_call"].as_f64().unwrap_or(0.0) > 0.0,
        "{caps}"
    );
    ensure!(figure(&caps, "max_sustained_caps") >= 10.0, "{caps}");
    ensure!(figure(&caps, "ceiling_max_caps") >= 10.0, "{caps}");
    ensure!(figure(&caps, "ceiling_ratio") > 0.0, "{caps}");

    let ceiling = bench(
        &c,
        "ceiling",
        &[
            "--start-rate",
            "20",
            "--max-rate",
            "20",
            "--step-secs",
            "2",
            "--talk-ms",
            "200",
        ],
    )?;
    ensure!(figure(&ceiling, "max_sustained_caps") == 20.0, "{ceiling}");

    let concurrent = bench(
        &c,
        "concurrent",
        &["--calls", "60", "--start-rate", "60", "--hold-secs", "2"],
    )?;
    ensure!(figure(&concurrent, "established") == 60.0, "{concurrent}");
    ensure!(figure(&concurrent, "failed") == 0.0, "{concurrent}");
    ensure!(
        figure(&concurrent, "memory_per_call_kib") >= 0.0,
        "{concurrent}"
    );
    let quiet = bench(
        &c,
        "concurrent",
        &[
            "--calls",
            "60",
            "--start-rate",
            "60",
            "--hold-secs",
            "2",
            "--signalling-only",
        ],
    )?;
    ensure!(figure(&quiet, "established") == 60.0, "{quiet}");
    ensure!(quiet["parameters"]["signalling_only"] == true, "{quiet}");

    let media = bench(
        &c,
        "media",
        &["--calls", "10", "--start-rate", "20", "--hold-secs", "2"],
    )?;
    ensure!(figure(&media, "bridged") == 10.0, "{media}");
    ensure!(figure(&media, "relayed_pps") > 0.0, "{media}");
    ensure!(figure(&media, "loss_ratio") < 0.05, "{media}");
    ensure!(
        media["figures"]["jitter_ms"]["p50"]
            .as_f64()
            .unwrap_or(-1.0)
            >= 0.0,
        "{media}"
    );

    // Every run is kept as a file beside the cluster.
    let saved = std::fs::read_dir(c.work().join("bench"))?.count();
    ensure!(saved >= 8, "bench documents saved: {saved}");
    Ok(())
}
