//! RTP port allocation for a node.
//!
//! RTP uses even ports and leaves the odd port above for RTCP (RFC 3550
//! section 11), so we only hand out even ports. The allocator is shared by
//! every call on the node; it is a small mutex-protected set rather than an
//! actor because allocation is a few syscalls at call setup, never on the
//! packet path.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// Hands out even UDP ports in a range, bound and ready.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    inner: Arc<Mutex<Pool>>,
}

#[derive(Debug)]
struct Pool {
    min_port: u16,
    max_port: u16,
    /// Where the next search starts. Allocation rotates through the range so
    /// a port just released is not reused at once (late packets of the old
    /// call would land in the new one).
    next: u16,
    in_use: HashSet<u16>,
}

impl PortAllocator {
    /// An allocator for the even ports in `min_port..=max_port` (e.g.
    /// 20000-29998). An odd `min_port` is rounded up. The first search starts
    /// at a random even port of the range: a node that restarts would otherwise
    /// hand its first calls the very ports its previous run used, which the
    /// phones of calls it is taking back may still be sending to.
    pub fn new(min_port: u16, max_port: u16) -> PortAllocator {
        use rand::Rng;
        let min_port = min_port.saturating_add(min_port % 2);
        let slots = if min_port <= max_port {
            (max_port - min_port) / 2 + 1
        } else {
            1
        };
        let start = min_port + 2 * rand::thread_rng().gen_range(0..slots);
        PortAllocator {
            inner: Arc::new(Mutex::new(Pool {
                min_port,
                max_port,
                next: start,
                in_use: HashSet::new(),
            })),
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding this lock cannot leave the set inconsistent
        // (every mutation is a single insert or remove), so recover the guard.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Binds a UDP socket on `ip` at the next free even port. A port another
    /// process holds (bind fails) is skipped.
    pub fn bind(&self, ip: IpAddr) -> io::Result<(u16, UdpSocket)> {
        let mut pool = self.pool();
        if pool.min_port > pool.max_port {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty RTP port range",
            ));
        }
        let slots = u32::from(pool.max_port - pool.min_port) / 2 + 1;
        let mut candidate = pool.next;
        for _ in 0..slots {
            let port = candidate;
            candidate = if u32::from(port) + 2 > u32::from(pool.max_port) {
                pool.min_port
            } else {
                port + 2
            };
            if pool.in_use.contains(&port) {
                continue;
            }
            if let Ok(socket) = UdpSocket::bind((ip, port)) {
                pool.in_use.insert(port);
                pool.next = candidate;
                return Ok((port, socket));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free RTP port in the configured range",
        ))
    }

    /// Returns a port to the pool (the caller has dropped its socket).
    pub fn release(&self, port: u16) {
        self.pool().in_use.remove(&port);
    }

    /// How many ports are currently handed out.
    pub fn in_use(&self) -> usize {
        self.pool().in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn hands_out_even_ports_skips_taken_ones_and_releases() {
        let allocator = PortAllocator::new(31001, 31007);
        // Someone else holds 31004.
        let _squatter = UdpSocket::bind((LOOPBACK, 31004));
        let (a, _sa) = allocator.bind(LOOPBACK).expect("31002 free");
        let (b, _sb) = allocator.bind(LOOPBACK).expect("31006 free");
        assert_eq!(a % 2, 0);
        assert_eq!(b % 2, 0);
        assert_ne!(a, b);
        assert_eq!(allocator.in_use(), 2);
        allocator.release(a);
        assert_eq!(allocator.in_use(), 1);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let allocator = PortAllocator::new(31100, 31100);
        let (_port, _socket) = allocator.bind(LOOPBACK).expect("one port");
        assert!(allocator.bind(LOOPBACK).is_err());
    }
}
