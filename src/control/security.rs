//! Who may talk to the control API: a request must name the API's own
//! address in `Host` (so a web page cannot reach it through DNS
//! rebinding), must not come from another site's page (`Origin`), and must
//! carry the per-install token on every `/api/` route. No CORS header is
//! ever sent, so no other origin can read an answer.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Keychain entry holding the control API's token.
pub const TOKEN_ENTRY: &str = "control-token";

/// The per-install token: from the keychain, created there on first use.
/// Without a usable keychain, a token for this process only (the
/// dashboard link printed at start carries it either way).
pub fn install_token() -> String {
    match crate::secrets::get(TOKEN_ENTRY) {
        Ok(t) if t.len() >= 32 => return t,
        Ok(_) | Err(crate::secrets::SecretError::NotInKeychain(_)) => {}
        // Writing after a denied read would only prompt again.
        Err(e @ crate::secrets::SecretError::Denied(_)) => {
            tracing::warn!("{e}; the dashboard's token lasts this run only");
            return new_token();
        }
        Err(e) => tracing::debug!("keychain unavailable for the control token: {e}"),
    }
    let token = new_token();
    if let Err(e) = crate::secrets::set(TOKEN_ENTRY, &token) {
        tracing::debug!("control token kept for this run only: {e}");
    }
    token
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has a random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checks, with what they compare against.
#[derive(Clone)]
pub(super) struct Guard {
    hosts: [String; 2],
    origins: [String; 2],
    token: String,
}

impl Guard {
    pub fn new(addr: SocketAddr, token: String) -> Guard {
        let port = addr.port();
        Guard {
            hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            origins: [
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
            ],
            token,
        }
    }

    fn check(&self, path: &str, h: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.hosts.iter().any(|a| a == host) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "Host `{host}` is not this API's address; use {}",
                    self.origins[0]
                ),
            ));
        }
        if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok())
            && !self.origins.iter().any(|o| o == origin)
        {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "requests from {origin} are not allowed; only Baton's own pages may call this API"
                ),
            ));
        }
        if !path.starts_with("/api/") {
            return Ok(());
        }
        let given = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "missing token: send `Authorization: Bearer <token>` (open the dashboard from the link `baton dashboard` prints)",
            )),
            Some(t) if !constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "wrong token: open the dashboard from the link `baton dashboard` prints",
            )),
            Some(_) => Ok(()),
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> (StatusCode, String) {
    (status, message.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware applying the guard to every request.
pub(super) async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if let Err((status, message)) = g.check(req.uri().path(), req.headers()) {
        return (status, axum::Json(json!({"error": {"message": message}}))).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tokens_are_long_random_hex() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_guard_wants_our_host_our_origin_and_the_token() {
        let g = Guard::new("127.0.0.1:8422".parse().unwrap(), "t".repeat(64));
        let ok = headers(&[
            (header::HOST, "127.0.0.1:8422"),
            (header::AUTHORIZATION, &format!("Bearer {}", "t".repeat(64))),
        ]);
        assert!(g.check("/api/state", &ok).is_ok());
        let no_token = headers(&[(header::HOST, "localhost:8422")]);
        assert_eq!(
            g.check("/api/state", &no_token).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        // The UI's files need no token, but the right host.
        assert!(g.check("/", &no_token).is_ok());
        let evil = headers(&[(header::HOST, "evil.example:8422")]);
        assert_eq!(g.check("/", &evil).unwrap_err().0, StatusCode::FORBIDDEN);
        let mut cross = ok.clone();
        cross.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(
            g.check("/api/state", &cross).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }
}
