//! The simulated network between nodes: which processes run, which links are cut (a
//! partition), which are slow, and how often a message is lost. Raft RPCs go through `rpc`
//! (async, on the simulated clock); the actor mesh asks `mesh_link` when it sends.
//!
//! A cut link drops what is in flight on it, as a broken TCP connection does: every cut and
//! every crash bumps the link's generation, and a message delivered under another generation
//! than it was sent under is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::raft::{Raft, RPC_TIMEOUT};
use super::runtime::{next_u64, sleep};

#[derive(Default)]
pub struct NetState {
    /// Running processes and their Raft handles.
    pub running: BTreeMap<u64, Raft>,
    /// Directed links that are cut.
    pub cut: BTreeSet<(u64, u64)>,
    /// Extra one-way delay (upper bound, ms) on slow links.
    pub slow: BTreeMap<(u64, u64), u64>,
    /// Loss of one message in a million.
    pub loss_ppm: u64,
    /// Bumped whenever a link breaks (a cut, or either end crashing).
    pub generation: BTreeMap<(u64, u64), u64>,
}

#[derive(Clone, Default)]
pub struct Net(Arc<Mutex<NetState>>);

impl Net {
    pub fn with<T>(&self, f: impl FnOnce(&mut NetState) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// True when a message can go from `from` to `to` now.
    pub fn link_up(&self, from: u64, to: u64) -> bool {
        self.with(|n| {
            n.running.contains_key(&from)
                && n.running.contains_key(&to)
                && (from == to || !n.cut.contains(&(from, to)))
        })
    }

    pub fn generation(&self, from: u64, to: u64) -> u64 {
        self.with(|n| n.generation.get(&(from, to)).copied().unwrap_or(0))
    }

    /// Breaks every link of `node` (it crashed or was cut off).
    pub fn break_links(&self, node: u64, peers: &[u64]) {
        self.with(|n| {
            for p in peers {
                *n.generation.entry((node, *p)).or_default() += 1;
                *n.generation.entry((*p, node)).or_default() += 1;
            }
        });
    }

    /// One message's fate on a link: its delay, or None if it is lost. `draw` supplies
    /// randomness (the Raft side and the mesh side use different seeded streams).
    pub fn sample(&self, from: u64, to: u64, mut draw: impl FnMut() -> u64) -> Option<u64> {
        let (loss, slow) = self.with(|n| (n.loss_ppm, n.slow.get(&(from, to)).copied()));
        if from != to && draw() % 1_000_000 < loss {
            return None;
        }
        let base = 1 + draw() % 4;
        let extra = slow.map_or(0, |max| draw() % (max + 1));
        Some(base + extra)
    }

    /// A Raft RPC from `from` to `to`: delayed, possibly lost, refused by a cut link or a
    /// dead process, and its answer comes back the same way.
    pub async fn rpc<T, F, Fut>(&self, from: u64, to: u64, call: F) -> Result<T, String>
    where
        F: FnOnce(Raft) -> Fut,
        Fut: Future<Output = T>,
    {
        let generation = self.generation(from, to);
        let Some(delay) = self.sample(from, to, next_u64) else {
            sleep(RPC_TIMEOUT).await;
            return Err(format!("request {from}->{to} lost"));
        };
        sleep(Duration::from_millis(delay)).await;
        let target = self.with(|n| {
            let up = n.running.contains_key(&from) && !n.cut.contains(&(from, to));
            let same = n.generation.get(&(from, to)).copied().unwrap_or(0) == generation;
            n.running.get(&to).filter(|_| up && same).cloned()
        });
        let Some(raft) = target else {
            sleep(RPC_TIMEOUT.saturating_sub(Duration::from_millis(delay))).await;
            return Err(format!("{to} unreachable from {from}"));
        };
        let result = call(raft).await;
        let generation = self.generation(to, from);
        let Some(delay) = self.sample(to, from, next_u64) else {
            sleep(RPC_TIMEOUT).await;
            return Err(format!("answer {to}->{from} lost"));
        };
        sleep(Duration::from_millis(delay)).await;
        if !self.link_up(to, from) || self.generation(to, from) != generation {
            return Err(format!("answer {to}->{from} cut"));
        }
        Ok(result)
    }
}
