//! Pair test of the ACD: one `QueueMachine` and several `AgentMachine`s wired in memory, the
//! reserve-then-offer protocol carried by a message list, and random answers, refusals and
//! agent state changes chosen by proptest. Checked after every step:
//! - I1: no agent is ever reserved, ringing or talking for two calls;
//! - I4: each offer goes to the best waiting call (priority, then arrival) not already offered;
//! - no starvation: once everything settles, no call waits while an agent is ready.

use std::collections::{BTreeMap, VecDeque};

use actors::agent::{AgentInput, AgentMachine, AgentOutput};
use actors::queue::{QueueInput, QueueMachine, QueueOutput};
use model::{AgentStatus, CallId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Arrive {
        priority: u8,
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
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3).prop_map(|priority| Step::Arrive { priority }),
        2 => (0usize..4).prop_map(|agent| Step::Ready { agent }),
        1 => (0usize..4).prop_map(|agent| Step::NotReady { agent }),
        3 => any::<bool>().prop_map(|answer| Step::Resolve { answer }),
        2 => Just(Step::Hangup),
        1 => (0usize..8).prop_map(|nth| Step::Abandon { nth }),
    ]
}

struct World {
    now: u64,
    queue: QueueMachine,
    agents: Vec<AgentMachine>,
    /// call -> (priority, arrival)
    waiting: BTreeMap<String, (u8, u64)>,
    offers: VecDeque<(String, usize)>,
    talking: VecDeque<(String, usize)>,
    next_call: u64,
}

fn agent_id(i: usize) -> String {
    format!("{}", 1001 + i)
}

impl World {
    fn new(agents: usize) -> Self {
        let mut w = World {
            now: 1,
            queue: QueueMachine::new(),
            agents: (0..agents)
                .map(|i| {
                    AgentMachine::new(
                        "gd".parse().unwrap(),
                        agent_id(i).parse().unwrap(),
                        1,
                        vec!["general".parse().unwrap()],
                    )
                })
                .collect(),
            waiting: BTreeMap::new(),
            offers: VecDeque::new(),
            talking: VecDeque::new(),
            next_call: 0,
        };
        for a in &mut w.agents {
            a.handle(
                0,
                AgentInput::SignIn {
                    extension: "1001".parse().unwrap(),
                },
            )
            .unwrap();
        }
        w.pump();
        w
    }

    fn index(agent: &model::AgentId) -> usize {
        agent.as_str().parse::<usize>().unwrap() - 1001
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
                            available,
                            idle_since_ms,
                            ..
                        } => {
                            let agent = agent_id(i).parse().unwrap();
                            let input = if available {
                                QueueInput::AgentAvailable {
                                    agent,
                                    agent_node: 1,
                                    idle_since_ms,
                                }
                            } else {
                                QueueInput::AgentUnavailable { agent }
                            };
                            self.queue.handle(self.now, input);
                        }
                        AgentOutput::ReserveReply {
                            call,
                            accepted,
                            extension,
                            ..
                        } => {
                            self.queue.handle(
                                self.now,
                                QueueInput::ReserveReply {
                                    agent: agent_id(i).parse().unwrap(),
                                    call,
                                    accepted,
                                    extension,
                                },
                            );
                        }
                        AgentOutput::Checkpoint(_) => {}
                    }
                }
            }
            while let Some(out) = self.queue.poll_output() {
                moved = true;
                match out {
                    QueueOutput::Reserve { agent, call, .. } => {
                        let i = Self::index(&agent);
                        self.agents[i]
                            .handle(
                                self.now,
                                AgentInput::Reserve {
                                    call,
                                    queue: "general".parse().unwrap(),
                                },
                            )
                            .unwrap();
                    }
                    QueueOutput::CancelReservation { agent, call, .. } => {
                        let i = Self::index(&agent);
                        self.agents[i]
                            .handle(self.now, AgentInput::CancelReservation { call })
                            .unwrap();
                    }
                    QueueOutput::Offer { call, agent, .. } => {
                        let i = Self::index(&agent);
                        // I4: the offered call is the best waiting call not already on offer.
                        let on_offer: Vec<&String> = self.offers.iter().map(|(c, _)| c).collect();
                        let best = self
                            .waiting
                            .iter()
                            .filter(|(c, _)| !on_offer.contains(c))
                            .min_by_key(|(_, (p, at))| (std::cmp::Reverse(*p), *at))
                            .map(|(c, _)| c.clone());
                        assert_eq!(
                            best.as_deref(),
                            Some(call.0.as_str()),
                            "I4: offer out of order"
                        );
                        self.agents[i]
                            .handle(self.now, AgentInput::Ringing { call: call.clone() })
                            .unwrap();
                        self.offers.push_back((call.0, i));
                    }
                    QueueOutput::Stats(_) => {}
                }
            }
            if !moved {
                return;
            }
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

    fn apply(&mut self, step: Step) {
        self.now += 7;
        match step {
            Step::Arrive { priority } => {
                self.next_call += 1;
                let call = format!("c{}", self.next_call);
                self.waiting.insert(call.clone(), (priority, self.now));
                self.queue.handle(
                    self.now,
                    QueueInput::Enqueue {
                        call: CallId(call),
                        call_node: 1,
                        priority,
                        enqueued_at_ms: self.now,
                    },
                );
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
                    let id = CallId(call.clone());
                    if answer {
                        self.waiting.remove(&call);
                        self.agents[i]
                            .handle(self.now, AgentInput::Answered { call: id.clone() })
                            .unwrap();
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
                            .unwrap();
                    }
                    self.queue.handle(
                        self.now,
                        QueueInput::OfferDone {
                            call: id,
                            agent: agent_id(i).parse().unwrap(),
                            answered: answer,
                        },
                    );
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
                        .unwrap();
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
                    self.waiting.remove(&call);
                    self.queue
                        .handle(self.now, QueueInput::Remove { call: CallId(call) });
                }
            }
        }
        self.pump();
        self.check_i1();
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
        let ready = self
            .agents
            .iter()
            .filter(|a| a.status() == &AgentStatus::Ready)
            .count();
        assert!(
            self.waiting.is_empty() || ready == 0,
            "starvation: {} calls wait while {ready} agents are ready",
            self.waiting.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn acd_never_double_books_and_serves_in_order(agents in 1usize..5, steps in prop::collection::vec(step(), 1..120)) {
        let mut world = World::new(agents);
        for s in steps {
            world.apply(s);
        }
        world.settle();
    }
}

#[test]
fn offers_happen_in_a_simple_run() {
    let mut w = World::new(1);
    w.apply(Step::Arrive { priority: 0 });
    w.apply(Step::Arrive { priority: 2 });
    w.apply(Step::Ready { agent: 0 });
    assert_eq!(w.offers.len(), 1, "the ready agent is offered a call");
    assert_eq!(w.offers[0].0, "c2", "the higher priority first");
}
