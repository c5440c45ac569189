//! `FaultTable`: per-peer fault injection for the Raft transport, checked before every send.
//! Empty in production; the chaos harness fills it to partition or slow down peers.

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

    /// The fault for traffic to `peer`, if any.
    pub fn get(&self, peer: u64) -> Option<Fault> {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
    }
}
