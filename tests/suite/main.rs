//! The engine's integration tests, in one binary (one link instead of one
//! per file): everything that runs on loopback, over real sockets on
//! 127.0.0.x, real SQLite, the official Python clients and headless
//! Chromium. The other test binaries are apart for a reason:
//!
//! - `netns`: studio hosts in network namespaces with real faults (root);
//! - `soak`: a minute of chaos that loads the whole machine;
//! - `real_servers`: real llama.cpp servers that use both cores;
//! - `readme`: every README command, run as written (cargo included).
//!
//! `cargo test --test suite balancer::` runs one module.

#[path = "../support/mod.rs"]
mod support;

mod balancer;
mod batch;
mod bench;
mod capacity;
mod cli;
mod config;
mod control_api;
mod dashboard_ui;
mod discover;
mod every_client;
mod fuzz_request;
mod models;
mod report;
mod security;
mod server_behaviours;
mod sim;
mod work_conserving;
