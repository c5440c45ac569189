//! IVR flows (R5.1, R5.2): a small declarative graph of nodes. The interpreter that walks it
//! is in `actors::ivr`; this is only the schema and its validation.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::ids::*;
use crate::ModelError;

/// A flow: named nodes and the node it starts at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub tenant: TenantId,
    pub id: FlowId,
    pub start: String,
    pub nodes: BTreeMap<String, FlowNode>,
}

/// One step of a flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FlowNode {
    /// Play a prompt, then go on.
    Play { prompt: PromptId, next: String },
    /// Play a prompt and collect one key; `options` maps keys to nodes. Without a valid key
    /// within `timeout_ms` after the prompt, `default` is taken.
    Menu {
        prompt: PromptId,
        options: BTreeMap<String, String>,
        timeout_ms: u64,
        default: String,
    },
    /// Hand the call to a skill queue, at `priority` (0-254, higher is served first, R3.7).
    /// R3.22: with `lost_call_webhook`, a caller who passed this node (asked for a human)
    /// and never reached an agent is reported to that URL (the SMS gateway interface).
    Queue {
        queue: QueueId,
        /// R3.10: more queues the call waits in at the same time; the first agent of any of
        /// them takes it. `queue`'s rules, music and announcements apply.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<QueueId>,
        #[serde(default)]
        priority: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lost_call_webhook: Option<String>,
    },
    /// Play an optional prompt and hang up.
    Hangup { prompt: Option<PromptId> },
}

/// A webhook the platform posts to: an http:// or https:// URL of at most 512 characters.
pub fn check_webhook(url: &str) -> Result<(), ModelError> {
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.len() > 512 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ModelError::Invalid {
            field: "lost_call_webhook",
            why: "an http:// or https:// URL, at most 512 characters, no spaces",
        });
    }
    Ok(())
}

/// The highest customer priority (R3.7: up to 254 levels above the default 0).
pub const MAX_PRIORITY: u8 = 254;

impl Flow {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.nodes.is_empty() || self.nodes.len() > 512 {
            return Err(ModelError::Invalid {
                field: "nodes",
                why: "1 to 512 nodes",
            });
        }
        let known = |name: &String| self.nodes.contains_key(name);
        if !known(&self.start) {
            return Err(ModelError::Invalid {
                field: "start",
                why: "names no node",
            });
        }
        for node in self.nodes.values() {
            let targets: Vec<&String> = match node {
                FlowNode::Play { next, .. } => vec![next],
                FlowNode::Menu {
                    options,
                    default,
                    timeout_ms,
                    ..
                } => {
                    if !(500..=60_000).contains(timeout_ms) {
                        return Err(ModelError::Invalid {
                            field: "timeout_ms",
                            why: "0.5 to 60 s",
                        });
                    }
                    if options
                        .keys()
                        .any(|k| !(k.len() == 1 && "0123456789*#".contains(k.as_str())))
                    {
                        return Err(ModelError::Invalid {
                            field: "options",
                            why: "keys are 0-9 * #",
                        });
                    }
                    options.values().chain(std::iter::once(default)).collect()
                }
                FlowNode::Queue {
                    queue,
                    also,
                    priority,
                    lost_call_webhook,
                } => {
                    if also.len() > 8 || also.contains(queue) {
                        return Err(ModelError::Invalid {
                            field: "also",
                            why: "up to 8 other queues",
                        });
                    }
                    if *priority > MAX_PRIORITY {
                        return Err(ModelError::Invalid {
                            field: "priority",
                            why: "0 to 254 (R3.7)",
                        });
                    }
                    if let Some(url) = lost_call_webhook {
                        check_webhook(url)?;
                    }
                    vec![]
                }
                FlowNode::Hangup { .. } => vec![],
            };
            if targets.into_iter().any(|t| !known(t)) {
                return Err(ModelError::Invalid {
                    field: "next",
                    why: "names no node",
                });
            }
        }
        Ok(())
    }

    /// Queues and prompts the flow refers to, for reference checks.
    pub fn references(&self) -> (Vec<&QueueId>, Vec<&PromptId>) {
        let mut queues = Vec::new();
        let mut prompts = Vec::new();
        for node in self.nodes.values() {
            match node {
                FlowNode::Play { prompt, .. } | FlowNode::Menu { prompt, .. } => {
                    prompts.push(prompt)
                }
                FlowNode::Queue { queue, also, .. } => {
                    queues.push(queue);
                    queues.extend(also.iter());
                }
                FlowNode::Hangup { prompt } => prompts.extend(prompt.iter()),
            }
        }
        (queues, prompts)
    }
}
