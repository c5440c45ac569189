//! Prompt loading. The sample's prompts (`builtin:welcome`, `builtin:menu`, `builtin:music`,
//! `builtin:timeout`) are compiled into the binary, so every node has them without shared
//! storage; other prompts name a WAV file on the nodes' prompt directory. Decoded prompts are
//! cached: decoding happens once per node, not once per call.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use media::prompt::Prompt;
use model::{PromptId, TenantId};
use tracing::warn;

use super::Runtime;

/// The WAVs bundled into the binary (`scripts/make-prompts` regenerates the spoken ones).
const BUILTIN: [(&str, &[u8]); 38] = [
    ("welcome", include_bytes!("../../prompts/welcome.wav")),
    ("menu", include_bytes!("../../prompts/menu.wav")),
    ("music", include_bytes!("../../prompts/music.wav")),
    ("timeout", include_bytes!("../../prompts/timeout.wav")),
    ("ewt_prefix", include_bytes!("../../prompts/ewt_prefix.wav")),
    ("ewt_suffix", include_bytes!("../../prompts/ewt_suffix.wav")),
    (
        "agent_prefix",
        include_bytes!("../../prompts/agent_prefix.wav"),
    ),
    (
        "agent_suffix",
        include_bytes!("../../prompts/agent_suffix.wav"),
    ),
    ("voicemail", include_bytes!("../../prompts/voicemail.wav")),
    (
        "voicemail_thanks",
        include_bytes!("../../prompts/voicemail_thanks.wav"),
    ),
    ("number_0", include_bytes!("../../prompts/number_0.wav")),
    ("number_1", include_bytes!("../../prompts/number_1.wav")),
    ("number_2", include_bytes!("../../prompts/number_2.wav")),
    ("number_3", include_bytes!("../../prompts/number_3.wav")),
    ("number_4", include_bytes!("../../prompts/number_4.wav")),
    ("number_5", include_bytes!("../../prompts/number_5.wav")),
    ("number_6", include_bytes!("../../prompts/number_6.wav")),
    ("number_7", include_bytes!("../../prompts/number_7.wav")),
    ("number_8", include_bytes!("../../prompts/number_8.wav")),
    ("number_9", include_bytes!("../../prompts/number_9.wav")),
    ("number_10", include_bytes!("../../prompts/number_10.wav")),
    ("number_11", include_bytes!("../../prompts/number_11.wav")),
    ("number_12", include_bytes!("../../prompts/number_12.wav")),
    ("number_13", include_bytes!("../../prompts/number_13.wav")),
    ("number_14", include_bytes!("../../prompts/number_14.wav")),
    ("number_15", include_bytes!("../../prompts/number_15.wav")),
    ("number_16", include_bytes!("../../prompts/number_16.wav")),
    ("number_17", include_bytes!("../../prompts/number_17.wav")),
    ("number_18", include_bytes!("../../prompts/number_18.wav")),
    ("number_19", include_bytes!("../../prompts/number_19.wav")),
    ("number_20", include_bytes!("../../prompts/number_20.wav")),
    ("number_30", include_bytes!("../../prompts/number_30.wav")),
    ("number_40", include_bytes!("../../prompts/number_40.wav")),
    ("number_50", include_bytes!("../../prompts/number_50.wav")),
    ("number_60", include_bytes!("../../prompts/number_60.wav")),
    ("number_70", include_bytes!("../../prompts/number_70.wav")),
    ("number_80", include_bytes!("../../prompts/number_80.wav")),
    ("number_90", include_bytes!("../../prompts/number_90.wav")),
];

/// Bundled prompts every tenant has without configuring them: the numbers that speak an
/// estimated wait (R3.9). A tenant's own prompt of the same id wins (a recorded voice).
fn system_prompt(id: &PromptId) -> Option<String> {
    let n = id.as_str().strip_prefix("number_")?;
    BUILTIN
        .iter()
        .any(|(name, _)| *name == id.as_str())
        .then(|| format!("builtin:number_{n}"))
}

fn cache() -> &'static Mutex<HashMap<String, Prompt>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Prompt>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The prompt `id` of `tenant`, decoded, or None if it is not configured or unreadable.
pub fn load(rt: &Runtime, tenant: &TenantId, id: &PromptId) -> Option<Prompt> {
    let file = rt
        .cluster
        .read(|s| s.prompt(tenant, id).map(|p| p.file.clone()))
        .or_else(|| system_prompt(id))?;
    if let Some(prompt) = cache().lock().expect("prompt cache").get(&file) {
        return Some(prompt.clone());
    }
    let prompt = match file.strip_prefix("builtin:") {
        Some(name) => {
            let bytes = BUILTIN.iter().find(|(n, _)| *n == name)?.1;
            Prompt::from_wav_bytes(name, bytes)
        }
        None => {
            // Prompt files live under the node's data directory; no path may leave it.
            if file.contains("..") || file.starts_with('/') {
                warn!(file, "prompt path refused");
                return None;
            }
            let path = rt.config.data_dir.join("prompts").join(&file);
            std::fs::read(&path)
                .map_err(|e| media::MediaError::Io {
                    context: "reading a prompt file",
                    source: e,
                })
                .and_then(|b| Prompt::from_wav_bytes(&file, &b))
        }
    };
    match prompt {
        Ok(prompt) => {
            cache()
                .lock()
                .expect("prompt cache")
                .insert(file, prompt.clone());
            Some(prompt)
        }
        Err(error) => {
            warn!(%error, file, "prompt unreadable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_prompts_decode_to_8khz() {
        for (name, bytes) in BUILTIN {
            let p = Prompt::from_wav_bytes(name, bytes).expect("bundled prompts are valid WAV");
            let shortest = if name.starts_with("number_") {
                300
            } else {
                1_000
            };
            assert!(p.duration_ms() > shortest, "{name} has audio");
        }
    }

    #[test]
    fn every_number_an_estimate_speaks_is_bundled() {
        for minutes in 1..=99 {
            for id in model::number_prompts(minutes) {
                assert!(system_prompt(&id).is_some(), "{id} for {minutes}");
            }
        }
        assert_eq!(system_prompt(&"music".parse().unwrap()), None);
        assert_eq!(system_prompt(&"number_21".parse().unwrap()), None);
    }
}
