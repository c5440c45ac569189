//! Issue 3 acceptance: nodes die (`kill -9`) or are cut off under real SIPp traffic, and calls,
//! queues and agents carry on. Real node processes on loopback; every wait has a deadline.

use anyhow::{ensure, Result};
use callgrid_tests::*;
use serde_json::Value;
use std::time::Duration;

const T: &str = "gd";

async fn cdrs_when(
    api: &Api,
    q: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    wait_until(Duration::from_secs(secs), what, || async {
        api.get_cdrs(q).await.ok().filter(|c| pred(c))
    })
    .await
}

/// The live view of gd/billing (owner node, waiting calls).
async fn queue_status(api: &Api) -> Result<Value> {
    api.get_json(&format!("/api/v1/tenants/{T}/queues/billing/status"))
        .await
}

/// 20 calls with mixed priorities wait in gd/billing; the node owning the QueueActor is
/// killed; a surviving node rebuilds the queue from the calls' checkpoints, and once agents
/// come, the calls are answered in priority-then-arrival order (I4), each with one CDR (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_calls_survive_the_queue_owner_kill_in_order() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let owner = n(&queue_status(&c.api(0)).await?, "owner") as u64;
    // Calls enter at a node that is not the queue's owner (their CallActors survive).
    let entry = c.info.nodes.iter().position(|x| x.id != owner).unwrap();
    let survivor = c
        .info
        .nodes
        .iter()
        .position(|x| x.id != owner && x.id != c.info.nodes[entry].id)
        .unwrap();

    // Key 8 is the priority line (priority 5), key 2 the normal one (priority 0): two
    // carriers calling at the same time interleave their arrivals.
    let from = now_ms();
    let carrier = |name: &str, digit: &str, calls: u32, prefix: &str| {
        Sipp::new("carrier_ivr.xml", &work, name)
            .remote(&c.sip(entry))
            .service("075595598")
            .key("caller_prefix", prefix)
            .set("digit", digit)
            .set("talk_ms", "180000")
            .calls(Some(calls))
            .rate(2.0, 1000)
            .timeout(240)
            .spawn()
    };
    let callers = vec![
        carrier("normal", "2", 12, "1390000")?,
        carrier("priority", "8", 8, "1380000")?,
    ];
    let api_entry = c.api(entry);
    wait_until(Duration::from_secs(90), "20 calls queued", || async {
        let q = queue_status(&api_entry).await.ok()?;
        (n(&q, "waiting") == 20).then_some(())
    })
    .await?;

    c.kill_node(owner).await?;
    let alive = c.apis_except(&[owner]);
    c.wait_declared_down(owner, &alive).await?;
    // The queue is rebuilt on a survivor with every call in it.
    let api = c.api(survivor);
    let rebuilt = wait_until(Duration::from_secs(15), "queue rebuilt", || async {
        let q = queue_status(&api).await.ok()?;
        (n(&q, "owner") as u64 != owner && n(&q, "waiting") == 20).then_some(q)
    })
    .await?;
    eprintln!(
        "queue rebuilt on node {} with {} calls",
        n(&rebuilt, "owner"),
        n(&rebuilt, "waiting")
    );

    // Agents come: four phones on surviving nodes, each answering and hanging up quickly.
    let domain = c.tenant(T)?.domain;
    let mut phones = Vec::new();
    for (i, agent) in c.tenant(T)?.agents.iter().take(4).enumerate() {
        let registrar = if i % 2 == 0 { entry } else { survivor };
        let phone = AgentPhone::start(
            &work,
            &c.sip(registrar),
            &domain,
            agent,
            Register::Digest("SHA-256"),
            "agent_phone_hangup.xml",
            None,
            Some(500),
        )
        .await?;
        api.sign_in(T, &agent.agent, &agent.extension).await?;
        api.ready(T, &agent.agent).await?;
        phones.push(phone);
    }

    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 600_000);
    let cdrs = cdrs_when(&api, &q, 180, "20 CDRs", |c| c.len() >= 20).await?;
    for p in &phones {
        p.run.stop();
    }
    let mut completed = 0;
    for caller in callers {
        let r = caller.wait(Duration::from_secs(60)).await?;
        completed += verdict::completed_calls(&r).map_err(anyhow::Error::msg)?;
    }
    ensure!(
        completed == 20,
        "carriers completed {completed} of 20 calls"
    );
    ensure!(
        cdrs.len() == 20,
        "exactly one CDR per call (I2): {}",
        cdrs.len()
    );
    let mut served: Vec<(u64, i64, u64, String)> = Vec::new();
    for cdr in &cdrs {
        ensure!(s(cdr, "disposition") == "answered", "{cdr}");
        served.push((
            n(cdr, "offered_at_ms") as u64,
            n(cdr, "priority"),
            n(cdr, "enqueued_at_ms") as u64,
            s(cdr, "call_id"),
        ));
    }
    // Everyone was waiting before the first agent came: every priority call was offered
    // before every normal one (two offers within 50 ms have no order anyone could observe).
    let last_priority = served.iter().filter(|x| x.1 == 5).map(|x| x.0).max();
    let first_normal = served.iter().filter(|x| x.1 == 0).map(|x| x.0).min();
    if let (Some(p), Some(n0)) = (last_priority, first_normal) {
        ensure!(
            p <= n0 + 50,
            "a normal call went before a priority call: {served:?}"
        );
    }
    let typed: Vec<model::Cdr> = cdrs
        .iter()
        .map(|c| serde_json::from_value(c.clone()))
        .collect::<Result<_, _>>()?;
    let violations = chaos::served_in_order(&typed, 50);
    ensure!(violations.is_empty(), "{violations:?}");
    ensure!(chaos::no_double_booking(&typed).is_empty(), "I1");
    Ok(())
}
