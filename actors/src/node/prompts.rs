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

const BUILTIN: [(&str, &[u8]); 4] = [
    ("welcome", include_bytes!("../../prompts/welcome.wav")),
    ("menu", include_bytes!("../../prompts/menu.wav")),
    ("music", include_bytes!("../../prompts/music.wav")),
    ("timeout", include_bytes!("../../prompts/timeout.wav")),
];

fn cache() -> &'static Mutex<HashMap<String, Prompt>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Prompt>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The prompt `id` of `tenant`, decoded, or None if it is not configured or unreadable.
pub fn load(rt: &Runtime, tenant: &TenantId, id: &PromptId) -> Option<Prompt> {
    let file = rt
        .cluster
        .read(|s| s.prompt(tenant, id).map(|p| p.file.clone()))?;
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
            assert!(p.duration_ms() > 1_000, "{name} has audio");
        }
    }
}
