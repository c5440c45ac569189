use super::*;
use model::sample;
use rand::SeedableRng;

/// The sample configuration (seed 1), applied.
fn sample_state() -> model::ReplicatedState {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (commands, _) = sample::sample(&mut rng);
    let mut state = model::ReplicatedState::default();
    for c in &commands {
        assert_eq!(state.apply(c).error, None);
    }
    state
}

fn setup() -> CallSetup {
    let state = sample_state();
    let route = model::routing::resolve(&state, "075595598").unwrap();
    let tenant = route.tenant.clone();
    let _ = &tenant;
    let (flows, queues) = flows_and_queues(&state, &route);
    CallSetup {
        call_id: CallId("1-1".into()),
        entry_node: 1,
        route,
        caller: "13800000000".into(),
        dialled: "075595598".into(),
        trunk: None,
        started_at_ms: 0,
        flows,
        queues,
        profile: Default::default(),
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
        enqueued_at_ms: 4_000,
        offered_to: None,
        arriving: true,
        needs: Default::default(),
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

fn offer_to(m: &mut CallMachine, at: u64, agent: &str) {
    m.handle(
        at,
        CallInput::Offer {
            queue: "billing".parse().unwrap(),
            agent: agent.parse().unwrap(),
            agent_node: 2,
            extension: agent.parse().unwrap(),
        },
    );
}

/// Restores `m` from its own checkpointable phase and CDR, as a new owner would.
fn restored(m: &CallMachine, now: u64) -> (CallMachine, Vec<CallOutput>) {
    restored_in(setup(), m, now)
}

fn restored_in(setup: CallSetup, m: &CallMachine, now: u64) -> (CallMachine, Vec<CallOutput>) {
    let phase = m.phase().expect("a live call");
    let mut r = CallMachine::restore(setup, &phase, m.cdr_so_far().clone(), now);
    let out = drain(&mut r);
    (r, out)
}

#[test]
fn a_queued_call_restored_elsewhere_rejoins_at_its_original_place_with_music() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    drain(&mut m);
    let (r, out) = restored(&m, 9_000);
    assert_eq!(r.state_name(), "queued");
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Play { repeat: true, .. })));
    assert!(out.contains(&CallOutput::Enqueue {
        queue: "billing".parse().unwrap(),
        priority: 0,
        enqueued_at_ms: 4_000,
        offered_to: None,
        arriving: false,
        needs: Default::default(),
    }));
    // Max wait still counts from the original enqueue time.
    assert_eq!(r.poll_timeout(), m.poll_timeout());
}

#[test]
fn a_ringing_call_restored_elsewhere_frees_the_agent_and_waits_to_be_offered_again() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1001");
    drain(&mut m);
    assert_eq!(m.state_name(), "ringing_agent");
    let (mut r, out) = restored(&m, 9_000);
    assert_eq!(r.state_name(), "queued");
    assert!(out.contains(&CallOutput::Agent {
        agent: "1001".parse().unwrap(),
        agent_node: 0,
        notice: AgentNotice::Failed { no_answer: false },
    }));
    assert!(out.contains(&CallOutput::OfferDone {
        queue: "billing".parse().unwrap(),
        agent: "1001".parse().unwrap(),
        answered: false,
    }));
    assert!(out.iter().any(|o| matches!(
        o,
        CallOutput::Enqueue {
            enqueued_at_ms: 4_000,
            ..
        }
    )));
    // It can be offered again, to anyone.
    offer_to(&mut r, 9_500, "1002");
    assert!(drain(&mut r)
        .iter()
        .any(|o| matches!(o, CallOutput::DialAgent { .. })));
}

#[test]
fn a_talking_call_restored_elsewhere_bridges_again_and_its_cdr_carries_the_failover() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1001");
    m.handle(6_000, CallInput::AgentAnswered);
    m.handle(6_000, CallInput::Recording { id: "1-1".into() });
    drain(&mut m);
    let (mut r, out) = restored(&m, 20_000);
    assert_eq!(r.state_name(), "talking");
    assert_eq!(out, vec![CallOutput::Bridge]);
    r.note_failover(FailoverMark {
        from_node: 1,
        to_node: 2,
        at_ms: 20_000,
        gap_ms: 0,
        recording_id: None,
        recording_offset_ms: 0,
    });
    r.set_failover_recording(Some("2-f1-1-1".into()), 14_000);
    r.set_failover_gap(900);
    r.handle(30_000, CallInput::CustomerHangup);
    let cdr = cdr_of(&drain(&mut r));
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.talk_ms, 24_000, "talk time spans both owners");
    assert_eq!(cdr.recording_id.as_deref(), Some("1-1"));
    assert_eq!(cdr.failovers.len(), 1);
    assert_eq!(cdr.failovers[0].gap_ms, 900);
    assert_eq!(cdr.failovers[0].recording_id.as_deref(), Some("2-f1-1-1"));
}

#[test]
fn an_ivr_call_restored_elsewhere_replays_its_node() {
    let mut m = CallMachine::new(setup());
    m.handle(100, CallInput::CustomerAnswered);
    drain(&mut m);
    let (r, out) = restored(&m, 1_000);
    assert_eq!(r.state_name(), "ivr");
    assert_eq!(r.phase(), m.phase());
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Play { repeat: false, .. })));
}

#[test]
fn resync_restates_the_place_of_a_waiting_or_ringing_call_only() {
    let mut m = CallMachine::new(setup());
    m.handle(100, CallInput::CustomerAnswered);
    drain(&mut m);
    m.resync();
    assert!(drain(&mut m).is_empty(), "not queued yet");
    m.handle(3_000, CallInput::PlayDone);
    m.handle(4_000, CallInput::Digit('2'));
    offer_to(&mut m, 5_000, "1001");
    drain(&mut m);
    m.resync();
    assert_eq!(
        drain(&mut m),
        vec![CallOutput::Enqueue {
            queue: "billing".parse().unwrap(),
            priority: 0,
            enqueued_at_ms: 4_000,
            offered_to: Some("1001".parse().unwrap()),
            arriving: false,
            needs: Default::default(),
        }]
    );
}

#[test]
fn a_second_offer_while_ringing_for_the_same_queue_frees_only_the_second_agent() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    drain(&mut m);
    offer_to(&mut m, 5_000, "1003");
    drain(&mut m);
    // A re-Enqueue crossed the first offer: the queue offers the call to another agent.
    offer_to(&mut m, 5_100, "1004");
    let out = drain(&mut m);
    assert_eq!(
        out,
        vec![CallOutput::Agent {
            agent: "1004".parse().unwrap(),
            agent_node: 2,
            notice: AgentNotice::Failed { no_answer: false }
        }],
        "no OfferDone: the queue keeps the call offered until the ring in progress settles"
    );
    // The same agent offered again is a duplicate: nothing to do.
    offer_to(&mut m, 5_200, "1003");
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.state_name(), "ringing_agent");
}

#[test]
fn a_talking_call_that_ended_before_its_takeover_is_only_recorded() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1001");
    m.handle(6_000, CallInput::AgentAnswered);
    drain(&mut m);
    // The old node ended it at 9 s (the agent's session moved on then) and died before its
    // CDR committed; the taker sees that at 20 s.
    let (mut r, _) = restored(&m, 20_000);
    r.ended_before_takeover(9_000);
    let out = drain(&mut r);
    assert!(!out.contains(&CallOutput::Bridge), "no bridge: {out:?}");
    assert!(out.contains(&CallOutput::HangupCustomer));
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.ended_at_ms, 9_000, "ended when the agent was freed");
    assert_eq!(cdr.talk_ms, 3_000);
    assert!(
        cdr.failovers.is_empty(),
        "no takeover mark: nothing was taken over"
    );
    assert_eq!(r.state_name(), "ended");
}

fn full(m: &mut CallMachine, at: u64, queue: &str) -> Vec<CallOutput> {
    m.handle(
        at,
        CallInput::TurnedAway {
            queue: queue.parse().unwrap(),
            rule: QueueRule::MaxQueued,
        },
    );
    drain(m)
}

#[test]
fn a_full_queue_releases_the_call_by_default() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    drain(&mut m);
    let out = full(&mut m, 4_100, "billing");
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_queued"));
    assert!(out.contains(&CallOutput::HangupCustomer));
    assert!(
        out.contains(&CallOutput::Dequeue {
            queue: "billing".parse().unwrap()
        }),
        "a resync that crossed the refusal must not leave the call in line"
    );
    // A notice for another queue than the one the call waits in changes nothing.
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    drain(&mut m);
    assert!(full(&mut m, 4_100, "general").is_empty());
    assert_eq!(m.state_name(), "queued");
}

#[test]
fn a_full_queue_plays_the_rules_prompt_before_releasing() {
    let mut s = setup();
    let billing: QueueId = "billing".parse().unwrap();
    Arc::make_mut(&mut s.queues)
        .get_mut(&billing)
        .unwrap()
        .on_max_queued = Some(RuleAction::Release {
        prompt: Some("timeout".parse().unwrap()),
    });
    let mut m = CallMachine::new(s);
    to_queue(&mut m, '2');
    drain(&mut m);
    let out = full(&mut m, 4_100, "billing");
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Play { prompt, .. } if prompt.as_str() == "timeout")));
    m.handle(6_000, CallInput::PlayDone);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_queued"));
}

#[test]
fn a_full_queue_transfers_to_its_overflow_queue_and_never_loops() {
    let mut s = setup();
    let (billing, general): (QueueId, QueueId) =
        ("billing".parse().unwrap(), "general".parse().unwrap());
    Arc::make_mut(&mut s.queues)
        .get_mut(&billing)
        .unwrap()
        .on_max_queued = Some(RuleAction::TransferQueue {
        queue: general.clone(),
    });
    Arc::make_mut(&mut s.queues)
        .get_mut(&general)
        .unwrap()
        .on_max_queued = Some(RuleAction::TransferQueue {
        queue: billing.clone(),
    });
    let mut m = CallMachine::new(s);
    to_queue(&mut m, '2');
    drain(&mut m);
    let out = full(&mut m, 4_100, "billing");
    assert!(
        out.iter().any(|o| matches!(o, CallOutput::Enqueue { queue, enqueued_at_ms: 4_100, arriving: true, .. } if *queue == general)),
        "joins general, arriving there now: {out:?}"
    );
    assert_eq!(m.state_name(), "queued");
    assert_eq!(m.cdr_so_far().queue.as_ref(), Some(&general));
    // general is full as well and would send it back: released instead.
    let out = full(&mut m, 4_200, "general");
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_queued"));
}

#[test]
fn all_agents_busy_applies_its_own_rule() {
    let mut s = setup();
    let (billing, general): (QueueId, QueueId) =
        ("billing".parse().unwrap(), "general".parse().unwrap());
    // The max-queued rule would transfer; the all-busy rule (unset) releases.
    Arc::make_mut(&mut s.queues)
        .get_mut(&billing)
        .unwrap()
        .on_max_queued = Some(RuleAction::TransferQueue { queue: general });
    let mut m = CallMachine::new(s);
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(
        4_100,
        CallInput::TurnedAway {
            queue: billing,
            rule: QueueRule::AllBusy,
        },
    );
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("all_busy"));
}

/// The sample setup with queue `billing` changed by `change`, and a second flow `other`
/// (a prompt, then queue general) that rules may transfer to.
fn setup_with(change: impl FnOnce(&mut Queue)) -> CallSetup {
    let mut s = setup();
    change(
        Arc::make_mut(&mut s.queues)
            .get_mut(&"billing".parse().unwrap())
            .unwrap(),
    );
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "intro".to_string(),
        FlowNode::Play {
            prompt: "welcome".parse().unwrap(),
            next: "queue".into(),
        },
    );
    nodes.insert(
        "queue".to_string(),
        FlowNode::Queue {
            queue: "general".parse().unwrap(),
            priority: 3,
            lost_call_webhook: None,
            also: Vec::new(),
        },
    );
    let other = Flow {
        tenant: s.route.tenant.clone(),
        id: "other".parse().unwrap(),
        start: "intro".into(),
        nodes,
    };
    Arc::make_mut(&mut s.flows).insert(other.id.clone(), other);
    s
}

fn billing_deadline(m: &CallMachine) -> u64 {
    let deadline = m.poll_timeout().expect("max wait armed");
    assert_eq!(
        deadline,
        4_000 + 120_000,
        "billing's max wait from the sample"
    );
    deadline
}

#[test]
fn max_wait_transfers_to_the_rules_queue_which_then_applies_its_own_default() {
    let mut m = CallMachine::new(setup_with(|q| {
        q.on_max_wait = Some(RuleAction::TransferQueue {
            queue: "general".parse().unwrap(),
        })
    }));
    to_queue(&mut m, '2');
    drain(&mut m);
    let at = billing_deadline(&m);
    m.handle_timeout(at);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Dequeue {
        queue: "billing".parse().unwrap()
    }));
    assert!(
        out.iter().any(|o| matches!(o, CallOutput::Enqueue { queue, enqueued_at_ms, arriving: true, .. } if queue.as_str() == "general" && *enqueued_at_ms == at)),
        "{out:?}"
    );
    // general's own max wait (unset rule): released with its timeout prompt.
    let again = m.poll_timeout().expect("general's max wait");
    assert_eq!(again, at + 120_000);
    m.handle_timeout(again);
    m.handle(again + 1_000, CallInput::PlayDone);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_wait"));
    let trail: Vec<(&str, QueueRule)> = cdr
        .rules
        .iter()
        .map(|r| (r.queue.as_str(), r.rule))
        .collect();
    assert_eq!(
        trail,
        vec![
            ("billing", QueueRule::MaxWait),
            ("general", QueueRule::MaxWait)
        ]
    );
}

#[test]
fn the_cancel_key_releases_a_waiting_caller_and_other_keys_do_nothing() {
    let mut m = CallMachine::new(setup_with(|q| q.cancel_key = Some('*')));
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(5_000, CallInput::Digit('#'));
    assert!(drain(&mut m).is_empty(), "not the cancel key");
    m.handle(6_000, CallInput::Digit('*'));
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Dequeue {
        queue: "billing".parse().unwrap()
    }));
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("cancel_key"));
    // general has no cancel key: the same key is ignored there.
    let mut m = CallMachine::new(setup_with(|q| q.cancel_key = Some('*')));
    to_queue(&mut m, '0');
    drain(&mut m);
    m.handle(6_000, CallInput::Digit('*'));
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.state_name(), "queued");
}

#[test]
fn the_cancel_key_while_an_agent_rings_frees_the_agent_then_transfers() {
    let mut m = CallMachine::new(setup_with(|q| {
        q.cancel_key = Some('#');
        q.on_cancel = Some(RuleAction::TransferQueue {
            queue: "general".parse().unwrap(),
        });
    }));
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1003");
    drain(&mut m);
    m.handle(6_000, CallInput::Digit('#'));
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::CancelAgent));
    assert!(out.contains(&CallOutput::Agent {
        agent: "1003".parse().unwrap(),
        agent_node: 2,
        notice: AgentNotice::Failed { no_answer: false }
    }));
    assert!(out.contains(&CallOutput::OfferDone {
        queue: "billing".parse().unwrap(),
        agent: "1003".parse().unwrap(),
        answered: false
    }));
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Enqueue { queue, .. } if queue.as_str() == "general")));
    assert_eq!(m.state_name(), "queued");
    assert_eq!(m.cdr_so_far().queue.as_ref().unwrap().as_str(), "general");
}

#[test]
fn a_rule_transfers_to_another_flow_which_survives_a_takeover() {
    let mut m = CallMachine::new(setup_with(|q| {
        q.cancel_key = Some('9');
        q.on_cancel = Some(RuleAction::TransferFlow {
            flow: "other".parse().unwrap(),
            node: None,
        });
    }));
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(6_000, CallInput::Digit('9'));
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::StopPlay));
    assert!(out.contains(&CallOutput::Play {
        prompt: "welcome".parse().unwrap(),
        repeat: false
    }));
    assert_eq!(m.state_name(), "ivr");
    assert_eq!(m.poll_timeout(), None, "no max wait while in the IVR");
    assert_eq!(
        m.phase(),
        Some(CallPhase::Ivr {
            node: "intro".into(),
            flow: Some("other".parse().unwrap())
        })
    );
    // A new owner resumes in the other flow, not in the entry flow.
    let (mut r, out) = restored_in(setup_with(|_| {}), &m, 7_000);
    assert!(out.contains(&CallOutput::Play {
        prompt: "welcome".parse().unwrap(),
        repeat: false
    }));
    r.handle(9_000, CallInput::PlayDone);
    let out = drain(&mut r);
    assert!(
        out.iter().any(|o| matches!(o, CallOutput::Enqueue { queue, priority: 3, .. } if queue.as_str() == "general")),
        "{out:?}"
    );
    assert_eq!(r.cdr_so_far().rules.len(), 1, "the trail survived");
}

#[test]
fn a_flow_that_leads_back_into_a_full_queue_cannot_spin() {
    let mut m = CallMachine::new(setup_with(|q| {
        q.on_max_queued = Some(RuleAction::TransferFlow {
            flow: "main".parse().unwrap(),
            node: Some("to_billing".into()),
        })
    }));
    to_queue(&mut m, '2');
    drain(&mut m);
    for step in 0..MAX_RULE_STEPS as u64 {
        assert_eq!(m.state_name(), "queued", "step {step}");
        full(&mut m, 5_000 + step, "billing");
    }
    // One transfer too many: released instead.
    let cdr = cdr_of(&full(&mut m, 6_000, "billing"));
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_queued"));
    assert_eq!(cdr.rules.len(), MAX_RULE_STEPS + 1);
}

fn with_announcement(every_ms: Option<u64>) -> CallSetup {
    setup_with(|q| {
        q.wait_announcement = Some(model::WaitAnnouncement {
            after_ms: 15_000,
            every_ms,
            prefix: "ewt_prefix".parse().unwrap(),
            suffix: "ewt_suffix".parse().unwrap(),
        })
    })
}

fn plays(out: &[CallOutput]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Play { prompt, .. } => Some(prompt.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn after_15_s_in_line_the_caller_hears_the_estimated_wait_then_music_again() {
    let mut m = CallMachine::new(with_announcement(Some(60_000)));
    to_queue(&mut m, '2');
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(4_000 + 15_000), "before max wait");
    m.handle_timeout(19_000);
    assert_eq!(
        drain(&mut m),
        vec![CallOutput::AskWait {
            queue: "billing".parse().unwrap()
        }]
    );
    assert_eq!(
        m.poll_timeout(),
        Some(79_000),
        "the next one a minute later"
    );
    // 2 ahead, about 2 min 10 s: "about three minutes".
    m.handle(
        19_010,
        CallInput::WaitEstimate {
            queue: "billing".parse().unwrap(),
            ahead: 2,
            wait_ms: Some(130_000),
        },
    );
    let mut heard = plays(&drain(&mut m));
    for at in [21_000, 22_000, 24_000] {
        m.handle(at, CallInput::PlayDone);
        heard.extend(plays(&drain(&mut m)));
    }
    assert_eq!(heard, ["ewt_prefix", "number_3", "ewt_suffix", "music"]);
    let announced = &m.cdr_so_far().wait_announcements;
    assert_eq!(announced.len(), 1);
    assert_eq!((announced[0].ahead, announced[0].minutes), (2, 3));
    // 47 minutes: "forty", "seven".
    m.handle_timeout(79_000);
    drain(&mut m);
    m.handle(
        79_010,
        CallInput::WaitEstimate {
            queue: "billing".parse().unwrap(),
            ahead: 30,
            wait_ms: Some(47 * 60_000),
        },
    );
    m.handle(80_000, CallInput::PlayDone);
    assert_eq!(
        plays(&drain(&mut m)),
        ["ewt_prefix", "number_40"],
        "the parts follow each other"
    );
}

#[test]
fn no_estimate_keeps_the_music_and_an_answer_stops_the_announcement() {
    let mut m = CallMachine::new(with_announcement(None));
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle_timeout(19_000);
    drain(&mut m);
    assert_eq!(
        m.poll_timeout(),
        Some(124_000),
        "announced once: max wait next"
    );
    m.handle(
        19_010,
        CallInput::WaitEstimate {
            queue: "billing".parse().unwrap(),
            ahead: 0,
            wait_ms: None,
        },
    );
    assert!(drain(&mut m).is_empty(), "no estimate: music goes on");
    assert!(m.cdr_so_far().wait_announcements.is_empty());
    // An announcement cut short by the answer: nothing more is played after the bridge.
    let mut m = CallMachine::new(with_announcement(None));
    to_queue(&mut m, '2');
    m.handle_timeout(19_000);
    m.handle(
        19_010,
        CallInput::WaitEstimate {
            queue: "billing".parse().unwrap(),
            ahead: 0,
            wait_ms: Some(30_000),
        },
    );
    offer_to(&mut m, 19_500, "1002");
    m.handle(19_600, CallInput::AgentAnswered);
    drain(&mut m);
    m.handle(19_700, CallInput::PlayDone);
    assert!(plays(&drain(&mut m)).is_empty());
}

#[test]
fn a_call_restored_late_skips_the_announcements_it_missed() {
    let w = model::WaitAnnouncement {
        after_ms: 15_000,
        every_ms: Some(60_000),
        prefix: "ewt_prefix".parse().unwrap(),
        suffix: "ewt_suffix".parse().unwrap(),
    };
    assert_eq!(w.next_at(1_000, 1_000), Some(16_000));
    assert_eq!(w.next_at(1_000, 16_000), Some(16_000));
    assert_eq!(w.next_at(1_000, 16_001), Some(76_000));
    assert_eq!(w.next_at(1_000, 200_000), Some(256_000));
    let once = model::WaitAnnouncement {
        every_ms: None,
        ..w
    };
    assert_eq!(once.next_at(1_000, 16_001), None);
    let mut m = CallMachine::new(with_announcement(Some(60_000)));
    to_queue(&mut m, '2');
    drain(&mut m);
    let (r, _) = restored_in(with_announcement(Some(60_000)), &m, 50_000);
    assert_eq!(r.poll_timeout(), Some(79_000));
}

#[test]
fn a_periodic_announcement_interrupts_the_music_every_period() {
    let mut m = CallMachine::new(setup_with(|q| {
        q.periodic_announcement = Some(model::PeriodicAnnouncement {
            prompt: "timeout".parse().unwrap(),
            every_ms: 30_000,
        });
        q.wait_announcement = Some(model::WaitAnnouncement {
            after_ms: 30_000,
            every_ms: None,
            prefix: "ewt_prefix".parse().unwrap(),
            suffix: "ewt_suffix".parse().unwrap(),
        });
    }));
    to_queue(&mut m, '2');
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(34_000));
    // Both are due: the periodic prompt first, the estimate queued after it.
    m.handle_timeout(34_000);
    let out = drain(&mut m);
    assert_eq!(plays(&out), ["timeout"]);
    assert!(out.contains(&CallOutput::AskWait {
        queue: "billing".parse().unwrap()
    }));
    m.handle(
        34_010,
        CallInput::WaitEstimate {
            queue: "billing".parse().unwrap(),
            ahead: 0,
            wait_ms: Some(60_000),
        },
    );
    assert!(plays(&drain(&mut m)).is_empty(), "the prompt plays on");
    let mut heard = Vec::new();
    for at in [36_000, 37_000, 38_000, 39_000] {
        m.handle(at, CallInput::PlayDone);
        heard.extend(plays(&drain(&mut m)));
    }
    assert_eq!(heard, ["ewt_prefix", "number_1", "ewt_suffix", "music"]);
    assert_eq!(m.poll_timeout(), Some(64_000), "the next period");
    m.handle_timeout(64_000);
    assert_eq!(plays(&drain(&mut m)), ["timeout"]);
    assert_eq!(m.cdr_so_far().periodic_announcements, 2);
    m.handle(66_000, CallInput::PlayDone);
    assert_eq!(plays(&drain(&mut m)), ["music"]);
    // Restored mid-period: the next one stays on the call's own schedule.
    let (r, _) = restored_in(
        setup_with(|q| {
            q.periodic_announcement = Some(model::PeriodicAnnouncement {
                prompt: "timeout".parse().unwrap(),
                every_ms: 30_000,
            })
        }),
        &m,
        70_000,
    );
    assert_eq!(r.poll_timeout(), Some(94_000));
}

#[test]
fn the_caller_hears_the_agents_number_before_the_bridge() {
    let mut m = CallMachine::new(setup_with(|q| {
        q.agent_announcement = Some(model::AgentAnnouncement {
            prefix: "agent_prefix".parse().unwrap(),
            suffix: Some("agent_suffix".parse().unwrap()),
        })
    }));
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1003");
    drain(&mut m);
    m.handle(6_000, CallInput::AgentAnswered);
    let out = drain(&mut m);
    assert!(!out.contains(&CallOutput::Bridge), "not before the number");
    let mut heard = plays(&out);
    for at in 6_500..6_505 {
        m.handle(at, CallInput::PlayDone);
        let out = drain(&mut m);
        heard.extend(plays(&out));
        if out.contains(&CallOutput::Bridge) {
            break;
        }
    }
    assert_eq!(
        heard,
        [
            "agent_prefix",
            "number_1",
            "number_0",
            "number_0",
            "number_3",
            "agent_suffix"
        ]
    );
    assert_eq!(m.state_name(), "talking");
    assert_eq!(m.cdr_so_far().agent_announced_at_ms, Some(6_000));
    // Without the setting the bridge is immediate.
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1003");
    drain(&mut m);
    m.handle(6_000, CallInput::AgentAnswered);
    assert!(drain(&mut m).contains(&CallOutput::Bridge));
}

fn with_lost_call_webhook() -> CallSetup {
    let mut s = setup();
    let flow = Arc::make_mut(&mut s.flows)
        .values_mut()
        .next()
        .expect("the sample flow");
    if let Some(FlowNode::Queue {
        lost_call_webhook, ..
    }) = flow.nodes.get_mut("to_billing")
    {
        *lost_call_webhook = Some("http://127.0.0.1:9/sms".into());
    }
    s
}

fn lost_calls(out: &[CallOutput]) -> Vec<(String, String)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::LostCall { webhook, node, .. } => Some((webhook.clone(), node.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_caller_who_asked_for_a_human_and_never_reached_one_is_reported_once() {
    let hook = (
        "http://127.0.0.1:9/sms".to_string(),
        "to_billing".to_string(),
    );
    // Abandoned while waiting: reported.
    let mut m = CallMachine::new(with_lost_call_webhook());
    to_queue(&mut m, '2');
    m.handle(9_000, CallInput::CustomerHangup);
    assert_eq!(lost_calls(&drain(&mut m)), vec![hook.clone()]);
    // Released by max wait after a takeover: still reported (found from the IVR trail).
    let mut m = CallMachine::new(with_lost_call_webhook());
    to_queue(&mut m, '2');
    drain(&mut m);
    let (mut r, _) = restored_in(with_lost_call_webhook(), &m, 9_000);
    r.handle_timeout(124_000);
    r.handle(126_000, CallInput::PlayDone);
    assert_eq!(lost_calls(&drain(&mut r)), vec![hook]);
    // Answered: nothing to report.
    let mut m = CallMachine::new(with_lost_call_webhook());
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1003");
    m.handle(6_000, CallInput::AgentAnswered);
    m.handle(9_000, CallInput::CustomerHangup);
    assert!(lost_calls(&drain(&mut m)).is_empty());
    // Another queue node, without the rule: nothing.
    let mut m = CallMachine::new(with_lost_call_webhook());
    to_queue(&mut m, '0');
    m.handle(9_000, CallInput::CustomerHangup);
    assert!(lost_calls(&drain(&mut m)).is_empty());
    // Put through to an external number that answered (R3.4): a human took it, nothing.
    let mut setup = with_lost_call_webhook();
    if let Some(q) =
        Arc::make_mut(&mut setup.queues).get_mut(&"billing".parse::<QueueId>().unwrap())
    {
        q.on_max_wait = Some(RuleAction::TransferNumber {
            number: "95598".into(),
            trunk: "carrier".parse().unwrap(),
        });
    }
    let mut m = CallMachine::new(setup);
    to_queue(&mut m, '2');
    drain(&mut m);
    let at = billing_deadline(&m);
    m.handle_timeout(at);
    m.handle(at + 1_000, CallInput::AgentAnswered);
    m.handle(at + 9_000, CallInput::CustomerHangup);
    let out = drain(&mut m);
    assert_eq!(cdr_of(&out).disposition, Disposition::Transferred);
    assert!(lost_calls(&out).is_empty());
}

#[test]
fn interflow_tries_each_target_in_turn_then_the_last_ones_own_rule() {
    let mut s = setup();
    let q = |id: &str| -> QueueId { id.parse().unwrap() };
    Arc::make_mut(&mut s.queues)
        .get_mut(&q("general"))
        .unwrap()
        .on_all_busy = Some(RuleAction::Interflow {
        queues: vec![q("general"), q("billing"), q("outage")],
    });
    let mut m = CallMachine::new(s);
    to_queue(&mut m, '0');
    drain(&mut m);
    let refuse = |m: &mut CallMachine, at: u64, queue: &str, rule: QueueRule| {
        m.handle(
            at,
            CallInput::TurnedAway {
                queue: queue.parse().unwrap(),
                rule,
            },
        );
        drain(m)
    };
    let joins = |out: &[CallOutput]| -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                CallOutput::Enqueue { queue, .. } => Some(queue.to_string()),
                _ => None,
            })
            .collect()
    };
    let out = refuse(&mut m, 5_000, "general", QueueRule::AllBusy);
    assert_eq!(joins(&out), ["billing"], "never back into general itself");
    // billing has no all-busy rule of its own, yet its refusal moves the call on.
    let out = refuse(&mut m, 5_010, "billing", QueueRule::AllBusy);
    assert_eq!(joins(&out), ["outage"]);
    assert!(out.contains(&CallOutput::Dequeue {
        queue: q("billing")
    }));
    let trail: Vec<(&str, QueueRule)> = m
        .cdr_so_far()
        .rules
        .iter()
        .map(|r| (r.queue.as_str(), r.rule))
        .collect();
    assert_eq!(
        trail,
        [
            ("general", QueueRule::AllBusy),
            ("billing", QueueRule::AllBusy)
        ]
    );
    // outage refuses too: its own rule (unset: release).
    let out = refuse(&mut m, 5_020, "outage", QueueRule::MaxQueued);
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("max_queued"));
}

fn customer(tags: &[&str], level: u8) -> Option<model::Customer> {
    Some(model::Customer {
        tenant: "gd".parse().unwrap(),
        number: "13800000000".parse().unwrap(),
        name: String::new(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        level,
    })
}

fn rule(json: serde_json::Value) -> model::RoutingRule {
    serde_json::from_value(json).expect("a routing rule")
}

fn enqueues(out: &[CallOutput]) -> Vec<(String, u8, CallNeeds)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Enqueue {
                queue,
                priority,
                needs,
                ..
            } => Some((queue.to_string(), *priority, needs.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_caller_tag_sends_the_call_straight_to_its_special_queue_in_the_window_only() {
    let mut s = setup();
    s.profile.customer = customer(&["elderly"], 0);
    // 08:00-20:00 China time; the call starts at 10:00 (02:00 UTC) on 2026-11-30, a Monday.
    let monday_10h = 1_796_004_000_000;
    s.started_at_ms = monday_10h;
    s.profile.rules = vec![rule(serde_json::json!({
        "name": "elderly",
        "when": {"caller_tags": ["elderly"], "window": {"from": "08:00", "to": "20:00", "days": [1,2,3,4,5]}},
        "then": {"queue": "general"},
    }))];
    let mut m = CallMachine::new(s.clone());
    m.handle(monday_10h + 100, CallInput::CustomerAnswered);
    let out = drain(&mut m);
    assert_eq!(
        enqueues(&out),
        vec![("general".into(), 0, CallNeeds::default())]
    );
    assert_eq!(m.cdr_so_far().routed_by, vec!["elderly".to_string()]);

    // At 21:00 the rule does not hold: the caller hears the IVR.
    s.started_at_ms = monday_10h + 11 * 3_600_000;
    let mut m = CallMachine::new(s.clone());
    m.handle(s.started_at_ms + 100, CallInput::CustomerAnswered);
    let out = drain(&mut m);
    assert!(enqueues(&out).is_empty());
    assert!(plays(&out).contains(&"welcome".to_string()));
    assert!(m.cdr_so_far().routed_by.is_empty());

    // Without the tag neither.
    s.started_at_ms = monday_10h;
    s.profile.customer = customer(&[], 0);
    let mut m = CallMachine::new(s);
    m.handle(monday_10h + 100, CallInput::CustomerAnswered);
    assert!(enqueues(&drain(&mut m)).is_empty());
}

#[test]
fn a_rule_can_send_a_tagged_caller_to_a_flow_node_after_the_welcome() {
    let mut s = setup();
    s.profile.customer = customer(&["elderly"], 0);
    s.profile.rules = vec![rule(serde_json::json!({
        "name": "elderly-welcome",
        "when": {"caller_tags": ["elderly"]},
        "then": {"flow": {"flow": "main", "node": "to_general"}},
    }))];
    let mut m = CallMachine::new(s);
    m.handle(100, CallInput::CustomerAnswered);
    let out = drain(&mut m);
    assert_eq!(
        enqueues(&out),
        vec![("general".into(), 0, CallNeeds::default())]
    );
}

#[test]
fn a_vip_caller_of_the_ivr_queue_waits_higher_for_senior_agents_then_anyone() {
    let mut s = setup();
    s.profile.customer = customer(&["vip"], 150);
    s.profile.rules = vec![rule(serde_json::json!({
        "name": "vip-billing",
        "when": {"ivr_queue": "billing", "caller_tags": ["vip"]},
        "priority": 200,
        "agent_tags": ["senior"],
        "min_level": 3,
        "relax_after_ms": 30000,
    }))];
    let mut m = CallMachine::new(s.clone());
    to_queue(&mut m, '2');
    let out = drain(&mut m);
    let needs = CallNeeds {
        agent_tags: vec!["senior".into()],
        min_level: 3,
        relax_at_ms: Some(34_000),
        ..CallNeeds::default()
    };
    assert_eq!(enqueues(&out), vec![("billing".into(), 200, needs.clone())]);
    // A takeover re-states the same needs from the CDR.
    let (_, out) = restored_in(s.clone(), &m, 9_000);
    assert_eq!(enqueues(&out), vec![("billing".into(), 200, needs)]);

    // Another queue chosen in the IVR: the rule does not apply; the level still does.
    let mut m = CallMachine::new(s);
    to_queue(&mut m, '0');
    assert_eq!(
        enqueues(&drain(&mut m)),
        vec![("general".into(), 150, CallNeeds::default())]
    );
}

#[test]
fn a_repeat_caller_is_held_for_the_agents_who_served_it() {
    let hour = 3_600_000;
    let now = 100 * hour;
    let past = |at, agent: &str| model::PastCall {
        at_ms: at,
        agent: Some(agent.parse().unwrap()),
    };
    let history = vec![
        past(now - 30 * hour, "1004"), // outside the day
        past(now - 5 * hour, "1002"),
        past(now - 3 * hour, "1001"),
        past(now - 2 * hour, "1002"),
    ];
    let with_mode = |mode: &str, count: u32| {
        let mut s = setup_with(|q| {
            q.repeat_caller = Some(model::RepeatCaller {
                period: model::Period::Day,
                count,
                mode: serde_json::from_value(serde_json::json!(mode)).unwrap(),
                wait_ms: 20_000,
            })
        });
        s.profile.history = history.clone();
        s.started_at_ms = now - 4_000;
        s
    };
    let to_billing = |s: CallSetup| {
        let mut m = CallMachine::new(s);
        m.handle(now - 3_900, CallInput::CustomerAnswered);
        m.handle(now - 1_000, CallInput::PlayDone);
        m.handle(now, CallInput::Digit('2'));
        let out = drain(&mut m);
        (m, enqueues(&out))
    };
    let prefer = |agents: &[&str]| CallNeeds {
        prefer: agents.iter().map(|a| a.parse().unwrap()).collect(),
        prefer_until_ms: now + 20_000,
        ..CallNeeds::default()
    };
    let (m, out) = to_billing(with_mode("last", 2));
    assert_eq!(out, vec![("billing".into(), 0, prefer(&["1002", "1001"]))]);
    let mark = m.cdr_so_far().repeat_caller.clone().expect("a repeat mark");
    assert_eq!(mark.calls, 3);
    // Familiar: 1002 served it twice in the day.
    let (_, out) = to_billing(with_mode("familiar", 3));
    assert_eq!(out, vec![("billing".into(), 0, prefer(&["1002", "1001"]))]);
    // Four calls needed: not a repeat caller.
    let (m, out) = to_billing(with_mode("last", 4));
    assert_eq!(out, vec![("billing".into(), 0, CallNeeds::default())]);
    assert!(m.cdr_so_far().repeat_caller.is_none());
    // A takeover keeps the preference and its deadline.
    let s = with_mode("last", 2);
    let (m, _) = to_billing(s.clone());
    let (_, out) = restored_in(s, &m, now + 5_000);
    assert_eq!(
        enqueues(&out),
        vec![("billing".into(), 0, prefer(&["1002", "1001"]))]
    );
}

fn multi_queue_setup() -> CallSetup {
    let mut s = setup();
    let flow = Arc::make_mut(&mut s.flows)
        .get_mut(&"main".parse().unwrap())
        .unwrap();
    if let Some(FlowNode::Queue { also, .. }) = flow.nodes.get_mut("to_general") {
        *also = vec!["billing".parse().unwrap(), "outage".parse().unwrap()];
    }
    s
}

fn queues_of(out: &[CallOutput]) -> (Vec<String>, Vec<String>) {
    let joined = out
        .iter()
        .filter_map(|o| match o {
            CallOutput::Enqueue { queue, .. } => Some(queue.to_string()),
            _ => None,
        })
        .collect();
    let left = out
        .iter()
        .filter_map(|o| match o {
            CallOutput::Dequeue { queue } => Some(queue.to_string()),
            _ => None,
        })
        .collect();
    (joined, left)
}

#[test]
fn a_call_waits_in_several_queues_and_the_first_agent_of_any_takes_it() {
    let mut m = CallMachine::new(multi_queue_setup());
    to_queue(&mut m, '0');
    let (joined, _) = queues_of(&drain(&mut m));
    assert_eq!(joined, vec!["general", "billing", "outage"]);
    assert_eq!(m.waiting_in().len(), 3);
    // billing's agent: the call leaves the other two while it rings.
    m.handle(
        5_000,
        CallInput::Offer {
            queue: "billing".parse().unwrap(),
            agent: "1003".parse().unwrap(),
            agent_node: 2,
            extension: "1003".parse().unwrap(),
        },
    );
    let (_, left) = queues_of(&drain(&mut m));
    assert_eq!(left, vec!["general", "outage"]);
    match m.phase() {
        Some(CallPhase::Offering { queue, also, .. }) => {
            assert_eq!(queue.as_str(), "billing");
            assert_eq!(also.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    // An offer of another queue crossing it is refused.
    m.handle(
        5_010,
        CallInput::Offer {
            queue: "outage".parse().unwrap(),
            agent: "1004".parse().unwrap(),
            agent_node: 2,
            extension: "1004".parse().unwrap(),
        },
    );
    assert!(drain(&mut m).contains(&CallOutput::OfferDone {
        queue: "outage".parse().unwrap(),
        agent: "1004".parse().unwrap(),
        answered: false
    }));
    // No answer: back in all three, at the original place.
    m.handle(
        20_000,
        CallInput::AgentFailed {
            no_answer: true,
            reason: "no answer".into(),
        },
    );
    let out = drain(&mut m);
    let (mut joined, _) = queues_of(&out);
    joined.sort();
    assert_eq!(joined, vec!["general", "outage"]);
    assert!(out.iter().all(|o| match o {
        CallOutput::Enqueue { enqueued_at_ms, .. } => *enqueued_at_ms == 4_000,
        _ => true,
    }));
    assert_eq!(m.waiting_in().len(), 3);
    // outage's agent answers: the CDR names outage.
    m.handle(
        21_000,
        CallInput::Offer {
            queue: "outage".parse().unwrap(),
            agent: "1005".parse().unwrap(),
            agent_node: 3,
            extension: "1005".parse().unwrap(),
        },
    );
    m.handle(22_000, CallInput::AgentAnswered);
    m.handle(30_000, CallInput::CustomerHangup);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.queue.as_ref().map(|q| q.as_str()), Some("outage"));
}

#[test]
fn queues_are_added_and_removed_and_the_priority_changed_while_the_call_waits() {
    let mut m = CallMachine::new(setup());
    to_queue(&mut m, '0');
    drain(&mut m);
    let billing: QueueId = "billing".parse().unwrap();
    let general: QueueId = "general".parse().unwrap();
    let q = m
        .requeue(5_000, std::slice::from_ref(&billing), &[], Some(9))
        .unwrap();
    assert_eq!(q, vec![general.clone(), billing.clone()]);
    let out = drain(&mut m);
    assert!(out.iter().any(|o| matches!(o, CallOutput::Enqueue { queue, priority: 9, arriving: true, enqueued_at_ms: 4_000, .. } if *queue == billing)));
    assert!(out.iter().any(|o| matches!(o, CallOutput::Enqueue { queue, priority: 9, arriving: false, .. } if *queue == general)));
    // A takeover keeps both queues and the priority.
    let (r, out) = restored(&m, 6_000);
    assert_eq!(r.waiting_in(), vec![general.clone(), billing.clone()]);
    assert_eq!(queues_of(&out).0, vec!["general", "billing"]);
    // Removing the first queue makes the other the call's queue (its music and rules).
    let q = m
        .requeue(7_000, &[], std::slice::from_ref(&general), None)
        .unwrap();
    assert_eq!(q, vec![billing.clone()]);
    let (joined, left) = queues_of(&drain(&mut m));
    assert_eq!(
        (joined, left),
        (vec!["billing".to_string()], vec!["general".to_string()])
    );
    assert!(
        m.requeue(8_000, &[], std::slice::from_ref(&billing), None)
            .is_err(),
        "one queue at least"
    );
    assert!(m
        .requeue(8_000, &["nosuch".parse().unwrap()], &[], None)
        .is_err());
    // A queue that refuses the added call is simply dropped.
    m.requeue(9_000, std::slice::from_ref(&general), &[], None)
        .unwrap();
    drain(&mut m);
    m.handle(
        9_001,
        CallInput::TurnedAway {
            queue: general.clone(),
            rule: QueueRule::MaxQueued,
        },
    );
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.waiting_in(), vec![billing]);
    // Hanging up leaves every queue.
    m.requeue(9_500, &[general], &[], None).unwrap();
    drain(&mut m);
    m.handle(10_000, CallInput::CustomerHangup);
    let (_, mut left) = queues_of(&drain(&mut m));
    left.sort();
    assert_eq!(left, vec!["billing", "general"]);
}

fn with_voicemail() -> CallSetup {
    setup_with(|q| {
        q.voicemail = Some(model::VoicemailBox {
            key: '5',
            prompt: "welcome".parse().unwrap(),
            max_ms: 10_000,
            thanks: Some("timeout".parse().unwrap()),
        })
    })
}

#[test]
fn a_waiting_caller_leaves_a_message_ended_by_hash_or_its_time() {
    // `#` after 3 s.
    let mut m = CallMachine::new(with_voicemail());
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(6_000, CallInput::Digit('5'));
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Dequeue {
        queue: "billing".parse().unwrap()
    }));
    assert_eq!(plays(&out), vec!["welcome".to_string()]);
    assert_eq!(m.state_name(), "voicemail");
    assert_eq!(m.poll_timeout(), None, "no deadline while the prompt plays");
    m.handle(8_000, CallInput::PlayDone);
    assert!(drain(&mut m).contains(&CallOutput::RecordVoicemail));
    assert_eq!(m.poll_timeout(), Some(18_000));
    m.handle(8_001, CallInput::Recording { id: "1-1".into() });
    m.handle(11_000, CallInput::Digit('#'));
    assert_eq!(plays(&drain(&mut m)), vec!["timeout".to_string()]);
    m.handle(12_000, CallInput::PlayDone);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(cdr.reason.as_deref(), Some("voicemail"));
    assert_eq!(cdr.recording_id.as_deref(), Some("1-1"));
    assert_eq!(
        cdr.voicemail,
        Some(model::VoicemailMark {
            queue: "billing".parse().unwrap(),
            started_at_ms: 8_000,
            duration_ms: 3_000
        })
    );
    assert_eq!(cdr.wait_ms, 2_000);

    // The time runs out at 10 s.
    let mut m = CallMachine::new(with_voicemail());
    to_queue(&mut m, '2');
    m.handle(6_000, CallInput::Digit('5'));
    m.handle(8_000, CallInput::PlayDone);
    m.handle(18_000, CallInput::Digit('4'));
    assert_eq!(
        m.state_name(),
        "recording_voicemail",
        "other keys are part of the message"
    );
    m.handle_timeout(18_000);
    m.handle(19_000, CallInput::PlayDone);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.voicemail.map(|v| v.duration_ms), Some(10_000));

    // Hanging up while recording leaves the message; during the prompt, none.
    let mut m = CallMachine::new(with_voicemail());
    to_queue(&mut m, '2');
    m.handle(6_000, CallInput::Digit('5'));
    m.handle(8_000, CallInput::PlayDone);
    m.handle(9_500, CallInput::CustomerHangup);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(
        (cdr.disposition, cdr.voicemail.map(|v| v.duration_ms)),
        (Disposition::Released, Some(1_500))
    );
    let mut m = CallMachine::new(with_voicemail());
    to_queue(&mut m, '2');
    m.handle(6_000, CallInput::Digit('5'));
    m.handle(7_000, CallInput::CustomerHangup);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(
        (cdr.disposition, cdr.voicemail),
        (Disposition::Abandoned, None)
    );
}

#[test]
fn the_voicemail_key_while_an_agent_rings_frees_the_agent_first() {
    let mut m = CallMachine::new(with_voicemail());
    to_queue(&mut m, '2');
    offer_to(&mut m, 5_000, "1003");
    drain(&mut m);
    m.handle(5_500, CallInput::Digit('5'));
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::CancelAgent));
    assert!(out.contains(&CallOutput::OfferDone {
        queue: "billing".parse().unwrap(),
        agent: "1003".parse().unwrap(),
        answered: false
    }));
    assert_eq!(m.state_name(), "voicemail");
    // A takeover during the prompt plays it again.
    let (p, out) = restored_in(with_voicemail(), &m, 6_500);
    assert_eq!(plays(&out), vec!["welcome".to_string()]);
    assert_eq!(p.state_name(), "voicemail");
    // A takeover during the message records the rest until the original end, in a part of
    // the new owner's; `#` there ends it, and the message counts from its first start.
    m.handle(7_000, CallInput::PlayDone);
    assert_eq!(m.state_name(), "recording_voicemail");
    let (mut m, out) = restored_in(with_voicemail(), &m, 9_000);
    assert!(out.contains(&CallOutput::RecordVoicemail), "{out:?}");
    assert_eq!(m.poll_timeout(), Some(17_000));
    m.handle(12_000, CallInput::Digit('#'));
    m.handle(13_000, CallInput::PlayDone);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.reason.as_deref(), Some("voicemail"));
    assert_eq!(
        cdr.voicemail.map(|v| (v.started_at_ms, v.duration_ms)),
        Some((7_000, 5_000))
    );
    // Past its end when taken over: the message is complete.
    let mut late = CallMachine::new(with_voicemail());
    to_queue(&mut late, '2');
    drain(&mut late);
    late.handle(6_000, CallInput::Digit('5'));
    late.handle(7_000, CallInput::PlayDone);
    let (mut late, out) = restored_in(with_voicemail(), &late, 30_000);
    assert!(!out.contains(&CallOutput::RecordVoicemail));
    assert!(plays(&out).contains(&"timeout".to_string()), "the thanks");
    late.handle(31_000, CallInput::PlayDone);
    let cdr = cdr_of(&drain(&mut late));
    assert_eq!(
        cdr.voicemail.map(|v| v.duration_ms),
        Some(10_000),
        "the message's own length, not the time to the takeover"
    );
}

#[test]
fn a_rule_transfers_the_call_to_one_agent_who_alone_is_offered_it() {
    let setup = setup_with(|q| {
        q.on_max_wait = Some(RuleAction::TransferAgent {
            agent: "1002".parse().unwrap(),
            queue: "general".parse().unwrap(),
        })
    });
    let mut m = CallMachine::new(setup.clone());
    to_queue(&mut m, '2');
    drain(&mut m);
    let at = billing_deadline(&m);
    m.handle_timeout(at);
    let only_1002 = CallNeeds {
        prefer: vec!["1002".parse().unwrap()],
        prefer_until_ms: model::PREFER_ALWAYS,
        ..CallNeeds::default()
    };
    assert_eq!(
        enqueues(&drain(&mut m)),
        vec![("general".into(), 0, only_1002.clone())]
    );
    assert_eq!(only_1002.next_change(at), None, "it never widens by itself");
    // After a takeover the call still waits for that agent only.
    let (_, out) = restored_in(setup, &m, at + 5_000);
    assert_eq!(enqueues(&out), vec![("general".into(), 0, only_1002)]);
}

fn with_callback(key: Option<char>, after_ms: Option<u64>) -> CallSetup {
    setup_with(|q| {
        q.callback = Some(model::CallbackOffer {
            trunk: "carrier".parse().unwrap(),
            key,
            after_ms,
            prompt: None,
        })
    })
}

#[test]
fn a_caller_who_chooses_offline_waiting_is_called_back_when_an_agent_answers() {
    let mut m = CallMachine::new(with_callback(Some('3'), None));
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(6_000, CallInput::Digit('3'));
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::HangupCustomer), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, CallOutput::Dequeue { .. })),
        "keeps its place"
    );
    assert!(matches!(
        m.phase(),
        Some(CallPhase::Queued { callback: true, .. })
    ));
    // The offer rings the agent with the virtual-call number.
    offer_to(&mut m, 9_000, "1003");
    let out = drain(&mut m);
    assert!(out.iter().any(
        |o| matches!(o, CallOutput::DialAgent { callback_to: Some(n), .. } if n == "13800000000")
    ));
    m.handle(9_100, CallInput::AgentRinging);
    m.handle(10_000, CallInput::AgentAnswered);
    let out = drain(&mut m);
    assert!(
        out.contains(&CallOutput::DialCustomer {
            number: "13800000000".into(),
            trunk: "carrier".parse().unwrap(),
            ring_timeout_ms: 15_000
        }),
        "{out:?}"
    );
    assert!(
        !out.contains(&CallOutput::Bridge),
        "not before the customer answers"
    );
    assert_eq!(m.state_name(), "calling_back");
    m.handle(13_000, CallInput::CalledBack);
    assert!(drain(&mut m).contains(&CallOutput::Bridge));
    m.handle(40_000, CallInput::CustomerHangup);
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.disposition, Disposition::Answered);
    let mark = cdr.callback.expect("a callback mark");
    assert_eq!(
        (
            mark.by.as_str(),
            mark.requested_at_ms,
            mark.dialled_at_ms,
            mark.answered_at_ms
        ),
        ("key", 6_000, Some(10_000), Some(13_000))
    );
}

#[test]
fn an_early_hang_up_keeps_the_place_only_after_the_queues_time() {
    // Hung up after 5 s with after_ms 3 s: virtual, still queued, survives a takeover.
    let setup = with_callback(None, Some(3_000));
    let mut m = CallMachine::new(setup.clone());
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle(9_000, CallInput::CustomerHangup);
    assert!(drain(&mut m).is_empty(), "no dequeue, no CDR");
    assert_eq!(m.state_name(), "queued");
    let (r, out) = restored_in(setup.clone(), &m, 12_000);
    assert!(matches!(
        r.phase(),
        Some(CallPhase::Queued { callback: true, .. })
    ));
    assert!(
        !out.iter().any(|o| matches!(o, CallOutput::Play { .. })),
        "no music to nobody"
    );
    // The callback fails: the agent is freed and the call ends released.
    let mut r = r;
    offer_to(&mut r, 13_000, "1003");
    r.handle(14_000, CallInput::AgentAnswered);
    drain(&mut r);
    r.handle(
        15_000,
        CallInput::CallbackFailed {
            reason: "486".into(),
        },
    );
    let out = drain(&mut r);
    assert!(out.iter().any(|o| matches!(
        o,
        CallOutput::Agent {
            notice: AgentNotice::Ended { .. },
            ..
        }
    )));
    let cdr = cdr_of(&out);
    assert_eq!(
        (cdr.disposition, cdr.reason.as_deref()),
        (Disposition::Released, Some("486"))
    );
    // Hung up after 2 s: abandoned as usual.
    let mut m = CallMachine::new(setup);
    to_queue(&mut m, '2');
    m.handle(6_000, CallInput::CustomerHangup);
    assert_eq!(cdr_of(&drain(&mut m)).disposition, Disposition::Abandoned);
}

fn with_external() -> CallSetup {
    setup_with(|q| {
        q.on_max_wait = Some(RuleAction::TransferNumber {
            number: "95598".into(),
            trunk: "carrier".parse().unwrap(),
        })
    })
}

#[test]
fn a_rule_transfers_the_call_to_an_external_number_which_is_bridged_on_answer() {
    let mut m = CallMachine::new(with_external());
    to_queue(&mut m, '2');
    drain(&mut m);
    let at = billing_deadline(&m);
    m.handle_timeout(at);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::Dequeue {
        queue: "billing".parse().unwrap()
    }));
    assert!(out.contains(&CallOutput::DialOut {
        number: "95598".into(),
        trunk: "carrier".parse().unwrap()
    }));
    assert_eq!(m.state_name(), "dialling_out");
    assert!(m.awaits_answer());
    assert_eq!(m.poll_timeout(), Some(at + model::EXTERNAL_RING_MS));
    m.handle(at + 1_000, CallInput::AgentRinging);
    m.handle(at + 3_000, CallInput::AgentAnswered);
    assert_eq!(drain(&mut m), vec![CallOutput::Bridge]);
    assert_eq!(m.state_name(), "external");
    assert_eq!(
        m.phase(),
        Some(CallPhase::External {
            number: "95598".into(),
            trunk: "carrier".parse().unwrap(),
            answered: true
        })
    );
    // A takeover bridges the answered transfer again.
    let (restored, out) = restored_in(with_external(), &m, at + 5_000);
    assert_eq!(restored.state_name(), "external");
    assert!(out.contains(&CallOutput::Bridge));
    // The external party hangs up: the caller is hung up, the CDR says transferred.
    m.handle(at + 63_000, CallInput::AgentHangup);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::HangupCustomer));
    assert!(!out.contains(&CallOutput::HangupAgent));
    let cdr = cdr_of(&out);
    assert_eq!(cdr.disposition, Disposition::Transferred);
    assert_eq!(cdr.hangup_by, HangupBy::Agent);
    assert_eq!(cdr.talk_ms, 60_000);
    assert_eq!(cdr.agent, None);
    let mark = cdr.external.expect("the external mark");
    assert_eq!(
        (mark.dialled_at_ms, mark.answered_at_ms),
        (at, Some(at + 3_000))
    );
    assert_eq!(cdr.wait_ms, at - cdr.enqueued_at_ms.unwrap());
}

#[test]
fn an_external_number_that_refuses_or_never_answers_releases_the_call_with_the_reason() {
    let mut m = CallMachine::new(with_external());
    to_queue(&mut m, '2');
    drain(&mut m);
    let at = billing_deadline(&m);
    m.handle_timeout(at);
    drain(&mut m);
    m.handle(
        at + 500,
        CallInput::AgentFailed {
            no_answer: true,
            reason: "answered 486".into(),
        },
    );
    let cdr = cdr_of(&drain(&mut m));
    assert_eq!(cdr.disposition, Disposition::Released);
    assert_eq!(
        cdr.reason.as_deref(),
        Some("transfer to 95598 failed: answered 486")
    );

    let mut m = CallMachine::new(with_external());
    to_queue(&mut m, '2');
    drain(&mut m);
    m.handle_timeout(at);
    drain(&mut m);
    // Ringing when its node died: the new owner dials again (the old INVITE is cancelled).
    let (mut m, out) = restored_in(with_external(), &m, at + 2_000);
    assert!(out.iter().any(|o| matches!(o, CallOutput::DialOut { .. })));
    m.handle_timeout(at + 2_000 + model::EXTERNAL_RING_MS);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::CancelAgent));
    assert_eq!(
        cdr_of(&out).reason.as_deref(),
        Some("transfer to 95598 failed: it did not answer")
    );
    assert_eq!(
        cdr_of(&out).external.unwrap().dialled_at_ms,
        at,
        "first dial kept"
    );
}

#[test]
fn a_caller_who_hangs_up_while_the_external_number_rings_abandons_and_cancels_it() {
    let mut m = CallMachine::new(with_external());
    to_queue(&mut m, '2');
    drain(&mut m);
    let at = billing_deadline(&m);
    m.handle_timeout(at);
    drain(&mut m);
    m.handle(at + 1_000, CallInput::CustomerHangup);
    let out = drain(&mut m);
    assert!(out.contains(&CallOutput::CancelAgent));
    assert_eq!(cdr_of(&out).disposition, Disposition::Abandoned);
    // A late answer is no longer wanted (the actor hangs it up).
    assert!(!m.awaits_answer());
}

#[test]
fn calls_of_a_tenant_share_its_configuration_until_it_changes() {
    let mut state = sample_state();
    let route = model::routing::resolve(&state, "075595598").unwrap();
    let configs = TenantConfigs::default();
    let (flows, queues) = configs.flows_and_queues(&state, &route);
    let (flows_2, queues_2) = configs.flows_and_queues(&state, &route);
    assert!(Arc::ptr_eq(&flows, &flows_2) && Arc::ptr_eq(&queues, &queues_2));
    assert_eq!(
        (&flows, &queues),
        (
            &flows_and_queues(&state, &route).0,
            &flows_and_queues(&state, &route).1
        )
    );

    // A configuration change: the next call gets the new queue, the earlier calls keep what
    // they arrived under.
    let billing: QueueId = "billing".parse().unwrap();
    let mut queue = queues[&billing].clone();
    queue.max_queued = Some(7);
    let update = model::Command::Update {
        item: model::ConfigItem::Queue(Box::new(queue)),
    };
    assert_eq!(state.apply(&update).error, None);
    let (flows_3, queues_3) = configs.flows_and_queues(&state, &route);
    assert!(!Arc::ptr_eq(&queues, &queues_3));
    assert_eq!(queues_3[&billing].max_queued, Some(7));
    assert_ne!(queues[&billing].max_queued, Some(7));
    assert_eq!(flows_3, flows);

    // Another tenant, at the same version: its own configuration, not the first tenant's.
    let other = model::routing::resolve(&state, "077195598").unwrap();
    assert_ne!(other.tenant, route.tenant);
    let (other_flows, other_queues) = configs.flows_and_queues(&state, &other);
    assert!(!other_queues.is_empty() && !other_flows.is_empty());
    assert!(other_queues.values().all(|q| q.tenant == other.tenant));
    assert!(other_flows.values().all(|f| f.tenant == other.tenant));
    let (_, queues_4) = configs.flows_and_queues(&state, &route);
    assert!(Arc::ptr_eq(&queues_3, &queues_4), "both tenants are kept");
    assert!(queues_4.values().all(|q| q.tenant == route.tenant));
}
