//! Dual-channel call recording: one stereo WAV (8 kHz, 16-bit linear PCM)
//! with the agent on channel 0 and the customer on channel 1, the layout
//! speech analytics and QA tools expect.
//!
//! Callers push audio at a sample position (offset since the recording
//! started, derived from arrival time), so silence and packet loss become
//! silence in the file and the two channels stay aligned. Memory is bounded:
//! frames are written as soon as both channels have reached them, and a
//! channel lagging more than [`MAX_LAG_SAMPLES`] behind the other is padded
//! with silence rather than waited for.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::MediaError;
use crate::prompt::SAMPLE_RATE;

/// How far one channel may run ahead of the other before the lagging one is
/// given up on and filled with silence: 1 s.
pub const MAX_LAG_SAMPLES: u64 = SAMPLE_RATE as u64;

/// Which side of the conversation a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Agent,
    Customer,
}

impl Channel {
    fn index(self) -> usize {
        match self {
            Channel::Agent => 0,
            Channel::Customer => 1,
        }
    }
}

/// What a finished recording contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingInfo {
    pub path: PathBuf,
    /// Sample frames per channel.
    pub samples: u64,
    pub duration_ms: u64,
}

/// Writes one call's stereo recording.
///
/// Invariant: `buffers[c]` holds channel `c`'s samples from position
/// `written` onwards, so `written + buffers[c].len()` is how far the channel
/// has been filled.
pub struct DualChannelRecorder {
    path: PathBuf,
    writer: hound::WavWriter<BufWriter<File>>,
    /// Frames already written to the file.
    written: u64,
    buffers: [VecDeque<i16>; 2],
}

impl std::fmt::Debug for DualChannelRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualChannelRecorder")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl DualChannelRecorder {
    /// Creates (or truncates) the WAV file.
    pub fn create(path: impl AsRef<Path>) -> Result<DualChannelRecorder, MediaError> {
        let path = path.as_ref().to_path_buf();
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(&path, spec).map_err(|source| MediaError::Wav {
            path: path.clone(),
            source,
        })?;
        Ok(DualChannelRecorder {
            path,
            writer,
            written: 0,
            buffers: [VecDeque::new(), VecDeque::new()],
        })
    }

    fn wav_error(&self, source: hound::Error) -> MediaError {
        MediaError::Wav {
            path: self.path.clone(),
            source,
        }
    }

    fn filled(&self, index: usize) -> u64 {
        self.written + self.buffers[index].len() as u64
    }

    /// Adds audio for one channel at `position_samples` since the start.
    ///
    /// Audio before what has already been written (a very late packet) is
    /// dropped; audio overlapping buffered audio replaces it; a gap is silence.
    pub fn push(
        &mut self,
        channel: Channel,
        position_samples: u64,
        samples: &[i16],
    ) -> Result<(), MediaError> {
        let end = position_samples.saturating_add(samples.len() as u64);
        // Keep memory bounded even if a caller jumps far ahead: write out
        // everything up to one lag window before the new audio.
        if end > self.written + 2 * MAX_LAG_SAMPLES {
            self.write_until(end - MAX_LAG_SAMPLES)?;
        }
        let skip = self.written.saturating_sub(position_samples);
        if skip >= samples.len() as u64 {
            return Ok(());
        }
        let samples = &samples[skip as usize..];
        let offset = (position_samples + skip - self.written) as usize;
        let buffer = &mut self.buffers[channel.index()];
        if buffer.len() < offset {
            buffer.resize(offset, 0);
        }
        for (i, &sample) in samples.iter().enumerate() {
            match buffer.get_mut(offset + i) {
                Some(slot) => *slot = sample,
                None => buffer.push_back(sample),
            }
        }
        self.flush_ready()
    }

    /// Writes every frame both channels have reached, and pads a channel
    /// lagging by more than the window.
    fn flush_ready(&mut self) -> Result<(), MediaError> {
        let ahead = self.filled(0).max(self.filled(1));
        let both = self.filled(0).min(self.filled(1));
        let target = both.max(ahead.saturating_sub(MAX_LAG_SAMPLES));
        self.write_until(target)
    }

    /// Writes frames up to position `target`, using silence where a channel
    /// has nothing buffered.
    fn write_until(&mut self, target: u64) -> Result<(), MediaError> {
        while self.written < target {
            for index in 0..2 {
                let sample = self.buffers[index].pop_front().unwrap_or(0);
                self.writer
                    .write_sample(sample)
                    .map_err(|e| self.wav_error(e))?;
            }
            self.written += 1;
        }
        Ok(())
    }

    /// Frames written to the file so far.
    pub fn written_samples(&self) -> u64 {
        self.written
    }

    /// Writes what is buffered (padding the shorter channel) and closes the file.
    pub fn finish(self) -> Result<RecordingInfo, MediaError> {
        self.finish_at(0)
    }

    /// Like `finish`, but the file lasts at least `length_samples`: the recording covers the
    /// whole bridged time even if a phone stopped sending RTP before hanging up (silence is
    /// what the other side heard then).
    pub fn finish_at(mut self, length_samples: u64) -> Result<RecordingInfo, MediaError> {
        let end = self.filled(0).max(self.filled(1)).max(length_samples);
        self.write_until(end)?;
        let path = self.path.clone();
        let samples = self.written;
        self.writer.finalize().map_err(|source| MediaError::Wav {
            path: path.clone(),
            source,
        })?;
        Ok(RecordingInfo {
            path,
            samples,
            duration_ms: samples * 1000 / u64::from(SAMPLE_RATE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Prompt;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("callgrid-media-{}-{name}.wav", std::process::id()))
    }

    fn read_back(path: &Path) -> (hound::WavSpec, Vec<i16>, Vec<i16>) {
        let mut reader = hound::WavReader::open(path).expect("recording exists");
        let spec = reader.spec();
        let all: Vec<i16> = reader
            .samples::<i16>()
            .map(|s| s.expect("valid sample"))
            .collect();
        let agent = all.iter().step_by(2).copied().collect();
        let customer = all.iter().skip(1).step_by(2).copied().collect();
        (spec, agent, customer)
    }

    fn energy(samples: &[i16]) -> i64 {
        samples
            .iter()
            .map(|&s| i64::from(s) * i64::from(s))
            .sum::<i64>()
            / samples.len().max(1) as i64
    }

    #[test]
    fn two_tones_land_on_their_own_channels() {
        let path = temp_path("tones");
        let mut recorder = DualChannelRecorder::create(&path).expect("temp dir writable");
        let agent = Prompt::tone("a", &[400.0], 1000, 0, 1000);
        let customer = Prompt::tone("c", &[1000.0], 1000, 0, 1000);
        // Interleave 20 ms pushes the way a bridge would, customer slightly late.
        for (i, (a, c)) in agent.frames().zip(customer.frames()).enumerate() {
            let position = i as u64 * 160;
            recorder.push(Channel::Agent, position, &a).expect("write");
            recorder
                .push(Channel::Customer, position, &c)
                .expect("write");
        }
        let info = recorder.finish().expect("finish");
        assert_eq!(info.samples, 8000);
        assert_eq!(info.duration_ms, 1000);
        let (spec, agent_ch, customer_ch) = read_back(&path);
        assert_eq!(spec.channels, 2);
        assert_eq!(spec.sample_rate, 8000);
        assert_eq!(agent_ch.len(), 8000);
        assert_eq!(&agent_ch[..], &agent.samples[..]);
        assert_eq!(&customer_ch[..], &customer.samples[..]);
        assert!(energy(&agent_ch) > 1_000_000);
        assert!(energy(&customer_ch) > 1_000_000);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn gaps_become_silence_and_lagging_channel_is_padded() {
        let path = temp_path("gaps");
        let mut recorder = DualChannelRecorder::create(&path).expect("temp dir writable");
        let loud = [10_000i16; 160];
        // Agent talks at 0 and again at 2 s; the customer is silent throughout.
        recorder.push(Channel::Agent, 0, &loud).expect("write");
        recorder.push(Channel::Agent, 16_000, &loud).expect("write");
        // The customer has sent nothing, so at most 1 s (plus one push) is buffered.
        assert!(recorder.written_samples() >= 16_160 - MAX_LAG_SAMPLES);
        // A very late customer packet for already-written time is dropped silently.
        recorder.push(Channel::Customer, 0, &loud).expect("write");
        let info = recorder.finish().expect("finish");
        assert_eq!(info.samples, 16_160);
        let (_, agent_ch, customer_ch) = read_back(&path);
        assert!(agent_ch[..160].iter().all(|&s| s == 10_000));
        assert!(agent_ch[160..16_000].iter().all(|&s| s == 0));
        assert!(agent_ch[16_000..].iter().all(|&s| s == 10_000));
        assert!(customer_ch.iter().all(|&s| s == 0));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn far_jump_does_not_buffer_the_gap() {
        let path = temp_path("jump");
        let mut recorder = DualChannelRecorder::create(&path).expect("temp dir writable");
        recorder
            .push(Channel::Customer, 80_000, &[1; 160])
            .expect("write");
        assert!(recorder
            .buffers
            .iter()
            .all(|b| b.len() as u64 <= 2 * MAX_LAG_SAMPLES + 160));
        let info = recorder.finish().expect("finish");
        assert_eq!(info.samples, 80_160);
        let _ = std::fs::remove_file(&path);
    }
}
