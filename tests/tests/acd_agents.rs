//! Issue 4 acceptance, agents side, over SIP with real peers on a three-node cluster:
//!
//! - R3.19 skill reset: a signed-in, ready agent is moved between queues by changing its
//!   skills; a call waiting in the new queue is offered to it at once, with no new sign-in.
//! - R3.18 roles: a team lead takes no calls while signed in and ready; made an agent again,
//!   it takes the waiting call.
//! - R4.5 agent-number announcement: general announces the agent's number on answer; the
//!   bridge follows it.
//! - R4.7 away states: only a manager (team lead, supervisor) sends an agent to training and
//!   ends it; the agent's own ready is refused meanwhile; the time is kept per reason.
//! - R4.8 agent settings (group, hotline, permissions through the CLI) and their enforcement;
//!   R4.9 the agent-state view: counts per state, each agent's calls and talk time, per group.

use std::time::Duration;

use anyhow::{ensure, Result};
use callgrid_tests::*;
use serde_json::Value;

const T: &str = "gd";

/// Changes agent `agent`'s configuration and waits until every node has the change.
async fn set_agent(c: &ClusterGuard, agent: &str, change: impl Fn(&mut Value)) -> Result<()> {
    callgrid_tests::set_agent(c, T, agent, change).await
}

/// A caller who picks general (key 0) and hangs up 15 s later (answered or not).
fn caller(c: &ClusterGuard, work: &std::path::Path, name: &str, prefix: &str, node: usize) -> Sipp {
    Sipp::new("carrier_ivr.xml", work, name)
        .remote(&c.sip(node))
        .service("075595598")
        .key("caller_prefix", prefix)
        .set("digit", "0")
        .set("talk_ms", "15000")
        .timeout(90)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skill_reset_roles_and_away_states_apply_live_to_a_signed_in_agent() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let agent = c.tenant(T)?.agents[0].clone();
    let id = agent.agent.clone();
    set_queue(&c, T, "general", |q| {
        q["agent_announcement"] =
            serde_json::json!({"prefix": "agent_prefix", "suffix": "agent_suffix"});
    })
    .await?;
    // The agent serves billing only, signed in and ready, its phone answering two calls.
    set_agent(&c, &id, |a| a["skills"] = serde_json::json!(["billing"])).await?;
    let api = c.api(1);
    api.sign_in(T, &id, &agent.extension).await?;
    let phone = AgentPhone::start(
        &work,
        &c.sip(1),
        &c.tenant(T)?.domain,
        &agent,
        Register::Digest("SHA-256"),
        "agent_phone.xml",
        Some(2),
        None,
    )
    .await?;
    api.ready(T, &id).await?;
    let from = now_ms();

    // R3.19: a call waits in general; the agent is moved there live and takes it (nothing
    // signs it in again: only the configuration changes).
    let first = caller(&c, &work, "first", "1351000000", 0).spawn()?;
    until_waiting(&c, T, "general", 1).await?;
    ensure!(s(&api.get_agent(T, &id).await?, "state") == "ready");
    set_agent(&c, &id, |a| a["skills"] = serde_json::json!(["general"])).await?;
    wait_until(
        Duration::from_secs(15),
        "the agent takes the call",
        || async {
            let a = api.get_agent(T, &id).await.ok()?;
            (s(&a, "state") == "talking").then_some(())
        },
    )
    .await?;
    let r = first.wait(Duration::from_secs(90)).await?;
    ensure!(r.exit_code == 0 && r.successful == 1, "{r:?}");

    // R3.18: as a team lead the agent takes no calls, though signed in and ready.
    set_agent(&c, &id, |a| a["role"] = serde_json::json!("team_lead")).await?;
    wait_until(Duration::from_secs(15), "the agent ready again", || async {
        let a = api.get_agent(T, &id).await.ok()?;
        (s(&a, "state") == "ready").then_some(())
    })
    .await?;
    let second = caller(&c, &work, "second", "1352000000", 2).spawn()?;
    until_waiting(&c, T, "general", 1).await?;
    let status = c
        .api(0)
        .get_json(&format!("/api/v1/tenants/{T}/queues/general/status"))
        .await?;
    ensure!(
        n(&status, "idle_agents") == 0,
        "a team lead is no idle agent of the queue: {status}"
    );
    ensure!(s(&api.get_agent(T, &id).await?, "state") == "ready");
    set_agent(&c, &id, |a| a["role"] = serde_json::json!("agent")).await?;
    let r = second.wait(Duration::from_secs(90)).await?;
    ensure!(r.exit_code == 0 && r.successful == 1, "{r:?}");
    let pr = phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(
        pr.exit_code == 0 && pr.successful == 2,
        "agent phone: {pr:?}"
    );

    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 60_000);
    let cdrs = cdrs_when(&c.api(2), &q, 30, "both CDRs", |cdrs| cdrs.len() == 2).await?;
    for cdr in &cdrs {
        ensure!(
            s(cdr, "disposition") == "answered" && s(cdr, "agent") == id,
            "{cdr}"
        );
        ensure!(s(cdr, "queue") == "general", "{cdr}");
        // R4.5: the number was announced on answer, and the two then talked.
        ensure!(
            cdr["agent_announced_at_ms"] == cdr["agent_answered_at_ms"] && n(cdr, "talk_ms") > 0,
            "{cdr}"
        );
    }

    // R4.7: 1002 becomes a team lead and sends 1001 to training.
    set_agent(&c, "1002", |a| a["role"] = serde_json::json!("team_lead")).await?;
    let away = format!("/api/v1/tenants/{T}/agents/{id}/away");
    let by_agent = api
        .post_json(
            &away,
            &serde_json::json!({"reason": "training", "manager": "1003"}),
        )
        .await;
    ensure!(by_agent.is_err(), "an agent is no manager: {by_agent:?}");
    let session = api
        .post_json(
            &away,
            &serde_json::json!({"reason": "training", "manager": "1002"}),
        )
        .await?;
    ensure!(s(&session["status"], "state") == "away", "{session}");
    let own = api.ready(T, &id).await;
    ensure!(
        own.is_err(),
        "the agent cannot end a manager's away state: {own:?}"
    );
    let own = api.not_ready(T, &id, "training").await;
    ensure!(own.is_err(), "nor set one itself: {own:?}");
    let back = format!("/api/v1/tenants/{T}/agents/{id}/back");
    let session = api
        .post_json(
            &back,
            &serde_json::json!({"manager": "1002", "ready": true}),
        )
        .await?;
    ensure!(s(&session["status"], "state") == "ready", "{session}");
    ensure!(
        session["away_ms"].get("training").is_some(),
        "training time kept apart: {session}"
    );
    Ok(())
}

/// R4.8 agent settings and permissions, R4.9 agent-state view: the CLI sets an agent's
/// group, hotline and permissions (a bad hotline or permission is refused); a plain agent
/// granted `set_away` sends another away while a team lead stripped of its permissions
/// cannot (403), nor handle a voicemail, nor move a caller between queues; the agent-state
/// view (from another node than the agent's) counts the agents per state while one talks,
/// then has its call and talk time, per group too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_settings_permissions_and_the_agent_state_view() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let update = |id: &'static str, extra: &'static [&'static str]| {
        let mut args = vec!["agent", "update", "--tenant", T, "--id", id];
        args.extend_from_slice(extra);
        args
    };
    cli(
        &c,
        &update(
            "1001",
            &[
                "--group",
                "north team",
                "--hotline",
                "95598",
                "--permissions",
                "set_away",
            ],
        ),
    )
    .await?;
    cli(
        &c,
        &update("1002", &["--role", "team-lead", "--permissions", "none"]),
    )
    .await?;
    for bad in [
        update("1001", &["--hotline", "12345"]),
        update("1001", &["--permissions", "fly"]),
    ] {
        ensure!(cli(&c, &bad).await.is_err(), "{bad:?} was accepted");
    }
    let path = format!("/api/v1/tenants/{T}/agents/1001");
    replicated(&c, &path, |a| {
        s(a, "group") == "north team"
            && s(a, "hotline") == "95598"
            && a["effective_permissions"] == serde_json::json!(["set_away"])
    })
    .await?;
    let lead = c.api(2).get_agent(T, "1002").await?;
    ensure!(
        lead["effective_permissions"] == serde_json::json!([]) && s(&lead, "role") == "team_lead",
        "{lead}"
    );

    // 1003 signs in at node 1; a caller waits in general meanwhile.
    let agent = c.tenant(T)?.agents[2].clone();
    let api = c.api(1);
    api.sign_in(T, &agent.agent, &agent.extension).await?;
    let phone = AgentPhone::start(
        &work,
        &c.sip(1),
        &c.tenant(T)?.domain,
        &agent,
        Register::Digest("SHA-256"),
        "agent_phone.xml",
        Some(1),
        None,
    )
    .await?;
    let run = caller(&c, &work, "viewed", "1361000000", 0).spawn()?;
    until_waiting(&c, T, "general", 1).await?;
    let calls = c.api(0).get_json("/api/v1/calls").await?;
    let call = calls
        .as_array()
        .and_then(|l| l.iter().find(|x| s(x, "caller").starts_with("1361")))
        .map(|x| s(x, "call_id").to_string())
        .ok_or_else(|| anyhow::anyhow!("the call is not listed: {calls}"))?;
    let requeue = format!("/api/v1/calls/{call}/queues");
    let refused = api
        .post_json(&requeue, &serde_json::json!({"priority": 9, "by": "1002"}))
        .await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("403") && e.to_string().contains("manage_calls")),
        "a team lead without manage_calls moved a call: {refused:?}"
    );
    let handled = api
        .post_json(
            &format!("/api/v1/tenants/{T}/voicemails/{call}/handle"),
            &serde_json::json!({"agent": "1002"}),
        )
        .await;
    ensure!(
        handled
            .as_ref()
            .is_err_and(|e| e.to_string().contains("403")),
        "handled without handle_voicemail: {handled:?}"
    );

    // While 1003 talks, the view (node 2; 1003's actor is elsewhere or not) counts it.
    api.ready(T, &agent.agent).await?;
    let states = format!("/api/v1/tenants/{T}/agent-states");
    let view = wait_until(
        Duration::from_secs(20),
        "1003 talking in the view",
        || async {
            let v = c.api(2).get_json(&states).await.ok()?;
            (v["counts"]["talking"] == 1).then_some(v)
        },
    )
    .await?;
    let signed_out = c.tenant(T)?.agents.len() as i64 - 1;
    ensure!(
        n(&view["counts"], "signed_out") == signed_out
            && view["agents"].as_array().map(Vec::len) == Some(signed_out as usize + 1),
        "{view}"
    );
    let r = run.wait(Duration::from_secs(90)).await?;
    ensure!(r.exit_code == 0 && r.successful == 1, "{r:?}");
    let pr = phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(pr.exit_code == 0 && pr.successful == 1, "{pr:?}");
    // After the call: one call answered, its talk time (the caller talked 15 s), ready again.
    let row = wait_until(Duration::from_secs(20), "1003's call counted", || async {
        let v = c.api(2).get_json(&states).await.ok()?;
        v["agents"]
            .as_array()?
            .iter()
            .find(|a| s(a, "agent") == agent.agent && n(a, "calls_answered") == 1)
            .filter(|a| s(a, "state") != "talking")
            .cloned()
    })
    .await?;
    ensure!(
        (10_000..20_000).contains(&n(&row, "talk_ms"))
            && n(&row["state_ms"], "talking") == n(&row, "talk_ms"),
        "talk time of a 15 s call: {row}"
    );

    // R4.7 with R4.8: the granted agent sends 1003 away; the stripped team lead cannot.
    let away = format!("/api/v1/tenants/{T}/agents/{}/away", agent.agent);
    let refused = api
        .post_json(
            &away,
            &serde_json::json!({"reason": "meeting", "manager": "1002"}),
        )
        .await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("403")),
        "{refused:?}"
    );
    api.post_json(
        &away,
        &serde_json::json!({"reason": "meeting", "manager": "1001"}),
    )
    .await?;
    wait_until(Duration::from_secs(10), "1003 away in the view", || async {
        let v = c.api(0).get_json(&states).await.ok()?;
        (v["counts"]["away"] == 1).then_some(())
    })
    .await?;
    // Per group, through the CLI.
    let group = cli(
        &c,
        &["agent", "states", "--tenant", T, "--group", "north team"],
    )
    .await?;
    let agents: Vec<String> = group["agents"]
        .as_array()
        .map(|l| l.iter().map(|a| s(a, "agent")).collect())
        .unwrap_or_default();
    ensure!(agents == ["1001"], "the north team: {group}");
    let team2 = c
        .api(0)
        .get_json(&format!("{states}?group=team2&queue=general"))
        .await?;
    ensure!(
        team2["agents"].as_array().map(Vec::len) == Some(5),
        "sample team2: {team2}"
    );
    Ok(())
}
