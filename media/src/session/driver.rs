//! The tokio task that runs one call's [`MediaCore`]: it owns the legs' UDP
//! sockets and the recorder file, and makes no media decisions itself.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::engine::{LegId, MediaCore, MediaEvent, MediaStats, Output};
use super::ports::PortAllocator;
use crate::error::MediaError;
use crate::g711::Codec;
use crate::prompt::Prompt;
use crate::recorder::{DualChannelRecorder, RecordingInfo};
use crate::sdp::MediaDescription;

/// Commands queued per call; call control sends a handful per call, so a
/// small bound only pushes back on a runaway caller.
const COMMAND_QUEUE: usize = 64;
/// Events queued for call control. If it falls this far behind, further
/// events are dropped with a warning rather than stall the media task.
const EVENT_QUEUE: usize = 256;
/// Largest datagram we read; G.711 at 20 ms is 172 bytes, so this is ample.
const RECEIVE_BUFFER: usize = 2048;
/// Datagrams read from one leg per wake-up before the task looks at its other leg, its
/// commands and its timers again.
const RECEIVE_BURST: usize = 16;

/// Tunables for a call's media.
#[derive(Debug, Clone, Copy)]
pub struct MediaConfig {
    /// Silence after which a leg that has sent RTP is reported dead.
    pub rtp_timeout: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_timeout: Duration::from_secs(30),
        }
    }
}

enum Command {
    AddLeg {
        leg: LegId,
        reply: oneshot::Sender<io::Result<u16>>,
    },
    SetRemote {
        leg: LegId,
        remote: MediaDescription,
        codec: Codec,
        dtmf_payload_type: Option<u8>,
    },
    Play {
        leg: LegId,
        prompt: Prompt,
        repeat: bool,
    },
    StopPlay {
        leg: LegId,
    },
    Bridge {
        record_to: Option<PathBuf>,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    Unbridge,
    /// Record the legs without relaying them (a voicemail).
    Record {
        record_to: PathBuf,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    Stats {
        reply: oneshot::Sender<MediaStats>,
    },
    Stop {
        reply: oneshot::Sender<Option<RecordingInfo>>,
    },
}

/// Entry point for a call's media task.
pub struct CallMedia;

impl CallMedia {
    /// Spawns the media task for one call with default settings.
    pub fn spawn(
        local_ip: IpAddr,
        ports: &PortAllocator,
    ) -> io::Result<(CallMediaHandle, mpsc::Receiver<MediaEvent>)> {
        CallMedia::spawn_with(local_ip, ports, MediaConfig::default())
    }

    /// Spawns the media task with explicit settings. Must be called within a
    /// tokio runtime.
    pub fn spawn_with(
        local_ip: IpAddr,
        ports: &PortAllocator,
        config: MediaConfig,
    ) -> io::Result<(CallMediaHandle, mpsc::Receiver<MediaEvent>)> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            io::Error::other(format!("CallMedia::spawn outside a tokio runtime: {e}"))
        })?;
        let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let driver = Driver {
            core: MediaCore::new(config.rtp_timeout),
            local_ip,
            ports: ports.clone(),
            sockets: [None, None],
            recorder: None,
            events: event_tx,
            rng: StdRng::from_entropy(),
        };
        runtime.spawn(driver.run(command_rx));
        Ok((
            CallMediaHandle {
                commands: command_tx,
            },
            event_rx,
        ))
    }
}

/// Controls one call's media task. Cheap to clone; the task ends on
/// [`CallMediaHandle::stop`] or when every handle is dropped.
#[derive(Debug, Clone)]
pub struct CallMediaHandle {
    commands: mpsc::Sender<Command>,
}

impl CallMediaHandle {
    async fn send(&self, command: Command) -> Result<(), MediaError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| MediaError::SessionClosed)
    }

    /// Binds a socket for the leg and returns its local RTP port for our
    /// SDP. Adding an existing leg returns its port again.
    pub async fn add_leg(&self, leg: LegId) -> io::Result<u16> {
        let closed = || io::Error::new(io::ErrorKind::NotConnected, MediaError::SessionClosed);
        let (reply, answer) = oneshot::channel();
        self.send(Command::AddLeg { leg, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Tells the leg where and how to send: the peer's SDP, the negotiated
    /// codec and the telephone-event payload type.
    pub async fn set_remote(
        &self,
        leg: LegId,
        remote: MediaDescription,
        codec: Codec,
        dtmf_payload_type: Option<u8>,
    ) -> Result<(), MediaError> {
        self.send(Command::SetRemote {
            leg,
            remote,
            codec,
            dtmf_payload_type,
        })
        .await
    }

    /// Plays a prompt to the leg in real time; `PlayDone` follows unless
    /// `repeat` (then it loops until `stop_play`).
    pub async fn play(&self, leg: LegId, prompt: Prompt, repeat: bool) -> Result<(), MediaError> {
        self.send(Command::Play {
            leg,
            prompt,
            repeat,
        })
        .await
    }

    pub async fn stop_play(&self, leg: LegId) -> Result<(), MediaError> {
        self.send(Command::StopPlay { leg }).await
    }

    /// Relays audio and DTMF between customer and agent, optionally
    /// recording to a stereo WAV. Fails without bridging if the recording
    /// file cannot be created, so a compliance recording is never silently
    /// skipped; call again with `None` to bridge unrecorded.
    pub async fn bridge(&self, record_to: Option<PathBuf>) -> Result<(), MediaError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Bridge { record_to, reply }).await?;
        answer.await.map_err(|_| MediaError::SessionClosed)?
    }

    /// Records what the legs send, unrelayed, into the call's stereo WAV (a queue voicemail,
    /// R3.20: the caller on its channel, the other silent). Fails if the file cannot be
    /// created.
    pub async fn record(&self, record_to: PathBuf) -> Result<(), MediaError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Record { record_to, reply }).await?;
        answer.await.map_err(|_| MediaError::SessionClosed)?
    }

    pub async fn unbridge(&self) -> Result<(), MediaError> {
        self.send(Command::Unbridge).await
    }

    /// Per-leg counters; zeros if the session has stopped.
    pub async fn stats(&self) -> MediaStats {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Stats { reply }).await.is_err() {
            return MediaStats::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Ends the call's media: finishes the recording, releases the ports.
    pub async fn stop(&self) -> Option<RecordingInfo> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Stop { reply }).await.ok()?;
        answer.await.ok().flatten()
    }
}

struct Driver {
    core: MediaCore,
    local_ip: IpAddr,
    ports: PortAllocator,
    sockets: [Option<(u16, UdpSocket)>; 2],
    recorder: Option<DualChannelRecorder>,
    events: mpsc::Sender<MediaEvent>,
    rng: StdRng,
}

fn index(leg: LegId) -> usize {
    match leg {
        LegId::Customer => 0,
        LegId::Agent => 1,
    }
}

/// Waits until the leg's socket has a datagram to read (never, for a leg without one).
/// Both legs' sockets are awaited for readiness and read into the one buffer of the call
/// afterwards, so a call holds one receive buffer, not one per leg (2 KiB less per call,
/// docs/PERFORMANCE.md, "Memory per call").
async fn readable(socket: &Option<(u16, UdpSocket)>) -> io::Result<()> {
    match socket {
        Some((_, socket)) => socket.readable().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        loop {
            self.drain_outputs();
            let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Stop { reply }) => {
                        let _ = reply.send(self.shut_down());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.shut_down();
                        return;
                    }
                },
                ready = readable(&self.sockets[0]) => {
                    self.on_readable(LegId::Customer, ready, &mut buffer);
                }
                ready = readable(&self.sockets[1]) => {
                    self.on_readable(LegId::Agent, ready, &mut buffer);
                }
                () = sleep => self.core.handle_timeout(now()),
            }
        }
    }

    /// Reads what the leg's socket holds, up to a burst, into `buffer`.
    fn on_readable(&mut self, leg: LegId, ready: io::Result<()>, buffer: &mut [u8]) {
        if let Err(error) = ready {
            debug!(?leg, %error, "RTP socket not readable");
            return;
        }
        for _ in 0..RECEIVE_BURST {
            let Some((_, socket)) = &self.sockets[index(leg)] else {
                return;
            };
            match socket.try_recv_from(buffer) {
                Ok((length, source)) => {
                    self.core
                        .handle_datagram(now(), leg, source, &buffer[..length])
                }
                // Readiness can be spurious; the next wake-up reads again.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                // Unconnected UDP sockets rarely fail; an ICMP error surfacing here
                // must not end the call.
                Err(error) => {
                    debug!(?leg, %error, "RTP receive failed");
                    return;
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::AddLeg { leg, reply } => {
                let _ = reply.send(self.add_leg(leg));
            }
            Command::SetRemote {
                leg,
                remote,
                codec,
                dtmf_payload_type,
            } => self
                .core
                .handle_set_remote(leg, &remote, codec, dtmf_payload_type),
            Command::Play {
                leg,
                prompt,
                repeat,
            } => self.core.handle_play(now(), leg, prompt, repeat),
            Command::StopPlay { leg } => self.core.handle_stop_play(leg),
            Command::Bridge { record_to, reply } => {
                let _ = reply.send(self.bridge(record_to));
            }
            Command::Unbridge => self.core.handle_unbridge(),
            Command::Record { record_to, reply } => {
                let result = self
                    .open_recorder(record_to)
                    .map(|()| self.core.handle_record(now()));
                let _ = reply.send(result);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.core.stats());
            }
            // Handled in `run`, which must also end the loop.
            Command::Stop { reply } => {
                let _ = reply.send(None);
            }
        }
    }

    fn add_leg(&mut self, leg: LegId) -> io::Result<u16> {
        if let Some((port, _)) = &self.sockets[index(leg)] {
            return Ok(*port);
        }
        let (port, socket) = self.ports.bind(self.local_ip)?;
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| UdpSocket::from_std(socket));
        match socket {
            Ok(socket) => {
                self.sockets[index(leg)] = Some((port, socket));
                self.core.handle_add_leg(leg, &mut self.rng);
                debug!(?leg, port, "leg bound");
                Ok(port)
            }
            Err(error) => {
                self.ports.release(port);
                Err(error)
            }
        }
    }

    fn bridge(&mut self, record_to: Option<PathBuf>) -> Result<(), MediaError> {
        if let Some(path) = record_to {
            self.open_recorder(path)?;
        }
        self.core.handle_bridge(now(), self.recorder.is_some());
        Ok(())
    }

    /// One recording per call: a re-bridge after hold continues the file already open (the
    /// hold shows up as silence).
    fn open_recorder(&mut self, path: PathBuf) -> Result<(), MediaError> {
        if self.recorder.is_none() {
            self.recorder = Some(DualChannelRecorder::create(path)?);
        }
        Ok(())
    }

    fn drain_outputs(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Transmit {
                    leg,
                    destination,
                    datagram,
                } => {
                    if let Some((_, socket)) = &self.sockets[index(leg)] {
                        // Real-time media: if the kernel buffer is full, the
                        // packet is late anyway, so drop rather than wait.
                        if let Err(error) = socket.try_send_to(&datagram, destination) {
                            debug!(?leg, %error, "RTP send failed");
                        }
                    }
                }
                Output::Event(event) => {
                    if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event)
                    {
                        warn!(?event, "media event queue full; event dropped");
                    }
                }
                Output::Record {
                    channel,
                    position_samples,
                    samples,
                } => {
                    if let Some(recorder) = self.recorder.as_mut() {
                        if let Err(error) = recorder.push(channel, position_samples, &samples) {
                            error!(%error, "recording write failed; recording stopped");
                            self.recorder = None;
                        }
                    }
                }
            }
        }
    }

    fn shut_down(&mut self) -> Option<RecordingInfo> {
        for (port, socket) in self.sockets.iter_mut().filter_map(Option::take) {
            drop(socket);
            self.ports.release(port);
        }
        let recorder = self.recorder.take()?;
        let length = self.core.recording_length(now()).unwrap_or(0);
        match recorder.finish_at(length) {
            Ok(info) => Some(info),
            Err(error) => {
                error!(%error, "finishing the recording failed");
                None
            }
        }
    }
}

/// The driver is the only place that reads the clock; tokio's clock so a
/// paused test runtime stays consistent with `sleep_until`.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
