//! Codes the UI acts on: beside an error's message and fix, a situation
//! that has its own screen or button (typed, never free text in JSON).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Listening beyond loopback needs the balancer's API key.
    NeedsApiKey,
    /// macOS keeps Baton off the local network (Privacy & Security > Local
    /// Network): the UI links to that setting and offers "Try again".
    LocalNetworkDenied,
    /// The keychain refused to give Baton a secret (the user chose Deny).
    KeychainDenied,
    /// First-run setup was asked for while a workers file exists (it is
    /// never replaced).
    WorkersFileExists,
}
