//! The ACD match: the pure `QueueMachine` deciding which agent a call gets. Every input
//! (a call arriving, an agent becoming ready, a reply, an answer) ends in `dispatch`, which
//! walks the waiting calls best first and, for each one not on offer, the idle agents.
//!
//! Two shapes of queue are measured:
//! - `skills_blocked`: 200 waiting calls that need a senior English agent (tag `english`,
//!   level 5) while 500 ready agents are level 1-4 in three languages. This is the most
//!   work a dispatch does: every blocked call is checked against every idle agent.
//! - `plain`: no needs, the usual shape: 200 calls waiting and no agent idle, or no call
//!   waiting and 500 agents idle.
//!
//! Each iteration times one input and the draining of its outputs (`Reserve`, `Stats`); the
//! rest of the reserve-then-offer cycle (`ReserveReply`, `OfferDone`, the agent ready again
//! or a new call in line) runs untimed, so every iteration starts from the same shape.
//!
//! Run: `cargo bench -p actors --bench acd`.

use std::time::{Duration, Instant};

use actors::queue::{QueueInput, QueueMachine, QueueOutput};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use model::{AgentFit, AgentId, CallId, CallNeeds, ExtensionId};

const WAITING: usize = 200;
const READY: usize = 500;
const LANGUAGES: [&str; 3] = ["mandarin", "cantonese", "english"];

fn agent_id(i: usize) -> AgentId {
    format!("{}", 10_000 + i).parse().expect("an agent number")
}

/// Agent i speaks one language (`i % 3`: mandarin, cantonese, english) at level 1-4; the
/// seniors (`i >= READY`) are level 5.
fn fit(i: usize) -> AgentFit {
    AgentFit {
        tags: vec![LANGUAGES[i % 3].to_string()],
        level: if i >= READY { 5 } else { 1 + (i % 4) as u8 },
    }
}

fn senior_english() -> CallNeeds {
    CallNeeds {
        agent_tags: vec!["english".into()],
        min_level: 5,
        ..CallNeeds::default()
    }
}

fn cantonese() -> CallNeeds {
    CallNeeds {
        agent_tags: vec!["cantonese".into()],
        min_level: 2,
        ..CallNeeds::default()
    }
}

/// A queue on a virtual clock, driven through its public inputs.
struct Acd {
    queue: QueueMachine,
    now_ms: u64,
    next_call: u64,
}

impl Acd {
    fn new() -> Acd {
        Acd {
            queue: QueueMachine::new(),
            now_ms: 1_000_000,
            next_call: 0,
        }
    }

    fn tick(&mut self) {
        self.now_ms += 1;
    }

    fn handle(&mut self, input: QueueInput) -> Vec<QueueOutput> {
        self.queue.handle(self.now_ms, input);
        std::iter::from_fn(|| self.queue.poll_output()).collect()
    }

    fn enqueue(&mut self, priority: u8, needs: CallNeeds) -> (CallId, Vec<QueueOutput>) {
        self.next_call += 1;
        let call = CallId(format!("2-{}-5f3a9c1e", self.next_call));
        let outputs = self.handle(QueueInput::Enqueue {
            call: call.clone(),
            call_node: 2,
            priority,
            enqueued_at_ms: self.now_ms,
            offered_to: None,
            arriving: true,
            needs,
        });
        (call, outputs)
    }

    fn ready(&mut self, i: usize) -> Vec<QueueOutput> {
        self.handle(QueueInput::AgentAvailable {
            agent: agent_id(i),
            agent_node: 1 + (i % 3) as u64,
            idle_since_ms: self.now_ms,
            fit: fit(i),
        })
    }

    /// The agent accepts the reservation and answers: the call leaves the line.
    fn serve(&mut self, reserve: &[QueueOutput]) -> AgentId {
        let (agent, call) = reserve
            .iter()
            .find_map(|o| match o {
                QueueOutput::Reserve { agent, call, .. } => Some((agent.clone(), call.clone())),
                _ => None,
            })
            .expect("the input matched an agent");
        let extension: ExtensionId = agent.as_str().parse().expect("an extension");
        let offered = self.handle(QueueInput::ReserveReply {
            agent: agent.clone(),
            call: call.clone(),
            accepted: true,
            extension: Some(extension),
        });
        assert!(offered
            .iter()
            .any(|o| matches!(o, QueueOutput::Offer { call: c, .. } if *c == call)));
        self.handle(QueueInput::OfferDone {
            call,
            agent: agent.clone(),
            answered: true,
        });
        agent
    }

    fn stats(&self) -> (usize, usize) {
        let stats = self.queue.stats();
        (stats.waiting, stats.agents_available)
    }
}

/// `waiting` calls in line (three priorities), `ready` agents idle (longest idle first).
fn queue(waiting: usize, ready: usize, needs: impl Fn() -> CallNeeds) -> Acd {
    let mut acd = Acd::new();
    for i in 0..ready {
        acd.tick();
        acd.ready(i);
    }
    for i in 0..waiting {
        acd.tick();
        let (_, outputs) = acd.enqueue((i % 3) as u8, needs());
        assert!(
            !outputs
                .iter()
                .any(|o| matches!(o, QueueOutput::Reserve { .. })),
            "the waiting calls must not match the ready agents"
        );
    }
    assert_eq!(acd.stats(), (waiting, ready));
    acd
}

/// Times `step` (one input and its outputs) per iteration, running `restore` untimed after it.
fn timed_step(
    acd: &mut Acd,
    iters: u64,
    mut step: impl FnMut(&mut Acd) -> Vec<QueueOutput>,
    mut restore: impl FnMut(&mut Acd, Vec<QueueOutput>),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        acd.tick();
        let start = Instant::now();
        let outputs = step(acd);
        total += start.elapsed();
        restore(acd, outputs);
    }
    total
}

fn call_arrives(c: &mut Criterion) {
    let mut group = c.benchmark_group("acd_call_arrives");
    group.throughput(Throughput::Elements(1));
    for (name, waiting, needs) in [
        (
            "skills_blocked",
            WAITING,
            senior_english as fn() -> CallNeeds,
        ),
        ("plain", 0, CallNeeds::default as fn() -> CallNeeds),
    ] {
        let mut acd = queue(waiting, READY, needs);
        let id = BenchmarkId::new(name, format!("{waiting}_waiting_{READY}_ready"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                timed_step(
                    &mut acd,
                    iters,
                    // A Cantonese caller (level 2+) arrives and is matched at once.
                    |acd| acd.enqueue(1, cantonese()).1,
                    |acd, outputs| {
                        let agent = acd.serve(&outputs);
                        let i = agent.as_str().parse::<usize>().expect("numeric") - 10_000;
                        acd.tick();
                        acd.ready(i);
                    },
                )
            })
        });
        assert_eq!(acd.stats(), (waiting, READY), "the shape held");
    }
    group.finish();
}

fn agent_ready(c: &mut Criterion) {
    let mut group = c.benchmark_group("acd_agent_ready");
    group.throughput(Throughput::Elements(1));
    // skills_blocked: a senior English agent becomes ready and takes the best blocked call.
    // plain: every agent is busy; one becomes ready and takes the best call.
    for (name, ready, needs, agent) in [
        (
            "skills_blocked",
            READY,
            senior_english as fn() -> CallNeeds,
            READY,
        ),
        ("plain", 0, CallNeeds::default as fn() -> CallNeeds, 0),
    ] {
        let mut acd = queue(WAITING, ready, needs);
        let id = BenchmarkId::new(name, format!("{WAITING}_waiting_{ready}_ready"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                timed_step(
                    &mut acd,
                    iters,
                    |acd| acd.ready(agent),
                    |acd, outputs| {
                        acd.serve(&outputs);
                        // The agent is talking now; a new caller joins the back of the line.
                        acd.tick();
                        acd.enqueue(0, needs());
                    },
                )
            })
        });
        assert_eq!(acd.stats(), (WAITING, ready), "the shape held");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = call_arrives, agent_ready
}
criterion_main!(benches);
