//! One bench run's JSON document and its short table.

use std::fmt::Write;

use serde::Serialize;
use serde_json::{json, Map, Value};

pub use crate::api::bench::Quantiles;

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A figure compared with its target: `value >= min` or `value <= max`.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    pub pass: bool,
}

impl Target {
    pub fn at_least(name: &str, value: f64, min: f64) -> Target {
        Target {
            name: name.into(),
            value,
            min: Some(min),
            max: None,
            pass: value >= min,
        }
    }

    pub fn at_most(name: &str, value: f64, max: f64) -> Target {
        Target {
            name: name.into(),
            value,
            min: None,
            max: Some(max),
            pass: value <= max,
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    pub parameters: Value,
    /// Every figure, by name (JSON object).
    pub figures: Map<String, Value>,
    pub targets: Vec<Target>,
    /// Per-step rows for the table (caps, ceiling): label, then columns.
    pub rows: Vec<(String, Vec<(String, String)>)>,
    pub notes: Vec<String>,
    started_ms: u64,
}

impl Report {
    pub fn new(scenario: &'static str, parameters: Value) -> Report {
        Report {
            scenario,
            parameters,
            figures: Map::new(),
            targets: Vec::new(),
            rows: Vec::new(),
            notes: Vec::new(),
            started_ms: unix_ms(),
        }
    }

    pub fn figure(&mut self, name: &str, value: impl Serialize) {
        self.figures.insert(
            name.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    pub fn target(&mut self, target: Target) {
        self.targets.push(target);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn pass(&self) -> bool {
        self.targets.iter().all(|t| t.pass)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "parameters": self.parameters,
            "machine": machine(),
            "started_unix_ms": self.started_ms,
            "ended_unix_ms": unix_ms(),
            "figures": self.figures,
            "targets": self.targets,
            "pass": self.pass(),
            "notes": self.notes,
        })
    }

    pub fn table(&self) -> String {
        let mut out = format!("bench {}\n", self.scenario);
        for (label, columns) in &self.rows {
            let cols: Vec<String> = columns.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "  {label:<14} {}", cols.join("  "));
        }
        for t in &self.targets {
            let bound = match (t.min, t.max) {
                (Some(min), _) => format!(">= {min}"),
                (_, Some(max)) => format!("<= {max}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<28} {:>12.2}  target {:<10} {}",
                t.name,
                t.value,
                bound,
                if t.pass { "PASS" } else { "MISS" }
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

/// Cores, CPU model and kernel: the figures mean little without them.
fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({ "cores": cores, "cpu": cpu, "kernel": kernel, "memory_kib": memory_kib })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let q = Quantiles::of(&mut samples);
        assert_eq!((q.p50, q.p99, q.p999, q.max), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(Quantiles::of(&mut []), Quantiles::default());
        let mut one = [7.0];
        assert_eq!(Quantiles::of(&mut one).p999, 7.0);
    }

    #[test]
    fn targets_judge_and_the_report_says_so() {
        let mut report = Report::new("raft", json!({"checkpoints": 10}));
        report.figure("committed_per_sec", 25_000.0);
        report.target(Target::at_least("committed_per_sec", 25_000.0, 20_000.0));
        assert!(report.pass());
        report.target(Target::at_most("commit_p99_ms", 12.0, 10.0));
        assert!(!report.pass());
        let doc = report.to_json();
        assert_eq!(doc["scenario"], "raft");
        assert_eq!(doc["pass"], false);
        assert_eq!(doc["targets"][1]["max"], 10.0);
        assert!(doc["machine"]["cores"].as_u64().unwrap_or(0) >= 1);
        assert!(report.table().contains("MISS"));
    }
}
