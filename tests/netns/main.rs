//! Tests with studio hosts in network namespaces the tests create
//! (`support::netlab`): real black holes, loss, resets, delays and dead
//! links. They need root (CI runs as root); without it they say SKIPPED
//! and are counted, and under `CI=true` they fail. A binary of their own so
//! the rest of the suite runs anywhere, and so developers sharing a machine
//! can leave namespaces to one run at a time.
//!
//! `cargo test --test netns reliability::` runs one module.

#[path = "../support/mod.rs"]
mod support;

mod diagnose;
mod preflight;
mod reliability;
