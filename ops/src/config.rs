//! The node configuration file (`callgrid node --config node.toml`).
//!
//! TOML, strictly parsed (`deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting) and validated as a whole before anything starts: a node that would fail
//! later on a bad address or a missing peer fails here, with a code and a fix hint.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ops_err;

/// The sites a node may belong to (DESIGN.md "Topology").
pub const SITES: [&str; 3] = ["a", "b", "dr"];
/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// The largest config file read (a config is a few kilobytes).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// One node's configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFileConfig {
    pub node_id: u64,
    pub site: String,
    pub sip_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub mesh_addr: SocketAddr,
    pub media_ip: IpAddr,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    pub data_dir: PathBuf,
    /// Bearer token of the admin API (shared by every node of the cluster).
    pub admin_token: String,
    /// Cookie of the actor mesh (ractor_cluster); the same on every node.
    pub mesh_cookie: String,
    /// Shared secret for digest nonces, the same on every node.
    pub secret: String,
    /// Every initial voter, this node included, keyed by node id (`[peers.1]`).
    #[serde(with = "peer_keys")]
    pub peers: BTreeMap<u64, PeerConfig>,
    /// Raft heartbeat interval.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Raft election timeout range.
    #[serde(default = "default_election_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Lease heartbeat through Raft (failure detection), the lease, and the silence after
    /// which the leader declares a node down (must exceed the lease).
    #[serde(default = "default_lease_heartbeat_ms")]
    pub lease_heartbeat_ms: u64,
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// Lets drills inject faults through `/api/v1/faults` (off by default).
    #[serde(default)]
    pub fault_injection: bool,
    /// This node joins a running cluster (DR failback): a fresh Raft store never initializes
    /// a cluster of its own; the leader adds it as a learner.
    #[serde(default)]
    pub join_existing: bool,
    /// Opt-in automatic DR takeover, for nodes of the dr site only: after this long without
    /// a lease while no node of the active sites answers at all, the node takes over as
    /// `callgrid dr takeover` would. A partition that hides live active sites from the dr
    /// site looks the same, so this trades split-brain risk for unattended recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr_auto_takeover_after_ms: Option<u64>,
    /// When the node refuses new calls with 503 (DESIGN.md "Overload"); each bound left out
    /// takes its default.
    #[serde(default, skip_serializing_if = "AdmissionConfig::is_default")]
    pub admission: AdmissionConfig,
}

/// The `[admission]` table: the bounds past which new INVITEs get 503 and Retry-After.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Calls on this node (default 20,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<usize>,
    /// Checkpoints waiting for Raft (default 2,048: four full entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_checkpoint_backlog: Option<usize>,
    /// Smoothed lateness of the node's event loop (default 150 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_loop_lag_ms: Option<u64>,
    /// Commit time of the lease heartbeats, two in a row (default half of `lease_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_heartbeat_ms: Option<u64>,
}

impl AdmissionConfig {
    fn is_default(&self) -> bool {
        *self == AdmissionConfig::default()
    }
}

/// How to reach one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub site: String,
    pub raft_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub sip_addr: SocketAddr,
    pub mesh_addr: SocketAddr,
}

/// TOML table keys are strings: node ids are written as `[peers.1]` and parsed back.
mod peer_keys {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PeerConfig;

    pub fn serialize<S: Serializer>(
        peers: &BTreeMap<u64, PeerConfig>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let by_text: BTreeMap<String, &PeerConfig> =
            peers.iter().map(|(id, p)| (id.to_string(), p)).collect();
        by_text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, PeerConfig>, D::Error> {
        let by_text = BTreeMap::<String, PeerConfig>::deserialize(d)?;
        by_text
            .into_iter()
            .map(|(id, p)| {
                id.parse::<u64>()
                    .map(|id| (id, p))
                    .map_err(|_| D::Error::custom(format!("peer key {id:?} is not a node id")))
            })
            .collect()
    }
}

fn default_lease_heartbeat_ms() -> u64 {
    cluster::LeaseConfig::default().heartbeat_ms
}
fn default_lease_ms() -> u64 {
    cluster::LeaseConfig::default().lease_ms
}
fn default_down_after_ms() -> u64 {
    cluster::LeaseConfig::default().down_after_ms
}

fn default_heartbeat_ms() -> u64 {
    100
}
fn default_election_min_ms() -> u64 {
    300
}
fn default_election_max_ms() -> u64 {
    600
}

impl PeerConfig {
    /// The peer as the Raft membership stores it.
    pub fn node_info(&self) -> cluster::NodeInfo {
        cluster::NodeInfo {
            site: self.site.clone(),
            raft_addr: self.raft_addr.to_string(),
            api_addr: self.api_addr.to_string(),
            sip_addr: self.sip_addr.to_string(),
            mesh_addr: self.mesh_addr.to_string(),
        }
    }
}

impl NodeFileConfig {
    /// Every peer as `cluster::NodeInfo`.
    pub fn peer_infos(&self) -> BTreeMap<u64, cluster::NodeInfo> {
        self.peers
            .iter()
            .map(|(id, p)| (*id, p.node_info()))
            .collect()
    }

    /// This node as `cluster::NodeInfo`.
    pub fn lease(&self) -> cluster::LeaseConfig {
        cluster::LeaseConfig {
            heartbeat_ms: self.lease_heartbeat_ms,
            lease_ms: self.lease_ms,
            down_after_ms: self.down_after_ms,
        }
    }

    /// The admission bounds: the file's, else the defaults for this node's lease.
    pub fn admission(&self) -> actors::node::admission::AdmissionLimits {
        let defaults = actors::node::admission::AdmissionLimits::for_lease(self.lease_ms);
        let a = &self.admission;
        actors::node::admission::AdmissionLimits {
            max_calls: a.max_calls.unwrap_or(defaults.max_calls),
            max_checkpoint_backlog: a
                .max_checkpoint_backlog
                .unwrap_or(defaults.max_checkpoint_backlog),
            max_loop_lag_ms: a.max_loop_lag_ms.unwrap_or(defaults.max_loop_lag_ms),
            max_heartbeat_ms: a.max_heartbeat_ms.unwrap_or(defaults.max_heartbeat_ms),
        }
    }

    pub fn self_info(&self) -> cluster::NodeInfo {
        cluster::NodeInfo {
            site: self.site.clone(),
            raft_addr: self.raft_addr.to_string(),
            api_addr: self.api_addr.to_string(),
            sip_addr: self.sip_addr.to_string(),
            mesh_addr: self.mesh_addr.to_string(),
        }
    }

    /// Checks the whole file; the first problem found is reported.
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        if self.node_id == 0 {
            return Err((
                "node_id must be at least 1".into(),
                "set node_id to a positive integer never used before",
            ));
        }
        check_site(&self.site)?;
        for (name, addr) in [
            ("sip_addr", self.sip_addr),
            ("api_addr", self.api_addr),
            ("raft_addr", self.raft_addr),
            ("mesh_addr", self.mesh_addr),
        ] {
            if addr.port() == 0 {
                return Err((
                    format!("{name} {addr} has port 0"),
                    "give every address an explicit port",
                ));
            }
        }
        let ports = [self.api_addr, self.raft_addr, self.mesh_addr];
        for (i, a) in ports.iter().enumerate() {
            if ports[i + 1..].contains(a) {
                return Err((
                    format!("address {a} is used twice"),
                    "give API, raft and mesh distinct ports",
                ));
            }
        }
        if self.rtp_port_min < 1024 || self.rtp_port_min >= self.rtp_port_max {
            return Err((
                format!(
                    "rtp port range {}-{} is invalid",
                    self.rtp_port_min, self.rtp_port_max
                ),
                "use 1024 <= rtp_port_min < rtp_port_max, e.g. 20000 and 29999",
            ));
        }
        if self.rtp_port_max - self.rtp_port_min < 16 {
            return Err((
                "rtp port range is smaller than 16 ports".into(),
                "widen the rtp port range",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err((
                "data_dir is empty".into(),
                "set data_dir to a writable directory",
            ));
        }
        check_secret("admin_token", &self.admin_token)?;
        check_secret("mesh_cookie", &self.mesh_cookie)?;
        check_secret("secret", &self.secret)?;
        if let Err(why) = self.lease().validate() {
            return Err((
                format!("lease timings are inconsistent: {why}"),
                "use lease_ms >= 2 * lease_heartbeat_ms and down_after_ms > lease_ms",
            ));
        }
        if let Err(why) = self.admission().validate() {
            return Err((
                format!("[admission] is invalid: {why}"),
                "give every admission bound a positive value, or leave it out for the default",
            ));
        }
        if self.heartbeat_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err((
                "raft timings are inconsistent".into(),
                "use heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms",
            ));
        }
        if let Some(after) = self.dr_auto_takeover_after_ms {
            if self.site != "dr" {
                return Err((
                    format!(
                        "dr_auto_takeover_after_ms is set on node {} of site {}",
                        self.node_id, self.site
                    ),
                    "only nodes of the dr site may take over; remove the setting",
                ));
            }
            if after < 3 * self.down_after_ms {
                return Err((
                    format!("dr_auto_takeover_after_ms {after} is shorter than three failure-detection periods"),
                    "use at least 3 * down_after_ms (a few seconds; minutes in production)",
                ));
            }
        }
        let Some(me) = self.peers.get(&self.node_id) else {
            return Err((
                format!("node {} is not listed in [peers]", self.node_id),
                "add this node under [peers.<node_id>] with the same addresses",
            ));
        };
        if me.site != self.site
            || me.raft_addr != self.raft_addr
            || me.api_addr != self.api_addr
            || me.sip_addr != self.sip_addr
            || me.mesh_addr != self.mesh_addr
        {
            return Err((
                format!(
                    "[peers.{}] does not match this node's own site and addresses",
                    self.node_id
                ),
                "make this node's peer entry repeat its site and addresses exactly",
            ));
        }
        for (id, peer) in &self.peers {
            if *id == 0 {
                return Err(("peer id 0 is not allowed".into(), "number nodes from 1"));
            }
            check_site(&peer.site).map_err(|(m, h)| (format!("peer {id}: {m}"), h))?;
        }
        Ok(())
    }
}

fn check_site(site: &str) -> Result<(), (String, &'static str)> {
    if SITES.contains(&site) {
        Ok(())
    } else {
        Err((
            format!("site {site:?} is not one of a, b, dr"),
            "set site to \"a\", \"b\" or \"dr\"",
        ))
    }
}

fn check_secret(name: &str, value: &str) -> Result<(), (String, &'static str)> {
    let printable = value.bytes().all(|b| b.is_ascii_graphic());
    if value.len() < MIN_TOKEN_LEN || value.len() > 256 || !printable {
        return Err((
            format!("{name} must be {MIN_TOKEN_LEN} to 256 printable characters without spaces"),
            "generate one, e.g. `openssl rand -hex 24`",
        ));
    }
    Ok(())
}

/// Reads, parses and validates a node config file.
pub fn load(path: &Path) -> anyhow::Result<NodeFileConfig> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| {
            ops_err(
                "E-CONFIG-READ",
                format!("config error: cannot read {shown}: {e}"),
                "pass an existing file",
            )
        })?
        .len();
    if size > MAX_CONFIG_BYTES {
        return Err(ops_err(
            "E-CONFIG-READ",
            format!("config error: {shown} is {size} bytes, more than a config file can be"),
            "pass the node's TOML config file",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ops_err(
            "E-CONFIG-READ",
            format!("config error: cannot read {shown}: {e}"),
            "pass an existing UTF-8 file",
        )
    })?;
    parse(&text).map_err(|e| match e.downcast::<crate::error::OpsError>() {
        Ok(mut ops) => {
            ops.message = format!("config error in {shown}: {}", ops.message);
            anyhow::Error::new(ops)
        }
        Err(other) => other,
    })
}

/// Parses and validates config text.
pub fn parse(text: &str) -> anyhow::Result<NodeFileConfig> {
    let config: NodeFileConfig = toml::from_str(text).map_err(|e| {
        let what = e.message().to_string();
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ops_err(
            "E-CONFIG-PARSE",
            format!("{what}{at}"),
            "fix the TOML; see `callgrid cluster up` for a generated example",
        )
    })?;
    config
        .validate()
        .map_err(|(message, hint)| ops_err("E-CONFIG-INVALID", message, hint))?;
    Ok(config)
}

/// Serialises a config as TOML (used by `cluster up`).
pub fn to_toml(config: &NodeFileConfig) -> anyhow::Result<String> {
    toml::to_string_pretty(config).map_err(|e| {
        ops_err(
            "E-CONFIG-WRITE",
            format!("cannot serialise config: {e}"),
            "report this bug",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> NodeFileConfig {
        let peer = |i: u8, site: &str| PeerConfig {
            site: site.into(),
            raft_addr: format!("127.0.0.{i}:8001").parse().unwrap(),
            api_addr: format!("127.0.0.{i}:8000").parse().unwrap(),
            sip_addr: format!("127.0.0.{i}:5060").parse().unwrap(),
            mesh_addr: format!("127.0.0.{i}:8002").parse().unwrap(),
        };
        NodeFileConfig {
            node_id: 1,
            site: "a".into(),
            sip_addr: "127.0.0.11:5060".parse().unwrap(),
            api_addr: "127.0.0.11:8000".parse().unwrap(),
            raft_addr: "127.0.0.11:8001".parse().unwrap(),
            mesh_addr: "127.0.0.11:8002".parse().unwrap(),
            media_ip: "127.0.0.11".parse().unwrap(),
            rtp_port_min: 20000,
            rtp_port_max: 29999,
            data_dir: "/tmp/x".into(),
            admin_token: "0123456789abcdef".into(),
            mesh_cookie: "0123456789abcdef".into(),
            secret: "0123456789abcdef".into(),
            peers: [(1, peer(11, "a")), (2, peer(12, "b"))]
                .into_iter()
                .collect(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            lease_heartbeat_ms: 150,
            lease_ms: 500,
            down_after_ms: 700,
            fault_injection: false,
            join_existing: false,
            dr_auto_takeover_after_ms: None,
            admission: AdmissionConfig::default(),
        }
    }

    fn code(e: anyhow::Error) -> &'static str {
        e.downcast_ref::<crate::error::OpsError>()
            .expect("an OpsError")
            .code
    }

    #[test]
    fn round_trips_through_toml() {
        let text = to_toml(&sample()).unwrap();
        assert_eq!(parse(&text).unwrap(), sample());
    }

    #[test]
    fn rejects_bad_files() {
        assert_eq!(
            code(load(Path::new("/nonexistent/x.toml")).unwrap_err()),
            "E-CONFIG-READ"
        );
        assert_eq!(code(parse("node_id = ").unwrap_err()), "E-CONFIG-PARSE");
        let text = to_toml(&sample()).unwrap();
        assert_eq!(
            code(parse(&format!("bogus = 1\n{text}")).unwrap_err()),
            "E-CONFIG-PARSE"
        );
        let mut bad = sample();
        bad.site = "c".into();
        assert_eq!(
            code(parse(&to_toml(&bad).unwrap()).unwrap_err()),
            "E-CONFIG-INVALID"
        );
        let mut bad = sample();
        bad.admin_token = "short".into();
        assert!(bad.validate().is_err());
        let mut bad = sample();
        bad.node_id = 3;
        assert!(bad.validate().is_err());
        let mut bad = sample();
        bad.rtp_port_min = 30000;
        assert!(bad.validate().is_err());
        let mut bad = sample();
        bad.admission.max_loop_lag_ms = Some(0);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn admission_bounds_default_from_the_lease_and_can_be_set() {
        let config = sample();
        let limits = config.admission();
        assert_eq!(limits.max_heartbeat_ms, config.lease_ms / 2);
        assert_eq!(limits.max_calls, 20_000);
        let text = format!(
            "{}\n[admission]\nmax_calls = 500\nmax_loop_lag_ms = 80\n",
            to_toml(&sample()).unwrap()
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.admission().max_calls, 500);
        assert_eq!(parsed.admission().max_loop_lag_ms, 80);
        assert_eq!(
            parsed.admission().max_checkpoint_backlog,
            limits.max_checkpoint_backlog
        );
        assert_eq!(parse(&to_toml(&parsed).unwrap()).unwrap(), parsed);
        let typo = format!("{text}max_call = 1\n");
        assert_eq!(code(parse(&typo).unwrap_err()), "E-CONFIG-PARSE");
    }
}
