//! Real-process test harness: a local three-node cluster started with `callgrid cluster up`,
//! its REST API, SIPp peers (scenarios in `tests/scenarios`), polling with deadlines, WAV checks.
//!
//! Tests never sleep for a fixed time: they poll for the event with [`wait_until`].

pub mod nodes;
pub mod probe;
pub mod verdict;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Serialises the tests of one binary: every cluster binds the same node addresses.
pub static CLUSTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `callgrid` binary: `CALLGRID_BIN`, else `$CARGO_TARGET_DIR/debug/callgrid`, else the workspace target.
pub fn callgrid_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CALLGRID_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("debug").join("callgrid");
    }
    workspace_dir()
        .join("target")
        .join("debug")
        .join("callgrid")
}

pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scenario file under `tests/scenarios`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `cond` every 200 ms until it returns `Some` or the deadline passes.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A free UDP+TCP port on 127.0.0.1 (even, with the next port free too, for RTP/RTCP pairs).
pub fn free_port() -> u16 {
    loop {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let p = s.local_addr().expect("addr").port();
        if p % 2 != 0 || p > 65000 {
            continue;
        }
        let ok = std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok();
        if ok {
            return p;
        }
    }
}

// ---------------------------------------------------------------- cluster

/// `DIR/cluster.json`: the one definition every tool shares.
pub use model::sample::{
    ClusterFile as ClusterInfo, ClusterNode as NodeInfo, SampleAgent, SampleInfo, SampleTenant,
};

/// A running local cluster; `Drop` runs `cluster down`.
pub struct ClusterGuard {
    pub dir: tempfile::TempDir,
    pub info: ClusterInfo,
    sample: bool,
}

impl ClusterGuard {
    pub fn up(sample: bool) -> Result<ClusterGuard> {
        let dir = tempfile::Builder::new()
            .prefix("callgrid-test-")
            .tempdir()?;
        let info = cluster_up(dir.path(), sample)?;
        Ok(ClusterGuard { dir, info, sample })
    }

    /// `cluster down` then `cluster up` on the same directory (same nodes, same data).
    pub fn restart(&mut self) -> Result<()> {
        cluster_down(self.dir.path())?;
        self.info = cluster_up(self.dir.path(), false)?;
        let _ = self.sample;
        Ok(())
    }

    pub fn api(&self, node_index: usize) -> Api {
        Api::new(&self.info.nodes[node_index].api, &self.info.token)
    }

    pub fn apis(&self) -> Vec<Api> {
        (0..self.info.nodes.len()).map(|i| self.api(i)).collect()
    }

    pub fn tenant(&self, id: &str) -> Result<SampleTenant> {
        let s = self
            .info
            .sample
            .as_ref()
            .ok_or_else(|| anyhow!("cluster.json has no sample"))?;
        s.tenants
            .iter()
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| anyhow!("no sample tenant {id}"))
    }

    /// SIP address ("127.0.0.11:5060") of the node at `node_index`.
    pub fn sip(&self, node_index: usize) -> String {
        self.info.nodes[node_index].sip.clone()
    }

    pub fn work(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if let Err(e) = cluster_down(self.dir.path()) {
            eprintln!("cluster down failed: {e:#}");
        }
    }
}

fn cluster_up(dir: &Path, sample: bool) -> Result<ClusterInfo> {
    let mut cmd = Command::new(callgrid_bin());
    cmd.args(["cluster", "up", "--dir"]).arg(dir);
    if sample {
        cmd.arg("--sample");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", callgrid_bin().display()))?;
    if !out.status.success() {
        bail!(
            "cluster up failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(dir.join("cluster.json")).context("reading cluster.json")?;
    serde_json::from_str(&text).context("parsing cluster.json")
}

fn cluster_down(dir: &Path) -> Result<()> {
    let out = Command::new(callgrid_bin())
        .args(["cluster", "down", "--dir"])
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "cluster down failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- API client

#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send(&self, rb: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let resp = rb
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| what.to_string())?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("{what}: HTTP {status}: {body}");
        }
        Ok(resp)
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let r = self
            .send(self.http.get(self.url(path)), &format!("GET {path}"))
            .await?;
        Ok(r.json().await?)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .send(
                self.http.post(self.url(path)).json(body),
                &format!("POST {path}"),
            )
            .await?;
        let text = r.text().await?;
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        })
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .send(
                self.http.put(self.url(path)).json(body),
                &format!("PUT {path}"),
            )
            .await?;
        let text = r.text().await?;
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        })
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(self.http.delete(self.url(path)), &format!("DELETE {path}"))
            .await?;
        Ok(())
    }

    pub async fn health(&self) -> Result<Value> {
        let r = self.http.get(self.url("/health")).send().await?;
        if !r.status().is_success() {
            bail!("/health: HTTP {}", r.status());
        }
        Ok(r.json().await?)
    }

    pub async fn sign_in(&self, tenant: &str, agent: &str, extension: &str) -> Result<Value> {
        self.post_json(
            &format!("/api/v1/tenants/{tenant}/agents/{agent}/sign-in"),
            &serde_json::json!({"extension": extension}),
        )
        .await
    }

    pub async fn ready(&self, tenant: &str, agent: &str) -> Result<Value> {
        self.post_json(
            &format!("/api/v1/tenants/{tenant}/agents/{agent}/ready"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn not_ready(&self, tenant: &str, agent: &str, reason: &str) -> Result<Value> {
        self.post_json(
            &format!("/api/v1/tenants/{tenant}/agents/{agent}/not-ready"),
            &serde_json::json!({"reason": reason}),
        )
        .await
    }

    pub async fn sign_out(&self, tenant: &str, agent: &str) -> Result<Value> {
        self.post_json(
            &format!("/api/v1/tenants/{tenant}/agents/{agent}/sign-out"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn get_agent(&self, tenant: &str, agent: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/tenants/{tenant}/agents/{agent}"))
            .await
    }

    pub async fn get_agents(&self, tenant: &str) -> Result<Vec<Value>> {
        Ok(as_array(
            self.get_json(&format!("/api/v1/tenants/{tenant}/agents"))
                .await?,
        ))
    }

    /// `query` is the raw query string, e.g. `tenant=gd&from=123`.
    pub async fn get_cdrs(&self, query: &str) -> Result<Vec<Value>> {
        Ok(as_array(
            self.get_json(&format!("/api/v1/cdrs?{query}")).await?,
        ))
    }

    pub async fn get_recording(&self, id: &str) -> Result<Vec<u8>> {
        let r = self
            .send(
                self.http.get(self.url(&format!("/api/v1/recordings/{id}"))),
                "GET recording",
            )
            .await?;
        Ok(r.bytes().await?.to_vec())
    }

    pub async fn get_queue(&self, tenant: &str, queue: &str) -> Result<Value> {
        self.get_json(&format!("/api/v1/tenants/{tenant}/queues/{queue}"))
            .await
    }

    pub async fn put_queue(&self, tenant: &str, queue: &str, body: &Value) -> Result<Value> {
        self.put_json(&format!("/api/v1/tenants/{tenant}/queues/{queue}"), body)
            .await
    }

    pub async fn get_queues(&self, tenant: &str) -> Result<Vec<Value>> {
        Ok(as_array(
            self.get_json(&format!("/api/v1/queues?tenant={tenant}"))
                .await?,
        ))
    }

    /// `ws://.../api/v1/events` URL of this node.
    pub fn events_url(&self) -> String {
        format!("{}/api/v1/events", self.base.replacen("http", "ws", 1))
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A JSON array, or the array under a common wrapper key ("items", "cdrs", "agents", "queues").
pub fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Object(mut o) => {
            for k in ["items", "cdrs", "agents", "queues", "data"] {
                if let Some(Value::Array(a)) = o.remove(k) {
                    return a;
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// String field (numbers rendered as strings).
pub fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Integer field (0 when absent).
pub fn n(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .or_else(|| v[key].as_u64().map(|x| x as i64))
        .or_else(|| v[key].as_str().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// Collects the JSON events of `/api/v1/events` in the background.
pub struct EventLog {
    pub events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    pub async fn connect(api: &Api) -> Result<EventLog> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = api.events_url().into_client_request()?;
        req.headers_mut()
            .insert("Authorization", format!("Bearer {}", api.token()).parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .context("connecting to /api/v1/events")?;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Ok(text) = msg.to_text() {
                    if let Ok(v) = serde_json::from_str::<Value>(text) {
                        sink.lock().expect("event log").push(v);
                    }
                }
            }
        });
        Ok(EventLog { events, task })
    }

    pub fn snapshot(&self) -> Vec<Value> {
        self.events.lock().expect("event log").clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- SIPp

/// A SIPp command line; `spawn` starts it in `workdir` (stat and error files go there).
#[derive(Clone, Debug)]
pub struct Sipp {
    pub scenario: PathBuf,
    pub workdir: PathBuf,
    pub name: String,
    pub port: u16,
    pub media_port: u16,
    pub remote: Option<String>,
    pub service: Option<String>,
    pub calls: Option<u32>,
    pub rate: Option<(f64, u32)>,
    pub limit: Option<u32>,
    pub inf: Option<PathBuf>,
    pub auth: Option<(String, String)>,
    pub keys: Vec<(String, String)>,
    pub sets: Vec<(String, String)>,
    pub timeout_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SippResult {
    pub exit_code: i32,
    pub successful: u64,
    pub failed: u64,
    /// The start of SIPp's error log, for assertion messages.
    pub errors: String,
}

pub struct SippRun {
    pub cmd: Sipp,
    child: std::process::Child,
}

impl Sipp {
    /// `name` names the run's files in `workdir`.
    pub fn new(scenario_name: &str, workdir: &Path, name: &str) -> Sipp {
        Sipp {
            scenario: scenario(scenario_name),
            workdir: workdir.to_path_buf(),
            name: name.to_string(),
            port: free_port(),
            media_port: free_port(),
            remote: None,
            service: None,
            calls: Some(1),
            rate: None,
            limit: None,
            inf: None,
            auth: None,
            keys: Vec::new(),
            sets: Vec::new(),
            timeout_s: 60,
        }
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    pub fn remote(mut self, r: &str) -> Self {
        self.remote = Some(r.to_string());
        self
    }
    pub fn service(mut self, s: &str) -> Self {
        self.service = Some(s.to_string());
        self
    }
    /// `-m`; `None` runs until [`SippRun::stop`].
    pub fn calls(mut self, m: Option<u32>) -> Self {
        self.calls = m;
        self
    }
    /// `-r calls -rp period_ms`.
    pub fn rate(mut self, calls: f64, period_ms: u32) -> Self {
        self.rate = Some((calls, period_ms));
        self
    }
    pub fn limit(mut self, l: u32) -> Self {
        self.limit = Some(l);
        self
    }
    pub fn inf(mut self, p: &Path) -> Self {
        self.inf = Some(p.to_path_buf());
        self
    }
    /// `-au user -ap password` (digest credentials for `[authentication]`).
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }
    pub fn key(mut self, k: &str, v: &str) -> Self {
        self.keys.push((k.to_string(), v.to_string()));
        self
    }
    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.sets.push((k.to_string(), v.to_string()));
        self
    }
    pub fn timeout(mut self, secs: u32) -> Self {
        self.timeout_s = secs;
        self
    }

    pub fn stat_file(&self) -> PathBuf {
        self.workdir.join(format!("{}_stat.csv", self.name))
    }
    pub fn error_file(&self) -> PathBuf {
        self.workdir.join(format!("{}_errors.log", self.name))
    }

    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-sf".into(),
            self.scenario.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-mp".into(),
            self.media_port.to_string(),
            "-nostdin".into(),
            "-trace_stat".into(),
            "-stf".into(),
            self.stat_file().display().to_string(),
            "-fd".into(),
            "1".into(),
            "-trace_err".into(),
            "-error_file".into(),
            self.error_file().display().to_string(),
            "-timeout".into(),
            format!("{}s", self.timeout_s),
            "-timeout_error".into(),
        ];
        // Opt-in message traces for diagnosing a peer: CALLGRID_SIPP_TRACE=DIR keeps every
        // SIPp run's messages in DIR/<name>.msg (the work dirs are temporary).
        if let Some(dir) = std::env::var_os("CALLGRID_SIPP_TRACE") {
            let file = std::path::Path::new(&dir).join(format!("{}-{}.msg", self.name, self.port));
            a.extend([
                "-trace_msg".into(),
                "-message_file".into(),
                file.display().to_string(),
            ]);
        }
        if let Some(m) = self.calls {
            a.extend(["-m".into(), m.to_string()]);
        }
        if let Some((r, rp)) = self.rate {
            a.extend(["-r".into(), r.to_string(), "-rp".into(), rp.to_string()]);
        }
        if let Some(l) = self.limit {
            a.extend(["-l".into(), l.to_string()]);
        }
        if let Some(s) = &self.service {
            a.extend(["-s".into(), s.clone()]);
        }
        if let Some(f) = &self.inf {
            a.extend(["-inf".into(), f.display().to_string()]);
        }
        if let Some((u, p)) = &self.auth {
            a.extend(["-au".into(), u.clone(), "-ap".into(), p.clone()]);
        }
        for (k, v) in &self.keys {
            a.extend(["-key".into(), k.clone(), v.clone()]);
        }
        for (k, v) in &self.sets {
            a.extend(["-set".into(), k.clone(), v.clone()]);
        }
        if let Some(r) = &self.remote {
            a.push(r.clone());
        }
        a
    }

    pub fn spawn(self) -> Result<SippRun> {
        std::fs::create_dir_all(&self.workdir)?;
        let out = std::fs::File::create(self.workdir.join(format!("{}_stdout.log", self.name)))?;
        let child = Command::new("sipp")
            .args(self.args())
            .current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning sipp (Debian package sip-tester)")?;
        Ok(SippRun { cmd: self, child })
    }

    /// Spawn and wait.
    pub async fn run(self, timeout: Duration) -> Result<SippResult> {
        self.spawn()?.wait(timeout).await
    }
}

impl SippRun {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Graceful stop (SIGUSR1: SIPp stops making calls, finishes and writes final statistics).
    pub fn stop(&self) {
        let _ = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the exit (killing it at the deadline) and reads the final statistics.
    pub async fn wait(mut self, timeout: Duration) -> Result<SippResult> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "sipp {} still running after {timeout:?}; errors: {}",
                    self.cmd.name,
                    self.errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (successful, failed) = parse_stat(&self.cmd.stat_file()).unwrap_or((0, 0));
        Ok(SippResult {
            exit_code: status.code().unwrap_or(-1),
            successful,
            failed,
            errors: self.errors(),
        })
    }

    /// The first 4 KB of the error log (for assertion messages).
    pub fn errors(&self) -> String {
        sipp_errors(&self.cmd)
    }
}

/// SIPp's error log without the routine "receive timeout ... jumping to label" entries (the
/// scenarios wait for BYE in slices), last 4 KB.
pub fn sipp_errors(cmd: &Sipp) -> String {
    let text = std::fs::read_to_string(cmd.error_file()).unwrap_or_default();
    // Entries are "YYYY-MM-DD\tTIME\tEPOCH: message", not always newline separated.
    let b = text.as_bytes();
    let is_start = |i: usize| {
        i + 11 <= b.len()
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 7] == b'-'
            && b[i + 10] == b'\t'
    };
    let mut starts: Vec<usize> = (0..b.len()).filter(|&i| is_start(i)).collect();
    starts.push(b.len());
    let mut out = String::new();
    for w in starts.windows(2) {
        let entry = &text[w[0]..w[1]];
        if !entry.contains("jumping to label") {
            out.push_str(entry.trim_end());
            out.push('\n');
        }
    }
    if out.len() > 4096 {
        let mut cut = out.len() - 4096;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
    }
    out
}

/// (SuccessfulCall(C), FailedCall(C)) from the last row of a SIPp `-trace_stat` file.
pub fn parse_stat(path: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| anyhow!("empty stat file"))?
        .split(';')
        .collect();
    let last: Vec<&str> = lines
        .next_back()
        .ok_or_else(|| anyhow!("no stat row"))?
        .split(';')
        .collect();
    let col = |name: &str| -> Result<u64> {
        let i = header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| anyhow!("no column {name}"))?;
        Ok(last.get(i).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
    };
    Ok((col("SuccessfulCall(C)")?, col("FailedCall(C)")?))
}

/// How an [`AgentPhone`] registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    /// `agent_register.xml`. SIPp 3.6.1 answers only an MD5 challenge and only the first
    /// WWW-Authenticate header, so it fails against a registrar that offers SHA-256 first
    /// (RFC 8760 order, as the node does).
    Sipp,
    /// The harness sends the REGISTER from the phone's port and answers the challenge of the
    /// given algorithm ("MD5" or "SHA-256") itself; SIPp then plays the phone on that port.
    Digest(&'static str),
}

/// An agent phone: a registration from `port` through `registrar`, then the UAS scenario
/// (`agent_phone.xml` or `agent_phone_hangup.xml`) on the same port, so the registered Contact
/// and the source address both reach it.
pub struct AgentPhone {
    pub run: SippRun,
    pub port: u16,
}

impl AgentPhone {
    /// `uas` is the UAS scenario; `calls` bounds it (`None`: until `SippRun::stop`).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        workdir: &Path,
        registrar: &str,
        domain: &str,
        agent: &SampleAgent,
        how: Register,
        uas: &str,
        calls: Option<u32>,
        talk_ms: Option<u32>,
    ) -> Result<AgentPhone> {
        let port = free_port();
        match how {
            Register::Sipp => {
                let csv = workdir.join(format!("agent_{}_{port}.csv", agent.extension));
                std::fs::write(
                    &csv,
                    format!(
                        "SEQUENTIAL\n{};{};{};\n",
                        agent.extension, agent.password, domain
                    ),
                )?;
                let reg = Sipp::new(
                    "agent_register.xml",
                    workdir,
                    &format!("register_{}_{port}", agent.extension),
                )
                .port(port)
                .remote(registrar)
                .inf(&csv)
                .auth(&agent.extension, &agent.password)
                .timeout(15);
                let r = reg.clone().run(Duration::from_secs(30)).await?;
                if r.exit_code != 0 {
                    bail!(
                        "REGISTER of {} via {registrar} failed: {r:?}: {}",
                        agent.extension,
                        sipp_errors(&reg)
                    );
                }
            }
            Register::Digest(alg) => {
                sip_register(
                    port,
                    registrar,
                    domain,
                    &agent.extension,
                    &agent.password,
                    alg,
                )
                .await?;
            }
        }
        let mut uas = Sipp::new(uas, workdir, &format!("phone_{}_{port}", agent.extension))
            .port(port)
            .calls(calls)
            .timeout(600);
        if let Some(t) = talk_ms {
            uas = uas.set("talk_ms", &t.to_string());
        }
        Ok(AgentPhone {
            run: uas.spawn()?,
            port,
        })
    }
}

/// Registers `agent`'s extension with its own digest credentials from 127.0.0.1:`port`
/// (Contact on that port), as [`AgentPhone::start`] does.
pub async fn register_agent(
    workdir: &Path,
    port: u16,
    registrar: &str,
    domain: &str,
    agent: &SampleAgent,
    how: Register,
) -> Result<()> {
    match how {
        Register::Sipp => {
            let csv = workdir.join(format!("agent_{}_{port}.csv", agent.extension));
            std::fs::write(
                &csv,
                format!(
                    "SEQUENTIAL\n{};{};{};\n",
                    agent.extension, agent.password, domain
                ),
            )?;
            let reg = Sipp::new(
                "agent_register.xml",
                workdir,
                &format!("register_{}_{port}", agent.extension),
            )
            .port(port)
            .remote(registrar)
            .inf(&csv)
            .auth(&agent.extension, &agent.password)
            .timeout(15);
            let r = reg.clone().run(Duration::from_secs(30)).await?;
            if r.exit_code != 0 {
                bail!(
                    "REGISTER of {} via {registrar} failed: {r:?}: {}",
                    agent.extension,
                    sipp_errors(&reg)
                );
            }
            Ok(())
        }
        Register::Digest(alg) => {
            sip_register(
                port,
                registrar,
                domain,
                &agent.extension,
                &agent.password,
                alg,
            )
            .await
        }
    }
}

/// Several agent phones in ONE SIPp UAS process (`agent_phone_failover.xml`): every agent's
/// extension is registered (each with its own digest credentials) with the same Contact port,
/// then SIPp serves that port. Media is the harness's [`probe::RtpProbe`]: `probe_csv` (from
/// [`probe::RtpProbe::csv`]) is SIPp's `-inf`, so the i-th call the process receives (whatever
/// the extension) answers with the i-th probe port (the file wraps around after its last line).
pub struct AgentPhones {
    pub run: SippRun,
    pub port: u16,
    pub extensions: Vec<String>,
}

impl AgentPhones {
    /// `calls` bounds the SIPp run (`-m`; `None`: until [`SippRun::stop`] or its 600 s
    /// timeout). `hangup_ms`: `Some(ms > 0)`: the phone hangs up ms after the (last) re-INVITE
    /// toward that re-INVITE's Contact; `None`: it waits for the node's BYE.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        workdir: &Path,
        registrar: &str,
        domain: &str,
        agents: &[SampleAgent],
        how: Register,
        probe_csv: &Path,
        calls: Option<u32>,
        hangup_ms: Option<u32>,
    ) -> Result<AgentPhones> {
        std::fs::create_dir_all(workdir)?;
        let port = free_port();
        for agent in agents {
            register_agent(workdir, port, registrar, domain, agent, how).await?;
        }
        let mut uas = Sipp::new(
            "agent_phone_failover.xml",
            workdir,
            &format!("phones_{port}"),
        )
        .port(port)
        .inf(probe_csv)
        .calls(calls)
        .timeout(600);
        if let Some(ms) = hangup_ms {
            uas = uas.set("hangup_ms", &ms.to_string());
        }
        Ok(AgentPhones {
            run: uas.spawn()?,
            port,
            extensions: agents.iter().map(|a| a.extension.clone()).collect(),
        })
    }
}

fn digest_hash(alg: &str, data: &str) -> String {
    use sha2::Digest as _;
    if alg.eq_ignore_ascii_case("SHA-256") {
        hex::encode(sha2::Sha256::digest(data.as_bytes()))
    } else {
        hex::encode(md5::Md5::digest(data.as_bytes()))
    }
}

fn auth_param(challenge: &str, name: &str) -> Option<String> {
    let i = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[i..];
    if let Some(r) = rest.strip_prefix('"') {
        r.find('"').map(|e| r[..e].to_string())
    } else {
        Some(
            rest.split([',', ' ', '\r'])
                .next()
                .unwrap_or("")
                .to_string(),
        )
    }
}

/// REGISTER `user@domain` from 127.0.0.1:`local_port` (Contact on that port) through
/// `registrar`, answering the digest challenge of algorithm `alg` (RFC 2617/8760, qop=auth).
pub async fn sip_register(
    local_port: u16,
    registrar: &str,
    domain: &str,
    user: &str,
    password: &str,
    alg: &str,
) -> Result<()> {
    let sock = tokio::net::UdpSocket::bind(("127.0.0.1", local_port)).await?;
    sock.connect(registrar).await?;
    let call_id = format!("reg-{user}-{local_port}-{}@127.0.0.1", now_ms());
    let uri = format!("sip:{domain}");
    let msg = |cseq: u32, auth: &str| {
        format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-{cseq}-{call_id_hash}-{user};rport\r\n\
             From: <sip:{user}@{domain}>;tag=r{local_port}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{local_port};transport=udp>\r\nExpires: 3600\r\n\
             Max-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n",
            // Unique per transaction: several users register from one port (AgentPhones).
            call_id_hash = local_port
        )
    };
    let exchange = |m: String| {
        let sock = &sock;
        async move {
            let mut buf = vec![0u8; 65536];
            for _ in 0..4 {
                sock.send(m.as_bytes()).await?;
                let deadline = tokio::time::Instant::now() + Duration::from_millis(1000);
                while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now())
                {
                    let Ok(r) = tokio::time::timeout(left, sock.recv(&mut buf)).await else {
                        break;
                    };
                    let text = String::from_utf8_lossy(&buf[..r?]).to_string();
                    let code: u16 = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    if code >= 200 {
                        return Ok::<String, anyhow::Error>(text);
                    }
                }
            }
            bail!("no final response to REGISTER from {registrar}")
        }
    };
    let first = exchange(msg(1, "")).await?;
    if first.starts_with("SIP/2.0 200") {
        return Ok(());
    }
    if !first.starts_with("SIP/2.0 401") && !first.starts_with("SIP/2.0 407") {
        bail!("REGISTER: unexpected reply: {first}");
    }
    let (hdr, resp_hdr) = if first.starts_with("SIP/2.0 401") {
        ("www-authenticate:", "Authorization")
    } else {
        ("proxy-authenticate:", "Proxy-Authorization")
    };
    let challenge = first
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(hdr))
        .find(|l| {
            auth_param(l, "algorithm")
                .map(|a| a.eq_ignore_ascii_case(alg))
                .unwrap_or(alg == "MD5")
        })
        .ok_or_else(|| anyhow!("no {alg} challenge in: {first}"))?
        .to_string();
    let realm = auth_param(&challenge, "realm").unwrap_or_default();
    let nonce = auth_param(&challenge, "nonce").unwrap_or_default();
    let opaque = auth_param(&challenge, "opaque");
    let qop = auth_param(&challenge, "qop");
    let ha1 = digest_hash(alg, &format!("{user}:{realm}:{password}"));
    let ha2 = digest_hash(alg, &format!("REGISTER:{uri}"));
    let cnonce = format!("{:x}", now_ms());
    let mut auth = format!("{resp_hdr}: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm={alg}");
    let response = if qop
        .as_deref()
        .map(|q| q.split(',').any(|x| x.trim() == "auth"))
        .unwrap_or(false)
    {
        auth.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cnonce}\""));
        digest_hash(alg, &format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"))
    } else {
        digest_hash(alg, &format!("{ha1}:{nonce}:{ha2}"))
    };
    auth.push_str(&format!(", response=\"{response}\""));
    if let Some(o) = opaque {
        auth.push_str(&format!(", opaque=\"{o}\""));
    }
    auth.push_str("\r\n");
    let second = exchange(msg(2, &auth)).await?;
    if !second.starts_with("SIP/2.0 200") {
        bail!("REGISTER {user}@{domain} ({alg}) via {registrar} refused: {second}");
    }
    Ok(())
}

// ---------------------------------------------------------------- WAV

#[derive(Debug, Clone)]
pub struct WavInfo {
    pub channels: u16,
    pub sample_rate: u32,
    pub bits: u16,
    pub duration_ms: u64,
    /// RMS per channel, over the whole file (full scale 32768).
    pub rms: Vec<f64>,
}

pub fn wav_info(bytes: &[u8]) -> Result<WavInfo> {
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).context("parsing WAV")?;
    let spec = r.spec();
    let ch = spec.channels as usize;
    let mut sum = vec![0f64; ch];
    let mut count = vec![0u64; ch];
    for (i, smp) in r.samples::<i16>().enumerate() {
        let v = smp? as f64;
        sum[i % ch] += v * v;
        count[i % ch] += 1;
    }
    let frames = count.first().copied().unwrap_or(0);
    Ok(WavInfo {
        channels: spec.channels,
        sample_rate: spec.sample_rate,
        bits: spec.bits_per_sample,
        duration_ms: frames * 1000 / spec.sample_rate.max(1) as u64,
        rms: sum
            .iter()
            .zip(&count)
            .map(|(s, c)| if *c == 0 { 0.0 } else { (s / *c as f64).sqrt() })
            .collect(),
    })
}

/// Waits for a SIPp run of one call to end successfully.
pub async fn succeeds(run: SippRun) -> Result<()> {
    let cmd = run.cmd.clone();
    let r = run.wait(Duration::from_secs(120)).await?;
    ensure!(
        r.exit_code == 0 && r.successful == 1,
        "{r:?}: {}",
        sipp_errors(&cmd)
    );
    Ok(())
}

/// `tenant`'s CDRs since `from` (from node `node`'s API), once every caller prefix has one.
pub async fn cdrs_for(
    c: &ClusterGuard,
    tenant: &str,
    node: usize,
    from: u64,
    prefixes: &[&str],
) -> Result<Vec<Value>> {
    let q = format!("tenant={tenant}&from={from}&to={}", now_ms() + 300_000);
    cdrs_when(&c.api(node), &q, 60, "the calls' CDRs", |cdrs| {
        prefixes.iter().all(|p| cdr_of(cdrs, p).is_some())
    })
    .await
}

/// The CDR of the caller whose number starts with `prefix`.
pub fn cdr_of<'a>(cdrs: &'a [Value], prefix: &str) -> Option<&'a Value> {
    cdrs.iter().find(|c| s(c, "caller").starts_with(prefix))
}

/// Waits (up to `secs`) until the CDR query `q` on `api` gives CDRs for which `pred` holds.
pub async fn cdrs_when(
    api: &Api,
    q: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Result<Vec<serde_json::Value>> {
    wait_until(Duration::from_secs(secs), what, || async {
        api.get_cdrs(q).await.ok().filter(|c| pred(c))
    })
    .await
}

// ---------------------------------------------------------------- queues

/// Changes queue `queue` of `tenant` (GET, `change`, PUT) and waits until every node serves
/// the same configuration.
pub async fn set_queue(
    c: &ClusterGuard,
    tenant: &str,
    queue: &str,
    change: impl Fn(&mut Value),
) -> Result<()> {
    let mut q = c.api(0).get_queue(tenant, queue).await?;
    change(&mut q);
    c.api(0).put_queue(tenant, queue, &q).await?;
    for api in c.apis() {
        let want = q.clone();
        wait_until(Duration::from_secs(10), "queue change replicated", || {
            let (api, want) = (&api, &want);
            async move {
                let got = api.get_queue(tenant, queue).await.ok()?;
                (got == *want).then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

/// Changes agent `agent` of `tenant` (GET, `change`, PUT) and waits until every node has
/// the change.
pub async fn set_agent(
    c: &ClusterGuard,
    tenant: &str,
    agent: &str,
    change: impl Fn(&mut Value),
) -> Result<()> {
    let path = format!("/api/v1/tenants/{tenant}/agents/{agent}");
    let mut a = c.api(0).get_json(&path).await?;
    change(&mut a);
    c.api(0).put_json(&path, &a).await?;
    let config = ["skills", "role", "takes_calls", "tags", "levels"];
    for api in c.apis() {
        let what = format!("agent change replicated: {a}");
        wait_until(Duration::from_secs(10), &what, || {
            let (api, want, path) = (&api, &a, &path);
            async move {
                let got = api.get_json(path).await.ok()?;
                // An empty list or map is left out of the item.
                let norm = |v: &Value| match v {
                    Value::Array(a) if a.is_empty() => Value::Null,
                    Value::Object(o) if o.is_empty() => Value::Null,
                    v => v.clone(),
                };
                config
                    .iter()
                    .all(|k| norm(&got[k]) == norm(&want[k]))
                    .then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

/// Runs the `callgrid` CLI against node 1 (`--api`, `--token` added) and returns its JSON
/// output; a failed run is an error with its stderr.
pub async fn cli(c: &ClusterGuard, args: &[&str]) -> Result<Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--api",
        &c.info.nodes[0].api,
        "--token",
        &c.info.token,
        "--output",
        "json",
    ]);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(callgrid_bin())
            .args(&all)
            .output(),
    )
    .await
    .context("callgrid did not exit")??;
    ensure!(
        out.status.success(),
        "callgrid {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("callgrid {args:?} printed no JSON"))
}

/// Waits until every node of `c` answers `path` with a JSON document `pred` accepts.
pub async fn replicated(c: &ClusterGuard, path: &str, pred: impl Fn(&Value) -> bool) -> Result<()> {
    for api in c.apis() {
        wait_until(Duration::from_secs(10), path, || {
            let (api, pred) = (&api, &pred);
            async move {
                api.get_json(path)
                    .await
                    .ok()
                    .filter(|v| pred(v))
                    .map(|_| ())
            }
        })
        .await?;
    }
    Ok(())
}

/// How many calls wait in `queue` now, from its owner (through node 1's API).
pub async fn queue_waiting(c: &ClusterGuard, tenant: &str, queue: &str) -> Option<u64> {
    let status = c
        .api(0)
        .get_json(&format!("/api/v1/tenants/{tenant}/queues/{queue}/status"))
        .await
        .ok()?;
    status["waiting"].as_u64()
}

/// Waits until `n` calls wait in `queue`.
pub async fn until_waiting(c: &ClusterGuard, tenant: &str, queue: &str, n: u64) -> Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} calls waiting in {queue}"),
        || async { (queue_waiting(c, tenant, queue).await? == n).then_some(()) },
    )
    .await
}
