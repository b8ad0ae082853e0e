//! A worker's server software and what follows from it alone: its name in
//! files, its default port, whether it answers while it generates, and its
//! cheapest health endpoint.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

/// The cheapest endpoint that says a studio of this kind is up.
pub fn health_path(kind: StudioKind) -> &'static str {
    match kind {
        StudioKind::LlamaCpp | StudioKind::Vllm => "/health",
        StudioKind::Ollama => "/api/version",
        // LM Studio answers 200 to any path, MLX's /health says nothing
        // of the model, exo has none: the model list is the honest check.
        StudioKind::LmStudio | StudioKind::Mlx | StudioKind::Exo | StudioKind::Openai => {
            "/v1/models"
        }
    }
}
