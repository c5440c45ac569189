//! Known callers (R3.12): the customer lists a center routes by (tags, level), managed one by
//! one or imported in bulk, and a caller's recent calls (R3.16, read-only).
//!
//! Numbers are normalised like dialled numbers (`+8675512345678` is stored as
//! `075512345678`), so a record matches however the carrier presents the caller.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use model::routing::normalise_number;
use model::state::key;
use model::{Command, ConfigItem, ConfigKey, Customer, CustomerId, PastCall, TenantId};

use super::commands::write;
use super::config_items::body_object;
use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

/// The most customers one import may carry (one Raft entry).
pub const IMPORT_MAX: usize = 5_000;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/tenants/{tenant}/customers", get(list).post(create))
        .route("/tenants/{tenant}/customers/import", post(import))
        .route(
            "/tenants/{tenant}/customers/{number}",
            get(show).put(update).delete(delete),
        )
        .route("/tenants/{tenant}/callers/{number}", get(caller))
}

fn number(raw: &str) -> ApiResult<CustomerId> {
    parse_id(&normalise_number(raw))
}

/// A customer from a JSON object: the tenant from the path (a different one is a 400), the
/// number normalised.
fn customer(value: &Value, tenant: &TenantId) -> ApiResult<Customer> {
    let body = serde_json::to_vec(value).map_err(ApiError::bad_body)?;
    let mut map = body_object(&body, Some(tenant), None)?;
    if let Some(Value::String(n)) = map.get_mut("number") {
        *n = normalise_number(n);
    }
    let c: Customer = serde_json::from_value(Value::Object(map))
        .map_err(|e| ApiError::bad_body(format!("customer: {e}")))?;
    c.validate().map_err(ApiError::invalid)?;
    Ok(c)
}

#[derive(Deserialize)]
pub struct ListQuery {
    tag: Option<String>,
}

async fn list(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<Customer>>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let prefix = format!("{tenant}/");
    Ok(Json(state.cluster.read(|s| {
        s.customers
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, c)| c)
            .filter(|c| query.tag.as_ref().is_none_or(|t| c.tags.contains(t)))
            .cloned()
            .collect()
    })))
}

async fn show(
    State(state): State<Shared>,
    Path((tenant, raw)): Path<(String, String)>,
) -> ApiResult<Json<Customer>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let n = number(&raw)?;
    state
        .cluster
        .read(|s| s.customers.get(&key(&tenant, n.as_str())).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("customer {tenant}/{n}")))
}

async fn create(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Customer>)> {
    let tenant: TenantId = parse_id(&tenant)?;
    let value = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    let c = customer(&value, &tenant)?;
    write(
        &state,
        Command::Create {
            item: ConfigItem::Customer(c.clone()),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(c)))
}

async fn update(
    State(state): State<Shared>,
    Path((tenant, raw)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Customer>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let n = number(&raw)?;
    let mut value: Value = serde_json::from_slice(&body).map_err(ApiError::bad_body)?;
    if let Value::Object(map) = &mut value {
        map.entry("number")
            .or_insert_with(|| Value::String(n.to_string()));
    }
    let c = customer(&value, &tenant)?;
    if c.number != n {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E-ID-MISMATCH",
            format!("the body's number {} differs from the URL's {n}", c.number),
            "make the body's \"number\" match the URL, or leave it out",
        ));
    }
    write(
        &state,
        Command::Update {
            item: ConfigItem::Customer(c.clone()),
        },
    )
    .await?;
    Ok(Json(c))
}

async fn delete(
    State(state): State<Shared>,
    Path((tenant, raw)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant: TenantId = parse_id(&tenant)?;
    let number = number(&raw)?;
    write(
        &state,
        Command::Delete {
            key: ConfigKey::Customer { tenant, number },
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize)]
pub struct Imported {
    pub created: usize,
    pub updated: usize,
}

/// `POST .../customers/import` with a JSON array: every record is checked first (a bad one
/// fails the whole import, naming its index, and nothing is written); then all are written
/// in one Raft entry, new numbers created and known ones replaced.
async fn import(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Imported>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let values: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_body(format!("a JSON array of customers: {e}")))?;
    if values.len() > IMPORT_MAX {
        return Err(ApiError::bad_body(format!(
            "{} customers in one import; send at most {IMPORT_MAX} per request",
            values.len()
        )));
    }
    let mut customers = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let c = customer(value, &tenant).map_err(|mut e| {
            e.message = format!("customer #{i}: {}", e.message);
            e
        })?;
        customers.push(c);
    }
    if !state
        .cluster
        .read(|s| s.tenants.contains_key(tenant.as_str()))
    {
        return Err(ApiError::not_found(format!("tenant {tenant}")));
    }
    let (mut created, mut updated) = (0, 0);
    let commands = state.cluster.read(|s| {
        customers
            .into_iter()
            .map(|c| {
                let item = ConfigItem::Customer(c);
                if s.customers
                    .contains_key(&key(&tenant, customer_number(&item)))
                {
                    updated += 1;
                    Command::Update { item }
                } else {
                    created += 1;
                    Command::Create { item }
                }
            })
            .collect()
    });
    write(&state, Command::Batch { commands }).await?;
    Ok(Json(Imported { created, updated }))
}

fn customer_number(item: &ConfigItem) -> &str {
    match item {
        ConfigItem::Customer(c) => c.number.as_str(),
        _ => "",
    }
}

#[derive(Serialize, Deserialize)]
pub struct CallerView {
    pub number: String,
    pub customer: Option<Customer>,
    /// The caller's recent calls, oldest first (R3.16).
    pub history: Vec<PastCall>,
}

/// What routing knows of a caller: its customer record and recent calls.
async fn caller(
    State(state): State<Shared>,
    Path((tenant, raw)): Path<(String, String)>,
) -> ApiResult<Json<CallerView>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let n = number(&raw)?;
    Ok(Json(state.cluster.read(|s| CallerView {
        number: n.to_string(),
        customer: s.customer(&tenant, n.as_str()).cloned(),
        history: s.caller_history(&tenant, n.as_str()).to_vec(),
    })))
}
