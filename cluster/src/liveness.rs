//! Leases and failure detection (DESIGN.md "Placement and ownership").
//!
//! - **Lease**: every `heartbeat_ms` a node commits a `Heartbeat` through Raft. When the
//!   write is committed *and applied on this node*, the node has heard from a quorum and is
//!   caught up to that point: it holds a lease until `lease_ms` after it *sent* the
//!   heartbeat. A node hosts queue and agent actors only while it holds a lease.
//! - **Detection**: the leader notes (on its own clock) when it applied each node's last
//!   heartbeat. A voter silent for `down_after_ms` is declared down with a `NodeDown`
//!   command; placement then moves its actors and calls to the survivors.
//! - **Why no actor has two live owners**: `down_after_ms > lease_ms`, and the leader's
//!   silence clock starts no earlier than the dead node's last heartbeat was sent, so when
//!   `NodeDown` commits the dead node's lease has expired (clock *rates* must agree, not
//!   clocks). A new leader declares nodes
//!   down by the heartbeats it applied as a follower, after a grace of three heartbeat
//!   periods so the survivors reach it after the election. Checkpoints carry a `Fence`, so a
//!   node declared down can no longer write state even if it is still running.
//! - **Rejoining**: a node that finds itself declared down does not heartbeat; its runtime
//!   drops the actors and calls it hosted and then commits `NodeUp` (a new epoch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Cluster;

/// Timings of leases and failure detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    pub down_after_ms: u64,
}

impl Default for LeaseConfig {
    /// Detection within about 0.7 s of the last heartbeat, with room for a slow fsync.
    fn default() -> Self {
        LeaseConfig {
            heartbeat_ms: 150,
            lease_ms: 500,
            down_after_ms: 700,
        }
    }
}

impl LeaseConfig {
    /// The timings must keep a dead node's lease shorter than the time to declare it down.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.lease_ms {
            return Err(format!(
                "lease_ms ({}) must be at least twice heartbeat_ms ({})",
                self.lease_ms, self.heartbeat_ms
            ));
        }
        if self.down_after_ms <= self.lease_ms {
            return Err(format!(
                "down_after_ms ({}) must exceed lease_ms ({}): a node is declared down only after its lease expired",
                self.down_after_ms, self.lease_ms
            ));
        }
        Ok(())
    }
}

/// This node's lease and the leader-side failure detector.
pub struct Liveness {
    cluster: Arc<Cluster>,
    config: LeaseConfig,
    lease_until: Mutex<Option<Instant>>,
    /// When this node (as leader) applied each node's last heartbeat.
    heard: Mutex<HashMap<u64, Instant>>,
    /// Measured detection: from the last heartbeat heard to the NodeDown commit (ms).
    last_detection_ms: Mutex<Option<u64>>,
    /// How long this node's last two committed heartbeats took from send to applied (ms),
    /// newest last: admission control's view of how close the lease is to starving.
    /// With when each was measured: a figure older than two leases says nothing any more
    /// (no heartbeat committed since: degraded mode, not overload).
    beat_ms: Mutex<[Option<(u64, Instant)>; 2]>,
    /// Set by `stop`: a lease wait still running takes no lease after it.
    stopped: std::sync::atomic::AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn unix_ms() -> u64 {
    model::unix_ms(std::time::SystemTime::now())
}

impl Liveness {
    pub fn start(cluster: Arc<Cluster>, config: LeaseConfig) -> Arc<Liveness> {
        let liveness = Arc::new(Liveness {
            cluster,
            config,
            lease_until: Mutex::new(None),
            heard: Mutex::default(),
            last_detection_ms: Mutex::new(None),
            beat_ms: Mutex::default(),
            stopped: Default::default(),
            tasks: Mutex::default(),
        });
        let tasks = vec![
            tokio::spawn(heartbeats(Arc::downgrade(&liveness))),
            tokio::spawn(listen(Arc::downgrade(&liveness))),
            tokio::spawn(detect(Arc::downgrade(&liveness))),
        ];
        *liveness.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        liveness
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// True while this node holds its lease.
    pub fn lease_valid(&self) -> bool {
        self.lease_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// How long the lease still runs (zero when none).
    pub fn lease_remaining(&self) -> Duration {
        self.lease_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            })
    }

    /// The detection time of the last node this node declared down, in ms.
    pub fn last_detection_ms(&self) -> Option<u64> {
        *self
            .last_detection_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The lower of this node's last two heartbeat commit times (ms): above half the lease,
    /// heartbeats are slow for more than a blip and the lease is at risk. None until two
    /// heartbeats committed, and once either is older than two leases. Heartbeats that
    /// failed or timed out are not counted (no quorum is degraded mode, not overload; a
    /// node too busy to commit any shows in its event-loop lag and checkpoint backlog).
    pub fn heartbeat_commit_ms(&self) -> Option<u64> {
        let beats = self.beat_ms.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |beat: Option<(u64, Instant)>| {
            beat.filter(|(_, at)| at.elapsed() < Duration::from_millis(2 * self.config.lease_ms))
                .map(|(ms, _)| ms)
        };
        Some(fresh(beats[0])?.min(fresh(beats[1])?))
    }

    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn me(&self) -> u64 {
        self.cluster.node_id()
    }

    async fn beat(self: &Arc<Self>) {
        let me = self.me();
        let (epoch, down) = self.cluster.read(|s| (s.epoch(me), s.is_down(me)));
        if down {
            // Declared down: no lease until the runtime has dropped its actors and rejoined.
            *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return;
        }
        let sent = Instant::now();
        let at_ms = unix_ms();
        let wait = Duration::from_millis(self.config.lease_ms);
        let written = tokio::time::timeout(
            wait,
            self.cluster.write(model::Command::Heartbeat {
                node: me,
                epoch,
                at_ms,
            }),
        )
        .await;
        match written {
            Ok(Ok(outcome)) if outcome.error.is_none() => {}
            Ok(Ok(outcome)) => {
                debug!(error = ?outcome.error, "heartbeat refused");
                return;
            }
            Ok(Err(error)) => {
                debug!(%error, "heartbeat not committed");
                return;
            }
            Err(_) => {
                debug!("heartbeat timed out");
                return;
            }
        }
        // Committed; the lease also needs this node to have applied it (so it has seen every
        // ownership change committed before it). That wait runs apart, so a node that is
        // behind in applying still sends its heartbeats every period: waiting here would
        // space them out to the lease length, close to the silence that declares it down.
        let me = Arc::clone(self);
        tokio::spawn(async move { me.take_lease(epoch, at_ms, sent, wait).await });
    }

    /// Holds the lease of the heartbeat sent at `sent` once this node has applied it.
    async fn take_lease(&self, epoch: u64, at_ms: u64, sent: Instant, wait: Duration) {
        let me = self.me();
        let applied = || {
            self.cluster.read(|s| {
                s.nodes
                    .get(&me)
                    .is_some_and(|n| n.epoch == epoch && n.last_heartbeat_ms >= at_ms)
            })
        };
        let deadline = sent + wait;
        while !applied() {
            if Instant::now() >= deadline {
                // Committed but not applied here in time: this node is behind (overload),
                // not cut off; admission control sees it as a heartbeat of a whole lease.
                self.note_beat(sent.elapsed().as_millis() as u64);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        {
            let mut lease = self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // Heartbeats overlap now: a later one may already hold a longer lease.
            if lease.is_none_or(|until| until < sent + wait) {
                *lease = Some(sent + wait);
            }
        }
        self.note_beat(sent.elapsed().as_millis() as u64);
    }

    fn note_beat(&self, took: u64) {
        let mut beats = self.beat_ms.lock().unwrap_or_else(|p| p.into_inner());
        *beats = [beats[1], Some((took, Instant::now()))];
        metrics::histogram!("callgrid_heartbeat_commit_seconds").record(took as f64 / 1000.0);
    }
}

async fn heartbeats(liveness: std::sync::Weak<Liveness>) {
    let period = match liveness.upgrade() {
        Some(l) => Duration::from_millis(l.config.heartbeat_ms),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(l) = liveness.upgrade() else { return };
        l.beat().await;
    }
}

/// Notes when each node's heartbeats are applied here (the detector's input).
async fn listen(liveness: std::sync::Weak<Liveness>) {
    let mut applied = match liveness.upgrade() {
        Some(l) => l.cluster.subscribe(),
        None => return,
    };
    loop {
        match applied.recv().await {
            Ok(a) => {
                let Some(l) = liveness.upgrade() else { return };
                note(&l, &a.command);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Heartbeats were missed here, not necessarily sent late: count every node
                // as heard now rather than judge by an older time (a live node's lease may
                // still run; declaring it down a little later is always safe).
                let Some(l) = liveness.upgrade() else { return };
                let now = Instant::now();
                let mut heard = l.heard.lock().unwrap_or_else(|p| p.into_inner());
                for time in heard.values_mut() {
                    *time = now;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn note(l: &Liveness, command: &model::Command) {
    match command {
        model::Command::Heartbeat { node, .. } | model::Command::NodeUp { node, .. } => {
            l.heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*node, Instant::now());
        }
        model::Command::Batch { commands } => commands.iter().for_each(|c| note(l, c)),
        model::Command::Group { commands } => commands.iter().for_each(|c| note(l, c)),
        _ => {}
    }
}

/// On the leader: declare voters down that have been silent for `down_after_ms`.
async fn detect(liveness: std::sync::Weak<Liveness>) {
    let mut leader_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(l) = liveness.upgrade() else { return };
        let status = l.cluster.status();
        let me = l.me();
        if status.leader != Some(me) {
            leader_since = None;
            continue;
        }
        let now = Instant::now();
        let since = *leader_since.get_or_insert(now);
        let silence = Duration::from_millis(l.config.down_after_ms);
        // A new leader judges by the heartbeats it applied as a follower (declaring a node
        // down at `applied + down_after` is safe whoever applied it: the lease started before
        // the commit). It first gives every node a few heartbeat periods to reach it, since
        // nobody could commit during the election.
        let grace = Duration::from_millis(3 * l.config.heartbeat_ms).min(silence);
        if now.duration_since(since) < grace {
            continue;
        }
        // Only a leader whose own heartbeats commit may judge others silent: an isolated
        // leader (no new one elected yet) hears nobody, and its verdict would commit against
        // healthy nodes once the isolation heals.
        if !l.lease_valid() {
            continue;
        }
        let suspects: Vec<(u64, u64, Instant)> = {
            let heard = l.heard.lock().unwrap_or_else(|p| p.into_inner());
            l.cluster.read(|s| {
                status
                    .voters
                    .keys()
                    .filter(|id| **id != me && !s.is_down(**id))
                    .filter_map(|id| {
                        // Silence counts from when this node became leader at the
                        // earliest: during the election nobody could commit a heartbeat.
                        let last = heard.get(id).copied().unwrap_or(since).max(since);
                        (now.duration_since(last) >= silence).then_some((*id, s.epoch(*id), last))
                    })
                    .collect()
            })
        };
        for (node, epoch, last) in suspects {
            let at_ms = unix_ms();
            // As leader only: forwarded, a deposed leader's verdict (it heard nobody while cut
            // off) would be committed by the new leader against live nodes.
            match l
                .cluster
                .write_as_leader(model::Command::NodeDown { node, epoch, at_ms })
                .await
            {
                Ok(outcome) if outcome.error.is_none() => {
                    let detection = last.elapsed().as_millis() as u64;
                    *l.last_detection_ms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(detection);
                    metrics::counter!("callgrid_nodes_declared_down_total").increment(1);
                    info!(node, epoch, detection_ms = detection, "node declared down");
                }
                Ok(outcome) => debug!(node, error = ?outcome.error, "node-down refused"),
                Err(error) => warn!(node, %error, "could not commit node-down"),
            }
        }
    }
}
