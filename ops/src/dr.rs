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
//!
//! Automatic takeover (opt-in, `dr_auto_takeover_after_ms` on a dr node): `auto_takeover`
//! watches the lease; once the node has held none for that long while no node of the other
//! sites accepts a connection at all, it writes the seed and its own config the way the CLI
//! does, stops, and re-executes itself (same pid, same arguments): the restart above without
//! an operator.
//!
//! Failback (`callgrid dr failback`, `cli::cluster::dr_failback`): each recovered node's old
//! log is moved aside, it starts with `join_existing` (a fresh store that never initializes),
//! the dr leader adds it as a learner and waits until it has caught up
//! (`POST /api/v1/cluster/learners`), then makes the full set the voters again
//! (`PUT /api/v1/cluster/voters`). The recovered node finds itself declared down in the state
//! it caught up with and rejoins at a new epoch (`NodeUp`), as any restarted node does. Node
//! ids are kept: safety needs an id never reused *within one lineage*, and a recovered node
//! never was a member of the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

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

/// Saves this node's last applied state as the seed of a new lineage (`data/dr-seed.json`).
/// Refused while the node holds a lease, unless forced.
pub fn write_seed(
    cluster: &cluster::Cluster,
    data_dir: &Path,
    holds_lease: bool,
    left_behind: Vec<u64>,
    force: bool,
) -> Result<Seed, SeedError> {
    if holds_lease && !force {
        return Err(SeedError::Quorum);
    }
    if left_behind.contains(&cluster.node_id()) {
        return Err(SeedError::LeftBehindSelf);
    }
    let status = cluster.status();
    let seed = Seed {
        state: cluster.read(Clone::clone),
        last_applied: status.last_applied.unwrap_or(0),
        last_log: status.last_log.unwrap_or(0),
        left_behind,
        at_ms: model::unix_ms(std::time::SystemTime::now()),
    };
    let path = seed_path(data_dir);
    let text = serde_json::to_vec(&seed).map_err(|e| SeedError::Write(e.to_string()))?;
    std::fs::write(&path, text)
        .map_err(|e| SeedError::Write(format!("writing {}: {e}", path.display())))?;
    warn!(
        last_applied = seed.last_applied,
        "DR seed written; restart this node to take over"
    );
    Ok(seed)
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("this node still reaches a quorum of the cluster")]
    Quorum,
    #[error("this node cannot be left behind")]
    LeftBehindSelf,
    #[error("{0}")]
    Write(String),
}

/// Rewrites the node config at `path` so its initial voters are `keep` alone (the new
/// lineage's membership). Used by the CLI and by the automatic takeover.
pub fn rewrite_peers(path: &Path, keep: &BTreeSet<u64>) -> anyhow::Result<()> {
    let mut c = crate::config::load(path)?;
    c.peers.retain(|peer, _| keep.contains(peer));
    std::fs::write(path, crate::config::to_toml(&c)?)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// On node start: a pending seed means this start begins a new lineage; the old Raft store
/// is moved aside so openraft starts fresh and initializes the (rewritten) membership.
/// Only the initializer keeps the seed (it commits the restore, then retires it); another dr
/// node retires it at once, so its next restart stays on the new lineage.
pub fn prepare_lineage(data_dir: &Path, initializer: bool) -> anyhow::Result<Option<Seed>> {
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
    if !initializer {
        std::fs::rename(
            &path,
            data_dir.join(format!("dr-seed.applied-{}.json", seed.at_ms)),
        )?;
        return Ok(None);
    }
    Ok(Some(seed))
}

/// Moves a recovered node's Raft store aside before it joins the new lineage (failback); its
/// recordings and other data stay.
pub fn retire_lineage(data_dir: &Path, at_ms: u64) -> anyhow::Result<Option<PathBuf>> {
    let raft = data_dir.join("raft");
    if !raft.exists() {
        return Ok(None);
    }
    let aside = data_dir.join(format!("raft-lineage-{at_ms}"));
    std::fs::rename(&raft, &aside)
        .map_err(|e| anyhow::anyhow!("moving {} aside: {e}", raft.display()))?;
    Ok(Some(aside))
}

/// The opt-in automatic takeover (see the module doc). Returns once the seed and the new
/// config are written: the caller stops the node and re-executes it.
pub async fn auto_takeover(
    cluster: Arc<cluster::Cluster>,
    node: Arc<actors::node::Node>,
    config_path: PathBuf,
    data_dir: PathBuf,
    site: String,
    peers: BTreeMap<u64, cluster::NodeInfo>,
    after: Duration,
) {
    let tick = Duration::from_millis(250);
    let mut without_lease: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        if node.runtime().holds_lease() {
            without_lease = None;
            continue;
        }
        let mut members = peers.clone();
        members.extend(cluster.members());
        let (mine, others): (BTreeMap<_, _>, BTreeMap<_, _>) =
            members.into_iter().partition(|(_, n)| n.site == site);
        if others.is_empty() {
            // Already alone in its lineage: nothing to take over from.
            without_lease = None;
            continue;
        }
        if any_reachable(&others).await {
            without_lease = None;
            continue;
        }
        let since = *without_lease.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < after {
            continue;
        }
        let left_behind: Vec<u64> = others.keys().copied().collect();
        warn!(
            ?left_behind,
            after_ms = after.as_millis() as u64,
            "automatic DR takeover: no lease and no node of the active sites reachable"
        );
        if let Err(e) = write_seed(&cluster, &data_dir, false, left_behind, true) {
            error!(error = %e, "automatic DR takeover: the seed was not written");
            without_lease = None;
            continue;
        }
        let keep: BTreeSet<u64> = mine.keys().copied().collect();
        if let Err(e) = rewrite_peers(&config_path, &keep) {
            error!(error = %e, "automatic DR takeover: the config was not rewritten");
            let _ = std::fs::remove_file(seed_path(&data_dir));
            without_lease = None;
            continue;
        }
        return;
    }
}

/// True when any of `nodes` accepts a TCP connection on its Raft address (a node that is
/// up, whatever its Raft state).
async fn any_reachable(nodes: &BTreeMap<u64, cluster::NodeInfo>) -> bool {
    for info in nodes.values() {
        let connect = tokio::net::TcpStream::connect(info.raft_addr.as_str());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            return true;
        }
    }
    false
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
