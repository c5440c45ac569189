use super::*;
use crate::routing::{resolve, RouteError};
use crate::state::key;
use rand::SeedableRng;
use std::sync::Arc;

fn sample_state() -> (ReplicatedState, sample::SampleInfo) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (commands, info) = sample::sample(&mut rng);
    let mut state = ReplicatedState::default();
    for c in &commands {
        let outcome = state.apply(c);
        assert_eq!(outcome.error, None, "sample command {c:?}");
    }
    (state, info)
}

#[test]
fn sample_applies_cleanly_and_routes_by_landing_code() {
    let (state, info) = sample_state();
    assert_eq!(state.tenants.len(), 5);
    assert_eq!(state.queues.len(), 20);
    assert_eq!(state.agents.len(), 50);
    assert_eq!(info.tenants[0].agents.len(), 10);
    let gd = resolve(&state, "075595598").expect("routes");
    assert_eq!(gd.tenant.as_str(), "gd");
    assert_eq!(gd.landing_code.as_deref(), Some("0755"));
    assert_eq!(
        resolve(&state, "02095598").expect("routes").tenant.as_str(),
        "gd"
    );
    assert_eq!(
        resolve(&state, "+8687195598")
            .expect("routes")
            .tenant
            .as_str(),
        "yn"
    );
    assert_eq!(
        resolve(&state, "089895598")
            .expect("routes")
            .tenant
            .as_str(),
        "hi"
    );
    assert_eq!(resolve(&state, "95598"), Err(RouteError::Ambiguous));
    assert_eq!(resolve(&state, "0999995598"), Err(RouteError::NoRoute));
}

#[test]
fn references_are_checked_and_deletes_blocked_while_in_use() {
    let (mut state, _) = sample_state();
    let gd: TenantId = "gd".parse().unwrap();
    let orphan = Agent {
        tenant: gd.clone(),
        id: "2001".parse().unwrap(),
        name: "x".into(),
        skills: vec!["nope".parse().unwrap()],
        role: AgentRole::Agent,
        takes_calls: None,
        levels: Default::default(),
        tags: Vec::new(),
        group: None,
        hotline: None,
        permissions: None,
    };
    let out = state.apply(&Command::Create {
        item: ConfigItem::Agent(orphan),
    });
    assert!(matches!(out.error, Some(ApplyError::NotFound(_))));
    let out = state.apply(&Command::Delete {
        key: ConfigKey::Queue {
            tenant: gd.clone(),
            id: "billing".parse().unwrap(),
        },
    });
    assert!(matches!(out.error, Some(ApplyError::InUse(_))), "{out:?}");
    let out = state.apply(&Command::Delete {
        key: ConfigKey::Tenant { id: gd.clone() },
    });
    assert!(matches!(out.error, Some(ApplyError::InUse(_))));
    // A landing code cannot be claimed by a second tenant.
    let mut gx = state.tenants["gx"].clone();
    gx.landing_codes.push("020".into());
    let out = state.apply(&Command::Update {
        item: ConfigItem::Tenant(gx),
    });
    assert!(matches!(out.error, Some(ApplyError::InUse(_))));
    let before = state.clone();
    let out = state.apply(&Command::Create {
        item: ConfigItem::Tenant(state.tenants["gd"].clone()),
    });
    assert!(matches!(out.error, Some(ApplyError::AlreadyExists(_))));
    assert_eq!(before, state, "a rejected command changes nothing");
}

#[test]
fn bindings_expire_and_dual_registration_keeps_both_nodes() {
    let (mut state, _) = sample_state();
    let gd: TenantId = "gd".parse().unwrap();
    let ext: ExtensionId = "1001".parse().unwrap();
    let binding = |node, expires| Binding {
        tenant: gd.clone(),
        extension: ext.clone(),
        contact: "sip:1001@127.0.0.1:6000".into(),
        source: "127.0.0.1:6000".parse().unwrap(),
        transport: "udp".into(),
        node,
        call_id: "c".into(),
        cseq: 1,
        expires_at_ms: expires,
    };
    state.apply(&Command::Register {
        binding: binding(1, 10_000),
        now_ms: 0,
    });
    state.apply(&Command::Register {
        binding: binding(2, 20_000),
        now_ms: 0,
    });
    assert_eq!(state.live_bindings(&gd, &ext, 5_000).len(), 2);
    assert_eq!(state.live_bindings(&gd, &ext, 15_000).len(), 1);
    state.apply(&Command::Unregister {
        tenant: gd.clone(),
        extension: ext.clone(),
        node: 2,
        contact: None,
    });
    assert_eq!(state.live_bindings(&gd, &ext, 5_000).len(), 1);
    let out = state.apply(&Command::Register {
        binding: Binding {
            extension: "9999".parse().unwrap(),
            ..binding(1, 1)
        },
        now_ms: 0,
    });
    assert!(out.error.is_some(), "unknown extensions cannot register");
}

#[test]
fn agent_sessions_ignore_stale_versions_and_cdrs_are_idempotent() {
    let (mut state, _) = sample_state();
    let gd: TenantId = "gd".parse().unwrap();
    let session = |version, status| AgentSession {
        tenant: gd.clone(),
        agent: "1001".parse().unwrap(),
        extension: "1001".parse().unwrap(),
        status,
        since_ms: 0,
        idle_since_ms: 0,
        calls_answered: 0,
        away_ms: Default::default(),
        state_ms: Default::default(),
        owner: 1,
        version,
        fence: None,
    };
    state.apply(&Command::PutAgentSession {
        session: session(2, AgentStatus::Ready),
    });
    state.apply(&Command::PutAgentSession {
        session: session(1, AgentStatus::SignedOut),
    });
    assert_eq!(
        state.agent_sessions[&key(&gd, "1001")].status,
        AgentStatus::Ready
    );
    let cdr = Cdr {
        call_id: CallId("1-1-x".into()),
        tenant: Some(gd.clone()),
        ..sample_cdr()
    };
    state.apply(&Command::RecordCdr {
        cdr: Arc::new(cdr.clone()),
        fence: None,
    });
    state.apply(&Command::RecordCdr {
        cdr: Arc::new(Cdr {
            ended_at_ms: 99,
            ..cdr
        }),
        fence: None,
    });
    assert_eq!(state.cdrs.len(), 1);
    assert_eq!(
        state.cdrs["1-1-x"].ended_at_ms, 1,
        "the first CDR of a call wins"
    );
}

#[test]
fn state_round_trips_through_json_for_snapshots() {
    let (state, _) = sample_state();
    let json = serde_json::to_vec(&state).unwrap();
    let back: ReplicatedState = serde_json::from_slice(&json).unwrap();
    assert_eq!(state, back);
}

#[test]
fn every_sample_command_round_trips_through_json() {
    // The leader applies the commands it appended as they are (the log store keeps them
    // decoded), the followers as decoded from JSON: they must be the same commands.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (commands, _) = crate::sample::sample(&mut rng);
    let fence = Fence { node: 2, epoch: 1 };
    let checkpoint = crate::bench::call_checkpoint("2-1-x", fence, 3, 1_700_000_000_000);
    let cdr = Command::RecordCdr {
        cdr: Arc::new(checkpoint.cdr.clone()),
        fence: Some(fence),
    };
    let put = Command::PutCall {
        checkpoint: Arc::new(checkpoint),
    };
    let batch = Command::Batch {
        commands: commands.iter().cloned().chain([put, cdr]).collect(),
    };
    for command in commands.iter().chain([&batch]) {
        let json = serde_json::to_vec(command).unwrap();
        let back: Command = serde_json::from_slice(&json).unwrap();
        assert_eq!(&back, command);
    }
}

#[test]
fn a_group_applies_in_order_with_an_outcome_per_command() {
    let tenant = |name: &str| Tenant {
        id: TenantId::new("gz").unwrap(),
        name: name.into(),
        domain: "gz.callgrid.test".into(),
        landing_codes: vec!["851".into()],
        access_codes: vec![],
        routing: Vec::new(),
    };
    let create = |name: &str| Command::Create {
        item: ConfigItem::Tenant(tenant(name)),
    };
    let update = |name: &str| Command::Update {
        item: ConfigItem::Tenant(tenant(name)),
    };
    let delete = Command::Delete {
        key: ConfigKey::Tenant {
            id: TenantId::new("gz").unwrap(),
        },
    };
    // Order matters: an update before the create is refused, one after it applies; a batch
    // inside the group reports its own first failure.
    let group = Command::Group {
        commands: [
            update("early"),
            create("Guizhou"),
            update("Guizhou Province"),
            create("again"),
            Command::Batch {
                commands: vec![update("in a batch"), create("in a batch")],
            },
        ]
        .into_iter()
        .map(Arc::new)
        .collect(),
    };
    let json = serde_json::to_vec(&group).unwrap();
    assert_eq!(serde_json::from_slice::<Command>(&json).unwrap(), group);

    let mut state = ReplicatedState::default();
    let outcome = state.apply(&group);
    assert_eq!(
        outcome.error, None,
        "a group's own outcome carries no error"
    );
    let errors: Vec<_> = outcome.parts.iter().map(|p| p.error.clone()).collect();
    assert!(
        matches!(
            errors.as_slice(),
            [
                Some(ApplyError::NotFound(_)),
                None,
                None,
                Some(ApplyError::AlreadyExists(_)),
                Some(ApplyError::AlreadyExists(_)),
            ]
        ),
        "{errors:?}"
    );
    assert_eq!(state.tenants["gz"].name, "in a batch");
    let json = serde_json::to_vec(&outcome).unwrap();
    assert_eq!(serde_json::from_slice::<Outcome>(&json).unwrap(), outcome);

    // The same commands as entries of their own leave the same state.
    let mut one_by_one = ReplicatedState::default();
    if let Command::Group { commands } = &group {
        for c in commands {
            one_by_one.apply(c);
        }
    }
    assert_eq!(state, one_by_one);
    assert_eq!(state.apply(&delete).error, None);
}

#[test]
fn passwords_follow_policy() {
    assert!(validate_password("abc").is_err());
    assert!(validate_password("abcdefgh1").is_err());
    assert!(validate_password("abcdefg1!").is_ok());
}

fn checkpoint(call: &str, fence: Fence, version: u64, cdr: &Cdr) -> CallCheckpoint {
    let leg = LegCheckpoint {
        sip_call_id: "abc".into(),
        local_tag: "l".into(),
        remote_tag: "r".into(),
        local_uri: "<sip:95598@x>".into(),
        remote_uri: "<sip:138@y>".into(),
        local_seq: 0,
        remote_seq: Some(1),
        remote_target: "sip:138@127.0.0.1:5000".into(),
        route_set: vec![],
        peer: "127.0.0.1:5000".into(),
        transport: "udp".into(),
        remote_sdp: None,
    };
    CallCheckpoint {
        call_id: CallId(call.into()),
        fence,
        version,
        at_ms: version,
        route: crate::routing::Route {
            tenant: "gd".parse().unwrap(),
            access_code: "95598".into(),
            landing_code: None,
            entry: Entry::Queue("billing".parse().unwrap()),
        },
        phase: CallPhase::Setup,
        cdr: Cdr {
            call_id: CallId(call.into()),
            ..cdr.clone()
        },
        customer: leg,
        agent: None,
        ringing: None,
    }
}

#[test]
fn liveness_epochs_fence_a_node_declared_down() {
    let (mut state, _) = sample_state();
    let hb = |node, epoch, at_ms| Command::Heartbeat { node, epoch, at_ms };
    assert!(state.apply(&hb(2, 0, 10)).error.is_none());
    assert!(!state.is_down(2));
    // A down declaration for a stale epoch is refused.
    assert!(state
        .apply(&Command::NodeDown {
            node: 2,
            epoch: 7,
            at_ms: 20
        })
        .error
        .is_some());
    assert!(state
        .apply(&Command::NodeDown {
            node: 2,
            epoch: 0,
            at_ms: 20
        })
        .error
        .is_none());
    assert!(state.is_down(2));
    let old = Fence { node: 2, epoch: 0 };
    assert!(state.fenced_out(old));
    // Heartbeats of the old epoch no longer count; the node must rejoin.
    assert!(state.apply(&hb(2, 0, 30)).error.is_some());
    assert!(state
        .apply(&Command::NodeUp { node: 2, at_ms: 40 })
        .error
        .is_none());
    assert_eq!(state.epoch(2), 1);
    assert!(!state.is_down(2));
    assert!(
        state.fenced_out(old),
        "the old epoch stays fenced after rejoining"
    );
    assert!(!state.fenced_out(Fence { node: 2, epoch: 1 }));
    // A node never heard of is not fenced (first start).
    assert!(!state.fenced_out(Fence { node: 9, epoch: 0 }));
    // A call checkpointed under the old epoch is an orphan with a stale fence now (its node
    // dropped it when declared down); one under the new epoch belongs to the node.
    let cdr = sample_cdr();
    assert_eq!(
        state.orphaned(&checkpoint("c1", old, 1, &cdr)),
        Some((40, true)),
        "the gap starts when the node rejoined (NodeUp at 40)"
    );
    assert_eq!(
        state.orphaned(&checkpoint("c1", Fence { node: 2, epoch: 1 }, 1, &cdr)),
        None
    );
    assert_eq!(
        state.orphaned(&checkpoint("c1", Fence { node: 9, epoch: 0 }, 1, &cdr)),
        None
    );
}

#[test]
fn call_checkpoints_version_fence_and_end_with_the_cdr() {
    let (mut state, _) = sample_state();
    let cdr = sample_cdr();
    let f1 = Fence { node: 1, epoch: 0 };
    let put = |c: CallCheckpoint| Command::PutCall {
        checkpoint: Arc::new(c),
    };
    state.apply(&put(checkpoint("1-9-a", f1, 2, &cdr)));
    state.apply(&put(checkpoint("1-9-a", f1, 1, &cdr)));
    assert_eq!(
        state.calls["1-9-a"].version, 2,
        "an older checkpoint never wins"
    );
    // The owner is declared down: its late checkpoints are refused, the new owner's apply.
    state.apply(&Command::Heartbeat {
        node: 1,
        epoch: 0,
        at_ms: 1,
    });
    state.apply(&Command::NodeDown {
        node: 1,
        epoch: 0,
        at_ms: 5,
    });
    assert!(state
        .apply(&put(checkpoint("1-9-a", f1, 9, &cdr)))
        .error
        .is_some());
    let f2 = Fence { node: 2, epoch: 0 };
    state.apply(&put(checkpoint("1-9-a", f2, 3, &cdr)));
    assert_eq!(state.calls["1-9-a"].fence, f2);
    // A fenced CDR is refused; the owner's CDR ends the call and removes its checkpoint.
    let end = |fence| Command::RecordCdr {
        cdr: Arc::new(Cdr {
            call_id: CallId("1-9-a".into()),
            ..cdr.clone()
        }),
        fence: Some(fence),
    };
    assert!(state.apply(&end(f1)).error.is_some());
    assert!(state.calls.contains_key("1-9-a"));
    assert!(state.apply(&end(f2)).error.is_none());
    assert!(!state.calls.contains_key("1-9-a"));
    // A late checkpoint after the CDR does not resurrect the call.
    state.apply(&put(checkpoint("1-9-a", f2, 4, &cdr)));
    assert!(!state.calls.contains_key("1-9-a"));
}

fn sample_cdr() -> Cdr {
    Cdr {
        call_id: CallId("x".into()),
        tenant: Some("gd".parse().unwrap()),
        entry_node: 1,
        access_code: None,
        landing_code: None,
        caller: "1".into(),
        dialled: "2".into(),
        trunk: None,
        started_at_ms: 0,
        answered_at_ms: None,
        ended_at_ms: 1,
        ivr: vec![],
        queue: None,
        enqueued_at_ms: None,
        priority: 0,
        wait_ms: 0,
        agent: None,
        extension: None,
        agent_node: None,
        offered_at_ms: None,
        first_offered_at_ms: None,
        ring_started_at_ms: None,
        agent_answered_at_ms: None,
        ring_ms: 0,
        talk_ms: 0,
        hangup_by: HangupBy::Caller,
        disposition: Disposition::Abandoned,
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

#[test]
fn a_restore_command_round_trips_through_json() {
    let (mut state, _) = sample_state();
    state.apply(&Command::Heartbeat {
        node: 2,
        epoch: 0,
        at_ms: 5,
    });
    let command = Command::Restore {
        state: Box::new(state.clone()),
        down: vec![1, 2],
        at_ms: 9,
    };
    let text = serde_json::to_string(&command).unwrap();
    let back: Command = serde_json::from_str(&text).unwrap();
    assert_eq!(back, command);
    let mut restored = ReplicatedState::default();
    restored.apply(&back);
    assert!(restored.is_down(1) && restored.is_down(2));
    assert_eq!(restored.tenants, state.tenants);
    assert!(restored.config_version > state.config_version);
}

#[test]
fn a_restore_is_a_new_config_version_even_at_the_same_number() {
    let (backup, _) = sample_state();
    // A cluster whose own history reached the backup's version number with other content.
    let mut live = ReplicatedState {
        config_version: backup.config_version,
        ..ReplicatedState::default()
    };
    let before = live.config_version;
    live.apply(&Command::Restore {
        state: Box::new(backup.clone()),
        down: Vec::new(),
        at_ms: 1,
    });
    assert_eq!(live.tenants, backup.tenants);
    assert_eq!(live.config_version, before + 1);

    // A cluster that has gone further than the backup (a restore retried after a change
    // committed in between): the version still moves forward, never back to one it had.
    let mut ahead = ReplicatedState {
        config_version: backup.config_version + 10,
        ..ReplicatedState::default()
    };
    ahead.apply(&Command::Restore {
        state: Box::new(backup.clone()),
        down: Vec::new(),
        at_ms: 1,
    });
    assert_eq!(ahead.config_version, backup.config_version + 11);
}

#[test]
fn a_queue_priority_above_254_is_refused() {
    let (state, _) = sample_state();
    let mut flow = state
        .flows
        .values()
        .next()
        .expect("the sample has flows")
        .clone();
    flow.validate().expect("the sample flow is valid");
    for (priority, ok) in [(0u8, true), (254, true), (255, false)] {
        flow.nodes.insert(
            "to_vip".into(),
            crate::flow::FlowNode::Queue {
                queue: "billing".parse().unwrap(),
                priority,
                lost_call_webhook: None,
                also: Vec::new(),
            },
        );
        assert_eq!(flow.validate().is_ok(), ok, "priority {priority}");
    }
}

#[test]
fn a_queue_overflow_rule_names_an_existing_queue_and_round_trips() {
    let (mut state, _) = sample_state();
    let mut q = state
        .queues
        .values()
        .find(|q| q.id.as_str() == "billing")
        .expect("the sample has a billing queue")
        .clone();
    let json = serde_json::json!({"action": "transfer_queue", "queue": "general"});
    let rule: RuleAction = serde_json::from_value(json).expect("parses");
    q.max_queued = Some(5);
    q.on_max_queued = Some(rule);
    let back: Queue = serde_json::from_value(serde_json::to_value(&q).unwrap()).unwrap();
    assert_eq!(back, q);
    assert_eq!(
        state
            .apply(&Command::Update {
                item: ConfigItem::Queue(Box::new(q.clone()))
            })
            .error,
        None,
        "an existing target is accepted"
    );
    q.on_max_queued = Some(RuleAction::TransferQueue {
        queue: "nowhere".parse().unwrap(),
    });
    assert!(
        state
            .apply(&Command::Update {
                item: ConfigItem::Queue(Box::new(q))
            })
            .error
            .is_some(),
        "an unknown target is refused"
    );
}

#[test]
fn max_wait_and_cancel_rules_check_their_key_flow_and_node() {
    let (mut state, _) = sample_state();
    let mut q = state
        .queues
        .values()
        .find(|q| q.id.as_str() == "billing")
        .expect("the sample has a billing queue")
        .clone();
    let update = |state: &mut ReplicatedState, q: &Queue| -> Result<(), String> {
        let item = ConfigItem::Queue(Box::new(q.clone()));
        item.validate().map_err(|e| e.to_string())?;
        match state.apply(&Command::Update { item }).error {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        }
    };
    q.cancel_key = Some('x');
    assert!(update(&mut state, &q).is_err(), "not a DTMF key");
    q.cancel_key = Some('#');
    q.on_cancel = Some(
        serde_json::from_value(
            serde_json::json!({"action": "transfer_flow", "flow": "main", "node": "menu"}),
        )
        .expect("parses"),
    );
    q.on_max_wait = Some(RuleAction::TransferFlow {
        flow: "main".parse().unwrap(),
        node: None,
    });
    assert_eq!(update(&mut state, &q), Ok(()));
    let back: Queue = serde_json::from_value(serde_json::to_value(&q).unwrap()).unwrap();
    assert_eq!(back, q);
    // The flow is now in use by the queue's rules: it cannot be deleted.
    let tenant = q.tenant.clone();
    let delete = Command::Delete {
        key: ConfigKey::Flow {
            tenant: tenant.clone(),
            id: "main".parse().unwrap(),
        },
    };
    assert!(state.apply(&delete).error.is_some());
    q.on_cancel = Some(RuleAction::TransferFlow {
        flow: "main".parse().unwrap(),
        node: Some("nowhere".into()),
    });
    assert!(update(&mut state, &q).is_err(), "an unknown node");
    q.on_cancel = Some(RuleAction::TransferFlow {
        flow: "missing".parse().unwrap(),
        node: None,
    });
    assert!(update(&mut state, &q).is_err(), "an unknown flow");
    // R3.4: an external number dials out through an existing trunk, which is then in use.
    let external = |number: &str, trunk: &str| RuleAction::TransferNumber {
        number: number.into(),
        trunk: trunk.parse().unwrap(),
    };
    q.on_cancel = Some(external("95598", "nowhere"));
    assert!(update(&mut state, &q).is_err(), "an unknown trunk");
    for bad in ["", "12", "955-98", "+", &"1".repeat(25)] {
        q.on_cancel = Some(external(bad, "carrier"));
        assert!(update(&mut state, &q).is_err(), "{bad:?}");
    }
    q.on_cancel = Some(external("+8675595598", "carrier"));
    assert_eq!(update(&mut state, &q), Ok(()));
    let trunk = Command::Delete {
        key: ConfigKey::Trunk {
            id: "carrier".parse().unwrap(),
        },
    };
    assert!(state.apply(&trunk).error.is_some(), "the trunk is in use");
}

#[test]
fn customers_routing_rules_and_caller_history_are_replicated_and_checked() {
    let (mut state, _) = sample_state();
    let gd: TenantId = "gd".parse().unwrap();
    let create = |item: ConfigItem| Command::Create { item };
    let customer = Customer {
        tenant: gd.clone(),
        number: "13800000000".parse().unwrap(),
        name: "Li Lei".into(),
        tags: vec!["elderly".into()],
        level: 120,
    };
    assert_eq!(
        state
            .apply(&create(ConfigItem::Customer(customer.clone())))
            .error,
        None
    );
    assert_eq!(
        state.customer(&gd, "+8613800000000"),
        Some(&customer),
        "a mobile with the country code is the same caller"
    );
    assert_eq!(
        crate::routing::normalise_number("+8675512345678"),
        "075512345678"
    );
    assert_eq!(
        crate::routing::normalise_number("8613800000000"),
        "13800000000"
    );
    assert_eq!(state.customer(&gd, "13800000000"), Some(&customer));
    let bad = Customer {
        tags: vec!["Not A Tag".into()],
        ..customer.clone()
    };
    assert!(matches!(
        state
            .apply(&Command::Update {
                item: ConfigItem::Customer(bad)
            })
            .error,
        Some(ApplyError::Invalid(_))
    ));
    let unknown_tenant = Customer {
        tenant: "zz".parse().unwrap(),
        ..customer.clone()
    };
    assert!(matches!(
        state
            .apply(&create(ConfigItem::Customer(unknown_tenant)))
            .error,
        Some(ApplyError::NotFound(_))
    ));

    // A routing rule must name queues and flow nodes of its own tenant.
    let mut tenant = state.tenants["gd"].clone();
    let rule = |then: serde_json::Value| -> RoutingRule {
        serde_json::from_value(serde_json::json!({
            "name": "elderly", "when": {"caller_tags": ["elderly"]}, "then": then
        }))
        .unwrap()
    };
    tenant.routing = vec![rule(serde_json::json!({"queue": "nosuch"}))];
    assert!(matches!(
        state
            .apply(&Command::Update {
                item: ConfigItem::Tenant(tenant.clone())
            })
            .error,
        Some(ApplyError::NotFound(_))
    ));
    tenant.routing = vec![rule(
        serde_json::json!({"flow": {"flow": "main", "node": "nosuch"}}),
    )];
    assert!(state
        .apply(&Command::Update {
            item: ConfigItem::Tenant(tenant.clone())
        })
        .error
        .is_some());
    tenant.routing = vec![rule(serde_json::json!({"queue": "general"}))];
    assert_eq!(
        state
            .apply(&Command::Update {
                item: ConfigItem::Tenant(tenant.clone())
            })
            .error,
        None
    );
    tenant.routing.push(tenant.routing[0].clone());
    assert!(
        matches!(
            state
                .apply(&Command::Update {
                    item: ConfigItem::Tenant(tenant)
                })
                .error,
            Some(ApplyError::Invalid(_))
        ),
        "rule names are unique"
    );
    // The rule's queue cannot be deleted while the rule leads there.
    let mut general = state.queues["gd/general"].clone();
    general.id = "spare".parse().unwrap();
    assert_eq!(
        state
            .apply(&create(ConfigItem::Queue(Box::new(general))))
            .error,
        None
    );
    for agent in state.agents.values().cloned().collect::<Vec<_>>() {
        let mut a = agent.clone();
        a.skills.retain(|q| q.as_str() != "general");
        state.apply(&Command::Update {
            item: ConfigItem::Agent(a),
        });
    }
    let error = state
        .apply(&Command::Delete {
            key: ConfigKey::Queue {
                tenant: gd.clone(),
                id: "general".parse().unwrap(),
            },
        })
        .error;
    assert!(matches!(error, Some(ApplyError::InUse(_))), "{error:?}");

    // Each recorded CDR adds to its caller's history: when, and who answered.
    for (i, agent) in [None, Some("1001")].into_iter().enumerate() {
        let mut cdr = sample_cdr();
        cdr.call_id = CallId(format!("h{i}"));
        cdr.caller = "+8675512345678".into();
        cdr.started_at_ms = 1_000 * i as u64;
        cdr.agent = Some("1009".parse().unwrap());
        if let Some(agent) = agent {
            cdr.agent = Some(agent.parse().unwrap());
            cdr.agent_answered_at_ms = Some(5);
        }
        let record = Command::RecordCdr {
            cdr: Arc::new(cdr),
            fence: None,
        };
        assert_eq!(state.apply(&record).error, None);
        assert_eq!(
            state.apply(&record).error,
            None,
            "a retried CDR counts once"
        );
    }
    let history = state.caller_history(&gd, "075512345678");
    assert_eq!(
        history,
        &[
            PastCall {
                at_ms: 0,
                agent: None
            },
            PastCall {
                at_ms: 1_000,
                agent: Some("1001".parse().unwrap())
            }
        ],
        "rung but not answered is no agent"
    );
}

#[test]
fn time_windows_follow_local_time_days_and_midnight() {
    let window = |from: &str, to: &str, days: Vec<u8>| TimeWindow {
        from: from.into(),
        to: to.into(),
        days,
        utc_offset_minutes: 480,
    };
    // 2026-11-30 (Monday) 02:00 UTC = 10:00 in China.
    let monday_10h: u64 = 1_796_004_000_000;
    let hour = 3_600_000;
    let work = window("08:00", "20:00", vec![1, 2, 3, 4, 5]);
    assert!(work.validate().is_ok());
    assert!(work.contains(monday_10h));
    assert!(!work.contains(monday_10h + 10 * hour), "20:00 is out");
    assert!(!work.contains(monday_10h - 3 * hour), "07:00 is out");
    assert!(
        !work.contains(monday_10h - 2 * 24 * hour),
        "Saturday is out"
    );
    let night = window("22:00", "06:00", vec![1]);
    assert!(night.contains(monday_10h + 13 * hour), "Monday 23:00");
    assert!(
        night.contains(monday_10h + 19 * hour),
        "Tuesday 05:00 belongs to Monday night"
    );
    assert!(!night.contains(monday_10h + 20 * hour), "Tuesday 06:00");
    assert!(
        !night.contains(monday_10h - 5 * hour),
        "Monday 05:00 is Sunday's night"
    );
    for bad in [
        window("8:00", "20:00", vec![]),
        window("08:00", "08:00", vec![]),
        window("08:00", "24:00", vec![]),
        window("08:00", "20:00", vec![8]),
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn a_cdr_with_a_message_makes_a_voicemail_handled_once() {
    let (mut state, _) = sample_state();
    let gd: TenantId = "gd".parse().unwrap();
    let mut cdr = sample_cdr();
    cdr.call_id = CallId("3-7-ab".into());
    cdr.caller = "13800000000".into();
    cdr.recording_id = Some("3-7-ab".into());
    cdr.voicemail = Some(VoicemailMark {
        queue: "billing".parse().unwrap(),
        started_at_ms: 10_000,
        duration_ms: 4_000,
    });
    let record = Command::RecordCdr {
        cdr: Arc::new(cdr),
        fence: None,
    };
    assert_eq!(state.apply(&record).error, None);
    let v = &state.voicemails["gd/3-7-ab"];
    assert_eq!(
        (v.status, v.duration_ms, v.recording_id.as_deref()),
        (VoicemailStatus::New, 4_000, Some("3-7-ab"))
    );
    let handle = |agent: &str, at_ms| Command::HandleVoicemail {
        tenant: gd.clone(),
        id: "3-7-ab".into(),
        agent: agent.parse().unwrap(),
        at_ms,
    };
    assert_eq!(state.apply(&handle("1001", 70_000)).error, None);
    assert_eq!(
        state.apply(&handle("1001", 80_000)).error,
        None,
        "idempotent"
    );
    assert!(matches!(
        state.apply(&handle("1002", 90_000)).error,
        Some(ApplyError::InUse(_))
    ));
    assert!(matches!(
        state.apply(&handle("9999", 90_000)).error,
        Some(ApplyError::NotFound(_))
    ));
    let v = &state.voicemails["gd/3-7-ab"];
    assert_eq!(v.status, VoicemailStatus::Handled);
    assert_eq!(v.handling_ms(), Some(60_000));
    // A retried CDR does not reset it.
    assert_eq!(state.apply(&record).error, None);
    assert_eq!(
        state.voicemails["gd/3-7-ab"].status,
        VoicemailStatus::Handled
    );
}

#[test]
fn permissions_default_by_role_and_hotlines_are_access_codes() {
    let (mut state, _) = sample_state();
    let mut agent = state
        .agents
        .values()
        .find(|a| a.id.as_str() == "1001")
        .cloned()
        .expect("sample agent");
    assert!(agent.may(Permission::HandleVoicemail) && !agent.may(Permission::SetAway));
    agent.role = AgentRole::Supervisor;
    assert!(Permission::ALL.iter().all(|p| agent.may(*p)));
    agent.permissions = Some([Permission::ManageCalls].into());
    assert!(agent.may(Permission::ManageCalls) && !agent.may(Permission::SetAway));
    let mut put = |a: &Agent| {
        let item = ConfigItem::Agent(a.clone());
        item.validate().map_err(|e| e.to_string())?;
        match state.apply(&Command::Update { item }).error {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        }
    };
    agent.hotline = Some("95598".into());
    agent.group = Some("north team".into());
    assert_eq!(put(&agent), Ok(()));
    agent.hotline = Some("12345".into());
    assert!(put(&agent).is_err(), "not an access code of the tenant");
    agent.hotline = Some("955a8".into());
    assert!(put(&agent).is_err(), "not digits");
    agent.hotline = None;
    agent.group = Some("x".repeat(65));
    assert!(put(&agent).is_err(), "a group name of 65 characters");
    let json = serde_json::json!({"tenant": "gd", "id": "1001", "name": "A", "skills": [],
        "permissions": ["set_away", "fly"]});
    assert!(
        serde_json::from_value::<Agent>(json).is_err(),
        "an unknown permission"
    );
    // The access code (still 1001's hotline: the refused updates changed nothing) cannot go while it is an agent's hotline.
    let mut tenant = state.tenants.get("gd").cloned().expect("sample tenant");
    tenant.access_codes.clear();
    let out = state.apply(&Command::Update {
        item: ConfigItem::Tenant(tenant),
    });
    assert!(matches!(out.error, Some(ApplyError::InUse(_))), "{out:?}");
}

#[test]
fn discard_calls_removes_bench_checkpoints_and_nothing_else() {
    let (mut state, _) = sample_state();
    let fence = Fence { node: 1, epoch: 0 };
    for id in ["bench-1-0", "bench-1-1", "1-9-real"] {
        let checkpoint = crate::bench::call_checkpoint(id, fence, 1, 10_000);
        let outcome = state.apply(&Command::PutCall {
            checkpoint: Arc::new(checkpoint),
        });
        assert!(outcome.error.is_none(), "{outcome:?}");
    }
    let outcome = state.apply(&Command::DiscardCalls {
        call_ids: vec![
            CallId("bench-1-0".into()),
            CallId("bench-1-1".into()),
            CallId("never-existed".into()),
        ],
    });
    assert!(outcome.error.is_none(), "unknown ids are ignored");
    assert_eq!(state.calls.keys().collect::<Vec<_>>(), ["1-9-real"]);
    assert!(state.cdrs.is_empty(), "no CDR for a discarded checkpoint");
    // The fixture round-trips through the log's encoding.
    let json = serde_json::to_string(&crate::bench::call_checkpoint("x", fence, 1, 10_000))
        .expect("serialises");
    let back: CallCheckpoint = serde_json::from_str(&json).expect("parses");
    assert_eq!(back.call_id.as_str(), "x");
}
