//! Outbound webhooks: the lost-call notice (R3.22) to the tenant's SMS gateway interface.
//! Non-critical (R2.x): a gateway that is down costs the notice, never the call; failures are
//! logged and counted (`callgrid_lost_call_notices_total{result}`).

use std::time::Duration;

use model::Cdr;
use serde_json::json;
use tracing::{info, warn};

/// Attempts per notice, with 1 s then 2 s between them.
const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Posts `{"event": "lost_call", "node", "caller", ..., "cdr"}` to `url`: a caller who asked
/// for a human at IVR node `node` never reached one.
pub async fn lost_call(url: String, node: String, cdr: Box<Cdr>) {
    let body = json!({
        "event": "lost_call",
        "node": node,
        "tenant": cdr.tenant,
        "caller": cdr.caller,
        "dialled": cdr.dialled,
        "queue": cdr.queue,
        "disposition": cdr.disposition,
        "ended_at_ms": cdr.ended_at_ms,
        "cdr": cdr,
    });
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(error) => {
            warn!(%error, "lost-call notice: no HTTP client");
            return;
        }
    };
    for attempt in 1..=ATTEMPTS {
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                info!(url, call = %cdr.call_id, "lost-call notice sent");
                metrics::counter!("callgrid_lost_call_notices_total", "result" => "sent")
                    .increment(1);
                return;
            }
            Ok(r) => warn!(url, status = %r.status(), attempt, "lost-call notice refused"),
            Err(error) => warn!(url, %error, attempt, "lost-call notice failed"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
    metrics::counter!("callgrid_lost_call_notices_total", "result" => "failed").increment(1);
}
