//! # chaos: invariant checkers and the deterministic simulation
//!
//! Checks of DESIGN.md's invariants over what a run leaves behind (CDRs), used by the
//! end-to-end tests, and the deterministic cluster simulation that checks them under faults.
//! Each checker returns the violations it found, described for a human, so a failing test says
//! what went wrong.
//!
//! - I1 `no_double_booking`: an agent's calls never overlap (from ring start to end).
//! - I1 `agent_states_never_double_booked`: in the agents' state stream, an agent ringing or
//!   talking for one call never rings or talks for another before it left the first.
//! - I2 `one_cdr_per_call`: every call has exactly one CDR.
//! - I4 `served_in_order`: within a queue, calls reach agents by priority, then arrival.
//! - R3.2 `longest_idle_first`: each offer went to the agent idle longest at that moment.
//!
//! `sim` runs three simulated nodes on one thread and a virtual clock: real openraft 0.9.25
//! (an in-memory store that survives crashes, RPCs through a simulated network), the real
//! `QueueMachine`, `AgentMachine` and `CallMachine` driven the way `actors::node` drives them
//! (placement over live voters, leases, NodeDown/NodeUp, fences, takeover from checkpoints,
//! queue rebuild), a workload of callers and agents, and crashes, restarts, partitions and slow
//! links, all drawn from a seed. Raft safety, I1, I3, I4 and I6 are checked after every 10 ms
//! step, I2 once the run drains; the same seed replays the same run exactly
//! (`sim::run_seed`; the test `tests/simulation.rs` prints the command that replays a failing
//! seed). See `sim`'s module docs for what one seed covers.

pub mod acd;
pub mod sim;

use std::collections::{BTreeMap, HashMap};

use model::{Cdr, Disposition};

/// A broken invariant, for a test's failure message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// I2: `expected` call ids each have exactly one CDR, and no CDR is for another call.
pub fn one_cdr_per_call<'a>(
    cdrs: &[Cdr],
    expected: impl IntoIterator<Item = &'a str>,
) -> Vec<Violation> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for cdr in cdrs {
        *counts.entry(cdr.call_id.0.as_str()).or_default() += 1;
    }
    let mut out = Vec::new();
    let mut seen = 0;
    for id in expected {
        seen += 1;
        match counts.get(id) {
            Some(1) => {}
            Some(n) => out.push(violation("I2", format!("call {id} has {n} CDRs"))),
            None => out.push(violation("I2", format!("call {id} has no CDR"))),
        }
    }
    if cdrs.len() != seen {
        out.push(violation(
            "I2",
            format!("{} CDRs for {seen} calls", cdrs.len()),
        ));
    }
    out
}

/// The time an agent was bound to a call: from the offer's ring to the end of the call.
fn busy_interval(cdr: &Cdr) -> Option<(u64, u64)> {
    let start = cdr
        .offered_at_ms
        .or(cdr.ring_started_at_ms)
        .or(cdr.agent_answered_at_ms)?;
    Some((start, cdr.ended_at_ms))
}

/// I1: no agent's answered calls overlap in time.
pub fn no_double_booking(cdrs: &[Cdr]) -> Vec<Violation> {
    let mut by_agent: BTreeMap<String, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for cdr in cdrs
        .iter()
        .filter(|c| c.disposition == Disposition::Answered)
    {
        if let (Some(agent), Some((start, end))) = (&cdr.agent, busy_interval(cdr)) {
            let key = format!(
                "{}/{}",
                cdr.tenant.as_ref().map_or("", |t| t.as_str()),
                agent
            );
            by_agent
                .entry(key)
                .or_default()
                .push((start, end, cdr.call_id.0.as_str()));
        }
    }
    let mut out = Vec::new();
    for (agent, mut calls) in by_agent {
        calls.sort();
        for pair in calls.windows(2) {
            if pair[1].0 < pair[0].1 {
                out.push(violation(
                    "I1",
                    format!(
                        "agent {agent} had calls {} and {} at once",
                        pair[0].2, pair[1].2
                    ),
                ));
            }
        }
    }
    out
}

/// I4: within a queue, answered calls were offered in priority order, then arrival order.
/// Call `j` had to be offered before call `i` when it was ahead in line while `i` was
/// offered: a higher priority and already waiting (arrived more than `slack_ms` before `i`'s
/// offer), or the same priority and arrived more than `slack_ms` before `i`. It is a
/// violation if `j` was offered more than `slack_ms` after `i`. The slack absorbs the stamps
/// of different nodes and the signalling between two back-to-back offers.
pub fn served_in_order(cdrs: &[Cdr], slack_ms: u64) -> Vec<Violation> {
    // (priority, enqueued, offered, id) per queue.
    let mut by_queue: BTreeMap<String, Vec<(u8, u64, u64, &str)>> = BTreeMap::new();
    for cdr in cdrs
        .iter()
        .filter(|c| c.disposition == Disposition::Answered)
    {
        if let (Some(queue), Some(enqueued), Some(offered)) = (
            &cdr.queue,
            cdr.enqueued_at_ms,
            cdr.first_offered_at_ms
                .or(cdr.offered_at_ms)
                .or(cdr.ring_started_at_ms),
        ) {
            let key = format!(
                "{}/{}",
                cdr.tenant.as_ref().map_or("", |t| t.as_str()),
                queue
            );
            by_queue.entry(key).or_default().push((
                cdr.priority,
                enqueued,
                offered,
                cdr.call_id.0.as_str(),
            ));
        }
    }
    let mut out = Vec::new();
    for (queue, calls) in by_queue {
        for (p, enqueued, offered, id) in &calls {
            let ahead = |(pj, ej, _, _): &&(u8, u64, u64, &str)| {
                if pj > p {
                    ej + slack_ms < *offered
                } else {
                    pj == p && ej + slack_ms < *enqueued
                }
            };
            let overtaken = calls
                .iter()
                .filter(ahead)
                .find(|(_, _, oj, _)| *oj > offered + slack_ms);
            if let Some((pj, e, o, earlier)) = overtaken {
                out.push(violation(
                    "I4",
                    format!("in queue {queue}, call {id} (priority {p}, arrived {enqueued}, offered {offered}) overtook {earlier} (priority {pj}, arrived {e}, offered {o})"),
                ));
            }
        }
    }
    out
}

/// I1 from the agents' state stream (their checkpoints in commit order, as `/api/v1/events`
/// delivers them): an agent ringing or talking for one call never rings or talks for another
/// before it has left that call (ready, not ready, after-call work, signed out). A
/// reservation alone does not engage the agent (only the reserving queue holds it).
pub fn agent_states_never_double_booked(sessions: &[model::AgentSession]) -> Vec<Violation> {
    use model::AgentStatus;
    let mut engaged: BTreeMap<String, (&str, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for s in sessions {
        let agent = format!("{}/{}", s.tenant, s.agent);
        match &s.status {
            AgentStatus::Ringing { call } | AgentStatus::Talking { call } => {
                match engaged.get(&agent) {
                    Some((other, since)) if *other != call.as_str() => out.push(violation(
                        "I1",
                        format!(
                            "agent {agent} engaged with {} (since {since}) and {call} (at {})",
                            other, s.since_ms
                        ),
                    )),
                    _ => {}
                }
                engaged.insert(agent, (call.as_str(), s.since_ms));
            }
            AgentStatus::Reserved { .. } => {}
            _ => {
                engaged.remove(&agent);
            }
        }
    }
    out
}

/// R3.2: each answered call went to the agent that had been idle longest when it was offered.
/// Idle-since is reconstructed from the CDRs: an agent is idle from the end of its previous
/// call plus `acw_ms`, or from `ready_at` (when the run made it ready) before its first call.
/// Only agents that answered some call in the run are considered. `slack_ms` absorbs the
/// reservation round trip (an agent that freed up within that window of the offer may not
/// have been visible to the queue yet).
pub fn longest_idle_first(
    cdrs: &[Cdr],
    ready_at: &HashMap<String, u64>,
    acw_ms: u64,
    slack_ms: u64,
) -> Vec<Violation> {
    let mut calls: Vec<(&str, u64, u64, &str)> = cdrs
        .iter()
        .filter(|c| c.disposition == Disposition::Answered)
        .filter_map(|c| {
            Some((
                c.agent.as_ref()?.as_str(),
                c.ring_started_at_ms?,
                c.ended_at_ms,
                c.call_id.0.as_str(),
            ))
        })
        .collect();
    calls.sort_by_key(|c| c.1);
    let mut out = Vec::new();
    for (i, (agent, offered, _, id)) in calls.iter().enumerate() {
        // When did each agent last become idle before this offer, and is it busy now?
        let idle_since = |who: &str| -> Option<u64> {
            let mut since = *ready_at.get(who)?;
            for (other, start, end, _) in &calls[..i] {
                if *other == who {
                    if end + acw_ms > *offered {
                        return None; // still on that call or in after-call work
                    }
                    since = since.max(end + acw_ms);
                }
                let _ = start;
            }
            // Booked by a call offered at the same moment (ring started within the slack).
            let racing = calls
                .iter()
                .any(|(o, s, _, cid)| *o == who && cid != id && s.abs_diff(*offered) <= slack_ms);
            (!racing).then_some(since)
        };
        let Some(chosen) = idle_since(agent) else {
            continue;
        };
        for other in ready_at.keys().filter(|a| a.as_str() != *agent) {
            if let Some(theirs) = idle_since(other) {
                if theirs + slack_ms < chosen && theirs + slack_ms < *offered {
                    out.push(violation(
                        "R3.2",
                        format!("call {id} went to agent {agent} (idle since {chosen}) while {other} was idle since {theirs}"),
                    ));
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
