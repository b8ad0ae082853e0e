//! The one test harness, for the integration tests and the benches:
//!
//! - [`lab`]: studios and a balancer in front of them, [`Lab::builder`]
//!   (in this process or as `baton serve`; simulated studios, in network
//!   namespaces, or real servers);
//! - [`studios`]: what a simulated studio is like and the one way to start
//!   it, and workers-file entries;
//! - [`cmd`]: the `baton` binary, [`BatonCmd`], killed on drop;
//! - [`http`]: a client, request bodies, strict SSE parsing;
//! - [`plans`]: `baton bench` plans and a quiet observer;
//! - [`procfs`]: a process's CPU, wake-ups and RSS from `/proc` (idle benches);
//! - [`skip`]: tests that need a part this machine lacks say SKIPPED and
//!   are counted (and fail under `CI=true`);
//! - [`netlab`]: studio hosts in network namespaces, with real faults;
//! - [`real`]: real llama.cpp and llama-cpp-python servers;
//! - [`seed000`]: the user's failure, for the reliability test and bench;
//! - [`throwaway`]: a keychain of a test's own.
#![allow(dead_code, unused_imports)] // each test binary uses its own part

pub mod cmd;
pub mod http;
pub mod lab;
pub mod netlab;
pub mod plans;
pub mod procfs;
pub mod real;
pub mod seed000;
pub mod skip;
pub mod studios;
pub mod throwaway;

pub use cmd::{BatonCmd, BatonProcess};
pub use http::{
    Sse, chat_body, client, free_port, parse_sse, stream_chat, stream_chats, wait_until,
};
pub use lab::{Lab, Served, test_settings};
pub use plans::{Quiet, plan};
pub use studios::{
    SimCfgExt, pool, sim_cfg, start_sim, start_sim_at, start_sims, worker, worker_for, workers_for,
};
