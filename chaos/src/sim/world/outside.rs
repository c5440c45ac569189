//! The world outside the cluster: callers, agents' phones and desks, admins, and what the
//! nodes tell them.

use super::*;

impl World {
    // ---- the outside world: callers, phones, agents at their desks, admins -----------

    pub(super) fn outside(&mut self, ctx: &mut Ctx, now: u64) {
        let clock = ctx.now;
        self.admin(now, clock);
        if (TRAFFIC_START_MS..TRAFFIC_END_MS).contains(&now) && self.rng.chance(1, 55) {
            self.arrive(clock);
        }
        self.callers_act(clock);
        self.phones_act(clock);
        self.media(clock);
        if now >= TRAFFIC_START_MS - 1_000 {
            self.desks(clock);
        }
    }

    /// Configuration through a running node: the setup script, then a new prompt now and
    /// then (I6 checks every committed one).
    pub(super) fn admin(&mut self, now: u64, clock: u64) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        let resend = self.setup_sent.is_some_and(|(_, at)| clock >= at + 6_000);
        if (self.setup_sent.is_none() || resend) && !self.setup.is_empty() {
            let command = self.setup.front().cloned().expect("non-empty");
            let node = self.rng.pick(&running);
            let tag = self.config_write(node, clock, command);
            self.setup_sent = Some((tag, clock));
        }
        let traffic = (TRAFFIC_START_MS..TRAFFIC_END_MS).contains(&now);
        if self.setup.is_empty() && traffic && self.rng.chance(1, 300) {
            let n = self.next_tag;
            let command = Command::Create {
                item: ConfigItem::Prompt(model::Prompt {
                    tenant: workload::tenant(),
                    id: format!("p{n}").parse().expect("valid prompt id"),
                    file: format!("prompt-{n}.wav"),
                }),
            };
            let node = self.rng.pick(&running);
            self.config_write(node, clock, command);
        }
    }

    pub(super) fn config_write(&mut self, node: NodeId, clock: u64, command: Command) -> u64 {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.tags.insert(tag, command.clone());
        self.trace(format!("admin writes config #{tag} through n{node}"));
        self.with_node(node, clock, |n, ctx| {
            n.input(ctx, Input::Config { command, tag })
        });
        tag
    }

    pub(super) fn arrive(&mut self, clock: u64) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        self.next_call += 1;
        let node = self.rng.pick(&running);
        let entry = self.rng.range(0, workload::ENTRIES.len() as u64 - 1) as usize;
        let id = CallId(format!("c{}", self.next_call));
        let caller = Caller {
            id: id.clone(),
            entry,
            contact: Some(node),
            answered: false,
            degraded: false,
            protected: false,
            patience_until: clock + self.rng.range(3_000, 20_000),
            talk_ms: self.rng.range(300, 4_000),
            agent_hangs_up: self.rng.chance(1, 3),
            established_at: None,
            agent: None,
            gone: false,
            bye: None,
            cdr: None,
            finished_on: Vec::new(),
        };
        self.trace(format!(
            "caller {id} dials {} at n{node}",
            workload::ENTRIES[entry].0
        ));
        let route = workload::route(entry);
        let taken = self
            .with_node(node, clock, |n, ctx| {
                n.input(
                    ctx,
                    Input::NewCall {
                        call: id.clone(),
                        route,
                    },
                )
            })
            .unwrap_or(false);
        if taken {
            self.callers.insert(id, caller);
        } else {
            self.trace(format!("n{node} rejects {id} (no configuration yet)"));
        }
    }

    pub(super) fn callers_act(&mut self, clock: u64) {
        let ids: Vec<CallId> = self.callers.keys().cloned().collect();
        for id in ids {
            let c = &self.callers[&id];
            if c.gone && c.bye.is_none() {
                continue;
            }
            // Impatience, or the end of the conversation.
            if !c.gone && c.answered {
                let hang = match c.established_at {
                    None => clock >= c.patience_until,
                    Some(at) => clock >= at + c.talk_ms,
                };
                if hang {
                    if c.established_at.is_some() && c.agent_hangs_up {
                        self.agent_hangs_up(clock, &id);
                    } else {
                        let c = self.callers.get_mut(&id).expect("caller");
                        c.gone = true;
                        c.bye = Some((clock, clock + BYE_GIVE_UP_MS));
                        self.trace(format!("caller {id} hangs up"));
                    }
                }
            }
            let c = &self.callers[&id];
            if let Some((next, give_up)) = c.bye {
                if clock >= give_up {
                    self.callers.get_mut(&id).expect("caller").bye = None;
                    self.trace(format!("caller {id} gives up its BYE"));
                } else if clock >= next {
                    let node = c.contact.expect("a caller that hangs up has a contact");
                    let handled = self.with_node(node, clock, |n, ctx| {
                        n.input(ctx, Input::CustomerBye { call: id.clone() })
                    });
                    let c = self.callers.get_mut(&id).expect("caller");
                    match handled {
                        // 200 or 481: the dialog is over either way.
                        Some(_) => c.bye = None,
                        None => c.bye = Some((clock + 500, give_up)),
                    }
                }
            }
        }
    }

    pub(super) fn agent_hangs_up(&mut self, clock: u64, call: &CallId) {
        let agent = self.callers[call].agent.clone();
        let phone = agent.and_then(|a| self.phones.get_mut(&a));
        match phone {
            Some(p) if p.connected.as_ref().is_some_and(|(c, _)| c == call) => {
                let (_, node) = p.connected.take().expect("connected");
                p.orphan_since = None;
                p.byes
                    .push((call.clone(), node, clock, clock + BYE_GIVE_UP_MS));
                self.trace(format!("agent hangs up {call}"));
            }
            _ => {
                // The phone is not on this call (any more): the caller hangs up instead.
                let c = self.callers.get_mut(call).expect("caller");
                c.agent_hangs_up = false;
            }
        }
    }

    pub(super) fn phones_act(&mut self, clock: u64) {
        let agents: Vec<model::AgentId> = self.phones.keys().cloned().collect();
        for agent in agents {
            // Retransmitted BYEs.
            let byes = std::mem::take(&mut self.phones.get_mut(&agent).expect("phone").byes);
            let mut kept = Vec::new();
            for (call, node, next, give_up) in byes {
                if clock >= give_up {
                    continue;
                }
                if clock < next {
                    kept.push((call, node, next, give_up));
                    continue;
                }
                let handled = self.with_node(node, clock, |n, ctx| {
                    n.input(ctx, Input::AgentBye { call: call.clone() })
                });
                if handled.is_none() {
                    kept.push((call, node, clock + 500, give_up));
                }
            }
            self.phones
                .get_mut(&agent)
                .expect("phone")
                .byes
                .extend(kept);
            // Ringing: report 180, then answer.
            let ring = self.phones[&agent].ringing.clone();
            if let Some(r) = ring {
                if clock >= r.give_up_at {
                    self.phones.get_mut(&agent).expect("phone").ringing = None;
                    self.trace(format!(
                        "agent {agent}'s phone stops ringing for {}",
                        r.call
                    ));
                } else if r.report_at.is_some_and(|at| clock >= at) {
                    if let Some(Some(ring)) =
                        self.phones.get_mut(&agent).map(|p| p.ringing.as_mut())
                    {
                        ring.report_at = None;
                    }
                    self.with_node(r.node, clock, |n, ctx| n.phone(ctx, &r.call, r.dial, false));
                } else if r.report_at.is_none() && r.answer_at.is_some_and(|at| clock >= at) {
                    let accepted = self
                        .with_node(r.node, clock, |n, ctx| n.phone(ctx, &r.call, r.dial, true))
                        .unwrap_or(false);
                    let p = self.phones.get_mut(&agent).expect("phone");
                    if p.ringing
                        .as_ref()
                        .is_some_and(|x| x.dial == r.dial && x.call == r.call)
                    {
                        p.ringing = None;
                        if accepted {
                            p.connected = Some((r.call.clone(), r.node));
                            p.orphan_since = None;
                            self.trace(format!("agent {agent} answers {}", r.call));
                        }
                    }
                }
            }
            // Media: a call no node carries any more is hung up after the RTP timeout.
            let connected = self.phones[&agent].connected.clone();
            if let Some((call, node)) = connected {
                let carried = self
                    .slots
                    .get(&node)
                    .and_then(|s| s.node.as_ref())
                    .is_some_and(|n| n.hosts_call(&call));
                let p = self.phones.get_mut(&agent).expect("phone");
                if carried {
                    p.orphan_since = None;
                } else {
                    let since = *p.orphan_since.get_or_insert(clock);
                    if clock >= since + PHONE_MEDIA_TIMEOUT_MS {
                        p.connected = None;
                        p.orphan_since = None;
                        p.byes
                            .push((call.clone(), node, clock, clock + BYE_GIVE_UP_MS));
                        self.trace(format!("agent {agent} hears no media on {call}: hangs up"));
                    }
                }
            }
        }
    }

    /// RTP: a caller answered and not gone sends to the node its dialog points at (the last
    /// one to answer or re-INVITE it); a phone sends to the node it is connected to. The
    /// nodes time out a leg that falls silent (`SimNode::rtp_heard`).
    pub(super) fn media(&mut self, clock: u64) {
        let mut heard: Vec<(NodeId, CallId, bool)> = Vec::new();
        for (id, c) in &self.callers {
            if let (false, true, Some(node)) = (c.gone, c.answered, c.contact) {
                heard.push((node, id.clone(), false));
            }
        }
        for p in self.phones.values() {
            if let Some((call, node)) = &p.connected {
                heard.push((*node, call.clone(), true));
            }
        }
        for (node, call, agent) in heard {
            if let Some(n) = self.slots.get_mut(&node).and_then(|s| s.node.as_mut()) {
                n.rtp_heard(&call, agent, clock);
            }
        }
    }

    /// Agents at their desks: signed in and ready, with breaks; back to ready after a
    /// missed call.
    pub(super) fn desks(&mut self, clock: u64) {
        let running = self.running();
        let Some(reader) = running.first().copied() else {
            return;
        };
        for i in 0..self.agents {
            let agent = workload::agent_id(i);
            let p = &self.phones[&agent];
            if clock < p.next_check {
                continue;
            }
            let next = clock + self.rng.range(500, 2_000);
            let on_break = clock < p.break_until;
            let session = self.slots[&reader]
                .node
                .as_ref()
                .expect("running")
                .replica
                .read(|s| s.agent_session(&workload::tenant(), &agent).cloned());
            let command = match session.map(|s| s.status) {
                None | Some(AgentStatus::SignedOut) => Some(AgentCommand::SignIn {
                    extension: agent.as_str().parse().expect("valid extension"),
                }),
                Some(AgentStatus::NotReady { .. }) if !on_break => Some(AgentCommand::Ready),
                Some(AgentStatus::Ready) if self.rng.chance(1, 40) => {
                    let until = clock + self.rng.range(1_000, 4_000);
                    self.phones.get_mut(&agent).expect("phone").break_until = until;
                    Some(AgentCommand::NotReady {
                        reason: "break".into(),
                    })
                }
                _ => None,
            };
            self.phones.get_mut(&agent).expect("phone").next_check = next;
            if let Some(command) = command {
                let node = self.rng.pick(&running);
                self.trace(format!("agent {agent} asks n{node}: {command:?}"));
                self.with_node(node, clock, |n, ctx| {
                    n.input(
                        ctx,
                        Input::Api {
                            tenant: workload::tenant(),
                            agent: agent.clone(),
                            command,
                        },
                    )
                });
            }
        }
    }

    // ---- what nodes tell the world -------------------------------------------------

    pub(super) fn on_event(&mut self, clock: u64, node: NodeId, event: Event) {
        match event {
            Event::Answered { call, checkpointed } => {
                self.trace(format!("n{node} answers {call}"));
                if let Some(c) = self.callers.get_mut(&call) {
                    c.answered = true;
                    c.degraded = !checkpointed;
                    c.contact = Some(node);
                }
            }
            Event::ReInvite { call, agent } => {
                self.stats.takeovers += 1;
                let gone = self.callers.get(&call).is_none_or(|c| c.gone);
                if let Some(c) = self.callers.get_mut(&call) {
                    c.contact = Some(node);
                    c.answered = true;
                }
                if gone {
                    self.leg_gone.push((
                        node,
                        Input::LegGone {
                            call: call.clone(),
                            agent: false,
                        },
                    ));
                }
                if agent {
                    let on_it = self
                        .phones
                        .values_mut()
                        .find(|p| p.connected.as_ref().is_some_and(|(c, _)| *c == call));
                    match on_it {
                        Some(p) => {
                            p.connected = Some((call.clone(), node));
                            p.orphan_since = None;
                        }
                        None => self.leg_gone.push((
                            node,
                            Input::LegGone {
                                call: call.clone(),
                                agent: true,
                            },
                        )),
                    }
                }
            }
            Event::Dial { call, agent, dial } => {
                self.trace(format!("n{node} rings {agent} for {call}"));
                let answer = (!self.rng.chance(1, 8)).then(|| clock + self.rng.range(200, 2_500));
                let report = clock + self.rng.range(10, 100);
                let callers = &self.callers;
                let p = self.phones.get_mut(&agent).expect("known agent");
                // The phone's dialog counts while it carries its customer: once another node
                // took the call over and re-INVITEd the customer (back in line: the
                // Talking checkpoint had not committed when the old node was cut off), the
                // old node's dialog with the phone bridges nobody. The agent is then
                // connected to no call, which I1 allows to be offered another; the phone
                // hangs up that dialog by itself (RTP timeout).
                let carries = |(c, node): &(CallId, NodeId)| {
                    callers.get(c).is_none_or(|x| x.contact == Some(*node))
                };
                let busy = p
                    .connected
                    .as_ref()
                    .filter(|c| carries(c))
                    .map(|(c, _)| c)
                    .or(p.ringing.as_ref().map(|r| &r.call))
                    .filter(|c| **c != call)
                    .cloned();
                if let Some(other) = busy {
                    self.violations.push(v(
                        "I1",
                        format!("agent {agent} is rung for {call} by n{node} while on {other}"),
                    ));
                }
                let p = self.phones.get_mut(&agent).expect("known agent");
                p.ringing = Some(Ring {
                    call,
                    node,
                    dial,
                    report_at: Some(report),
                    answer_at: answer,
                    give_up_at: clock + PHONE_RING_LIMIT_MS,
                });
            }
            Event::CancelAgent { ref call } | Event::HangupAgent { ref call } => {
                for p in self.phones.values_mut() {
                    if p.ringing.as_ref().is_some_and(|r| r.call == *call) {
                        p.ringing = None;
                    }
                }
                if let Event::HangupAgent { .. } = event {
                    for p in self.phones.values_mut() {
                        if p.connected.as_ref().is_some_and(|(c, _)| c == call) {
                            p.connected = None;
                            p.orphan_since = None;
                        }
                    }
                }
            }
            Event::HangupCustomer { call } => {
                if let Some(c) = self.callers.get_mut(&call) {
                    c.gone = true;
                }
            }
            Event::Offered {
                call,
                queue,
                agent,
                enqueued_at_ms,
            } => self.check_order(clock, &call, &queue, &agent, enqueued_at_ms),
            Event::Established { call } => {
                self.trace(format!("{call} established on n{node}"));
                let agent = self.phones.iter().find_map(|(a, p)| {
                    p.ringing
                        .as_ref()
                        .filter(|r| r.call == call)
                        .map(|_| a.clone())
                        .or_else(|| {
                            p.connected
                                .as_ref()
                                .filter(|(c, _)| *c == call)
                                .map(|_| a.clone())
                        })
                });
                // A call established on a node the cluster has already declared down (it
                // does not know yet: its Talking checkpoint is fenced off) was set up on a
                // node already lost, not lost afterwards: I3 does not cover it, as it does
                // not cover one set up on a node a fault touches.
                let impaired = self.impaired(node) || self.declared_down().contains(&node);
                if let Some(c) = self.callers.get_mut(&call) {
                    if c.established_at.is_none() {
                        c.protected = !impaired;
                    }
                    c.established_at.get_or_insert(clock);
                    c.agent = agent.or(c.agent.clone());
                }
            }
            Event::Finished { cdr } => {
                let call = cdr.call_id.clone();
                if let Some(c) = self.callers.get_mut(&call) {
                    c.finished_on.push(node);
                    if c.protected && cdr.disposition != Disposition::Answered {
                        let detail = format!(
                            "call {call} was established but ended {:?} ({:?}) on n{node}",
                            cdr.disposition, cdr.reason
                        );
                        self.violations.push(v("I3", detail));
                    }
                    c.cdr = Some(cdr);
                }
            }
            Event::ConfigCommitted { tag, index } => {
                let command = self.tags.get(&tag).cloned();
                self.trace(format!("config #{tag} committed at {index}"));
                if self.setup_sent.is_some_and(|(t, _)| t == tag) {
                    self.setup.pop_front();
                    self.setup_sent = None;
                }
                if let Some(Command::Create { item } | Command::Update { item }) = command {
                    let key = config_key_name(&item.key());
                    let newer = self
                        .committed_config
                        .get(&key)
                        .is_none_or(|(i, _, _)| *i < index);
                    if newer {
                        self.committed_config.insert(key, (index, tag, item));
                    }
                }
            }
        }
    }
}
