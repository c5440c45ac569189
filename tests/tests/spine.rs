//! Issue 2 acceptance: real node processes (`callgrid cluster up`) and real SIPp peers on loopback.
//! Every wait polls with a deadline; the tests share CLUSTER_LOCK (fixed node addresses).

use anyhow::{ensure, Context, Result};
use callgrid_tests::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const T: &str = "gd";

/// CDRs of `tenant` since `from` on `api`, once `pred` holds for the list.
/// Signs in gd agents until one's AgentActor is on node 3; the others are signed out again.
async fn agent_on_node3(c: &ClusterGuard) -> Result<SampleAgent> {
    let api = c.api(0);
    for a in c.tenant(T)?.agents {
        api.sign_in(T, &a.agent, &a.extension).await?;
        let owner = wait_until(Duration::from_secs(10), "agent owner", || async {
            api.get_agent(T, &a.agent)
                .await
                .ok()
                .map(|v| n(&v, "owner"))
                .filter(|o| *o != 0)
        })
        .await?;
        if owner == 3 {
            return Ok(a);
        }
        api.sign_out(T, &a.agent).await?;
    }
    anyhow::bail!("no gd agent's actor landed on node 3")
}

async fn wait_state(api: &Api, agent: &str, state: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(10),
        &format!("agent {agent} {state}"),
        || async {
            api.get_agent(T, agent)
                .await
                .ok()
                .filter(|v| s(v, "state") == state)
                .map(|_| ())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_through_three_nodes() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let agent = agent_on_node3(&c).await?;
    let domain = c.tenant(T)?.domain;
    let phone = AgentPhone::start(
        &work,
        &c.sip(1),
        &domain,
        &agent,
        Register::Digest("SHA-256"),
        "agent_phone.xml",
        Some(1),
        None,
    )
    .await?;
    c.api(1).ready(T, &agent.agent).await?;
    wait_state(&c.api(2), &agent.agent, "ready").await?;

    let from = now_ms();
    let caller = Sipp::new("carrier_ivr.xml", &work, "carrier")
        .remote(&c.sip(0))
        .service("075595598")
        .key("caller_prefix", "1380013800")
        .set("digit", "2")
        .set("talk_ms", "8000")
        .timeout(60)
        .spawn()?;
    let (ccmd, pcmd) = (caller.cmd.clone(), phone.run.cmd.clone());
    let cr = caller.wait(Duration::from_secs(90)).await?;
    let pr = phone.run.wait(Duration::from_secs(30)).await?;
    ensure!(
        cr.exit_code == 0 && cr.successful == 1,
        "carrier: {cr:?}: {}",
        sipp_errors(&ccmd)
    );
    ensure!(
        pr.exit_code == 0 && pr.successful == 1,
        "agent phone: {pr:?}: {}",
        sipp_errors(&pcmd)
    );

    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 60_000);
    let mut first: Option<Value> = None;
    for api in c.apis() {
        let cdrs = cdrs_when(&api, &q, 30, "the CDR", |c| c.len() == 1).await?;
        let cdr = cdrs[0].clone();
        if let Some(f) = &first {
            ensure!(
                s(f, "call_id") == s(&cdr, "call_id"),
                "same CDR on every node"
            );
        }
        first = Some(cdr);
    }
    let cdr = first.context("cdr")?;
    ensure!(s(&cdr, "disposition") == "answered", "{cdr}");
    ensure!(s(&cdr, "queue") == "billing", "{cdr}");
    ensure!(s(&cdr, "agent") == agent.agent, "{cdr}");
    ensure!(n(&cdr, "entry_node") == 1, "{cdr}");
    ensure!(
        s(&cdr, "landing_code") == "0755" && s(&cdr, "access_code") == "95598",
        "{cdr}"
    );
    let keys: Vec<String> = cdr["ivr"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| s(i, "key"))
        .collect();
    ensure!(keys.iter().any(|k| k == "2"), "ivr keys {keys:?}");
    let talk = n(&cdr, "talk_ms");
    ensure!(talk > 0, "{cdr}");

    let wav = wav_info(&c.api(2).get_recording(&s(&cdr, "recording_id")).await?)?;
    ensure!(
        wav.channels == 2 && wav.sample_rate == 8000 && wav.bits == 16,
        "{wav:?}"
    );
    ensure!(
        wav.rms.iter().all(|r| *r > 100.0),
        "audio on both channels: {wav:?}"
    );
    ensure!(
        (wav.duration_ms as i64 - talk).abs() <= 1000,
        "wav {wav:?} vs talk_ms {talk}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_calls() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    std::fs::create_dir_all(&work)?;
    let tenant = c.tenant(T)?;
    // Room for 200 calls with 10 agents: no release while queued, a short after-call work.
    for queue in ["general", "billing", "outage", "complaint"] {
        let mut q = c.api(0).get_queue(T, queue).await?;
        q["max_wait_ms"] = json!(600_000);
        q["acw_ms"] = json!(1000);
        c.api(0).put_queue(T, queue, &q).await?;
        for api in c.apis() {
            wait_until(
                Duration::from_secs(10),
                "queue update replicated",
                || async {
                    api.get_queue(T, queue)
                        .await
                        .ok()
                        .filter(|q| n(q, "max_wait_ms") == 600_000 && n(q, "acw_ms") == 1000)
                },
            )
            .await?;
        }
    }
    let events = EventLog::connect(&c.api(0)).await?;
    let mut phones = Vec::new();
    for (i, a) in tenant.agents.iter().take(10).enumerate() {
        phones.push(
            AgentPhone::start(
                &work,
                &c.sip(i % 3),
                &tenant.domain,
                a,
                if i % 2 == 0 {
                    Register::Digest("SHA-256")
                } else {
                    Register::Digest("MD5")
                },
                "agent_phone_hangup.xml",
                None,
                Some(2000),
            )
            .await?,
        );
        let api = c.api(i % 3);
        api.sign_in(T, &a.agent, &a.extension).await?;
        api.ready(T, &a.agent).await?;
    }
    for a in tenant.agents.iter().take(10) {
        wait_state(&c.api(0), &a.agent, "ready").await?;
    }
    let from = now_ms();
    // 3 carriers x 67 calls ~ 200 calls at ~20 cps (6.7 cps each); keys spread over the queues.
    let mut carriers = Vec::new();
    for (i, digit) in ["1", "2", "0"].iter().enumerate() {
        let calls = if i == 2 { 66 } else { 67 };
        carriers.push(
            Sipp::new("carrier_ivr.xml", &work, &format!("carrier{i}"))
                .remote(&c.sip(i))
                .service("075595598")
                .key("caller_prefix", &format!("139{i}000"))
                .set("digit", digit)
                .set("talk_ms", "120000")
                .calls(Some(calls))
                .rate(20.0, 3000)
                .timeout(300)
                .spawn()?,
        );
    }
    let mut carrier_failures = Vec::new();
    for car in carriers {
        let name = car.cmd.name.clone();
        let r = car.wait(Duration::from_secs(330)).await?;
        if let Err(why) = verdict::completed_calls(&r) {
            carrier_failures.push(format!("{name}: {why}"));
        }
    }
    if !carrier_failures.is_empty() {
        // Show what the cluster recorded for the calls that did not end as answered.
        let q = format!("tenant={T}&from={from}&to={}", now_ms() + 60_000);
        let cdrs = c.api(0).get_cdrs(&q).await.unwrap_or_default();
        let odd: Vec<&Value> = cdrs
            .iter()
            .filter(|c| s(c, "disposition") != "answered")
            .collect();
        anyhow::bail!(
            "failed carrier calls: {carrier_failures:#?}\nCDRs not answered ({} of {}): {odd:#?}",
            odd.len(),
            cdrs.len()
        );
    }
    // Every carrier call ended, but a phone may still be finishing its last call (its BYE
    // transaction): wait for the phones' own counts (SIPp writes them every second) before
    // stopping them, so an in-flight last call is not cut off and miscounted.
    let stat_files: Vec<std::path::PathBuf> =
        phones.iter().map(|p| p.run.cmd.stat_file()).collect();
    let _ = wait_until(Duration::from_secs(30), "the phones' counts", || async {
        let done: u64 = stat_files
            .iter()
            .filter_map(|f| parse_stat(f).ok())
            .map(|(ok, _)| ok)
            .sum();
        (done >= 200).then_some(())
    })
    .await;
    let mut answered_by_phones = 0;
    for p in phones {
        p.run.stop();
        let cmd = p.run.cmd.clone();
        let r = p.run.wait(Duration::from_secs(30)).await?;
        ensure!(
            r.failed == 0,
            "phone {} {r:?}: {}",
            cmd.name,
            sipp_errors(&cmd)
        );
        answered_by_phones += r.successful;
    }
    ensure!(
        answered_by_phones == 200,
        "phones answered {answered_by_phones}"
    );

    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 60_000);
    let cdrs = cdrs_when(&c.api(1), &q, 60, "200 CDRs", |c| c.len() >= 200).await?;
    let ids: HashSet<String> = cdrs.iter().map(|c| s(c, "call_id")).collect();
    ensure!(
        cdrs.len() == 200 && ids.len() == 200,
        "{} CDRs, {} distinct",
        cdrs.len(),
        ids.len()
    );
    ensure!(
        cdrs.iter().all(|c| s(c, "disposition") == "answered"),
        "all answered"
    );

    // The invariants, from typed CDRs (chaos's checkers):
    // I2 one CDR per call; I1 no agent on two calls at once; I4 within a queue, calls reach
    // agents in arrival order. Offer order is read from ring_started_at_ms, stamped when the
    // agent's phone rings on the call's node; 100 ms of slack absorbs the signalling time
    // between two offers made back to back (an overtaking call waits seconds, not ms).
    let typed: Vec<model::Cdr> = cdrs
        .iter()
        .map(|c| serde_json::from_value(c.clone()))
        .collect::<Result<_, _>>()
        .context("CDRs parse as model::Cdr")?;
    let mut violations = chaos::one_cdr_per_call(&typed, ids.iter().map(String::as_str));
    violations.extend(chaos::no_double_booking(&typed));
    violations.extend(chaos::served_in_order(&typed, 100));
    ensure!(violations.is_empty(), "invariants broken: {violations:#?}");

    // Longest idle, from the agent_state events of /api/v1/events: an agent's idle-since is the
    // at_ms of its last "ready" event. For each answered call, take the moment its agent left
    // ready for it (the first event after its last "ready" before ring_started_at_ms); at that
    // moment no other agent may have been ready since clearly earlier. "Clearly": an agent's
    // readiness reaches a queue on another node as a mesh message, so the queue's view lags
    // by that latency; an agent that became ready less than PROPAGATION_MS before the chosen
    // one may not have been visible yet (and may have been mid-reservation by another queue).
    let evs = events.snapshot();
    let mut timeline: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for e in evs
        .iter()
        .filter(|e| s(e, "type") == "agent_state" && s(e, "tenant") == T)
    {
        timeline
            .entry(s(e, "agent"))
            .or_default()
            .push((n(e, "at_ms"), s(e, "state")));
    }
    for v in timeline.values_mut() {
        v.sort();
    }
    for a in tenant.agents.iter().take(10) {
        ensure!(
            timeline.get(&a.agent).map(|v| v.len() > 1).unwrap_or(false),
            "no agent_state events for {} on node 1's stream",
            a.agent
        );
    }
    let state_at = |agent: &str, t: i64| -> Option<(String, i64)> {
        timeline
            .get(agent)?
            .iter()
            .rfind(|(at, _)| *at < t)
            .map(|(at, st)| (st.clone(), *at))
    };
    for cdr in &cdrs {
        let t = n(cdr, "ring_started_at_ms");
        let chosen = s(cdr, "agent");
        let tl = &timeline[&chosen];
        let ready_idx = tl
            .iter()
            .rposition(|(at, st)| *at <= t && st == "ready")
            .context("chosen agent never ready")?;
        let chosen_since = tl[ready_idx].0;
        let left_at = tl.get(ready_idx + 1).map(|(at, _)| *at).unwrap_or(t).min(t);
        for other in timeline.keys().filter(|a| **a != chosen) {
            if let Some((st, since)) = state_at(other, left_at) {
                const PROPAGATION_MS: i64 = 50;
                ensure!(
                    !(st == "ready" && since + PROPAGATION_MS < chosen_since),
                    "call {} at {left_at} went to {chosen} (idle since {chosen_since}) but {other} was idle since {since}",
                    s(cdr, "call_id")
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandon_while_queued() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    let from = now_ms();
    let r = Sipp::new("carrier_abandon.xml", &work, "abandon")
        .remote(&c.sip(0))
        .service("075595598")
        .key("caller_prefix", "1370000000")
        .set("hold_ms", "8000")
        .run(Duration::from_secs(60))
        .await?;
    ensure!(r.exit_code == 0 && r.successful == 1, "{r:?}");
    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 60_000);
    let cdrs = cdrs_when(&c.api(2), &q, 30, "abandoned CDR", |c| !c.is_empty()).await?;
    ensure!(
        cdrs.len() == 1 && s(&cdrs[0], "disposition") == "abandoned",
        "{cdrs:?}"
    );
    ensure!(s(&cdrs[0], "hangup_by") == "caller", "{cdrs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_wait_releases() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    let work = c.work().join("sipp");
    let mut queue = c.api(0).get_queue(T, "general").await?;
    queue["max_wait_ms"] = json!(3000);
    c.api(0).put_queue(T, "general", &queue).await?;
    for api in c.apis() {
        wait_until(
            Duration::from_secs(10),
            "queue update replicated",
            || async {
                api.get_queue(T, "general")
                    .await
                    .ok()
                    .filter(|q| n(q, "max_wait_ms") == 3000)
            },
        )
        .await?;
    }
    let from = now_ms();
    let r = Sipp::new("carrier_wait_release.xml", &work, "release")
        .remote(&c.sip(0))
        .service("075595598")
        .key("caller_prefix", "1360000000")
        .run(Duration::from_secs(60))
        .await?;
    ensure!(r.exit_code == 0 && r.successful == 1, "{r:?}");
    let q = format!("tenant={T}&from={from}&to={}", now_ms() + 60_000);
    let cdrs = cdrs_when(&c.api(1), &q, 30, "released CDR", |c| !c.is_empty()).await?;
    ensure!(
        cdrs.len() == 1 && s(&cdrs[0], "disposition") == "released",
        "{cdrs:?}"
    );
    Ok(())
}

fn sip_msg(node: &str, cseq: u32, extra: &str, content_length: usize, body: &str) -> Vec<u8> {
    format!(
        "INVITE sip:075595598@{node} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{{PORT}};branch=z9hG4bK-mal{cseq}\r\n\
         From: <sip:13900000000@127.0.0.1>;tag=mal{cseq}\r\nTo: <sip:075595598@{node}>\r\n\
         Call-ID: malformed-{cseq}@127.0.0.1\r\nCSeq: {cseq} INVITE\r\nMax-Forwards: 70\r\n\
         Contact: <sip:13900000000@127.0.0.1:{{PORT}}>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {content_length}\r\n\r\n{body}"
    )
    .into_bytes()
}

async fn reply(sock: &tokio::net::UdpSocket, timeout: Duration) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Ok(Ok(len)) => Some(String::from_utf8_lossy(&buf[..len]).to_string()),
        _ => None,
    }
}

/// A final status code for the message with `call_id` (provisional replies skipped).
async fn status_for(sock: &tokio::net::UdpSocket, call_id: &str, timeout: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(tokio::time::Instant::now())?;
        let m = reply(sock, left).await?;
        if !m.contains(call_id) {
            continue;
        }
        let code: u16 = m.split_whitespace().nth(1)?.parse().ok()?;
        if code >= 200 {
            return Some(code);
        }
    }
}

/// Sends `msg` over TCP; `Some(code)` for a final reply, `None` when the node closed the connection.
async fn tcp_oversized(addr: &str, msg: &[u8]) -> Result<Option<u16>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    // The node may close (or reset) before reading everything: that is a valid refusal.
    if tcp.write_all(msg).await.is_err() {
        return Ok(None);
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 8192];
    loop {
        let left = deadline
            .checked_duration_since(tokio::time::Instant::now())
            .context("no reply to the 70 KB TCP INVITE")?;
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => anyhow::bail!("no reply to the 70 KB TCP INVITE within 5 s"),
        }
        let text = String::from_utf8_lossy(&got).to_string();
        for m in text.split("SIP/2.0 ").skip(1) {
            if let Some(code) = m.get(..3).and_then(|c| c.parse::<u16>().ok()) {
                if code >= 200 {
                    return Ok(Some(code));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_input_is_answered() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let c = ClusterGuard::up(true)?;
    for (i, node) in c.info.nodes.iter().enumerate() {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let port = sock.local_addr()?.port().to_string();
        sock.connect(&node.sip).await?;
        let fix = |m: Vec<u8>| {
            String::from_utf8_lossy(&m)
                .replace("{PORT}", &port)
                .into_bytes()
        };

        // Pure garbage: nothing to reply to.
        sock.send(b"\x00\x01garbage\xff\xfe not sip at all\r\n\r\n")
            .await?;
        ensure!(
            reply(&sock, Duration::from_millis(1500)).await.is_none(),
            "node {i}: garbage got a reply"
        );

        // Truncated INVITE: every mandatory header, Content-Length larger than the body.
        sock.send(&fix(sip_msg(&node.sip, 1, "", 400, "v=0\r\n")))
            .await?;
        let code = status_for(&sock, "malformed-1@", Duration::from_secs(5)).await;
        ensure!(code == Some(400), "node {i}: truncated INVITE got {code:?}");

        // Bad Content-Length value.
        let bad = String::from_utf8_lossy(&fix(sip_msg(&node.sip, 2, "", 0, "")))
            .replace("Content-Length: 0", "Content-Length: abc");
        sock.send(bad.as_bytes()).await?;
        let code = status_for(&sock, "malformed-2@", Duration::from_secs(5)).await;
        ensure!(
            code == Some(400),
            "node {i}: bad Content-Length got {code:?}"
        );

        // Oversized: 70 KB cannot be one UDP datagram (the kernel refuses it); the largest
        // datagram (65 000 bytes of headers) must not get a success, and a 70 KB INVITE over TCP
        // must be refused (4xx/5xx, e.g. 400 or 513) or the connection closed.
        let _ = sock.send(&vec![b'A'; 70 * 1024]).await;
        let big = fix(sip_msg(
            &node.sip,
            3,
            &format!("X-Padding: {}\r\n", "x".repeat(64_000)),
            0,
            "",
        ));
        let _ = sock.send(&big).await;
        let code = status_for(&sock, "malformed-3@", Duration::from_secs(5)).await;
        ensure!(
            code.is_none() || code >= Some(400),
            "node {i}: oversized datagram got {code:?}"
        );
        let body = format!("v=0\r\na=x-pad:{}\r\n", "x".repeat(70 * 1024));
        let tcp_msg = String::from_utf8_lossy(&sip_msg(&node.sip, 4, "", body.len(), &body))
            .replace("{PORT}", &port)
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        let code = tcp_oversized(&node.sip, tcp_msg.as_bytes()).await?;
        ensure!(
            code.is_none() || code >= Some(400),
            "node {i}: 70 KB INVITE over TCP got {code:?}"
        );

        // Still serving: OPTIONS -> 200 and /health.
        let options = format!(
            "OPTIONS sip:{n} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-opt\r\nFrom: <sip:probe@127.0.0.1>;tag=o1\r\n\
             To: <sip:{n}>\r\nCall-ID: options-probe@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            n = node.sip
        );
        sock.send(options.as_bytes()).await?;
        let code = status_for(&sock, "options-probe@", Duration::from_secs(5)).await;
        ensure!(
            code == Some(200),
            "node {i}: OPTIONS after malformed input got {code:?}"
        );
        c.api(i).health().await?;
    }

    // Bad configuration and CLI input: non-zero exit, a clear message, no panic.
    let bad_toml = c.work().join("bad.toml");
    std::fs::write(&bad_toml, "id = \"not a number\"\nsite = 42\n")?;
    let cases: Vec<Vec<String>> = vec![
        vec!["node".into(), "--config".into(), "/nonexistent.toml".into()],
        vec![
            "node".into(),
            "--config".into(),
            bad_toml.display().to_string(),
        ],
        vec![
            "tenant".into(),
            "create".into(),
            "--api".into(),
            c.info.nodes[0].api.clone(),
            "--token".into(),
            c.info.token.clone(),
            "--id".into(),
            "BAD/ID".into(),
            "--name".into(),
            "Bad".into(),
            "--domain".into(),
            "bad.callgrid.local".into(),
        ],
    ];
    for args in cases {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(callgrid_bin())
                .args(&args)
                .output(),
        )
        .await
        .context("callgrid did not exit")??;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{args:?} succeeded");
        ensure!(!err.trim().is_empty(), "{args:?}: empty stderr");
        ensure!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?} panicked: {err}"
        );
    }
    for i in 0..3 {
        c.api(i).health().await?;
    }
    Ok(())
}

/// Every node runs with glibc's malloc limited in arenas (ops/src/main.rs,
/// `limit_malloc_arenas`): set once, by the node itself, since this test sets nothing.
fn arenas_limited(c: &ClusterGuard) -> Result<()> {
    ensure!(
        std::env::var_os("MALLOC_ARENA_MAX").is_none(),
        "run the tests without MALLOC_ARENA_MAX: the nodes would inherit it"
    );
    for node in &c.info.nodes {
        let pid = callgrid_tests::nodes::node_pid(c.dir.path(), node.id)?;
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .with_context(|| format!("reading node {}'s environment", node.id))?;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        ensure!(
            vars.iter().any(|v| v.starts_with(b"MALLOC_ARENA_MAX=")),
            "node {} runs without MALLOC_ARENA_MAX",
            node.id
        );
        ensure!(
            vars.contains(&&b"CALLGRID_MALLOC_ARENAS_SET=1"[..]),
            "node {} runs without the marker that stops a second re-execution",
            node.id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_replicates_and_survives_restart() -> Result<()> {
    let _l = CLUSTER_LOCK.lock().await;
    let mut c = ClusterGuard::up(true)?;
    let tenant = json!({"id": "zz", "name": "Test", "domain": "zz.callgrid.local", "landing_codes": ["0999"], "access_codes": []});
    c.api(0).post_json("/api/v1/tenants", &tenant).await?;
    let check = |c: &ClusterGuard| {
        let apis = c.apis();
        async move {
            for api in apis {
                wait_until(
                    Duration::from_secs(15),
                    &format!("tenant zz on {}", api.base),
                    || async {
                        api.get_json("/api/v1/tenants/zz")
                            .await
                            .ok()
                            .filter(|t| s(t, "domain") == "zz.callgrid.local")
                    },
                )
                .await?;
            }
            anyhow::Ok(())
        }
    };
    check(&c).await?;
    arenas_limited(&c)?;
    c.restart()?;
    check(&c).await?;
    arenas_limited(&c)?;
    Ok(())
}
