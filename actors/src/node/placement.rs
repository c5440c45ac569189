//! Rendezvous (highest-random-weight) placement of center, queue and agent actors over the
//! voting nodes (DESIGN.md "Placement and ownership"). Every node computes the same owner
//! from the same membership, with no coordination; when a node leaves, only the keys it
//! owned move.

use model::NodeId;

/// 64-bit FNV-1a, then a SplitMix64 finaliser for avalanche. Hand-written because it must be
/// stable across builds and Rust versions (std's hasher is not), and it is ten lines.
fn score(key: &str, node: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes().iter().chain(node.to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `key` among `nodes` (None when there are none).
pub fn owner(key: &str, nodes: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    nodes.into_iter().max_by_key(|n| (score(key, *n), *n))
}

/// Placement keys, so every caller spells them the same way.
pub fn queue_key(tenant: &model::TenantId, queue: &model::QueueId) -> String {
    format!("queue/{tenant}/{queue}")
}
pub fn agent_key(tenant: &model::TenantId, agent: &model::AgentId) -> String {
    format!("agent/{tenant}/{agent}")
}
/// A call is placed only when its node dies: this picks the node that takes it over.
pub fn call_key(call: &model::CallId) -> String {
    format!("call/{call}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spreads() {
        let nodes = [1u64, 2, 3];
        let mut counts = [0usize; 4];
        for i in 0..3000 {
            let key = format!("agent/gd/{i}");
            let o = owner(&key, nodes).unwrap();
            assert_eq!(Some(o), owner(&key, nodes), "deterministic");
            counts[o as usize] += 1;
        }
        for (n, count) in counts.iter().enumerate().skip(1) {
            assert!(*count > 800, "node {n} got {count} of 3000");
        }
        // Removing node 3 moves only node 3's keys.
        for i in 0..300 {
            let key = format!("queue/gd/{i}");
            let before = owner(&key, nodes).unwrap();
            let after = owner(&key, [1u64, 2]).unwrap();
            if before != 3 {
                assert_eq!(before, after);
            }
        }
    }
}
