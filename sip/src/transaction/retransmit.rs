//! Retransmitting a 2xx to INVITE until the ACK arrives (RFC 3261 13.3.1.4).
//!
//! The INVITE server transaction ends when the TU sends a 2xx, so the UAS
//! core keeps resending it: starting at T1, doubling up to T2, until the ACK
//! arrives or 64*T1 passes, at which point the dialog should be torn down
//! with a BYE. On reliable transports nothing is resent but the ACK wait
//! still applies.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Timers, Transport};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retransmit2xxOutput {
    Transmit {
        dest: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
    },
    /// 64*T1 passed without an ACK: confirm the session failed (send BYE).
    AckTimeout,
}

#[derive(Debug)]
pub struct Retransmit2xx {
    dest: SocketAddr,
    transport: Transport,
    bytes: Vec<u8>,
    t2: Duration,
    interval: Duration,
    retransmit_at: Option<Instant>,
    give_up_at: Option<Instant>,
    outputs: VecDeque<Retransmit2xxOutput>,
}

impl Retransmit2xx {
    /// Starts after the first copy of the 2xx has been sent by the caller.
    pub fn new(
        now: Instant,
        dest: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
        timers: Timers,
    ) -> Self {
        Retransmit2xx {
            dest,
            transport,
            bytes,
            t2: timers.t2,
            interval: timers.t1,
            retransmit_at: (!transport.is_reliable()).then(|| now + timers.t1),
            give_up_at: Some(now + timers.t1 * 64),
            outputs: VecDeque::new(),
        }
    }

    /// The ACK arrived: stop everything.
    pub fn handle_ack(&mut self) {
        self.retransmit_at = None;
        self.give_up_at = None;
    }

    pub fn is_done(&self) -> bool {
        self.give_up_at.is_none()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.give_up_at.is_some_and(|t| t <= now) {
            self.handle_ack();
            self.outputs.push_back(Retransmit2xxOutput::AckTimeout);
            return;
        }
        while let Some(at) = self.retransmit_at.filter(|t| *t <= now) {
            self.outputs.push_back(Retransmit2xxOutput::Transmit {
                dest: self.dest,
                transport: self.transport,
                bytes: self.bytes.clone(),
            });
            self.interval = (self.interval * 2).min(self.t2);
            self.retransmit_at = Some(at + self.interval);
        }
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Retransmit2xxOutput> {
        self.outputs.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit_at, self.give_up_at]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_ack() {
        let t0 = Instant::now();
        let dest = "127.0.0.1:5060".parse().expect("addr");
        let mut r =
            Retransmit2xx::new(t0, dest, Transport::Udp, b"200".to_vec(), Timers::default());
        let mut fired = Vec::new();
        while let Some(at) = r.poll_timeout() {
            if at > t0 + Duration::from_secs(10) {
                break;
            }
            r.handle_timeout(at);
            while let Some(o) = r.poll_output() {
                assert!(matches!(o, Retransmit2xxOutput::Transmit { .. }));
                fired.push((at - t0).as_millis());
            }
        }
        assert_eq!(fired, vec![500, 1500, 3500, 7500]);
        r.handle_ack();
        assert_eq!(r.poll_timeout(), None);
        let mut tcp =
            Retransmit2xx::new(t0, dest, Transport::Tcp, b"200".to_vec(), Timers::default());
        assert_eq!(tcp.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        tcp.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(tcp.poll_output(), Some(Retransmit2xxOutput::AckTimeout));
    }
}
