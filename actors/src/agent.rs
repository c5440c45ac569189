//! The agent state machine (R4.1), pure: `handle(now_ms, input)` then drain `poll_output`,
//! and call `handle_timeout` at `poll_timeout`. The AgentActor is a thin driver around it.
//!
//! It is the arbiter of I1 (an agent is never offered or connected to two calls at once): a
//! queue may only offer a call after this machine accepted a `Reserve`, and it accepts one
//! reservation at a time. Every bound state expires by itself: a reservation that never turns
//! into ringing is dropped after `RESERVE_TIMEOUT_MS`, after-call work ends at its deadline.

use std::collections::VecDeque;

use model::{
    AgentId, AgentSession, AgentStatus, AwayReason, CallId, ExtensionId, NodeId, QueueId, TenantId,
};

/// How long a reservation may wait for the call to start ringing the agent.
pub const RESERVE_TIMEOUT_MS: u64 = 5_000;
/// How long the agent may be ringing before the machine frees it on its own (a backstop:
/// the call normally reports the outcome well before).
pub const RING_BACKSTOP_MS: u64 = 120_000;

#[derive(Clone, Debug, PartialEq)]
pub enum AgentInput {
    SignIn {
        extension: ExtensionId,
    },
    Ready,
    NotReady {
        reason: String,
    },
    SignOut,
    /// A queue asks to hold the agent for a call (first half of an offer).
    Reserve {
        call: CallId,
        queue: QueueId,
    },
    /// The queue withdrew the reservation (the call went away).
    CancelReservation {
        call: CallId,
    },
    Ringing {
        call: CallId,
    },
    Answered {
        call: CallId,
    },
    /// The call ended after the agent talked; after-call work lasts `acw_ms`.
    CallEnded {
        call: CallId,
        acw_ms: u64,
    },
    /// The offer did not connect; a ring without answer sets the agent not-ready so it is
    /// not offered call after call while away from the desk.
    OfferFailed {
        call: CallId,
        no_answer: bool,
    },
    /// The queues the agent serves changed (R3.19 skill reset, R3.18 role): a ready agent
    /// leaves the old queues and joins the new ones at once, keeping its idle time.
    Skills {
        skills: Vec<QueueId>,
    },
    /// R4.7: manager `by` sends the agent away for `reason` (not while on a call).
    Away {
        reason: AwayReason,
        by: AgentId,
    },
    /// R4.7: a manager ends the away state: the agent is ready, or not ready.
    EndAway {
        ready: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentOutput {
    /// Replicate this session through Raft (and publish it as an event).
    Checkpoint(AgentSession),
    /// Tell these queues whether the agent can take a call now.
    Availability {
        queues: Vec<QueueId>,
        available: bool,
        idle_since_ms: u64,
    },
    /// Answer to a queue's `Reserve`.
    ReserveReply {
        queue: QueueId,
        call: CallId,
        accepted: bool,
        extension: Option<ExtensionId>,
    },
}

/// Operator errors (the API reports them; the state is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("the agent is not signed in")]
    NotSignedIn,
    #[error("the agent is already signed in at extension {0}")]
    AlreadySignedIn(String),
    #[error("the agent is on a call; try again after the call")]
    OnCall,
    #[error("the agent is away ({0}), set by a manager: only a manager ends it")]
    AwayByManager(&'static str),
    #[error("{0} is an away state only a manager sets")]
    ManagerReason(String),
}

/// Whether an agent's own not-ready reason names a manager-only away state (R4.7).
fn is_manager_reason(reason: &str) -> bool {
    ["training", "study", "meeting", "interview"]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(reason.trim()))
}

pub struct AgentMachine {
    tenant: TenantId,
    agent: AgentId,
    owner: NodeId,
    skills: Vec<QueueId>,
    extension: Option<ExtensionId>,
    status: AgentStatus,
    since_ms: u64,
    idle_since_ms: u64,
    calls_answered: u64,
    away_ms: std::collections::BTreeMap<String, u64>,
    state_ms: std::collections::BTreeMap<String, u64>,
    version: u64,
    reserved_by: Option<QueueId>,
    outputs: VecDeque<AgentOutput>,
}

impl AgentMachine {
    pub fn new(tenant: TenantId, agent: AgentId, owner: NodeId, skills: Vec<QueueId>) -> Self {
        Self {
            tenant,
            agent,
            owner,
            skills,
            extension: None,
            status: AgentStatus::SignedOut,
            since_ms: 0,
            idle_since_ms: 0,
            calls_answered: 0,
            away_ms: Default::default(),
            state_ms: Default::default(),
            version: 0,
            reserved_by: None,
            outputs: VecDeque::new(),
        }
    }

    /// Rebuilds the machine from its last checkpoint (a node restart or a new owner).
    pub fn restore(session: &AgentSession, owner: NodeId, skills: Vec<QueueId>) -> Self {
        let mut m = Self::new(session.tenant.clone(), session.agent.clone(), owner, skills);
        m.extension = (session.status != AgentStatus::SignedOut).then(|| session.extension.clone());
        m.status = session.status.clone();
        m.since_ms = session.since_ms;
        m.idle_since_ms = session.idle_since_ms;
        m.calls_answered = session.calls_answered;
        m.away_ms = session.away_ms.clone();
        m.state_ms = session.state_ms.clone();
        m.version = session.version;
        m
    }

    pub fn status(&self) -> &AgentStatus {
        &self.status
    }

    /// The queues the agent serves now.
    pub fn skills(&self) -> &[QueueId] {
        &self.skills
    }

    pub fn session(&self) -> AgentSession {
        AgentSession {
            tenant: self.tenant.clone(),
            agent: self.agent.clone(),
            extension: self.extension.clone().unwrap_or_else(|| {
                self.agent
                    .as_str()
                    .parse()
                    .expect("agent numbers are valid extensions")
            }),
            status: self.status.clone(),
            since_ms: self.since_ms,
            idle_since_ms: self.idle_since_ms,
            calls_answered: self.calls_answered,
            away_ms: self.away_ms.clone(),
            state_ms: self.state_ms.clone(),
            owner: self.owner,
            version: self.version,
            fence: None,
        }
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<AgentOutput> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.status {
            AgentStatus::AfterCallWork { until_ms } => Some(*until_ms),
            AgentStatus::Reserved { .. } => Some(self.since_ms + RESERVE_TIMEOUT_MS),
            AgentStatus::Ringing { .. } => Some(self.since_ms + RING_BACKSTOP_MS),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.status.clone() {
            AgentStatus::AfterCallWork { until_ms } if now_ms >= until_ms => {
                self.become_ready(now_ms)
            }
            AgentStatus::Reserved { .. } if now_ms >= self.since_ms + RESERVE_TIMEOUT_MS => {
                // The call never rang us: the reservation expires by itself and the agent is
                // as idle as before (its place in the longest-idle order is kept).
                self.reserved_by = None;
                self.set_status(now_ms, AgentStatus::Ready);
                self.announce(true);
            }
            AgentStatus::Ringing { .. } if now_ms >= self.since_ms + RING_BACKSTOP_MS => {
                self.set_status(
                    now_ms,
                    AgentStatus::NotReady {
                        reason: "no_answer".into(),
                    },
                );
            }
            _ => {}
        }
    }

    pub fn handle(&mut self, now_ms: u64, input: AgentInput) -> Result<(), AgentError> {
        match input {
            AgentInput::SignIn { extension } => {
                if let Some(current) = &self.extension {
                    if self.status != AgentStatus::SignedOut {
                        return Err(AgentError::AlreadySignedIn(current.to_string()));
                    }
                }
                self.extension = Some(extension);
                // Signed in but not ready: the agent says when it can take calls (R4.1).
                self.set_status(
                    now_ms,
                    AgentStatus::NotReady {
                        reason: "signed_in".into(),
                    },
                );
            }
            AgentInput::Ready | AgentInput::NotReady { .. }
                if matches!(self.status, AgentStatus::Away { .. }) =>
            {
                let AgentStatus::Away { reason, .. } = self.status else {
                    unreachable!("matched above")
                };
                return Err(AgentError::AwayByManager(reason.name()));
            }
            AgentInput::NotReady { reason } if is_manager_reason(&reason) => {
                return Err(AgentError::ManagerReason(reason));
            }
            AgentInput::Away { reason, by } => match &self.status {
                AgentStatus::SignedOut => return Err(AgentError::NotSignedIn),
                s if s.call().is_some() => return Err(AgentError::OnCall),
                _ => {
                    let was_ready = self.status == AgentStatus::Ready;
                    self.end_away(now_ms);
                    self.set_status(now_ms, AgentStatus::Away { reason, by });
                    if was_ready {
                        self.announce(false);
                    }
                }
            },
            AgentInput::EndAway { ready } => {
                if !matches!(self.status, AgentStatus::Away { .. }) {
                    return Ok(());
                }
                self.end_away(now_ms);
                if ready {
                    self.become_ready(now_ms);
                } else {
                    self.set_status(
                        now_ms,
                        AgentStatus::NotReady {
                            reason: "away_ended".into(),
                        },
                    );
                }
            }
            AgentInput::Ready => match &self.status {
                AgentStatus::SignedOut => return Err(AgentError::NotSignedIn),
                AgentStatus::NotReady { .. } | AgentStatus::AfterCallWork { .. } => {
                    self.become_ready(now_ms)
                }
                AgentStatus::Ready => {}
                _ => return Err(AgentError::OnCall),
            },
            AgentInput::NotReady { reason } => match &self.status {
                AgentStatus::SignedOut => return Err(AgentError::NotSignedIn),
                AgentStatus::Ready
                | AgentStatus::NotReady { .. }
                | AgentStatus::AfterCallWork { .. } => {
                    let was_ready = self.status == AgentStatus::Ready;
                    self.set_status(now_ms, AgentStatus::NotReady { reason });
                    if was_ready {
                        self.announce(false);
                    }
                }
                _ => return Err(AgentError::OnCall),
            },
            AgentInput::SignOut => match &self.status {
                AgentStatus::SignedOut => return Err(AgentError::NotSignedIn),
                s if s.call().is_some() => return Err(AgentError::OnCall),
                _ => {
                    let was_ready = self.status == AgentStatus::Ready;
                    self.set_status(now_ms, AgentStatus::SignedOut);
                    self.extension = None;
                    if was_ready {
                        self.announce(false);
                    }
                }
            },
            AgentInput::Reserve { call, queue } => {
                let accepted = self.status == AgentStatus::Ready;
                if accepted {
                    self.reserved_by = Some(queue.clone());
                    self.set_status(now_ms, AgentStatus::Reserved { call: call.clone() });
                    // Other queues must stop considering this agent.
                    self.announce(false);
                }
                self.outputs.push_back(AgentOutput::ReserveReply {
                    queue,
                    call,
                    accepted,
                    extension: self.extension.clone(),
                });
            }
            AgentInput::CancelReservation { call } => {
                if self.status == (AgentStatus::Reserved { call }) {
                    self.reserved_by = None;
                    self.set_status(now_ms, AgentStatus::Ready);
                    self.announce(true);
                }
            }
            // While only reserved, the agent may be rung for another call than the one it was
            // reserved for: the reserving queue hands a held agent to its best waiting call.
            // Only that queue holds the agent (one reservation at a time), so this cannot
            // double-book it (I1). Failure notices stay strict (a stale one must not free an
            // agent held for a newer call); a re-bound reservation that fails expires instead.
            AgentInput::Ringing { call } => {
                if matches!(self.status, AgentStatus::Reserved { .. }) {
                    self.set_status(now_ms, AgentStatus::Ringing { call });
                }
            }
            AgentInput::Answered { call } => {
                let rung = matches!(&self.status, AgentStatus::Ringing { call: c } if *c == call);
                if rung || matches!(self.status, AgentStatus::Reserved { .. }) {
                    self.calls_answered += 1;
                    self.set_status(now_ms, AgentStatus::Talking { call });
                }
            }
            AgentInput::CallEnded { call, acw_ms } => {
                if self.status.call() == Some(&call) {
                    self.reserved_by = None;
                    if acw_ms == 0 {
                        self.become_ready(now_ms);
                    } else {
                        self.set_status(
                            now_ms,
                            AgentStatus::AfterCallWork {
                                until_ms: now_ms + acw_ms,
                            },
                        );
                    }
                }
            }
            AgentInput::OfferFailed { call, no_answer } => {
                // Only an offer in progress can fail: once the agent talks on the call, a
                // failure notice for it is stale (a node declared down that does not know it
                // yet gave up its own ring of a call another node took over and the agent
                // answered there); it must not free an agent on a call.
                let offered = matches!(
                    &self.status,
                    AgentStatus::Reserved { call: c } | AgentStatus::Ringing { call: c } if *c == call
                );
                if offered {
                    self.reserved_by = None;
                    if no_answer {
                        self.set_status(
                            now_ms,
                            AgentStatus::NotReady {
                                reason: "no_answer".into(),
                            },
                        );
                    } else {
                        // Not the agent's fault (the caller left): back to ready, same place.
                        self.set_status(now_ms, AgentStatus::Ready);
                        self.announce(true);
                    }
                }
            }
            AgentInput::Skills { skills } => {
                let ready = self.status == AgentStatus::Ready;
                if ready {
                    self.announce(false);
                }
                self.skills = skills;
                if ready {
                    self.announce(true);
                }
            }
        }
        Ok(())
    }

    /// Adds the away stretch that ends now to the time in its reason (R4.7).
    fn end_away(&mut self, now_ms: u64) {
        if let AgentStatus::Away { reason, .. } = &self.status {
            *self.away_ms.entry(reason.name().to_string()).or_default() +=
                now_ms.saturating_sub(self.since_ms);
        }
    }

    fn become_ready(&mut self, now_ms: u64) {
        self.idle_since_ms = now_ms;
        self.set_status(now_ms, AgentStatus::Ready);
        self.announce(true);
    }

    fn set_status(&mut self, now_ms: u64, status: AgentStatus) {
        // R4.9: the stretch that ends now counts to its state (a signed-out agent's time
        // is nobody's).
        if self.status != AgentStatus::SignedOut {
            *self
                .state_ms
                .entry(self.status.name().to_string())
                .or_default() += now_ms.saturating_sub(self.since_ms);
        }
        self.status = status;
        self.since_ms = now_ms;
        self.version += 1;
        self.outputs
            .push_back(AgentOutput::Checkpoint(self.session()));
    }

    fn announce(&mut self, available: bool) {
        self.outputs.push_back(AgentOutput::Availability {
            queues: self.skills.clone(),
            available,
            idle_since_ms: self.idle_since_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> AgentMachine {
        AgentMachine::new(
            "gd".parse().unwrap(),
            "1001".parse().unwrap(),
            3,
            vec!["general".parse().unwrap()],
        )
    }
    fn drain(m: &mut AgentMachine) -> Vec<AgentOutput> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }
    fn call(n: &str) -> CallId {
        CallId(n.into())
    }

    #[test]
    fn one_reservation_at_a_time() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        drain(&mut m);
        m.handle(
            20,
            AgentInput::Reserve {
                call: call("a"),
                queue: "general".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(
            21,
            AgentInput::Reserve {
                call: call("b"),
                queue: "billing".parse().unwrap(),
            },
        )
        .unwrap();
        let replies: Vec<bool> = drain(&mut m)
            .into_iter()
            .filter_map(|o| match o {
                AgentOutput::ReserveReply { accepted, .. } => Some(accepted),
                _ => None,
            })
            .collect();
        assert_eq!(
            replies,
            vec![true, false],
            "I1: the second reservation is refused"
        );
    }

    #[test]
    fn call_cycle_goes_through_acw_to_ready_and_refuses_sign_out_on_call() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        m.handle(
            20,
            AgentInput::Reserve {
                call: call("a"),
                queue: "general".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(30, AgentInput::Ringing { call: call("a") })
            .unwrap();
        m.handle(40, AgentInput::Answered { call: call("a") })
            .unwrap();
        assert_eq!(m.handle(50, AgentInput::SignOut), Err(AgentError::OnCall));
        m.handle(
            100,
            AgentInput::CallEnded {
                call: call("a"),
                acw_ms: 2_000,
            },
        )
        .unwrap();
        assert_eq!(m.poll_timeout(), Some(2_100));
        m.handle_timeout(2_100);
        assert_eq!(m.status(), &AgentStatus::Ready);
        assert_eq!(
            m.session().idle_since_ms,
            2_100,
            "idle since the end of after-call work"
        );
        assert_eq!(m.session().calls_answered, 1);
        // R4.9: the time of each ended stretch, talk time included; restored with the rest.
        let expected: std::collections::BTreeMap<String, u64> = [
            ("not_ready", 10),
            ("ready", 10),
            ("reserved", 10),
            ("ringing", 10),
            ("talking", 60),
            ("after_call_work", 2_000),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(m.session().state_ms, expected);
        let again = AgentMachine::restore(&m.session(), 2, Vec::new());
        assert_eq!(again.session().state_ms, expected);
    }

    #[test]
    fn a_reservation_expires_by_itself_and_keeps_the_idle_place() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        m.handle(
            20,
            AgentInput::Reserve {
                call: call("a"),
                queue: "general".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle_timeout(20 + RESERVE_TIMEOUT_MS);
        assert_eq!(m.status(), &AgentStatus::Ready);
        assert_eq!(m.session().idle_since_ms, 10);
    }

    #[test]
    fn no_answer_sets_not_ready() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        m.handle(
            20,
            AgentInput::Reserve {
                call: call("a"),
                queue: "general".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(30, AgentInput::Ringing { call: call("a") })
            .unwrap();
        m.handle(
            40,
            AgentInput::OfferFailed {
                call: call("a"),
                no_answer: true,
            },
        )
        .unwrap();
        assert!(matches!(m.status(), AgentStatus::NotReady { .. }));
    }

    #[test]
    fn a_failure_notice_for_the_call_the_agent_talks_on_is_ignored() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        m.handle(
            20,
            AgentInput::Reserve {
                call: call("a"),
                queue: "general".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(30, AgentInput::Ringing { call: call("a") })
            .unwrap();
        m.handle(40, AgentInput::Answered { call: call("a") })
            .unwrap();
        // A stale ring of the same call (on a node declared down) gives up.
        m.handle(
            50,
            AgentInput::OfferFailed {
                call: call("a"),
                no_answer: true,
            },
        )
        .unwrap();
        assert_eq!(m.status(), &AgentStatus::Talking { call: call("a") });
    }

    #[test]
    fn a_skill_reset_moves_a_ready_agent_between_queues_without_signing_in_again() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        drain(&mut m);
        let billing: QueueId = "billing".parse().unwrap();
        m.handle(
            20,
            AgentInput::Skills {
                skills: vec![billing.clone()],
            },
        )
        .unwrap();
        let out = drain(&mut m);
        let moves: Vec<(Vec<QueueId>, bool, u64)> = out
            .iter()
            .filter_map(|o| match o {
                AgentOutput::Availability {
                    queues,
                    available,
                    idle_since_ms,
                } => Some((queues.clone(), *available, *idle_since_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(moves.len(), 2, "{out:?}");
        assert_eq!(
            moves[0],
            (vec!["general".parse().unwrap()], false, 10),
            "leaves the old queue"
        );
        assert_eq!(
            moves[1],
            (vec![billing.clone()], true, 10),
            "same idle place"
        );
        assert_eq!(m.status(), &AgentStatus::Ready, "still signed in and ready");
        assert_eq!(m.skills(), &[billing]);
        assert!(
            !out.iter().any(|o| matches!(o, AgentOutput::Checkpoint(_))),
            "no new session: the sign-in stands"
        );
    }

    #[test]
    fn only_a_manager_sets_and_ends_an_away_state_and_its_time_is_kept_apart() {
        let mut m = machine();
        m.handle(
            0,
            AgentInput::SignIn {
                extension: "1001".parse().unwrap(),
            },
        )
        .unwrap();
        m.handle(10, AgentInput::Ready).unwrap();
        assert!(matches!(
            m.handle(
                20,
                AgentInput::NotReady {
                    reason: "Training".into()
                }
            ),
            Err(AgentError::ManagerReason(_))
        ));
        drain(&mut m);
        let away = |reason| AgentInput::Away {
            reason,
            by: "9001".parse().unwrap(),
        };
        m.handle(1_000, away(AwayReason::Training)).unwrap();
        assert_eq!(m.status().name(), "away");
        let out = drain(&mut m);
        assert!(
            out.iter().any(|o| matches!(
                o,
                AgentOutput::Availability {
                    available: false,
                    ..
                }
            )),
            "leaves its queues"
        );
        for own in [
            AgentInput::Ready,
            AgentInput::NotReady {
                reason: "break".into(),
            },
        ] {
            assert!(matches!(
                m.handle(2_000, own),
                Err(AgentError::AwayByManager("training"))
            ));
        }
        // A meeting next: the training stretch is counted.
        m.handle(61_000, away(AwayReason::Meeting)).unwrap();
        m.handle(91_000, AgentInput::EndAway { ready: true })
            .unwrap();
        assert_eq!(m.status(), &AgentStatus::Ready);
        let s = m.session();
        assert_eq!(s.away_ms.get("training"), Some(&60_000));
        assert_eq!(s.away_ms.get("meeting"), Some(&30_000));
        // Not while on a call.
        m.handle(
            92_000,
            AgentInput::Reserve {
                call: call("c"),
                queue: "general".parse().unwrap(),
            },
        )
        .unwrap();
        assert!(matches!(
            m.handle(93_000, away(AwayReason::Study)),
            Err(AgentError::OnCall)
        ));
    }
}
