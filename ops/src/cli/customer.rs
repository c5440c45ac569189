//! `callgrid customer ...`: the callers a center knows (R3.12): add, update, list, show,
//! delete, bulk import from a JSON array, and `caller` (what routing knows of a number:
//! its record and recent calls, R3.16).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use model::TenantId;

use super::admin::{execute, read_json, set, Verb};
use super::client::ApiClient;
use super::{output, ApiArgs};
use crate::error::usage_err;

/// The most customers sent in one import request (the API's limit).
const IMPORT_CHUNK: usize = 5_000;

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    /// Add a known caller.
    Add(CustomerFields),
    /// Change a known caller (only the fields given).
    Update(CustomerFields),
    /// List a tenant's known callers (--tag to filter).
    List(CustomerList),
    /// Show one known caller.
    Show(CustomerKey),
    /// Forget a caller.
    Delete(CustomerKey),
    /// Import callers from --file, a JSON array of {"number", "name", "tags", "level"}; known
    /// numbers are replaced. Each batch of 5,000 is checked whole before it is written.
    Import(CustomerImport),
    /// What routing knows of a number: its customer record and its recent calls.
    Caller(CustomerKey),
}

#[derive(Debug, Args)]
pub struct CustomerKey {
    #[arg(long)]
    pub tenant: TenantId,
    /// The caller's number as the carrier sends it (normalised: +86755... is 0755...).
    #[arg(long)]
    pub number: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct CustomerList {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub tag: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct CustomerFields {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub number: String,
    #[arg(long)]
    pub name: Option<String>,
    /// Comma separated (elderly,vip); empty to clear.
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// R3.7: the caller's priority level, 0-254 (higher is served first).
    #[arg(long)]
    pub level: Option<u8>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct CustomerImport {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn collection(tenant: &TenantId) -> String {
    format!("/api/v1/tenants/{tenant}/customers")
}

fn item(tenant: &TenantId, number: &str) -> anyhow::Result<String> {
    if number.is_empty()
        || !number
            .trim_start_matches('+')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return Err(usage_err(
            "E-BAD-ARG",
            format!("{number:?} is not a phone number"),
            "give the caller's digits, e.g. --number 075512345678",
        ));
    }
    Ok(format!(
        "{}/{}",
        collection(tenant),
        number.trim_start_matches('+')
    ))
}

fn fields(f: &CustomerFields) -> Map<String, Value> {
    let mut body = Map::new();
    set(
        &mut body,
        vec![
            ("number", Some(json!(f.number))),
            ("name", f.name.clone().map(Value::String)),
            (
                "tags",
                f.tags
                    .as_ref()
                    .map(|t| json!(t.iter().filter(|t| !t.is_empty()).collect::<Vec<_>>())),
            ),
            ("level", f.level.map(|l| json!(l))),
        ],
    );
    body
}

pub async fn run(command: CustomerCommand) -> anyhow::Result<()> {
    match command {
        CustomerCommand::Add(f) => {
            execute(
                &f.api,
                Verb::Create {
                    collection: collection(&f.tenant),
                    body: fields(&f),
                },
            )
            .await
        }
        CustomerCommand::Update(f) => {
            let mut overlay = fields(&f);
            overlay.remove("number");
            execute(
                &f.api,
                Verb::Update {
                    item: item(&f.tenant, &f.number)?,
                    overlay,
                },
            )
            .await
        }
        CustomerCommand::List(l) => {
            let mut collection = collection(&l.tenant);
            if let Some(tag) = &l.tag {
                collection.push_str(&format!("?tag={tag}"));
            }
            execute(&l.api, Verb::List { collection }).await
        }
        CustomerCommand::Show(k) => {
            let item = item(&k.tenant, &k.number)?;
            execute(&k.api, Verb::Show { item }).await
        }
        CustomerCommand::Delete(k) => {
            let item = item(&k.tenant, &k.number)?;
            execute(&k.api, Verb::Delete { item }).await
        }
        CustomerCommand::Caller(k) => {
            item(&k.tenant, &k.number)?;
            let item = format!(
                "/api/v1/tenants/{}/callers/{}",
                k.tenant,
                k.number.trim_start_matches('+')
            );
            execute(&k.api, Verb::Show { item }).await
        }
        CustomerCommand::Import(i) => {
            let Value::Array(all) = read_json(&i.file, "a JSON array of customers")? else {
                return Err(usage_err(
                    "E-FILE-JSON",
                    format!("{} is not a JSON array", i.file.display()),
                    "give the customers as [{\"number\": ...}, ...]",
                ));
            };
            let client = ApiClient::new(&i.api.api, i.api.token.as_deref())?;
            let (mut created, mut updated) = (0, 0);
            for chunk in all.chunks(IMPORT_CHUNK) {
                let answer = client
                    .request(
                        Method::POST,
                        &format!("{}/import", collection(&i.tenant)),
                        Some(&Value::Array(chunk.to_vec())),
                    )
                    .await?;
                created += answer["created"].as_u64().unwrap_or(0);
                updated += answer["updated"].as_u64().unwrap_or(0);
            }
            output::print(
                &json!({"created": created, "updated": updated}),
                i.api.output,
            );
            Ok(())
        }
    }
}
