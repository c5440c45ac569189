//! The API's error body: `{"error":{"code":"E-...","message":"...","hint":"..."}}` with a
//! matching HTTP status. Codes are stable; clients (the CLI) show them to operators.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn bad_id(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "E-BAD-ID",
            e.to_string(),
            "fix the id in the URL",
        )
    }

    pub fn bad_body(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "E-BAD-BODY",
            e.to_string(),
            "send the item as JSON; see /api/v1/openapi.json",
        )
    }

    pub fn bad_query(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "E-BAD-QUERY",
            e.to_string(),
            "fix the query parameters; see /api/v1/openapi.json",
        )
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "E-NOT-FOUND",
            format!("{what} not found"),
            "check the id; list the collection to see what exists",
        )
    }

    /// R4.8: the acting agent lacks the permission.
    pub fn forbidden(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "E-FORBIDDEN",
            e.to_string(),
            "act as an agent with the permission, or grant it (agent update --permissions)",
        )
    }

    pub fn invalid(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "E-INVALID",
            e.to_string(),
            "fix the field named in the message",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "E-UNAUTHORIZED",
            "missing or wrong bearer token",
            "send `Authorization: Bearer <token>` with the token from cluster.json",
        )
    }

    /// A replicated command the state machine rejected.
    pub fn apply(e: model::ApplyError) -> Self {
        use model::ApplyError::*;
        match e {
            NotFound(m) => Self::new(
                StatusCode::NOT_FOUND,
                "E-NOT-FOUND",
                format!("not found: {m}"),
                "create what it refers to first",
            ),
            AlreadyExists(m) => Self::new(
                StatusCode::CONFLICT,
                "E-EXISTS",
                format!("already exists: {m}"),
                "use update, or pick another id",
            ),
            InUse(m) => Self::new(
                StatusCode::CONFLICT,
                "E-IN-USE",
                format!("still in use: {m}"),
                "remove what uses it first",
            ),
            Invalid(m) => Self::invalid(m),
        }
    }

    pub fn cluster(e: cluster::ClusterError) -> Self {
        use cluster::ClusterError::*;
        match &e {
            NoLeader { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E-NO-LEADER",
                e.to_string(),
                "wait for a majority of nodes to be up, then retry",
            ),
            Timeout { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "E-TIMEOUT",
                e.to_string(),
                "check whether the change was applied, then retry",
            ),
            Network(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "E-CLUSTER",
                e.to_string(),
                "check whether the change was applied, then retry",
            ),
            _ => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E-CLUSTER",
                e.to_string(),
                "check the node's log",
            ),
        }
    }

    pub fn node(e: actors::node::NodeError) -> Self {
        use actors::node::NodeError::*;
        match &e {
            NotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                "E-NOT-FOUND",
                e.to_string(),
                "check the ids",
            ),
            Refused(_) => Self::new(
                StatusCode::CONFLICT,
                "E-REFUSED",
                e.to_string(),
                "its current state does not allow this now (see the message)",
            ),
            Timeout(_) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "E-TIMEOUT",
                e.to_string(),
                "the owning node may be down; retry",
            ),
            Cluster(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E-CLUSTER",
                e.to_string(),
                "check the cluster status",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "E-NODE",
                e.to_string(),
                "check the node's log",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "hint": self.hint}});
        (self.status, Json(body)).into_response()
    }
}

/// Parses a path or query id with `model`'s validation.
pub fn parse_id<T: std::str::FromStr>(raw: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    raw.parse::<T>().map_err(ApiError::bad_id)
}
