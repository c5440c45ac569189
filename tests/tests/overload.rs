//! Admission control (DESIGN.md "Overload", issue 5): a node whose lease heartbeats commit
//! slowly refuses new calls with 503 and Retry-After, is *not* declared down for being slow,
//! and takes calls again once it has headroom. Real node processes on loopback; the
//! slowness is injected with the drills' fault API (a delay on the node's cluster traffic).

use anyhow::{ensure, Context, Result};
use callgrid_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The `admission` object of a node's `/health`.
async fn admission(api: &Api) -> Option<Value> {
    api.health().await.ok().map(|h| h["admission"].clone())
}

/// The value of `callgrid_calls_rejected_total{reason="..."}` on a node (0 when absent).
async fn rejected(api: &Api, reason: &str) -> Result<u64> {
    let text = reqwest::get(format!("{}/metrics", api.base))
        .await?
        .text()
        .await?;
    let label = format!("reason=\"{reason}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("callgrid_calls_rejected_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_node_sheds_new_calls_instead_of_being_declared_down() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up_with(true, "1,1,1", true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;

    // A follower: its heartbeats are forwarded to the leader, so delaying its outgoing
    // cluster traffic slows exactly its own lease.
    let leader = wait_until(Duration::from_secs(20), "a leader", || async {
        c.api(0).health().await.ok()?["leader"].as_u64()
    })
    .await?;
    let slow = c
        .info
        .nodes
        .iter()
        .position(|n| n.id != leader)
        .context("a follower")?;
    let slow_id = c.info.nodes[slow].id;
    let api = c.api(slow);
    // An idle node admits calls (once start-up, elections included, is behind it).
    wait_until(
        Duration::from_secs(20),
        "an idle node to admit calls",
        || async { admission(&api).await.filter(|a| a["open"] == json!(true)) },
    )
    .await?;

    // 300 ms on everything the node sends: its heartbeats still commit within the lease
    // (500 ms) but take more than half of it, twice in a row.
    let peers: Vec<Value> = c
        .info
        .nodes
        .iter()
        .filter(|n| n.id != slow_id)
        .map(|n| json!({"peer": n.id, "fault": "delay", "delay_ms": 300}))
        .collect();
    api.post_json("/api/v1/faults", &json!({ "faults": peers }))
        .await?;
    let shut = wait_until(Duration::from_secs(20), "admission to close", || async {
        admission(&api).await.filter(|a| a["open"] == json!(false))
    })
    .await?;
    ensure!(
        shut["refusing"] == json!("overload_heartbeat"),
        "refused for slow heartbeats: {shut}"
    );
    ensure!(
        shut["heartbeat_ms"].as_u64().unwrap_or(0) >= 250,
        "the heartbeat time that closed admission is reported: {shut}"
    );

    // A carrier's INVITE to the slow node gets 503 with Retry-After (the scenario checks both
    // and ACKs in the INVITE's transaction).
    succeeds(
        Sipp::new("carrier_refused.xml", &work, "refused")
            .remote(&c.sip(slow))
            .service("075595598")
            .key("caller_prefix", "1380013800")
            .timeout(30)
            .spawn()?,
    )
    .await
    .context("the slow node answers 503 with Retry-After")?;
    ensure!(
        rejected(&api, "overload_heartbeat").await? >= 1,
        "the refusal is counted by reason"
    );

    // Slow is not dead: nobody declares it down (its lease may lapse between heartbeats
    // now, which is why it sheds calls), while the other nodes keep admitting.
    for (i, other) in c.apis().iter().enumerate() {
        let h = other.health().await?;
        ensure!(
            h["down_nodes"].as_array().is_some_and(|d| d.is_empty()),
            "node {i} sees no node down: {h}"
        );
        if i != slow {
            ensure!(
                h["admission"]["open"] == json!(true),
                "node {i} still admits: {h}"
            );
        }
    }

    // Headroom again: admission reopens and the node takes a call through its IVR to the end.
    api.delete("/api/v1/faults").await?;
    wait_until(Duration::from_secs(20), "admission to reopen", || async {
        admission(&api).await.filter(|a| a["open"] == json!(true))
    })
    .await?;
    succeeds(
        Sipp::new("carrier_ivr.xml", &work, "admitted")
            .remote(&c.sip(slow))
            .service("075595598")
            .key("caller_prefix", "1380013801")
            .set("digit", "none")
            .set("talk_ms", "500")
            .timeout(30)
            .spawn()?,
    )
    .await
    .context("the node takes calls again")?;
    let h = c.api(0).health().await?;
    ensure!(
        h["down_nodes"].as_array().is_some_and(|d| d.is_empty()),
        "no node was declared down during the whole test: {h}"
    );
    Ok(())
}
