//! The tokio driver for SIP over UDP and TCP: thin on purpose.
//!
//! It reads bytes, frames and parses them, and delivers [`Inbound`] values
//! on a bounded channel; it writes whatever bytes it is given. It makes no
//! protocol decisions: bad bytes are delivered as errors so the node can
//! answer 400 (see [`crate::parse::error_response`]) and count them.
//!
//! UDP datagrams are dropped (with a warning) when the inbound channel is
//! full, because SIP retransmits over UDP; TCP reads wait instead, which
//! pushes back on the sender. TCP connections, accepted or dialled, are
//! kept in a table by peer address and reused for sending.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::framing::StreamFramer;
use crate::message::Message;
use crate::parse::{parse_message, ParseError, MAX_MESSAGE_BYTES};
use crate::transaction::Transport;

/// Capacity of the inbound channel.
pub const INBOUND_CAPACITY: usize = 1024;
/// Messages queued per TCP connection before `send` waits.
const OUTBOUND_PER_CONNECTION: usize = 64;

/// One message (or one bad message) received from the network.
#[derive(Debug)]
pub struct Inbound {
    pub source: SocketAddr,
    pub transport: Transport,
    pub result: Result<Message, (ParseError, Vec<u8>)>,
}

type Connections = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// A cloneable handle for sending; receiving happens on the channel
/// returned by [`SipTransport::bind`].
#[derive(Debug, Clone)]
pub struct SipTransport {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    connections: Connections,
    inbound: mpsc::Sender<Inbound>,
}

impl SipTransport {
    /// Binds UDP and TCP on the same address (with port 0, UDP picks the
    /// port and TCP takes the same one) and starts the receive tasks.
    pub async fn bind(addr: SocketAddr) -> io::Result<(SipTransport, mpsc::Receiver<Inbound>)> {
        let (udp, listener) = bind_pair(addr).await?;
        let udp = Arc::new(udp);
        let local = udp.local_addr()?;
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let transport = SipTransport {
            udp,
            local,
            connections: Arc::new(Mutex::new(HashMap::new())),
            inbound: tx,
        };
        tokio::spawn(udp_loop(transport.udp.clone(), transport.inbound.clone()));
        tokio::spawn(accept_loop(listener, transport.clone()));
        Ok((transport, rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends bytes. Over TCP an existing connection to `dest` is reused,
    /// otherwise one is dialled.
    pub async fn send(
        &self,
        dest: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
    ) -> io::Result<()> {
        match transport {
            Transport::Udp => self.udp.send_to(&bytes, dest).await.map(|_| ()),
            Transport::Tcp => {
                let existing = self.lock().get(&dest).cloned();
                let bytes = match existing {
                    Some(sender) => match sender.send(bytes).await {
                        Ok(()) => return Ok(()),
                        // The connection died since we looked it up; dial
                        // again with the same bytes.
                        Err(mpsc::error::SendError(bytes)) => bytes,
                    },
                    None => bytes,
                };
                let stream = TcpStream::connect(dest).await?;
                let sender = self.start_connection(stream, dest);
                sender
                    .send(bytes)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
        // A panic elsewhere while holding the lock leaves the map intact
        // (inserts and removes are single calls), so poisoning is ignored.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_connection(&self, stream: TcpStream, peer: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let (sender, mut outbound) = mpsc::channel::<Vec<u8>>(OUTBOUND_PER_CONNECTION);
        self.lock().insert(peer, sender.clone());
        let (mut reader, mut writer) = stream.into_split();
        tokio::spawn(async move {
            while let Some(bytes) = outbound.recv().await {
                if let Err(error) = writer.write_all(&bytes).await {
                    tracing::warn!(%peer, %error, "tcp write failed");
                    break;
                }
            }
        });
        let inbound = self.inbound.clone();
        let connections = self.connections.clone();
        let mine = sender.clone();
        tokio::spawn(async move {
            let mut framer = StreamFramer::new();
            let mut buf = vec![0u8; 16 * 1024];
            'read: loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                framer.push(buf.get(..n).unwrap_or_default());
                while let Some((result, bytes)) = framer.next_message_with_bytes() {
                    let result = result.map_err(|e| (e, bytes));
                    let item = Inbound {
                        source: peer,
                        transport: Transport::Tcp,
                        result,
                    };
                    if inbound.send(item).await.is_err() {
                        break 'read;
                    }
                }
                if framer.is_broken() {
                    tracing::warn!(%peer, "unframeable tcp stream closed");
                    break;
                }
            }
            let mut map = connections.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&peer).is_some_and(|s| s.same_channel(&mine)) {
                map.remove(&peer);
            }
        });
        sender
    }
}

async fn udp_loop(socket: Arc<UdpSocket>, inbound: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    loop {
        let (n, source) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP port unreachable surfaces here on some platforms;
                // it is not fatal to the socket.
                tracing::debug!(%error, "udp receive error");
                continue;
            }
        };
        let bytes = buf.get(..n).unwrap_or_default();
        // RFC 5626 4.4.1 keep-alives are bare CRLFs; ignore them.
        if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
            continue;
        }
        let result = parse_message(bytes).map_err(|e| (e, bytes.to_vec()));
        let item = Inbound {
            source,
            transport: Transport::Udp,
            result,
        };
        match inbound.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%source, "inbound queue full, datagram dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

async fn accept_loop(listener: TcpListener, transport: SipTransport) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = transport.start_connection(stream, peer);
            }
            Err(error) => {
                tracing::warn!(%error, "tcp accept failed");
                if transport.inbound.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Binds UDP and TCP on the same port. With port 0 the kernel picks the UDP port, which a
/// TCP socket (an outgoing connection's local port, say) may already hold: then another
/// port is tried.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    const ATTEMPTS: usize = 32;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SipMessage;
    use std::time::Duration;

    const OPTIONS: &str = "OPTIONS sip:node@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKt\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:node@127.0.0.1>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("inbound within deadline")
            .expect("channel open")
    }

    #[tokio::test]
    async fn udp_and_tcp_deliver_good_and_bad() {
        let (transport, mut rx) = SipTransport::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = transport.local_addr();

        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        client
            .send_to(b"\x00garbage\xff", addr)
            .await
            .expect("send");
        let bad = next(&mut rx).await;
        assert_eq!(bad.transport, Transport::Udp);
        assert!(matches!(&bad.result, Err((_, bytes)) if bytes == b"\x00garbage\xff"));
        client
            .send_to(OPTIONS.as_bytes(), addr)
            .await
            .expect("send");
        let good = next(&mut rx).await;
        assert_eq!(good.source, client.local_addr().expect("addr"));
        assert_eq!(
            good.result
                .as_ref()
                .ok()
                .and_then(|m| m.call_id().map(str::to_string))
                .as_deref(),
            Some("t1")
        );

        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(format!("\r\n{OPTIONS}").as_bytes())
            .await
            .expect("write");
        let good = next(&mut rx).await;
        assert_eq!(good.transport, Transport::Tcp);
        assert!(good.result.is_ok());
        // The reply reuses the accepted connection.
        transport
            .send(good.source, Transport::Tcp, b"PONG".to_vec())
            .await
            .expect("send");
        let mut reply = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut reply))
            .await
            .expect("reply within deadline")
            .expect("read");
        assert_eq!(&reply, b"PONG");
        tcp.write_all(b"garbage\r\n\r\n").await.expect("write");
        let bad = next(&mut rx).await;
        assert!(matches!(
            bad.result,
            Err((ParseError::MissingContentLength, _))
        ));
    }

    #[tokio::test]
    async fn tcp_send_dials_and_the_reply_reuses_the_connection() {
        let any = "127.0.0.1:0".parse().expect("addr");
        let (a, mut a_rx) = SipTransport::bind(any).await.expect("bind a");
        let (b, mut b_rx) = SipTransport::bind(any).await.expect("bind b");
        a.send(b.local_addr(), Transport::Tcp, OPTIONS.as_bytes().to_vec())
            .await
            .expect("dial and send");
        let at_b = next(&mut b_rx).await;
        assert!(at_b.result.is_ok());
        // B answers to the connection's source; A reads it on the connection
        // it dialled, not on its listener.
        b.send(at_b.source, Transport::Tcp, OPTIONS.as_bytes().to_vec())
            .await
            .expect("reply");
        let at_a = next(&mut a_rx).await;
        assert_eq!(at_a.source, b.local_addr());
        assert_eq!(at_a.transport, Transport::Tcp);
        assert!(at_a.result.is_ok());
        // Nothing arrived over UDP or a second connection.
        assert!(b_rx.try_recv().is_err());
    }
}
