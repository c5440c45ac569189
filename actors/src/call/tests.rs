use super::*;
use model::sample;
use rand::SeedableRng;

fn setup() -> CallSetup {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (commands, _) = sample::sample(&mut rng);
    let mut state = model::ReplicatedState::default();
    for c in &commands {
        assert_eq!(state.apply(c).error, None);
    }
    let route = model::routing::resolve(&state, "075595598").unwrap();
    let tenant = route.tenant.clone();
    let flow = match &route.entry {
        Entry::Flow(f) => state.flow(&tenant, f).cloned(),
        Entry::Queue(_) => None,
    };
    let queues = state
        .queues
        .values()
        .filter(|q| q.tenant == tenant)
        .map(|q| (q.id.clone(), q.clone()))
        .collect();
    CallSetup {
        call_id: CallId("1-1".into()),
        entry_node: 1,
        route,
        caller: "13800000000".into(),
        dialled: "075595598".into(),
        trunk: None,
        started_at_ms: 0,
        flow,
        queues,
    }
}

fn drain(m: &mut CallMachine) -> Vec<CallOutput> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn to_queue(m: &mut CallMachine, digit: char) {
    m.handle(100, CallInput::CustomerAnswered);
    m.handle(3_000, CallInput::PlayDone); // welcome
    m.handle(4_000, CallInput::Digit(digit)); // during the menu prompt
}

fn cdr_of(outputs: &[CallOutput]) -> Cdr {
    outputs
        .iter()
        .find_map(|o| match o {
            CallOutput::Cdr(c) => Some((**c).clone()),
            _ => None,
        })
        .expect("a CDR")
}

#[test]
fn ivr_menu_key_queues_the_call_then_an_answered_call_has_a_full_trail() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Enqueue {
        queue: "billing".parse().unwrap(),
        priority: 0,
        enqueued_at_ms: 4_000
    }));
    m.handle(
        5_000,
        CallInput::Offer {
            queue: "billing".parse().unwrap(),
            agent: "1003".parse().unwrap(),
            agent_node: 3,
            extension: "1003".parse().unwrap(),
        },
    );
    assert!(drain(&mut m)
        .iter()
        .any(|o| matches!(o, CallOutput::DialAgent { .. })));
    m.handle(5_100, CallInput::AgentRinging);
    m.handle(7_000, CallInput::AgentAnswered);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Bridge));
    assert!(out.contains(&CallOutput::OfferDone {
        queue: "billing".parse().unwrap(),
        agent: "1003".parse().unwrap(),
        answered: true
    }));
    m.handle(17_000, CallInput::CustomerHangup);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::HangupAgent));
    assert!(out.contains(&CallOutput::Agent {
        agent: "1003".parse().unwrap(),
        agent_node: 3,
        notice: AgentNotice::Ended { acw_ms: 2_000 }
    }));
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.hangup_by, HangupBy::Caller);
    assert_eq!(cdr.wait_ms, 3_000);
    assert_eq!(cdr.ring_ms, 1_900);
    assert_eq!(cdr.offered_at_ms, Some(5_000));
    assert_eq!(cdr.talk_ms, 10_000);
    assert_eq!(cdr.landing_code.as_deref(), Some("0755"));
    assert_eq!(
        cdr.ivr
            .iter()
            .filter_map(|s| s.key.clone())
            .collect::<Vec<_>>(),
        vec!["2".to_string()]
    );
    assert_eq!(out.last(), Some(&CallOutput::Finished));
}

#[test]
fn menu_timeout_goes_to_general() {
    let mut m = CallMachine::new(setup());
    m.handle(100, CallInput::CustomerAnswered);
    m.handle(3_000, CallInput::PlayDone);
    m.handle(6_000, CallInput::PlayDone); // menu prompt ends, 5 s to press
    assert_eq!(m.poll_timeout(), Some(11_000));
    m.handle_timeout(11_000);
    assert!(drain(&mut m)
        .iter()
        .any(|o| matches!(o, CallOutput::Enqueue { queue, .. } if queue.as_str() == "general")));
}

#[test]
fn caller_hangup_while_queued_is_abandoned_and_dequeued() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '1');
    drain(&mut m);
    m.handle(9_000, CallInput::CustomerHangup);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Dequeue {
        queue: "outage".parse().unwrap()
    }));
    assert!(
        !out.contains(&CallOutput::HangupCustomer),
        "the caller is already gone"
    );
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Abandoned);
    assert_eq!(cdr.wait_ms, 5_000);
    // A late offer after the end is refused so the agent is freed.
    m.handle(
        9_500,
        CallInput::Offer {
            queue: "outage".parse().unwrap(),
            agent: "1001".parse().unwrap(),
            agent_node: 2,
            extension: "1001".parse().unwrap(),
        },
    );
    assert!(drain(&mut m).contains(&CallOutput::OfferDone {
        queue: "outage".parse().unwrap(),
        agent: "1001".parse().unwrap(),
        answered: false
    }));
}

#[test]
fn max_wait_releases_with_the_timeout_prompt() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '0');
    drain(&mut m);
    let deadline = m.poll_timeout().expect("max wait armed");
    assert_eq!(deadline, 4_000 + 120_000);
    m.handle_timeout(deadline);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Play {
        prompt: "timeout".parse().unwrap(),
        repeat: false
    }));
    m.handle(deadline + 2_000, CallInput::PlayDone);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::HangupCustomer));
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_wait"));
}

#[test]
fn ring_timeout_requeues_and_frees_the_agent() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(
        5_000,
        CallInput::Offer {
            queue: "billing".parse().unwrap(),
            agent: "1003".parse().unwrap(),
            agent_node: 3,
            extension: "1003".parse().unwrap(),
        },
    );
    drain(&mut m);
    m.handle_timeout(20_000);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::CancelAgent));
    assert!(out.contains(&CallOutput::Agent {
        agent: "1003".parse().unwrap(),
        agent_node: 3,
        notice: AgentNotice::Failed { no_answer: true }
    }));
    assert_eq!(m.state_name(), "queued");
}
