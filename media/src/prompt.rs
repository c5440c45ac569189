//! Audio prompts: announcements, queue music and tones, held in memory as
//! 8 kHz mono 16-bit PCM, ready to be cut into 20 ms RTP frames.
//!
//! Prompts are loaded once and shared between calls (`Arc<[i16]>`), so
//! playing one to a thousand callers costs one copy.

use std::io::Cursor;
use std::sync::Arc;

use crate::error::MediaError;

/// The only rate G.711 carries.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 160;

/// An audio clip at 8 kHz mono 16-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub name: String,
    pub samples: Arc<[i16]>,
}

impl Prompt {
    /// Builds a prompt from samples already at 8 kHz mono.
    pub fn from_samples(name: impl Into<String>, samples: Vec<i16>) -> Prompt {
        Prompt {
            name: name.into(),
            samples: samples.into(),
        }
    }

    /// Loads a WAV file's bytes. 8 kHz mono 16-bit is taken as is; any other
    /// rate, channel count or sample format (espeak-ng writes 22.05 kHz,
    /// studio assets are often 16 or 44.1 kHz stereo) is mixed down to mono
    /// and resampled to 8 kHz.
    ///
    /// Resampling is linear interpolation without a low-pass filter: cheap
    /// and good enough for speech prompts, whose energy sits below 4 kHz,
    /// though it aliases any content above 4 kHz. Convert assets offline with
    /// sox if quality matters.
    pub fn from_wav_bytes(name: impl Into<String>, bytes: &[u8]) -> Result<Prompt, MediaError> {
        let name = name.into();
        let unsupported = |reason: String| MediaError::UnsupportedWav {
            name: name.clone(),
            reason,
        };
        let reader =
            hound::WavReader::new(Cursor::new(bytes)).map_err(|e| unsupported(e.to_string()))?;
        let spec = reader.spec();
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(unsupported(format!("{spec:?}")));
        }
        let interleaved = read_as_i16(reader).map_err(|e| unsupported(e.to_string()))?;
        let mono = downmix(&interleaved, usize::from(spec.channels));
        let samples = resample_linear(&mono, spec.sample_rate, SAMPLE_RATE);
        Ok(Prompt {
            name,
            samples: samples.into(),
        })
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(SAMPLE_RATE)
    }

    /// Number of 20 ms frames [`Prompt::frames`] yields.
    pub fn frame_count(&self) -> usize {
        self.samples.len().div_ceil(FRAME_SAMPLES)
    }

    /// One 20 ms frame by index, the last one padded with silence; `None`
    /// past the end. Lets a player keep an index instead of a borrow.
    pub fn frame(&self, index: usize) -> Option<[i16; FRAME_SAMPLES]> {
        let start = index.checked_mul(FRAME_SAMPLES)?;
        let chunk = self.samples.get(start..)?;
        if chunk.is_empty() {
            return None;
        }
        let mut frame = [0i16; FRAME_SAMPLES];
        let n = chunk.len().min(FRAME_SAMPLES);
        frame[..n].copy_from_slice(&chunk[..n]);
        Some(frame)
    }

    /// The prompt as 20 ms frames, the last padded with silence.
    pub fn frames(&self) -> impl Iterator<Item = [i16; FRAME_SAMPLES]> + '_ {
        (0..self.frame_count()).filter_map(move |i| self.frame(i))
    }

    /// Synthesises a tone pattern: the sum of `freqs` for `on_ms`, silence
    /// for `off_ms`, repeated until `total_ms`. `off_ms = 0` gives a steady
    /// tone. Used for ringback-like queue music fallback and in tests.
    pub fn tone(
        name: impl Into<String>,
        freqs: &[f32],
        on_ms: u32,
        off_ms: u32,
        total_ms: u32,
    ) -> Prompt {
        let per_ms = SAMPLE_RATE as usize / 1000;
        let total = total_ms as usize * per_ms;
        let on = on_ms as usize * per_ms;
        let cycle = (on_ms as usize + off_ms as usize) * per_ms;
        // -10 dBFS overall, split between the components so the sum never clips.
        let amplitude = 0.316 * f32::from(i16::MAX) / freqs.len().max(1) as f32;
        let samples = (0..total)
            .map(|n| {
                let in_cycle = if cycle == 0 { n } else { n % cycle };
                if on == 0 || in_cycle >= on {
                    return 0;
                }
                let t = n as f32 / SAMPLE_RATE as f32;
                let value: f32 = freqs
                    .iter()
                    .map(|f| (2.0 * std::f32::consts::PI * f * t).sin() * amplitude)
                    .sum();
                value as i16
            })
            .collect();
        Prompt::from_samples(name, samples)
    }
}

fn read_as_i16<R: std::io::Read>(
    mut reader: hound::WavReader<R>,
) -> Result<Vec<i16>, hound::Error> {
    let spec = reader.spec();
    match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16))
            .collect(),
        hound::SampleFormat::Int if spec.bits_per_sample <= 16 => {
            // 8-bit WAVs are read by hound as signed values in -128..=127.
            let shift = 16 - u32::from(spec.bits_per_sample);
            reader
                .samples::<i16>()
                .map(|s| s.map(|v| v << shift))
                .collect()
        }
        hound::SampleFormat::Int => {
            let shift = u32::from(spec.bits_per_sample).saturating_sub(16).min(31);
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| (v >> shift) as i16))
                .collect()
        }
    }
}

fn downmix(interleaved: &[i16], channels: usize) -> Vec<i16> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|frame| {
            let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
            // The mean of i16 values is an i16.
            (sum / channels as i32) as i16
        })
        .collect()
}

/// Linear-interpolation resampler; see [`Prompt::from_wav_bytes`] for why
/// that is acceptable here.
fn resample_linear(input: &[i16], from_rate: u32, to_rate: u32) -> Vec<i16> {
    if from_rate == to_rate || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to_rate) / u64::from(from_rate)) as usize;
    let step = f64::from(from_rate) / f64::from(to_rate);
    (0..out_len)
        .map(|i| {
            let position = i as f64 * step;
            let index = position as usize;
            let fraction = position - index as f64;
            let a = f64::from(input[index.min(input.len() - 1)]);
            let b = f64::from(input[(index + 1).min(input.len() - 1)]);
            (a + (b - a) * fraction).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav_bytes(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).expect("in-memory writer");
        for &s in samples {
            writer.write_sample(s).expect("in-memory write");
        }
        writer.finalize().expect("in-memory finalize");
        cursor.into_inner()
    }

    #[test]
    fn eight_khz_mono_is_taken_verbatim() {
        let samples: Vec<i16> = (0..400).map(|i| i as i16).collect();
        let prompt = Prompt::from_wav_bytes("p", &wav_bytes(8000, 1, &samples)).expect("valid wav");
        assert_eq!(&*prompt.samples, &samples[..]);
        assert_eq!(prompt.frame_count(), 3);
        let frames: Vec<_> = prompt.frames().collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2][79], 399);
        assert_eq!(frames[2][80], 0, "last frame padded with silence");
    }

    #[test]
    fn other_rates_and_stereo_are_converted() {
        // 22.05 kHz stereo, one second: left constant 1000, right constant 3000.
        let stereo: Vec<i16> = (0..22050).flat_map(|_| [1000i16, 3000]).collect();
        let prompt =
            Prompt::from_wav_bytes("espeak", &wav_bytes(22050, 2, &stereo)).expect("valid wav");
        assert_eq!(prompt.samples.len(), 8000);
        assert!(prompt.samples.iter().all(|&s| s == 2000));
        let sixteen: Vec<i16> = (0..1600).map(|i| (i % 100) as i16).collect();
        let prompt =
            Prompt::from_wav_bytes("wide", &wav_bytes(16000, 1, &sixteen)).expect("valid wav");
        assert_eq!(prompt.samples.len(), 800);
        assert_eq!(prompt.duration_ms(), 100);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            Prompt::from_wav_bytes("bad", b"RIFF nope"),
            Err(MediaError::UnsupportedWav { .. })
        ));
    }

    #[test]
    fn tone_has_the_requested_cadence() {
        let tone = Prompt::tone("ring", &[440.0, 480.0], 100, 100, 400);
        assert_eq!(tone.samples.len(), 3200);
        let energy = |range: std::ops::Range<usize>| -> i64 {
            tone.samples[range]
                .iter()
                .map(|&s| i64::from(s).abs())
                .sum()
        };
        assert!(energy(0..800) > 0);
        assert_eq!(energy(800..1600), 0);
        assert!(energy(1600..2400) > 0);
        let peak = tone
            .samples
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        assert!(peak < 11000, "stays at about -10 dBFS, got {peak}");
    }
}
