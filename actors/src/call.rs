//! The call-control state machine, pure: one per call, driven by the CallActor. It walks the
//! IVR flow (R5.2), queues the call (R3.1), takes an offer from the queue, rings the agent,
//! bridges, and writes the CDR with the multi-leg trail (R8.3). SIP and RTP are the driver's
//! job: this machine says *what* to do (`DialAgent`, `Bridge`, `HangupCustomer`, ...), the
//! driver knows *how* (dialogs, transactions, media sessions).
//!
//! Call order: `start`, then `handle(now_ms, input)` for each event and `handle_timeout(now_ms)`
//! at `poll_timeout()`; drain `poll_output()` after each. After `CallOutput::Finished` the
//! machine accepts nothing more.
//!
//! Invariants: the machine holds at most one agent at a time; it emits exactly one CDR (I2),
//! whatever order hang-ups and offers arrive in; a late offer for a call that has left the
//! queue is refused, so the agent goes back to ready.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use model::routing::Route;
use model::{
    AgentId, CallId, CallPhase, Cdr, Disposition, Entry, ExtensionId, FailoverMark, Flow, FlowNode,
    HangupBy, IvrStep, NodeId, PromptId, Queue, QueueId, ReplicatedState, TenantId, TrunkId,
};
use model::{CallNeeds, Customer, PastCall, RepeatMark, RouteTarget, RoutingRule, Stage};
use model::{FlowId, QueueRule, RuleAction, RuleStep, WaitAnnounced};

/// What the machine knows about a call when it starts.
#[derive(Clone, Debug)]
pub struct CallSetup {
    pub call_id: CallId,
    pub entry_node: NodeId,
    pub route: Route,
    pub caller: String,
    pub dialled: String,
    pub trunk: Option<TrunkId>,
    pub started_at_ms: u64,
    /// The tenant's IVR flows (the access code's entry, and any a queue rule transfers to)
    /// as configured when the call arrived.
    pub flows: Flows,
    /// The tenant's queues as configured when the call arrived.
    pub queues: Queues,
    /// Who is calling, as far as routing cares (R3.12-R3.16).
    pub profile: CallerProfile,
}

/// What routing knows of the caller when the call arrives: the customer record, the
/// caller's earlier calls, and the tenant's routing script.
#[derive(Clone, Debug, Default)]
pub struct CallerProfile {
    pub customer: Option<Customer>,
    pub history: Vec<PastCall>,
    pub rules: Vec<RoutingRule>,
}

/// The caller's profile from the replicated state, at arrival or at a takeover.
pub fn caller_profile(state: &ReplicatedState, route: &Route, caller: &str) -> CallerProfile {
    CallerProfile {
        customer: state.customer(&route.tenant, caller).cloned(),
        history: state.caller_history(&route.tenant, caller).to_vec(),
        rules: state
            .tenants
            .get(route.tenant.as_str())
            .map(|t| t.routing.clone())
            .unwrap_or_default(),
    }
}

/// The agents a call in `queue` needs (R3.12: the tags and level of the last routing rule
/// that applied) and prefers (R3.16: the agents its repeat-caller mark names, when it is for
/// this queue). From the CDR alone, so that the call's owner, a rebuilt queue and a call
/// taken over after a node loss all reach the same needs.
pub fn call_needs(
    cdr: &Cdr,
    rules: &[RoutingRule],
    queue: &QueueId,
    enqueued_at_ms: u64,
) -> CallNeeds {
    let mut needs = CallNeeds::default();
    if let Some(rule) = cdr
        .routed_by
        .last()
        .and_then(|name| rules.iter().find(|r| &r.name == name))
    {
        needs.agent_tags = rule.agent_tags.clone();
        needs.min_level = rule.min_level.unwrap_or(0);
        needs.relax_at_ms = rule.relax_after_ms.map(|r| enqueued_at_ms + r);
    }
    if let Some(mark) = cdr.repeat_caller.as_ref().filter(|m| &m.queue == queue) {
        needs.prefer = mark.preferred.clone();
        needs.prefer_until_ms = mark.until_ms;
    }
    // R3.4: a rule transferred the call to one agent, who waits for it in this queue.
    if let Some(RuleStep {
        action: RuleAction::TransferAgent { agent, queue: q },
        ..
    }) = cdr.rules.last()
    {
        if q == queue {
            needs.prefer = vec![agent.clone()];
            needs.prefer_until_ms = model::PREFER_ALWAYS;
        }
    }
    needs
}

/// A tenant's IVR flows, shared by the calls that arrived under one configuration.
pub type Flows = Arc<BTreeMap<FlowId, Flow>>;
/// A tenant's queues, shared by the calls that arrived under one configuration.
pub type Queues = Arc<BTreeMap<QueueId, Queue>>;

/// The tenant's flows and queues from the replicated configuration: what a call of `route`
/// needs to run, at arrival or at a takeover. A copy of its own; a node shares one copy
/// among its calls with `TenantConfigs`.
pub fn flows_and_queues(state: &ReplicatedState, route: &Route) -> (Flows, Queues) {
    let flows = state
        .flows
        .values()
        .filter(|f| f.tenant == route.tenant)
        .map(|f| (f.id.clone(), f.clone()))
        .collect();
    let queues = state
        .queues
        .values()
        .filter(|q| q.tenant == route.tenant)
        .map(|q| (q.id.clone(), q.clone()))
        .collect();
    (Arc::new(flows), Arc::new(queues))
}

/// Each tenant's flows and queues at the configuration version last asked for, so that the
/// calls of a tenant share one copy while its configuration stays the same. Every call used
/// to copy them: 5 KiB per call for the bench's small tenant, more for a real one
/// (docs/PERFORMANCE.md, "Memory per call"). A call still keeps the configuration it arrived
/// under: a change makes a new copy for the calls that come after it.
#[derive(Debug, Default)]
pub struct TenantConfigs {
    by_tenant: Mutex<HashMap<TenantId, (u64, Flows, Queues)>>,
}

impl TenantConfigs {
    /// `flows_and_queues`, shared with the other calls of the tenant at the state's
    /// configuration version (`config_version` changes with every configuration change,
    /// a restore included).
    pub fn flows_and_queues(&self, state: &ReplicatedState, route: &Route) -> (Flows, Queues) {
        let mut by_tenant = self
            .by_tenant
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((version, flows, queues)) = by_tenant.get(&route.tenant) {
            if *version == state.config_version {
                return (Arc::clone(flows), Arc::clone(queues));
            }
        }
        let (flows, queues) = flows_and_queues(state, route);
        // Tenants removed from the configuration go with the next change of any tenant.
        by_tenant.retain(|_, (version, _, _)| *version == state.config_version);
        by_tenant.insert(
            route.tenant.clone(),
            (
                state.config_version,
                Arc::clone(&flows),
                Arc::clone(&queues),
            ),
        );
        (flows, queues)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum CallInput {
    /// The customer leg is answered and its media flows: the IVR may start.
    CustomerAnswered,
    PlayDone,
    Digit(char),
    Offer {
        queue: QueueId,
        agent: AgentId,
        agent_node: NodeId,
        extension: ExtensionId,
    },
    AgentRinging,
    AgentAnswered,
    /// The agent leg failed: `no_answer` when it rang out or was declined.
    AgentFailed {
        no_answer: bool,
        reason: String,
    },
    /// A rule of the queue the call asked to join turned it away (R3.3, R3.5).
    TurnedAway {
        queue: QueueId,
        rule: QueueRule,
    },
    /// R3.9: the queue's answer to `AskWait`: calls ahead, and the estimated wait if known.
    WaitEstimate {
        queue: QueueId,
        ahead: usize,
        wait_ms: Option<u64>,
    },
    CustomerHangup,
    AgentHangup,
    /// R3.11: the caller answered the callback.
    CalledBack,
    /// R3.11: the callback did not reach the caller.
    CallbackFailed {
        reason: String,
    },
    /// The recording of the bridge, known when it started.
    Recording {
        id: String,
    },
}

/// What an agent's actor must be told.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AgentNotice {
    Ringing,
    Answered,
    Ended { acw_ms: u64 },
    Failed { no_answer: bool },
}

#[derive(Clone, Debug, PartialEq)]
pub enum CallOutput {
    Play {
        prompt: PromptId,
        repeat: bool,
    },
    StopPlay,
    /// Join (or re-join, after a takeover: idempotent) the queue at the original place;
    /// `offered_to` when the call is ringing that agent for the queue. `arriving`: the call
    /// joins this queue now (the queue's rules apply), not re-stating a place it holds.
    Enqueue {
        queue: QueueId,
        priority: u8,
        enqueued_at_ms: u64,
        offered_to: Option<AgentId>,
        arriving: bool,
        needs: CallNeeds,
    },
    Dequeue {
        queue: QueueId,
    },
    /// R3.20: record the caller's message (into the call's recording, which reports itself
    /// with `CallInput::Recording`).
    RecordVoicemail,
    /// R3.9: ask the queue for the call's estimated wait (answered by `WaitEstimate`).
    AskWait {
        queue: QueueId,
    },
    OfferDone {
        queue: QueueId,
        agent: AgentId,
        answered: bool,
    },
    Agent {
        agent: AgentId,
        agent_node: NodeId,
        notice: AgentNotice,
    },
    DialAgent {
        extension: ExtensionId,
        ring_timeout_ms: u64,
        /// R3.11: a virtual call: the number the platform calls back once the agent answers
        /// (the agent's "virtual call" event).
        callback_to: Option<String>,
    },
    /// R3.11: call the caller back through `trunk`, for the agent who answered.
    DialCustomer {
        number: String,
        trunk: TrunkId,
        ring_timeout_ms: u64,
    },
    /// R3.4: call `number` through `trunk` for a transfer out; its answers come back as the
    /// agent leg's (`AgentRinging`, `AgentAnswered`, `AgentFailed`, `AgentHangup`).
    DialOut {
        number: String,
        trunk: TrunkId,
    },
    CancelAgent,
    Bridge,
    HangupCustomer,
    HangupAgent,
    /// R3.22: the caller asked for a human (passed `node`) and never reached one: post the
    /// CDR to `webhook` (the SMS gateway interface).
    LostCall {
        webhook: String,
        node: String,
        cdr: Box<Cdr>,
    },
    Cdr(Box<Cdr>),
    Finished,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Setup,
    /// Playing a Play or Menu node's prompt; a menu then waits for a key until `deadline`.
    Ivr {
        node: String,
        menu_deadline: Option<u64>,
    },
    Queued {
        queue: QueueId,
    },
    Offering {
        queue: QueueId,
        agent: AgentId,
        agent_node: NodeId,
        extension: ExtensionId,
        deadline: u64,
    },
    Talking {
        queue: QueueId,
        agent: AgentId,
        agent_node: NodeId,
    },
    /// R3.11: the agent answered a virtual call; the caller is being called back until
    /// `deadline`.
    CallingBack {
        queue: QueueId,
        agent: AgentId,
        agent_node: NodeId,
        deadline: u64,
    },
    /// R3.20: leaving a message in `queue`'s voicemail: its prompt plays (`until` None), then
    /// the caller is recorded until `until`.
    Voicemail {
        queue: QueueId,
        until: Option<u64>,
    },
    /// R3.4: transferred to an external number: ringing it until `deadline`, or (None)
    /// answered and bridged.
    External {
        number: String,
        trunk: TrunkId,
        deadline: Option<u64>,
    },
    /// Playing a last prompt before the platform hangs up.
    Releasing,
    Ended,
}

pub struct CallMachine {
    setup: CallSetup,
    state: State,
    cdr: Cdr,
    max_wait_deadline: Option<u64>,
    /// The queue priority of the call (from the flow's Queue node; 0 for a direct entry).
    priority: u8,
    /// The IVR flow the call walks: the entry flow, or one a queue rule transferred it to.
    flow: Option<FlowId>,
    /// R3.17: the interflow targets still to try if the queue the call is joining refuses it.
    interflow: VecDeque<QueueId>,
    /// R3.10: the other queues the call waits in besides the state's queue. While an agent
    /// of one queue rings, the call has left the others (so they offer it no agent
    /// meanwhile) and joins them again, at its original place, if the agent does not answer.
    also: Vec<QueueId>,
    /// R3.11: a virtual call: the caller left the line and keeps its place, to be called
    /// back; `confirming_callback` while it hears the callback prompt before the hang-up.
    virtual_call: bool,
    confirming_callback: bool,
    /// R3.22: the last Queue node the call passed that reports lost calls, and its webhook.
    lost_call: Option<(String, String)>,
    /// R3.9: when the call next asks its queue for the estimated wait.
    announce_at: Option<u64>,
    /// R3.8: when the queue's periodic announcement is next played.
    periodic_at: Option<u64>,
    /// The rest of the wait announcement being played (prefix, minutes, suffix); music
    /// resumes after it.
    announcement: VecDeque<PromptId>,
    announcing: bool,
    outputs: VecDeque<CallOutput>,
}

const PRIORITY_DEFAULT: u8 = 0;

/// The most queue rules that may move one call on (transfers included) before it is released.
pub const MAX_RULE_STEPS: usize = 16;

impl CallMachine {
    pub fn new(setup: CallSetup) -> Self {
        let cdr = Cdr {
            call_id: setup.call_id.clone(),
            tenant: Some(setup.route.tenant.clone()),
            entry_node: setup.entry_node,
            access_code: Some(setup.route.access_code.clone()),
            landing_code: setup.route.landing_code.clone(),
            caller: setup.caller.clone(),
            dialled: setup.dialled.clone(),
            trunk: setup.trunk.clone(),
            started_at_ms: setup.started_at_ms,
            answered_at_ms: None,
            ended_at_ms: setup.started_at_ms,
            ivr: Vec::new(),
            queue: None,
            enqueued_at_ms: None,
            priority: PRIORITY_DEFAULT,
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
            hangup_by: HangupBy::System,
            disposition: Disposition::Released,
            reason: None,
            recording_id: None,
            failovers: Vec::new(),
            rules: Vec::new(),
            wait_announcements: Vec::new(),
            agent_announced_at_ms: None,
            periodic_announcements: 0,
            repeat_caller: None,
            routed_by: Vec::new(),
            voicemail: None,
            callback: None,
            external: None,
        };
        Self {
            state: State::Setup,
            cdr,
            max_wait_deadline: None,
            priority: PRIORITY_DEFAULT,
            flow: match &setup.route.entry {
                Entry::Flow(f) => Some(f.clone()),
                Entry::Queue(_) => None,
            },
            interflow: VecDeque::new(),
            also: Vec::new(),
            virtual_call: false,
            confirming_callback: false,
            lost_call: None,
            announce_at: None,
            periodic_at: None,
            announcement: VecDeque::new(),
            announcing: false,
            setup,
            outputs: VecDeque::new(),
        }
    }

    /// Rebuilds a call on a new owner from its checkpoint (DESIGN.md "Failover") and queues
    /// the outputs that resume it: a queued call hears the music again and re-joins its queue
    /// at its original place; an IVR call replays its node; a call that was ringing an agent
    /// has that offer failed (the agent and queue are freed) and waits at its place to be
    /// offered again; a talking call is bridged again. The driver re-INVITEs the legs.
    pub fn restore(setup: CallSetup, phase: &CallPhase, cdr: Cdr, now_ms: u64) -> Self {
        let mut m = Self::new(setup);
        m.cdr = cdr;
        if let CallPhase::Ivr {
            flow: Some(flow), ..
        } = phase
        {
            m.flow = Some(flow.clone());
        }
        m.lost_call = m.lost_call_from_trail();
        match phase.clone() {
            CallPhase::Setup => m.handle(now_ms, CallInput::CustomerAnswered),
            CallPhase::Ivr { node, .. } => m.enter_node(now_ms, &node),
            CallPhase::Queued {
                queue,
                priority,
                enqueued_at_ms,
                also,
                callback,
            } => {
                m.also = also;
                m.virtual_call = callback;
                m.resume_queued(now_ms, queue, priority, enqueued_at_ms, None, false)
            }
            CallPhase::Offering {
                queue,
                priority,
                enqueued_at_ms,
                agent,
                also,
                callback,
                ..
            } => {
                // The offer is failed below: the call waits in all its queues again.
                m.also = also;
                m.virtual_call = callback;
                m.resume_queued(
                    now_ms,
                    queue.clone(),
                    priority,
                    enqueued_at_ms,
                    Some(agent.clone()),
                    false,
                );
                m.cdr.ring_started_at_ms = None;
                m.outputs.push_back(CallOutput::Agent {
                    agent: agent.clone(),
                    agent_node: 0,
                    notice: AgentNotice::Failed { no_answer: false },
                });
                m.outputs.push_back(CallOutput::OfferDone {
                    queue,
                    agent,
                    answered: false,
                });
                if m.max_wait_deadline.is_some_and(|d| now_ms >= d) {
                    m.handle_timeout(now_ms);
                }
            }
            CallPhase::Talking { queue, agent, .. } => {
                m.state = State::Talking {
                    queue,
                    agent,
                    agent_node: 0,
                };
                m.outputs.push_back(CallOutput::Bridge);
            }
            CallPhase::External {
                number,
                trunk,
                answered: true,
            } => {
                m.state = State::External {
                    number,
                    trunk,
                    deadline: None,
                };
                m.outputs.push_back(CallOutput::Bridge);
            }
            // The INVITE died with its node: dial again from here.
            CallPhase::External { number, trunk, .. } => m.dial_out(now_ms, number, trunk),
            // R3.20: the prompt again, or the rest of the message (in this node's part).
            CallPhase::Voicemail {
                queue,
                until_ms: None,
            } => {
                let prompt = m
                    .setup
                    .queues
                    .get(&queue)
                    .and_then(|q| q.voicemail.as_ref())
                    .map(|v| v.prompt.clone());
                match prompt {
                    Some(prompt) => {
                        m.state = State::Voicemail { queue, until: None };
                        m.outputs.push_back(CallOutput::Play {
                            prompt,
                            repeat: false,
                        });
                    }
                    None => m.fail(now_ms, "the queue's voicemail is gone"),
                }
            }
            CallPhase::Voicemail {
                queue,
                until_ms: Some(until),
            } => {
                m.state = State::Voicemail {
                    queue,
                    until: Some(until),
                };
                if now_ms >= until {
                    m.end_voicemail(now_ms);
                } else {
                    m.outputs.push_back(CallOutput::RecordVoicemail);
                }
            }
            CallPhase::Releasing => {
                if m.cdr.voicemail.as_ref().is_some_and(|v| v.duration_ms == 0) {
                    m.cdr.reason = Some("voicemail cut by a node loss".into());
                }
                m.finish(now_ms, HangupBy::System, m.cdr.disposition);
            }
        }
        m
    }

    fn resume_queued(
        &mut self,
        now_ms: u64,
        queue: QueueId,
        priority: u8,
        enqueued_at_ms: u64,
        offered_to: Option<AgentId>,
        arriving: bool,
    ) {
        let config = self.setup.queues.get(&queue).cloned();
        self.priority = priority;
        self.cdr.priority = priority;
        self.max_wait_deadline = config.as_ref().map(|q| enqueued_at_ms + q.max_wait_ms);
        self.periodic_at = config
            .as_ref()
            .and_then(|q| q.periodic_announcement.as_ref())
            .map(|p| p.next_at(enqueued_at_ms, now_ms));
        self.announce_at = config
            .as_ref()
            .and_then(|q| q.wait_announcement.as_ref())
            .and_then(|w| w.next_at(enqueued_at_ms, now_ms));
        self.stop_announcing();
        self.state = State::Queued {
            queue: queue.clone(),
        };
        if self.virtual_call {
            // Nobody on the line: no music, no announcements.
            self.periodic_at = None;
            self.announce_at = None;
        }
        if let Some(music) = config
            .and_then(|q| q.music_prompt)
            .filter(|_| !self.virtual_call)
        {
            self.outputs.push_back(CallOutput::Play {
                prompt: music,
                repeat: true,
            });
        }
        let needs = call_needs(&self.cdr, &self.setup.profile.rules, &queue, enqueued_at_ms);
        self.outputs.push_back(CallOutput::Enqueue {
            queue,
            priority,
            enqueued_at_ms,
            offered_to,
            arriving,
            needs,
        });
        self.join_also(priority, enqueued_at_ms, arriving);
    }

    /// R3.10: (re-)joins the other queues at the call's original place.
    fn join_also(&mut self, priority: u8, enqueued_at_ms: u64, arriving: bool) {
        for queue in self.also.clone() {
            let needs = call_needs(&self.cdr, &self.setup.profile.rules, &queue, enqueued_at_ms);
            self.outputs.push_back(CallOutput::Enqueue {
                queue,
                priority,
                enqueued_at_ms,
                offered_to: None,
                arriving,
                needs,
            });
        }
    }

    /// R3.10: leaves the other queues (the call leaves the line, or an agent rings).
    fn leave_also(&mut self) {
        for queue in self.also.clone() {
            self.outputs.push_back(CallOutput::Dequeue { queue });
        }
    }

    /// The agent being rung for the call, if any.
    /// Whether the agent leg's INVITE is still wanted: an agent being offered the call, or an
    /// external number being dialled (R3.4). A late 2xx otherwise is hung up.
    pub fn awaits_answer(&self) -> bool {
        matches!(
            self.state,
            State::Offering { .. }
                | State::External {
                    deadline: Some(_),
                    ..
                }
        )
    }

    /// R3.11: the agent answered a virtual call and the caller is being called back.
    pub fn calling_back(&self) -> bool {
        matches!(self.state, State::CallingBack { .. })
    }

    pub fn offered_agent(&self) -> Option<AgentId> {
        match &self.state {
            State::Offering { agent, .. } => Some(agent.clone()),
            _ => None,
        }
    }

    /// R3.10: the queues the call waits in (the state's first), while it waits or rings.
    pub fn waiting_in(&self) -> Vec<QueueId> {
        match &self.state {
            State::Queued { queue } | State::Offering { queue, .. } => std::iter::once(queue)
                .chain(self.also.iter())
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// R3.10 from the API: adds and removes queues the call waits in, and changes its
    /// priority, while it waits (or rings an agent: the queue that rings cannot be removed,
    /// and the rest applies when the call waits again). An added queue takes the call at its
    /// original enqueue time, and its rules (R3.3, R3.5) apply: if it refuses the call, the
    /// call simply does not wait there. Gives the queues the call waits in.
    pub fn requeue(
        &mut self,
        now_ms: u64,
        add: &[QueueId],
        remove: &[QueueId],
        priority: Option<u8>,
    ) -> Result<Vec<QueueId>, String> {
        let (queue, ringing) = match &self.state {
            State::Queued { queue } => (queue.clone(), false),
            State::Offering { queue, .. } => (queue.clone(), true),
            _ => {
                return Err(format!(
                    "call {} is not waiting in a queue",
                    self.cdr.call_id
                ))
            }
        };
        if let Some(unknown) = add.iter().find(|q| !self.setup.queues.contains_key(*q)) {
            return Err(format!(
                "queue {unknown} does not exist in tenant {}",
                self.setup.route.tenant
            ));
        }
        if ringing && remove.contains(&queue) {
            return Err(format!("an agent of {queue} is ringing for the call"));
        }
        let mut lines = self.waiting_in();
        lines.retain(|q| !remove.contains(q));
        for q in add {
            if !lines.contains(q) && !remove.contains(q) {
                lines.push(q.clone());
            }
        }
        if lines.is_empty() {
            return Err("a waiting call stays in one queue at least".into());
        }
        if lines.len() > 9 {
            return Err("a call waits in 9 queues at most".into());
        }
        let enqueued_at_ms = self.cdr.enqueued_at_ms.unwrap_or(self.cdr.started_at_ms);
        let priority = priority.unwrap_or(self.priority);
        let old = self.waiting_in();
        for q in old.iter().filter(|q| !lines.contains(q)) {
            self.outputs
                .push_back(CallOutput::Dequeue { queue: q.clone() });
        }
        self.priority = priority;
        self.cdr.priority = priority;
        if ringing {
            // The rest applies when the call waits again (`offer_failed`).
            self.also = lines.into_iter().filter(|q| *q != queue).collect();
            return Ok(self.waiting_in());
        }
        let primary_changed = lines[0] != queue;
        self.also = lines[1..].to_vec();
        if primary_changed {
            // The new first queue's music, deadline and announcements apply.
            self.resume_queued(
                now_ms,
                lines[0].clone(),
                priority,
                enqueued_at_ms,
                None,
                false,
            );
        } else {
            let needs = call_needs(&self.cdr, &self.setup.profile.rules, &queue, enqueued_at_ms);
            self.outputs.push_back(CallOutput::Enqueue {
                queue,
                priority,
                enqueued_at_ms,
                offered_to: None,
                arriving: false,
                needs,
            });
            for q in self.also.clone() {
                let needs = call_needs(&self.cdr, &self.setup.profile.rules, &q, enqueued_at_ms);
                self.outputs.push_back(CallOutput::Enqueue {
                    queue: q.clone(),
                    priority,
                    enqueued_at_ms,
                    offered_to: None,
                    arriving: !old.contains(&q),
                    needs,
                });
            }
        }
        Ok(self.waiting_in())
    }

    /// The checkpointable phase of the call (None once ended).
    pub fn phase(&self) -> Option<CallPhase> {
        let enqueued_at_ms = self.cdr.enqueued_at_ms.unwrap_or(self.cdr.started_at_ms);
        Some(match &self.state {
            State::Setup => CallPhase::Setup,
            State::Ivr { node, .. } => CallPhase::Ivr {
                node: node.clone(),
                flow: self.flow.clone(),
            },
            State::Queued { queue } => CallPhase::Queued {
                queue: queue.clone(),
                priority: self.priority,
                enqueued_at_ms,
                also: self.also.clone(),
                callback: self.virtual_call,
            },
            State::Offering {
                queue,
                agent,
                extension,
                ..
            } => CallPhase::Offering {
                queue: queue.clone(),
                priority: self.priority,
                enqueued_at_ms,
                agent: agent.clone(),
                extension: extension.clone(),
                also: self.also.clone(),
                callback: self.virtual_call,
            },
            // R3.11: a callback being dialled is not resumed elsewhere: a new owner fails the
            // offer and the virtual call waits at its place to be offered again.
            State::CallingBack { queue, agent, .. } => CallPhase::Offering {
                queue: queue.clone(),
                priority: self.priority,
                enqueued_at_ms,
                agent: agent.clone(),
                extension: self.cdr.extension.clone().unwrap_or_else(|| {
                    agent
                        .as_str()
                        .parse()
                        .expect("agent numbers are extension numbers")
                }),
                also: Vec::new(),
                callback: true,
            },
            State::Talking { queue, agent, .. } => CallPhase::Talking {
                queue: queue.clone(),
                agent: agent.clone(),
                bridged_at_ms: self.cdr.agent_answered_at_ms.unwrap_or(0),
            },
            State::External {
                number,
                trunk,
                deadline,
            } => CallPhase::External {
                number: number.clone(),
                trunk: trunk.clone(),
                answered: deadline.is_none(),
            },
            State::Voicemail { queue, until } => CallPhase::Voicemail {
                queue: queue.clone(),
                until_ms: *until,
            },
            State::Releasing => CallPhase::Releasing,
            State::Ended => return None,
        })
    }

    /// The queue's owner may have moved (a node left or rejoined): say again where the call
    /// waits, at its original place. Idempotent at the queue.
    pub fn resync(&mut self) {
        let enqueued_at_ms = self.cdr.enqueued_at_ms.unwrap_or(self.cdr.started_at_ms);
        let (queue, offered_to) = match &self.state {
            State::Queued { queue } => (queue.clone(), None),
            State::Offering { queue, agent, .. } => (queue.clone(), Some(agent.clone())),
            _ => return,
        };
        let needs = call_needs(&self.cdr, &self.setup.profile.rules, &queue, enqueued_at_ms);
        let ringing = offered_to.is_some();
        self.outputs.push_back(CallOutput::Enqueue {
            queue,
            priority: self.priority,
            enqueued_at_ms,
            offered_to,
            arriving: false,
            needs,
        });
        if !ringing {
            self.join_also(self.priority, enqueued_at_ms, false);
        }
    }

    /// Records a takeover in the CDR.
    pub fn note_failover(&mut self, mark: FailoverMark) {
        self.cdr.failovers.push(mark);
    }

    /// The recording part the last takeover's owner writes, and its offset from the bridge.
    pub fn set_failover_recording(&mut self, id: Option<String>, offset_ms: u64) {
        if let Some(mark) = self.cdr.failovers.last_mut() {
            mark.recording_id = id;
            mark.recording_offset_ms = offset_ms;
        }
    }

    pub fn route(&self) -> &Route {
        &self.setup.route
    }

    /// The media gap of the last takeover, once the customer's media is back.
    pub fn set_failover_gap(&mut self, gap_ms: u64) {
        if let Some(mark) = self.cdr.failovers.last_mut() {
            mark.gap_ms = gap_ms;
        }
    }

    pub fn call_id(&self) -> &CallId {
        &self.setup.call_id
    }

    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// A short name of the state, for the live-calls API.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Setup => "setup",
            State::Ivr { .. } => "ivr",
            State::Queued { .. } => "queued",
            State::Offering { .. } => "ringing_agent",
            State::Talking { .. } => "talking",
            State::Voicemail { until: None, .. } => "voicemail",
            State::Voicemail { until: Some(_), .. } => "recording_voicemail",
            State::CallingBack { .. } => "calling_back",
            State::External {
                deadline: Some(_), ..
            } => "dialling_out",
            State::External { deadline: None, .. } => "external",
            State::Releasing => "releasing",
            State::Ended => "ended",
        }
    }

    pub fn cdr_so_far(&self) -> &Cdr {
        &self.cdr
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        let state_deadline = match &self.state {
            State::Ivr { menu_deadline, .. } => *menu_deadline,
            State::Offering { deadline, .. } => Some(*deadline),
            State::Voicemail { until, .. } => *until,
            State::CallingBack { deadline, .. } => Some(*deadline),
            State::External { deadline, .. } => *deadline,
            _ => None,
        };
        let (wait, announce) = match self.state {
            State::Queued { .. } => (
                self.max_wait_deadline,
                self.announce_at.into_iter().chain(self.periodic_at).min(),
            ),
            _ => (None, None),
        };
        state_deadline.into_iter().chain(wait).chain(announce).min()
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state.clone() {
            State::Ivr {
                node,
                menu_deadline: Some(deadline),
            } if now_ms >= deadline => {
                if let Some(FlowNode::Menu { default, .. }) = self.flow_node(&node).cloned() {
                    self.cdr.ivr.push(IvrStep {
                        node: node.clone(),
                        key: None,
                        at_ms: now_ms,
                    });
                    self.enter_node(now_ms, &default);
                }
            }
            State::Offering {
                queue,
                agent,
                agent_node,
                deadline,
                ..
            } if now_ms >= deadline => {
                self.outputs.push_back(CallOutput::CancelAgent);
                self.offer_failed(now_ms, queue, agent, agent_node, true);
            }
            State::Queued { queue } if self.max_wait_deadline.is_some_and(|d| now_ms >= d) => {
                self.apply_rule(now_ms, queue, QueueRule::MaxWait);
            }
            State::Voicemail {
                until: Some(until), ..
            } if now_ms >= until => self.end_voicemail(now_ms),
            State::CallingBack { deadline, .. } if now_ms >= deadline => {
                self.callback_failed(now_ms, "the caller did not answer the callback".into())
            }
            State::External {
                deadline: Some(deadline),
                ..
            } if now_ms >= deadline => {
                self.outputs.push_back(CallOutput::CancelAgent);
                self.external_failed(now_ms, "it did not answer".into());
            }
            State::Queued { queue } if self.announce_at.is_some_and(|at| now_ms >= at) => {
                let enqueued_at_ms = self.cdr.enqueued_at_ms.unwrap_or(now_ms);
                self.announce_at = self
                    .setup
                    .queues
                    .get(&queue)
                    .and_then(|q| q.wait_announcement.as_ref())
                    .and_then(|w| w.next_at(enqueued_at_ms, now_ms + 1));
                self.outputs.push_back(CallOutput::AskWait { queue });
            }
            _ => {}
        }
        // R3.8, due at the same time as the estimate or not.
        if let State::Queued { queue } = self.state.clone() {
            if self.periodic_at.is_some_and(|at| now_ms >= at) {
                let periodic = self
                    .setup
                    .queues
                    .get(&queue)
                    .and_then(|q| q.periodic_announcement.clone());
                let enqueued_at_ms = self.cdr.enqueued_at_ms.unwrap_or(now_ms);
                self.periodic_at = periodic.as_ref().map(|p| p.next_at(enqueued_at_ms, now_ms));
                // Never over another announcement: the next period comes soon enough.
                if let (Some(p), false) = (periodic, self.announcing) {
                    self.cdr.periodic_announcements += 1;
                    self.announcement.push_back(p.prompt);
                    self.announcing = true;
                    self.next_announcement_part(&queue);
                }
            }
        }
    }

    /// A Talking call restored from its checkpoint had in fact ended on its old node, which
    /// died (or was cut off) before its CDR committed: the agent's committed session moved on
    /// at `ended_at_ms`. Record it as ended then (the agent's real busy time), without
    /// bridging again; the customer gets a BYE in case its leg outlived the node.
    pub fn ended_before_takeover(&mut self, ended_at_ms: u64) {
        if matches!(self.state, State::Talking { .. }) {
            // Nothing the restore queued (the bridge) is to be carried out.
            self.outputs.clear();
            self.cdr.reason = Some("ended on its node before the takeover".into());
            self.finish(ended_at_ms, HangupBy::System, Disposition::Answered);
        }
    }

    /// Gives up ringing the agent (CANCEL) and puts the call back in line, the agent freed:
    /// the node lost its lease while the ring was known to nobody else (see the node's
    /// lease check), so the agent's new owner may ring it for another call.
    pub fn withdraw_offer(&mut self, now_ms: u64, reason: &str) {
        if let State::Offering {
            queue,
            agent,
            agent_node,
            ..
        } = self.state.clone()
        {
            self.outputs.push_back(CallOutput::CancelAgent);
            self.cdr.reason = Some(reason.into());
            self.offer_failed(now_ms, queue, agent, agent_node, false);
        }
    }

    pub fn handle(&mut self, now_ms: u64, input: CallInput) {
        if self.state == State::Ended {
            // A late offer must still be answered so the agent is freed.
            if let CallInput::Offer {
                queue,
                agent,
                agent_node,
                ..
            } = input
            {
                self.refuse_offer(queue, agent, agent_node);
            }
            return;
        }
        match input {
            CallInput::CustomerAnswered => {
                if self.state == State::Setup {
                    self.cdr.answered_at_ms = Some(now_ms);
                    // R3.13-R3.15: the routing script may send the call elsewhere than its
                    // access code's entry. Judged at the call's start, so a call taken over
                    // before its entry is routed the same way again.
                    let routed = self.route_by_script(self.setup.started_at_ms, Stage::Arrival);
                    match routed {
                        Some(Some(target)) => self.go_to(now_ms, target, PRIORITY_DEFAULT),
                        _ => match self.setup.route.entry.clone() {
                            Entry::Flow(_) => self.start_flow(now_ms, None),
                            Entry::Queue(queue) => self.enqueue(now_ms, queue, PRIORITY_DEFAULT),
                        },
                    }
                }
            }
            CallInput::PlayDone => match self.state.clone() {
                State::Ivr {
                    node,
                    menu_deadline: None,
                } => match self.flow_node(&node).cloned() {
                    Some(FlowNode::Play { next, .. }) => {
                        self.cdr.ivr.push(IvrStep {
                            node,
                            key: None,
                            at_ms: now_ms,
                        });
                        self.enter_node(now_ms, &next);
                    }
                    Some(FlowNode::Menu { timeout_ms, .. }) => {
                        self.state = State::Ivr {
                            node,
                            menu_deadline: Some(now_ms + timeout_ms),
                        };
                    }
                    _ => {}
                },
                State::Releasing => self.finish(now_ms, HangupBy::System, self.cdr.disposition),
                State::Queued { .. } if self.confirming_callback => {
                    self.confirming_callback = false;
                    self.go_virtual();
                }
                State::Voicemail { queue, until: None } => {
                    let max_ms = self
                        .setup
                        .queues
                        .get(&queue)
                        .and_then(|q| q.voicemail.as_ref())
                        .map_or(model::VOICEMAIL_MAX_MS, |v| v.max_ms);
                    self.cdr.voicemail = Some(model::VoicemailMark {
                        queue: queue.clone(),
                        started_at_ms: now_ms,
                        duration_ms: 0,
                    });
                    self.state = State::Voicemail {
                        queue,
                        until: Some(now_ms + max_ms),
                    };
                    self.outputs.push_back(CallOutput::RecordVoicemail);
                }
                State::Queued { queue }
                | State::Offering { queue, .. }
                | State::Talking { queue, .. }
                    if self.announcing =>
                {
                    self.next_announcement_part(&queue)
                }
                _ => {}
            },
            CallInput::Digit(digit) => {
                // R3.20: `#` ends a message; the queue's voicemail key starts one.
                if let State::Voicemail { until: Some(_), .. } = self.state {
                    if digit == '#' {
                        self.end_voicemail(now_ms);
                    }
                    return;
                }
                if let State::Queued { queue } | State::Offering { queue, .. } = &self.state {
                    let queue = queue.clone();
                    let voicemail = self
                        .setup
                        .queues
                        .get(&queue)
                        .and_then(|q| q.voicemail.clone());
                    if voicemail.as_ref().is_some_and(|v| v.key == digit) {
                        if let State::Offering {
                            agent, agent_node, ..
                        } = self.state.clone()
                        {
                            self.outputs.push_back(CallOutput::CancelAgent);
                            self.offer_failed(now_ms, queue.clone(), agent, agent_node, false);
                        }
                        if let Some(v) = voicemail {
                            self.start_voicemail(now_ms, queue, v);
                        }
                        return;
                    }
                }
                // R3.11: the callback key: offline waiting.
                if let State::Queued { queue } = &self.state {
                    let queue = queue.clone();
                    let offer = self
                        .setup
                        .queues
                        .get(&queue)
                        .and_then(|q| q.callback.clone());
                    if let Some(offer) = offer.filter(|o| o.key == Some(digit)) {
                        if !self.virtual_call && !self.confirming_callback {
                            self.request_callback(now_ms, queue, offer.prompt);
                        }
                        return;
                    }
                }
                // R3.6: the queue's cancel key, while waiting or while an agent rings.
                if let State::Queued { queue } | State::Offering { queue, .. } = &self.state {
                    let queue = queue.clone();
                    let cancel = self.setup.queues.get(&queue).and_then(|q| q.cancel_key);
                    if cancel == Some(digit) {
                        if let State::Offering {
                            agent, agent_node, ..
                        } = self.state.clone()
                        {
                            self.outputs.push_back(CallOutput::CancelAgent);
                            self.offer_failed(now_ms, queue.clone(), agent, agent_node, false);
                        }
                        if self.state
                            == (State::Queued {
                                queue: queue.clone(),
                            })
                        {
                            self.apply_rule(now_ms, queue, QueueRule::CancelKey);
                        }
                        return;
                    }
                }
                if let State::Ivr { node, .. } = self.state.clone() {
                    if let Some(FlowNode::Menu { options, .. }) = self.flow_node(&node).cloned() {
                        // A key during the menu prompt interrupts it (barge-in).
                        if let Some(next) = options.get(&digit.to_string()) {
                            self.outputs.push_back(CallOutput::StopPlay);
                            self.cdr.ivr.push(IvrStep {
                                node,
                                key: Some(digit.to_string()),
                                at_ms: now_ms,
                            });
                            let next = next.clone();
                            self.enter_node(now_ms, &next);
                        }
                    }
                }
            }
            CallInput::Offer {
                queue,
                agent,
                agent_node,
                extension,
            } => match self.state.clone() {
                State::Queued { queue: q } if q == queue || self.also.contains(&queue) => {
                    // R3.10: ringing for `queue`, the call leaves its other queues meanwhile.
                    if q != queue {
                        self.also.retain(|a| *a != queue);
                        self.also.insert(0, q);
                    }
                    self.leave_also();
                    let ring_timeout_ms = self
                        .setup
                        .queues
                        .get(&queue)
                        .map_or(15_000, |q| q.ring_timeout_ms);
                    self.cdr.offered_at_ms = Some(now_ms);
                    self.cdr.first_offered_at_ms.get_or_insert(now_ms);
                    self.state = State::Offering {
                        queue,
                        agent,
                        agent_node,
                        extension: extension.clone(),
                        deadline: now_ms + ring_timeout_ms,
                    };
                    let callback_to = self.virtual_call.then(|| self.setup.caller.clone());
                    self.outputs.push_back(CallOutput::DialAgent {
                        extension,
                        ring_timeout_ms,
                        callback_to,
                    });
                }
                // Already ringing an agent for this queue (a re-Enqueue crossed the offer):
                // the ring in progress settles the queue's view, so only the second agent is
                // freed; an OfferDone here would let the queue offer the call yet again.
                State::Offering {
                    queue: q, agent: a, ..
                } if q == queue => {
                    if a != agent {
                        self.outputs.push_back(CallOutput::Agent {
                            agent,
                            agent_node,
                            notice: AgentNotice::Failed { no_answer: false },
                        });
                    }
                }
                _ => self.refuse_offer(queue, agent, agent_node),
            },
            CallInput::AgentRinging => {
                if let State::Offering {
                    agent, agent_node, ..
                } = &self.state
                {
                    if self.cdr.ring_started_at_ms.is_none() {
                        self.cdr.ring_started_at_ms = Some(now_ms);
                        self.outputs.push_back(CallOutput::Agent {
                            agent: agent.clone(),
                            agent_node: *agent_node,
                            notice: AgentNotice::Ringing,
                        });
                    }
                }
            }
            CallInput::AgentAnswered if matches!(self.state, State::External { .. }) => {
                if let State::External {
                    number,
                    trunk,
                    deadline: Some(_),
                } = self.state.clone()
                {
                    if let Some(mark) = self.cdr.external.as_mut() {
                        mark.answered_at_ms = Some(now_ms);
                    }
                    self.state = State::External {
                        number,
                        trunk,
                        deadline: None,
                    };
                    self.outputs.push_back(CallOutput::Bridge);
                }
            }
            CallInput::AgentFailed { reason, .. }
                if matches!(
                    self.state,
                    State::External {
                        deadline: Some(_),
                        ..
                    }
                ) =>
            {
                self.external_failed(now_ms, reason)
            }
            CallInput::AgentAnswered => {
                if let State::Offering {
                    queue,
                    agent,
                    agent_node,
                    extension,
                    ..
                } = self.state.clone()
                {
                    let ring_start = *self.cdr.ring_started_at_ms.get_or_insert(now_ms);
                    self.cdr.ring_ms = now_ms.saturating_sub(ring_start);
                    self.cdr.agent_answered_at_ms = Some(now_ms);
                    self.cdr.agent = Some(agent.clone());
                    // R3.10: the queue whose agent answered (of those the call waited in).
                    self.cdr.queue = Some(queue.clone());
                    self.also.clear();
                    self.cdr.extension = Some(extension);
                    self.cdr.agent_node = Some(agent_node);
                    self.cdr.wait_ms =
                        now_ms.saturating_sub(self.cdr.enqueued_at_ms.unwrap_or(now_ms));
                    self.stop_announcing();
                    self.outputs.push_back(CallOutput::StopPlay);
                    self.outputs.push_back(CallOutput::OfferDone {
                        queue: queue.clone(),
                        agent: agent.clone(),
                        answered: true,
                    });
                    self.outputs.push_back(CallOutput::Agent {
                        agent: agent.clone(),
                        agent_node,
                        notice: AgentNotice::Answered,
                    });
                    if self.virtual_call {
                        // R3.11: the agent took the virtual call: now call the caller back.
                        return self.call_back(now_ms, queue, agent, agent_node);
                    }
                    // R4.5: the caller hears the agent's number first; the bridge follows
                    // the last prompt.
                    let announcement = self
                        .setup
                        .queues
                        .get(&queue)
                        .and_then(|q| q.agent_announcement.as_ref())
                        .map(|a| a.prompts(&agent));
                    match announcement {
                        Some(prompts) => {
                            self.cdr.agent_announced_at_ms = Some(now_ms);
                            self.announcement.extend(prompts);
                            self.announcing = true;
                            self.next_announcement_part(&queue);
                        }
                        None => self.outputs.push_back(CallOutput::Bridge),
                    }
                    self.state = State::Talking {
                        queue,
                        agent,
                        agent_node,
                    };
                }
            }
            CallInput::AgentFailed { no_answer, reason } => {
                if let State::Offering {
                    queue,
                    agent,
                    agent_node,
                    ..
                } = self.state.clone()
                {
                    self.cdr.reason = Some(reason);
                    self.offer_failed(now_ms, queue, agent, agent_node, no_answer);
                }
            }
            CallInput::TurnedAway { queue, rule: _ } if self.also.contains(&queue) => {
                // R3.10: one of the other queues did not take the call: it waits in the rest.
                self.also.retain(|q| *q != queue);
            }
            CallInput::TurnedAway { queue, rule } => {
                if self.state
                    == (State::Queued {
                        queue: queue.clone(),
                    })
                {
                    match self.interflow.pop_front() {
                        // R3.17: refused on the way along an interflow list: the next one.
                        Some(next) => {
                            self.outputs.push_back(CallOutput::Dequeue {
                                queue: queue.clone(),
                            });
                            self.leave_also();
                            self.also.clear();
                            self.cdr.rules.push(RuleStep {
                                queue,
                                rule,
                                action: RuleAction::Interflow {
                                    queues: std::iter::once(next.clone())
                                        .chain(self.interflow.iter().cloned())
                                        .collect(),
                                },
                                at_ms: now_ms,
                            });
                            self.outputs.push_back(CallOutput::StopPlay);
                            self.enqueue(now_ms, next, self.priority);
                        }
                        None => self.apply_rule(now_ms, queue, rule),
                    }
                }
            }
            CallInput::WaitEstimate {
                queue,
                ahead,
                wait_ms,
            } => {
                let config = self
                    .setup
                    .queues
                    .get(&queue)
                    .and_then(|q| q.wait_announcement.clone());
                if let (State::Queued { queue: q }, Some(config), Some(wait_ms)) =
                    (&self.state, config, wait_ms)
                {
                    if *q == queue {
                        let minutes = wait_ms.div_ceil(60_000).max(1);
                        self.announcement.push_back(config.prefix);
                        self.announcement.extend(model::number_prompts(minutes));
                        self.announcement.push_back(config.suffix);
                        self.cdr.wait_announcements.push(WaitAnnounced {
                            at_ms: now_ms,
                            ahead,
                            minutes,
                        });
                        // After a periodic announcement in progress, if any.
                        if !self.announcing {
                            self.announcing = true;
                            self.next_announcement_part(&queue);
                        }
                    }
                }
            }
            CallInput::CustomerHangup => self.hangup(now_ms, HangupBy::Caller),
            CallInput::AgentHangup => {
                if matches!(
                    self.state,
                    State::Talking { .. }
                        | State::CallingBack { .. }
                        | State::External { deadline: None, .. }
                ) {
                    self.hangup(now_ms, HangupBy::Agent);
                }
            }
            CallInput::Recording { id } => self.cdr.recording_id = Some(id),
            CallInput::CalledBack => {
                if let State::CallingBack {
                    queue,
                    agent,
                    agent_node,
                    ..
                } = self.state.clone()
                {
                    if let Some(mark) = self.cdr.callback.as_mut() {
                        mark.answered_at_ms = Some(now_ms);
                    }
                    self.state = State::Talking {
                        queue,
                        agent,
                        agent_node,
                    };
                    self.outputs.push_back(CallOutput::Bridge);
                }
            }
            CallInput::CallbackFailed { reason } => {
                if matches!(self.state, State::CallingBack { .. }) {
                    self.callback_failed(now_ms, reason);
                }
            }
        }
    }

    /// Plays the next part of the wait announcement, or the queue's music once it is over.
    fn next_announcement_part(&mut self, queue: &QueueId) {
        match self.announcement.pop_front() {
            Some(prompt) => self.outputs.push_back(CallOutput::Play {
                prompt,
                repeat: false,
            }),
            None if matches!(self.state, State::Talking { .. }) => {
                // The agent-number announcement is over (R4.5): now the two talk.
                self.announcing = false;
                self.outputs.push_back(CallOutput::Bridge);
            }
            None => {
                self.announcing = false;
                if let Some(music) = self
                    .setup
                    .queues
                    .get(queue)
                    .and_then(|q| q.music_prompt.clone())
                {
                    self.outputs.push_back(CallOutput::Play {
                        prompt: music,
                        repeat: true,
                    });
                }
            }
        }
    }

    /// Drops the rest of a wait announcement (the call left the line or was answered).
    fn stop_announcing(&mut self) {
        self.announcement.clear();
        self.announcing = false;
    }

    /// R3.22 after a takeover: the last Queue node of the IVR trail that reports lost calls
    /// (looked up in the call's flow, then the entry flow).
    fn lost_call_from_trail(&self) -> Option<(String, String)> {
        let entry = match &self.setup.route.entry {
            Entry::Flow(f) => self.setup.flows.get(f),
            Entry::Queue(_) => None,
        };
        self.cdr.ivr.iter().rev().find_map(|step| {
            self.current_flow().into_iter().chain(entry).find_map(|f| {
                match f.nodes.get(&step.node) {
                    Some(FlowNode::Queue {
                        lost_call_webhook: Some(webhook),
                        ..
                    }) => Some((step.node.clone(), webhook.clone())),
                    _ => None,
                }
            })
        })
    }

    fn current_flow(&self) -> Option<&Flow> {
        self.flow.as_ref().and_then(|f| self.setup.flows.get(f))
    }

    fn flow_node(&self, name: &str) -> Option<&FlowNode> {
        self.current_flow().and_then(|f| f.nodes.get(name))
    }

    fn enter_node(&mut self, now_ms: u64, name: &str) {
        let Some(node) = self.flow_node(name).cloned() else {
            return self.fail(now_ms, "flow node missing");
        };
        match node {
            FlowNode::Play { prompt, .. } | FlowNode::Menu { prompt, .. } => {
                self.state = State::Ivr {
                    node: name.to_string(),
                    menu_deadline: None,
                };
                self.outputs.push_back(CallOutput::Play {
                    prompt,
                    repeat: false,
                });
            }
            FlowNode::Queue {
                queue,
                also,
                priority,
                lost_call_webhook,
            } => {
                if let Some(webhook) = lost_call_webhook {
                    self.lost_call = Some((name.to_string(), webhook));
                }
                self.cdr.ivr.push(IvrStep {
                    node: name.to_string(),
                    key: None,
                    at_ms: now_ms,
                });
                // R3.21: the IVR chose `queue`; a routing rule on that choice may refine it.
                match self.route_by_script(now_ms, Stage::Ivr(&queue)) {
                    Some(Some(target)) => self.go_to(now_ms, target, priority),
                    _ => self.enqueue_with(now_ms, queue, also, priority),
                }
            }
            FlowNode::Hangup { prompt } => {
                self.cdr.ivr.push(IvrStep {
                    node: name.to_string(),
                    key: None,
                    at_ms: now_ms,
                });
                self.release(now_ms, prompt, Disposition::Released);
            }
        }
    }

    fn enqueue(&mut self, now_ms: u64, queue: QueueId, priority: u8) {
        self.enqueue_with(now_ms, queue, Vec::new(), priority)
    }

    /// Joins `queue`, and the `also` queues at the same time (R3.10).
    fn enqueue_with(&mut self, now_ms: u64, queue: QueueId, also: Vec<QueueId>, priority: u8) {
        self.also = also
            .into_iter()
            .filter(|q| *q != queue && self.setup.queues.contains_key(q))
            .collect();
        let Some(config) = self.setup.queues.get(&queue) else {
            return self.fail(now_ms, "queue missing");
        };
        // R3.16: a repeat caller is held for the agents who served it, for a while.
        if let Some(repeat) = &config.repeat_caller {
            let history = &self.setup.profile.history;
            let preferred = repeat.preferred(history, now_ms);
            if !preferred.is_empty() {
                let since = now_ms.saturating_sub(repeat.period.ms());
                self.cdr.repeat_caller = Some(RepeatMark {
                    queue: queue.clone(),
                    calls: history.iter().filter(|c| c.at_ms >= since).count() as u32,
                    preferred,
                    until_ms: now_ms + repeat.wait_ms,
                });
            }
        }
        // R3.7, R3.12: the call waits at least at its customer's level and at the priority
        // of the routing rule that sent it.
        let rule_priority = self
            .cdr
            .routed_by
            .last()
            .and_then(|name| self.setup.profile.rules.iter().find(|r| &r.name == name))
            .and_then(|r| r.priority);
        let level = self.setup.profile.customer.as_ref().map(|c| c.level);
        let priority = priority
            .max(level.unwrap_or(0))
            .max(rule_priority.unwrap_or(0));
        self.cdr.queue = Some(queue.clone());
        self.cdr.enqueued_at_ms = Some(now_ms);
        self.resume_queued(now_ms, queue, priority, now_ms, None, true);
    }

    /// The first rule of the tenant's routing script that holds at `stage` and has not
    /// applied to this call yet (so a rule that leads back to where it applies cannot loop),
    /// recorded in the CDR; its target, or where the call was going for a rule without one.
    fn route_by_script(&mut self, at_ms: u64, stage: Stage<'_>) -> Option<Option<RouteTarget>> {
        let number = model::routing::normalise_number(&self.setup.caller);
        let caller = model::Caller {
            number: &number,
            customer: self.setup.profile.customer.as_ref(),
            landing_code: self.setup.route.landing_code.as_deref(),
            access_code: &self.setup.route.access_code,
            now_ms: at_ms,
        };
        let rule = self
            .setup
            .profile
            .rules
            .iter()
            .filter(|r| !self.cdr.routed_by.contains(&r.name))
            .find(|r| r.matches(&caller, stage))?;
        self.cdr.routed_by.push(rule.name.clone());
        Some(rule.then.clone())
    }

    /// Sends the call where a routing rule says.
    fn go_to(&mut self, now_ms: u64, target: RouteTarget, priority: u8) {
        match target {
            RouteTarget::Queue(queue) => self.enqueue(now_ms, queue, priority),
            RouteTarget::Flow { flow, node } => {
                self.flow = Some(flow);
                self.start_flow(now_ms, node);
            }
        }
    }

    /// Enters the call's current flow at `node`, or at its start.
    fn start_flow(&mut self, now_ms: u64, node: Option<String>) {
        let start = node.or_else(|| self.current_flow().map(|f| f.start.clone()));
        match start {
            Some(start) => self.enter_node(now_ms, &start),
            None => self.fail(now_ms, "flow missing"),
        }
    }

    /// R3.3-R3.6: a rule of `queue` holds for the call (the queue turned it away, it waited
    /// too long, or the caller pressed the cancel key). Release it (with the rule's prompt), or
    /// transfer it to the rule's queue or IVR flow. A call never goes back into a queue whose
    /// rule sent it away (a loop of full or busy queues ends in a release), and a call moved
    /// on by rules `MAX_RULE_STEPS` times is released (a flow that leads back into a busy
    /// queue cannot spin). The step is in the CDR's `rules` trail, which is checkpointed, so
    /// both guards hold across a takeover.
    fn apply_rule(&mut self, now_ms: u64, queue: QueueId, rule: QueueRule) {
        self.stop_announcing();
        self.interflow.clear();
        let action = self
            .setup
            .queues
            .get(&queue)
            .map(|q| q.rule_or_default(rule))
            .unwrap_or(RuleAction::Release { prompt: None });
        // The queue no longer holds the call. After a refusal this still matters: a periodic
        // resync (which re-states a place and is never turned away) may have crossed the
        // refusal and put the call in line.
        self.outputs.push_back(CallOutput::Dequeue {
            queue: queue.clone(),
        });
        self.leave_also();
        self.also.clear();
        let visited = |m: &Self, q: &QueueId| m.cdr.rules.iter().any(|r| &r.queue == q);
        let too_many = self.cdr.rules.len() >= MAX_RULE_STEPS;
        let allowed = !too_many
            && match &action {
                RuleAction::Release { .. } => true,
                RuleAction::TransferQueue { queue: next }
                | RuleAction::TransferAgent { queue: next, .. } => {
                    *next != queue && !visited(self, next) && self.setup.queues.contains_key(next)
                }
                RuleAction::TransferFlow { flow, node } => {
                    !self.virtual_call
                        && self.setup.flows.get(flow).is_some_and(|f| {
                            f.nodes
                                .contains_key(node.as_deref().unwrap_or(f.start.as_str()))
                        })
                }
                RuleAction::Interflow { queues } => queues.iter().any(|next| {
                    *next != queue && !visited(self, next) && self.setup.queues.contains_key(next)
                }),
                // Nobody is on a virtual call's line to put through.
                RuleAction::TransferNumber { .. } => !self.virtual_call,
            };
        self.cdr.rules.push(RuleStep {
            queue,
            rule,
            action: action.clone(),
            at_ms: now_ms,
        });
        // The reason says why a call was released; a transfer is in the trail only (the call
        // may yet be answered).
        match action {
            _ if !allowed => {
                self.cdr.reason = Some(rule.reason().into());
                self.release(now_ms, None, Disposition::Released)
            }
            RuleAction::Release { prompt } => {
                self.cdr.reason = Some(rule.reason().into());
                self.release(now_ms, prompt, Disposition::Released)
            }
            // R3.4: the agent's own transfer is in the trail, where `call_needs` finds it.
            RuleAction::TransferQueue { queue: next }
            | RuleAction::TransferAgent { queue: next, .. } => {
                self.outputs.push_back(CallOutput::StopPlay);
                self.enqueue(now_ms, next, self.priority);
            }
            RuleAction::Interflow { queues } => {
                // The queue whose rule fired is in the trail now: never a target.
                let mut targets: VecDeque<QueueId> = queues
                    .into_iter()
                    .filter(|next| !visited(self, next) && self.setup.queues.contains_key(next))
                    .collect();
                let first = targets.pop_front().expect("checked: one target at least");
                self.interflow = targets;
                self.outputs.push_back(CallOutput::StopPlay);
                self.enqueue(now_ms, first, self.priority);
            }
            RuleAction::TransferNumber { number, trunk } => {
                self.outputs.push_back(CallOutput::StopPlay);
                self.max_wait_deadline = None;
                self.cdr.wait_ms = now_ms.saturating_sub(self.cdr.enqueued_at_ms.unwrap_or(now_ms));
                self.dial_out(now_ms, number, trunk);
            }
            RuleAction::TransferFlow { flow, node } => {
                self.outputs.push_back(CallOutput::StopPlay);
                self.max_wait_deadline = None;
                let node = match node {
                    Some(node) => node,
                    None => self.setup.flows[&flow].start.clone(),
                };
                self.flow = Some(flow);
                self.enter_node(now_ms, &node);
            }
        }
    }

    /// R3.4: rings the external number of a transfer (again, after a takeover).
    fn dial_out(&mut self, now_ms: u64, number: String, trunk: TrunkId) {
        if self.cdr.external.is_none() {
            self.cdr.external = Some(model::ExternalMark {
                number: number.clone(),
                trunk: trunk.clone(),
                dialled_at_ms: now_ms,
                answered_at_ms: None,
            });
        }
        self.outputs.push_back(CallOutput::DialOut {
            number: number.clone(),
            trunk: trunk.clone(),
        });
        self.state = State::External {
            number,
            trunk,
            deadline: Some(now_ms + model::EXTERNAL_RING_MS),
        };
    }

    /// R3.4: the external number did not take the call: it is released with the reason.
    fn external_failed(&mut self, now_ms: u64, reason: String) {
        let number = match &self.state {
            State::External { number, .. } => number.clone(),
            _ => return,
        };
        self.cdr.reason = Some(format!("transfer to {number} failed: {reason}"));
        self.release(now_ms, None, Disposition::Released);
    }

    fn offer_failed(
        &mut self,
        now_ms: u64,
        queue: QueueId,
        agent: AgentId,
        agent_node: NodeId,
        no_answer: bool,
    ) {
        self.cdr.ring_started_at_ms = None;
        self.outputs.push_back(CallOutput::Agent {
            agent: agent.clone(),
            agent_node,
            notice: AgentNotice::Failed { no_answer },
        });
        self.outputs.push_back(CallOutput::OfferDone {
            queue: queue.clone(),
            agent,
            answered: false,
        });
        self.state = State::Queued {
            queue: queue.clone(),
        };
        let enqueued_at_ms = self.cdr.enqueued_at_ms.unwrap_or(self.cdr.started_at_ms);
        self.join_also(self.priority, enqueued_at_ms, false);
        if self.max_wait_deadline.is_some_and(|d| now_ms >= d) {
            self.handle_timeout(now_ms);
        }
    }

    /// R3.11: the caller pressed the callback key: it hears the queue's callback prompt (if
    /// any), then the platform hangs up and the call waits on, virtual.
    fn request_callback(&mut self, now_ms: u64, queue: QueueId, prompt: Option<PromptId>) {
        self.cdr.callback = Some(model::CallbackMark {
            queue,
            requested_at_ms: now_ms,
            by: "key".into(),
            dialled_at_ms: None,
            answered_at_ms: None,
        });
        self.stop_announcing();
        self.outputs.push_back(CallOutput::StopPlay);
        match prompt {
            Some(prompt) => {
                self.confirming_callback = true;
                self.outputs.push_back(CallOutput::Play {
                    prompt,
                    repeat: false,
                });
            }
            None => self.go_virtual(),
        }
    }

    /// R3.11: the caller's line closes; the call keeps its place in its queues.
    fn go_virtual(&mut self) {
        self.virtual_call = true;
        self.announce_at = None;
        self.periodic_at = None;
        self.outputs.push_back(CallOutput::StopPlay);
        self.outputs.push_back(CallOutput::HangupCustomer);
    }

    /// R3.11: the agent answered a virtual call: dial the caller through the queue's trunk.
    fn call_back(&mut self, now_ms: u64, queue: QueueId, agent: AgentId, agent_node: NodeId) {
        let config = self.setup.queues.get(&queue);
        let trunk = config
            .and_then(|q| q.callback.as_ref())
            .map(|c| c.trunk.clone());
        let ring_timeout_ms = config.map_or(30_000, |q| q.ring_timeout_ms);
        self.state = State::CallingBack {
            queue,
            agent,
            agent_node,
            deadline: now_ms + ring_timeout_ms,
        };
        let Some(trunk) = trunk else {
            return self.callback_failed(now_ms, "the queue no longer offers callbacks".into());
        };
        if let Some(mark) = self.cdr.callback.as_mut() {
            mark.dialled_at_ms = Some(now_ms);
        }
        self.outputs.push_back(CallOutput::DialCustomer {
            number: self.setup.caller.clone(),
            trunk,
            ring_timeout_ms,
        });
    }

    /// R3.11: the callback failed: the agent is freed, the call ends.
    fn callback_failed(&mut self, now_ms: u64, reason: String) {
        self.cdr.reason = Some(reason);
        self.finish(now_ms, HangupBy::System, Disposition::Released);
    }

    /// R3.20: the caller leaves the line (all its queues) for `queue`'s voicemail.
    fn start_voicemail(&mut self, now_ms: u64, queue: QueueId, v: model::VoicemailBox) {
        self.stop_announcing();
        self.outputs.push_back(CallOutput::Dequeue {
            queue: queue.clone(),
        });
        self.leave_also();
        self.also.clear();
        self.max_wait_deadline = None;
        self.announce_at = None;
        self.periodic_at = None;
        self.cdr.wait_ms = now_ms.saturating_sub(self.cdr.enqueued_at_ms.unwrap_or(now_ms));
        self.outputs.push_back(CallOutput::StopPlay);
        self.outputs.push_back(CallOutput::Play {
            prompt: v.prompt,
            repeat: false,
        });
        self.state = State::Voicemail { queue, until: None };
    }

    fn note_voicemail_end(&mut self, now_ms: u64) {
        // Never past the message's end (a takeover may come after it).
        let end = match self.state {
            State::Voicemail {
                until: Some(until), ..
            } => now_ms.min(until),
            _ => now_ms,
        };
        if let Some(mark) = self.cdr.voicemail.as_mut() {
            mark.duration_ms = end.saturating_sub(mark.started_at_ms);
        }
        self.cdr.reason = Some("voicemail".into());
    }

    /// The message is over (its time is up, or `#`): thanks, then the platform hangs up.
    fn end_voicemail(&mut self, now_ms: u64) {
        let State::Voicemail { queue, .. } = self.state.clone() else {
            return;
        };
        self.note_voicemail_end(now_ms);
        let thanks = self
            .setup
            .queues
            .get(&queue)
            .and_then(|q| q.voicemail.as_ref())
            .and_then(|v| v.thanks.clone());
        self.release(now_ms, thanks, Disposition::Released);
    }

    fn refuse_offer(&mut self, queue: QueueId, agent: AgentId, agent_node: NodeId) {
        self.outputs.push_back(CallOutput::Agent {
            agent: agent.clone(),
            agent_node,
            notice: AgentNotice::Failed { no_answer: false },
        });
        self.outputs.push_back(CallOutput::OfferDone {
            queue,
            agent,
            answered: false,
        });
    }

    fn release(&mut self, now_ms: u64, prompt: Option<PromptId>, disposition: Disposition) {
        self.stop_announcing();
        self.cdr.disposition = disposition;
        // Nobody hears a prompt on a virtual call (R3.11).
        let prompt = prompt.filter(|_| !self.virtual_call);
        match prompt {
            Some(prompt) => {
                self.state = State::Releasing;
                self.outputs.push_back(CallOutput::Play {
                    prompt,
                    repeat: false,
                });
            }
            None => self.finish(now_ms, HangupBy::System, disposition),
        }
    }

    fn fail(&mut self, now_ms: u64, reason: &str) {
        self.cdr.reason = Some(reason.to_string());
        self.finish(now_ms, HangupBy::System, Disposition::Failed);
    }

    /// One side hung up.
    fn hangup(&mut self, now_ms: u64, by: HangupBy) {
        // R3.11: nobody is on a virtual call's line to hang up (a late BYE, or the media
        // timeout of the closed leg, means nothing).
        if by == HangupBy::Caller
            && self.virtual_call
            && matches!(
                self.state,
                State::Queued { .. } | State::Offering { .. } | State::CallingBack { .. }
            )
        {
            return;
        }
        // R3.11: a caller who hangs up after waiting long enough keeps its place.
        if by == HangupBy::Caller && !self.virtual_call {
            if let State::Queued { queue } | State::Offering { queue, .. } = &self.state {
                let queue = queue.clone();
                let waited = now_ms.saturating_sub(self.cdr.enqueued_at_ms.unwrap_or(now_ms));
                let keeps = self
                    .setup
                    .queues
                    .get(&queue)
                    .and_then(|q| q.callback.as_ref())
                    .and_then(|c| c.after_ms)
                    .is_some_and(|after| waited >= after);
                // Hanging up during the callback prompt is the hang-up the caller expects.
                if keeps || self.confirming_callback {
                    if self.cdr.callback.is_none() {
                        self.cdr.callback = Some(model::CallbackMark {
                            queue,
                            requested_at_ms: now_ms,
                            by: "hangup".into(),
                            dialled_at_ms: None,
                            answered_at_ms: None,
                        });
                    }
                    self.confirming_callback = false;
                    self.virtual_call = true;
                    self.stop_announcing();
                    self.announce_at = None;
                    self.periodic_at = None;
                    return;
                }
            }
        }
        match self.state.clone() {
            State::Ended => {}
            State::Talking { .. } => self.finish(now_ms, by, Disposition::Answered),
            State::Queued { queue } => {
                self.outputs.push_back(CallOutput::Dequeue { queue });
                self.leave_also();
                self.finish(now_ms, by, Disposition::Abandoned);
            }
            State::Offering {
                queue,
                agent,
                agent_node,
                ..
            } => {
                self.outputs.push_back(CallOutput::CancelAgent);
                self.outputs.push_back(CallOutput::Agent {
                    agent: agent.clone(),
                    agent_node,
                    notice: AgentNotice::Failed { no_answer: false },
                });
                self.outputs.push_back(CallOutput::OfferDone {
                    queue: queue.clone(),
                    agent,
                    answered: false,
                });
                self.outputs.push_back(CallOutput::Dequeue { queue });
                self.finish(now_ms, by, Disposition::Abandoned);
            }
            State::Releasing => self.finish(now_ms, by, self.cdr.disposition),
            // Hanging up ends a message: it is left all the same.
            State::Voicemail { until: Some(_), .. } => {
                self.note_voicemail_end(now_ms);
                self.finish(now_ms, by, Disposition::Released)
            }
            State::Voicemail { until: None, .. } | State::Setup | State::Ivr { .. } => {
                self.finish(now_ms, by, Disposition::Abandoned)
            }
            State::CallingBack { .. } => {
                self.cdr.reason = Some("the agent hung up before the callback was answered".into());
                self.finish(now_ms, by, Disposition::Released)
            }
            State::External {
                deadline: Some(_), ..
            } => {
                self.outputs.push_back(CallOutput::CancelAgent);
                self.finish(now_ms, by, Disposition::Abandoned)
            }
            State::External { deadline: None, .. } => {
                self.finish(now_ms, by, Disposition::Transferred)
            }
        }
    }

    fn finish(&mut self, now_ms: u64, by: HangupBy, disposition: Disposition) {
        let previous = std::mem::replace(&mut self.state, State::Ended);
        self.outputs.push_back(CallOutput::StopPlay);
        if let State::Talking {
            queue,
            agent,
            agent_node,
        }
        | State::CallingBack {
            queue,
            agent,
            agent_node,
            ..
        } = &previous
        {
            let acw_ms = self.setup.queues.get(queue).map_or(0, |q| q.acw_ms);
            self.outputs.push_back(CallOutput::Agent {
                agent: agent.clone(),
                agent_node: *agent_node,
                notice: AgentNotice::Ended { acw_ms },
            });
            self.cdr.talk_ms =
                now_ms.saturating_sub(self.cdr.agent_answered_at_ms.unwrap_or(now_ms));
            if by != HangupBy::Agent {
                self.outputs.push_back(CallOutput::HangupAgent);
            }
        }
        if let State::External { deadline: None, .. } = &previous {
            let answered = self.cdr.external.as_ref().and_then(|e| e.answered_at_ms);
            self.cdr.talk_ms = now_ms.saturating_sub(answered.unwrap_or(now_ms));
            if by != HangupBy::Agent {
                self.outputs.push_back(CallOutput::HangupAgent);
            }
        }
        // A caller who left a message stopped waiting when it chose to (`start_voicemail`).
        if matches!(previous, State::Queued { .. } | State::Offering { .. })
            || (disposition != Disposition::Answered
                && self.cdr.enqueued_at_ms.is_some()
                && self.cdr.voicemail.is_none()
                && self.cdr.external.is_none())
        {
            self.cdr.wait_ms = now_ms.saturating_sub(self.cdr.enqueued_at_ms.unwrap_or(now_ms));
        }
        if by != HangupBy::Caller {
            self.outputs.push_back(CallOutput::HangupCustomer);
        }
        self.cdr.ended_at_ms = now_ms;
        self.cdr.hangup_by = by;
        self.cdr.disposition = disposition;
        // A transfer out that was answered (R3.4) reached a human too.
        let lost =
            self.cdr.agent_answered_at_ms.is_none() && disposition != Disposition::Transferred;
        if let (Some((node, webhook)), true) = (self.lost_call.take(), lost) {
            self.outputs.push_back(CallOutput::LostCall {
                webhook,
                node,
                cdr: Box::new(self.cdr.clone()),
            });
        }
        self.outputs
            .push_back(CallOutput::Cdr(Box::new(self.cdr.clone())));
        self.outputs.push_back(CallOutput::Finished);
    }
}

#[cfg(test)]
mod tests;
