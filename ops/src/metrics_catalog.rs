//! Every metric name callgrid exports, in one place (STYLE.md 4), and the periodic task that
//! sets the gauges derived from replicated state (agents per state, Raft status).
//!
//! Counters for calls and SIP are incremented by the runtime (`actors::node`) under these
//! same names; keep the two in step.

use std::sync::Arc;
use std::time::Duration;

/// Calls received (label: tenant).
pub const CALLS_OFFERED_TOTAL: &str = "callgrid_calls_offered_total";
/// Calls answered by an agent (label: tenant).
pub const CALLS_ANSWERED_TOTAL: &str = "callgrid_calls_answered_total";
/// Calls whose caller hung up before reaching an agent (label: tenant).
pub const CALLS_ABANDONED_TOTAL: &str = "callgrid_calls_abandoned_total";
/// Calls refused before answer (label: reason).
pub const CALLS_REJECTED_TOTAL: &str = "callgrid_calls_rejected_total";
/// Smoothed lateness of this node's event loop, an admission-control input.
pub const EVENT_LOOP_LAG_SECONDS: &str = "callgrid_event_loop_lag_seconds";
/// Time from sending a lease heartbeat to having it applied here.
pub const HEARTBEAT_COMMIT_SECONDS: &str = "callgrid_heartbeat_commit_seconds";
/// Calls in progress on this node.
pub const CALLS_ACTIVE: &str = "callgrid_calls_active";
/// Calls waiting per queue (labels: tenant, queue), set by the queue's owner.
pub const QUEUE_WAITING: &str = "callgrid_queue_waiting";
/// Agents per state (labels: tenant, state), from replicated agent sessions.
pub const AGENTS: &str = "callgrid_agents";
/// Time for a write to be committed and applied through Raft, seen by the API.
pub const RAFT_COMMIT_SECONDS: &str = "callgrid_raft_commit_seconds";
/// Raft status of this node.
pub const RAFT_TERM: &str = "callgrid_raft_term";
pub const RAFT_LAST_APPLIED: &str = "callgrid_raft_last_applied";
pub const RAFT_IS_LEADER: &str = "callgrid_raft_is_leader";
pub const RAFT_HAS_LEADER: &str = "callgrid_raft_has_leader";
/// Malformed SIP messages received.
pub const SIP_BAD_MESSAGES_TOTAL: &str = "callgrid_sip_bad_messages_total";
/// REGISTER digest failures.
pub const REGISTER_AUTH_FAILURES_TOTAL: &str = "callgrid_register_auth_failures_total";
/// Envelopes the actor mesh could not deliver.
pub const MESH_UNDELIVERABLE_TOTAL: &str = "callgrid_mesh_undeliverable_total";
/// API requests refused for a missing or wrong token.
pub const API_UNAUTHORIZED_TOTAL: &str = "callgrid_api_unauthorized_total";
/// The leader's write combiner failed; writes go to Raft one entry each until a restart.
pub const COMBINER_FAILURES_TOTAL: &str = cluster::COMBINER_FAILURES_TOTAL;

/// The agent states reported (each set every tick, so a state that empties drops to 0).
const AGENT_STATES: [&str; 7] = [
    "signed_out",
    "not_ready",
    "ready",
    "reserved",
    "ringing",
    "talking",
    "after_call_work",
];

/// Describes the metrics once, so `/metrics` carries HELP lines.
pub fn describe() {
    metrics::describe_counter!(CALLS_OFFERED_TOTAL, "Calls received");
    metrics::describe_counter!(CALLS_ANSWERED_TOTAL, "Calls answered by an agent");
    metrics::describe_counter!(
        CALLS_ABANDONED_TOTAL,
        "Calls abandoned before an agent answered"
    );
    metrics::describe_gauge!(CALLS_ACTIVE, "Calls in progress on this node");
    metrics::describe_gauge!(QUEUE_WAITING, "Calls waiting per queue");
    metrics::describe_gauge!(AGENTS, "Agents per state");
    metrics::describe_histogram!(
        RAFT_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Raft write commit latency"
    );
    metrics::describe_counter!(SIP_BAD_MESSAGES_TOTAL, "Malformed SIP messages received");
    metrics::describe_counter!(
        CALLS_REJECTED_TOTAL,
        "Calls refused before answer (reason overload* when admission control refused them)"
    );
    metrics::describe_gauge!(
        EVENT_LOOP_LAG_SECONDS,
        metrics::Unit::Seconds,
        "Smoothed event-loop lag of this node (admission control)"
    );
    metrics::describe_histogram!(
        HEARTBEAT_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Lease heartbeat time from send to applied on this node"
    );
    metrics::describe_counter!(
        REGISTER_AUTH_FAILURES_TOTAL,
        "REGISTER digest authentication failures"
    );
    metrics::describe_counter!(MESH_UNDELIVERABLE_TOTAL, "Actor mesh envelopes dropped");
    metrics::describe_counter!(
        API_UNAUTHORIZED_TOTAL,
        "API requests refused for a missing or wrong token"
    );
    metrics::describe_counter!(
        COMBINER_FAILURES_TOTAL,
        "Leader write combiner failures (writes then go to Raft one entry each until restart)"
    );
    metrics::describe_gauge!(RAFT_TERM, "Current Raft term");
    metrics::describe_gauge!(RAFT_LAST_APPLIED, "Last applied Raft log index");
    metrics::describe_gauge!(RAFT_IS_LEADER, "1 if this node is the Raft leader");
    metrics::describe_gauge!(RAFT_HAS_LEADER, "1 if this node knows a Raft leader");
}

/// Sets the state-derived gauges every `period` until the task is aborted.
pub async fn run_gauges(cluster: Arc<cluster::Cluster>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let counts = cluster.read(|s| {
            let mut counts: std::collections::BTreeMap<(String, &'static str), u64> =
                Default::default();
            for tenant in s.tenants.keys() {
                for state in AGENT_STATES {
                    counts.insert((tenant.clone(), state), 0);
                }
            }
            for agent in s.agents.values() {
                let state = s
                    .agent_session(&agent.tenant, &agent.id)
                    .map_or("signed_out", |x| x.status.name());
                *counts.entry((agent.tenant.to_string(), state)).or_default() += 1;
            }
            counts
        });
        for ((tenant, state), n) in counts {
            // Per-tenant call counters exist from the start at zero, so dashboards and rate()
            // see every series before the first call (incrementing by zero registers it).
            if state == "signed_out" {
                for name in [
                    CALLS_OFFERED_TOTAL,
                    CALLS_ANSWERED_TOTAL,
                    CALLS_ABANDONED_TOTAL,
                ] {
                    metrics::counter!(name, "tenant" => tenant.clone()).increment(0);
                }
            }
            metrics::gauge!(AGENTS, "tenant" => tenant, "state" => state).set(n as f64);
        }
        metrics::gauge!(CALLS_ACTIVE).increment(0.0);
        let status = cluster.status();
        metrics::gauge!(RAFT_TERM).set(status.term as f64);
        metrics::gauge!(RAFT_LAST_APPLIED).set(status.last_applied.unwrap_or(0) as f64);
        metrics::gauge!(RAFT_IS_LEADER).set(if status.leader == Some(status.node_id) {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(RAFT_HAS_LEADER).set(if status.leader.is_some() { 1.0 } else { 0.0 });
    }
}
