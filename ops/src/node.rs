//! `callgrid node --config FILE`: one node. Start order: config, tracing, metrics recorder,
//! API listener (bound first so a port clash fails before Raft starts), Raft (`cluster`),
//! the call-control runtime (`actors::node`), then the API server. SIGTERM or SIGINT shut
//! down in reverse order and exit 0.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tracing::{error, info};

use crate::api::{self, AppState};
use crate::config::{self, NodeFileConfig};
use crate::error::ops_err;
use crate::metrics_catalog;

pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    init_tracing();
    let prometheus = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            error!(error = %e, "metrics recorder not installed; /metrics will be empty");
            None
        }
    };
    metrics_catalog::describe();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ops_err(
            "E-DATA-DIR",
            format!("cannot create data_dir {}: {e}", config.data_dir.display()),
            "make data_dir writable",
        )
    })?;
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| {
            ops_err(
                "E-BIND",
                format!("cannot listen for the API on {}: {e}", config.api_addr),
                "free the port or change api_addr",
            )
        })?;
    info!(node = config.node_id, site = %config.site, api = %config.api_addr, "node starting");
    // One DR node (the new lineage's initializer) restores the state; the others catch up
    // from it through Raft.
    let initializer = config.peers.keys().next() == Some(&config.node_id);
    let seed = crate::dr::prepare_lineage(&config.data_dir, initializer).map_err(|e| {
        ops_err(
            "E-DR-SEED",
            format!("{e:#}"),
            "remove data_dir/dr-seed.json to start on the old lineage",
        )
    })?;

    let cluster = cluster::Cluster::start(cluster_config(&config))
        .await
        .map_err(|e| {
            ops_err(
                "E-CLUSTER-START",
                format!("raft did not start: {e}"),
                "check raft_addr, data_dir and the peers' addresses",
            )
        })?;
    let node = match actors::node::Node::start(node_config(&config), Arc::clone(&cluster)).await {
        Ok(node) => node,
        Err(e) => {
            cluster.shutdown().await;
            return Err(ops_err(
                "E-NODE-START",
                format!("the call-control runtime did not start: {e}"),
                "check sip_addr, mesh_addr and media_ip are free local addresses",
            ));
        }
    };
    if let Some(seed) = seed {
        let (cluster, data_dir) = (Arc::clone(&cluster), config.data_dir.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::dr::restore(cluster, data_dir, seed).await {
                error!(error = %e, "DR restore failed; the node runs without the old state");
            }
        });
    }
    let gauges = tokio::spawn(metrics_catalog::run_gauges(
        Arc::clone(&cluster),
        Duration::from_secs(2),
    ));
    let state = Arc::new(AppState::new(
        &config,
        Arc::clone(&cluster),
        Arc::clone(&node),
        prometheus,
    )?);
    let app = api::router(state);
    // The opt-in automatic DR takeover ends this run once it has written the seed and the
    // new membership; the process then re-executes itself (see `crate::dr`).
    let takeover = {
        let (cluster, node, path) = (Arc::clone(&cluster), Arc::clone(&node), path.to_path_buf());
        let (data_dir, site, peers) = (
            config.data_dir.clone(),
            config.site.clone(),
            config.peer_infos(),
        );
        let after = config.dr_auto_takeover_after_ms.map(Duration::from_millis);
        async move {
            match after {
                Some(after) => {
                    crate::dr::auto_takeover(cluster, node, path, data_dir, site, peers, after)
                        .await
                }
                None => std::future::pending().await,
            }
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
    let stop = async move {
        let restart = tokio::select! {
            _ = shutdown_signal() => false,
            _ = takeover => true,
        };
        let _ = stop_tx.send(restart);
    };
    info!(node = config.node_id, "node ready; serving the API");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
    let restart = stop_rx.await.unwrap_or(false);

    info!(node = config.node_id, restart, "shutting down");
    gauges.abort();
    node.shutdown().await;
    cluster.shutdown().await;
    if restart {
        reexec();
    }
    served.map_err(|e| {
        ops_err(
            "E-API-SERVER",
            format!("the API server failed: {e}"),
            "see the log above",
        )
    })?;
    info!(node = config.node_id, "stopped");
    Ok(())
}

fn cluster_config(config: &NodeFileConfig) -> cluster::ClusterConfig {
    let mut c = cluster::ClusterConfig::new(
        config.node_id,
        config.self_info(),
        config.data_dir.join("raft"),
        config.peer_infos(),
    );
    c.heartbeat_ms = config.heartbeat_ms;
    c.join = config.join_existing;
    c.election_timeout_ms = (
        config.election_timeout_min_ms,
        config.election_timeout_max_ms,
    );
    c
}

fn node_config(config: &NodeFileConfig) -> actors::node::NodeConfig {
    actors::node::NodeConfig {
        node_id: config.node_id,
        site: config.site.clone(),
        sip_addr: config.sip_addr,
        media_ip: config.media_ip,
        rtp_port_min: config.rtp_port_min,
        rtp_port_max: config.rtp_port_max,
        mesh_addr: config.mesh_addr,
        mesh_cookie: config.mesh_cookie.clone(),
        data_dir: config.data_dir.clone(),
        secret: config.secret.clone(),
        peers: config.peer_infos(),
        lease: config.lease(),
        admission: config.admission(),
    }
}

/// Replaces this process with a fresh run of the same command line (same pid, so
/// `pids.json` stays true); sockets close on exec. Returns only if exec failed.
fn reexec() {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            error!(error = %e, "cannot find this executable to restart; start the node again");
            return;
        }
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    info!(exe = %exe.display(), "restarting on the new lineage");
    let e = std::process::Command::new(&exe).args(&args).exec();
    error!(error = %e, "restart failed; start the node again");
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `cluster up` sends node output to a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .try_init();
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = terminate => info!("SIGTERM received"),
    }
}
