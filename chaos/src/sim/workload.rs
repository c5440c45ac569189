//! The workload of one run, all drawn from the seed: the contact center's configuration
//! (one tenant, two queues, a trivial IVR per priority, agents with random skills), the
//! callers, and the agents' phones. Callers and phones are outside the cluster: they talk to
//! the node that answered them (or that re-INVITEd them after a takeover), retransmit a BYE
//! to a silent node, and give up on a node that answers 481.

use std::collections::BTreeMap;

use model::routing::Route;
use model::{
    AccessCode, Agent, AgentId, CallId, Command, ConfigItem, Entry, Extension, Flow, FlowId,
    FlowNode, NodeId, Queue, QueueId, Tenant, TenantId,
};

/// SplitMix64: small, stable across platforms and crate versions, seeded per run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// True with probability `n` in `d`.
    pub fn chance(&mut self, n: u64, d: u64) -> bool {
        self.next() % d < n
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

pub const TENANT: &str = "sim";
pub const QUEUES: [&str; 2] = ["q1", "q2"];
/// Access code, queue index, priority.
pub const ENTRIES: [(&str, usize, u8); 4] =
    [("100", 0, 0), ("101", 0, 2), ("102", 1, 0), ("103", 1, 1)];

pub fn tenant() -> TenantId {
    TENANT.parse().expect("valid tenant id")
}

pub fn queue_id(i: usize) -> QueueId {
    QUEUES[i].parse().expect("valid queue id")
}

pub fn agent_id(i: usize) -> AgentId {
    format!("{}", 1001 + i).parse().expect("valid agent number")
}

fn flow_id(entry: usize) -> FlowId {
    format!("entry{entry}").parse().expect("valid flow id")
}

pub fn route(entry: usize) -> Route {
    Route {
        tenant: tenant(),
        access_code: ENTRIES[entry].0.to_string(),
        landing_code: None,
        entry: Entry::Flow(flow_id(entry)),
    }
}

/// The configuration commands, in an order that satisfies references.
pub fn config(rng: &mut Rng, agents: usize) -> Vec<Command> {
    let t = tenant();
    let mut out = Vec::new();
    let mut tenant_item = Tenant {
        id: t.clone(),
        name: "Simulated center".into(),
        domain: "sim.callgrid.test".into(),
        landing_codes: Vec::new(),
        access_codes: Vec::new(),
        routing: Vec::new(),
    };
    out.push(Command::Create {
        item: ConfigItem::Tenant(tenant_item.clone()),
    });
    for (i, _) in QUEUES.iter().enumerate() {
        out.push(Command::Create {
            item: ConfigItem::Queue(Box::new(Queue::new(
                t.clone(),
                queue_id(i),
                format!("Queue {i}"),
                30_000,
                4_000,
                rng.range(0, 400),
            ))),
        });
    }
    for (e, (_, q, priority)) in ENTRIES.iter().enumerate() {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "queue".to_string(),
            FlowNode::Queue {
                queue: queue_id(*q),
                priority: *priority,
                lost_call_webhook: None,
                also: Vec::new(),
            },
        );
        out.push(Command::Create {
            item: ConfigItem::Flow(Flow {
                tenant: t.clone(),
                id: flow_id(e),
                start: "queue".into(),
                nodes,
            }),
        });
    }
    for i in 0..agents {
        let skills: Vec<QueueId> = match rng.range(0, 2) {
            0 => vec![queue_id(0)],
            1 => vec![queue_id(1)],
            _ => vec![queue_id(0), queue_id(1)],
        };
        out.push(Command::Create {
            item: ConfigItem::Extension(
                Extension::with_password(
                    t.clone(),
                    agent_id(i).as_str().parse().expect("valid extension"),
                    "s1mulated!",
                    "sim",
                )
                .expect("valid extension"),
            ),
        });
        out.push(Command::Create {
            item: ConfigItem::Agent(Agent {
                tenant: t.clone(),
                id: agent_id(i),
                name: format!("Agent {i}"),
                skills,
                role: model::AgentRole::Agent,
                takes_calls: None,
                levels: Default::default(),
                tags: Vec::new(),
                group: None,
                hotline: None,
                permissions: None,
            }),
        });
    }
    tenant_item.access_codes = ENTRIES
        .iter()
        .enumerate()
        .map(|(e, (code, _, _))| AccessCode {
            code: code.to_string(),
            entry: Entry::Flow(flow_id(e)),
        })
        .collect();
    out.push(Command::Update {
        item: ConfigItem::Tenant(tenant_item),
    });
    out
}

/// A caller, as the outside world sees it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: CallId,
    pub entry: usize,
    /// The node that answered it or last re-INVITEd it.
    pub contact: Option<NodeId>,
    /// It got a 200 (or a re-INVITE): the call reached the cluster (I2).
    pub answered: bool,
    /// Answered before its first checkpoint committed (degraded mode).
    pub degraded: bool,
    /// Established on a node no fault touched at that moment: I3 protects it.
    pub protected: bool,
    /// Hangs up if no agent answered by then.
    pub patience_until: u64,
    pub talk_ms: u64,
    /// After the agent answers, who hangs up: the agent (true) or the caller.
    pub agent_hangs_up: bool,
    pub established_at: Option<u64>,
    pub agent: Option<AgentId>,
    /// The caller has hung up or was hung up on.
    pub gone: bool,
    /// A BYE to retransmit: (next try, give up at).
    pub bye: Option<(u64, u64)>,
    pub cdr: Option<Box<model::Cdr>>,
    /// Nodes whose machine finished this call.
    pub finished_on: Vec<NodeId>,
}

/// An agent's phone.
#[derive(Clone, Debug, Default)]
pub struct Phone {
    pub ringing: Option<Ring>,
    /// (call, node the dialog is with)
    pub connected: Option<(CallId, NodeId)>,
    /// Since when no node carries the connected call's media.
    pub orphan_since: Option<u64>,
    /// BYEs still being retransmitted: (call, node, next try, give up at).
    pub byes: Vec<(CallId, NodeId, u64, u64)>,
    /// On a break until then.
    pub break_until: u64,
    pub next_check: u64,
}

/// An INVITE ringing a phone.
#[derive(Clone, Debug)]
pub struct Ring {
    pub call: CallId,
    pub node: NodeId,
    pub dial: u64,
    /// When the phone reports 180 (None once reported).
    pub report_at: Option<u64>,
    /// When the agent picks up (None: never).
    pub answer_at: Option<u64>,
    /// The phone stops ringing by itself then (nobody cancelled it: its node died).
    pub give_up_at: u64,
}
