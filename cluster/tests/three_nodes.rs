//! A three-node cluster on loopback: forwarding writes from a follower, rejected commands,
//! and restart from the same data directories. Every wait has a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cluster::{Cluster, ClusterConfig, NodeInfo};
use model::{Command, ConfigItem, Tenant, TenantId};

const READY: Duration = Duration::from_secs(20);
const APPLY: Duration = Duration::from_secs(10);

fn free_loopback_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

fn peers() -> Result<BTreeMap<u64, NodeInfo>> {
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let info = NodeInfo {
            site: format!("site{id}"),
            raft_addr: free_loopback_addr()?,
            api_addr: format!("127.0.0.1:{}", 28000 + id),
            sip_addr: format!("127.0.0.1{id}:5060"),
            mesh_addr: format!("127.0.0.1:{}", 29000 + id),
        };
        peers.insert(id, info);
    }
    Ok(peers)
}

async fn start_all(root: &Path, peers: &BTreeMap<u64, NodeInfo>) -> Result<Vec<Arc<Cluster>>> {
    let mut nodes = Vec::new();
    for (id, info) in peers {
        let config = ClusterConfig::new(
            *id,
            info.clone(),
            root.join(format!("node{id}")),
            peers.clone(),
        );
        nodes.push(
            Cluster::start(config)
                .await
                .with_context(|| format!("starting node {id}"))?,
        );
    }
    for node in &nodes {
        node.wait_ready(READY)
            .await
            .with_context(|| format!("node {} ready", node.node_id()))?;
    }
    Ok(nodes)
}

async fn stop_all(nodes: Vec<Arc<Cluster>>) {
    for node in &nodes {
        node.shutdown().await;
    }
}

fn tenant() -> Tenant {
    Tenant {
        id: TenantId::new("gd").expect("valid id"),
        name: "Guangdong".to_string(),
        domain: "gd.callgrid.test".to_string(),
        landing_codes: vec!["20".to_string()],
        access_codes: vec![],
        routing: Vec::new(),
    }
}

/// The create of tenant `t{n}`, whose landing code is `landing`.
fn create_numbered(n: usize, landing: usize) -> Command {
    Command::Create {
        item: ConfigItem::Tenant(Tenant {
            id: TenantId::new(format!("t{n}")).expect("valid id"),
            name: format!("Tenant {n}"),
            domain: format!("t{n}.callgrid.test"),
            landing_codes: vec![landing.to_string()],
            access_codes: vec![],
            routing: Vec::new(),
        }),
    }
}

/// Waits until every node has applied everything any of them has, then checks that each
/// holds `tenants` tenants.
async fn all_apply_with(nodes: &[Arc<Cluster>], tenants: usize) -> Result<()> {
    let last = nodes
        .iter()
        .filter_map(|n| n.status().last_applied)
        .max()
        .context("an applied index")?;
    for node in nodes {
        node.raft()
            .wait(Some(APPLY))
            .applied_index_at_least(Some(last), "every write applied")
            .await
            .with_context(|| format!("node {} applies up to {last}", node.node_id()))?;
        assert_eq!(node.read(|s| s.tenants.len()), tenants);
    }
    Ok(())
}

fn has_tenant(node: &Cluster) -> bool {
    node.read(|state| state.tenants.contains_key("gd"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forward_reject_and_restart() -> Result<()> {
    let root = tempfile::tempdir()?;
    let peers = peers()?;
    let nodes = start_all(root.path(), &peers).await?;

    let leader = nodes[0]
        .status()
        .leader
        .context("a leader after wait_ready")?;
    for node in &nodes {
        let status = node.status();
        assert_eq!(status.voters.len(), 3, "{status:?}");
        assert_eq!(status.voters, peers);
    }
    // Write through a follower (node 2 unless it happens to lead), so the write is forwarded.
    let follower = nodes
        .iter()
        .find(|n| n.node_id() != leader && n.node_id() == 2)
        .or_else(|| nodes.iter().find(|n| n.node_id() != leader));
    let follower = follower.context("a follower")?;
    assert_ne!(follower.status().state, "Leader");

    let mut subscriptions: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let create = Command::Create {
        item: ConfigItem::Tenant(tenant()),
    };
    let outcome = follower.write(create.clone()).await?;
    assert_eq!(outcome.error, None, "first create must succeed");

    // Every node applies it: wait for the applied event, with a deadline.
    for (node, subscription) in nodes.iter().zip(subscriptions.iter_mut()) {
        let applied = tokio::time::timeout(APPLY, subscription.recv())
            .await
            .with_context(|| format!("node {} applied within {APPLY:?}", node.node_id()))??;
        assert_eq!(*applied.command, create);
        assert!(has_tenant(node), "node {} lacks the tenant", node.node_id());
    }

    // The same create again is rejected by the state machine: an Outcome, not an Err.
    let again = follower.write(create.clone()).await?;
    match again.error {
        Some(model::ApplyError::AlreadyExists(_)) => {}
        other => bail!("expected AlreadyExists, got {other:?}"),
    }
    // And through the leader too.
    let leader_node = nodes
        .iter()
        .find(|n| n.node_id() == leader)
        .context("leader handle")?;
    assert!(leader_node.write(create.clone()).await?.error.is_some());

    // Snapshot every node, so the restart below restores from the persisted snapshot.
    for node in &nodes {
        node.raft().trigger().snapshot().await?;
        node.raft()
            .wait(Some(APPLY))
            .metrics(|m| m.snapshot.is_some(), "snapshot built")
            .await
            .with_context(|| format!("node {} snapshot", node.node_id()))?;
    }
    stop_all(nodes).await;

    // Restart on the same data directories: the tenant is back on every node, without any
    // new write (wait_ready guarantees earlier commits are applied).
    let nodes = start_all(root.path(), &peers).await?;
    for node in &nodes {
        assert!(
            has_tenant(node),
            "node {} lost the tenant after restart",
            node.node_id()
        );
    }
    let status = nodes[0].status();
    assert!(status.term >= 2, "a new term after restart: {status:?}");
    stop_all(nodes).await;
    Ok(())
}

/// Without a quorum, a write fails with `NoLeader` within the write deadline instead of
/// hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_quorum_fails_with_no_leader() -> Result<()> {
    let root = tempfile::tempdir()?;
    let peers = peers()?;
    let info = peers.get(&1).context("node 1")?.clone();
    let node = Cluster::start(ClusterConfig::new(
        1,
        info,
        root.path().join("node1"),
        peers,
    ))
    .await?;
    assert!(
        node.wait_ready(Duration::from_millis(800)).await.is_err(),
        "one of three voters cannot be ready"
    );
    let started = std::time::Instant::now();
    let err = node
        .write(Command::Create {
            item: ConfigItem::Tenant(tenant()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, cluster::ClusterError::NoLeader { .. }),
        "{err}"
    );
    assert!(started.elapsed() < cluster::WRITE_TIMEOUT + Duration::from_secs(1));
    node.shutdown().await;
    Ok(())
}

/// Writes that reach the leader together share a Raft entry (`Command::Group`), and each
/// writer still gets its own command's outcome: of the concurrent creates of one tenant
/// exactly one succeeds, every distinct tenant is created, the delete of each missing tenant
/// is refused naming that very tenant, through followers and the leader alike, and every
/// node applies them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_with_their_own_outcomes() -> Result<()> {
    let root = tempfile::tempdir()?;
    let peers = peers()?;
    let nodes = start_all(root.path(), &peers).await?;
    let leader = nodes[0].status().leader.context("a leader")?;
    let leader = nodes
        .iter()
        .find(|n| n.node_id() == leader)
        .context("the leader's handle")?;
    let mut applied = leader.subscribe();

    let create = |n: usize| create_numbered(n, 300 + n);
    const DISTINCT: usize = 24;
    const DUPLICATES: usize = 6;
    const MISSING: usize = 12;
    let duplicate = DISTINCT;
    let missing = |n: usize| 100 + n;
    let mut writes = Vec::new();
    for n in 0..DISTINCT {
        writes.push((n, nodes[n % 3].write(create(n))));
    }
    for i in 0..DUPLICATES {
        writes.push((duplicate, nodes[i % 3].write(create(duplicate))));
    }
    for i in 0..MISSING {
        let delete = Command::Delete {
            key: model::ConfigKey::Tenant {
                id: TenantId::new(format!("t{}", missing(i))).expect("valid id"),
            },
        };
        writes.push((missing(i), nodes[i % 3].write(delete)));
    }
    let (ns, futures): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
    let outcomes = futures::future::join_all(futures).await;

    let mut created_duplicate = 0;
    for (n, outcome) in ns.into_iter().zip(outcomes) {
        let outcome = outcome.with_context(|| format!("write of t{n}"))?;
        assert!(outcome.parts.is_empty(), "a writer sees its own outcome");
        match (n, outcome.error) {
            (n, None) if n < DISTINCT => {}
            (n, None) if n == duplicate => created_duplicate += 1,
            (n, Some(model::ApplyError::AlreadyExists(_))) if n == duplicate => {}
            (n, Some(model::ApplyError::NotFound(what))) if n >= missing(0) => {
                assert_eq!(
                    what,
                    format!("tenant t{n}"),
                    "each delete hears of its own key"
                );
            }
            (n, other) => bail!("t{n}: unexpected outcome {other:?}"),
        }
    }
    assert_eq!(created_duplicate, 1, "exactly one of the duplicates wins");

    // Every node applies every write; then the leader's applied commands show at least one
    // entry that carried several writes (42 at once cannot all go alone: at most two entries
    // are in flight at the leader).
    all_apply_with(&nodes, DISTINCT + 1).await?;
    let mut grouped = 0;
    while let Ok(a) = applied.try_recv() {
        if let Command::Group { commands } = &*a.command {
            assert!(commands.len() > 1, "a group of one is sent alone");
            grouped += 1;
        }
    }
    assert!(grouped > 0, "no write shared an entry");
    stop_all(nodes).await;
    Ok(())
}

/// Writes keep going while the leadership moves: a follower calls an election (a new term
/// deposes the leader whatever its outcome) in the middle of three writers' streams of
/// creates. Every write comes back committed, the entries the old leader's combiner had in
/// flight or queued included, and every node ends with every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_leader_change_mid_stream() -> Result<()> {
    let root = tempfile::tempdir()?;
    let peers = peers()?;
    let nodes = start_all(root.path(), &peers).await?;
    let first = nodes[0].status();
    let leader = first.leader.context("a leader")?;
    let mut applied = nodes[0].subscribe();

    const WRITERS: usize = 3;
    const EACH: usize = 40;
    let streams = (0..WRITERS).map(|w| {
        let node = Arc::clone(&nodes[w]);
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..EACH {
                let n = w * 100 + i;
                outcomes.push((n, node.write(create_numbered(n, 1000 + n)).await));
            }
            outcomes
        })
    });
    let streams: Vec<_> = streams.collect();

    // Once a few writes are in, a follower calls an election.
    let mut seen = 0;
    while seen < 10 {
        let a = tokio::time::timeout(APPLY, applied.recv())
            .await
            .context("writes are applied")??;
        if matches!(&*a.command, Command::Create { .. } | Command::Group { .. }) {
            seen += 1;
        }
    }
    let follower = nodes
        .iter()
        .find(|n| n.node_id() != leader)
        .context("a follower")?;
    follower.raft().trigger().elect().await?;

    for stream in streams {
        for (n, outcome) in stream.await? {
            let outcome = outcome.with_context(|| format!("write of t{n}"))?;
            match outcome.error {
                None => {}
                // A write whose first attempt committed but whose answer was lost in the
                // change is retried, and the retry finds it: committed once all the same.
                Some(model::ApplyError::AlreadyExists(_)) => {}
                other => bail!("t{n}: unexpected outcome {other:?}"),
            }
        }
    }
    let after = nodes[0].status();
    assert!(
        after.term > first.term,
        "the election made a new term: {after:?}"
    );
    all_apply_with(&nodes, WRITERS * EACH).await?;
    stop_all(nodes).await;
    Ok(())
}
