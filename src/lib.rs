//! Baton's engine: pool several local LLM servers ("studios") into one
//! OpenAI-compatible endpoint, and check, benchmark and simulate them.
//!
//! One module per concern; data flows one way: [`config`] → engine → API.

pub mod balancer;
pub mod batch;
pub mod bench;
pub mod chart;
pub mod config;
pub mod control;
pub mod discover;
pub mod engine;
pub mod error_code;
pub mod files;
pub mod limits;
pub mod logging;
pub mod netinfo;
pub mod preflight;
pub mod secrets;
pub(crate) mod server;
pub mod sim;
pub mod store;
pub mod studio;
