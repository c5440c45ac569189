//! Admission control (DESIGN.md "Overload"): a node takes a new call only while it has the
//! headroom to complete it, and answers the rest 503 with Retry-After so the carrier tries
//! another node.
//!
//! Past its knee a node that keeps admitting falls behind on everything at once: its
//! checkpoints queue up, its lease heartbeats commit late, and the leader declares it down
//! although it is only slow, and the takeover moves its load onto nodes that are just as
//! busy (the failover storm docs/PERFORMANCE.md measured). So the signals are those that
//! rise before a lease starves:
//!
//! - **calls** on this node (a hard bound on memory);
//! - **checkpoint backlog**: keys waiting for Raft beyond a few batches means the writer
//!   cannot keep up with what the calls produce;
//! - **event-loop lag**: how late a periodic timer fires on this node's runtime, smoothed;
//!   the direct measure of CPU starvation;
//! - **heartbeat commit time**: both of the last two lease heartbeats took more than the
//!   bound (half the lease by default), so the next ones may not commit in time.
//!
//! A node without quorum (degraded mode, R1.6) keeps admitting: its heartbeats fail rather
//! than commit slowly (and a heartbeat figure goes stale after two leases), and its
//! checkpoint backlog, which grows by design while Raft cannot commit, is bounded by the
//! checkpointer itself (`MAX_PENDING`), not here.
//!
//! The heartbeat bound (half the lease) is where the lease starts to lapse between
//! heartbeats: a node whose commits take longer sends its next heartbeat only after the
//! last one committed. Admission closes there, as the node's lease begins to flicker and
//! well before the leader's silence (`down_after_ms`) would declare it down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The bounds past which a node refuses new calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_calls: usize,
    pub max_checkpoint_backlog: usize,
    pub max_loop_lag_ms: u64,
    pub max_heartbeat_ms: u64,
}

impl AdmissionLimits {
    /// Defaults for a lease of `lease_ms`: heartbeats may take half of it.
    pub fn for_lease(lease_ms: u64) -> AdmissionLimits {
        AdmissionLimits {
            max_calls: 20_000,
            // Four full Raft entries waiting (super::checkpoints::MAX_BATCH each).
            max_checkpoint_backlog: 4 * super::checkpoints::MAX_BATCH,
            max_loop_lag_ms: 150,
            max_heartbeat_ms: lease_ms / 2,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_calls == 0 || self.max_checkpoint_backlog == 0 {
            return Err("admission bounds must be positive".into());
        }
        if self.max_loop_lag_ms == 0 || self.max_heartbeat_ms == 0 {
            return Err("admission times must be positive".into());
        }
        Ok(())
    }
}

/// What the node measures now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub calls: usize,
    pub checkpoint_backlog: usize,
    pub loop_lag_ms: u64,
    /// The lower of the last two heartbeat commit times; None before two committed.
    pub heartbeat_ms: Option<u64>,
    /// Raft cannot commit (no quorum): the backlog grows by design and does not count.
    pub degraded: bool,
}

/// Why a new call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Calls,
    CheckpointBacklog,
    LoopLag,
    Heartbeat,
}

impl Refusal {
    /// The `reason` label of `callgrid_calls_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Calls => "overload",
            Refusal::CheckpointBacklog => "overload_backlog",
            Refusal::LoopLag => "overload_loop_lag",
            Refusal::Heartbeat => "overload_heartbeat",
        }
    }

    /// Seconds the carrier should wait before trying this node again. The full-node bound
    /// clears only as calls end; the others within a second or two of shedding load.
    pub fn retry_after_secs(self) -> u32 {
        match self {
            Refusal::Calls => 5,
            _ => 1,
        }
    }
}

/// The admission decision, pure so it can be tested without a node.
pub fn decide(limits: &AdmissionLimits, load: &Load) -> Result<(), Refusal> {
    if load.calls >= limits.max_calls {
        return Err(Refusal::Calls);
    }
    if !load.degraded && load.checkpoint_backlog > limits.max_checkpoint_backlog {
        return Err(Refusal::CheckpointBacklog);
    }
    if load.loop_lag_ms > limits.max_loop_lag_ms {
        return Err(Refusal::LoopLag);
    }
    if load
        .heartbeat_ms
        .is_some_and(|ms| ms > limits.max_heartbeat_ms)
    {
        return Err(Refusal::Heartbeat);
    }
    Ok(())
}

/// How often the lag probe's timer is set.
const PROBE: Duration = Duration::from_millis(20);

/// Measures this node's event-loop lag: a task sleeps `PROBE` and notes how late it woke,
/// smoothed (EWMA, weight 1/8) so one slow poll does not refuse calls but a starved runtime
/// does within a few hundred milliseconds.
pub struct LoopLag {
    /// Smoothed lag in microseconds.
    lag_us: AtomicU64,
}

impl LoopLag {
    pub fn start() -> (Arc<LoopLag>, tokio::task::JoinHandle<()>) {
        let me = Arc::new(LoopLag {
            lag_us: AtomicU64::new(0),
        });
        let probe = Arc::downgrade(&me);
        let task = tokio::spawn(async move {
            loop {
                let set = Instant::now();
                tokio::time::sleep(PROBE).await;
                let late = set.elapsed().saturating_sub(PROBE).as_micros() as u64;
                let Some(me) = probe.upgrade() else { return };
                me.note(late);
            }
        });
        (me, task)
    }

    fn note(&self, late_us: u64) {
        let old = self.lag_us.load(Ordering::Relaxed);
        let new = old - old / 8 + late_us / 8;
        self.lag_us.store(new, Ordering::Relaxed);
        metrics::gauge!("callgrid_event_loop_lag_seconds").set(new as f64 / 1e6);
    }

    pub fn lag_ms(&self) -> u64 {
        self.lag_us.load(Ordering::Relaxed) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits::for_lease(500)
    }

    #[test]
    fn an_idle_node_admits() {
        assert_eq!(decide(&limits(), &Load::default()), Ok(()));
        let busy_but_fine = Load {
            calls: 19_999,
            checkpoint_backlog: 2048,
            loop_lag_ms: 150,
            heartbeat_ms: Some(250),
            degraded: false,
        };
        assert_eq!(
            decide(&limits(), &busy_but_fine),
            Ok(()),
            "bounds are inclusive"
        );
    }

    #[test]
    fn each_signal_refuses_on_its_own() {
        let over = |f: fn(&mut Load)| {
            let mut load = Load::default();
            f(&mut load);
            decide(&limits(), &load)
        };
        assert_eq!(over(|l| l.calls = 20_000), Err(Refusal::Calls));
        assert_eq!(
            over(|l| l.checkpoint_backlog = 2049),
            Err(Refusal::CheckpointBacklog)
        );
        assert_eq!(over(|l| l.loop_lag_ms = 151), Err(Refusal::LoopLag));
        assert_eq!(
            over(|l| l.heartbeat_ms = Some(251)),
            Err(Refusal::Heartbeat)
        );
        assert_eq!(over(|l| l.heartbeat_ms = None), Ok(()));
    }

    #[test]
    fn a_node_without_quorum_keeps_admitting_with_a_backlog() {
        let degraded = Load {
            checkpoint_backlog: 40_000,
            degraded: true,
            ..Load::default()
        };
        assert_eq!(decide(&limits(), &degraded), Ok(()));
    }

    #[test]
    fn a_full_node_asks_for_a_longer_pause() {
        assert_eq!(Refusal::Calls.retry_after_secs(), 5);
        assert_eq!(Refusal::LoopLag.retry_after_secs(), 1);
        assert_eq!(Refusal::Heartbeat.label(), "overload_heartbeat");
    }

    #[test]
    fn lag_is_smoothed() {
        let lag = LoopLag {
            lag_us: AtomicU64::new(0),
        };
        lag.note(800_000);
        assert_eq!(lag.lag_ms(), 100, "one late wake-up moves it by an eighth");
        for _ in 0..40 {
            lag.note(0);
        }
        assert_eq!(
            lag.lag_ms(),
            0,
            "and it decays once the loop is prompt again"
        );
        for _ in 0..40 {
            lag.note(400_000);
        }
        assert!(
            lag.lag_ms() > 390,
            "sustained lag is seen: {}",
            lag.lag_ms()
        );
    }

    #[test]
    fn limits_are_validated() {
        assert!(limits().validate().is_ok());
        let mut bad = limits();
        bad.max_calls = 0;
        assert!(bad.validate().is_err());
        let mut bad = limits();
        bad.max_heartbeat_ms = 0;
        assert!(bad.validate().is_err());
    }
}
