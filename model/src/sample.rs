//! The sample configuration (`cluster up --sample`, the demo): five province centers with
//! queues, agents, extensions, prompts and an IVR flow. Passwords come from the caller's RNG,
//! so every cluster gets its own (never fixed in the code).

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::config::*;
use crate::flow::{Flow, FlowNode};
use crate::ids::*;
use crate::state::Command;

/// `DIR/cluster.json`, written by `callgrid cluster up` and read by tests, drills, benches and
/// the demo (an interface other tools rely on: keep it stable, extend freely).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub token: String,
    pub nodes: Vec<ClusterNode>,
    #[serde(default)]
    pub sample: Option<SampleInfo>,
}

/// One node of `cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: u64,
    pub site: String,
    pub sip: String,
    pub api: String,
    #[serde(default)]
    pub raft: String,
    #[serde(default)]
    pub mesh: String,
}

impl ClusterFile {
    /// The tenants of the sample, if the cluster was started with one.
    pub fn tenants(&self) -> &[SampleTenant] {
        self.sample.as_ref().map_or(&[], |s| s.tenants.as_slice())
    }
}

/// Provinces, their landing codes.
pub const PROVINCES: [(&str, &str, &[&str]); 5] = [
    ("gd", "Guangdong", &["020", "0755"]),
    ("gx", "Guangxi", &["0771"]),
    ("yn", "Yunnan", &["0871"]),
    ("gz", "Guizhou", &["0851"]),
    ("hi", "Hainan", &["0898"]),
];
pub const ACCESS_CODE: &str = "95598";
pub const QUEUES: [&str; 4] = ["general", "billing", "outage", "complaint"];
pub const AGENTS_PER_TENANT: u32 = 10;
/// Bundled prompts every node carries (see `actors::node::prompts`), configured as the
/// sample tenants' prompts of the same ids.
pub const PROMPTS: [&str; 10] = [
    "welcome",
    "menu",
    "music",
    "timeout",
    "ewt_prefix",
    "ewt_suffix",
    "agent_prefix",
    "agent_suffix",
    "voicemail",
    "voicemail_thanks",
];

/// What `cluster.json` publishes about the sample (agents and their phone passwords).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleInfo {
    pub tenants: Vec<SampleTenant>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleTenant {
    pub id: String,
    pub domain: String,
    /// Extensions of issue 2's minimal format; `cluster up` always writes them.
    #[serde(default)]
    pub landing_codes: Vec<String>,
    #[serde(default)]
    pub access_code: String,
    pub agents: Vec<SampleAgent>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleAgent {
    pub agent: String,
    pub extension: String,
    pub password: String,
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("sample ids are valid by construction")
}

/// A random password meeting R10.1 (letters, digits and a symbol).
pub fn generate_password(rng: &mut impl Rng) -> String {
    const LETTERS: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";
    let mut s: String = (0..10)
        .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
        .collect();
    s.push_str(&format!("{}!", rng.gen_range(10..100)));
    s
}

/// The commands that create the sample, in dependency order, and the published info.
pub fn sample(rng: &mut impl Rng) -> (Vec<Command>, SampleInfo) {
    let mut commands = vec![Command::Create {
        item: ConfigItem::Trunk(Trunk {
            id: id("carrier"),
            name: "Carrier trunk (loopback)".into(),
            sources: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            outbound: None,
        }),
    }];
    let mut info = SampleInfo {
        tenants: Vec::new(),
    };
    for (tenant_id, name, landing) in PROVINCES {
        let tenant: TenantId = id(tenant_id);
        let domain = format!("{tenant_id}.callgrid.local");
        let mut create = |item| commands.push(Command::Create { item });
        // The tenant first without access codes (their flow does not exist yet).
        create(ConfigItem::Tenant(Tenant {
            id: tenant.clone(),
            name: format!("{name} 95598"),
            domain: domain.clone(),
            landing_codes: landing.iter().map(|s| s.to_string()).collect(),
            access_codes: vec![],
            routing: Vec::new(),
        }));
        for prompt in PROMPTS {
            create(ConfigItem::Prompt(Prompt {
                tenant: tenant.clone(),
                id: id(prompt),
                file: format!("builtin:{prompt}"),
            }));
        }
        for queue in QUEUES {
            create(ConfigItem::Queue(Box::new(Queue {
                music_prompt: Some(id("music")),
                timeout_prompt: Some(id("timeout")),
                ..Queue::new(
                    tenant.clone(),
                    id(queue),
                    format!("{name} {queue}"),
                    120_000,
                    15_000,
                    2_000,
                )
            })));
        }
        create(ConfigItem::Flow(sample_flow(&tenant)));
        let mut agents = Vec::new();
        for n in 0..AGENTS_PER_TENANT {
            let number = format!("{}", 1001 + n);
            let password = generate_password(rng);
            create(ConfigItem::Agent(Agent {
                tenant: tenant.clone(),
                id: id(&number),
                name: format!("Agent {number}"),
                skills: QUEUES.iter().map(|q| id(q)).collect(),
                role: AgentRole::Agent,
                takes_calls: None,
                levels: Default::default(),
                tags: Vec::new(),
                // Two teams of five.
                group: Some(format!("team{}", n / 5 + 1)),
                hotline: None,
                permissions: None,
            }));
            let extension =
                Extension::with_password(tenant.clone(), id(&number), &password, &domain)
                    .expect("generated passwords meet the policy");
            create(ConfigItem::Extension(extension));
            agents.push(SampleAgent {
                agent: number.clone(),
                extension: number,
                password,
            });
        }
        commands.push(Command::Update {
            item: ConfigItem::Tenant(Tenant {
                id: tenant.clone(),
                name: format!("{name} 95598"),
                domain: domain.clone(),
                landing_codes: landing.iter().map(|s| s.to_string()).collect(),
                access_codes: vec![AccessCode {
                    code: ACCESS_CODE.into(),
                    entry: Entry::Flow(id("main")),
                }],
                routing: Vec::new(),
            }),
        });
        info.tenants.push(SampleTenant {
            id: tenant_id.into(),
            domain,
            landing_codes: landing.iter().map(|s| s.to_string()).collect(),
            access_code: ACCESS_CODE.into(),
            agents,
        });
    }
    (commands, info)
}

/// Welcome, then a menu: 1 outage, 2 billing, 9 complaint, 0 or timeout general.
pub fn sample_flow(tenant: &TenantId) -> Flow {
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "welcome".to_string(),
        FlowNode::Play {
            prompt: id("welcome"),
            next: "menu".into(),
        },
    );
    let options = [
        ("1", "to_outage"),
        ("2", "to_billing"),
        ("9", "to_complaint"),
        ("0", "to_general"),
        // Priority line for the billing queue (R3.7): served before key 2's callers.
        ("8", "to_billing_priority"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    nodes.insert(
        "menu".to_string(),
        FlowNode::Menu {
            prompt: id("menu"),
            options,
            timeout_ms: 5_000,
            default: "to_general".into(),
        },
    );
    for queue in QUEUES {
        nodes.insert(
            format!("to_{queue}"),
            FlowNode::Queue {
                queue: id(queue),
                priority: 0,
                lost_call_webhook: None,
                also: Vec::new(),
            },
        );
    }
    nodes.insert(
        "to_billing_priority".to_string(),
        FlowNode::Queue {
            queue: id("billing"),
            priority: 5,
            lost_call_webhook: None,
            also: Vec::new(),
        },
    );
    Flow {
        tenant: tenant.clone(),
        id: id("main"),
        start: "welcome".into(),
        nodes,
    }
}
