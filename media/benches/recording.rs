//! WAV writing: the `DualChannelRecorder` of a bridged call gets a 20 ms frame (160
//! samples) for each channel 50 times a second and writes the stereo frames as soon as
//! both channels have reached them. Each iteration pushes one frame per channel (agent,
//! then customer, at the same position); the file goes to the temp directory (a fresh one
//! per criterion sample, creation and closing untimed).
//!
//! Run: `cargo bench -p media --bench recording`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use media::prompt::{Prompt, FRAME_SAMPLES};
use media::recorder::{Channel, DualChannelRecorder};

fn write_frames(iters: u64, file: u64, agent: &[i16], customer: &[i16]) -> Duration {
    let path = std::env::temp_dir().join(format!(
        "callgrid-bench-recording-{}-{file}.wav",
        std::process::id()
    ));
    let mut recorder = DualChannelRecorder::create(&path).expect("temp dir writable");
    let frames = agent.len() / FRAME_SAMPLES;
    let start = Instant::now();
    for i in 0..iters {
        let position = i * FRAME_SAMPLES as u64;
        let k = (i as usize % frames) * FRAME_SAMPLES;
        recorder
            .push(Channel::Agent, position, &agent[k..k + FRAME_SAMPLES])
            .expect("temp file writable");
        recorder
            .push(Channel::Customer, position, &customer[k..k + FRAME_SAMPLES])
            .expect("temp file writable");
    }
    let elapsed = start.elapsed();
    let info = recorder.finish().expect("temp file writable");
    assert_eq!(info.samples, iters * FRAME_SAMPLES as u64);
    let _ = std::fs::remove_file(&path);
    elapsed
}

fn recording(c: &mut Criterion) {
    let agent = Prompt::tone("agent", &[440.0, 950.0], 700, 300, 1000);
    let customer = Prompt::tone("customer", &[350.0, 1400.0], 400, 100, 1000);
    let mut group = c.benchmark_group("media_recording");
    // One element: 20 ms of stereo audio (2 x 160 samples, 640 bytes of WAV).
    group.throughput(Throughput::Elements(1));
    let mut file = 0;
    group.bench_function("wav_push/20ms_both_channels", |b| {
        b.iter_custom(|iters| {
            file += 1;
            write_frames(iters, file, &agent.samples, &customer.samples)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = recording
}
criterion_main!(benches);
