//! RTP probe: the media end of SIPp peers that play no audio themselves
//! (`carrier_failover.xml`, `agent_phone_failover.xml`).
//!
//! [`RtpProbe::bind`] binds one UDP port per call (even ports, on the given IP). Each port is a
//! Tokio task that
//! - records every RTP datagram it receives (arrival [`Instant`], source, payload type);
//! - once a packet has arrived, sends a 20 ms PCMA stream (PT 8, 160 bytes of a 400 Hz tone at
//!   about -20 dBFS, sequence number +1 and timestamp +160 per packet, a fixed SSRC per port)
//!   to the source of the most recent packet: symmetric RTP, so it follows a new source (the
//!   node that took the call over) with the next packet. Sources with port 0 are recorded but
//!   never followed.
//!
//! The SIPp scenarios advertise the probe in their SDP through an injection file:
//! [`RtpProbe::csv`] writes `SEQUENTIAL` then `PORT;IP;` per port, SIPp's `-inf`: call *i* of a
//! SIPp process (in the order SIPp creates or receives the calls) uses port *i*.
//!
//! ```ignore
//! let carrier_probe = RtpProbe::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)?;
//! carrier_probe.csv(&work.join("carrier_probe.csv"))?;
//! let phone_probe = RtpProbe::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)?;
//! phone_probe.csv(&work.join("phone_probe.csv"))?;
//! let phones = AgentPhones::start(&work, &c.sip(2), &tenant.domain, &agents, Register::Digest("MD5"),
//!     &work.join("phone_probe.csv"), None, None).await?;
//! let carrier = Sipp::new("carrier_failover.xml", &work, "carrier").remote(&c.sip(0))
//!     .service("075595598").key("caller_prefix", "1380013800").inf(&work.join("carrier_probe.csv"))
//!     .set("digit", "2").set("talk_ms", "10000").set("reinvite_ms", "60000").spawn()?;
//! // ... call connected to an agent, then kill -9 the anchoring node:
//! let killed_at = Instant::now();
//! // RTP still flowing 10 s after the kill, at both peers, from a new source:
//! wait_until(Duration::from_secs(30), "media after failover", || async {
//!     (carrier_probe.received_since(0, killed_at + Duration::from_secs(10)) > 50
//!         && phone_probe.received_since(0, killed_at + Duration::from_secs(10)) > 50).then_some(())
//! }).await?;
//! let r = carrier_probe.report(0);
//! assert_eq!(r.sources.len(), 2, "{r:?}");
//! eprintln!("carrier media interruption {:?}", r.gap_after(killed_at));
//! ```
//!
//! Reports are snapshots ([`ProbeReport`]); the arrivals are kept in memory for the life of the
//! probe (about 24 bytes a packet: 200 calls for 2 minutes is under 30 MB). Dropping the probe
//! stops its tasks and closes its ports.

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// RTP payload type of the stream the probe sends (PCMA).
pub const PCMA: u8 = 8;
/// Payload type of the RFC 4733 events sent by [`RtpProbe::send_dtmf`] (the scenarios' SDP
/// offer 101 for telephone-event).
pub const TELEPHONE_EVENT: u8 = 101;
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
const SAMPLES_PER_PACKET: u32 = 160;

/// Symmetric-RTP test endpoints, one UDP port per call. See the module docs.
pub struct RtpProbe {
    ip: IpAddr,
    ports: Vec<Port>,
}

struct Port {
    port: u16,
    state: Arc<Mutex<PortState>>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

enum Command {
    Dtmf(u8),
    Target(SocketAddr),
}

#[derive(Default)]
struct PortState {
    /// (arrival, index into `sources`) of every RTP packet received.
    arrivals: Vec<(Instant, u16)>,
    sources: Vec<SocketAddr>,
    payload_types: BTreeMap<u8, u64>,
    dtmf_events: Vec<u8>,
    non_rtp: u64,
    sent: u64,
    send_errors: u64,
    target: Option<SocketAddr>,
}

/// What one probe port saw and did, at the time of [`RtpProbe::report`].
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub port: u16,
    /// RTP packets received (datagrams with version 2 and at least a 12-byte header).
    pub received: u64,
    /// RTP packets sent (the PCMA stream and DTMF events).
    pub sent: u64,
    /// Datagrams that failed to send (e.g. ICMP port unreachable from a dead node).
    pub send_errors: u64,
    /// Distinct sources of the received packets, in order of their first packet.
    pub sources: Vec<SocketAddr>,
    /// Packets received per source, in the order of `sources`.
    pub per_source: Vec<u64>,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    /// Largest interval between two consecutive received packets (0 with fewer than two).
    pub max_gap_ms: u64,
    /// Packets received per payload type.
    pub payload_types: BTreeMap<u8, u64>,
    /// RFC 4733 event codes received with payload type 101, distinct, in order.
    pub dtmf_events: Vec<u8>,
    /// Datagrams that were not RTP.
    pub non_rtp: u64,
    /// Where the probe sends now (the most recent source), if anywhere.
    pub target: Option<SocketAddr>,
    arrivals: Vec<(Instant, u16)>,
}

impl ProbeReport {
    /// Packets received at or after `t`.
    pub fn received_since(&self, t: Instant) -> u64 {
        let i = self.arrivals.partition_point(|(a, _)| *a < t);
        (self.arrivals.len() - i) as u64
    }

    /// Packets received from `source`.
    pub fn received_from(&self, source: SocketAddr) -> u64 {
        self.sources
            .iter()
            .position(|s| *s == source)
            .map(|i| self.per_source[i])
            .unwrap_or(0)
    }

    /// Packets received at or after `t` from a source first heard at or after `t` (media from
    /// whoever took the call over after an event at `t`).
    pub fn received_from_new_sources_since(&self, t: Instant) -> u64 {
        let i = self.arrivals.partition_point(|(a, _)| *a < t);
        let old: std::collections::HashSet<u16> =
            self.arrivals[..i].iter().map(|(_, s)| *s).collect();
        self.arrivals[i..]
            .iter()
            .filter(|(_, s)| !old.contains(s))
            .count() as u64
    }

    /// First arrival at or after `t`.
    pub fn first_since(&self, t: Instant) -> Option<Instant> {
        let i = self.arrivals.partition_point(|(a, _)| *a < t);
        self.arrivals.get(i).map(|(a, _)| *a)
    }

    /// The longest silence from `t` on: the largest of (first arrival at or after `t`) − `t` and
    /// the intervals between consecutive arrivals after it. With `t` = the kill, this is the
    /// media interruption of the failover (as long as media resumed). `None` when nothing
    /// arrived at or after `t`.
    pub fn gap_after(&self, t: Instant) -> Option<Duration> {
        let i = self.arrivals.partition_point(|(a, _)| *a < t);
        let rest = &self.arrivals[i..];
        let first = rest.first()?.0;
        let mut gap = first - t;
        for w in rest.windows(2) {
            gap = gap.max(w[1].0 - w[0].0);
        }
        Some(gap)
    }

    /// When the first packet from `source` arrived.
    pub fn first_from(&self, source: SocketAddr) -> Option<Instant> {
        let idx = self.sources.iter().position(|s| *s == source)? as u16;
        self.arrivals
            .iter()
            .find(|(_, s)| *s == idx)
            .map(|(a, _)| *a)
    }

    /// When the last packet from `source` arrived.
    pub fn last_from(&self, source: SocketAddr) -> Option<Instant> {
        let idx = self.sources.iter().position(|s| *s == source)? as u16;
        self.arrivals
            .iter()
            .rev()
            .find(|(_, s)| *s == idx)
            .map(|(a, _)| *a)
    }

    /// Every arrival (instant, source), oldest first.
    pub fn arrivals(&self) -> impl Iterator<Item = (Instant, SocketAddr)> + '_ {
        self.arrivals
            .iter()
            .map(|(a, s)| (*a, self.sources[*s as usize]))
    }
}

impl RtpProbe {
    /// Binds `n` even UDP ports on `ip` and starts one task per port. Must be called within a
    /// Tokio runtime.
    pub fn bind(ip: IpAddr, n: usize) -> Result<RtpProbe> {
        let mut ports = Vec::with_capacity(n);
        for i in 0..n {
            let std_sock = bind_even(ip)?;
            std_sock.set_nonblocking(true)?;
            let port = std_sock.local_addr()?.port();
            let sock = tokio::net::UdpSocket::from_std(std_sock)
                .context("RtpProbe::bind needs a Tokio runtime")?;
            let state = Arc::new(Mutex::new(PortState::default()));
            let (tx, rx) = mpsc::unbounded_channel();
            let ssrc = 0x5EED_0000 ^ ((port as u32) << 8) ^ i as u32;
            let task = tokio::spawn(run_port(sock, state.clone(), rx, ssrc));
            ports.push(Port {
                port,
                state,
                commands: tx,
                task,
            });
        }
        Ok(RtpProbe { ip, ports })
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.ports.iter().map(|p| p.port).collect()
    }

    /// The address of port `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ip, self.ports[i].port)
    }

    /// SIPp's injection file for `-inf`: `SEQUENTIAL`, then `PORT;IP;` per port (the scenarios'
    /// `[field0]` and `[field1]`).
    pub fn csv_text(&self) -> String {
        let mut s = String::from("SEQUENTIAL\n");
        for p in &self.ports {
            s.push_str(&format!("{};{};\n", p.port, self.ip));
        }
        s
    }

    /// Writes [`RtpProbe::csv_text`] to `path`.
    pub fn csv(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.csv_text()).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts port `i` sending to `to` before anything arrived (it still follows the next
    /// source that sends to it).
    pub fn prime(&self, i: usize, to: SocketAddr) -> Result<()> {
        self.command(i, Command::Target(to))
    }

    /// Sends RFC 4733 event `digit` ('0'-'9', '*', '#', 'A'-'D') from port `i` to its current
    /// target, in place of the audio: 8 packets of 20 ms (160 ms tone), then 3 end packets, all
    /// payload type 101 with the event's start timestamp; audio resumes after it. Nothing is
    /// sent while the port has no target yet (the event waits for one).
    pub fn send_dtmf(&self, i: usize, digit: char) -> Result<()> {
        let code = match digit {
            '0'..='9' => digit as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => digit as u8 - b'A' + 12,
            _ => return Err(anyhow!("not a DTMF digit: {digit:?}")),
        };
        self.command(i, Command::Dtmf(code))
    }

    fn command(&self, i: usize, c: Command) -> Result<()> {
        self.ports
            .get(i)
            .ok_or_else(|| anyhow!("no probe port {i}"))?
            .commands
            .send(c)
            .map_err(|_| anyhow!("probe port {i} stopped"))
    }

    /// A snapshot of port `i`.
    pub fn report(&self, i: usize) -> ProbeReport {
        let p = &self.ports[i];
        let st = p.state.lock().expect("probe state");
        let mut per_source = vec![0u64; st.sources.len()];
        let mut max_gap = Duration::ZERO;
        for (k, (a, s)) in st.arrivals.iter().enumerate() {
            per_source[*s as usize] += 1;
            if k > 0 {
                max_gap = max_gap.max(*a - st.arrivals[k - 1].0);
            }
        }
        ProbeReport {
            port: p.port,
            received: st.arrivals.len() as u64,
            sent: st.sent,
            send_errors: st.send_errors,
            sources: st.sources.clone(),
            per_source,
            first_at: st.arrivals.first().map(|(a, _)| *a),
            last_at: st.arrivals.last().map(|(a, _)| *a),
            max_gap_ms: max_gap.as_millis() as u64,
            payload_types: st.payload_types.clone(),
            dtmf_events: st.dtmf_events.clone(),
            non_rtp: st.non_rtp,
            target: st.target,
            arrivals: st.arrivals.clone(),
        }
    }

    /// Snapshots of every port.
    pub fn reports(&self) -> Vec<ProbeReport> {
        (0..self.ports.len()).map(|i| self.report(i)).collect()
    }

    /// Packets port `i` received at or after `t` (cheaper than a full report).
    pub fn received_since(&self, i: usize, t: Instant) -> u64 {
        let st = self.ports[i].state.lock().expect("probe state");
        let k = st.arrivals.partition_point(|(a, _)| *a < t);
        (st.arrivals.len() - k) as u64
    }

    /// Packets port `i` received so far.
    pub fn received(&self, i: usize) -> u64 {
        self.ports[i]
            .state
            .lock()
            .expect("probe state")
            .arrivals
            .len() as u64
    }
}

impl Drop for RtpProbe {
    fn drop(&mut self) {
        for p in &self.ports {
            p.task.abort();
        }
    }
}

/// An even port on `ip` (RTP convention), the socket kept bound.
fn bind_even(ip: IpAddr) -> Result<std::net::UdpSocket> {
    for _ in 0..200 {
        let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding a UDP port on {ip}"))?;
        if s.local_addr()?.port() % 2 == 0 {
            return Ok(s);
        }
    }
    Err(anyhow!("no even UDP port on {ip}"))
}

async fn run_port(
    sock: tokio::net::UdpSocket,
    state: Arc<Mutex<PortState>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ssrc: u32,
) {
    let frame = tone_frame();
    let mut seq: u16 = 0;
    let mut ts: u32 = 0;
    // Pending DTMF events (codes) and the packet index within the current one.
    let mut dtmf: std::collections::VecDeque<u8> = Default::default();
    let mut dtmf_step: u32 = 0;
    let mut dtmf_ts: u32 = 0;
    let mut tick = tokio::time::interval(PACKET_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0u8; 2048];
    let mut commands_open = true;
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((len, src)) = r else { continue };
                let now = Instant::now();
                let mut st = state.lock().expect("probe state");
                let d = &buf[..len];
                if len < 12 || d[0] >> 6 != 2 {
                    st.non_rtp += 1;
                    continue;
                }
                let idx = match st.sources.iter().position(|s| *s == src) {
                    Some(i) => i,
                    None => {
                        st.sources.push(src);
                        st.sources.len() - 1
                    }
                };
                st.arrivals.push((now, idx as u16));
                let pt = d[1] & 0x7F;
                *st.payload_types.entry(pt).or_default() += 1;
                if pt == TELEPHONE_EVENT && len >= 16 && !st.dtmf_events.contains(&d[12]) {
                    st.dtmf_events.push(d[12]);
                }
                if src.port() != 0 {
                    st.target = Some(src);
                }
            }
            c = commands.recv(), if commands_open => {
                match c {
                    Some(Command::Dtmf(code)) => dtmf.push_back(code),
                    Some(Command::Target(to)) => state.lock().expect("probe state").target = Some(to),
                    None => commands_open = false,
                }
            }
            _ = tick.tick() => {
                let Some(target) = state.lock().expect("probe state").target else { continue };
                let mut pkt = Vec::with_capacity(12 + 160);
                if let Some(&code) = dtmf.front() {
                    // 8 tone packets then 3 end packets, one per tick; the timestamp is the
                    // event's start, duration grows by 160 samples a packet.
                    if dtmf_step == 0 {
                        dtmf_ts = ts;
                    }
                    let end = dtmf_step >= 8;
                    let duration = (dtmf_step.min(7) + 1) * SAMPLES_PER_PACKET;
                    rtp_header(&mut pkt, dtmf_step == 0, TELEPHONE_EVENT, seq, dtmf_ts, ssrc);
                    pkt.push(code);
                    pkt.push(if end { 0x80 | 10 } else { 10 });
                    pkt.extend_from_slice(&(duration as u16).to_be_bytes());
                    dtmf_step += 1;
                    if dtmf_step == 11 {
                        dtmf.pop_front();
                        dtmf_step = 0;
                        ts = dtmf_ts.wrapping_add(8 * SAMPLES_PER_PACKET);
                    }
                } else {
                    rtp_header(&mut pkt, false, PCMA, seq, ts, ssrc);
                    pkt.extend_from_slice(&frame);
                    ts = ts.wrapping_add(SAMPLES_PER_PACKET);
                }
                seq = seq.wrapping_add(1);
                let ok = sock.send_to(&pkt, target).await.is_ok();
                let mut st = state.lock().expect("probe state");
                if ok {
                    st.sent += 1;
                } else {
                    st.send_errors += 1;
                }
            }
        }
    }
}

fn rtp_header(out: &mut Vec<u8>, marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32) {
    out.push(0x80);
    out.push(if marker { 0x80 | pt } else { pt });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// 160 A-law samples of a 400 Hz tone at about -20 dBFS (exactly 8 periods: every packet is the
/// same frame and the tone stays continuous).
fn tone_frame() -> [u8; 160] {
    let mut f = [0u8; 160];
    for (n, b) in f.iter_mut().enumerate() {
        let x = (2.0 * std::f64::consts::PI * 400.0 * n as f64 / 8000.0).sin();
        *b = linear_to_alaw((x * 3277.0).round() as i16);
    }
    f
}

/// G.711 A-law encoding of a 16-bit linear sample (ITU-T G.711, as in the reference g711.c).
pub fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut v = (sample as i32) >> 3;
    let mask = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let Some(seg) = SEG_END.iter().position(|&e| v <= e) else {
        return 0x7F ^ mask;
    };
    let mut a = (seg as i32) << 4;
    a |= if seg < 2 {
        (v >> 1) & 0xF
    } else {
        (v >> seg) & 0xF
    };
    (a as u8) ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU8, Ordering};
    use tokio::net::UdpSocket;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn alaw_reference_values() {
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        // A tone, not silence: the frame uses many code words.
        let f = tone_frame();
        let distinct: std::collections::HashSet<u8> = f.iter().copied().collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[tokio::test]
    async fn csv_lists_every_port() -> Result<()> {
        let p = RtpProbe::bind(LOCAL, 3)?;
        let ports = p.ports();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| p % 2 == 0));
        assert_eq!(
            p.csv_text(),
            format!(
                "SEQUENTIAL\n{};127.0.0.1;\n{};127.0.0.1;\n{};127.0.0.1;\n",
                ports[0], ports[1], ports[2]
            )
        );
        // Nothing is sent before a packet arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(p.report(0).sent, 0);
        Ok(())
    }

    /// Two probes ("carrier" and "agent") talk through a relay playing the node: first through
    /// relay port R1, then, after 300 ms of silence (the failover), the agent side is served
    /// from R2. The agent probe must follow R2 at once and measure the gap; the carrier probe
    /// sees one source throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_a_new_source_and_measures_the_gap() -> Result<()> {
        let carrier = RtpProbe::bind(LOCAL, 1)?;
        let agent = RtpProbe::bind(LOCAL, 1)?;
        let (pc, pa) = (carrier.addr(0), agent.addr(0));
        let r1 = Arc::new(UdpSocket::bind((LOCAL, 0)).await?);
        let r2 = Arc::new(UdpSocket::bind((LOCAL, 0)).await?);
        let (a1, a2) = (r1.local_addr()?, r2.local_addr()?);
        // 0: relay via R1; 1: drop everything (node dead); 2: agent side via R2.
        let mode = Arc::new(AtomicU8::new(0));
        // Arrivals of the agent probe's packets at R1 while in mode 2.
        let stale_on_r1 = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let relay1 = {
            let (r1, r2, mode, stale) = (r1.clone(), r2.clone(), mode.clone(), stale_on_r1.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, src)) = r1.recv_from(&mut buf).await {
                    let m = mode.load(Ordering::SeqCst);
                    if src == pc {
                        match m {
                            0 => drop(r1.send_to(&buf[..n], pa).await),
                            2 => drop(r2.send_to(&buf[..n], pa).await),
                            _ => {}
                        }
                    } else if src == pa {
                        if m == 2 {
                            stale.lock().expect("stale").push(Instant::now());
                        } else if m == 0 {
                            let _ = r1.send_to(&buf[..n], pc).await;
                        }
                    }
                }
            })
        };
        let relay2 = {
            let (r1, r2, mode) = (r1.clone(), r2.clone(), mode.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, src)) = r2.recv_from(&mut buf).await {
                    if src == pa && mode.load(Ordering::SeqCst) == 2 {
                        let _ = r1.send_to(&buf[..n], pc).await;
                    }
                }
            })
        };

        // The carrier side speaks first (the node's prompt would, in a real call).
        carrier.prime(0, a1)?;
        crate::wait_until(
            Duration::from_secs(10),
            "media both ways via R1",
            || async { (agent.received(0) >= 25 && carrier.received(0) >= 25).then_some(()) },
        )
        .await?;
        let before = agent.report(0);
        assert_eq!(before.sources, vec![a1]);
        assert_eq!(before.target, Some(a1));
        assert!(before.max_gap_ms < 200, "{before:?}");

        let killed = Instant::now();
        mode.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let switched = Instant::now();
        mode.store(2, Ordering::SeqCst);
        crate::wait_until(
            Duration::from_secs(10),
            "media both ways via R2",
            || async {
                (agent.received_since(0, switched) >= 25
                    && carrier.received_since(0, switched) >= 25)
                    .then_some(())
            },
        )
        .await?;
        let settled = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let a = agent.report(0);
        assert_eq!(a.sources, vec![a1, a2], "{a:?}");
        assert_eq!(a.target, Some(a2));
        assert!(a.received_from(a2) >= 25);
        assert!(a.received_from_new_sources_since(switched) >= 25);
        assert!(a.first_from(a2).expect("from R2") >= switched);
        assert!(a.last_from(a1).expect("from R1") <= switched);
        // The relay was silent for 300 ms: that is the gap, measured from the kill as well.
        assert!(a.max_gap_ms >= 280 && a.max_gap_ms < 1500, "{a:?}");
        let gap = a.gap_after(killed).expect("media after the kill");
        eprintln!(
            "agent probe: sources {:?}, per source {:?}, max_gap_ms {}, gap after the kill {gap:?}",
            a.sources, a.per_source, a.max_gap_ms
        );
        assert!(
            gap >= Duration::from_millis(280) && gap < Duration::from_millis(1500),
            "{gap:?}"
        );
        assert!(a.gap_after(settled).expect("media") < Duration::from_millis(200));
        assert!(a.received_since(settled) > 0);
        assert_eq!(
            a.payload_types.keys().copied().collect::<Vec<_>>(),
            vec![PCMA]
        );
        // It followed at once: nothing reached R1 later than 50 ms after the first packet from R2
        // (a packet already on its way when it switched may arrive just after).
        let followed_at = a.first_from(a2).expect("from R2") + Duration::from_millis(50);
        let late: Vec<Instant> = stale_on_r1
            .lock()
            .expect("stale")
            .iter()
            .copied()
            .filter(|t| *t > followed_at)
            .collect();
        assert!(late.is_empty(), "{} packets still sent to R1", late.len());

        let c = carrier.report(0);
        assert_eq!(c.sources, vec![a1], "{c:?}");
        assert!(c.max_gap_ms >= 280, "{c:?}");
        assert!(c.sent > 0 && c.received > 50);

        // DTMF through the new path: the agent probe sends 5, the carrier probe sees event 5.
        agent.send_dtmf(0, '5')?;
        crate::wait_until(Duration::from_secs(5), "DTMF 5 at the carrier", || async {
            let c = carrier.report(0);
            (c.payload_types.get(&TELEPHONE_EVENT) == Some(&11)).then_some(())
        })
        .await?;
        assert_eq!(carrier.report(0).dtmf_events, vec![5]);
        assert!(agent.send_dtmf(0, 'x').is_err());

        relay1.abort();
        relay2.abort();
        Ok(())
    }

    /// Answers every REGISTER with 200 (no challenge) and records the Contact headers.
    async fn open_registrar() -> Result<(SocketAddr, Arc<Mutex<Vec<String>>>)> {
        let sock = UdpSocket::bind((LOCAL, 0)).await?;
        let addr = sock.local_addr()?;
        let contacts = Arc::new(Mutex::new(Vec::new()));
        let seen = contacts.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, src)) = sock.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if !text.starts_with("REGISTER ") {
                    continue;
                }
                let mut reply = String::from("SIP/2.0 200 OK\r\n");
                for line in text.split("\r\n") {
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("to:") {
                        reply.push_str(&format!("{line};tag=reg\r\n"));
                    } else if ["via:", "from:", "call-id:", "cseq:", "contact:"]
                        .iter()
                        .any(|h| lower.starts_with(h))
                    {
                        reply.push_str(line);
                        reply.push_str("\r\n");
                        if lower.starts_with("contact:") {
                            seen.lock().expect("contacts").push(line.to_string());
                        }
                    }
                }
                reply.push_str("Content-Length: 0\r\n\r\n");
                let _ = sock.send_to(reply.as_bytes(), src).await;
            }
        });
        Ok((addr, contacts))
    }

    async fn stand_in(args: &[String]) -> Result<String> {
        let out = tokio::process::Command::new("python3")
            .arg(crate::scenario("selfcheck/failover_node.py"))
            .args(args)
            .output()
            .await
            .context("python3 failover_node.py")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(anyhow!("stand-in nodes failed: {text}"));
        }
        Ok(text)
    }

    /// The media of one probe port across the stand-in's failover: two sources, the old one
    /// silent once the new one started, and the interruption in between.
    fn check_failover_media(what: &str, r: &ProbeReport) -> Duration {
        assert_eq!(r.sources.len(), 2, "{what}: {r:?}");
        let (old, new) = (r.sources[0], r.sources[1]);
        let switched = r.first_from(new).expect("new source");
        let last_old = r.last_from(old).expect("old source");
        assert!(last_old <= switched, "{what}: old source after the new one");
        assert!(r.received_since(switched) >= 25, "{what}: {r:?}");
        assert_eq!(r.target, Some(new), "{what}");
        assert!(r.sent > 50, "{what}: {r:?}");
        let gap = r.gap_after(last_old).expect("media after the switch");
        assert!(gap < Duration::from_secs(1), "{what}: interruption {gap:?}");
        eprintln!(
            "{what}: received {} from {:?} ({:?}), sent {}, interruption {gap:?}, max_gap_ms {}",
            r.received, r.sources, r.per_source, r.sent, r.max_gap_ms
        );
        gap
    }

    /// The harness end to end without a cluster: AgentPhones (two extensions registered from one
    /// port, one SIPp process, probe CSV) and carrier_failover.xml against the raw-UDP stand-in
    /// nodes of tests/scenarios/selfcheck (node A answers/calls, dies, node B re-INVITEs; the
    /// stand-in checks the SIP side), the RtpProbe checking the media side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "runs SIPp and python3: cargo test -p callgrid-tests --lib -- --ignored"]
    async fn failover_scenarios_against_stand_in_nodes() -> Result<()> {
        use crate::{free_port, AgentPhones, Register, SampleAgent, Sipp};
        let work = tempfile::tempdir()?;
        let work = work.path();

        // Agent phones: two extensions, one port, two calls; they hang up 2 s after the re-INVITE.
        let (registrar, contacts) = open_registrar().await?;
        let phone_probe = RtpProbe::bind(LOCAL, 2)?;
        let phone_csv = work.join("phone_probe.csv");
        phone_probe.csv(&phone_csv)?;
        let agents: Vec<SampleAgent> = ["1001", "1002"]
            .iter()
            .map(|e| SampleAgent {
                agent: format!("agent{e}"),
                extension: e.to_string(),
                password: format!("pw{e}"),
            })
            .collect();
        let phones = AgentPhones::start(
            work,
            &registrar.to_string(),
            "gd.callgrid.local",
            &agents,
            Register::Digest("MD5"),
            &phone_csv,
            Some(2),
            Some(2000),
        )
        .await?;
        let registered = contacts.lock().expect("contacts").clone();
        assert_eq!(registered.len(), 2, "{registered:?}");
        assert!(registered
            .iter()
            .all(|c| c.contains(&format!("127.0.0.1:{}", phones.port))));
        let ports = |p: &RtpProbe| {
            p.ports()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let phone_node_args: Vec<String> = [
            "uac",
            "--a",
            &free_port().to_string(),
            "--b",
            &free_port().to_string(),
            "--phone",
            &format!("127.0.0.1:{}", phones.port),
            "--calls",
            "2",
            "--extensions",
            "1001,1002",
            "--expect-ports",
            &ports(&phone_probe),
            "--failover-after",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();

        // Carrier: one call, DTMF 2 to node A, failover, BYE to node B.
        let carrier_probe = RtpProbe::bind(LOCAL, 1)?;
        let carrier_csv = work.join("carrier_probe.csv");
        carrier_probe.csv(&carrier_csv)?;
        let node_a = free_port();
        let carrier_node_args: Vec<String> = [
            "uas",
            "--a",
            &node_a.to_string(),
            "--b",
            &free_port().to_string(),
            "--expect-ports",
            &ports(&carrier_probe),
            "--failover-after",
            "3",
            "--expect-dtmf",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let carrier_node = tokio::spawn(async move { stand_in(&carrier_node_args).await });
        let carrier = Sipp::new("carrier_failover.xml", work, "carrier")
            .remote(&format!("127.0.0.1:{node_a}"))
            .service("075595598")
            .key("caller_prefix", "1380013800")
            .inf(&carrier_csv)
            .set("digit", "2")
            .set("menu_ms", "1000")
            .set("talk_ms", "3000")
            .set("reinvite_ms", "10000")
            .timeout(40)
            .spawn()?;

        let phone_out = stand_in(&phone_node_args).await?;
        let carrier_out = carrier_node.await??;
        let pr = phones.run.wait(Duration::from_secs(30)).await?;
        let cr = carrier.wait(Duration::from_secs(30)).await?;
        assert_eq!(
            (pr.exit_code, pr.successful, pr.failed),
            (0, 2, 0),
            "{pr:?}"
        );
        assert_eq!(
            (cr.exit_code, cr.successful, cr.failed),
            (0, 1, 0),
            "{cr:?}"
        );
        assert!(phone_out.contains("RESULT PASS"), "{phone_out}");
        assert!(carrier_out.contains("RESULT PASS"), "{carrier_out}");

        for i in 0..2 {
            check_failover_media(&format!("phone call {i}"), &phone_probe.report(i));
        }
        check_failover_media("carrier", &carrier_probe.report(0));
        Ok(())
    }

    #[tokio::test]
    async fn drop_closes_the_ports() -> Result<()> {
        let p = RtpProbe::bind(LOCAL, 2)?;
        let ports = p.ports();
        drop(p);
        // The aborted tasks drop their sockets shortly after.
        crate::wait_until(Duration::from_secs(5), "ports released", || async {
            ports
                .iter()
                .all(|port| std::net::UdpSocket::bind((LOCAL, *port)).is_ok())
                .then_some(())
        })
        .await?;
        Ok(())
    }
}
