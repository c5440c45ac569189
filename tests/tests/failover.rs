//! Issue 3 acceptance: nodes die (`kill -9`) or are cut off under real SIPp traffic, and calls,
//! queues and agents carry on. Real node processes on loopback; every wait has a deadline.

use anyhow::{ensure, Context, Result};
use callgrid_tests::probe::RtpProbe;
use callgrid_tests::*;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const T: &str = "gd";

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

/// 50 established calls (SIPp carriers, SIPp agent phones; RTP played and measured by probes
/// at both ends) anchored on node 1; `kill -9` node 1: every call is re-INVITEd by a survivor,
/// RTP flows both ways through it 10 s later, the carriers' BYEs reach the new nodes, and each
/// call has one CDR with a failover mark (I3, I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn established_calls_survive_the_kill_of_their_node() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let killed = c.info.nodes[0].id;
    let killed_ip: IpAddr = c.info.nodes[0].sip.parse::<std::net::SocketAddr>()?.ip();
    let api = c.api(1);
    let sample = c.info.sample.clone().context("sample")?;
    let per_tenant = 10usize;

    // Agent phones: one SIPp process per tenant serving its 10 agents, registered via node 2.
    let mut phones = Vec::new();
    let mut agent_probes = Vec::new();
    for t in &sample.tenants {
        let probe = RtpProbe::bind(lo, per_tenant)?;
        let csv = work.join(format!("agent_probe_{}.csv", t.id));
        probe.csv(&csv)?;
        let agents: Vec<SampleAgent> = t.agents.iter().take(per_tenant).cloned().collect();
        let p = AgentPhones::start(
            &work,
            &c.sip(1),
            &t.domain,
            &agents,
            Register::Digest("SHA-256"),
            &csv,
            Some(per_tenant as u32),
            None,
        )
        .await?;
        for a in &agents {
            api.sign_in(&t.id, &a.agent, &a.extension).await?;
            api.ready(&t.id, &a.agent).await?;
        }
        phones.push(p);
        agent_probes.push(probe);
    }

    // Carriers: 10 calls per tenant into node 1, no menu key (the menu times out to the
    // general queue), 12 s of talk after the takeover's re-INVITE, then BYE to the new node.
    let mut carriers = Vec::new();
    let mut carrier_probes = Vec::new();
    for (i, t) in sample.tenants.iter().enumerate() {
        let probe = RtpProbe::bind(lo, per_tenant)?;
        let csv = work.join(format!("carrier_probe_{}.csv", t.id));
        probe.csv(&csv)?;
        let service = format!("{}{}", t.landing_codes[0], t.access_code);
        let run = Sipp::new("carrier_failover.xml", &work, &format!("carrier_{}", t.id))
            .remote(&c.sip(0))
            .service(&service)
            .key("caller_prefix", &format!("137{i}000"))
            .inf(&csv)
            .set("digit", "none")
            .set("reinvite_ms", "120000")
            .set("talk_ms", "12000")
            .calls(Some(per_tenant as u32))
            .rate(5.0, 1000)
            .timeout(300)
            .spawn()?;
        carriers.push(run);
        carrier_probes.push(probe);
    }
    let total = sample.tenants.len() * per_tenant;
    wait_until(Duration::from_secs(120), "every call talking", || async {
        let calls = api.get_json("/api/v1/calls").await.ok()?;
        let list = calls.as_array()?;
        let talking = list
            .iter()
            .filter(|c| s(c, "state") == "talking" && n(c, "node") as u64 == killed)
            .count();
        if talking < total {
            let mut states: std::collections::BTreeMap<String, usize> = Default::default();
            for c in list {
                *states
                    .entry(format!("{}@{}", s(c, "state"), n(c, "node")))
                    .or_default() += 1;
            }
            eprintln!("calls: {states:?}");
            if let Ok(agents) = api.get_agents("gd").await {
                let st: Vec<String> = agents
                    .iter()
                    .map(|a| format!("{}:{}", s(a, "agent"), s(a, "state")))
                    .collect();
                eprintln!("gd agents: {st:?}");
            }
        }
        (talking == total).then_some(())
    })
    .await?;

    let kill_at = Instant::now();
    let from = now_ms();
    c.kill_node(killed).await?;
    let alive = c.apis_except(&[killed]);
    c.wait_declared_down(killed, &alive).await?;

    // Both ends of every call hear a surviving node.
    let moved = |p: &RtpProbe, i: usize| {
        let r = p.report(i);
        let seen = r
            .arrivals()
            .any(|(t, src)| t > kill_at && src.ip() != killed_ip);
        seen
    };
    let count = |probes: &[RtpProbe]| -> usize {
        probes
            .iter()
            .map(|p| (0..p.len()).filter(|i| moved(p, *i)).count())
            .sum()
    };
    let followed = wait_until(
        Duration::from_secs(20),
        "media from the new owners",
        || async {
            (count(&carrier_probes) == total && count(&agent_probes) == total).then_some(())
        },
    )
    .await;
    if followed.is_err() {
        anyhow::bail!(
            "media from a surviving node reached {} of {total} carrier ends and {} of {total} agent ends",
            count(&carrier_probes),
            count(&agent_probes)
        );
    }
    // 10 s after the kill, RTP still flows both ways through a survivor.
    let ten = kill_at + Duration::from_secs(10);
    wait_until(Duration::from_secs(15), "10 s after the kill", || async {
        (Instant::now() >= ten + Duration::from_millis(500)).then_some(())
    })
    .await?;
    let mut gaps = Vec::new();
    for p in carrier_probes.iter().chain(agent_probes.iter()) {
        for i in 0..p.len() {
            let r = p.report(i);
            let recent = r
                .arrivals()
                .filter(|(t, src)| *t >= ten && src.ip() != killed_ip)
                .count();
            ensure!(
                recent > 0,
                "no RTP on probe port {} 10 s after the kill",
                p.addr(i)
            );
            gaps.push(r.gap_after(kill_at).unwrap_or_default().as_millis() as u64);
        }
    }
    gaps.sort_unstable();
    eprintln!(
        "media gap after the kill over {} call ends: p50 {} ms, p99 {} ms, max {} ms",
        gaps.len(),
        gaps[gaps.len() / 2],
        gaps[(gaps.len() * 99 / 100).min(gaps.len() - 1)],
        gaps[gaps.len() - 1]
    );

    // The carriers hang up toward the new nodes; the phones take the node's BYE.
    let mut completed = 0;
    for run in carriers {
        let r = run.wait(Duration::from_secs(90)).await?;
        completed += verdict::completed_calls(&r).map_err(anyhow::Error::msg)?;
    }
    ensure!(
        completed == total as u64,
        "carriers completed {completed} of {total}"
    );
    for p in phones {
        let r = p.run.wait(Duration::from_secs(60)).await?;
        let done = verdict::completed_calls(&r).map_err(anyhow::Error::msg)?;
        ensure!(
            done == per_tenant as u64,
            "phones completed {done} of {per_tenant}"
        );
    }
    let mut cdrs = Vec::new();
    for t in &sample.tenants {
        let q = format!(
            "tenant={}&from={}&to={}",
            t.id,
            from - 120_000,
            now_ms() + 60_000
        );
        cdrs.extend(cdrs_when(&alive[0], &q, 30, "CDRs", |c| c.len() >= per_tenant).await?);
    }
    ensure!(
        cdrs.len() == total,
        "one CDR per call: {} of {total}",
        cdrs.len()
    );
    for cdr in &cdrs {
        ensure!(s(cdr, "disposition") == "answered", "{cdr}");
        let marks = cdr["failovers"].as_array().cloned().unwrap_or_default();
        ensure!(
            marks.len() == 1 && n(&marks[0], "from_node") as u64 == killed,
            "one failover mark from node {killed}: {cdr}"
        );
    }
    Ok(())
}
