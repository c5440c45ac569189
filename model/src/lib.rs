//! # model: callgrid's domain types
//!
//! What every other crate agrees on: validated ids (`ids`), the configuration schema that
//! admins write through Raft (`config`, `flow`), the runtime records Raft replicates so any
//! node can act on them (`runtime`: registrations, agent sessions, CDRs), the replicated
//! command set and its pure `apply` (`state`), province routing of dialled numbers
//! (`routing`), and the sample configuration (`sample`).
//!
//! Invariants kept here:
//! - An id that exists is valid (format and length checked at construction and by serde).
//! - `ReplicatedState::apply` is deterministic and total: a rejected command leaves the state
//!   unchanged and reports why; no command can panic a node.
//! - A tenant's items only ever refer to items of the same tenant (I5).
//!
//! No IO, no clock, no async: this crate is pure.

pub mod bench;
pub mod config;
pub mod flow;
pub mod ids;
pub mod routing;
pub mod runtime;
pub mod sample;
pub mod script;
pub mod state;
mod tagged;

pub use config::*;
pub use flow::*;
pub use ids::*;
pub use runtime::*;
pub use script::*;
pub use state::{ApplyError, Command, Outcome, ReplicatedState};

use md5::Md5;
use sha2::{Digest, Sha256};

/// Errors in values handed to the model (bad ids, out-of-range settings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("invalid {what} {value:?}: use 1-32 characters a-z 0-9 _ - (numbers: 1-20 digits)")]
    InvalidId { what: &'static str, value: String },
    #[error("invalid {field}: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

/// Cuts a value for an error message so a huge input cannot blow up logs.
pub(crate) fn truncate(value: &str) -> String {
    value.chars().take(40).collect()
}

/// HA1 for MD5 digest (RFC 2617 3.2.2.2): MD5(user:realm:password), hex.
pub fn digest_ha1_md5(user: &str, realm: &str, password: &str) -> String {
    hex::encode(Md5::digest(format!("{user}:{realm}:{password}").as_bytes()))
}

/// HA1 for SHA-256 digest (RFC 7616 3.4.2, RFC 8760).
pub fn digest_ha1_sha256(user: &str, realm: &str, password: &str) -> String {
    hex::encode(Sha256::digest(
        format!("{user}:{realm}:{password}").as_bytes(),
    ))
}

/// Unix milliseconds of a `SystemTime`, for stamping commands at the proposer.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
