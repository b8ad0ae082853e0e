//! The control API: the engine on 127.0.0.1 for the dashboard (`ui/`) in a
//! browser and in the menu-bar app's window. Routes and types are in
//! `docs/CONTROL_API.md`.
//!
//! - `security`: the per-install token, `Host` and `Origin` checks
//! - `routes`: one small handler per route, the engine passed as state
//! - `json`: request bodies through one extractor, and the one error answer
//! - `sse`: the engine's events as a server-sent event stream
//! - `assets`: the UI's files, embedded in release builds

mod assets;
mod json;
mod routes;
mod security;
mod sse;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

pub use security::install_token;

/// The control API's default port.
pub const DEFAULT_PORT: u16 = 8422;

/// Connections served at once: a few dashboards and app windows need a
/// handful each (one holds the event stream); more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// Time a client has to send a request head, and the longest a
/// keep-alive connection stays open idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head accepted (431 beyond).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why the control API could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot listen on 127.0.0.1:{port}: {source}\n  fix: another Baton (or another program) uses that port; quit it, or pass --control-port"
    )]
    Bind { port: u16, source: std::io::Error },
}

/// A running control API. Dropping it stops the server.
pub struct ControlApi {
    addr: SocketAddr,
    token: String,
    stop: CancellationToken,
}

impl ControlApi {
    /// Serve `engine` on 127.0.0.1:`port` (0 picks a free port) with `token`.
    pub async fn start(engine: Engine, port: u16, token: String) -> Result<ControlApi, Error> {
        // Loopback only, always: this API can start servers and read files.
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .map_err(|source| Error::Bind { port, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { port, source })?;
        let stop = CancellationToken::new();
        let app = routes::router(
            engine,
            security::Guard::new(addr, token.clone()),
            stop.clone(),
        );
        tokio::spawn(crate::server::serve(
            listener,
            app,
            stop.clone(),
            crate::server::Limits {
                header_read_timeout: HEADER_READ_TIMEOUT,
                max_head_bytes: MAX_HEAD_BYTES,
                max_connections: MAX_CONNECTIONS,
            },
        ));
        tracing::debug!(%addr, "control API listening");
        Ok(ControlApi { addr, token, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The dashboard's address with the token in the fragment (browsers
    /// never send a fragment to a server, so it stays out of every log).
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/#token={}", self.addr, self.token)
    }

    /// The compact view for the menu-bar popover.
    pub fn popover_url(&self) -> String {
        format!("http://{}/#view=popover&token={}", self.addr, self.token)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        // Give open event streams a moment to end.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for ControlApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
