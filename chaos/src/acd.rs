//! The ACD simulation benchmark (issue 4, item 10): the real `QueueMachine` under Poisson
//! arrivals and exponential handle times with `c` agents, against Erlang C for the same load.
//!
//! The model is M/M/c with infinite patience, the one Erlang C describes: calls arrive at
//! rate λ, each agent serves one call at a time for an exponential handle time of mean 1/μ,
//! agents take the next call at once (no ring time, no wrap-up), nobody abandons. The queue
//! decides who is served when, exactly as in a node: reservations are accepted at once and
//! offers answered at once, so every wait is the queue's doing. Time is virtual
//! (milliseconds), so a run of hundreds of thousands of calls takes well under a second.
//!
//! Erlang C is computed through the Erlang B recursion (numerically stable for any number
//! of agents): `B(0) = 1`, `B(n) = A·B(n-1) / (n + A·B(n-1))`, `C = c·B / (c - A·(1 - B))`;
//! service level `SL(t) = 1 - C·e^{-(cμ - λ)t}`, average speed of answer `ASA = C / (cμ - λ)`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rand::{Rng, SeedableRng};

use actors::queue::{QueueInput, QueueMachine, QueueOutput};
use model::{AgentId, CallId, ExtensionId};

/// What Erlang C predicts for one load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErlangC {
    /// Offered load in Erlangs (λ/μ).
    pub load: f64,
    /// Probability that a call waits at all.
    pub p_wait: f64,
    /// Share of calls answered within the service-level threshold.
    pub service_level: f64,
    /// Average speed of answer (mean wait over all calls), seconds.
    pub asa_s: f64,
    /// Agent occupancy (A / c).
    pub occupancy: f64,
}

/// Erlang C for `agents` agents, `arrivals_per_s` calls per second, a mean handle time of
/// `handle_s` seconds and a service-level threshold of `threshold_s` seconds. `None` when the
/// load is not below the number of agents (the queue grows without bound).
pub fn erlang_c(
    agents: u32,
    arrivals_per_s: f64,
    handle_s: f64,
    threshold_s: f64,
) -> Option<ErlangC> {
    let c = f64::from(agents);
    let load = arrivals_per_s * handle_s;
    if agents == 0 || !(load > 0.0 && load < c) {
        return None;
    }
    let mut b = 1.0;
    for n in 1..=agents {
        b = load * b / (f64::from(n) + load * b);
    }
    let p_wait = c * b / (c - load * (1.0 - b));
    let mu = 1.0 / handle_s;
    let drain = c * mu - arrivals_per_s;
    Some(ErlangC {
        load,
        p_wait,
        service_level: 1.0 - p_wait * (-drain * threshold_s).exp(),
        asa_s: p_wait / drain,
        occupancy: load / c,
    })
}

/// One simulated run.
#[derive(Clone, Copy, Debug)]
pub struct AcdSimConfig {
    pub agents: u32,
    pub arrivals_per_s: f64,
    pub handle_s: f64,
    /// Calls measured (after the warm-up).
    pub calls: u64,
    /// Calls at the start left out of the figures (the queue starts empty).
    pub warmup_calls: u64,
    pub threshold_s: f64,
    pub seed: u64,
}

impl AcdSimConfig {
    /// `agents` agents at `occupancy` (0..1) with a mean handle time of `handle_s`.
    pub fn at_occupancy(agents: u32, occupancy: f64, handle_s: f64) -> AcdSimConfig {
        AcdSimConfig {
            agents,
            arrivals_per_s: occupancy * f64::from(agents) / handle_s,
            handle_s,
            calls: 200_000,
            warmup_calls: 5_000,
            threshold_s: 20.0,
            seed: 1,
        }
    }
}

/// What the run measured, next to what Erlang C predicts.
#[derive(Clone, Copy, Debug)]
pub struct AcdSimResult {
    pub config: AcdSimConfig,
    pub answered: u64,
    pub service_level: f64,
    pub asa_s: f64,
    pub p_wait: f64,
    /// Busy agent time over available agent time, over the measured span.
    pub occupancy: f64,
    pub erlang: ErlangC,
}

impl AcdSimResult {
    /// Measured minus predicted service level, in percentage points.
    pub fn service_level_diff_pp(&self) -> f64 {
        100.0 * (self.service_level - self.erlang.service_level)
    }

    /// Measured ASA relative to the predicted one (0.05 = 5 % longer).
    pub fn asa_rel_diff(&self) -> f64 {
        (self.asa_s - self.erlang.asa_s) / self.erlang.asa_s
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "agents": self.config.agents,
            "arrivals_per_s": self.config.arrivals_per_s,
            "handle_s": self.config.handle_s,
            "calls": self.answered,
            "threshold_s": self.config.threshold_s,
            "seed": self.config.seed,
            "measured": {
                "service_level": self.service_level,
                "asa_s": self.asa_s,
                "p_wait": self.p_wait,
                "occupancy": self.occupancy,
            },
            "erlang_c": {
                "load_erlangs": self.erlang.load,
                "service_level": self.erlang.service_level,
                "asa_s": self.erlang.asa_s,
                "p_wait": self.erlang.p_wait,
                "occupancy": self.erlang.occupancy,
            },
            "service_level_diff_pp": self.service_level_diff_pp(),
            "asa_rel_diff": self.asa_rel_diff(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    AgentFree(u32),
}

/// Runs the simulation. Panics only on a configuration Erlang C rejects (load ≥ agents).
pub fn simulate(config: AcdSimConfig) -> AcdSimResult {
    let erlang = erlang_c(
        config.agents,
        config.arrivals_per_s,
        config.handle_s,
        config.threshold_s,
    )
    .expect("the load must be below the number of agents");
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut exp = |mean_ms: f64| -> u64 {
        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        (-u.ln() * mean_ms).round() as u64
    };
    let agent_id = |i: u32| -> AgentId { format!("{}", 1000 + i).parse().expect("agent id") };
    let agent_index =
        |a: &AgentId| -> u32 { a.as_str().parse::<u32>().expect("numeric agent id") - 1000 };
    let mut queue = QueueMachine::new();
    for i in 0..config.agents {
        queue.handle(
            0,
            QueueInput::AgentAvailable {
                agent: agent_id(i),
                agent_node: 1,
                idle_since_ms: 0,
                fit: Default::default(),
            },
        );
    }
    let arrival_mean_ms = 1000.0 / config.arrivals_per_s;
    let handle_mean_ms = config.handle_s * 1000.0;
    let threshold_ms = (config.threshold_s * 1000.0) as u64;
    let total = config.warmup_calls + config.calls;

    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut schedule = |events: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    schedule(&mut events, exp(arrival_mean_ms), Event::Arrival);
    let mut arrived = 0u64;
    let mut arrival_at: HashMap<CallId, (u64, u64)> = HashMap::new();
    let (mut answered, mut within, mut waited, mut wait_sum_ms) = (0u64, 0u64, 0u64, 0u128);
    // Occupancy over the measured span: from the first measured arrival to the last answer.
    let mut busy_since: HashMap<u32, u64> = HashMap::new();
    let mut busy_ms: u128 = 0;
    let mut span: Option<(u64, u64)> = None;

    while let Some(Reverse((now, _, event))) = events.pop() {
        match event {
            Event::Arrival => {
                arrived += 1;
                let call = CallId(format!("c{arrived}"));
                arrival_at.insert(call.clone(), (now, arrived));
                if arrived == config.warmup_calls + 1 {
                    span = Some((now, now));
                }
                queue.handle(
                    now,
                    QueueInput::Enqueue {
                        call,
                        call_node: 1,
                        priority: 0,
                        enqueued_at_ms: now,
                        offered_to: None,
                        arriving: true,
                        needs: Default::default(),
                    },
                );
                if arrived < total {
                    let next = now + exp(arrival_mean_ms);
                    schedule(&mut events, next, Event::Arrival);
                }
            }
            Event::AgentFree(i) => {
                if let (Some(since), Some((from, _))) = (busy_since.remove(&i), span) {
                    busy_ms += u128::from(now - since.max(from));
                }
                queue.handle(
                    now,
                    QueueInput::AgentAvailable {
                        agent: agent_id(i),
                        agent_node: 1,
                        idle_since_ms: now,
                        fit: Default::default(),
                    },
                );
            }
        }
        // Agents accept reservations and answer offers at once.
        while let Some(output) = queue.poll_output() {
            match output {
                QueueOutput::Reserve { agent, call, .. } => {
                    let extension: ExtensionId = agent.as_str().parse().expect("extension id");
                    queue.handle(
                        now,
                        QueueInput::ReserveReply {
                            agent,
                            call,
                            accepted: true,
                            extension: Some(extension),
                        },
                    );
                }
                QueueOutput::Offer { call, agent, .. } => {
                    let (at, n) = arrival_at.remove(&call).expect("offered call arrived");
                    if n > config.warmup_calls {
                        let wait = now - at;
                        answered += 1;
                        wait_sum_ms += u128::from(wait);
                        within += u64::from(wait <= threshold_ms);
                        waited += u64::from(wait > 0);
                        if let Some((from, _)) = span {
                            span = Some((from, now));
                        }
                    }
                    let i = agent_index(&agent);
                    busy_since.insert(i, now);
                    queue.handle(
                        now,
                        QueueInput::OfferDone {
                            call,
                            agent,
                            answered: true,
                        },
                    );
                    let done = now + exp(handle_mean_ms);
                    schedule(&mut events, done, Event::AgentFree(i));
                }
                // No limit is set here (Erlang C's queue is unbounded).
                QueueOutput::CancelReservation { .. }
                | QueueOutput::TurnedAway { .. }
                | QueueOutput::WaitEstimate { .. }
                | QueueOutput::Stats(_) => {}
            }
        }
        if answered >= config.calls {
            break;
        }
    }
    let (from, to) = span.unwrap_or((0, 0));
    for since in busy_since.values() {
        busy_ms += u128::from(to.saturating_sub((*since).max(from)));
    }
    let available_ms = u128::from(to - from) * u128::from(config.agents);
    let n = answered.max(1) as f64;
    AcdSimResult {
        config,
        answered,
        service_level: within as f64 / n,
        asa_s: wait_sum_ms as f64 / n / 1000.0,
        p_wait: waited as f64 / n,
        occupancy: if available_ms == 0 {
            0.0
        } else {
            busy_ms as f64 / available_ms as f64
        },
        erlang,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct formula with factorials, for small cases: an independent check of the
    /// recursion.
    fn erlang_c_direct(c: u32, load: f64) -> f64 {
        let fact = |n: u32| (1..=n).map(f64::from).product::<f64>();
        let top = load.powi(c as i32) / fact(c) * f64::from(c) / (f64::from(c) - load);
        let sum: f64 = (0..c).map(|k| load.powi(k as i32) / fact(k)).sum();
        top / (sum + top)
    }

    #[test]
    fn the_recursion_matches_the_direct_formula() {
        for (c, load) in [(1, 0.5), (2, 1.5), (5, 4.0), (11, 10.0), (20, 17.0)] {
            let e = erlang_c(c, load, 1.0, 20.0).expect("stable load");
            let direct = erlang_c_direct(c, load);
            assert!(
                (e.p_wait - direct).abs() < 1e-9,
                "c={c} A={load}: {} vs {direct}",
                e.p_wait
            );
        }
        // M/M/1: P(wait) = ρ, ASA = ρ/(μ-λ).
        let e = erlang_c(1, 0.5, 1.0, 0.0).expect("stable");
        assert!((e.p_wait - 0.5).abs() < 1e-12 && (e.asa_s - 1.0).abs() < 1e-12);
        assert!(
            erlang_c(10, 10.0, 1.0, 20.0).is_none(),
            "load = agents is unstable"
        );
    }
}
