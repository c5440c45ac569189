//! Issue 4 acceptance: the per-queue rules over SIP with real peers (SIPp as carrier) on a
//! three-node cluster. No agent is signed in, so calls wait; CDRs say what each rule did.
//!
//! - R3.5 max queued calls: the call beyond the limit is released, or transferred to the
//!   overflow queue, where it waits.
//! - R3.3 all agents busy: a call arriving while no signed-in agent of the queue is ready
//!   is released, or transferred.
//! - R3.4 max wait: a call that waited too long is released, or transferred to a queue.
//! - R3.6 cancel key: a caller who presses it is released, or transferred to an IVR flow.

use std::time::Duration;

use anyhow::{ensure, Result};
use callgrid_tests::*;
use serde_json::{json, Value};

const T: &str = "gd";
/// The sample IVR sends key 0 to this queue (both carrier scenarios press 0).
const GENERAL: &str = "general";

/// A caller the platform releases as soon as it picks key 0 (the scenario expects its BYE).
fn released_caller(c: &ClusterGuard, name: &str, prefix: &str, node: usize) -> Sipp {
    Sipp::new("carrier_queue_full.xml", &c.work().join("sipp"), name)
        .remote(&c.sip(node))
        .service("075595598")
        .key("caller_prefix", prefix)
}

/// A caller who waits in line `hold_ms`, then hangs up (SIPp carrier, key 0: general).
fn waiting_caller(c: &ClusterGuard, name: &str, prefix: &str, hold_ms: u64, node: usize) -> Sipp {
    Sipp::new("carrier_abandon.xml", &c.work().join("sipp"), name)
        .remote(&c.sip(node))
        .service("075595598")
        .key("caller_prefix", prefix)
        .set("hold_ms", &hold_ms.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_releases_the_next_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, GENERAL, |q| {
        q["max_queued"] = json!(1);
        q["on_max_queued"] = json!({"action": "release"});
    })
    .await?;
    let from = now_ms();
    let first = waiting_caller(&c, "first", "1371000000", 20_000, 0).spawn()?;
    until_waiting(&c, T, GENERAL, 1).await?;
    // The next call finds the line full: the platform hangs up on it (the scenario expects
    // the platform's BYE).
    succeeds(released_caller(&c, "second", "1372000000", 1).spawn()?).await?;
    let still = queue_waiting(&c, T, GENERAL).await;
    ensure!(
        still == Some(1),
        "the first call still waits, alone: {still:?} waiting {} ms after it started",
        now_ms() - from
    );
    let cdrs = cdrs_for(&c, T, 2, from, &["1372"]).await?;
    let released = cdr_of(&cdrs, "1372").expect("checked");
    ensure!(
        s(released, "disposition") == "released" && s(released, "reason") == "max_queued",
        "{released}"
    );
    succeeds(first).await?;
    let cdrs = cdrs_for(&c, T, 0, from, &["1371"]).await?;
    let kept = cdr_of(&cdrs, "1371").expect("checked");
    ensure!(s(kept, "disposition") == "abandoned", "{kept}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_transfers_the_next_call_to_its_overflow_queue() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, GENERAL, |q| {
        q["max_queued"] = json!(1);
        q["on_max_queued"] = json!({"action": "transfer_queue", "queue": "billing"});
    })
    .await?;
    let from = now_ms();
    let first = waiting_caller(&c, "first", "1373000000", 20_000, 0).spawn()?;
    until_waiting(&c, T, GENERAL, 1).await?;
    let second = waiting_caller(&c, "second", "1374000000", 10_000, 2).spawn()?;
    until_waiting(&c, T, "billing", 1).await?;
    ensure!(queue_waiting(&c, T, GENERAL).await == Some(1));
    succeeds(second).await?;
    succeeds(first).await?;
    let cdrs = cdrs_for(&c, T, 1, from, &["1373", "1374"]).await?;
    let moved = cdr_of(&cdrs, "1374").expect("checked");
    ensure!(
        s(moved, "queue") == "billing" && s(moved, "disposition") == "abandoned",
        "waited in the overflow queue: {moved}"
    );
    let kept = cdr_of(&cdrs, "1373").expect("checked");
    ensure!(s(kept, "queue") == GENERAL, "{kept}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_agents_busy_releases_or_transfers_the_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    // Nobody of general is ready (no agent signed in): release.
    set_queue(&c, T, GENERAL, |q| {
        q["on_all_busy"] = json!({"action": "release"});
    })
    .await?;
    let from = now_ms();
    succeeds(released_caller(&c, "busy", "1375000000", 2).spawn()?).await?;
    // Then transfer to billing, where the call waits (billing has no such rule).
    set_queue(&c, T, GENERAL, |q| {
        q["on_all_busy"] = json!({"action": "transfer_queue", "queue": "billing"});
    })
    .await?;
    let moved = waiting_caller(&c, "moved", "1376000000", 8_000, 1).spawn()?;
    until_waiting(&c, T, "billing", 1).await?;
    ensure!(queue_waiting(&c, T, GENERAL).await == Some(0));
    succeeds(moved).await?;
    let cdrs = cdrs_for(&c, T, 0, from, &["1375", "1376"]).await?;
    let r = cdr_of(&cdrs, "1375").expect("checked");
    ensure!(
        s(r, "disposition") == "released" && s(r, "reason") == "all_busy",
        "{r}"
    );
    let m = cdr_of(&cdrs, "1376").expect("checked");
    ensure!(s(m, "queue") == "billing", "{m}");
    Ok(())
}

/// The queue-rule steps of a CDR as (queue, rule, action).
fn rule_trail(cdr: &Value) -> Vec<(String, String, String)> {
    cdr["rules"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|r| (s(r, "queue"), s(r, "rule"), s(&r["action"], "action")))
                .collect()
        })
        .unwrap_or_default()
}

fn step(queue: &str, rule: &str, action: &str) -> (String, String, String) {
    (queue.into(), rule.into(), action.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_wait_releases_or_transfers_the_call() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    // Two seconds in general, then released with the timeout prompt (the default rule).
    set_queue(&c, T, GENERAL, |q| {
        q["max_wait_ms"] = json!(2_000);
    })
    .await?;
    let from = now_ms();
    succeeds(released_caller(&c, "waited", "1377000000", 1).spawn()?).await?;
    // Then transferred to billing, where the call waits until the caller hangs up.
    set_queue(&c, T, GENERAL, |q| {
        q["on_max_wait"] = json!({"action": "transfer_queue", "queue": "billing"});
    })
    .await?;
    let moved = waiting_caller(&c, "moved", "1378000000", 8_000, 2).spawn()?;
    until_waiting(&c, T, "billing", 1).await?;
    ensure!(queue_waiting(&c, T, GENERAL).await == Some(0));
    succeeds(moved).await?;
    let cdrs = cdrs_for(&c, T, 0, from, &["1377", "1378"]).await?;
    let r = cdr_of(&cdrs, "1377").expect("checked");
    ensure!(
        s(r, "disposition") == "released" && s(r, "reason") == "max_wait",
        "{r}"
    );
    ensure!(
        rule_trail(r) == vec![step(GENERAL, "max_wait", "release")],
        "{r}"
    );
    let m = cdr_of(&cdrs, "1378").expect("checked");
    ensure!(
        s(m, "queue") == "billing" && s(m, "disposition") == "abandoned",
        "{m}"
    );
    ensure!(
        rule_trail(m) == vec![step(GENERAL, "max_wait", "transfer_queue")],
        "{m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cancel_key_releases_or_transfers_the_call_to_a_flow() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, GENERAL, |q| {
        q["cancel_key"] = json!("*");
    })
    .await?;
    let from = now_ms();
    let cancel = |name: &str, prefix: &str, node: usize| {
        Sipp::new("carrier_cancel.xml", &c.work().join("sipp"), name)
            .remote(&c.sip(node))
            .service("075595598")
            .key("caller_prefix", prefix)
    };
    succeeds(cancel("released", "1379000000", 0).spawn()?).await?;
    // Then to the IVR: the main flow's node that queues the call in billing.
    set_queue(&c, T, GENERAL, |q| {
        q["on_cancel"] = json!({"action": "transfer_flow", "flow": "main", "node": "to_billing"});
    })
    .await?;
    let moved = cancel("to_flow", "1370000000", 1).spawn()?;
    until_waiting(&c, T, "billing", 1).await?;
    ensure!(queue_waiting(&c, T, GENERAL).await == Some(0));
    succeeds(moved).await?;
    let cdrs = cdrs_for(&c, T, 2, from, &["1379", "1370"]).await?;
    let r = cdr_of(&cdrs, "1379").expect("checked");
    ensure!(
        s(r, "disposition") == "released" && s(r, "reason") == "cancel_key",
        "{r}"
    );
    let m = cdr_of(&cdrs, "1370").expect("checked");
    ensure!(
        s(m, "queue") == "billing" && s(m, "disposition") == "abandoned",
        "{m}"
    );
    ensure!(
        rule_trail(m) == vec![step(GENERAL, "cancel_key", "transfer_flow")],
        "{m}"
    );
    let ivr: Vec<String> = m["ivr"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|step| s(step, "node"))
        .collect();
    ensure!(
        ivr.last().map(String::as_str) == Some("to_billing"),
        "the IVR trail goes on in the flow: {m}"
    );
    Ok(())
}

/// R3.9: once general has answered two calls, a caller who waits 15 s hears the estimated
/// wait (prefix, minutes, suffix); the CDR records when and what. R3.8: between stretches of
/// music the caller also hears the queue's periodic announcement every 5 s. The node owning the queue
/// is killed (`kill -9`) between the answers and the waiting call: the queue's service
/// history, new queue state, survives on its next owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_estimated_wait_is_announced_after_15_s_even_after_the_queue_owner_dies() -> Result<()>
{
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    set_queue(&c, T, GENERAL, |q| {
        q["wait_announcement"] =
            json!({"after_ms": 15_000, "prefix": "ewt_prefix", "suffix": "ewt_suffix"});
        q["periodic_announcement"] = json!({"prompt": "timeout", "every_ms": 5_000});
    })
    .await?;
    let status = c
        .api(0)
        .get_json(&format!("/api/v1/tenants/{T}/queues/{GENERAL}/status"))
        .await?;
    let owner = n(&status, "owner") as u64;
    let survivors: Vec<usize> = (0..c.info.nodes.len())
        .filter(|i| c.info.nodes[*i].id != owner)
        .collect();
    let (a, b) = (survivors[0], survivors[1]);
    // Service history: one agent answers two calls of general.
    let agent = c.tenant(T)?.agents[0].clone();
    let api = c.api(a);
    api.sign_in(T, &agent.agent, &agent.extension).await?;
    let phone = AgentPhone::start(
        &work,
        &c.sip(a),
        &c.tenant(T)?.domain,
        &agent,
        Register::Digest("SHA-256"),
        "agent_phone.xml",
        Some(2),
        None,
    )
    .await?;
    api.ready(T, &agent.agent).await?;
    let from = now_ms();
    for (n, prefix) in ["1361000000", "1362000000"].into_iter().enumerate() {
        let run = Sipp::new("carrier_ivr.xml", &work, &format!("served{n}"))
            .remote(&c.sip(survivors[n]))
            .service("075595598")
            .key("caller_prefix", prefix)
            .set("digit", "0")
            .set("talk_ms", "4000")
            .timeout(60)
            .spawn()?;
        succeeds(run).await?;
    }
    let pr = phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(
        pr.exit_code == 0 && pr.successful == 2,
        "agent phone: {pr:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "the agent off the call",
        || async {
            let a = api.get_agent(T, &agent.agent).await.ok()?;
            (s(&a, "state") != "talking").then_some(())
        },
    )
    .await?;
    api.not_ready(T, &agent.agent, "break").await?;
    // The queue's owner dies; its next owner rebuilds the queue when the next call comes.
    c.kill_node(owner).await?;
    c.wait_declared_down(owner, &c.apis_except(&[owner]))
        .await?;
    // Now a caller waits 20 s with nobody ready.
    succeeds(waiting_caller(&c, "waits", "1363000000", 20_000, b).spawn()?).await?;
    let cdrs = cdrs_for(&c, T, a, from, &["1361", "1362", "1363"]).await?;
    for served in ["1361", "1362"] {
        let cdr = cdr_of(&cdrs, served).expect("checked");
        ensure!(s(cdr, "disposition") == "answered", "{cdr}");
    }
    let w = cdr_of(&cdrs, "1363").expect("checked");
    let heard = w["wait_announcements"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(heard.len() == 1, "one announcement (no repeat set): {w}");
    let after = n(&heard[0], "at_ms") - n(w, "enqueued_at_ms");
    ensure!(
        (15_000..20_000).contains(&after),
        "announced 15 s after joining, before the caller left: {after} ms: {w}"
    );
    ensure!(
        n(&heard[0], "ahead") == 0 && n(&heard[0], "minutes") >= 1,
        "{w}"
    );
    // At 5 s and 10 s at least (one due while another announcement plays is skipped).
    ensure!(n(w, "periodic_announcements") >= 2, "R3.8: {w}");
    Ok(())
}

/// One HTTP POST's body received on `listener` (answered 200), the SMS gateway's side.
async fn receive_post(listener: tokio::net::TcpListener) -> Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, _) = listener.accept().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the whole request");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await?;
                return Ok(serde_json::from_slice(&buf[end + 4..end + 4 + length])?);
            }
        }
    }
}

/// R3.22: the IVR node that sends callers to general reports a caller who never reached an
/// agent to the webhook (a stand-in SMS gateway on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_caller_is_reported_to_the_webhook_of_the_ivr_node() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/sms", listener.local_addr()?);
    let gateway = tokio::spawn(receive_post(listener));
    let path = format!("/api/v1/tenants/{T}/flows/main");
    let mut flow = c.api(0).get_json(&path).await?;
    flow["nodes"]["to_general"]["lost_call_webhook"] = json!(url);
    c.api(0).put_json(&path, &flow).await?;
    for api in c.apis() {
        wait_until(Duration::from_secs(10), "flow change replicated", || {
            let (api, path, url) = (&api, &path, &url);
            async move {
                let f = api.get_json(path).await.ok()?;
                (f["nodes"]["to_general"]["lost_call_webhook"] == json!(url)).then_some(())
            }
        })
        .await?;
    }
    // Nobody answers: the caller gives up after 3 s in line.
    succeeds(waiting_caller(&c, "lost", "1364000000", 3_000, 1).spawn()?).await?;
    let notice = tokio::time::timeout(Duration::from_secs(30), gateway).await???;
    ensure!(
        s(&notice, "event") == "lost_call"
            && s(&notice, "node") == "to_general"
            && s(&notice, "caller").starts_with("1364")
            && s(&notice, "disposition") == "abandoned",
        "{notice}"
    );
    Ok(())
}

/// R3.17 interflow: general (nobody ready) sends its calls to the first of billing and
/// outage that takes them. billing turns the call away (its own limit: no call may wait), so
/// it goes on to outage and waits there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interflow_moves_the_call_to_the_first_queue_that_takes_it() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, "billing", |q| {
        q["max_queued"] = json!(0);
    })
    .await?;
    set_queue(&c, T, GENERAL, |q| {
        q["on_all_busy"] = json!({"action": "interflow", "queues": ["billing", "outage"]});
    })
    .await?;
    let from = now_ms();
    let moved = waiting_caller(&c, "interflow", "1365000000", 6_000, 0).spawn()?;
    until_waiting(&c, T, "outage", 1).await?;
    ensure!(queue_waiting(&c, T, GENERAL).await == Some(0));
    ensure!(queue_waiting(&c, T, "billing").await == Some(0));
    succeeds(moved).await?;
    let cdrs = cdrs_for(&c, T, 2, from, &["1365"]).await?;
    let m = cdr_of(&cdrs, "1365").expect("checked");
    ensure!(
        s(m, "queue") == "outage" && s(m, "disposition") == "abandoned",
        "{m}"
    );
    ensure!(
        rule_trail(m)
            == vec![
                step(GENERAL, "all_busy", "interflow"),
                step("billing", "max_queued", "interflow")
            ],
        "{m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_caller_leaves_a_voicemail_that_an_agent_handles() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, GENERAL, |q| {
        q["voicemail"] = json!({"key": "*", "prompt": "voicemail", "max_ms": 20_000,
                                "thanks": "voicemail_thanks"});
    })
    .await?;
    let from = now_ms();
    // Key 0, 2 s of music, *, the prompt and its tone, 4 s of speech, #: thanks, BYE.
    let caller = Sipp::new("carrier_voicemail.xml", &c.work().join("sipp"), "message")
        .remote(&c.sip(1))
        .service("075595598")
        .key("caller_prefix", "1376000000")
        .timeout(60);
    succeeds(caller.spawn()?).await?;
    let cdrs = cdrs_for(&c, T, 2, from, &["1376"]).await?;
    let cdr = cdr_of(&cdrs, "1376").expect("checked");
    let message = n(&cdr["voicemail"], "duration_ms");
    ensure!(
        s(cdr, "disposition") == "released"
            && s(cdr, "reason") == "voicemail"
            && s(&cdr["voicemail"], "queue") == GENERAL
            && (2_000..10_000).contains(&message),
        "a message of about 4 s: {cdr}"
    );
    let id = s(cdr, "call_id");
    let listed = c
        .api(0)
        .get_json(&format!(
            "/api/v1/tenants/{T}/voicemails?status=new&queue={GENERAL}"
        ))
        .await?;
    let v = as_array(listed)
        .into_iter()
        .find(|v| s(v, "id") == id)
        .ok_or_else(|| anyhow::anyhow!("voicemail {id} not listed as new"))?;
    ensure!(
        n(&v, "duration_ms") == message && s(&v, "caller").starts_with("1376"),
        "{v}"
    );
    // Its audio: the call's recording, the caller on the right channel.
    let wav = wav_info(&c.api(0).get_recording(&s(&v, "recording_id")).await?)?;
    ensure!(
        wav.channels == 2 && wav.duration_ms as i64 >= message && wav.rms[1] > 100.0,
        "the caller's message is in the recording: {wav:?}"
    );
    // An agent handles it (admin CLI); the handling time is reported.
    let agent = c.tenant(T)?.agents[0].agent.clone();
    let handled = cli(
        &c,
        &[
            "voicemail",
            "handle",
            "--tenant",
            T,
            "--id",
            &id,
            "--agent",
            &agent,
        ],
    )
    .await?;
    ensure!(
        s(&handled, "status") == "handled"
            && s(&handled, "handled_by") == agent
            && handled["handling_ms"].as_u64().is_some(),
        "{handled}"
    );
    let again = c
        .api(1)
        .post_json(
            &format!("/api/v1/tenants/{T}/voicemails/{id}/handle"),
            &json!({"agent": c.tenant(T)?.agents[1].agent}),
        )
        .await;
    ensure!(again.is_err(), "handled once, by one agent: {again:?}");
    let listed = cli(
        &c,
        &["voicemail", "list", "--tenant", T, "--status", "handled"],
    )
    .await?;
    ensure!(
        as_array(listed).iter().any(|v| s(v, "id") == id),
        "listed as handled"
    );
    Ok(())
}

/// R3.20 across a kill: a caller leaving a message when its node dies is re-INVITEd by a
/// survivor, which records the rest of the message in a part of its own; `#` there ends it,
/// and the voicemail counts from the message's first start, its failover mark naming the
/// new part (the caller's tone is in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_being_left_when_its_node_dies_is_recorded_to_the_end_by_a_survivor() -> Result<()>
{
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    set_queue(&c, T, GENERAL, |q| {
        q["voicemail"] = json!({"key": "*", "prompt": "voicemail", "max_ms": 30_000,
                                "thanks": "voicemail_thanks"});
    })
    .await?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let probe = callgrid_tests::probe::RtpProbe::bind(lo, 1)?;
    probe.csv(&work.join("message_probe.csv"))?;
    let killed = c.info.nodes[2].id;
    let killed_ip = c.sip(2).parse::<std::net::SocketAddr>()?.ip();
    let from = now_ms();
    // Key 0 to general; the platform ends the call after the thanks.
    let caller = Sipp::new("carrier_failover.xml", &work, "message")
        .remote(&c.sip(2))
        .service("075595598")
        .key("caller_prefix", "1377000000")
        .inf(&work.join("message_probe.csv"))
        .set("digit", "0")
        .set("reinvite_ms", "90000")
        .set("talk_ms", "90000")
        .timeout(150)
        .spawn()?;
    let state_of = |node: usize| {
        let api = c.api(node);
        async move {
            let calls = api.get_json("/api/v1/calls").await.ok()?;
            calls.as_array()?.iter().find_map(|call| {
                s(call, "caller")
                    .starts_with("1377")
                    .then(|| (s(call, "state").to_string(), n(call, "node") as u64))
            })
        }
    };
    wait_until(Duration::from_secs(30), "the caller queued", || async {
        state_of(0).await.filter(|(st, _)| st == "queued")
    })
    .await?;
    probe.send_dtmf(0, '*')?;
    wait_until(Duration::from_secs(30), "the message recorded", || async {
        state_of(0)
            .await
            .filter(|(st, _)| st == "recording_voicemail")
    })
    .await?;
    let kill_at = std::time::Instant::now();
    c.kill_node(killed).await?;
    let alive = c.apis_except(&[killed]);
    c.wait_declared_down(killed, &alive).await?;
    let (_, owner) = wait_until(
        Duration::from_secs(30),
        "the message taken over",
        || async {
            state_of(0)
                .await
                .filter(|(st, node)| st == "recording_voicemail" && *node != killed)
        },
    )
    .await?;
    wait_until(
        Duration::from_secs(20),
        "media from the new owner",
        || async {
            probe
                .report(0)
                .arrivals()
                .any(|(t, src)| t > kill_at && src.ip() != killed_ip)
                .then_some(())
        },
    )
    .await?;
    // The caller goes on speaking (the probe's tone) to the new owner for 2 s, then presses
    // #: this pause is the caller's behaviour, not a wait for the platform.
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe.send_dtmf(0, '#')?;
    succeeds(caller).await?;
    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 300_000);
    let cdrs = cdrs_when(&alive[0], &q, 60, "the CDR", |cdrs| {
        cdr_of(cdrs, "1377").is_some()
    })
    .await?;
    let cdr = cdr_of(&cdrs, "1377").expect("checked");
    let message = n(&cdr["voicemail"], "duration_ms");
    let mark = &cdr["failovers"][0];
    ensure!(
        s(cdr, "reason") == "voicemail"
            && message >= 2_000
            && n(mark, "from_node") as u64 == killed
            && n(mark, "to_node") as u64 == owner
            && n(mark, "recording_offset_ms") < message,
        "one message across the kill: {cdr}"
    );
    let part = s(mark, "recording_id").to_string();
    let wav = wav_info(&alive[0].get_recording(&part).await?)?;
    ensure!(
        wav.duration_ms >= 1_500 && wav.rms[1] > 100.0,
        "the rest of the message is in the new owner's part: {wav:?}"
    );
    let listed = alive[0]
        .get_json(&format!("/api/v1/tenants/{T}/voicemails?status=new"))
        .await?;
    ensure!(
        as_array(listed)
            .iter()
            .any(|v| s(v, "id") == s(cdr, "call_id")),
        "the voicemail is listed"
    );
    Ok(())
}
