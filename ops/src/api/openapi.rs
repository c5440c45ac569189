//! `GET /api/v1/openapi.json`: a hand-written OpenAPI 3 document of this API. Keep it in step
//! with `mod.rs` and the handler modules (a unit test checks every routed path is listed).

use axum::Json;
use serde_json::{json, Map, Value};

/// Every documented path with its operations: (path, [(method, summary, has_body)]).
pub const OPERATIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "/health",
        &[(
            "get",
            "Node health and Raft status (no token; 503 without a leader)",
        )],
    ),
    ("/metrics", &[("get", "Prometheus metrics (no token)")]),
    (
        "/api/v1/openapi.json",
        &[("get", "This document (no token)")],
    ),
    (
        "/api/v1/commands",
        &[(
            "post",
            "Submit one replicated model::Command; answers its Outcome",
        )],
    ),
    (
        "/api/v1/tenants",
        &[("get", "List tenants"), ("post", "Create a tenant")],
    ),
    (
        "/api/v1/tenants/{tenant}",
        &[
            ("get", "Show a tenant"),
            ("put", "Replace a tenant"),
            ("delete", "Delete a tenant"),
        ],
    ),
    (
        "/api/v1/trunks",
        &[("get", "List trunks"), ("post", "Create a trunk")],
    ),
    (
        "/api/v1/trunks/{trunk}",
        &[
            ("get", "Show a trunk"),
            ("put", "Replace a trunk"),
            ("delete", "Delete a trunk"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/queues",
        &[("get", "List queues"), ("post", "Create a queue")],
    ),
    (
        "/api/v1/tenants/{tenant}/queues/{queue}",
        &[
            ("get", "Show a queue"),
            ("put", "Replace a queue"),
            ("delete", "Delete a queue"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/queues/{queue}/status",
        &[(
            "get",
            "Live queue status: waiting, longest wait, agents, idle agents",
        )],
    ),
    (
        "/api/v1/queues",
        &[("get", "Live status of every queue (?tenant= to filter)")],
    ),
    (
        "/api/v1/calls/{call}/queues",
        &[(
            "post",
            "R3.10: change the queues a waiting call waits in and its priority: {\"add\": [queue], \"remove\": [queue], \"priority\": 0-254}; answers {call, queues}",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/voicemails",
        &[(
            "get",
            "R3.20: queue voicemails by time (?status=new|handled&queue=&from=&to=), with handling_ms once handled; the audio is GET /api/v1/recordings/{recording_id}",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/voicemails/{id}/handle",
        &[(
            "post",
            "R3.20: an agent handled the voicemail: {\"agent\"}",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/customers",
        &[
            ("get", "List known callers (R3.12; ?tag= to filter)"),
            (
                "post",
                "Add a known caller: {\"number\", \"name\", \"tags\": [..], \"level\": 0-254}",
            ),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/customers/import",
        &[(
            "post",
            "Import a JSON array of callers (at most 5,000; all checked before any is written; known numbers replaced); answers {created, updated}",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/customers/{number}",
        &[
            ("get", "Show a known caller (the number is normalised)"),
            ("put", "Replace a known caller"),
            ("delete", "Forget a caller"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/callers/{number}",
        &[(
            "get",
            "What routing knows of a caller: its customer record and recent calls (R3.16)",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/agents",
        &[
            ("get", "List agents with their state"),
            ("post", "Create an agent"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/agent-states",
        &[(
            "get",
            "Agent-state view (R4.9): agents per state, and each agent's state, time in it, calls and talk time (?group=, ?queue=)",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}",
        &[
            ("get", "Show an agent with its state and session"),
            ("put", "Replace an agent"),
            ("delete", "Delete an agent"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}/sign-in",
        &[("post", "Sign in at {\"extension\": \"1001\"}")],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}/ready",
        &[("post", "Become ready")],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}/not-ready",
        &[("post", "Become not ready ({\"reason\": \"...\"})")],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}/sign-out",
        &[("post", "Sign out")],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}/away",
        &[(
            "post",
            "A manager (set_away permission) sends the agent away (R4.7): {\"reason\": training|study|meeting|interview, \"manager\"}",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/agents/{agent}/back",
        &[(
            "post",
            "A manager ends the agent's away state: {\"manager\", \"ready\": bool}",
        )],
    ),
    (
        "/api/v1/tenants/{tenant}/extensions",
        &[
            ("get", "List extensions (no hashes)"),
            ("post", "Create an extension from {\"id\",\"password\"}"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/extensions/{extension}",
        &[
            ("get", "Show an extension"),
            ("put", "Set a new password ({\"password\"})"),
            ("delete", "Delete an extension"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/flows",
        &[("get", "List IVR flows"), ("post", "Create an IVR flow")],
    ),
    (
        "/api/v1/tenants/{tenant}/flows/{flow}",
        &[
            ("get", "Show a flow"),
            ("put", "Replace a flow"),
            ("delete", "Delete a flow"),
        ],
    ),
    (
        "/api/v1/tenants/{tenant}/prompts",
        &[("get", "List prompts"), ("post", "Create a prompt")],
    ),
    (
        "/api/v1/tenants/{tenant}/prompts/{prompt}",
        &[
            ("get", "Show a prompt"),
            ("put", "Replace a prompt"),
            ("delete", "Delete a prompt"),
        ],
    ),
    (
        "/api/v1/faults",
        &[
            ("get", "Faults injected on this node's cluster traffic (drills; needs fault_injection)"),
            ("post", "Drop or delay this node's cluster traffic to peers: {faults:[{peer, fault: drop|delay, delay_ms}]}"),
            ("delete", "Clear every fault on this node"),
        ],
    ),
    (
        "/api/v1/dr/seed",
        &[(
            "post",
            "DR takeover, first step: save this node's last applied state for a new lineage ({left_behind:[ids], force})",
        )],
    ),
    (
        "/api/v1/cluster/learners",
        &[(
            "post",
            "DR failback (leader only): add a recovered node as a learner and answer once it caught up ({node_id, site, raft_addr, api_addr, sip_addr, mesh_addr})",
        )],
    ),
    (
        "/api/v1/cluster/voters",
        &[(
            "put",
            "DR failback (leader only): make these members the voters ({voters:[ids]})",
        )],
    ),
    (
        "/api/v1/calls",
        &[(
            "get",
            "Live calls of every node (?local=true: this node only)",
        )],
    ),
    (
        "/api/v1/cdrs",
        &[(
            "get",
            "CDRs, newest last (?tenant=&from=&to=&caller=&agent=&limit=; times in Unix ms)",
        )],
    ),
    (
        "/api/v1/recordings/{recording}",
        &[(
            "get",
            "A call recording as audio/wav (proxied from the node that holds it)",
        )],
    ),
    (
        "/api/v1/events",
        &[(
            "get",
            "WebSocket: agent-state, queue and call-ended events as JSON frames",
        )],
    ),
    (
        "/api/v1/bench/raft",
        &[(
            "post",
            "Raft bench: {checkpoints, concurrency, rate?, live_calls?} synthetic call checkpoints through this node's checkpoint writer, by writers waiting for their commits or at `rate` per second, timed to commit, then discarded",
        )],
    ),
];

const PUBLIC: [&str; 3] = ["/health", "/metrics", "/api/v1/openapi.json"];

pub fn spec() -> Value {
    let mut paths = Map::new();
    for (path, ops) in OPERATIONS {
        let mut item = Map::new();
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        for (method, summary) in *ops {
            let mut op = json!({
                "summary": summary,
                "parameters": params,
                "responses": {
                    "200": {"description": "OK"},
                    "400": {"description": "Bad id, query or body", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "401": {"description": "Missing or wrong token"},
                    "404": {"description": "Not found"}
                }
            });
            if PUBLIC.contains(path) {
                op["security"] = json!([]);
            }
            if matches!(*method, "post" | "put") {
                op["requestBody"] =
                    json!({"content": {"application/json": {"schema": {"type": "object"}}}});
            }
            item.insert((*method).to_string(), op);
        }
        paths.insert((*path).to_string(), Value::Object(item));
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "callgrid node API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}, "hint": {"type": "string"}}}}}}
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_routed_paths() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("config_items.rs"),
            include_str!("agents.rs"),
            include_str!("extensions.rs"),
            include_str!("queues.rs"),
        ];
        // Normalise parameter names ({id} vs {queue}) before comparing.
        let norm = |p: &str| {
            p.split('/')
                .map(|s| if s.starts_with('{') { "{}" } else { s })
                .collect::<Vec<_>>()
                .join("/")
        };
        let documented: Vec<String> = OPERATIONS.iter().map(|(p, _)| norm(p)).collect();
        for source in sources {
            for chunk in source.split(".route(\"").skip(1) {
                let path = chunk.split('"').next().unwrap();
                let full = if path.starts_with("/api") || path == "/health" || path == "/metrics" {
                    path.to_string()
                } else {
                    format!("/api/v1{path}")
                };
                assert!(
                    documented.contains(&norm(&full)),
                    "{full} is routed but not in openapi.json"
                );
            }
        }
    }
}
