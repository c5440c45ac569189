//! The HTTP client every admin verb uses: bearer token, JSON in and out, and the API's
//! `{"error":{"code","message","hint"}}` bodies turned back into `OpsError`s.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::error::{ops_err, usage_err, OpsError};

/// How long one admin request may take (a Raft write is bounded by 5 s on the server).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// Builds a client for `base` (`http://127.0.0.11:8000`); the token is required.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            usage_err(
                "E-NO-TOKEN",
                "no admin token given",
                "pass --token T or set CALLGRID_TOKEN (see DIR/cluster.json)",
            )
        })?;
        if token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(usage_err(
                "E-BAD-TOKEN",
                "the token contains spaces or control characters",
                "copy the token from DIR/cluster.json",
            ));
        }
        let base = normalise_base(base)?;
        Ok(ApiClient {
            http: http_client(REQUEST_TIMEOUT)?,
            base,
            token: token.to_string(),
        })
    }

    /// Sends a request to `path` (starting with `/`) and returns the JSON body
    /// (`Value::Null` for an empty body).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            ops_err(
                "E-API-UNREACHABLE",
                format!("cannot reach {url}: {}", describe_reqwest(&e)),
                "check --api (CALLGRID_API) and that the node is up (`callgrid cluster status --dir DIR`)",
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            ops_err(
                "E-API-READ",
                format!("reading the answer of {method} {path} failed: {e}"),
                "retry",
            )
        })?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(json);
        }
        Err(api_error(status.as_u16(), &json, &bytes))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, None).await
    }
}

/// A plain client with a timeout (also used by `cluster up` health polling).
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| {
            ops_err(
                "E-HTTP-CLIENT",
                format!("cannot build the HTTP client: {e}"),
                "report this bug",
            )
        })
}

/// Accepts `http://host:port`, `host:port`; strips trailing slashes.
pub fn normalise_base(base: &str) -> anyhow::Result<String> {
    let base = base.trim().trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    match reqwest::Url::parse(&base) {
        Ok(url) if url.scheme() == "http" || url.scheme() == "https" => Ok(base),
        _ => Err(usage_err(
            "E-BAD-API-URL",
            format!("{base:?} is not an http URL"),
            "pass --api http://HOST:PORT",
        )),
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        e.to_string()
    }
}

/// Turns an error answer into an `OpsError` with the server's code and hint.
fn api_error(status: u16, json: &Value, raw: &[u8]) -> anyhow::Error {
    let error = &json["error"];
    let code = error["code"]
        .as_str()
        .map(leak_code)
        .unwrap_or(match status {
            401 => "E-UNAUTHORIZED",
            404 => "E-NOT-FOUND",
            _ => "E-API",
        });
    let message = error["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        });
    let hint = error["hint"]
        .as_str()
        .unwrap_or("see the node logs")
        .to_string();
    anyhow::Error::new(OpsError::new(code, message, hint))
}

/// Error codes are a small fixed set (`E-...`); keep the server's one if it looks like a code.
fn leak_code(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "E-UNAUTHORIZED",
        "E-NOT-FOUND",
        "E-EXISTS",
        "E-IN-USE",
        "E-INVALID",
        "E-BAD-ID",
        "E-BAD-BODY",
        "E-TENANT-MISMATCH",
        "E-ID-MISMATCH",
        "E-NO-LEADER",
        "E-TIMEOUT",
        "E-CLUSTER",
        "E-REFUSED",
        "E-NODE",
        "E-BAD-QUERY",
        "E-TOO-LARGE",
        "E-PEER",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("E-API")
}
