use super::*;
use model::{CallId, HangupBy};

fn cdr(id: &str, agent: &str, queue: &str, enqueued: u64, ring: u64, end: u64) -> Cdr {
    Cdr {
        call_id: CallId(id.into()),
        tenant: Some("gd".parse().unwrap()),
        entry_node: 1,
        access_code: None,
        landing_code: None,
        caller: "1".into(),
        dialled: "2".into(),
        trunk: None,
        started_at_ms: enqueued,
        answered_at_ms: Some(enqueued),
        ended_at_ms: end,
        ivr: vec![],
        queue: Some(queue.parse().unwrap()),
        enqueued_at_ms: Some(enqueued),
        priority: 0,
        wait_ms: ring - enqueued,
        agent: Some(agent.parse().unwrap()),
        extension: Some(agent.parse().unwrap()),
        agent_node: Some(2),
        offered_at_ms: Some(ring),
        first_offered_at_ms: None,
        ring_started_at_ms: Some(ring),
        agent_answered_at_ms: Some(ring + 100),
        ring_ms: 100,
        talk_ms: end.saturating_sub(ring + 100),
        hangup_by: HangupBy::Caller,
        disposition: Disposition::Answered,
        reason: None,
        recording_id: None,
        failovers: vec![],
        rules: vec![],
        wait_announcements: vec![],
        agent_announced_at_ms: None,
        periodic_announcements: 0,
        repeat_caller: None,
        routed_by: Vec::new(),
        voicemail: None,
        callback: None,
        external: None,
    }
}

fn with_priority(mut c: Cdr, priority: u8) -> Cdr {
    c.priority = priority;
    c
}

#[test]
fn priority_goes_first_but_only_once_it_waits() {
    // b (priority 5) arrived at 100, before a (priority 0, arrived 0) was offered at 500:
    // b had to go first.
    let bad = vec![
        cdr("a", "1001", "q", 0, 500, 900),
        with_priority(cdr("b", "1002", "q", 100, 700, 900), 5),
    ];
    assert_eq!(served_in_order(&bad, 50).len(), 1);
    let ok = vec![
        cdr("a", "1001", "q", 0, 700, 900),
        with_priority(cdr("b", "1002", "q", 100, 500, 900), 5),
    ];
    assert!(served_in_order(&ok, 50).is_empty());
    // b arrived after a was offered: no claim on a's agent.
    let later = vec![
        cdr("a", "1001", "q", 0, 50, 900),
        with_priority(cdr("b", "1002", "q", 100, 700, 900), 5),
    ];
    assert!(served_in_order(&later, 0).is_empty());
}

#[test]
fn detects_double_booking() {
    let ok = vec![
        cdr("a", "1001", "q", 0, 10, 100),
        cdr("b", "1001", "q", 0, 200, 300),
    ];
    assert!(no_double_booking(&ok).is_empty());
    let bad = vec![
        cdr("a", "1001", "q", 0, 10, 100),
        cdr("b", "1001", "q", 0, 50, 300),
    ];
    assert_eq!(no_double_booking(&bad).len(), 1);
}

#[test]
fn detects_missing_and_duplicate_cdrs() {
    let cdrs = vec![
        cdr("a", "1001", "q", 0, 10, 100),
        cdr("a", "1001", "q", 0, 10, 100),
    ];
    let v = one_cdr_per_call(&cdrs, ["a", "b"]);
    assert!(v.iter().any(|v| v.detail.contains("2 CDRs")));
    assert!(v.iter().any(|v| v.detail.contains("no CDR")));
}

#[test]
fn detects_overtaking() {
    let ok = vec![
        cdr("a", "1001", "q", 0, 10, 100),
        cdr("b", "1002", "q", 5, 20, 100),
    ];
    assert!(served_in_order(&ok, 0).is_empty());
    let bad = vec![
        cdr("a", "1001", "q", 0, 500, 900),
        cdr("b", "1002", "q", 100, 120, 200),
    ];
    assert_eq!(served_in_order(&bad, 50).len(), 1);
    // Arrivals closer than the slack have no observable order.
    let close = vec![
        cdr("a", "1001", "q", 0, 500, 900),
        cdr("b", "1002", "q", 30, 120, 200),
    ];
    assert!(served_in_order(&close, 50).is_empty());
}

#[test]
fn detects_a_younger_idle_agent_chosen() {
    let ready: HashMap<String, u64> = [("1001".to_string(), 0), ("1002".to_string(), 1000)].into();
    // 1002 (idle since 1000) got the call at 2000 although 1001 was idle since 0.
    let bad = vec![cdr("a", "1002", "q", 1900, 2000, 3000)];
    assert_eq!(longest_idle_first(&bad, &ready, 0, 100).len(), 1);
    let ok = vec![cdr("a", "1001", "q", 1900, 2000, 3000)];
    assert!(longest_idle_first(&ok, &ready, 0, 100).is_empty());
}

#[test]
fn agent_state_stream_catches_a_second_call_while_engaged() {
    use model::{AgentSession, AgentStatus};
    let at = |status: AgentStatus, since_ms: u64| AgentSession {
        tenant: "gd".parse().unwrap(),
        agent: "1001".parse().unwrap(),
        extension: "1001".parse().unwrap(),
        status,
        since_ms,
        idle_since_ms: 0,
        calls_answered: 0,
        away_ms: Default::default(),
        state_ms: Default::default(),
        owner: 1,
        version: since_ms,
        fence: None,
    };
    let call = |c: &str| CallId(c.into());
    let ok = vec![
        at(AgentStatus::Reserved { call: call("a") }, 1),
        at(AgentStatus::Ringing { call: call("b") }, 2),
        at(AgentStatus::Talking { call: call("b") }, 3),
        at(AgentStatus::AfterCallWork { until_ms: 9 }, 4),
        at(AgentStatus::Ringing { call: call("c") }, 10),
    ];
    assert!(agent_states_never_double_booked(&ok).is_empty());
    let bad = vec![
        at(AgentStatus::Talking { call: call("a") }, 1),
        at(AgentStatus::Ringing { call: call("b") }, 2),
    ];
    assert_eq!(agent_states_never_double_booked(&bad).len(), 1);
}
