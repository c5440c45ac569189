//! # cluster: callgrid's Raft group
//!
//! This crate owns the one openraft group that replicates configuration and runtime
//! checkpoints (`model::Command`) to every node, and the node-to-node transport it runs on.
//!
//! Main types:
//! - `Cluster` (`node`): the public handle. `start` opens RocksDB, binds the Raft listener,
//!   starts openraft and, on a fresh store of the lowest-id initial voter, initializes the
//!   cluster; `write` commits a command (forwarding to the leader when needed); `read` and
//!   `subscribe` expose the applied state and the stream of applied commands.
//! - `LogStore` (`log_store`): openraft's log storage on `storage::Db`.
//! - `StateMachineStore` (`state_machine`): applies entries to `model::ReplicatedState`,
//!   builds, persists and installs snapshots, and publishes `Applied` events.
//! - `network`: Raft RPCs over TCP with length-prefixed JSON frames, plus a `FaultTable`.
//! - `types`: openraft's `TypeConfig` and `NodeInfo`.
//! - `liveness`: leases (heartbeats committed through Raft) and the leader's failure
//!   detector, which commits `NodeDown` for a silent voter.
//!
//! Call order: `Cluster::start` -> `wait_ready` -> any of `write`/`read`/`subscribe`/`status`
//! -> `shutdown`. Drop every `Arc<Cluster>` clone after `shutdown` before starting a node on
//! the same data directory again in the same process.
//!
//! Invariants:
//! - An append (and a vote) is acknowledged to openraft only after RocksDB synced its WAL.
//! - Applying is pure: `ReplicatedState::apply` reads no clock and no IO, so every replica
//!   computes the same state and outcome from the same log.
//! - Node ids are never reused; a removed node's id stays retired.
//! - A forwarded write is retried only when it was certainly not sent or not accepted; once
//!   it may have reached the leader, a failure is reported, never silently retried.

mod combiner;
pub mod config;
mod error;
pub mod liveness;
pub mod log_store;
pub mod network;
mod node;
pub mod snapshot_files;
pub mod state_machine;
pub mod types;

pub use combiner::FAILURES_TOTAL as COMBINER_FAILURES_TOTAL;
pub use config::ClusterConfig;
pub use error::ClusterError;
pub use liveness::{LeaseConfig, Liveness};
pub use node::{Cluster, ClusterStatus, WRITE_TIMEOUT};
pub use state_machine::{Applied, APPLIED_CHANNEL_CAPACITY};
pub use types::{NodeInfo, TypeConfig};
