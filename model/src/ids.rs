//! Newtype identifiers. Every id that crosses an API is validated once, here, so the rest of
//! the code can trust it (R10.4: input validation of format and length on every interface).

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ModelError;

/// Defines a validated string id: `$valid` decides which strings are ids, `$rule` says so in
/// error messages.
macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the value.
            pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
                let value = value.into();
                let valid: fn(&str) -> bool = $valid;
                if valid(&value) {
                    Ok(Self(value))
                } else {
                    Err(ModelError::InvalidId { what: $what, value: crate::truncate(&value) })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = ModelError;
            fn try_from(value: String) -> Result<Self, ModelError> {
                Self::new(value)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, ModelError> {
                Self::new(s)
            }
        }
    };
}

/// A name: 1-32 characters of `a-z 0-9 _ -`.
macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        validated_id!($(#[$doc])* $name, $what, is_name);
    };
}

/// A dial string: 1-20 digits.
macro_rules! number_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        validated_id!($(#[$doc])* $name, $what, |v| is_digits(v, 20));
    };
}

name_id!(
    /// A virtual call center (tenant), usually a province: `gd`.
    TenantId, "tenant id");
name_id!(
    /// A skill queue within a tenant: `billing`.
    QueueId, "queue id");
name_id!(
    /// An IVR flow within a tenant.
    FlowId, "flow id");
name_id!(
    /// A prompt (recorded announcement) within a tenant.
    PromptId, "prompt id");
name_id!(
    /// A carrier trunk (system-wide).
    TrunkId, "trunk id");
number_id!(
    /// An agent's number within its tenant: `1001`.
    AgentId, "agent number");
number_id!(
    /// A phone extension within a tenant; also the SIP user name it registers with.
    ExtensionId, "extension");
number_id!(
    /// A known caller's number within a tenant (R3.12), normalised like dialled numbers
    /// (`routing::normalise_number`): `075512345678`.
    CustomerId, "customer number");

/// A cluster node id. Never reused (openraft requirement, see ARCHITECTURE.md).
pub type NodeId = u64;

/// A call's cluster-wide id, minted by the node that received it: `<node>-<counter>-<random>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CallId(pub String);

impl CallId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn is_name(value: &str) -> bool {
    (1..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(crate) fn is_digits(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(TenantId::new("gd").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("GD").is_err());
        assert!(TenantId::new("a".repeat(33)).is_err());
        assert!(QueueId::new("billing-2").is_ok());
        assert!(AgentId::new("1001").is_ok());
        assert!(AgentId::new("10a1").is_err());
        let parsed: Result<TenantId, _> = serde_json::from_str("\"../etc\"");
        assert!(parsed.is_err(), "serde goes through validation too");
    }
}
