//! What Baton knows about a worker's server software.
//!
//! The kind decides which identifying endpoints a studio answers (used by
//! discovery and preflight later) and which of them the balancer may probe.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The server software a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StudioKind {
    LmStudio,
    Ollama,
    LlamaCpp,
    Mlx,
    Vllm,
    Exo,
    Openai,
}

impl StudioKind {
    pub const ALL: [StudioKind; 7] = [
        StudioKind::LmStudio,
        StudioKind::Ollama,
        StudioKind::LlamaCpp,
        StudioKind::Mlx,
        StudioKind::Vllm,
        StudioKind::Exo,
        StudioKind::Openai,
    ];

    /// The spelling used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StudioKind::LmStudio => "lm_studio",
            StudioKind::Ollama => "ollama",
            StudioKind::LlamaCpp => "llama_cpp",
            StudioKind::Mlx => "mlx",
            StudioKind::Vllm => "vllm",
            StudioKind::Exo => "exo",
            StudioKind::Openai => "openai",
        }
    }

    /// The port the software listens on out of the box.
    pub fn default_port(self) -> u16 {
        match self {
            StudioKind::LmStudio => 1234,
            StudioKind::Ollama => 11434,
            StudioKind::LlamaCpp | StudioKind::Mlx => 8080,
            StudioKind::Vllm => 8000,
            StudioKind::Exo => 52415,
            StudioKind::Openai => 8080,
        }
    }

    /// Whether the software answers HTTP requests while it generates. When
    /// it does not (or may not), Baton sends it nothing of its own (probes,
    /// model lists) while it has a request in flight: a single-threaded
    /// server would hold the request until its generation ends, and
    /// llama-cpp-python would end that generation.
    ///
    /// LM Studio (Node), Ollama (Go), llama.cpp's server (an HTTP thread
    /// pool), vLLM (uvicorn, async) and mlx_lm.server since 0.28.4
    /// (`ThreadingHTTPServer`) answer while generating. A generic OpenAI
    /// server may be llama-cpp-python (one request at a time, behind a
    /// lock), and exo holds requests while it loads a model. A studio seen
    /// answering one request while generating another is learned to be
    /// concurrent whatever its kind.
    pub fn serves_http_concurrently(self) -> bool {
        match self {
            StudioKind::LmStudio
            | StudioKind::Ollama
            | StudioKind::LlamaCpp
            | StudioKind::Vllm
            | StudioKind::Mlx => true,
            StudioKind::Exo | StudioKind::Openai => false,
        }
    }

    /// All known spellings, comma separated, for error messages.
    pub fn known_list() -> String {
        Self::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for StudioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StudioKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown studio type `{s}` (known: {})",
                    StudioKind::known_list()
                )
            })
    }
}

/// Ids from an OpenAI `{"data":[{"id":...}]}` model list; `None` if the
/// body is not one (LM Studio answers 200 with an error object on paths it
/// does not know, so a 200 alone proves nothing).
pub fn parse_openai_models(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    data.iter()
        .map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// LM Studio's `/api/v0/models`: `(id, state)` pairs, state such as
/// `loaded` or `not-loaded`.
pub fn parse_lmstudio_models(body: &[u8]) -> Option<Vec<(String, String)>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    data.iter()
        .map(|m| {
            let id = m.get("id")?.as_str()?.to_string();
            let state = m
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            Some((id, state))
        })
        .collect()
}

/// Ollama's `/api/tags`: model names.
pub fn parse_ollama_tags(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let models = v.get("models")?.as_array()?;
    models
        .iter()
        .map(|m| {
            m.get("name")
                .or_else(|| m.get("model"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// Whether `served` names `wanted`, allowing Ollama's implicit `:latest`.
pub fn model_matches(served: &str, wanted: &str) -> bool {
    served == wanted
        || served.strip_suffix(":latest") == Some(wanted)
        || wanted.strip_suffix(":latest") == Some(served)
}
