//! DR takeover (R1.2, DESIGN.md "Failover"): when both active sites are lost, the DR node
//! cannot form a quorum. `callgrid dr takeover` turns it into a new cluster from its last
//! applied state: openraft has no force-new-cluster, so the DR node starts a new Raft lineage
//! (its old log is kept aside, `data/raft-lineage-<ms>`), alone in the membership, and its
//! first entry (`Command::Restore`) carries the state it had applied, with every node left
//! behind marked down, so their calls, queues and agents move to it.
//!
//! Steps: the DR node writes `data/dr-seed.json` (API `POST /api/v1/dr/seed`), the CLI stops
//! it, rewrites its config to a membership of the DR site's nodes, and starts it again; on
//! start the node sees the seed, moves the old log aside, initializes the new lineage and
//! commits the restore. Data loss: entries the DR node had not applied when the active sites
//! died (the drill measures it against the highest index any node had applied).
//! Failback (re-adding recovered nodes as learners) is not implemented yet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// What the DR node saved for its new lineage.
#[derive(Debug, Serialize, Deserialize)]
pub struct Seed {
    pub state: model::ReplicatedState,
    pub last_applied: u64,
    pub last_log: u64,
    /// The nodes not in the new membership.
    pub left_behind: Vec<u64>,
    pub at_ms: u64,
}

pub fn seed_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dr-seed.json")
}

/// On node start: a pending seed means this start begins a new lineage; the old Raft store
/// is moved aside so openraft starts fresh and initializes the (rewritten) membership.
pub fn prepare_lineage(data_dir: &Path) -> anyhow::Result<Option<Seed>> {
    let path = seed_path(data_dir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let seed: Seed = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a DR seed: {e}", path.display()))?;
    let raft = data_dir.join("raft");
    if raft.exists() {
        let aside = data_dir.join(format!("raft-lineage-{}", seed.at_ms));
        std::fs::rename(&raft, &aside)?;
        info!(aside = %aside.display(), "DR takeover: old raft log kept aside");
    }
    Ok(Some(seed))
}

/// After the new lineage has a leader: commit the restore, then retire the seed.
pub async fn restore(
    cluster: Arc<cluster::Cluster>,
    data_dir: PathBuf,
    seed: Seed,
) -> anyhow::Result<()> {
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let command = model::Command::Restore {
        state: Box::new(seed.state),
        down: seed.left_behind.clone(),
        at_ms: seed.at_ms,
    };
    let mut attempt = 0u32;
    loop {
        match cluster.write(command.clone()).await {
            Ok(_) => break,
            Err(e) if attempt < 20 => {
                warn!(error = %e, "DR restore not committed yet");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let path = seed_path(&data_dir);
    std::fs::rename(
        &path,
        data_dir.join(format!("dr-seed.applied-{}.json", seed.at_ms)),
    )?;
    info!(
        last_applied = seed.last_applied,
        left_behind = ?seed.left_behind,
        "DR takeover: this node now runs the cluster from its last applied state"
    );
    Ok(())
}
