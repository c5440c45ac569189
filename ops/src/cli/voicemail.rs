//! `callgrid voicemail ...` (R3.20): list a center's queue voicemails, mark one handled.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use model::{AgentId, QueueId, TenantId};

use super::admin::{execute, Verb};
use super::client::ApiClient;
use super::{output, ApiArgs};

#[derive(Debug, Subcommand)]
pub enum VoicemailCommand {
    /// List voicemails by time (--status new|handled, --queue Q).
    List(VoicemailList),
    /// Mark a voicemail handled by an agent.
    Handle(VoicemailHandle),
}

#[derive(Debug, Args)]
pub struct VoicemailList {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long, value_parser = ["new", "handled"])]
    pub status: Option<String>,
    #[arg(long)]
    pub queue: Option<QueueId>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct VoicemailHandle {
    #[arg(long)]
    pub tenant: TenantId,
    /// The voicemail's id (its call's id).
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub agent: AgentId,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(command: VoicemailCommand) -> anyhow::Result<()> {
    match command {
        VoicemailCommand::List(l) => {
            let mut query = Vec::new();
            if let Some(s) = &l.status {
                query.push(format!("status={s}"));
            }
            if let Some(q) = &l.queue {
                query.push(format!("queue={q}"));
            }
            let mut collection = format!("/api/v1/tenants/{}/voicemails", l.tenant);
            if !query.is_empty() {
                collection.push('?');
                collection.push_str(&query.join("&"));
            }
            execute(&l.api, Verb::List { collection }).await
        }
        VoicemailCommand::Handle(h) => {
            let client = ApiClient::new(&h.api.api, h.api.token.as_deref())?;
            let answer = client
                .request(
                    Method::POST,
                    &format!("/api/v1/tenants/{}/voicemails/{}/handle", h.tenant, h.id),
                    Some(&json!({"agent": h.agent})),
                )
                .await?;
            output::print(&answer, h.api.output);
            Ok(())
        }
    }
}
