//! The bench's own virtual center, added to a sample cluster: tenant `bench` (landing code
//! 0999), access code 95598 straight to queue `q` (no IVR, no wrap-up), and N agents with
//! extensions, so a bench measures call handling rather than the sample's 6 s of IVR.
//! Setting it up again is idempotent (create, else update); passwords are derived from the
//! agent number, so a second run's phones register with the same credentials.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use rand::SeedableRng;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use model::{
    AccessCode, Agent, AgentRole, Command, ConfigItem, Entry, Extension, Prompt, Queue, Tenant,
};

use crate::traffic::phone::{self, PhoneConfig, PhoneEvent, PhoneReport};
use crate::traffic::{sip_addr, ClusterInfo, LOOPBACK};

pub const TENANT: &str = "bench";
pub const DOMAIN: &str = "bench.callgrid.local";
pub const LANDING: &str = "0999";
pub const ACCESS: &str = "95598";
pub const QUEUE: &str = "q";
/// A queue nobody serves, reached by its own access code: calls there are answered and
/// wait with music (or in silence, offered `a=inactive`) until the carrier hangs up.
pub const HOLD_ACCESS: &str = "95599";
pub const HOLD_QUEUE: &str = "hold";
/// Agents are numbered from here (agent id = extension = number).
const FIRST_AGENT: usize = 20_001;
/// Phones started per second.
const REGISTER_PACE: u32 = 250;
/// Requests in flight while setting up.
const SETUP_CONCURRENCY: usize = 32;

/// The number a carrier dials to reach the bench queue.
pub fn dialled() -> String {
    format!("{LANDING}{ACCESS}")
}

/// The number a carrier dials to be held in the queue nobody serves.
pub fn dialled_hold() -> String {
    format!("{LANDING}{HOLD_ACCESS}")
}

pub fn agent_number(n: usize) -> String {
    (FIRST_AGENT + n).to_string()
}

pub fn password(n: usize) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbe4c_0000 + n as u64);
    model::sample::generate_password(&mut rng)
}

/// The REST client of a bench: bearer token, the nodes' API bases.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    token: String,
    pub bases: Vec<String>,
}

impl Api {
    pub fn new(cluster: &ClusterInfo) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Api {
            http,
            token: cluster.token.clone(),
            bases: cluster
                .nodes
                .iter()
                .map(|n| n.api.trim_end_matches('/').to_string())
                .collect(),
        })
    }

    pub fn base(&self, n: usize) -> &str {
        &self.bases[n % self.bases.len()]
    }

    /// Node `n`'s `/health` (no token needed), or null when it does not answer.
    pub async fn health(&self, n: usize) -> Value {
        match self
            .http
            .get(format!("{}/health", self.base(n)))
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// POST JSON to node `n`; the status and the body (JSON, or null).
    pub async fn post(&self, n: usize, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base(n));
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Applies a configuration item: create, or update when it exists.
    async fn put_item(&self, n: usize, item: ConfigItem) -> anyhow::Result<()> {
        let create = serde_json::to_value(Command::Create { item: item.clone() })?;
        let (status, outcome) = self.post(n, "/api/v1/commands", &create).await?;
        let code = outcome["error"]["code"].as_str().unwrap_or("");
        match (status, code) {
            (200, "") => Ok(()),
            (200, "already_exists") => {
                let update = serde_json::to_value(Command::Update { item })?;
                let (status, outcome) = self.post(n, "/api/v1/commands", &update).await?;
                if status != 200 || !outcome["error"].is_null() {
                    bail!("updating a bench item: {status} {outcome}");
                }
                Ok(())
            }
            _ => bail!("creating a bench item: {status} {outcome}"),
        }
    }
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("bench ids are valid")
}

fn tenant(access: bool) -> Tenant {
    Tenant {
        id: id(TENANT),
        name: "Bench center".into(),
        domain: DOMAIN.into(),
        landing_codes: vec![LANDING.into()],
        access_codes: if access {
            vec![
                AccessCode {
                    code: ACCESS.into(),
                    entry: Entry::Queue(id(QUEUE)),
                },
                AccessCode {
                    code: HOLD_ACCESS.into(),
                    entry: Entry::Queue(id(HOLD_QUEUE)),
                },
            ]
        } else {
            vec![]
        },
        routing: Vec::new(),
    }
}

fn queue(queue: &str) -> Queue {
    Queue {
        music_prompt: Some(id("music")),
        ..Queue::new(
            id(TENANT),
            id(queue),
            format!("Bench queue {queue}"),
            600_000,
            15_000,
            0,
        )
    }
}

/// Creates (or updates) the bench tenant, its queue and `agents` agents with extensions.
pub async fn ensure_tenant(api: &Api, agents: usize) -> anyhow::Result<()> {
    api.put_item(0, ConfigItem::Tenant(tenant(false))).await?;
    api.put_item(
        0,
        ConfigItem::Prompt(Prompt {
            tenant: id(TENANT),
            id: id("music"),
            file: "builtin:music".into(),
        }),
    )
    .await?;
    api.put_item(0, ConfigItem::Queue(Box::new(queue(QUEUE))))
        .await?;
    api.put_item(0, ConfigItem::Queue(Box::new(queue(HOLD_QUEUE))))
        .await?;
    api.put_item(0, ConfigItem::Tenant(tenant(true))).await?;
    let results: Vec<anyhow::Result<()>> = stream::iter(0..agents)
        .map(|n| async move {
            let number = agent_number(n);
            api.put_item(
                n,
                ConfigItem::Agent(Agent {
                    tenant: id(TENANT),
                    id: id(&number),
                    name: format!("Bench agent {number}"),
                    skills: vec![id(QUEUE)],
                    role: AgentRole::Agent,
                    takes_calls: None,
                    levels: Default::default(),
                    tags: Vec::new(),
                    group: None,
                    hotline: None,
                    permissions: None,
                }),
            )
            .await?;
            let extension = Extension::with_password(id(TENANT), id(&number), &password(n), DOMAIN)
                .map_err(|e| anyhow::anyhow!("bench extension {number}: {e}"))?;
            api.put_item(n, ConfigItem::Extension(extension)).await
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// Signs agent `n` in at its extension and makes it ready; one left signed in by an earlier
/// run is signed out first.
pub async fn sign_in_ready(api: &Api, n: usize) -> anyhow::Result<()> {
    let number = agent_number(n);
    let base = format!("/api/v1/tenants/{TENANT}/agents/{number}");
    let body = serde_json::json!({ "extension": number });
    let (status, answer) = api.post(n, &format!("{base}/sign-in"), &body).await?;
    if status == 409 {
        api.post(n, &format!("{base}/sign-out"), &Value::Null)
            .await?;
        let (status, answer) = api.post(n, &format!("{base}/sign-in"), &body).await?;
        if status != 200 {
            bail!("signing in bench agent {number}: {status} {answer}");
        }
    } else if status != 200 {
        bail!("signing in bench agent {number}: {status} {answer}");
    }
    let (status, answer) = api.post(n, &format!("{base}/ready"), &Value::Null).await?;
    if status != 200 {
        bail!("making bench agent {number} ready: {status} {answer}");
    }
    Ok(())
}

/// Signs every bench agent out (the end of a run).
pub async fn sign_out_all(api: &Api, agents: usize) {
    stream::iter(0..agents)
        .for_each_concurrent(SETUP_CONCURRENCY, |n| async move {
            let path = format!(
                "/api/v1/tenants/{TENANT}/agents/{}/sign-out",
                agent_number(n)
            );
            let _ = api.post(n, &path, &Value::Null).await;
        })
        .await;
}

/// The bench agents' phones: registered round-robin over the nodes, answering at once.
pub struct Phones {
    pub reports: mpsc::UnboundedReceiver<PhoneReport>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Phones {
    /// Starts `agents` phones, waits until all are registered, then signs the agents in and
    /// ready. Each agent talks for `talk` and hangs up.
    pub async fn start(
        cluster: &ClusterInfo,
        api: &Api,
        agents: usize,
        talk: Duration,
    ) -> anyhow::Result<Phones> {
        let nodes: Vec<SocketAddr> = cluster
            .nodes
            .iter()
            .map(sip_addr)
            .collect::<anyhow::Result<_>>()?;
        let (report_tx, mut reports) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(agents);
        let mut registered = std::collections::HashSet::new();
        let mut refused = std::collections::BTreeMap::new();
        // A refused REGISTER is tried again by the phone (5 s later); only the deadline
        // fails the run.
        let note = |registered: &mut std::collections::HashSet<String>,
                    refused: &mut std::collections::BTreeMap<String, u16>,
                    report: PhoneReport| match report.event {
            PhoneEvent::Registered => {
                refused.remove(&report.extension);
                registered.insert(report.extension);
            }
            PhoneEvent::RegisterFailed { status } => {
                refused.insert(report.extension, status);
            }
            _ => {}
        };
        for n in 0..agents {
            let config = PhoneConfig {
                tenant: TENANT.into(),
                domain: DOMAIN.into(),
                extension: agent_number(n),
                password: password(n),
                registrar: nodes[n % nodes.len()],
                bind_ip: LOOPBACK,
                ring_time: Duration::ZERO,
                talk_time: talk..talk + Duration::from_millis(1),
            };
            tasks.push(phone::spawn(config, report_tx.clone(), shutdown_rx.clone()));
            // Phones come up at REGISTER_PACE a second, as a floor of phones would, not
            // as one burst of digest challenges.
            if n % 50 == 49 {
                tokio::time::sleep(Duration::from_secs(50) / REGISTER_PACE).await;
                while let Ok(report) = reports.try_recv() {
                    note(&mut registered, &mut refused, report);
                }
            }
        }
        // A REGISTER that went unanswered is retried by the phone after 40 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90 + agents as u64 / 20);
        while registered.len() < agents {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(report)) => note(&mut registered, &mut refused, report),
                Ok(None) | Err(_) => {
                    let missing: Vec<String> = (0..agents)
                        .map(agent_number)
                        .filter(|e| !registered.contains(e))
                        .take(10)
                        .collect();
                    let mut died = Vec::new();
                    for task in tasks.iter_mut().filter(|t| t.is_finished()).take(3) {
                        if let Ok(Err(e)) = task.await {
                            died.push(format!("{e:#}"));
                        }
                    }
                    bail!(
                        "only {} of {agents} bench phones registered in time (missing {missing:?}; \
                         refused: {refused:?}; phone errors: {died:?})",
                        registered.len()
                    )
                }
            }
        }
        let signed: Vec<anyhow::Result<()>> = stream::iter(0..agents)
            .map(|n| sign_in_ready(api, n))
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
        signed.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(Phones {
            reports,
            shutdown,
            tasks,
        })
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
