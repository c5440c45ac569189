//! The registrar (RFC 3261 10.3) with digest authentication (RFC 2617/7616; SHA-256 and MD5
//! per RFC 8760). Bindings are written through Raft, so the node that owns a call can reach a
//! phone that registered anywhere, and a phone may register with two nodes at once (R1.3).
//! Nonces are minted from a secret all nodes share, so a challenge from one node is
//! answered correctly at another.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, warn};

use model::{Binding, Command};
use sip::digest::{Algorithm, Challenge, Credentials, NonceCheck, NonceIssuer};
use sip::message::{Request, Response};
use sip::transaction::Transport;

use super::Runtime;

/// A nonce is good for five minutes.
const NONCE_MAX_AGE_SECS: u64 = 300;

pub async fn handle(
    rt: &Arc<Runtime>,
    request: &Request,
    source: SocketAddr,
    transport: Transport,
) -> Response {
    let register = match sip::registrar::parse_register(request) {
        Ok(r) => r,
        Err((status, reason)) => {
            let mut response = Response::for_request(request, status, reason);
            if status == 423 {
                response.headers.set("Min-Expires", "60");
            }
            return response;
        }
    };
    let found = rt.cluster.read(|s| {
        let tenant = s.tenant_by_domain(&register.aor_domain)?.clone();
        let extension = register.aor_user.parse::<model::ExtensionId>().ok()?;
        let stored = s.extension(&tenant.id, &extension)?.clone();
        Some((tenant, extension, stored))
    });
    let Some((tenant, extension, stored)) = found else {
        return Response::for_request(request, 404, "Not Found");
    };
    let realm = tenant.domain.clone();
    let issuer = NonceIssuer::new(rt.config.secret.as_bytes());
    let now_secs = rt.now_ms() / 1000;
    let challenge = |stale: bool| {
        let mut response = Response::for_request(request, 401, "Unauthorized");
        // RFC 8760 3: offer the strongest algorithm first.
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            let c = Challenge {
                realm: realm.clone(),
                nonce: issuer.issue(now_secs),
                algorithm,
                opaque: None,
                stale,
            };
            response
                .headers
                .push("WWW-Authenticate", c.to_header_value());
        }
        response
    };
    let Some(credentials) = request
        .headers
        .get("Authorization")
        .and_then(Credentials::parse)
    else {
        return challenge(false);
    };
    if credentials.username != extension.as_str() || credentials.realm != realm {
        warn!(tenant = %tenant.id, "REGISTER with credentials for another user or realm");
        return challenge(false);
    }
    match issuer.check(&credentials.nonce, now_secs, NONCE_MAX_AGE_SECS) {
        NonceCheck::Valid => {}
        NonceCheck::Stale => return challenge(true),
        _ => return challenge(false),
    }
    let ha1 = match credentials.algorithm {
        Algorithm::Sha256 => &stored.ha1_sha256,
        Algorithm::Md5 => &stored.ha1_md5,
    };
    if !credentials.verify(request.method.as_str(), ha1) {
        metrics::counter!("callgrid_register_auth_failures_total").increment(1);
        return Response::for_request(request, 403, "Forbidden");
    }

    let now_ms = rt.now_ms();
    let node = rt.node_id();
    let mut commands = Vec::new();
    if register.remove_all {
        commands.push(Command::Unregister {
            tenant: tenant.id.clone(),
            extension: extension.clone(),
            node,
            contact: None,
        });
    }
    for contact in &register.contacts {
        let contact_text = contact.uri.to_string();
        if contact.expires_secs == 0 {
            commands.push(Command::Unregister {
                tenant: tenant.id.clone(),
                extension: extension.clone(),
                node,
                contact: Some(contact_text),
            });
        } else {
            let binding = Binding {
                tenant: tenant.id.clone(),
                extension: extension.clone(),
                contact: contact_text,
                source,
                transport: match transport {
                    Transport::Tcp => "tcp".into(),
                    _ => "udp".into(),
                },
                node,
                call_id: register.call_id.clone(),
                cseq: register.cseq,
                expires_at_ms: now_ms + u64::from(contact.expires_secs) * 1000,
            };
            commands.push(Command::Register { binding, now_ms });
        }
    }
    if !commands.is_empty() {
        let command = if commands.len() == 1 {
            commands.remove(0)
        } else {
            Command::Batch { commands }
        };
        match rt.cluster.write(command).await {
            Ok(outcome) if outcome.error.is_none() => {}
            Ok(outcome) => {
                warn!(error = ?outcome.error, "binding refused");
                return Response::for_request(request, 500, "Server Internal Error");
            }
            Err(error) => {
                // No quorum: the phone retries; a 503 with Retry-After tells it when.
                warn!(%error, "binding not replicated");
                let mut response = Response::for_request(request, 503, "Service Unavailable");
                response.headers.set("Retry-After", "5");
                return response;
            }
        }
    }
    debug!(tenant = %tenant.id, extension = %extension, "registered");
    let mut response = Response::for_request(request, 200, "OK");
    let bindings = rt.cluster.read(|s| {
        s.live_bindings(&tenant.id, &extension, now_ms)
            .into_iter()
            .filter(|b| b.node == node)
            .cloned()
            .collect::<Vec<_>>()
    });
    for b in bindings {
        let expires = b.expires_at_ms.saturating_sub(now_ms) / 1000;
        response
            .headers
            .push("Contact", format!("<{}>;expires={expires}", b.contact));
    }
    response
}
