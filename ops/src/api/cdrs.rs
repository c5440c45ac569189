//! `GET /api/v1/cdrs?tenant=&from=&to=&caller=&agent=&limit=`: CDRs from the replicated state,
//! filtered, oldest first (newest last); `limit` keeps the newest.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use model::{AgentId, Cdr, TenantId};

use super::error::{parse_id, ApiError, ApiResult};
use super::Shared;

/// The most CDRs one request returns.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
pub struct CdrQuery {
    tenant: Option<String>,
    from: Option<String>,
    to: Option<String>,
    caller: Option<String>,
    agent: Option<String>,
    limit: Option<String>,
}

/// A parsed, validated filter.
#[derive(Debug, Default)]
pub struct CdrFilter {
    tenant: Option<TenantId>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    caller: Option<String>,
    agent: Option<AgentId>,
    limit: usize,
}

fn millis(name: &str, v: Option<&str>) -> ApiResult<Option<u64>> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                ApiError::bad_query(format!("{name} must be Unix milliseconds, not {s:?}"))
            })
        })
        .transpose()
}

impl CdrFilter {
    pub fn parse(q: &CdrQuery) -> ApiResult<Self> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let limit = match nonempty(&q.limit) {
            None => MAX_LIMIT,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ApiError::bad_query(format!("limit must be 1 to {MAX_LIMIT}")))?,
        };
        let caller = nonempty(&q.caller);
        if caller.as_ref().is_some_and(|c| c.len() > 128) {
            return Err(ApiError::bad_query("caller is too long"));
        }
        Ok(CdrFilter {
            tenant: nonempty(&q.tenant).map(|t| parse_id(&t)).transpose()?,
            from_ms: millis("from", q.from.as_deref())?,
            to_ms: millis("to", q.to.as_deref())?,
            caller,
            agent: nonempty(&q.agent).map(|a| parse_id(&a)).transpose()?,
            limit,
        })
    }

    pub fn matches(&self, cdr: &Cdr) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| cdr.tenant.as_ref() == Some(t))
            && self.from_ms.is_none_or(|f| cdr.started_at_ms >= f)
            && self.to_ms.is_none_or(|t| cdr.started_at_ms <= t)
            && self
                .caller
                .as_ref()
                .is_none_or(|c| &cdr.caller == c || cdr.caller.contains(c.as_str()))
            && self
                .agent
                .as_ref()
                .is_none_or(|a| cdr.agent.as_ref() == Some(a))
    }
}

pub async fn list(
    State(state): State<Shared>,
    Query(query): Query<CdrQuery>,
) -> ApiResult<Json<Vec<Arc<Cdr>>>> {
    let filter = CdrFilter::parse(&query)?;
    let mut cdrs: Vec<Arc<Cdr>> = state.cluster.read(|s| {
        s.cdrs
            .values()
            .filter(|c| filter.matches(c))
            .cloned()
            .collect()
    });
    cdrs.sort_by(|a, b| {
        a.started_at_ms
            .cmp(&b.started_at_ms)
            .then_with(|| a.call_id.0.cmp(&b.call_id.0))
    });
    let skip = cdrs.len().saturating_sub(filter.limit);
    Ok(Json(cdrs.split_off(skip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_are_rejected() {
        let q = |f: fn(&mut CdrQuery)| {
            let mut q = CdrQuery::default();
            f(&mut q);
            CdrFilter::parse(&q)
        };
        assert!(q(|_| {}).is_ok());
        assert_eq!(
            q(|q| q.from = Some("yesterday".into())).unwrap_err().code,
            "E-BAD-QUERY"
        );
        assert_eq!(
            q(|q| q.tenant = Some("BAD/ID".into())).unwrap_err().code,
            "E-BAD-ID"
        );
        assert_eq!(
            q(|q| q.limit = Some("0".into())).unwrap_err().code,
            "E-BAD-QUERY"
        );
        assert_eq!(
            q(|q| q.agent = Some("x1".into())).unwrap_err().code,
            "E-BAD-ID"
        );
    }
}
