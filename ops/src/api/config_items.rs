//! Configuration CRUD: tenants and trunks (system-wide), queues, flows and prompts (per
//! tenant); agents reuse the write handlers here (`agents.rs` adds their runtime view).
//! Writes go through Raft; reads come from this node's applied state.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use model::state::key;
use model::{
    Agent, ConfigItem, ConfigKey, Flow, Prompt, Queue, ReplicatedState, Tenant, TenantId, Trunk,
};

use super::commands::write;
use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

/// A kind of configuration item the generic handlers serve.
pub trait Item: Serialize + DeserializeOwned + Clone + Send + 'static {
    const KIND: &'static str;
    fn map(state: &ReplicatedState) -> &BTreeMap<String, Self>;
    fn into_config(self) -> ConfigItem;
    /// The delete key from the path; parsing validates the ids.
    fn key(tenant: Option<&TenantId>, id: &str) -> ApiResult<ConfigKey>;
    fn tenant(&self) -> Option<&TenantId>;
}

macro_rules! scoped_item {
    ($ty:ty, $kind:literal, $map:ident, $variant:ident, $id:ty) => {
        impl Item for $ty {
            const KIND: &'static str = $kind;
            fn map(state: &ReplicatedState) -> &BTreeMap<String, Self> {
                &state.$map
            }
            fn into_config(self) -> ConfigItem {
                ConfigItem::$variant(self.into())
            }
            fn key(tenant: Option<&TenantId>, id: &str) -> ApiResult<ConfigKey> {
                let tenant = tenant
                    .cloned()
                    .ok_or_else(|| ApiError::bad_id("no tenant"))?;
                Ok(ConfigKey::$variant {
                    tenant,
                    id: parse_id::<$id>(id)?,
                })
            }
            fn tenant(&self) -> Option<&TenantId> {
                Some(&self.tenant)
            }
        }
    };
}

scoped_item!(Queue, "queue", queues, Queue, model::QueueId);
scoped_item!(Agent, "agent", agents, Agent, model::AgentId);
scoped_item!(Flow, "flow", flows, Flow, model::FlowId);
scoped_item!(Prompt, "prompt", prompts, Prompt, model::PromptId);

impl Item for Tenant {
    const KIND: &'static str = "tenant";
    fn map(state: &ReplicatedState) -> &BTreeMap<String, Self> {
        &state.tenants
    }
    fn into_config(self) -> ConfigItem {
        ConfigItem::Tenant(self)
    }
    fn key(_: Option<&TenantId>, id: &str) -> ApiResult<ConfigKey> {
        Ok(ConfigKey::Tenant { id: parse_id(id)? })
    }
    fn tenant(&self) -> Option<&TenantId> {
        None
    }
}

impl Item for Trunk {
    const KIND: &'static str = "trunk";
    fn map(state: &ReplicatedState) -> &BTreeMap<String, Self> {
        &state.trunks
    }
    fn into_config(self) -> ConfigItem {
        ConfigItem::Trunk(self)
    }
    fn key(_: Option<&TenantId>, id: &str) -> ApiResult<ConfigKey> {
        Ok(ConfigKey::Trunk { id: parse_id(id)? })
    }
    fn tenant(&self) -> Option<&TenantId> {
        None
    }
}

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/tenants",
            get(list_global::<Tenant>).post(create_global::<Tenant>),
        )
        .route(
            "/tenants/{id}",
            get(show_global::<Tenant>)
                .put(update_global::<Tenant>)
                .delete(delete_global::<Tenant>),
        )
        .route(
            "/trunks",
            get(list_global::<Trunk>).post(create_global::<Trunk>),
        )
        .route(
            "/trunks/{id}",
            get(show_global::<Trunk>)
                .put(update_global::<Trunk>)
                .delete(delete_global::<Trunk>),
        )
        .route(
            "/tenants/{tenant}/queues",
            get(list_scoped::<Queue>).post(create_scoped::<Queue>),
        )
        .route(
            "/tenants/{tenant}/queues/{id}",
            get(show_scoped::<Queue>)
                .put(update_scoped::<Queue>)
                .delete(delete_scoped::<Queue>),
        )
        .route(
            "/tenants/{tenant}/flows",
            get(list_scoped::<Flow>).post(create_scoped::<Flow>),
        )
        .route(
            "/tenants/{tenant}/flows/{id}",
            get(show_scoped::<Flow>)
                .put(update_scoped::<Flow>)
                .delete(delete_scoped::<Flow>),
        )
        .route(
            "/tenants/{tenant}/prompts",
            get(list_scoped::<Prompt>).post(create_scoped::<Prompt>),
        )
        .route(
            "/tenants/{tenant}/prompts/{id}",
            get(show_scoped::<Prompt>)
                .put(update_scoped::<Prompt>)
                .delete(delete_scoped::<Prompt>),
        )
}

/// Parses a body as an object and reconciles its `tenant` and `id` with the path: a missing
/// one is filled from the path, a different one is a 400.
pub fn body_object(
    body: &[u8],
    tenant: Option<&TenantId>,
    id: Option<&str>,
) -> ApiResult<Map<String, Value>> {
    let mut map = match serde_json::from_slice::<Value>(body).map_err(ApiError::bad_body)? {
        Value::Object(map) => map,
        _ => return Err(ApiError::bad_body("the body must be a JSON object")),
    };
    let mut reconcile = |field: &str, expected: &str, code: &'static str| match map.get(field) {
        None | Some(Value::Null) => {
            map.insert(field.to_string(), Value::String(expected.to_string()));
            Ok(())
        }
        Some(Value::String(s)) if s == expected => Ok(()),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("the body's {field} {other} differs from the URL's {expected:?}"),
            format!("make the body's \"{field}\" match the URL, or leave it out"),
        )),
    };
    if let Some(tenant) = tenant {
        reconcile("tenant", tenant.as_str(), "E-TENANT-MISMATCH")?;
    }
    if let Some(id) = id {
        reconcile("id", id, "E-ID-MISMATCH")?;
    }
    Ok(map)
}

fn typed<T: Item>(map: Map<String, Value>) -> ApiResult<T> {
    let item: T = serde_json::from_value(Value::Object(map))
        .map_err(|e| ApiError::bad_body(format!("{}: {e}", T::KIND)))?;
    item.clone()
        .into_config()
        .validate()
        .map_err(ApiError::invalid)?;
    Ok(item)
}

async fn create<T: Item>(state: &Shared, item: T) -> ApiResult<(StatusCode, Json<T>)> {
    write(
        state,
        model::Command::Create {
            item: item.clone().into_config(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(item)))
}

async fn update<T: Item>(state: &Shared, item: T) -> ApiResult<Json<T>> {
    write(
        state,
        model::Command::Update {
            item: item.clone().into_config(),
        },
    )
    .await?;
    Ok(Json(item))
}

fn show<T: Item>(state: &Shared, map_key: &str, what: String) -> ApiResult<Json<T>> {
    state
        .cluster
        .read(|s| T::map(s).get(map_key).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(what))
}

// ---- system-wide items (tenants, trunks) --------------------------------------------------

pub async fn list_global<T: Item>(State(state): State<Shared>) -> Json<Vec<T>> {
    Json(
        state
            .cluster
            .read(|s| T::map(s).values().cloned().collect()),
    )
}

pub async fn show_global<T: Item>(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<T>> {
    T::key(None, &id)?;
    show(&state, &id, format!("{} {id}", T::KIND))
}

pub async fn create_global<T: Item>(
    State(state): State<Shared>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<T>)> {
    let item = typed::<T>(body_object(&body, None, None)?)?;
    create(&state, item).await
}

pub async fn update_global<T: Item>(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<T>> {
    T::key(None, &id)?;
    let item = typed::<T>(body_object(&body, None, Some(&id))?)?;
    update(&state, item).await
}

pub async fn delete_global<T: Item>(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let key = T::key(None, &id)?;
    write(&state, model::Command::Delete { key }).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- per-tenant items ---------------------------------------------------------------------

pub async fn list_scoped<T: Item>(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Vec<T>>> {
    let tenant: TenantId = parse_id(&tenant)?;
    Ok(Json(state.cluster.read(|s| {
        T::map(s)
            .values()
            .filter(|i| i.tenant() == Some(&tenant))
            .cloned()
            .collect()
    })))
}

pub async fn show_scoped<T: Item>(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<T>> {
    let tenant: TenantId = parse_id(&tenant)?;
    T::key(Some(&tenant), &id)?;
    show(
        &state,
        &key(&tenant, &id),
        format!("{} {tenant}/{id}", T::KIND),
    )
}

pub async fn create_scoped<T: Item>(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<T>)> {
    let tenant: TenantId = parse_id(&tenant)?;
    let item = typed::<T>(body_object(&body, Some(&tenant), None)?)?;
    create(&state, item).await
}

pub async fn update_scoped<T: Item>(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<T>> {
    let tenant: TenantId = parse_id(&tenant)?;
    T::key(Some(&tenant), &id)?;
    let item = typed::<T>(body_object(&body, Some(&tenant), Some(&id))?)?;
    update(&state, item).await
}

pub async fn delete_scoped<T: Item>(
    State(state): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant: TenantId = parse_id(&tenant)?;
    let key = T::key(Some(&tenant), &id)?;
    write(&state, model::Command::Delete { key }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_reconciles_tenant_and_id() {
        let gd = TenantId::new("gd").unwrap();
        let m = body_object(br#"{"name":"x"}"#, Some(&gd), Some("q1")).unwrap();
        assert_eq!(m["tenant"], "gd");
        assert_eq!(m["id"], "q1");
        let e = body_object(br#"{"tenant":"gx"}"#, Some(&gd), None).unwrap_err();
        assert_eq!(e.code, "E-TENANT-MISMATCH");
        let e = body_object(br#"{"id":"q2"}"#, Some(&gd), Some("q1")).unwrap_err();
        assert_eq!(e.code, "E-ID-MISMATCH");
        assert_eq!(
            body_object(b"[1]", None, None).unwrap_err().code,
            "E-BAD-BODY"
        );
        assert_eq!(
            body_object(b"{", None, None).unwrap_err().code,
            "E-BAD-BODY"
        );
    }
}
