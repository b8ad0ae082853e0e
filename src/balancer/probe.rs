//! Baton's own HTTP requests to a studio: the health probes (each kind's
//! cheapest health endpoint, the model list, a one-token completion for
//! readmission), the discovery of which other APIs it speaks, and the
//! small whole-body request the catalogs use too. When they may be sent is
//! the health policy's (`health`): never inside a busy one-at-a-time
//! server.

use std::time::{Duration, Instant};

use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::Core;
use super::state::Failure;
use super::upstream::SendError;
use super::worker::WorkerEntry;
use crate::studio::health_path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// The kind's cheapest health endpoint.
    Alive,
    /// The model list (validated), to learn what it serves.
    Models,
    /// The model list and a one-token completion: readmission.
    Readmit,
}

pub(super) type ProbeResult = Result<(Option<Vec<String>>, Duration), (Failure, String)>;

pub(super) async fn probe(core: &Core, w: &WorkerEntry, what: Probe) -> ProbeResult {
    let timeout = core.settings().probe_timeout;
    let path = match what {
        Probe::Alive => health_path(w.cfg.kind),
        Probe::Models | Probe::Readmit => "/v1/models",
    };
    let t0 = Instant::now();
    let (status, body) = fetch(core, w, Method::GET, path, Bytes::new(), timeout).await?;
    let rtt = t0.elapsed();
    if !status.is_success() {
        return Err((Failure::Probe, format!("GET {path} answered {status}")));
    }
    let models = if path == "/v1/models" {
        Some(crate::studio::parse_openai_models(&body).ok_or_else(|| {
            (
                Failure::Probe,
                "GET /v1/models did not return a model list (is this an OpenAI-compatible server?)"
                    .to_string(),
            )
        })?)
    } else {
        None
    };
    if what == Probe::Readmit {
        let body = serde_json::json!({
            "model": w.cfg.model, "max_tokens": 1, "stream": false,
            "messages": [{"role": "user", "content": "ping"}],
        });
        // A cold model may need to load: allow more than the list probe.
        let limit = timeout.max(Duration::from_secs(1)) * 5;
        let (status, _) = fetch(
            core,
            w,
            Method::POST,
            "/v1/chat/completions",
            Bytes::from(body.to_string()),
            limit,
        )
        .await?;
        if status.is_server_error() {
            return Err((
                Failure::Status5xx,
                format!("completion probe answered {status}"),
            ));
        }
        // 2xx, or a 4xx that proves the server is alive and answering.
    }
    Ok((models, rtt))
}

/// Which other APIs the studio speaks: an empty request to an endpoint it
/// has gets a 4xx (or 5xx) about the request; one it lacks gets "not
/// found". Learned before any client asks, so a studio without Anthropic's
/// API never sees a Claude Code request.
pub(super) async fn discover_apis(core: &Core, w: &WorkerEntry) {
    use super::answer::Api;
    const ASK: [(&str, &[Api]); 2] = [
        ("/v1/messages", &[Api::Messages]),
        (
            "/api/chat",
            &[
                Api::OllamaChat,
                Api::OllamaGenerate,
                Api::OllamaEmbed,
                Api::OllamaEmbeddings,
                Api::OllamaShow,
            ],
        ),
    ];
    let timeout = core.settings().probe_timeout;
    for (path, apis) in ASK {
        if let Ok((status, body)) = fetch(
            core,
            w,
            Method::POST,
            path,
            Bytes::from_static(b"{}"),
            timeout,
        )
        .await
        {
            let has = !super::answer::lacks_api(status, &body);
            for api in apis {
                w.learn_capability(*api, has);
            }
        }
    }
}

/// One small request over the studio's connection pool, whole body read,
/// within `limit` (probes, and the catalogs that ask every studio).
pub(crate) async fn fetch(
    core: &Core,
    w: &WorkerEntry,
    method: Method,
    path: &str,
    body: Bytes,
    limit: Duration,
) -> Result<(StatusCode, Bytes), (Failure, String)> {
    let settings = core.settings();
    let make = || {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, w.upstream.authority())
            .header(header::VIA, &core.via);
        if !body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(a) = &w.auth_header {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Full::new(body.clone()))
            .expect("valid probe request")
    };
    let work = async {
        let (resp, conn) = w
            .upstream
            .send(make, settings.connect_timeout)
            .await
            .map_err(|e| match e {
                SendError::Connect(..) => (Failure::Connect, format!("{path} probe: {e}")),
                SendError::ConnectTimeout(_) => (Failure::Timeout, format!("{path} probe: {e}")),
                SendError::Request(d) => (Failure::Probe, format!("{path} probe failed: {d}")),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| (Failure::Probe, format!("{path} probe body broke: {e}")))?
            .to_bytes();
        w.upstream.put_back(conn, false);
        Ok((status, bytes))
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err((
            Failure::Timeout,
            format!("{method} {path} probe timed out after {limit:?}"),
        )),
    }
}
