//! `FaultTable`: per-peer fault injection for cluster traffic (the Raft transport, forwarded
//! writes, and the actor mesh), checked before every send. Empty in production; drills fill
//! it through the admin API (when the node allows it) to partition or slow down peers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What to do to traffic sent to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail the request as if the peer were unreachable.
    Drop,
    /// Hold the request this long before sending it.
    Delay(Duration),
}

/// Shared table of faults by target node id; clones share the table.
#[derive(Clone, Debug, Default)]
pub struct FaultTable {
    faults: Arc<RwLock<HashMap<u64, Fault>>>,
}

impl FaultTable {
    pub fn set(&self, peer: u64, fault: Fault) {
        self.faults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, fault);
    }

    pub fn clear(&self, peer: u64) {
        self.faults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }

    pub fn clear_all(&self) {
        self.faults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Every fault set, by peer.
    pub fn list(&self) -> Vec<(u64, Fault)> {
        let mut all: Vec<(u64, Fault)> = self
            .faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }

    /// The fault for traffic to `peer`, if any.
    pub fn get(&self, peer: u64) -> Option<Fault> {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
    }
}
