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

use crate::server::{BadHeader, single_header};

/// The per-install token: from the keychain (Baton's own entry, which no
/// worker's reference can name), created there on first use. Without a
/// usable keychain, a token for this process only (the dashboard link
/// printed at start carries it either way).
pub fn install_token() -> String {
    use crate::secrets::{Own, SecretError};
    match crate::secrets::get_own(Own::ControlToken) {
        Ok(t) if t.len() >= 32 => return t,
        Ok(_) | Err(SecretError::NotInKeychain(_)) => {}
        // Writing after a denied read would only prompt again.
        Err(e @ SecretError::Denied(_)) => {
            tracing::warn!("{e}; the dashboard's token lasts this run only");
            return new_token();
        }
        Err(e) => tracing::debug!("keychain unavailable for the control token: {e}"),
    }
    let token = new_token();
    if let Err(e) = crate::secrets::set_own(Own::ControlToken, &token) {
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

/// Why a request was turned away.
#[derive(Debug)]
pub(super) struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub fix: &'static str,
    pub code: &'static str,
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

    fn check(&self, path: &str, h: &HeaderMap) -> Result<(), Refusal> {
        let bad = |name: &header::HeaderName, b: BadHeader, code| Refusal {
            status: StatusCode::BAD_REQUEST,
            message: b.describe(name),
            fix: "send it once, as plain text",
            code,
        };
        let host = single_header(h, &header::HOST)
            .map_err(|b| bad(&header::HOST, b, "invalid_host"))?
            .unwrap_or("");
        if !self.hosts.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "Host `{host}` is not this API's address; use {}",
                    self.origins[0]
                ),
                fix: "open the dashboard from the link `baton dashboard` prints",
                code: "forbidden_host",
            });
        }
        let origin = single_header(h, &header::ORIGIN)
            .map_err(|b| bad(&header::ORIGIN, b, "invalid_origin"))?;
        if let Some(origin) = origin
            && !self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "requests from {origin} are not allowed; only Baton's own pages may call this API"
                ),
                fix: "use the dashboard Baton serves (the link `baton dashboard` prints)",
                code: "forbidden_origin",
            });
        }
        if !path.starts_with("/api/") {
            return Ok(());
        }
        let given = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: "missing token: send `Authorization: Bearer <token>`".into(),
                fix: "open the dashboard from the link `baton dashboard` prints",
                code: "missing_token",
            }),
            Some(t) if !constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: "wrong token".into(),
                fix: "open the dashboard from the link `baton dashboard` prints",
                code: "wrong_token",
            }),
            Some(_) => Ok(()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware applying the guard to every request.
pub(super) async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if let Err(r) = g.check(req.uri().path(), req.headers()) {
        let body = json!({"error": {"message": r.message, "fix": r.fix, "code": r.code}});
        return (r.status, axum::Json(body)).into_response();
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
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(g: &Guard, path: &str, h: &HeaderMap) -> StatusCode {
        g.check(path, h)
            .map_or_else(|r| r.status, |()| StatusCode::OK)
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
            status(&g, "/api/state", &no_token),
            StatusCode::UNAUTHORIZED
        );
        // The UI's files need no token, but the right host.
        assert!(g.check("/", &no_token).is_ok());
        let evil = headers(&[(header::HOST, "evil.example:8422")]);
        assert_eq!(status(&g, "/", &evil), StatusCode::FORBIDDEN);
        let mut cross = ok.clone();
        cross.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(status(&g, "/api/state", &cross), StatusCode::FORBIDDEN);
    }

    #[test]
    fn repeated_or_unreadable_host_and_origin_headers_are_refused() {
        let g = Guard::new("127.0.0.1:8422".parse().unwrap(), "t".repeat(64));
        let auth = format!("Bearer {}", "t".repeat(64));
        let two_hosts = headers(&[
            (header::HOST, "127.0.0.1:8422"),
            (header::HOST, "evil.example"),
            (header::AUTHORIZATION, &auth),
        ]);
        assert_eq!(
            status(&g, "/api/state", &two_hosts),
            StatusCode::BAD_REQUEST
        );
        let two_origins = headers(&[
            (header::HOST, "127.0.0.1:8422"),
            (header::ORIGIN, "http://127.0.0.1:8422"),
            (header::ORIGIN, "https://evil.example"),
            (header::AUTHORIZATION, &auth),
        ]);
        assert_eq!(
            status(&g, "/api/state", &two_origins),
            StatusCode::BAD_REQUEST
        );
        let mut unreadable = headers(&[
            (header::HOST, "127.0.0.1:8422"),
            (header::AUTHORIZATION, &auth),
        ]);
        unreadable.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"https://\xe9vil.example").unwrap(),
        );
        // Before, an unreadable Origin counted as none at all.
        assert_eq!(
            status(&g, "/api/state", &unreadable),
            StatusCode::BAD_REQUEST
        );
    }
}
