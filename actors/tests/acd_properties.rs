//! Pair test of the ACD: `QueueMachine`s and `AgentMachine`s wired in memory, the
//! reserve-then-offer protocol carried between them, and random arrivals, answers, refusals,
//! abandons and agent state changes chosen by proptest. Every agent serves every queue, so
//! with two queues they compete for the same agents and only the agents' one-reservation rule
//! keeps I1. Checked after every step:
//! - I1: no agent is ever reserved, ringing or talking for two calls;
//! - I4: each offer goes to its queue's best waiting call (priority, then arrival) not already
//!   on offer;
//! - no starvation: once everything settles, no call waits while an agent is ready;
//! - R3.12: a call that needs an agent tag is only offered to agents with it (agent i has
//!   tag `t{i % 2}`), and the order of I4 and the no-starvation rule hold among the calls an
//!   agent fits;
//! - counters add up: calls offered to the ACD = answered + abandoned + released (turned away
//!   by a full queue, R3.5) + waiting, and each queue's own count of waiting calls is the true
//!   one (no call lost or counted twice), never above its limit.

use std::collections::{BTreeMap, VecDeque};

use actors::agent::{AgentInput, AgentMachine, AgentOutput};
use actors::queue::{QueueInput, QueueMachine, QueueOutput};
use model::{AgentStatus, CallId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Arrive {
        priority: u8,
        queue: usize,
        /// The agent tag the call needs (R3.12), if any.
        tag: Option<usize>,
    },
    Ready {
        agent: usize,
    },
    NotReady {
        agent: usize,
    },
    /// The oldest pending offer is answered (true) or not (false).
    Resolve {
        answer: bool,
    },
    /// The oldest talking call ends.
    Hangup,
    Abandon {
        nth: usize,
    },
    /// The nth waiting call asks for its estimated wait (R3.9).
    Estimate {
        nth: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, 0usize..2, prop::option::weighted(0.3, 0usize..2))
            .prop_map(|(priority, queue, tag)| Step::Arrive { priority, queue, tag }),
        2 => (0usize..4).prop_map(|agent| Step::Ready { agent }),
        1 => (0usize..4).prop_map(|agent| Step::NotReady { agent }),
        3 => any::<bool>().prop_map(|answer| Step::Resolve { answer }),
        2 => Just(Step::Hangup),
        1 => (0usize..8).prop_map(|nth| Step::Abandon { nth }),
        1 => (0usize..8).prop_map(|nth| Step::Estimate { nth }),
    ]
}

const QUEUES: [&str; 2] = ["general", "billing"];

fn agent_id(i: usize) -> model::AgentId {
    format!("{}", 1001 + i)
        .parse()
        .expect("a valid agent number")
}

/// Agent i's one tag: agents alternate between two.
fn agent_tag(i: usize) -> String {
    format!("t{}", i % 2)
}

fn agent_index(agent: &model::AgentId) -> usize {
    agent.as_str().parse::<usize>().expect("numeric") - 1001
}

fn queue_index(queue: &model::QueueId) -> usize {
    QUEUES
        .iter()
        .position(|q| *q == queue.as_str())
        .expect("a known queue")
}

struct World {
    now: u64,
    queues: Vec<QueueMachine>,
    agents: Vec<AgentMachine>,
    /// call -> (queue, priority, arrival)
    waiting: BTreeMap<String, (usize, u8, u64)>,
    /// call -> the agent tag it needs
    needs: BTreeMap<String, Option<usize>>,
    /// (call, agent) offered and not yet resolved
    offers: VecDeque<(String, usize)>,
    talking: VecDeque<(String, usize)>,
    next_call: u64,
    offers_made: usize,
    answered: u64,
    abandoned: u64,
    released: u64,
    max_queued: Option<u32>,
}

impl World {
    fn new(agents: usize, queues: usize) -> Self {
        Self::with_limit(agents, queues, None)
    }

    /// With `max_queued` set on every queue (R3.5).
    fn with_limit(agents: usize, queues: usize, max_queued: Option<u32>) -> Self {
        let skills: Vec<model::QueueId> = QUEUES[..queues]
            .iter()
            .map(|q| q.parse().expect("valid"))
            .collect();
        let mut w = World {
            now: 1,
            queues: (0..queues)
                .map(|_| {
                    let mut q = QueueMachine::new();
                    q.set_max_queued(max_queued);
                    q
                })
                .collect(),
            agents: (0..agents)
                .map(|i| {
                    AgentMachine::new("gd".parse().expect("valid"), agent_id(i), 1, skills.clone())
                })
                .collect(),
            waiting: BTreeMap::new(),
            needs: BTreeMap::new(),
            offers: VecDeque::new(),
            talking: VecDeque::new(),
            next_call: 0,
            offers_made: 0,
            answered: 0,
            abandoned: 0,
            released: 0,
            max_queued,
        };
        for a in &mut w.agents {
            a.handle(
                0,
                AgentInput::SignIn {
                    extension: "1001".parse().expect("valid"),
                },
            )
            .expect("signs in");
        }
        w.pump();
        w
    }

    /// Delivers messages between the machines until none is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.agents.len() {
                while let Some(out) = self.agents[i].poll_output() {
                    moved = true;
                    match out {
                        AgentOutput::Availability {
                            queues,
                            available,
                            idle_since_ms,
                        } => {
                            for q in queues {
                                let input = if available {
                                    QueueInput::AgentAvailable {
                                        agent: agent_id(i),
                                        agent_node: 1,
                                        idle_since_ms,
                                        fit: model::AgentFit {
                                            tags: vec![agent_tag(i)],
                                            level: 1,
                                        },
                                    }
                                } else {
                                    QueueInput::AgentUnavailable { agent: agent_id(i) }
                                };
                                self.queues[queue_index(&q)].handle(self.now, input);
                            }
                        }
                        AgentOutput::ReserveReply {
                            queue,
                            call,
                            accepted,
                            extension,
                        } => {
                            let input = QueueInput::ReserveReply {
                                agent: agent_id(i),
                                call,
                                accepted,
                                extension,
                            };
                            self.queues[queue_index(&queue)].handle(self.now, input);
                        }
                        AgentOutput::Checkpoint(_) => {}
                    }
                }
            }
            for q in 0..self.queues.len() {
                while let Some(out) = self.queues[q].poll_output() {
                    moved = true;
                    self.on_queue_output(q, out);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn on_queue_output(&mut self, q: usize, out: QueueOutput) {
        match out {
            QueueOutput::Reserve { agent, call, .. } => {
                let input = AgentInput::Reserve {
                    call,
                    queue: QUEUES[q].parse().expect("valid"),
                };
                self.agents[agent_index(&agent)]
                    .handle(self.now, input)
                    .expect("reserve is always answered");
            }
            QueueOutput::CancelReservation { agent, call, .. } => {
                self.agents[agent_index(&agent)]
                    .handle(self.now, AgentInput::CancelReservation { call })
                    .expect("ok");
            }
            QueueOutput::Offer { call, agent, .. } => {
                // R3.12: only to an agent with the tag the call needs.
                let i = agent_index(&agent);
                assert!(
                    self.fits(&call.0, i),
                    "{call} offered to {agent} without its tag"
                );
                // I4: the offered call is its queue's best waiting call, among those the agent
                // fits, not already on offer.
                let on_offer: Vec<&String> = self.offers.iter().map(|(c, _)| c).collect();
                let best = self
                    .waiting
                    .iter()
                    .filter(|(c, (queue, _, _))| {
                        *queue == q && !on_offer.contains(c) && self.fits(c, i)
                    })
                    .min_by_key(|(_, (_, p, at))| (std::cmp::Reverse(*p), *at))
                    .map(|(c, _)| c.clone());
                assert_eq!(
                    best.as_deref(),
                    Some(call.0.as_str()),
                    "I4: offer out of order in queue {q}"
                );
                self.agents[i]
                    .handle(self.now, AgentInput::Ringing { call: call.clone() })
                    .expect("ok");
                self.offers.push_back((call.0, i));
                self.offers_made += 1;
            }
            QueueOutput::TurnedAway { call, .. } => {
                // R3.5: turned away (released by the call's rule); never a call already waiting.
                let entry = self.waiting.remove(&call.0);
                assert!(
                    entry.is_some_and(|(wq, _, _)| wq == q),
                    "a full notice names a call that asked to join queue {q}"
                );
                self.released += 1;
            }
            QueueOutput::WaitEstimate { call, ahead, .. } => {
                // R3.9: only for a call of this queue, with fewer calls ahead than wait.
                let waiting = self.waiting.values().filter(|(wq, _, _)| *wq == q).count();
                assert!(
                    self.waiting.get(&call.0).is_some_and(|(wq, _, _)| *wq == q),
                    "an estimate names a call waiting in queue {q}"
                );
                assert!(ahead < waiting, "{ahead} ahead of {waiting} waiting");
            }
            QueueOutput::Stats(_) => {}
        }
    }

    fn check_i1(&self) {
        for (i, a) in self.agents.iter().enumerate() {
            let bound: Vec<&String> = self
                .offers
                .iter()
                .chain(self.talking.iter())
                .filter(|(_, agent)| *agent == i)
                .map(|(c, _)| c)
                .collect();
            assert!(bound.len() <= 1, "I1: agent {i} bound to {bound:?}");
            if let Some(call) = bound.first() {
                assert_eq!(
                    a.status().call().map(|c| &c.0),
                    Some(*call),
                    "agent state agrees with the call"
                );
            }
        }
    }

    /// Whether agent `i` has the tag `call` needs.
    fn fits(&self, call: &str, i: usize) -> bool {
        self.needs
            .get(call)
            .copied()
            .flatten()
            .is_none_or(|tag| tag == i % 2)
    }

    fn queue_of(&self, call: &str) -> usize {
        self.waiting
            .get(call)
            .map(|(q, _, _)| *q)
            .expect("an offered call is still waiting")
    }

    fn apply(&mut self, step: Step) {
        self.now += 7;
        match step {
            Step::Arrive {
                priority,
                queue,
                tag,
            } => {
                let q = queue % self.queues.len();
                self.next_call += 1;
                let call = format!("c{}", self.next_call);
                self.waiting.insert(call.clone(), (q, priority, self.now));
                self.needs.insert(call.clone(), tag);
                let input = QueueInput::Enqueue {
                    call: CallId(call),
                    call_node: 1,
                    priority,
                    enqueued_at_ms: self.now,
                    offered_to: None,
                    arriving: true,
                    needs: model::CallNeeds {
                        agent_tags: tag.map(|t| format!("t{t}")).into_iter().collect(),
                        ..Default::default()
                    },
                };
                self.queues[q].handle(self.now, input);
            }
            Step::Ready { agent } => {
                if let Some(a) = self.agents.get_mut(agent) {
                    let _ = a.handle(self.now, AgentInput::Ready);
                }
            }
            Step::NotReady { agent } => {
                if let Some(a) = self.agents.get_mut(agent) {
                    let _ = a.handle(
                        self.now,
                        AgentInput::NotReady {
                            reason: "break".into(),
                        },
                    );
                }
            }
            Step::Resolve { answer } => {
                if let Some((call, i)) = self.offers.pop_front() {
                    let q = self.queue_of(&call);
                    let id = CallId(call.clone());
                    if answer {
                        self.waiting.remove(&call);
                        self.answered += 1;
                        self.agents[i]
                            .handle(self.now, AgentInput::Answered { call: id.clone() })
                            .expect("ok");
                        self.talking.push_back((call, i));
                    } else {
                        self.agents[i]
                            .handle(
                                self.now,
                                AgentInput::OfferFailed {
                                    call: id.clone(),
                                    no_answer: false,
                                },
                            )
                            .expect("ok");
                    }
                    let done = QueueInput::OfferDone {
                        call: id,
                        agent: agent_id(i),
                        answered: answer,
                    };
                    self.queues[q].handle(self.now, done);
                }
            }
            Step::Hangup => {
                if let Some((call, i)) = self.talking.pop_front() {
                    self.agents[i]
                        .handle(
                            self.now,
                            AgentInput::CallEnded {
                                call: CallId(call),
                                acw_ms: 0,
                            },
                        )
                        .expect("ok");
                }
            }
            Step::Abandon { nth } => {
                let on_offer: Vec<String> = self.offers.iter().map(|(c, _)| c.clone()).collect();
                if let Some(call) = self
                    .waiting
                    .keys()
                    .filter(|c| !on_offer.contains(c))
                    .nth(nth)
                    .cloned()
                {
                    let q = self.queue_of(&call);
                    self.waiting.remove(&call);
                    self.abandoned += 1;
                    self.queues[q].handle(self.now, QueueInput::Remove { call: CallId(call) });
                }
            }
            Step::Estimate { nth } => {
                if let Some(call) = self.waiting.keys().nth(nth).cloned() {
                    let q = self.queue_of(&call);
                    let input = QueueInput::EstimateWait {
                        call: CallId(call),
                        call_node: 1,
                    };
                    self.queues[q].handle(self.now, input);
                }
            }
        }
        self.pump();
        self.check_i1();
        self.check_counters();
    }

    fn check_counters(&self) {
        let waiting = self.waiting.len() as u64;
        assert_eq!(
            self.next_call,
            self.answered + self.abandoned + self.released + waiting,
            "offered = answered + abandoned + released + waiting"
        );
        for (q, queue) in self.queues.iter().enumerate() {
            let truth = self.waiting.values().filter(|(wq, _, _)| *wq == q).count();
            if let Some(max) = self.max_queued {
                assert!(
                    truth <= max as usize,
                    "queue {q} holds {truth} calls, limit {max}"
                );
            }
            assert_eq!(
                queue.stats().waiting,
                truth,
                "queue {q} counts its waiting calls right"
            );
            assert_eq!(queue.waiting_calls().len(), truth);
        }
    }

    /// Resolves every offer as answered and ends every call, then checks nobody starves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            if self.offers.is_empty() && self.talking.is_empty() {
                break;
            }
            self.apply(Step::Resolve { answer: true });
            self.apply(Step::Hangup);
        }
        let ready: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].status() == &AgentStatus::Ready)
            .collect();
        let starving: Vec<&String> = self
            .waiting
            .keys()
            .filter(|c| ready.iter().any(|i| self.fits(c, *i)))
            .collect();
        assert!(
            starving.is_empty(),
            "starvation: {starving:?} wait while agents {ready:?} that fit are ready"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn acd_never_double_books_and_serves_in_order(
        agents in 1usize..5,
        queues in 1usize..=2,
        max_queued in prop::option::of(0u32..6),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let mut world = World::with_limit(agents, queues, max_queued);
        for s in steps {
            world.apply(s);
        }
        world.settle();
    }
}

#[test]
fn offers_happen_in_a_simple_run() {
    let mut w = World::new(1, 1);
    w.apply(Step::Arrive {
        priority: 0,
        queue: 0,
        tag: None,
    });
    w.apply(Step::Arrive {
        priority: 2,
        queue: 0,
        tag: None,
    });
    w.apply(Step::Ready { agent: 0 });
    assert_eq!(w.offers.len(), 1, "the ready agent is offered a call");
    assert_eq!(w.offers[0].0, "c2", "the higher priority first");
}

#[test]
fn two_queues_compete_for_one_agent_without_double_booking() {
    let mut w = World::new(1, 2);
    w.apply(Step::Arrive {
        priority: 0,
        queue: 0,
        tag: None,
    });
    w.apply(Step::Arrive {
        priority: 0,
        queue: 1,
        tag: None,
    });
    w.apply(Step::Ready { agent: 0 });
    assert_eq!(
        w.offers.len(),
        1,
        "both queues reserved; the agent took one"
    );
    w.apply(Step::Resolve { answer: true });
    w.apply(Step::Hangup);
    assert_eq!(w.offers.len(), 1, "the other queue's call goes next");
    assert!(w.offers_made >= 2);
}

#[test]
fn a_call_needing_a_tag_is_passed_over_until_an_agent_with_it_is_ready() {
    let mut w = World::new(2, 1);
    w.apply(Step::Arrive {
        priority: 5,
        queue: 0,
        tag: Some(1),
    });
    w.apply(Step::Arrive {
        priority: 0,
        queue: 0,
        tag: None,
    });
    w.apply(Step::Ready { agent: 0 });
    assert_eq!(w.offers.len(), 1);
    assert_eq!(
        w.offers[0].0, "c2",
        "agent 0 (tag t0) takes the untagged call"
    );
    w.apply(Step::Ready { agent: 1 });
    assert_eq!(w.offers[1], ("c1".to_string(), 1), "agent 1 has t1");
}
