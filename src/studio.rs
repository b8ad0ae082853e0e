//! What Baton knows about a worker's server software.
//!
//! The kind decides which identifying endpoints a studio answers (used by
//! discovery and preflight later) and which of them the balancer may probe.

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
