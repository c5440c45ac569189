//! `callgrid call ...`: live calls (`list`) and, for a waiting call, the queues it waits in
//! and its priority (`queues`, R3.10).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use model::QueueId;

use super::admin::{execute, Verb};
use super::client::ApiClient;
use super::{output, ApiArgs};
use crate::error::usage_err;

#[derive(Debug, Subcommand)]
pub enum CallCommand {
    /// The live calls of the whole cluster.
    List(CallList),
    /// Add or remove queues a waiting call waits in, or change its priority.
    Queues(CallQueues),
}

#[derive(Debug, Args)]
pub struct CallList {
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct CallQueues {
    /// The call's id (from `call list`).
    #[arg(long)]
    pub call: String,
    /// Queues to wait in as well, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub add: Vec<QueueId>,
    /// Queues to leave, comma separated (the call stays in one at least).
    #[arg(long, value_delimiter = ',')]
    pub remove: Vec<QueueId>,
    /// The call's new priority, 0-254 (R3.7).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=254))]
    pub priority: Option<u8>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(command: CallCommand) -> anyhow::Result<()> {
    match command {
        CallCommand::List(l) => {
            execute(
                &l.api,
                Verb::List {
                    collection: "/api/v1/calls".into(),
                },
            )
            .await
        }
        CallCommand::Queues(q) => {
            if q.add.is_empty() && q.remove.is_empty() && q.priority.is_none() {
                return Err(usage_err(
                    "E-BAD-ARG",
                    "nothing to change",
                    "give --add, --remove or --priority",
                ));
            }
            let client = ApiClient::new(&q.api.api, q.api.token.as_deref())?;
            let mut body = json!({"add": q.add, "remove": q.remove});
            if let Some(p) = q.priority {
                body["priority"] = Value::from(p);
            }
            let answer = client
                .request(
                    Method::POST,
                    &format!("/api/v1/calls/{}/queues", q.call),
                    Some(&body),
                )
                .await?;
            output::print(&answer, q.api.output);
            Ok(())
        }
    }
}
