//! Province routing (R2.2, R2.3): the carrier puts the caller's landing (area) code in front of
//! the access code, so `075595598` is access code 95598 landing in 0755, which belongs to gd.

use serde::{Deserialize, Serialize};

use crate::config::Entry;
use crate::ids::TenantId;
use crate::state::ReplicatedState;

/// Where a dialled number leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub tenant: TenantId,
    pub access_code: String,
    pub landing_code: Option<String>,
    pub entry: Entry,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no virtual center serves this number")]
    NoRoute,
    #[error("the access code is served by several virtual centers and no landing code says which")]
    Ambiguous,
}

/// Normalises what carriers send: `+86755...` and `86755...` become `0755...`; a mobile
/// `+8613800000000` becomes `13800000000`.
pub fn normalise_number(dialled: &str) -> String {
    // With a `+` the country code is certain; without it, only a long `86...` number is
    // taken as international (a short one may be a local number starting with 86).
    let (plus, digits) = match dialled.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, dialled),
    };
    match digits.strip_prefix("86") {
        // A mobile number (11 digits from 1) has no trunk prefix.
        Some(rest) if (plus || digits.len() >= 12) && is_mobile(rest) => rest.to_string(),
        Some(rest) if (plus || digits.len() >= 12) && !rest.starts_with('0') => format!("0{rest}"),
        _ => digits.to_string(),
    }
}

fn is_mobile(digits: &str) -> bool {
    digits.len() == 11 && digits.starts_with('1') && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves a dialled number: landing code + access code first; a bare access code only when
/// exactly one tenant has it.
pub fn resolve(state: &ReplicatedState, dialled: &str) -> Result<Route, RouteError> {
    let number = normalise_number(dialled);
    let mut bare = Vec::new();
    for tenant in state.tenants.values() {
        for access in &tenant.access_codes {
            for landing in &tenant.landing_codes {
                if number.len() == landing.len() + access.code.len()
                    && number.starts_with(landing.as_str())
                    && number.ends_with(access.code.as_str())
                {
                    return Ok(Route {
                        tenant: tenant.id.clone(),
                        access_code: access.code.clone(),
                        landing_code: Some(landing.clone()),
                        entry: access.entry.clone(),
                    });
                }
            }
            if number == access.code {
                bare.push(Route {
                    tenant: tenant.id.clone(),
                    access_code: access.code.clone(),
                    landing_code: None,
                    entry: access.entry.clone(),
                });
            }
        }
    }
    match bare.len() {
        0 => Err(RouteError::NoRoute),
        1 => Ok(bare.remove(0)),
        _ => Err(RouteError::Ambiguous),
    }
}
