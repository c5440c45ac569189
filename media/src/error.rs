//! The crate's one error type.
//!
//! Variants say who is at fault: the far end sent something we cannot use
//! (`Malformed*`, `NoAudio`, `UnsupportedWav`), local storage failed (`Io`,
//! `Wav`), or the caller used a session that has already stopped (`SessionClosed`).

use std::path::PathBuf;

/// Everything that can go wrong in the media crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The peer sent bytes that are not a valid RTP packet.
    #[error("malformed RTP packet from peer: {0}")]
    MalformedRtp(String),
    /// The peer sent an SDP body we could not parse.
    #[error("malformed SDP from peer: {0}")]
    MalformedSdp(String),
    /// The peer's SDP parsed but has no usable audio stream.
    #[error("SDP from peer has no usable audio stream: {0}")]
    NoAudio(String),
    /// A prompt file is a WAV we cannot convert (config or asset problem).
    #[error("prompt {name:?} is not a usable WAV: {reason}")]
    UnsupportedWav { name: String, reason: String },
    /// Reading or writing a WAV failed (local storage).
    #[error("WAV I/O failed for {path:?}: {source}")]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    /// A socket or file operation failed locally.
    #[error("local I/O failed while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The call's media task has already stopped; the command was not applied.
    #[error("call media session is closed")]
    SessionClosed,
}
