//! Extensions: the API takes a clear password and stores only its digest HA1s (realm = the
//! tenant's SIP domain). Reads never return the hashes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use model::{ConfigItem, ConfigKey, Extension, ExtensionId, TenantId};

use super::commands::write;
use super::config_items::body_object;
use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/tenants/{tenant}/extensions", get(list).post(create))
        .route(
            "/tenants/{tenant}/extensions/{id}",
            get(show).put(update).delete(delete),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionBody {
    tenant: TenantId,
    id: ExtensionId,
    password: String,
}

/// What the API shows of an extension: never its hashes.
fn view(state: &model::ReplicatedState, e: &Extension) -> Value {
    let now = model::unix_ms(std::time::SystemTime::now());
    let bindings = state.live_bindings(&e.tenant, &e.id, now).len();
    json!({"tenant": e.tenant, "id": e.id, "bindings": bindings})
}

async fn list(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let tenant: TenantId = parse_id(&tenant)?;
    Ok(Json(state.cluster.read(|s| {
        s.extensions
            .values()
            .filter(|e| e.tenant == tenant)
            .map(|e| view(s, e))
            .collect()
    })))
}

async fn show(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tenant: TenantId = parse_id(&tenant)?;
    let id: ExtensionId = parse_id(&id)?;
    state
        .cluster
        .read(|s| s.extension(&tenant, &id).map(|e| view(s, e)))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("extension {tenant}/{id}")))
}

/// Hashes the body's password for the tenant's realm.
fn extension(
    state: &Shared,
    tenant: &TenantId,
    id: Option<&str>,
    body: &[u8],
) -> ApiResult<Extension> {
    let map = body_object(body, Some(tenant), id)?;
    let body: ExtensionBody = serde_json::from_value(Value::Object(map))
        .map_err(|e| ApiError::bad_body(format!("extension: {e}")))?;
    let realm = state
        .cluster
        .read(|s| s.tenants.get(tenant.as_str()).map(|t| t.domain.clone()))
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant}")))?;
    Extension::with_password(body.tenant, body.id, &body.password, &realm)
        .map_err(ApiError::invalid)
}

async fn create(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant: TenantId = parse_id(&tenant)?;
    let ext = extension(&state, &tenant, None, &body)?;
    write(
        &state,
        model::Command::Create {
            item: ConfigItem::Extension(ext.clone()),
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": ext.tenant, "id": ext.id})),
    ))
}

async fn update(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let tenant: TenantId = parse_id(&tenant)?;
    parse_id::<ExtensionId>(&id)?;
    let ext = extension(&state, &tenant, Some(&id), &body)?;
    write(
        &state,
        model::Command::Update {
            item: ConfigItem::Extension(ext.clone()),
        },
    )
    .await?;
    Ok(Json(json!({"tenant": ext.tenant, "id": ext.id})))
}

async fn delete(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant: TenantId = parse_id(&tenant)?;
    let id: ExtensionId = parse_id(&id)?;
    write(
        &state,
        model::Command::Delete {
            key: ConfigKey::Extension { tenant, id },
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
