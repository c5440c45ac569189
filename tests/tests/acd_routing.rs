//! Issue 4 acceptance, routing (R3.12-R3.16), over SIP with real peers (SIPp carriers and
//! agent phones) on a three-node cluster:
//!
//! - R3.15 special queue by caller tag: a known caller tagged `elderly` skips the IVR and
//!   goes straight to the outage queue, where its agent answers; an unknown caller hears the
//!   IVR; a rule whose time window is not now does not apply, and applies once it is. The
//!   customers are imported and the routing script set with the admin CLI.
//! - R3.12 tag and VIP routing: a VIP (level 200) is served before a caller who waited
//!   longer, by a senior agent; a second VIP is not offered to an agent without the tag,
//!   also after the queue's owner node is killed (its needs are rebuilt from the
//!   checkpoints), and the senior agent takes it when free.
//! - R3.16 repeat caller: a caller who called within the day is offered to the agent who
//!   served it last although another agent has been idle longer; when that agent is not
//!   ready the call waits the queue's bound for it (also across the kill of the call's
//!   node), then any agent takes it.
//! - R3.11 callback: a caller who hangs up early keeps its place as a virtual call, also
//!   across the kill of its node, and is called back and bridged when an agent answers.
//! - R3.4 transfers: max wait sends a call to one agent (not the longest idle), or to an
//!   external number behind the carrier, bridged, which survives the kill of the call's node.

use std::time::Duration;

use anyhow::{ensure, Result};
use callgrid_tests::probe::RtpProbe;
use callgrid_tests::*;
use serde_json::{json, Value};

const T: &str = "gd";

/// A caller of the sample access code who presses `digit` 6 s in and hangs up `talk_ms`
/// later (answered or not).
fn caller(
    c: &ClusterGuard,
    name: &str,
    prefix: &str,
    digit: &str,
    talk_ms: u64,
    node: usize,
) -> Sipp {
    Sipp::new("carrier_ivr.xml", &c.work().join("sipp"), name)
        .remote(&c.sip(node))
        .service("075595598")
        .key("caller_prefix", prefix)
        .set("digit", digit)
        .set("talk_ms", &talk_ms.to_string())
        .timeout(120)
}

/// `HH:MM` in China time, `offset_min` from now.
fn china_time(offset_min: i64) -> String {
    let local = (now_ms() / 60_000) as i64 + 480 + offset_min;
    let m = local.rem_euclid(1440);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Signs agent `index` of the sample tenant in at node `node` with a phone that answers
/// `calls` calls; the agent serves only `queue` and has `tags`.
async fn agent_at(
    c: &ClusterGuard,
    index: usize,
    node: usize,
    queue: &str,
    tags: &[&str],
    calls: u32,
) -> Result<(SampleAgent, AgentPhone)> {
    let agent = c.tenant(T)?.agents[index].clone();
    set_agent(c, T, &agent.agent, |a| {
        a["skills"] = json!([queue]);
        a["tags"] = json!(tags);
    })
    .await?;
    c.api(node)
        .sign_in(T, &agent.agent, &agent.extension)
        .await?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let phone = AgentPhone::start(
        &work,
        &c.sip(node),
        &c.tenant(T)?.domain,
        &agent,
        Register::Digest("SHA-256"),
        "agent_phone.xml",
        Some(calls),
        None,
    )
    .await?;
    Ok((agent, phone))
}

async fn until_state(c: &ClusterGuard, agent: &str, state: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("agent {agent} {state}"),
        || async {
            let a = c.api(0).get_agent(T, agent).await.ok()?;
            (s(&a, "state") == state).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tagged_caller_goes_straight_to_its_special_queue_in_its_time_window() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    // The customer list and the routing script, through the admin CLI.
    let customers = work.join("customers.json");
    std::fs::write(
        &customers,
        json!([
            {"number": "13710000001", "name": "Elder One", "tags": ["elderly"]},
            {"number": "+8613720000001", "tags": ["elderly"], "level": 10},
        ])
        .to_string(),
    )?;
    let imported = cli(
        &c,
        &[
            "customer",
            "import",
            "--tenant",
            T,
            "--file",
            &customers.display().to_string(),
        ],
    )
    .await?;
    ensure!(
        imported == json!({"created": 2, "updated": 0}),
        "{imported}"
    );
    let rules = |window_from: i64, window_to: i64| {
        json!([
            {"name": "elderly-evening", "then": {"queue": "complaint"},
             "when": {"caller_tags": ["elderly"],
                      "window": {"from": china_time(window_from), "to": china_time(window_to)}}},
            {"name": "elderly", "when": {"caller_tags": ["elderly"]}, "then": {"queue": "outage"}},
        ])
    };
    let script = work.join("routing.json");
    let set_rules = |rules: Value| {
        let (c, script) = (&c, &script);
        async move {
            std::fs::write(script, rules.to_string())?;
            let path = script.display().to_string();
            cli(c, &["tenant", "update", "--id", T, "--routing-file", &path]).await?;
            let window = rules[0]["when"]["window"]["from"].clone();
            replicated(c, &format!("/api/v1/tenants/{T}"), |t| {
                t["routing"][0]["when"]["window"]["from"] == window
                    && t["routing"][1]["name"] == "elderly"
            })
            .await
        }
    };
    set_rules(rules(60, 120)).await?;
    let listed = cli(&c, &["customer", "list", "--tenant", T, "--tag", "elderly"]).await?;
    ensure!(listed.as_array().map(Vec::len) == Some(2), "{listed}");

    // Only an outage agent is ready.
    let (agent, phone) = agent_at(&c, 0, 1, "outage", &[], 1).await?;
    c.api(1).ready(T, &agent.agent).await?;
    let from = now_ms();
    let elder = caller(&c, "elder", "1371000000", "0", 8_000, 2).spawn()?;
    let plain = caller(&c, "plain", "1373000000", "0", 1_000, 0).spawn()?;
    succeeds(elder).await?;
    succeeds(plain).await?;
    let pr = phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(
        pr.exit_code == 0 && pr.successful == 1,
        "agent phone: {pr:?}"
    );
    let cdrs = cdrs_for(&c, T, 0, from, &["1371", "1373"]).await?;
    let e = cdr_of(&cdrs, "1371").expect("checked");
    ensure!(
        s(e, "queue") == "outage"
            && s(e, "disposition") == "answered"
            && s(e, "agent") == agent.agent
            && e["ivr"].as_array().is_some_and(Vec::is_empty)
            && e["routed_by"] == json!(["elderly"]),
        "the elderly caller skips the IVR to outage, and its agent answers: {e}"
    );
    let p = cdr_of(&cdrs, "1373").expect("checked");
    ensure!(
        s(p, "queue") == "general"
            && !p["ivr"].as_array().is_some_and(Vec::is_empty)
            && p.get("routed_by").is_none(),
        "an unknown caller goes through the IVR: {p}"
    );

    // The evening rule's window is now: the other elderly caller (+86 form on file) goes to
    // complaint.
    set_rules(rules(-30, 30)).await?;
    let from = now_ms();
    succeeds(caller(&c, "evening", "1372000000", "0", 1_000, 1).spawn()?).await?;
    let cdrs = cdrs_for(&c, T, 2, from, &["1372"]).await?;
    let v = cdr_of(&cdrs, "1372").expect("checked");
    ensure!(
        s(v, "queue") == "complaint" && v["routed_by"] == json!(["elderly-evening"]),
        "in its window the evening rule applies first: {v}"
    );
    let history = cli(
        &c,
        &[
            "customer",
            "caller",
            "--tenant",
            T,
            "--number",
            "13710000001",
        ],
    )
    .await?;
    ensure!(
        history["history"][0]["agent"] == json!(agent.agent),
        "the caller's history names its agent: {history}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vip_callers_wait_higher_and_only_for_agents_with_the_tag_even_after_the_queue_owner_dies(
) -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    c.api(0)
        .post_json(
            &format!("/api/v1/tenants/{T}/customers/import"),
            &json!([
                {"number": "13820000001", "tags": ["vip"], "level": 200},
                {"number": "13830000001", "tags": ["vip"], "level": 200},
            ]),
        )
        .await?;
    let rules = json!([{
        "name": "vip-billing",
        "when": {"ivr_queue": "billing", "caller_tags": ["vip"]},
        "agent_tags": ["senior"],
    }]);
    let mut tenant = c.api(0).get_json(&format!("/api/v1/tenants/{T}")).await?;
    tenant["routing"] = rules.clone();
    c.api(0)
        .put_json(&format!("/api/v1/tenants/{T}"), &tenant)
        .await?;
    replicated(&c, &format!("/api/v1/tenants/{T}"), |t| {
        t["routing"] == rules
    })
    .await?;
    // Everything on the two nodes that survive the billing queue's owner.
    let status = c
        .api(0)
        .get_json(&format!("/api/v1/tenants/{T}/queues/billing/status"))
        .await?;
    let owner = n(&status, "owner") as u64;
    let survivors: Vec<usize> = (0..c.info.nodes.len())
        .filter(|i| c.info.nodes[*i].id != owner)
        .collect();
    let (a, b) = (survivors[0], survivors[1]);
    let (senior, senior_phone) = agent_at(&c, 0, a, "billing", &["senior"], 2).await?;
    let (plain, plain_phone) = agent_at(&c, 1, b, "billing", &[], 1).await?;
    let (spare, _spare_phone) = agent_at(&c, 2, b, "billing", &[], 1).await?;
    let from = now_ms();
    // A plain caller, then a VIP, wait for billing (key 2) with nobody ready.
    let first = caller(&c, "first", "1381000000", "2", 20_000, a).spawn()?;
    until_waiting(&c, T, "billing", 1).await?;
    let vip = caller(&c, "vip", "1382000000", "2", 12_000, b).spawn()?;
    until_waiting(&c, T, "billing", 2).await?;
    // The senior agent takes the VIP first (level 200), though the plain caller waited longer.
    c.api(a).ready(T, &senior.agent).await?;
    until_state(&c, &senior.agent, "talking").await?;
    // A second VIP arrives; the agent without the tag takes the plain caller, not the VIP.
    let vip2 = caller(&c, "vip2", "1383000000", "2", 30_000, a).spawn()?;
    until_waiting(&c, T, "billing", 2).await?;
    c.api(b).ready(T, &plain.agent).await?;
    until_state(&c, &plain.agent, "talking").await?;
    until_waiting(&c, T, "billing", 1).await?;

    // The queue's owner dies; the queue is rebuilt on a survivor from the calls' checkpoints,
    // with the VIP's needs. A ready agent without the tag stays idle while the VIP waits.
    c.kill_node(owner).await?;
    c.wait_declared_down(owner, &c.apis_except(&[owner]))
        .await?;
    c.api(b).ready(T, &spare.agent).await?;
    let held = wait_until(
        Duration::from_secs(30),
        "the rebuilt queue with an idle agent",
        || async {
            let st = c
                .api(a)
                .get_json(&format!("/api/v1/tenants/{T}/queues/billing/status"))
                .await
                .ok()?;
            (n(&st, "owner") as u64 != owner && n(&st, "idle_agents") == 1).then_some(st)
        },
    )
    .await?;
    ensure!(
        n(&held, "waiting") == 1 && n(&held, "offering") == 0,
        "the VIP waits, not offered to the idle agent without the tag: {held}"
    );
    // When the VIP's call ends, the senior agent takes the second VIP.
    for run in [vip, first] {
        succeeds(run).await?;
    }
    succeeds(vip2).await?;
    let sp = senior_phone.run.wait(Duration::from_secs(60)).await?;
    ensure!(
        sp.exit_code == 0 && sp.successful == 2,
        "senior phone: {sp:?}"
    );
    let pp = plain_phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(
        pp.exit_code == 0 && pp.successful == 1,
        "plain phone: {pp:?}"
    );
    let cdrs = cdrs_for(&c, T, a, from, &["1381", "1382", "1383"]).await?;
    let v = cdr_of(&cdrs, "1382").expect("checked");
    ensure!(
        s(v, "agent") == senior.agent
            && n(v, "priority") == 200
            && v["routed_by"] == json!(["vip-billing"]),
        "the VIP was served first, at its level, by the senior agent: {v}"
    );
    let f = cdr_of(&cdrs, "1381").expect("checked");
    ensure!(s(f, "agent") == plain.agent && n(f, "priority") == 0, "{f}");
    let v2 = cdr_of(&cdrs, "1383").expect("checked");
    ensure!(
        s(v2, "agent") == senior.agent && s(v2, "disposition") == "answered",
        "the second VIP waited for the senior agent, across the owner's death: {v2}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_caller_reaches_the_agent_who_served_it_last_and_waits_for_it_across_a_kill(
) -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, "billing", |q| {
        q["repeat_caller"] =
            json!({"period": "day", "count": 1, "mode": "last", "wait_ms": 15_000});
    })
    .await?;
    let (first_agent, first_phone) = agent_at(&c, 0, 0, "billing", &[], 1).await?;
    let (last_agent, last_phone) = agent_at(&c, 1, 1, "billing", &[], 2).await?;
    let from = now_ms();
    // The first call: only `last_agent` is ready, and answers it.
    c.api(1).ready(T, &last_agent.agent).await?;
    let call1 = caller(&c, "call1", "1391000000", "2", 3_000, 2).spawn()?;
    until_state(&c, &last_agent.agent, "talking").await?;
    // Meanwhile the other agent gets ready: it will have been idle longest.
    c.api(0).ready(T, &first_agent.agent).await?;
    succeeds(call1).await?;
    replicated(
        &c,
        &format!("/api/v1/tenants/{T}/callers/13910000001"),
        |v| v["history"].as_array().is_some_and(|h| h.len() == 1),
    )
    .await?;
    until_state(&c, &last_agent.agent, "ready").await?;
    // The same caller again: it goes to the agent who served it, not the longest idle.
    let call2 = caller(&c, "call2", "1391000000", "2", 3_000, 0).spawn()?;
    until_state(&c, &last_agent.agent, "talking").await?;
    ensure!(s(&c.api(0).get_agent(T, &first_agent.agent).await?, "state") == "ready");
    succeeds(call2).await?;
    let lp = last_phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(lp.exit_code == 0 && lp.successful == 2, "{lp:?}");
    // Its agent is not ready now: the third call waits 15 s for it, then the other takes it,
    // although the call's node dies while it waits (the hold is rebuilt from the call's
    // checkpoint by the survivor that takes it over).
    until_state(&c, &last_agent.agent, "ready").await?;
    c.api(1).not_ready(T, &last_agent.agent, "lunch").await?;
    let work = c.work().join("sipp");
    let probe = RtpProbe::bind(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1)?;
    probe.csv(&work.join("call3_probe.csv"))?;
    let call3 = Sipp::new("carrier_failover.xml", &work, "call3")
        .remote(&c.sip(2))
        .service("075595598")
        .key("caller_prefix", "1391000000")
        .inf(&work.join("call3_probe.csv"))
        .set("digit", "2")
        .set("reinvite_ms", "60000")
        .set("talk_ms", "25000")
        .timeout(120)
        .spawn()?;
    until_waiting(&c, T, "billing", 1).await?;
    let killed = c.info.nodes[2].id;
    c.kill_node(killed).await?;
    let alive = c.apis_except(&[killed]);
    c.wait_declared_down(killed, &alive).await?;
    succeeds(call3).await?;
    let fp = first_phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(fp.exit_code == 0 && fp.successful == 1, "{fp:?}");
    let cdrs = cdrs_when(
        &c.api(0),
        &format!("tenant={T}&from={from}&to={}", now_ms() + 60_000),
        60,
        "three CDRs of the caller",
        |cdrs| {
            cdrs.iter()
                .filter(|c| s(c, "caller") == "13910000001")
                .count()
                == 3
        },
    )
    .await?;
    let mut calls: Vec<&Value> = cdrs
        .iter()
        .filter(|c| s(c, "caller") == "13910000001")
        .collect();
    calls.sort_by_key(|c| n(c, "started_at_ms"));
    ensure!(
        s(calls[0], "agent") == last_agent.agent && calls[0].get("repeat_caller").is_none(),
        "{}",
        calls[0]
    );
    let second = calls[1];
    ensure!(
        s(second, "agent") == last_agent.agent
            && second["repeat_caller"]["preferred"] == json!([last_agent.agent]),
        "the repeat caller reached its last agent: {second}"
    );
    let third = calls[2];
    let waited = n(third, "first_offered_at_ms") - n(third, "enqueued_at_ms");
    ensure!(
        s(third, "agent") == first_agent.agent
            && waited >= 15_000
            && third["repeat_caller"]["preferred"] == json!([last_agent.agent])
            && third["failovers"][0]["from_node"] == killed,
        "held {waited} ms for its agent across the kill, then offered to the other: {third}"
    );
    Ok(())
}

/// Points the carrier trunk's outbound address (callbacks, transfers out) at a local SIPp
/// phone on `port`, on every node.
async fn carrier_dials_out_to(c: &ClusterGuard, port: u16) -> Result<()> {
    let path = "/api/v1/trunks/carrier";
    let mut trunk = c.api(0).get_json(path).await?;
    trunk["outbound"] = json!(format!("127.0.0.1:{port}"));
    c.api(0).put_json(path, &trunk).await?;
    replicated(c, path, |t| t["outbound"] == trunk["outbound"]).await
}

/// The live call of a caller whose number starts with `prefix`, once it waits in `n` queues.
async fn waiting_call(c: &ClusterGuard, node: usize, prefix: &str, n: usize) -> Result<Value> {
    wait_until(
        Duration::from_secs(30),
        &format!("{prefix}'s call in {n} queues"),
        || async {
            let calls = c.api(node).get_json("/api/v1/calls").await.ok()?;
            calls
                .as_array()?
                .iter()
                .find(|call| {
                    s(call, "caller").starts_with(prefix)
                        && call["waiting_in"].as_array().map(Vec::len) == Some(n)
                })
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_waits_in_several_queues_changed_live_and_kept_across_a_queue_owner_kill(
) -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    // The IVR's key 0 puts callers in general and billing at once.
    let path = format!("/api/v1/tenants/{T}/flows/main");
    let mut flow = c.api(0).get_json(&path).await?;
    flow["nodes"]["to_general"]["also"] = json!(["billing"]);
    c.api(0).put_json(&path, &flow).await?;
    replicated(&c, &path, |f| {
        f["nodes"]["to_general"]["also"] == json!(["billing"])
    })
    .await?;
    let status = c
        .api(0)
        .get_json(&format!("/api/v1/tenants/{T}/queues/billing/status"))
        .await?;
    let owner = n(&status, "owner") as u64;
    let survivors: Vec<usize> = (0..c.info.nodes.len())
        .filter(|i| c.info.nodes[*i].id != owner)
        .collect();
    let (a, b) = (survivors[0], survivors[1]);
    let (agent, phone) = agent_at(&c, 0, a, "billing", &[], 1).await?;
    let from = now_ms();
    let run = caller(&c, "multi", "1301000000", "0", 30_000, b).spawn()?;
    let call = waiting_call(&c, a, "1301", 2).await?;
    ensure!(
        call["waiting_in"] == json!(["general", "billing"]),
        "{call}"
    );
    until_waiting(&c, T, "general", 1).await?;
    until_waiting(&c, T, "billing", 1).await?;

    // Live: also outage, no longer general, priority 50 (through the admin CLI).
    let id = s(&call, "call_id");
    let changed = cli(
        &c,
        &[
            "call",
            "queues",
            "--call",
            &id,
            "--add",
            "outage",
            "--remove",
            "general",
            "--priority",
            "50",
        ],
    )
    .await?;
    ensure!(
        changed["queues"] == json!(["billing", "outage"]),
        "{changed}"
    );
    until_waiting(&c, T, "general", 0).await?;
    until_waiting(&c, T, "outage", 1).await?;
    // A queue the call is not in cannot be removed down to nothing, and bad input is refused.
    let refused = c
        .api(a)
        .post_json(
            &format!("/api/v1/calls/{id}/queues"),
            &json!({"remove": ["billing", "outage"]}),
        )
        .await;
    ensure!(refused.is_err(), "a call keeps one queue: {refused:?}");

    // billing's owner dies: the queue is rebuilt elsewhere with the call in it.
    c.kill_node(owner).await?;
    c.wait_declared_down(owner, &c.apis_except(&[owner]))
        .await?;
    let rebuilt = wait_until(
        Duration::from_secs(30),
        "billing rebuilt with the call",
        || async {
            let st = c
                .api(a)
                .get_json(&format!("/api/v1/tenants/{T}/queues/billing/status"))
                .await
                .ok()?;
            (n(&st, "owner") as u64 != owner && n(&st, "waiting") == 1).then_some(st)
        },
    )
    .await?;
    let call = waiting_call(&c, a, "1301", 2).await?;
    ensure!(
        call["waiting_in"] == json!(["billing", "outage"]),
        "{call} {rebuilt}"
    );
    // billing's agent takes it; the call leaves outage.
    c.api(a).ready(T, &agent.agent).await?;
    until_state(&c, &agent.agent, "talking").await?;
    wait_until(Duration::from_secs(15), "outage empty", || async {
        let st = c
            .api(a)
            .get_json(&format!("/api/v1/tenants/{T}/queues/outage/status"))
            .await
            .ok()?;
        (n(&st, "waiting") == 0).then_some(())
    })
    .await?;
    succeeds(run).await?;
    let pr = phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(pr.exit_code == 0 && pr.successful == 1, "{pr:?}");
    let cdrs = cdrs_for(&c, T, a, from, &["1301"]).await?;
    let cdr = cdr_of(&cdrs, "1301").expect("checked");
    ensure!(
        s(cdr, "queue") == "billing" && n(cdr, "priority") == 50 && s(cdr, "agent") == agent.agent,
        "answered from billing at priority 50: {cdr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_wait_transfers_the_call_to_one_agent_not_the_longest_idle() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let (idle, _idle_phone) = agent_at(&c, 0, 0, "billing", &[], 1).await?;
    let (chosen, chosen_phone) = agent_at(&c, 1, 1, "billing", &[], 1).await?;
    // After 4 s in general (which nobody serves), to agent `chosen` through billing.
    let target = format!("agent:{}@billing", chosen.agent);
    cli(
        &c,
        &[
            "queue",
            "update",
            "--tenant",
            T,
            "--id",
            "general",
            "--max-wait-ms",
            "4000",
            "--on-max-wait",
            &target,
        ],
    )
    .await?;
    replicated(&c, &format!("/api/v1/tenants/{T}/queues/general"), |q| {
        q["on_max_wait"]["action"] == "transfer_agent"
    })
    .await?;
    c.api(0).ready(T, &idle.agent).await?;
    until_state(&c, &idle.agent, "ready").await?;
    c.api(1).ready(T, &chosen.agent).await?;
    let from = now_ms();
    succeeds(caller(&c, "to-agent", "1310000000", "0", 14_000, 2).spawn()?).await?;
    let pr = chosen_phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(pr.exit_code == 0 && pr.successful == 1, "{pr:?}");
    let cdrs = cdrs_for(&c, T, 1, from, &["1310"]).await?;
    let cdr = cdr_of(&cdrs, "1310").expect("checked");
    ensure!(
        s(cdr, "agent") == chosen.agent
            && s(cdr, "queue") == "billing"
            && cdr["rules"][0]["rule"] == "max_wait"
            && cdr["rules"][0]["action"]["agent"] == json!(chosen.agent),
        "the rule's agent took the call, not the longest idle one: {cdr}"
    );
    ensure!(s(&c.api(0).get_agent(T, &idle.agent).await?, "state") == "ready");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_who_hangs_up_early_keeps_its_place_across_a_node_kill_and_is_called_back(
) -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    // The customer's phone behind the carrier: a SIPp UAS that answers the callback.
    let customer_port = free_port();
    let customer = Sipp::new("agent_phone.xml", &work, "customer")
        .port(customer_port)
        .calls(Some(1))
        .timeout(120)
        .spawn()?;
    carrier_dials_out_to(&c, customer_port).await?;
    cli(
        &c,
        &[
            "queue",
            "update",
            "--tenant",
            T,
            "--id",
            "general",
            "--callback-trunk",
            "carrier",
            "--callback-after-ms",
            "2000",
        ],
    )
    .await?;
    replicated(&c, &format!("/api/v1/tenants/{T}/queues/general"), |q| {
        q["callback"]["after_ms"] == 2000
    })
    .await?;
    // The agent of general: signed in, not ready yet; its phone hangs up after 3 s of talk.
    let agent = c.tenant(T)?.agents[0].clone();
    set_agent(&c, T, &agent.agent, |a| a["skills"] = json!(["general"])).await?;
    c.api(1).sign_in(T, &agent.agent, &agent.extension).await?;
    let phone = AgentPhone::start(
        &work,
        &c.sip(1),
        &c.tenant(T)?.domain,
        &agent,
        Register::Digest("SHA-256"),
        "agent_phone_hangup.xml",
        Some(1),
        Some(3_000),
    )
    .await?;
    let events = EventLog::connect(&c.api(0)).await?;
    let from = now_ms();
    // The caller waits 5 s in general, then hangs up: it keeps its place.
    let run = Sipp::new("carrier_abandon.xml", &work, "early")
        .remote(&c.sip(2))
        .service("075595598")
        .key("caller_prefix", "1320000000")
        .set("hold_ms", "5000")
        .timeout(60);
    succeeds(run.spawn()?).await?;
    let call = waiting_call(&c, 0, "1320", 1).await?;
    ensure!(
        s(&call, "state") == "queued",
        "the virtual call waits: {call}"
    );
    ensure!(queue_waiting(&c, T, "general").await == Some(1));
    // The virtual call's node dies: a survivor takes it over, with no caller to re-INVITE,
    // and it keeps its place.
    let killed = n(&call, "node") as u64;
    ensure!(
        killed == c.info.nodes[2].id,
        "the call is anchored where it came in: {call}"
    );
    c.kill_node(killed).await?;
    let alive = c.apis_except(&[killed]);
    c.wait_declared_down(killed, &alive).await?;
    let taken = waiting_call(&c, 0, "1320", 1).await?;
    ensure!(
        n(&taken, "node") as u64 != killed && s(&taken, "state") == "queued",
        "the virtual call waits on a survivor: {taken}"
    );
    // Its queue counts it again (rebuilt on a survivor if its owner died too).
    until_waiting(&c, T, "general", 1).await?;
    // The agent gets ready: it is offered the virtual call, answers, and the platform
    // (the new owner) calls the customer back and bridges them; the agent hangs up after 3 s.
    c.api(1).ready(T, &agent.agent).await?;
    let pr = phone.run.wait(Duration::from_secs(60)).await?;
    ensure!(
        pr.exit_code == 0 && pr.successful == 1,
        "agent phone: {pr:?}"
    );
    let cr = customer.wait(Duration::from_secs(60)).await?;
    ensure!(
        cr.exit_code == 0 && cr.successful == 1,
        "the customer was called back: {cr:?}"
    );
    let cdrs = cdrs_for(&c, T, 0, from, &["1320"]).await?;
    let cdr = cdr_of(&cdrs, "1320").expect("checked");
    let mark = &cdr["callback"];
    ensure!(
        s(cdr, "disposition") == "answered"
            && s(cdr, "agent") == agent.agent
            && s(mark, "by") == "hangup"
            && n(mark, "answered_at_ms") >= n(mark, "dialled_at_ms")
            && n(mark, "dialled_at_ms") > n(mark, "requested_at_ms")
            && cdr["failovers"][0]["from_node"] == killed,
        "called back by the new owner and answered: {cdr}"
    );
    let virtual_call = events
        .snapshot()
        .into_iter()
        .find(|e| s(e, "type") == "virtual_call")
        .ok_or_else(|| anyhow::anyhow!("no virtual-call event"))?;
    ensure!(
        s(&virtual_call, "agent") == agent.agent
            && s(&virtual_call, "customer").starts_with("1320"),
        "{virtual_call}"
    );
    Ok(())
}

/// R3.4 transfer to an external number, across a kill: after 4 s in general (nobody serves
/// it), the queue's rule puts the caller through to 95598 behind the carrier (a SIPp phone at
/// the trunk's outbound address, with an RTP probe), set with the CLI. Then `kill -9` of the
/// call's node: a survivor re-INVITEs both ends, media flows again at both, the caller hangs
/// up toward the new node and the external phone takes its BYE; one CDR, transferred, with
/// the external mark and a failover mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_wait_transfers_to_an_external_number_which_survives_a_node_kill() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let external_probe = RtpProbe::bind(lo, 1)?;
    external_probe.csv(&work.join("external_probe.csv"))?;
    let external_port = free_port();
    let external = Sipp::new("agent_phone_failover.xml", &work, "external")
        .port(external_port)
        .inf(&work.join("external_probe.csv"))
        .calls(Some(1))
        .timeout(120)
        .spawn()?;
    carrier_dials_out_to(&c, external_port).await?;
    cli(
        &c,
        &[
            "queue",
            "update",
            "--tenant",
            T,
            "--id",
            "general",
            "--max-wait-ms",
            "4000",
            "--on-max-wait",
            "number:95598@carrier",
        ],
    )
    .await?;
    replicated(&c, &format!("/api/v1/tenants/{T}/queues/general"), |q| {
        q["on_max_wait"]["action"] == "transfer_number" && q["on_max_wait"]["number"] == "95598"
    })
    .await?;
    // A trunk a rule dials out through cannot be deleted.
    let refused = c.api(1).delete("/api/v1/trunks/carrier").await;
    ensure!(refused.is_err(), "the trunk in use was deleted");

    let caller_probe = RtpProbe::bind(lo, 1)?;
    caller_probe.csv(&work.join("caller_probe.csv"))?;
    let killed = c.info.nodes[2].id;
    let killed_ip = c.sip(2).parse::<std::net::SocketAddr>()?.ip();
    let from = now_ms();
    let carrier = Sipp::new("carrier_failover.xml", &work, "caller")
        .remote(&c.sip(2))
        .service("075595598")
        .key("caller_prefix", "1330000000")
        .inf(&work.join("caller_probe.csv"))
        .set("digit", "none")
        .set("reinvite_ms", "90000")
        .set("talk_ms", "6000")
        .timeout(150)
        .spawn()?;
    let api = c.api(0);
    wait_until(Duration::from_secs(60), "the call put through", || async {
        let calls = api.get_json("/api/v1/calls").await.ok()?;
        calls.as_array()?.iter().find_map(|call| {
            (s(call, "caller").starts_with("1330") && s(call, "state") == "external").then_some(())
        })
    })
    .await?;
    // Media both ways before the kill, then from a survivor after it.
    let heard = |p: &RtpProbe, after: Option<std::time::Instant>| {
        p.report(0)
            .arrivals()
            .any(|(t, src)| after.is_none_or(|a| t > a && src.ip() != killed_ip))
    };
    wait_until(
        Duration::from_secs(10),
        "media through the bridge",
        || async { (heard(&caller_probe, None) && heard(&external_probe, None)).then_some(()) },
    )
    .await?;
    let kill_at = std::time::Instant::now();
    c.kill_node(killed).await?;
    let alive = c.apis_except(&[killed]);
    c.wait_declared_down(killed, &alive).await?;
    wait_until(
        Duration::from_secs(30),
        "media from the new owner",
        || async {
            (heard(&caller_probe, Some(kill_at)) && heard(&external_probe, Some(kill_at)))
                .then_some(())
        },
    )
    .await?;
    succeeds(carrier).await?;
    let er = external.wait(Duration::from_secs(60)).await?;
    ensure!(
        er.exit_code == 0 && er.successful == 1,
        "the external phone: {er:?}"
    );
    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 300_000);
    let cdrs = cdrs_when(&alive[0], &q, 60, "the CDR", |cdrs| {
        cdr_of(cdrs, "1330").is_some()
    })
    .await?;
    let cdr = cdr_of(&cdrs, "1330").expect("checked");
    let mark = &cdr["external"];
    ensure!(
        s(cdr, "disposition") == "transferred"
            && cdr["rules"][0]["rule"] == "max_wait"
            && s(mark, "number") == "95598"
            && n(mark, "answered_at_ms") >= n(mark, "dialled_at_ms")
            && n(cdr, "talk_ms") >= 5_000
            && cdr["failovers"].as_array().map(Vec::len) == Some(1),
        "transferred, answered, taken over once: {cdr}"
    );
    ensure!(
        cdrs.iter()
            .filter(|c| s(c, "caller").starts_with("1330"))
            .count()
            == 1,
        "one CDR"
    );
    Ok(())
}
