//! Real sockets on loopback: two plain UDP sockets play the customer's and
//! the agent's phones against a `CallMedia` session. Every wait has a deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use media::dtmf::DtmfSender;
use media::g711::{self, Codec};
use media::prompt::Prompt;
use media::rtp::{RtpPacket, RtpSender};
use media::sdp::{Direction, MediaDescription};
use media::session::{CallMedia, LegId, MediaConfig, MediaEvent, PortAllocator};
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(5);

fn sdp_for(socket: &UdpSocket, codec: Codec) -> MediaDescription {
    let local = socket.local_addr().expect("bound socket");
    MediaDescription {
        addr: local.ip(),
        port: local.port(),
        codecs: vec![codec],
        dtmf_payload_type: Some(101),
        ptime_ms: 20,
        direction: Direction::SendRecv,
    }
}

async fn receive_rtp(socket: &UdpSocket) -> RtpPacket {
    let mut buffer = [0u8; 2048];
    let (length, _) = timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("RTP should arrive before the deadline")
        .expect("loopback receive");
    RtpPacket::parse(&buffer[..length]).expect("session sends valid RTP")
}

async fn wait_for(
    events: &mut mpsc::Receiver<MediaEvent>,
    wanted: impl Fn(&MediaEvent) -> bool,
) -> MediaEvent {
    loop {
        let event = timeout(WAIT, events.recv())
            .await
            .expect("event should arrive before the deadline")
            .expect("session alive");
        if wanted(&event) {
            return event;
        }
    }
}

fn mean_square(samples: &[i16]) -> i64 {
    samples
        .iter()
        .map(|&s| i64::from(s) * i64::from(s))
        .sum::<i64>()
        / samples.len().max(1) as i64
}

#[tokio::test]
async fn prompt_bridge_transcode_record_and_dtmf_on_loopback() {
    let ports = PortAllocator::new(32000, 32998);
    let config = MediaConfig {
        rtp_timeout: Duration::from_secs(30),
    };
    let (handle, mut events) =
        CallMedia::spawn_with(LOOPBACK, &ports, config).expect("inside a runtime");
    let customer_phone = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind phone");
    let agent_phone = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind phone");
    let customer_port = handle.add_leg(LegId::Customer).await.expect("customer leg");
    let agent_port = handle.add_leg(LegId::Agent).await.expect("agent leg");
    assert_eq!(customer_port % 2, 0);
    assert_eq!(ports.in_use(), 2);
    let customer_media = SocketAddr::new(LOOPBACK, customer_port);
    let agent_media = SocketAddr::new(LOOPBACK, agent_port);
    // The customer talks PCMU, the agent PCMA, so the bridge must transcode.
    handle
        .set_remote(
            LegId::Customer,
            sdp_for(&customer_phone, Codec::Pcmu),
            Codec::Pcmu,
            Some(101),
        )
        .await
        .expect("alive");
    handle
        .set_remote(
            LegId::Agent,
            sdp_for(&agent_phone, Codec::Pcma),
            Codec::Pcma,
            Some(101),
        )
        .await
        .expect("alive");

    // 1. A 200 ms prompt reaches the customer as 10 consecutive packets.
    let prompt = Prompt::tone("beep", &[440.0], 200, 0, 200);
    handle
        .play(LegId::Customer, prompt, false)
        .await
        .expect("alive");
    let mut previous: Option<RtpPacket> = None;
    for _ in 0..10 {
        let packet = receive_rtp(&customer_phone).await;
        assert_eq!(packet.payload_type, 0);
        assert_eq!(packet.payload.len(), 160);
        if let Some(previous) = &previous {
            assert_eq!(packet.sequence, previous.sequence.wrapping_add(1));
            assert_eq!(packet.timestamp, previous.timestamp.wrapping_add(160));
        }
        previous = Some(packet);
    }
    wait_for(&mut events, |e| {
        *e == MediaEvent::PlayDone {
            leg: LegId::Customer,
        }
    })
    .await;

    // 2. Bridge with recording; 50 packets each way, paced like a phone.
    let recording = std::env::temp_dir().join(format!(
        "callgrid-media-loopback-{}.wav",
        std::process::id()
    ));
    handle
        .bridge(Some(recording.clone()))
        .await
        .expect("recording file");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut customer_rtp = RtpSender::new(&mut rng);
    let mut agent_rtp = RtpSender::new(&mut rng);
    let customer_voice = Prompt::tone("customer", &[1000.0], 1000, 0, 1000);
    let agent_voice = Prompt::tone("agent", &[400.0], 1000, 0, 1000);
    let mut sent_by_customer = Vec::new();
    let mut pacing = tokio::time::interval(Duration::from_millis(20));
    for (customer_frame, agent_frame) in customer_voice.frames().zip(agent_voice.frames()) {
        pacing.tick().await;
        let customer_payload = Bytes::from(g711::encode(Codec::Pcmu, &customer_frame));
        let agent_payload = Bytes::from(g711::encode(Codec::Pcma, &agent_frame));
        let from_customer = customer_rtp.audio(0, customer_payload.clone(), 160);
        let from_agent = agent_rtp.audio(8, agent_payload, 160);
        customer_phone
            .send_to(&from_customer.to_bytes(), customer_media)
            .await
            .expect("send");
        agent_phone
            .send_to(&from_agent.to_bytes(), agent_media)
            .await
            .expect("send");
        sent_by_customer.push(customer_payload);
    }
    assert_eq!(sent_by_customer.len(), 50);
    for sent in &sent_by_customer {
        let packet = receive_rtp(&agent_phone).await;
        assert_eq!(packet.payload_type, 8, "transcoded to the agent's PCMA");
        assert_eq!(
            &packet.payload[..],
            &g711::transcode(Codec::Pcmu, Codec::Pcma, sent)[..]
        );
    }
    for _ in 0..50 {
        let packet = receive_rtp(&customer_phone).await;
        assert_eq!(packet.payload_type, 0, "transcoded to the customer's PCMU");
    }

    // 3. The customer presses 5: reported once, relayed to the agent.
    let dtmf = DtmfSender::new(101)
        .packets('5', &mut customer_rtp)
        .expect("valid key");
    for packet in &dtmf {
        customer_phone
            .send_to(&packet.to_bytes(), customer_media)
            .await
            .expect("send");
    }
    let digit = wait_for(&mut events, |e| matches!(e, MediaEvent::Dtmf { .. })).await;
    assert_eq!(
        digit,
        MediaEvent::Dtmf {
            leg: LegId::Customer,
            digit: '5'
        }
    );
    for _ in 0..dtmf.len() {
        assert_eq!(receive_rtp(&agent_phone).await.payload_type, 101);
    }
    // Every DTMF packet has been processed (all were relayed), so any
    // duplicate report would already be queued.
    let mut extra_digits = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, MediaEvent::Dtmf { .. }) {
            extra_digits += 1;
        }
    }
    assert_eq!(extra_digits, 0, "a key press is reported exactly once");

    let stats = handle.stats().await;
    assert_eq!(stats.customer.packets_in, 50 + dtmf.len() as u64);
    assert_eq!(stats.agent.packets_in, 50);
    assert_eq!(stats.agent.packets_out, 50 + dtmf.len() as u64);
    assert_eq!(stats.customer.packets_out, 10 + 50);
    assert_eq!(stats.customer.packets_dropped, 0);

    // 4. Stop: the recording is a stereo WAV with audio on both channels.
    let info = timeout(WAIT, handle.stop())
        .await
        .expect("stop in time")
        .expect("a recording");
    assert_eq!(ports.in_use(), 0, "ports released");
    assert!(
        info.samples >= 7_000,
        "about a second recorded, got {}",
        info.samples
    );
    let mut reader = hound::WavReader::open(&info.path).expect("recording readable");
    assert_eq!(reader.spec().channels, 2);
    assert_eq!(reader.spec().sample_rate, 8000);
    let all: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    let agent_channel: Vec<i16> = all.iter().step_by(2).copied().collect();
    let customer_channel: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
    assert!(
        mean_square(&agent_channel) > 1_000_000,
        "agent audio on channel 0"
    );
    assert!(
        mean_square(&customer_channel) > 1_000_000,
        "customer audio on channel 1"
    );
    let _ = std::fs::remove_file(&recording);
    assert!(handle
        .play(LegId::Customer, Prompt::tone("x", &[1.0], 20, 0, 20), false)
        .await
        .is_err());
}

#[tokio::test]
async fn rtp_timeout_fires_after_media_stops() {
    let ports = PortAllocator::new(33000, 33998);
    let config = MediaConfig {
        rtp_timeout: Duration::from_millis(200),
    };
    let (handle, mut events) =
        CallMedia::spawn_with(LOOPBACK, &ports, config).expect("inside a runtime");
    let phone = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind phone");
    let port = handle.add_leg(LegId::Agent).await.expect("agent leg");
    handle
        .set_remote(
            LegId::Agent,
            sdp_for(&phone, Codec::Pcmu),
            Codec::Pcmu,
            None,
        )
        .await
        .expect("alive");
    let mut sender = RtpSender::new(&mut rand::rngs::StdRng::seed_from_u64(9));
    let packet = sender.audio(0, Bytes::from_static(&[0xFF; 160]), 160);
    phone
        .send_to(&packet.to_bytes(), SocketAddr::new(LOOPBACK, port))
        .await
        .expect("send");
    phone
        .send_to(b"garbage", SocketAddr::new(LOOPBACK, port))
        .await
        .expect("send");
    wait_for(&mut events, |e| {
        *e == MediaEvent::FirstPacket { leg: LegId::Agent }
    })
    .await;
    wait_for(&mut events, |e| {
        *e == MediaEvent::RtpTimeout { leg: LegId::Agent }
    })
    .await;
    assert_eq!(handle.stats().await.agent.packets_dropped, 1);
    assert_eq!(
        timeout(WAIT, handle.stop()).await.expect("stop in time"),
        None
    );
}
