//! Issue 4 acceptance: the per-queue rules over SIP with real peers (SIPp as carrier) on a
//! three-node cluster. No agent is signed in, so calls wait; CDRs say what each rule did.
//!
//! - R3.5 max queued calls: the call beyond the limit is released, or transferred to the
//!   overflow queue, where it waits.

use std::time::Duration;

use anyhow::{ensure, Result};
use callgrid_tests::*;
use serde_json::{json, Value};

const T: &str = "gd";
/// The sample IVR sends key 0 to this queue (both carrier scenarios press 0).
const GENERAL: &str = "general";

/// Changes queue `queue` of gd and waits until every node has the change.
async fn set_queue(c: &ClusterGuard, queue: &str, change: impl Fn(&mut Value)) -> Result<()> {
    let mut q = c.api(0).get_queue(T, queue).await?;
    change(&mut q);
    c.api(0).put_queue(T, queue, &q).await?;
    for api in c.apis() {
        let want = q.clone();
        wait_until(Duration::from_secs(10), "queue change replicated", || {
            let (api, want) = (&api, &want);
            async move {
                let got = api.get_queue(T, queue).await.ok()?;
                (got["max_queued"] == want["max_queued"]
                    && got["on_max_queued"] == want["on_max_queued"])
                    .then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

async fn waiting(c: &ClusterGuard, queue: &str) -> Option<u64> {
    let status = c
        .api(0)
        .get_json(&format!("/api/v1/tenants/{T}/queues/{queue}/status"))
        .await
        .ok()?;
    status["waiting"].as_u64()
}

/// A caller who waits in line `hold_ms`, then hangs up (SIPp carrier, key 0: general).
fn waiting_caller(c: &ClusterGuard, name: &str, prefix: &str, hold_ms: u64, node: usize) -> Sipp {
    Sipp::new("carrier_abandon.xml", &c.work().join("sipp"), name)
        .remote(&c.sip(node))
        .service("075595598")
        .key("caller_prefix", prefix)
        .set("hold_ms", &hold_ms.to_string())
}

fn cdr_of<'a>(cdrs: &'a [Value], prefix: &str) -> Option<&'a Value> {
    cdrs.iter().find(|c| s(c, "caller").starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_releases_the_next_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, GENERAL, |q| {
        q["max_queued"] = json!(1);
        q["on_max_queued"] = json!({"action": "release"});
    })
    .await?;
    let from = now_ms();
    let first = waiting_caller(&c, "first", "1371000000", 20_000, 0).spawn()?;
    wait_until(Duration::from_secs(30), "the first call waits", || async {
        (waiting(&c, GENERAL).await? == 1).then_some(())
    })
    .await?;
    // The next call finds the line full: the platform hangs up on it (the scenario expects
    // the platform's BYE).
    let second = Sipp::new("carrier_queue_full.xml", &c.work().join("sipp"), "second")
        .remote(&c.sip(1))
        .service("075595598")
        .key("caller_prefix", "1372000000")
        .run(Duration::from_secs(60))
        .await?;
    ensure!(
        second.exit_code == 0 && second.successful == 1,
        "{second:?}"
    );
    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 120_000);
    let cdrs = cdrs_when(&c.api(2), &q, 30, "released CDR", |c| {
        cdr_of(c, "1372").is_some()
    })
    .await?;
    let released = cdr_of(&cdrs, "1372").expect("checked");
    ensure!(
        s(released, "disposition") == "released" && s(released, "reason") == "max_queued",
        "{released}"
    );
    ensure!(
        waiting(&c, GENERAL).await == Some(1),
        "the first call still waits, alone"
    );
    let first = first.wait(Duration::from_secs(60)).await?;
    ensure!(first.exit_code == 0 && first.successful == 1, "{first:?}");
    let cdrs = cdrs_when(&c.api(0), &q, 30, "first CDR", |c| {
        cdr_of(c, "1371").is_some()
    })
    .await?;
    let kept = cdr_of(&cdrs, "1371").expect("checked");
    ensure!(s(kept, "disposition") == "abandoned", "{kept}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_transfers_the_next_call_to_its_overflow_queue() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, GENERAL, |q| {
        q["max_queued"] = json!(1);
        q["on_max_queued"] = json!({"action": "transfer_queue", "queue": "billing"});
    })
    .await?;
    let from = now_ms();
    let first = waiting_caller(&c, "first", "1373000000", 20_000, 0).spawn()?;
    wait_until(Duration::from_secs(30), "the first call waits", || async {
        (waiting(&c, GENERAL).await? == 1).then_some(())
    })
    .await?;
    let second = waiting_caller(&c, "second", "1374000000", 10_000, 2).spawn()?;
    wait_until(
        Duration::from_secs(30),
        "the second call waits in billing",
        || async { (waiting(&c, "billing").await? == 1).then_some(()) },
    )
    .await?;
    ensure!(waiting(&c, GENERAL).await == Some(1));
    let second = second.wait(Duration::from_secs(60)).await?;
    ensure!(
        second.exit_code == 0 && second.successful == 1,
        "{second:?}"
    );
    let first = first.wait(Duration::from_secs(60)).await?;
    ensure!(first.exit_code == 0 && first.successful == 1, "{first:?}");
    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 120_000);
    let cdrs = cdrs_when(&c.api(1), &q, 30, "both CDRs", |c| {
        cdr_of(c, "1373").is_some() && cdr_of(c, "1374").is_some()
    })
    .await?;
    let moved = cdr_of(&cdrs, "1374").expect("checked");
    ensure!(
        s(moved, "queue") == "billing" && s(moved, "disposition") == "abandoned",
        "waited in the overflow queue: {moved}"
    );
    let kept = cdr_of(&cdrs, "1373").expect("checked");
    ensure!(s(kept, "queue") == GENERAL, "{kept}");
    Ok(())
}
