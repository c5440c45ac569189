//! The drill's report: the JSON other tools read, and a short table for people.

use std::collections::BTreeMap;

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Report {
    pub kind: String,
    pub victims: Vec<u64>,
    /// Calls talking to an agent when the fault hit, and how many were still up (and, when
    /// moved, had RTP both ways after the takeover) until the drill ended them.
    pub calls_before: u64,
    pub survived: u64,
    pub dropped: u64,
    /// Calls waiting in a queue (or ringing an agent) when the fault hit, and how many were
    /// not dropped by the cluster.
    pub queued_before: u64,
    pub queued_kept: u64,
    /// From the fault to every victim committed down (seen on a survivor).
    pub detection_ms: Option<u64>,
    /// Per moved call: from the fault to the caller's re-INVITE from the new owner.
    pub recovery_ms: Vec<u64>,
    /// Per moved call: the largest RTP gap either endpoint saw.
    pub media_gap_ms: Vec<u64>,
    pub new_calls: u64,
    pub new_calls_answered: u64,
    pub cdr_missing: u64,
    pub cdr_duplicated: u64,
    /// Applied entries seen before the fault that no survivor had once it led again.
    pub data_loss_entries: u64,
    pub invariants: BTreeMap<String, bool>,
    pub dropped_calls: Vec<String>,
    pub extra: serde_json::Map<String, Value>,
}

/// p50, p99 and max of `values` (nearest rank); zeros when empty.
pub fn percentiles(values: &[u64]) -> (u64, u64, u64) {
    if values.is_empty() {
        return (0, 0, 0);
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.50), rank(0.99), *v.last().expect("not empty"))
}

impl Report {
    pub fn invariants_hold(&self) -> bool {
        self.invariants.values().all(|ok| *ok)
    }

    pub fn to_json(&self) -> Value {
        let (g50, g99, gmax) = percentiles(&self.media_gap_ms);
        let (r50, r99, rmax) = percentiles(&self.recovery_ms);
        let mut v = json!({
            "kind": self.kind,
            "victims": self.victims,
            "calls_before": self.calls_before,
            "survived": self.survived,
            "dropped": self.dropped,
            "queued_before": self.queued_before,
            "queued_kept": self.queued_kept,
            "detection_ms": self.detection_ms,
            // p99 of fault -> re-INVITE at the endpoints (detection included).
            "recovery_ms": r99,
            "recovery_ms_detail": {"p50": r50, "p99": r99, "max": rmax, "calls": self.recovery_ms.len()},
            "media_gap_ms": {"p50": g50, "p99": g99, "max": gmax, "calls": self.media_gap_ms.len()},
            "new_calls": self.new_calls,
            "new_calls_answered": self.new_calls_answered,
            "cdr_missing": self.cdr_missing,
            "cdr_duplicated": self.cdr_duplicated,
            "data_loss_entries": self.data_loss_entries,
            "invariants": self.invariants,
            "dropped_calls": self.dropped_calls,
        });
        if let Some(map) = v.as_object_mut() {
            map.extend(self.extra.clone());
        }
        v
    }

    pub fn table(&self) -> String {
        let (g50, g99, gmax) = percentiles(&self.media_gap_ms);
        let (_, r99, _) = percentiles(&self.recovery_ms);
        format!(
            "drill {} (nodes {:?})\n  established {} -> survived {}, dropped {}\n  queued {} -> kept {}\n  detection {:?} ms, recovery p99 {} ms\n  media gap p50 {} / p99 {} / max {} ms\n  new calls {} ({} answered)\n  CDRs missing {}, duplicated {}; data loss {} entries\n  invariants {:?}",
            self.kind,
            self.victims,
            self.calls_before,
            self.survived,
            self.dropped,
            self.queued_before,
            self.queued_kept,
            self.detection_ms,
            r99,
            g50,
            g99,
            gmax,
            self.new_calls,
            self.new_calls_answered,
            self.cdr_missing,
            self.cdr_duplicated,
            self.data_loss_entries,
            self.invariants
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentiles(&[]), (0, 0, 0));
        assert_eq!(percentiles(&[5]), (5, 5, 5));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentiles(&v), (50, 99, 100));
    }
}
