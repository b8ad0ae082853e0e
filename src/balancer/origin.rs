//! Who may use the balancer from a web browser.
//!
//! A page on any site can send requests to `http://127.0.0.1:8421` (a
//! `text/plain` POST needs no CORS preflight) and so burn the user's
//! studios; with DNS rebinding (its own name resolving to 127.0.0.1) it can
//! also read the answers. So, on every route, `/health` included:
//!
//! - `Host` must be one of the balancer's own names: `localhost`, a loopback
//!   address, the address the connection arrived on, or a name listed in
//!   `balancer.allowed_hosts` (a rebinding page's `Host` is its own name);
//! - a request with an `Origin` (only browsers send one) must come from the
//!   balancer's own origin or one listed in `balancer.allowed_origins`
//!   (`*`, any page, only together with an API key, which pages do not
//!   have). Listed origins get the CORS headers a browser needs to read the
//!   answer; nobody else ever does.
//!
//! A repeated or unreadable `Host` or `Origin` is refused too. Refusals are
//! 403 (400 for a malformed header) in the API's own error shape, with the
//! fix in the message.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::answer::Family;
use super::{Error, Shared};
use crate::config::BalancerSettings;
use crate::server::{LocalAddr, single_header, split_authority};

/// `*` in `allowed_origins` lets any page send requests, so it is accepted
/// only when requests need the API key (which a page does not have).
pub(super) fn check_settings(s: &BalancerSettings, has_key: bool) -> Result<(), Error> {
    if !has_key && s.allowed_origins.iter().any(|o| o == "*") {
        return Err(Error::AnyOriginNeedsApiKey);
    }
    Ok(())
}

/// What the Host and Origin checks make of a request.
pub(super) enum Admission {
    /// Serve it; with CORS headers for this origin (see [`allow`]).
    Pass(Option<HeaderValue>),
    /// Answered here: refused, or a listed origin's CORS preflight.
    Answered(Response),
}

/// The Host and Origin checks (run first, by the balancer's one gate).
pub(super) fn admit(s: &Shared, req: &Request) -> Admission {
    let settings = s.settings();
    let local = req.extensions().get::<LocalAddr>().map(|l| l.0.ip());
    match check(req.method(), req.uri(), req.headers(), &settings, local) {
        Verdict::Refused(status, message, code) => {
            tracing::debug!(path = req.uri().path(), %message, "refused");
            Admission::Answered(Family::of_path(req.uri().path()).error(status, &message, code))
        }
        Verdict::Preflight(origin) => Admission::Answered(preflight(&origin, req.headers())),
        Verdict::Pass(cors) => Admission::Pass(cors),
    }
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// Serve it; with CORS headers for this origin.
    Pass(Option<HeaderValue>),
    /// A listed origin's CORS preflight: answered here.
    Preflight(HeaderValue),
    Refused(StatusCode, String, &'static str),
}

fn check(
    method: &Method,
    uri: &axum::http::Uri,
    h: &HeaderMap,
    settings: &BalancerSettings,
    local: Option<IpAddr>,
) -> Verdict {
    let host = match single_header(h, &header::HOST) {
        Ok(v) => v,
        Err(bad) => {
            return Verdict::Refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; fix: send exactly one Host header naming the balancer's address",
                    bad.describe(&header::HOST)
                ),
                "invalid_host",
            );
        }
    };
    // Every browser request names a host; a client without one (HTTP/1.0)
    // is not a browser. An absolute-form target names one too.
    for name in host.into_iter().chain(uri.authority().map(|a| a.as_str())) {
        if !own_host(name, local, settings) {
            return Verdict::Refused(StatusCode::FORBIDDEN, foreign_host(name), "forbidden_host");
        }
    }
    let origin = match single_header(h, &header::ORIGIN) {
        Ok(None) => return Verdict::Pass(None),
        Ok(Some(o)) => o,
        Err(bad) => {
            return Verdict::Refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; fix: send at most one Origin header",
                    bad.describe(&header::ORIGIN)
                ),
                "invalid_origin",
            );
        }
    };
    if host.is_some_and(|h| same_origin(origin, h)) {
        return Verdict::Pass(None);
    }
    let listed = settings
        .allowed_origins
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
    if !listed || origin.eq_ignore_ascii_case("null") {
        return Verdict::Refused(
            StatusCode::FORBIDDEN,
            foreign_origin(origin),
            "forbidden_origin",
        );
    }
    let Ok(value) = HeaderValue::from_str(origin) else {
        return Verdict::Refused(
            StatusCode::FORBIDDEN,
            foreign_origin(origin),
            "forbidden_origin",
        );
    };
    if method == Method::OPTIONS && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        Verdict::Preflight(value)
    } else {
        Verdict::Pass(Some(value))
    }
}

/// Whether `Host` (or an authority) names this balancer.
fn own_host(authority: &str, local: Option<IpAddr>, settings: &BalancerSettings) -> bool {
    let Some((name, _port)) = split_authority(authority) else {
        return false;
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = name.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    if let Some(ip) = ip
        && (ip.is_loopback() || local.is_some_and(|l| l.to_canonical() == ip))
    {
        return true;
    }
    settings.allowed_hosts.iter().any(|a| {
        let a = a.strip_suffix('.').unwrap_or(a);
        match (ip, a.parse::<IpAddr>()) {
            (Some(ip), Ok(listed)) => ip == listed.to_canonical(),
            _ => a.eq_ignore_ascii_case(name),
        }
    })
}

/// A page served by the balancer's own address (behind a reverse proxy
/// that serves a chat UI on the same origin, say).
fn same_origin(origin: &str, host: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        origin.len() == scheme.len() + host.len()
            && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
            && origin
                .get(scheme.len()..)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    })
}

fn foreign_host(host: &str) -> String {
    let name = split_authority(host).map_or(host, |(n, _)| n);
    format!(
        "Host `{host}` is not one of this balancer's names, so the request may come from a web page (DNS rebinding) and is refused; \
         fix: connect to http://127.0.0.1 (or the address the balancer listens on), or, if clients reach it by this name, \
         add \"{name}\" to `balancer.allowed_hosts` in the workers file"
    )
}

fn foreign_origin(origin: &str) -> String {
    if origin.eq_ignore_ascii_case("null") {
        return "requests from pages without an origin (sandboxed frames, local files: Origin `null`) are refused, \
                since any site can make them; fix: serve the page from a web address of its own and add that to \
                `balancer.allowed_origins` in the workers file"
            .into();
    }
    format!(
        "requests from web pages at {origin} are refused: otherwise any site you visit could use your studios; \
         fix: if you trust that page (a chat UI of yours), add \"{origin}\" to `balancer.allowed_origins` in the workers file"
    )
}

/// The answer to a listed origin's CORS preflight.
fn preflight(origin: &HeaderValue, h: &HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    allow(&mut r, origin);
    let hs = r.headers_mut();
    hs.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let asked = h
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(
                "authorization, content-type, x-api-key, anthropic-version, anthropic-beta",
            )
        });
    hs.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    hs.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// CORS headers that let a listed origin's page read this answer.
pub(super) fn allow(r: &mut Response, origin: &HeaderValue) {
    let hs = r.headers_mut();
    hs.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    hs.append(header::VARY, HeaderValue::from_static("Origin"));
    hs.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
}

/// The headers a page may read besides the simple ones.
const EXPOSED: &str = "x-baton-worker, x-baton-model, retry-after";

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str], origins: &[&str]) -> BalancerSettings {
        BalancerSettings {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn verdict(h: &[(&str, &str)], s: &BalancerSettings, local: &str) -> Verdict {
        check(
            &Method::POST,
            &"/v1/chat/completions".parse().unwrap(),
            &headers(h),
            s,
            Some(local.parse().unwrap()),
        )
    }

    fn refused_with(v: &Verdict) -> Option<(u16, &'static str)> {
        match v {
            Verdict::Refused(s, _, code) => Some((s.as_u16(), code)),
            _ => None,
        }
    }

    #[test]
    fn the_worker_header_is_among_the_exposed_ones() {
        assert!(EXPOSED.contains(super::super::WORKER_HEADER));
    }

    #[test]
    fn loopback_names_the_arrival_address_and_listed_names_are_own_hosts() {
        let s = settings(&["my-mac.local", "fe80::1"], &[]);
        let local = Some("192.168.1.5".parse().unwrap());
        for ok in [
            "127.0.0.1:8421",
            "127.9.9.9",
            "localhost:1",
            "LOCALHOST.",
            "[::1]:8421",
            "192.168.1.5:8421",
            "my-mac.local:8421",
            "MY-MAC.LOCAL",
            "[fe80:0::1]:80",
        ] {
            assert!(own_host(ok, local, &s), "{ok}");
        }
        for bad in [
            "attacker.example:8421",
            "192.168.1.6:8421",
            "localhost.attacker.example",
            "my-mac.local.attacker.example",
            "127.0.0.1@evil",
            "",
            "::1",
        ] {
            assert!(!own_host(bad, local, &s), "{bad}");
        }
    }

    #[test]
    fn a_rebinding_host_or_a_foreign_page_is_refused_and_a_plain_client_is_not() {
        let s = settings(&[], &[]);
        assert_eq!(
            verdict(&[("host", "127.0.0.1:8421")], &s, "127.0.0.1"),
            Verdict::Pass(None)
        );
        let v = verdict(&[("host", "attacker.example:8421")], &s, "127.0.0.1");
        assert_eq!(refused_with(&v), Some((403, "forbidden_host")));
        let v = verdict(
            &[
                ("host", "127.0.0.1:8421"),
                ("origin", "https://evil.example"),
            ],
            &s,
            "127.0.0.1",
        );
        assert_eq!(refused_with(&v), Some((403, "forbidden_origin")));
        if let Verdict::Refused(_, m, _) = &v {
            assert!(
                m.contains("balancer.allowed_origins") && m.contains("https://evil.example"),
                "{m}"
            );
        }
        // The balancer's own origin is no stranger.
        assert_eq!(
            verdict(
                &[
                    ("host", "127.0.0.1:8421"),
                    ("origin", "http://127.0.0.1:8421")
                ],
                &s,
                "127.0.0.1"
            ),
            Verdict::Pass(None)
        );
        let v = verdict(
            &[("host", "127.0.0.1:8421"), ("origin", "null")],
            &settings(&[], &["*"]),
            "127.0.0.1",
        );
        assert_eq!(refused_with(&v), Some((403, "forbidden_origin")));
    }

    #[test]
    fn repeated_or_unreadable_host_and_origin_headers_are_refused() {
        let s = settings(&[], &["http://localhost:3000"]);
        let v = verdict(
            &[("host", "127.0.0.1:8421"), ("host", "attacker.example")],
            &s,
            "127.0.0.1",
        );
        assert_eq!(refused_with(&v), Some((400, "invalid_host")));
        let v = verdict(
            &[
                ("host", "127.0.0.1:8421"),
                ("origin", "http://localhost:3000"),
                ("origin", "https://evil.example"),
            ],
            &s,
            "127.0.0.1",
        );
        assert_eq!(refused_with(&v), Some((400, "invalid_origin")));
        let mut h = headers(&[("host", "127.0.0.1:8421")]);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"http://\xe9vil").unwrap(),
        );
        let v = check(&Method::GET, &"/v1/models".parse().unwrap(), &h, &s, None);
        assert_eq!(refused_with(&v), Some((400, "invalid_origin")));
    }

    #[test]
    fn listed_origins_pass_with_cors_and_their_preflight_is_answered() {
        let s = settings(&[], &["http://localhost:3000"]);
        let v = verdict(
            &[
                ("host", "127.0.0.1:8421"),
                ("origin", "http://localhost:3000"),
            ],
            &s,
            "127.0.0.1",
        );
        assert_eq!(
            v,
            Verdict::Pass(Some(HeaderValue::from_static("http://localhost:3000")))
        );
        let v = check(
            &Method::OPTIONS,
            &"/v1/chat/completions".parse().unwrap(),
            &headers(&[
                ("host", "127.0.0.1:8421"),
                ("origin", "http://localhost:3000"),
                ("access-control-request-method", "POST"),
            ]),
            &s,
            None,
        );
        assert!(matches!(v, Verdict::Preflight(_)), "{v:?}");
        // A listed origin does not open the Host check.
        let v = verdict(
            &[
                ("host", "attacker.example"),
                ("origin", "http://localhost:3000"),
            ],
            &s,
            "127.0.0.1",
        );
        assert_eq!(refused_with(&v), Some((403, "forbidden_host")));
    }

    #[test]
    fn any_origin_needs_an_api_key() {
        let s = settings(&[], &["*"]);
        assert!(matches!(
            check_settings(&s, false),
            Err(Error::AnyOriginNeedsApiKey)
        ));
        assert!(check_settings(&s, true).is_ok());
        assert!(check_settings(&settings(&[], &["http://a"]), false).is_ok());
    }
}
