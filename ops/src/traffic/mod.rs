//! Synthetic traffic for a local cluster: agent softphones and carrier callers built on the
//! project's own SIP stack, for the demo now and for drills and benches later.
//!
//! [`ClusterInfo::load`] reads `DIR/cluster.json`; [`Traffic::start`] registers
//! `agents_per_tenant` phones per tenant (round-robin across the nodes), signs each agent in
//! and ready through the REST API, then places calls with Poisson arrivals at `rate_cps`,
//! spread round-robin over the nodes and at random over the provinces' landing codes, each
//! pressing a random menu key (1, 2, 9, 0). Everything is bounded: at most `max_calls`
//! calls, each call within `call_limit`, generation stops after `duration` or on
//! [`Traffic::stop_generating`], and [`Traffic::finish`] waits (bounded) for calls to end.
//! Loopback only: every socket binds 127.0.0.1.
//!
//! Besides the counters ([`TrafficStats`]), every call gets a [`CallRecord`] in the
//! [`CallLog`]: the caller's side and the agent legs that served it, with the media
//! measurements a failover drill checks (largest RTP gap, whether a node took the call over
//! with a re-INVITE, whether audio flowed both ways afterwards).

pub mod caller;
pub mod media;
pub mod phone;
pub mod reinvite;
pub mod ua;

#[cfg(test)]
mod loopback_tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use caller::{CallPlan, CallerEvent};
use media::MediaReport;
use phone::{PhoneConfig, PhoneEvent, PhoneReport};

/// The sample trunk accepts only this source address.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Menu keys the callers press: 1 outage, 2 billing, 9 complaint, 0 general.
pub const MENU_KEYS: [char; 4] = ['1', '2', '9', '0'];

pub use model::sample::{ClusterFile as ClusterInfo, ClusterNode};

/// A node's SIP address from `cluster.json`.
pub fn sip_addr(node: &ClusterNode) -> anyhow::Result<SocketAddr> {
    node.sip.parse().with_context(|| {
        format!(
            "node {} has a bad SIP address {:?} in cluster.json",
            node.id, node.sip
        )
    })
}

/// Reads `DIR/cluster.json`.
pub fn load_cluster(dir: &Path) -> anyhow::Result<ClusterInfo> {
    {
        let path = dir.join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub agents_per_tenant: usize,
    /// Mean arrival rate (Poisson), calls per second over the whole cluster.
    pub rate_cps: f64,
    /// Calls are generated for this long (or until `max_calls`).
    pub duration: Duration,
    pub max_calls: usize,
    /// A caller stays this long after the answer (IVR, queue, talk), then hangs up.
    pub caller_stay: Range<Duration>,
    /// When the caller presses its menu key, after the answer.
    pub digit_delay: Duration,
    /// The agent's talk time before it hangs up.
    pub agent_talk: Range<Duration>,
    pub agent_ring: Duration,
    /// Hard bound on one call from INVITE to the end.
    pub call_limit: Duration,
    /// Seed for arrivals, node, province and key choices.
    pub seed: u64,
    /// Place at most this many calls until [`Traffic::allow_more`] raises it (a drill holds
    /// back calls to place after its fault). `None`: up to `max_calls` right away.
    pub initial_calls: Option<usize>,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            agents_per_tenant: 4,
            rate_cps: 2.0,
            duration: Duration::from_secs(120),
            max_calls: 10_000,
            caller_stay: Duration::from_secs(20)..Duration::from_secs(40),
            digit_delay: Duration::from_secs(4),
            agent_talk: Duration::from_secs(5)..Duration::from_secs(15),
            agent_ring: Duration::from_millis(500),
            call_limit: Duration::from_secs(90),
            seed: rand::random(),
            initial_calls: None,
        }
    }
}

/// Counters for one node or province, from the traffic's own point of view.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SideCounters {
    pub started: u64,
    pub answered: u64,
    pub failed: u64,
    pub ended: u64,
    pub in_progress: u64,
}

/// What the traffic saw, published on every change.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrafficStats {
    pub per_node: BTreeMap<u64, SideCounters>,
    pub per_province: BTreeMap<String, SideCounters>,
    pub phones_registered: u64,
    pub phone_register_failures: u64,
    pub agent_answers: u64,
    pub agent_hangups: u64,
    pub caller_rtp_in: u64,
    pub agent_rtp_in: u64,
    pub failures_by_status: BTreeMap<u16, u64>,
    /// Ended calls whose carrier leg / agent leg was taken over by a node (re-INVITE).
    pub refreshed_caller_legs: u64,
    pub refreshed_agent_legs: u64,
    /// The largest RTP gap any ended leg saw, either side (ms); see [`MediaReport`].
    pub max_media_gap_ms: u64,
}

impl TrafficStats {
    pub fn in_progress(&self) -> u64 {
        self.per_node.values().map(|c| c.in_progress).sum()
    }
    pub fn started(&self) -> u64 {
        self.per_node.values().map(|c| c.started).sum()
    }
}

enum Report {
    Started {
        /// The generator's number for the call, which its later reports repeat.
        seq: u64,
        node: u64,
        province: String,
        /// The caller number (From user), unique within one run.
        caller: String,
    },
    Caller {
        seq: u64,
        node: u64,
        province: String,
        event: CallerEvent,
    },
    Phone(PhoneReport),
}

/// One agent leg as its phone saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentLegRecord {
    pub tenant: String,
    pub extension: String,
    /// The agent leg's SIP Call-ID (the node's, not the carrier leg's).
    pub sip_call_id: String,
    /// The cluster's call id, from the INVITE's `X-Callgrid-Call`: what CDRs and the REST
    /// API call the call.
    pub cluster_call: Option<String>,
    /// The caller number the node put in the INVITE's From.
    pub caller: String,
    pub talk_ms: u64,
    pub hung_up_by_agent: bool,
    pub media: MediaReport,
}

/// One call the traffic placed: the caller's side, and the agent legs that served it.
///
/// The caller knows its SIP Call-ID and number; the phone knows the cluster's call id and
/// the caller number the node passed on. The caller number ties them together (the
/// generator never uses one twice in a run), and the CDR carries both the number and the
/// cluster call id, so a drill can also go from here to the cluster's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallRecord {
    /// The generator's sequence number for the call.
    pub seq: u64,
    pub node: u64,
    pub province: String,
    pub caller: String,
    /// The carrier leg's SIP Call-ID (empty if the call could not be placed).
    pub sip_call_id: String,
    pub setup_ms: Option<u64>,
    /// The final status when setup failed.
    pub failed_status: Option<u16>,
    pub ended: bool,
    pub hung_up_by_caller: bool,
    /// The caller's measurements, once its call ended.
    pub caller_media: Option<MediaReport>,
    /// Agent legs whose INVITE named this caller (ended ones; usually one, more after a
    /// re-queue).
    pub agent_legs: Vec<AgentLegRecord>,
    /// The largest RTP gap either side saw (ms).
    pub media_gap_ms: u64,
    /// Whether a node took either leg over (an accepted re-INVITE).
    pub refreshed: bool,
    /// The takeover's outage: the larger of the two sides' gap around their refresh.
    pub refresh_gap_ms: Option<u64>,
    /// After a takeover: whether the caller and an agent leg both took the refresh and each
    /// received RTP after it. `None` without a refresh or without both sides' reports.
    pub both_ways_after_refresh: Option<bool>,
}

impl CallRecord {
    /// Fills the fields that combine the caller's and the agents' sides.
    fn combine(&mut self) {
        let caller = self.caller_media.as_ref();
        let legs = self.agent_legs.iter().map(|leg| &leg.media);
        self.media_gap_ms = caller
            .into_iter()
            .chain(legs.clone())
            .map(|m| m.max_gap_ms)
            .max()
            .unwrap_or(0);
        self.refreshed = caller
            .into_iter()
            .chain(legs.clone())
            .any(MediaReport::refreshed);
        self.refresh_gap_ms = caller
            .into_iter()
            .chain(legs.clone())
            .filter_map(|m| m.refresh_gap_ms)
            .max();
        self.both_ways_after_refresh = match caller {
            Some(caller) if self.refreshed && !self.agent_legs.is_empty() => Some(
                caller.received_after_refresh()
                    && legs.clone().any(MediaReport::received_after_refresh),
            ),
            _ => None,
        };
    }
}

/// Per-call records, shared by the collector and whoever drives the traffic (a drill takes
/// a handle before [`Traffic::finish`] and reads it afterwards). Kept out of
/// [`TrafficStats`], which is cloned on every event.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    inner: Arc<Mutex<CallBook>>,
}

#[derive(Debug, Default)]
struct CallBook {
    calls: BTreeMap<u64, CallRecord>,
    agent_legs: Vec<AgentLegRecord>,
}

impl CallLog {
    fn book(&self) -> std::sync::MutexGuard<'_, CallBook> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, report: &Report) {
        let mut book = self.book();
        match report {
            Report::Started {
                seq,
                node,
                province,
                caller,
            } => {
                book.calls.insert(
                    *seq,
                    CallRecord {
                        seq: *seq,
                        node: *node,
                        province: province.clone(),
                        caller: caller.clone(),
                        ..Default::default()
                    },
                );
            }
            Report::Caller { seq, event, .. } => {
                let Some(record) = book.calls.get_mut(seq) else {
                    return;
                };
                match event {
                    CallerEvent::Answered { call, setup_ms } => {
                        record.sip_call_id.clone_from(call);
                        record.setup_ms = Some(*setup_ms);
                    }
                    CallerEvent::Refreshed { .. } => {}
                    CallerEvent::Ended {
                        call, by_me, media, ..
                    } => {
                        record.sip_call_id.clone_from(call);
                        record.ended = true;
                        record.hung_up_by_caller = *by_me;
                        record.caller_media = Some(media.clone());
                    }
                    CallerEvent::Failed { call, status } => {
                        record.sip_call_id.clone_from(call);
                        record.failed_status = Some(*status);
                    }
                }
            }
            Report::Phone(PhoneReport {
                tenant,
                extension,
                event:
                    PhoneEvent::Ended {
                        call,
                        talk_ms,
                        hung_up_by_me,
                        caller,
                        cluster_call,
                        media,
                        ..
                    },
            }) => book.agent_legs.push(AgentLegRecord {
                tenant: tenant.clone(),
                extension: extension.clone(),
                sip_call_id: call.clone(),
                cluster_call: cluster_call.clone(),
                caller: caller.clone(),
                talk_ms: *talk_ms,
                hung_up_by_agent: *hung_up_by_me,
                media: media.clone(),
            }),
            Report::Phone(_) => {}
        }
    }

    /// Every call so far, in the order they were placed, with their agent legs attached and
    /// the combined fields filled in.
    pub fn records(&self) -> Vec<CallRecord> {
        let book = self.book();
        join_legs(book.calls.values().cloned().collect(), &book.agent_legs)
    }

    /// Every ended agent leg, matched to a call or not (a call from outside the traffic, or
    /// a caller number the node rewrote).
    #[allow(dead_code)] // Drills (issue 3) report unmatched legs; the demo does not.
    pub fn agent_legs(&self) -> Vec<AgentLegRecord> {
        self.book().agent_legs.clone()
    }
}

/// Attaches each agent leg to the call with its caller number, when exactly one call has
/// it, and combines the sides.
fn join_legs(mut calls: Vec<CallRecord>, legs: &[AgentLegRecord]) -> Vec<CallRecord> {
    let mut by_caller: HashMap<&str, Option<usize>> = HashMap::new();
    for (i, call) in calls.iter().enumerate() {
        by_caller
            .entry(call.caller.as_str())
            .and_modify(|slot| *slot = None)
            .or_insert(Some(i));
    }
    let mut attach: Vec<(usize, &AgentLegRecord)> = Vec::new();
    for leg in legs {
        if let Some(Some(i)) = by_caller.get(leg.caller.as_str()) {
            attach.push((*i, leg));
        }
    }
    for (i, leg) in attach {
        if let Some(call) = calls.get_mut(i) {
            call.agent_legs.push(leg.clone());
        }
    }
    for call in &mut calls {
        call.combine();
    }
    calls
}

/// A running traffic generator.
pub struct Traffic {
    stats: watch::Receiver<TrafficStats>,
    calls: CallLog,
    allowed: watch::Sender<usize>,
    stop_generating: watch::Sender<bool>,
    stop_phones: watch::Sender<bool>,
    generator: tokio::task::JoinHandle<()>,
    phones: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    collector: tokio::task::JoinHandle<()>,
}

impl Traffic {
    /// Registers the phones, signs the agents in and ready, and starts placing calls.
    pub async fn start(cluster: &ClusterInfo, config: TrafficConfig) -> anyhow::Result<Traffic> {
        anyhow::ensure!(!cluster.nodes.is_empty(), "cluster.json lists no nodes");
        anyhow::ensure!(
            !cluster.tenants().is_empty(),
            "cluster.json has no sample tenants (start the cluster with --sample)"
        );
        anyhow::ensure!(
            config.rate_cps > 0.0 && config.rate_cps.is_finite(),
            "the call rate must be positive"
        );
        let (report_tx, report_rx) = mpsc::unbounded_channel::<Report>();
        let (stats_tx, stats_rx) = watch::channel(TrafficStats::default());
        let (stop_phones, phones_stop_rx) = watch::channel(false);
        let (stop_generating, generating_stop_rx) = watch::channel(false);
        let (allowed, allowed_rx) =
            watch::channel(config.initial_calls.unwrap_or(config.max_calls));

        // Phones, registering round-robin across the nodes.
        let (phone_tx, mut phone_rx) = mpsc::unbounded_channel::<PhoneReport>();
        let mut phones = Vec::new();
        let mut agents = Vec::new();
        let mut index = 0usize;
        for tenant in cluster.tenants() {
            for agent in tenant.agents.iter().take(config.agents_per_tenant) {
                let node = &cluster.nodes[index % cluster.nodes.len()];
                index += 1;
                let phone_config = PhoneConfig {
                    tenant: tenant.id.clone(),
                    domain: tenant.domain.clone(),
                    extension: agent.extension.clone(),
                    password: agent.password.clone(),
                    registrar: sip_addr(node)?,
                    bind_ip: LOOPBACK,
                    ring_time: config.agent_ring,
                    talk_time: config.agent_talk.clone(),
                };
                phones.push(phone::spawn(
                    phone_config,
                    phone_tx.clone(),
                    phones_stop_rx.clone(),
                ));
                agents.push((tenant.id.clone(), agent.clone()));
            }
        }
        drop(phone_tx);
        let expected = agents.len();
        let registered = wait_registered(&mut phone_rx, expected, Duration::from_secs(20)).await;
        let mut stats = TrafficStats {
            phones_registered: registered.0,
            phone_register_failures: registered.1,
            ..Default::default()
        };
        if registered.0 < expected as u64 {
            tracing::warn!(
                registered = registered.0,
                expected,
                "not every phone registered"
            );
        }
        stats.per_node = cluster
            .nodes
            .iter()
            .map(|n| (n.id, SideCounters::default()))
            .collect();
        stats.per_province = cluster
            .tenants()
            .iter()
            .map(|t| (t.id.clone(), SideCounters::default()))
            .collect();
        let _ = stats_tx.send(stats.clone());

        let api = ApiClient::new(cluster)?;
        for (n, (tenant, agent)) in agents.iter().enumerate() {
            api.sign_in_ready(n, tenant, &agent.agent, &agent.extension)
                .await?;
        }

        // Forward phone reports into the collector.
        let forward_tx = report_tx.clone();
        tokio::spawn(async move {
            while let Some(report) = phone_rx.recv().await {
                if forward_tx.send(Report::Phone(report)).is_err() {
                    return;
                }
            }
        });
        let calls = CallLog::default();
        let collector = tokio::spawn(collect(report_rx, stats, stats_tx, calls.clone()));
        let generator = tokio::spawn(generate(
            cluster.clone(),
            config,
            report_tx,
            generating_stop_rx,
            phones_stop_rx,
            allowed_rx,
        ));
        Ok(Traffic {
            stats: stats_rx,
            calls,
            allowed,
            stop_generating,
            stop_phones,
            generator,
            phones,
            collector,
        })
    }

    /// The latest counters.
    pub fn stats(&self) -> TrafficStats {
        self.stats.borrow().clone()
    }

    /// The per-call records; the handle stays valid after [`Traffic::finish`].
    #[allow(dead_code)] // Drills (issue 3) read it; the demo prints only the counters.
    pub fn call_log(&self) -> CallLog {
        self.calls.clone()
    }

    /// Whether the generator has stopped placing calls (duration or `max_calls` reached).
    #[allow(dead_code)] // Drills (issue 3) poll it; the demo only stops generation.
    pub fn generating(&self) -> bool {
        !self.generator.is_finished()
    }

    /// Lets the generator place `more` calls beyond those allowed so far (see
    /// `TrafficConfig::initial_calls`).
    pub fn allow_more(&self, more: usize) {
        self.allowed.send_modify(|n| *n = n.saturating_add(more));
    }

    pub fn stop_generating(&self) {
        let _ = self.stop_generating.send(true);
    }

    /// Stops placing calls, waits up to `grace` for calls in progress to end (then tells the
    /// remaining callers to hang up and waits a little more), stops the phones, and returns
    /// the final counters.
    pub async fn finish(mut self, grace: Duration) -> TrafficStats {
        self.stop_generating();
        let deadline = Instant::now() + grace;
        loop {
            if self.generator.is_finished() && self.stats.borrow().in_progress() == 0 {
                break;
            }
            if Instant::now() >= deadline {
                // Tell the callers (they watch the same signal) to hang up now.
                let _ = self.stop_phones.send(true);
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), self.stats.changed()).await;
        }
        let _ = self.stop_phones.send(true);
        let hard = Instant::now() + Duration::from_secs(10);
        while self.stats.borrow().in_progress() > 0 && Instant::now() < hard {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.stats.changed()).await;
        }
        for phone in self.phones.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(6), phone).await;
        }
        self.generator.abort();
        let stats = self.stats.borrow().clone();
        self.collector.abort();
        // Takeovers are rare and worth a line each (a demo with chaos, a drill's log).
        for record in self.calls.records().iter().filter(|r| r.refreshed) {
            tracing::info!(
                seq = record.seq,
                caller = %record.caller,
                sip_call_id = %record.sip_call_id,
                cluster_call = ?record.agent_legs.first().and_then(|l| l.cluster_call.as_deref()),
                media_gap_ms = record.media_gap_ms,
                both_ways_after_refresh = ?record.both_ways_after_refresh,
                "call taken over by another node"
            );
        }
        stats
    }
}

async fn wait_registered(
    rx: &mut mpsc::UnboundedReceiver<PhoneReport>,
    expected: usize,
    limit: Duration,
) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut registered = std::collections::BTreeSet::new();
    let mut failures = 0u64;
    while registered.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(report)) => match report.event {
                PhoneEvent::Registered => {
                    registered.insert((report.tenant, report.extension));
                }
                PhoneEvent::RegisterFailed { status } => {
                    failures += 1;
                    tracing::warn!(status, tenant = %report.tenant, "phone registration refused");
                }
                _ => {}
            },
            Ok(None) | Err(_) => break,
        }
    }
    (registered.len() as u64, failures)
}

async fn collect(
    mut rx: mpsc::UnboundedReceiver<Report>,
    mut stats: TrafficStats,
    tx: watch::Sender<TrafficStats>,
    calls: CallLog,
) {
    while let Some(report) = rx.recv().await {
        calls.record(&report);
        apply(&mut stats, report);
        let _ = tx.send(stats.clone());
    }
}

fn apply(stats: &mut TrafficStats, report: Report) {
    match report {
        Report::Started { node, province, .. } => {
            for side in [
                stats.per_node.entry(node).or_default(),
                stats.per_province.entry(province).or_default(),
            ] {
                side.started += 1;
                side.in_progress += 1;
            }
        }
        Report::Caller {
            node,
            province,
            event,
            ..
        } => {
            if let CallerEvent::Ended { rtp_in, media, .. } = &event {
                stats.caller_rtp_in += rtp_in;
                stats.refreshed_caller_legs += u64::from(media.refreshed());
                stats.max_media_gap_ms = stats.max_media_gap_ms.max(media.max_gap_ms);
            }
            if let CallerEvent::Failed { status, .. } = &event {
                *stats.failures_by_status.entry(*status).or_default() += 1;
            }
            for side in [
                stats.per_node.entry(node).or_default(),
                stats.per_province.entry(province.clone()).or_default(),
            ] {
                match &event {
                    CallerEvent::Answered { .. } => side.answered += 1,
                    CallerEvent::Refreshed { .. } => {}
                    CallerEvent::Ended { .. } => {
                        side.ended += 1;
                        side.in_progress = side.in_progress.saturating_sub(1);
                    }
                    CallerEvent::Failed { .. } => {
                        side.failed += 1;
                        side.in_progress = side.in_progress.saturating_sub(1);
                    }
                }
            }
        }
        Report::Phone(report) => match report.event {
            PhoneEvent::Answered { .. } => stats.agent_answers += 1,
            PhoneEvent::Ended {
                rtp_in,
                hung_up_by_me,
                media,
                ..
            } => {
                stats.agent_rtp_in += rtp_in;
                stats.refreshed_agent_legs += u64::from(media.refreshed());
                stats.max_media_gap_ms = stats.max_media_gap_ms.max(media.max_gap_ms);
                if hung_up_by_me {
                    stats.agent_hangups += 1;
                }
            }
            PhoneEvent::Registered => {}
            PhoneEvent::RegisterFailed { .. } => stats.phone_register_failures += 1,
            PhoneEvent::Ringing { .. } | PhoneEvent::Refreshed { .. } => {}
        },
    }
}

/// Places calls with exponential inter-arrival times until the duration, `max_calls` or stop.
///
/// Callers keep their planned stay when generation stops; `cut_short` (the phones' stop
/// signal, sent when `finish` runs out of grace) makes them hang up at once.
/// The nodes that failed their last health checks (polled every 250 ms, 300 ms timeout; two
/// misses in a row mark a node down, one answer brings it back), as a carrier's SBC keeps
/// track of its destinations. Stops with the generator (when the receiver is dropped).
fn watch_nodes(cluster: &ClusterInfo) -> watch::Receiver<HashSet<u64>> {
    let (tx, rx) = watch::channel(HashSet::new());
    let nodes: Vec<(u64, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, format!("{}/health", n.api.trim_end_matches('/'))))
        .collect();
    tokio::spawn(async move {
        let Ok(http) = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
        else {
            return;
        };
        let mut misses: BTreeMap<u64, u32> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while !tx.is_closed() {
            tick.tick().await;
            for (id, url) in &nodes {
                let ok = http.get(url).send().await.is_ok();
                let m = misses.entry(*id).or_default();
                *m = if ok { 0 } else { *m + 1 };
            }
            let down: HashSet<u64> = misses
                .iter()
                .filter(|(_, m)| **m >= 2)
                .map(|(id, _)| *id)
                .collect();
            tx.send_if_modified(|d| {
                let changed = *d != down;
                *d = down.clone();
                changed
            });
        }
    });
    rx
}

async fn generate(
    cluster: ClusterInfo,
    config: TrafficConfig,
    reports: mpsc::UnboundedSender<Report>,
    stop: watch::Receiver<bool>,
    cut_short: watch::Receiver<bool>,
    mut allowed: watch::Receiver<usize>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let started = tokio::time::Instant::now();
    let end = started + config.duration;
    let provinces: Vec<(String, Vec<String>, String)> = cluster
        .tenants()
        .iter()
        .map(|t| (t.id.clone(), t.landing_codes.clone(), t.access_code.clone()))
        .filter(|(_, codes, _)| !codes.is_empty())
        .collect();
    if provinces.is_empty() {
        tracing::warn!("no province has a landing code; no calls placed");
        return;
    }
    let mut next_at = started;
    let down = watch_nodes(&cluster);
    // Caller numbers are how a call's two legs are paired (see `CallRecord`): never reuse one.
    let mut used_callers: HashSet<String> = HashSet::new();
    for n in 0..config.max_calls {
        // Held back until the driver allows more calls (the arrival clock restarts then).
        if n >= *allowed.borrow() {
            let mut wait_stop = stop.clone();
            tokio::select! {
                _ = allowed.wait_for(|a| n < *a) => {}
                _ = wait_stop.changed() => return,
            }
            next_at = next_at.max(tokio::time::Instant::now());
        }
        // Poisson arrivals: exponential gaps with mean 1/rate.
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        next_at += Duration::from_secs_f64(-u.ln() / config.rate_cps);
        if next_at >= end || *stop.borrow() {
            return;
        }
        let mut wait_stop = stop.clone();
        tokio::select! {
            () = tokio::time::sleep_until(next_at) => {}
            _ = wait_stop.changed() => return,
        }
        // Like a carrier's SBC with OPTIONS pings, skip nodes that stopped answering.
        let skip = down.borrow().clone();
        let node = (0..cluster.nodes.len())
            .map(|k| &cluster.nodes[(n + k) % cluster.nodes.len()])
            .find(|node| !skip.contains(&node.id))
            .unwrap_or(&cluster.nodes[n % cluster.nodes.len()]);
        let (province, codes, access) = provinces
            .choose(&mut rng)
            .expect("provinces is not empty")
            .clone();
        let landing = codes.choose(&mut rng).expect("codes is not empty").clone();
        let stay = phone::random_in(&config.caller_stay);
        let mut caller = format!("139{:08}", rng.gen_range(0..100_000_000u32));
        for _ in 0..64 {
            if used_callers.insert(caller.clone()) {
                break;
            }
            caller = format!("139{:08}", rng.gen_range(0..100_000_000u32));
        }
        let plan = CallPlan {
            node: match sip_addr(node) {
                Ok(addr) => addr,
                Err(_) => continue,
            },
            bind_ip: LOOPBACK,
            caller: caller.clone(),
            landing_code: landing,
            access_code: access,
            digit: MENU_KEYS.choose(&mut rng).copied(),
            digit_delay: config.digit_delay,
            stay,
            limit: config.call_limit,
        };
        let node_id = node.id;
        let seq = n as u64;
        let _ = reports.send(Report::Started {
            seq,
            node: node_id,
            province: province.clone(),
            caller,
        });
        let tx = reports.clone();
        let call_stop = cut_short.clone();
        tokio::spawn(async move {
            let report_tx = tx.clone();
            let (node_for_report, province_for_report) = (node_id, province.clone());
            let result = caller::run_call(
                plan,
                move |event| {
                    let _ = report_tx.send(Report::Caller {
                        seq,
                        node: node_for_report,
                        province: province_for_report.clone(),
                        event,
                    });
                },
                call_stop,
            )
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "synthetic call could not be placed");
                let event = CallerEvent::Failed {
                    call: String::new(),
                    status: 0,
                };
                let _ = tx.send(Report::Caller {
                    seq,
                    node: node_id,
                    province,
                    event,
                });
            }
        });
    }
}

/// The REST calls the traffic needs, spread over the nodes.
pub struct ApiClient {
    http: reqwest::Client,
    token: String,
    bases: Vec<String>,
}

impl ApiClient {
    pub fn new(cluster: &ClusterInfo) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let bases = cluster
            .nodes
            .iter()
            .map(|n| n.api.trim_end_matches('/').to_string())
            .collect();
        Ok(ApiClient {
            http,
            token: cluster.token.clone(),
            bases,
        })
    }

    fn base(&self, n: usize) -> &str {
        &self.bases[n % self.bases.len()]
    }

    /// POST with the bearer token; retried a few times on other nodes (a node may still be
    /// settling right after `cluster up`).
    pub async fn post(&self, n: usize, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        match self.post_or_conflict(n, path, body).await? {
            None => Ok(()),
            Some(conflict) => Err(anyhow::anyhow!("POST {path}: 409 Conflict {conflict}")),
        }
    }

    /// As `post`, but a 409 (the request conflicts with the resource's state, which no retry
    /// on another node changes) is returned at once as `Some(body)`.
    async fn post_or_conflict(
        &self,
        n: usize,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<Option<String>> {
        let mut last = None;
        for attempt in 0..6 {
            let url = format!("{}{path}", self.base(n + attempt));
            match self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => return Ok(None),
                Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {
                    return Ok(Some(response.text().await.unwrap_or_default()));
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    last = Some(anyhow::anyhow!("POST {url}: {status} {text}"));
                }
                Err(error) => last = Some(anyhow::anyhow!("POST {url}: {error}")),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("POST {path} failed")))
    }

    /// GET JSON from any node, trying them in turn starting at `n`.
    pub async fn get(&self, n: usize, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut last = None;
        for attempt in 0..self.bases.len() {
            let url = format!("{}{path}", self.base(n + attempt));
            match self.http.get(&url).bearer_auth(&self.token).send().await {
                Ok(response) if response.status().is_success() => {
                    return Ok(response.json().await?)
                }
                Ok(response) => last = Some(anyhow::anyhow!("GET {url}: {}", response.status())),
                Err(error) => last = Some(anyhow::anyhow!("GET {url}: {error}")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("GET {path}: no node")))
    }

    pub async fn sign_in_ready(
        &self,
        n: usize,
        tenant: &str,
        agent: &str,
        extension: &str,
    ) -> anyhow::Result<()> {
        let base = format!("/api/v1/tenants/{tenant}/agents/{agent}");
        let sign_in_path = format!("{base}/sign-in");
        let sign_in = || {
            self.post_or_conflict(
                n,
                &sign_in_path,
                serde_json::json!({ "extension": extension }),
            )
        };
        let context = || format!("signing in agent {agent} of {tenant}");
        if let Some(conflict) = sign_in().await.with_context(context)? {
            // Left signed in by an earlier run (a drill that was interrupted, or one before a
            // DR takeover): sign out, then in again at our phone.
            tracing::info!(agent, tenant, %conflict, "agent already signed in: signing out first");
            self.post(n, &format!("{base}/sign-out"), serde_json::json!({}))
                .await
                .with_context(context)?;
            if let Some(conflict) = sign_in().await.with_context(context)? {
                anyhow::bail!("{}: 409 Conflict {conflict}", context());
            }
        }
        self.post(n, &format!("{base}/ready"), serde_json::json!({}))
            .await
            .with_context(|| format!("making agent {agent} of {tenant} ready"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_json_parses_with_and_without_optional_fields() {
        let text = r#"{"token":"t0123456789abcdef","nodes":[{"id":1,"site":"a","sip":"127.0.0.11:5060","api":"http://127.0.0.11:8000","raft":"x"}],
            "sample":{"tenants":[{"id":"gd","domain":"gd.callgrid.local","agents":[{"agent":"1001","extension":"1001","password":"p"}]}]}}"#;
        let info: ClusterInfo = serde_json::from_str(text).expect("parses");
        assert_eq!(info.nodes[0].sip, "127.0.0.11:5060");
        let gd = &info.tenants()[0];
        assert!(
            gd.landing_codes.is_empty(),
            "the minimal format of issue 2 still parses"
        );
        let full = text.replace(
            r#""agents":"#,
            r#""landing_codes":["020","0755"],"access_code":"95598","agents":"#,
        );
        let info: ClusterInfo = serde_json::from_str(&full).expect("parses");
        assert_eq!(
            info.tenants()[0].landing_codes,
            vec!["020".to_string(), "0755".to_string()]
        );
        assert_eq!(info.tenants()[0].access_code, "95598");
    }

    fn started(seq: u64, caller: &str) -> Report {
        Report::Started {
            seq,
            node: 1,
            province: "gd".into(),
            caller: caller.into(),
        }
    }

    fn caller_event(seq: u64, event: CallerEvent) -> Report {
        Report::Caller {
            seq,
            node: 1,
            province: "gd".into(),
            event,
        }
    }

    fn media(gap: u64, refreshes: u32, after: u64) -> MediaReport {
        MediaReport {
            rtp_in: 100,
            rtp_out: 100,
            max_gap_ms: gap,
            refreshes,
            last_refresh_unix_ms: (refreshes > 0).then_some(1_700_000_000_000),
            rtp_in_before_refresh: if refreshes > 0 { 100 - after } else { 0 },
            rtp_in_after_refresh: after,
            rtp_out_after_refresh: after,
            refresh_gap_ms: (refreshes > 0).then_some(gap),
            jitter_us: 0,
        }
    }

    fn agent_ended(caller: &str, media: MediaReport) -> Report {
        Report::Phone(PhoneReport {
            tenant: "gd".into(),
            extension: "1001".into(),
            event: PhoneEvent::Ended {
                call: format!("leg-{caller}"),
                talk_ms: 2_000,
                rtp_in: media.rtp_in,
                rtp_out: media.rtp_out,
                hung_up_by_me: false,
                caller: caller.into(),
                cluster_call: Some(format!("cluster-{caller}")),
                media,
            },
        })
    }

    #[test]
    fn counters_follow_a_call() {
        let mut stats = TrafficStats::default();
        apply(&mut stats, started(0, "13900000001"));
        assert_eq!(stats.in_progress(), 1);
        apply(
            &mut stats,
            caller_event(
                0,
                CallerEvent::Answered {
                    call: "c".into(),
                    setup_ms: 5,
                },
            ),
        );
        apply(
            &mut stats,
            caller_event(0, CallerEvent::Refreshed { call: "c".into() }),
        );
        let ended = CallerEvent::Ended {
            call: "c".into(),
            duration_ms: 10,
            rtp_in: 7,
            rtp_out: 8,
            by_me: true,
            media: media(340, 1, 50),
        };
        apply(&mut stats, caller_event(0, ended));
        assert_eq!(stats.in_progress(), 0);
        assert_eq!(stats.per_province["gd"].answered, 1);
        assert_eq!(stats.caller_rtp_in, 7);
        assert_eq!(stats.refreshed_caller_legs, 1);
        assert_eq!(stats.max_media_gap_ms, 340);
        apply(&mut stats, agent_ended("13900000001", media(420, 1, 60)));
        assert_eq!(stats.refreshed_agent_legs, 1);
        assert_eq!(stats.max_media_gap_ms, 420);
    }

    #[test]
    fn call_log_pairs_the_caller_with_its_agent_leg() {
        let log = CallLog::default();
        let reports = [
            started(0, "13900000001"),
            started(1, "13900000002"),
            started(2, "13900000003"),
            caller_event(
                0,
                CallerEvent::Answered {
                    call: "sip-0".into(),
                    setup_ms: 12,
                },
            ),
            caller_event(
                0,
                CallerEvent::Ended {
                    call: "sip-0".into(),
                    duration_ms: 3_000,
                    rtp_in: 100,
                    rtp_out: 100,
                    by_me: true,
                    media: media(340, 1, 40),
                },
            ),
            agent_ended("13900000001", media(380, 1, 30)),
            // Call 1 was taken over, but the agent got no audio afterwards.
            caller_event(
                1,
                CallerEvent::Ended {
                    call: "sip-1".into(),
                    duration_ms: 3_000,
                    rtp_in: 100,
                    rtp_out: 100,
                    by_me: false,
                    media: media(300, 1, 40),
                },
            ),
            agent_ended("13900000002", media(2_500, 1, 0)),
            caller_event(
                2,
                CallerEvent::Failed {
                    call: "sip-2".into(),
                    status: 503,
                },
            ),
            // A leg for a caller the traffic never placed.
            agent_ended("13800000000", media(20, 0, 0)),
        ];
        for report in &reports {
            log.record(report);
        }
        let records = log.records();
        assert_eq!(records.len(), 3);
        let first = &records[0];
        assert_eq!(first.sip_call_id, "sip-0");
        assert_eq!(first.setup_ms, Some(12));
        assert!(first.ended && first.hung_up_by_caller);
        assert_eq!(first.agent_legs.len(), 1);
        assert_eq!(
            first.agent_legs[0].cluster_call.as_deref(),
            Some("cluster-13900000001")
        );
        assert_eq!(first.media_gap_ms, 380);
        assert!(first.refreshed);
        assert_eq!(first.both_ways_after_refresh, Some(true));
        let second = &records[1];
        assert_eq!(second.media_gap_ms, 2_500);
        assert_eq!(second.both_ways_after_refresh, Some(false));
        let third = &records[2];
        assert_eq!(third.failed_status, Some(503));
        assert!(!third.refreshed && third.agent_legs.is_empty());
        assert_eq!(third.both_ways_after_refresh, None);
        assert_eq!(log.agent_legs().len(), 3);
        // The records serialise for drill reports.
        let json = serde_json::to_value(&records).expect("serialises");
        assert_eq!(json[0]["media_gap_ms"], 380);
        assert_eq!(json[0]["refreshed"], true);
    }

    #[test]
    fn an_ambiguous_caller_number_pairs_nothing() {
        let calls = vec![
            CallRecord {
                seq: 0,
                caller: "139".into(),
                ..Default::default()
            },
            CallRecord {
                seq: 1,
                caller: "139".into(),
                ..Default::default()
            },
        ];
        let leg = AgentLegRecord {
            caller: "139".into(),
            ..Default::default()
        };
        let joined = join_legs(calls, &[leg]);
        assert!(joined.iter().all(|c| c.agent_legs.is_empty()));
    }
}
