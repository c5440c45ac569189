//! Killing and inspecting single nodes of a test cluster (failover tests and drills).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{callgrid_bin, wait_until, Api, ClusterGuard, ClusterInfo};

impl ClusterGuard {
    /// `cluster up` with a layout ("1,1,1" or "2,2,1") and, for drills, fault injection.
    pub fn up_with(sample: bool, layout: &str, allow_faults: bool) -> Result<ClusterGuard> {
        let faults: &[&str] = if allow_faults {
            &["--allow-faults"]
        } else {
            &[]
        };
        Self::up_args(sample, layout, faults)
    }

    /// `cluster up` with a layout and further options (`--allow-faults`,
    /// `--dr-auto-takeover-ms N`).
    pub fn up_args(sample: bool, layout: &str, options: &[&str]) -> Result<ClusterGuard> {
        let dir = tempfile::Builder::new()
            .prefix("callgrid-test-")
            .tempdir()?;
        let mut cmd = Command::new(callgrid_bin());
        cmd.args(["cluster", "up", "--layout", layout, "--dir"])
            .arg(dir.path())
            .args(options);
        if sample {
            cmd.arg("--sample");
        }
        let out = cmd.output().context("running cluster up")?;
        if !out.status.success() {
            bail!(
                "cluster up failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = std::fs::read_to_string(dir.path().join("cluster.json"))?;
        let info: ClusterInfo = serde_json::from_str(&text)?;
        Ok(ClusterGuard { dir, info, sample })
    }

    /// The index in `info.nodes` of node `id`.
    pub fn index_of(&self, id: u64) -> Result<usize> {
        self.info
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    /// `kill -9` of node `id` (its process from `pids.json`), waiting until it is gone.
    pub async fn kill_node(&self, id: u64) -> Result<()> {
        let pid = node_pid(self.work(), id)?;
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -9 {pid} (node {id}) failed");
        }
        wait_until(Duration::from_secs(10), "node process gone", || async {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its parent (cluster up detached it).
            (stat.is_empty() || stat.contains(") Z ")).then_some(())
        })
        .await
    }

    /// Waits until every node in `apis` reports `node` down (committed through Raft).
    pub async fn wait_declared_down(&self, node: u64, apis: &[Api]) -> Result<()> {
        for api in apis {
            wait_until(Duration::from_secs(15), "node declared down", || async {
                let h: Value = api.health().await.ok()?;
                h["down_nodes"]
                    .as_array()?
                    .iter()
                    .any(|d| d.as_u64() == Some(node))
                    .then_some(())
            })
            .await?;
        }
        Ok(())
    }

    /// The API clients of every node but `except`.
    pub fn apis_except(&self, except: &[u64]) -> Vec<Api> {
        self.info
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !except.contains(&n.id))
            .map(|(i, _)| self.api(i))
            .collect()
    }
}

/// The pid of node `id` from `DIR/pids.json`.
pub fn node_pid(dir: &Path, id: u64) -> Result<u32> {
    let text = std::fs::read_to_string(dir.join("pids.json")).context("reading pids.json")?;
    let v: Value = serde_json::from_str(&text)?;
    v["nodes"][id.to_string()]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| anyhow!("no pid for node {id} in pids.json: {v}"))
}
