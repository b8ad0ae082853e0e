//! What Baton knows about how studios behave: the floor below preflight,
//! the balancer, discovery and the config, so each of them asks here and
//! none asks another.
//!
//! - `kind`: the server software, its default port, whether it answers
//!   while it generates, its cheapest health endpoint
//! - `connect`: why a connect failed (errno classes, macOS's Local Network
//!   denial), the remedy for each, how to start each kind's server
//! - `api`: a studio that lacks an API, told from one that failed
//! - `models`: each kind's model list, and Ollama's model names
//!
//! Nothing here does I/O of its own (the local subnets aside, read to tell
//! the Local Network denial); it only knows.

mod api;
mod connect;
mod kind;
mod models;

pub use connect::{ConnectFailure, LOCAL_NETWORK_FIX};
pub use kind::{StudioKind, health_path};

pub(crate) use api::lacks_api;
pub(crate) use connect::{classify_here, classify_with, start_server_hint};
pub(crate) use models::{
    model_matches, parse_lmstudio_models, parse_ollama_tags, parse_openai_models,
};

/// The most requests a studio declared `"auto"` is ever given at once: the
/// balancer learns the real number below it (`balancer::limit`), and the
/// config reports it as the studio's slots.
pub const AUTO_CEILING: u32 = 16;
