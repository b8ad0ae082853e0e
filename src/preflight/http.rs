//! The HTTP-level checks: the models endpoint, the configured model, and a
//! one-token completion.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Check, Status};
use crate::config::Worker;
use crate::studio::{self, StudioKind};

/// `GET /v1/models`, validated. Returns the check and the model ids.
pub async fn models(
    client: &reqwest::Client,
    w: &Worker,
    auth: Option<&str>,
    timeout: Duration,
) -> (Check, Option<Vec<String>>) {
    let t0 = Instant::now();
    let mut rb = client
        .get(format!("{}/v1/models", w.base_url()))
        .timeout(timeout);
    if let Some(k) = auth {
        rb = rb.bearer_auth(k);
    }
    let fail =
        |value: String, remedy: String| Check::new("models", Status::Fail, value).remedy(remedy);
    let resp =
        match rb.send().await {
            Ok(r) => r,
            Err(e) => return (
                fail(
                    format!("request failed: {}", short(&e)),
                    "the port accepts connections but does not answer HTTP: is it the right port?"
                        .into(),
                ),
                None,
            ),
        };
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return (
                fail(
                    format!("reading the answer failed: {}", short(&e)),
                    "the server closed the connection: check its logs".into(),
                ),
                None,
            );
        }
    };
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return (
            fail(format!("HTTP {status}"), "the server wants an API key: add \"api_key\": {\"keychain\": \"NAME\"} to this worker and store the key with `baton key set NAME`".into()),
            None,
        );
    }
    if !status.is_success() {
        return (fail(format!("HTTP {status}"), "this port does not serve the OpenAI API at /v1: check the port and the server type".into()), None);
    }
    match studio::parse_openai_models(&body) {
        Some(ids) => {
            let c = Check::new(
                "models",
                Status::Pass,
                format!("{} model(s) listed", ids.len()),
            )
            .ms(ms);
            (c, Some(ids))
        }
        None => {
            // LM Studio answers 200 with an error object on paths it does not serve.
            let text = String::from_utf8_lossy(&body);
            let hint = if text.contains("Unexpected endpoint") {
                "the server answered with an error instead of a model list: update LM Studio to a version with the OpenAI-compatible API"
            } else {
                "the answer is not an OpenAI model list: is this port the LLM server?"
            };
            (
                fail(
                    format!(
                        "not a model list: {}",
                        text.chars().take(80).collect::<String>()
                    ),
                    hint.into(),
                ),
                None,
            )
        }
    }
}

/// Is the configured model there, and loaded (LM Studio tells)?
pub async fn model(
    client: &reqwest::Client,
    w: &Worker,
    auth: Option<&str>,
    listed: &[String],
    timeout: Duration,
) -> Check {
    let wanted = &w.model;
    let get = |path: &str| {
        let mut rb = client
            .get(format!("{}{path}", w.base_url()))
            .timeout(timeout);
        if let Some(k) = auth {
            rb = rb.bearer_auth(k);
        }
        rb.send()
    };
    match w.kind {
        StudioKind::LmStudio => {
            if let Ok(r) = get("/api/v0/models").await
                && let Ok(b) = r.bytes().await
                && let Some(models) = studio::parse_lmstudio_models(&b)
            {
                return match models.iter().find(|(id, _)| studio::model_matches(id, wanted)) {
                    Some((_, state)) if state == "loaded" => Check::new("model", Status::Pass, format!("{wanted} loaded")),
                    Some((_, state)) => Check::new("model", Status::Warn, format!("{wanted} present but {state}"))
                        .remedy("load it in LM Studio before benchmarking; otherwise the first request pays the load time (JIT loading)"),
                    None => missing(wanted, models.iter().map(|(id, _)| id.as_str())),
                };
            }
        }
        StudioKind::Ollama => {
            if let Ok(r) = get("/api/tags").await
                && let Ok(b) = r.bytes().await
                && let Some(names) = studio::parse_ollama_tags(&b)
            {
                return if names.iter().any(|n| studio::model_matches(n, wanted)) {
                    Check::new("model", Status::Pass, format!("{wanted} available"))
                } else {
                    missing(wanted, names.iter().map(String::as_str)).remedy(format!(
                        "ollama pull {wanted} on that machine, or fix `model`"
                    ))
                };
            }
        }
        _ => {}
    }
    if listed.iter().any(|m| studio::model_matches(m, wanted)) {
        Check::new("model", Status::Pass, format!("{wanted} listed"))
    } else {
        missing(wanted, listed.iter().map(String::as_str))
    }
}

fn missing<'a>(wanted: &str, available: impl Iterator<Item = &'a str>) -> Check {
    let list: Vec<&str> = available.take(8).collect();
    Check::new(
        "model",
        Status::Fail,
        format!("{wanted} not on this studio"),
    )
    .detail(format!(
        "available: {}",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    ))
    .remedy("download and load the model on that studio, or set `model` to one it has")
}

/// A streamed one-token completion; measures time to first token.
pub async fn completion(
    client: &reqwest::Client,
    w: &Worker,
    auth: Option<&str>,
    timeout: Duration,
    warn_ttft: Duration,
) -> Check {
    let body = json!({"model": w.model, "max_tokens": 1, "stream": true,
                      "messages": [{"role": "user", "content": "Reply with one word."}]});
    let t0 = Instant::now();
    let mut rb = client
        .post(format!("{}/v1/chat/completions", w.base_url()))
        .json(&body);
    if let Some(k) = auth {
        rb = rb.bearer_auth(k);
    }
    let run = async {
        let r = rb.send().await.map_err(|e| short(&e))?;
        let status = r.status();
        if !status.is_success() {
            let text = r.text().await.unwrap_or_default();
            return Err(format!(
                "HTTP {status}: {}",
                text.chars().take(120).collect::<String>()
            ));
        }
        let mut stream = r.bytes_stream();
        let mut buf = Vec::new();
        let mut first: Option<Duration> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| short(&e))?;
            if first.is_none() {
                buf.extend_from_slice(&chunk);
                let text = String::from_utf8_lossy(&buf);
                // First event with any delta or text counts as the first token.
                if text.lines().any(|l| {
                    l.strip_prefix("data: ")
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        .is_some_and(|v| v.pointer("/choices/0").is_some())
                }) {
                    first = Some(t0.elapsed());
                }
            }
        }
        first.ok_or_else(|| "the answer had no tokens".to_string())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(ttft)) => {
            let ms = ttft.as_secs_f64() * 1000.0;
            let status = if ttft > warn_ttft { Status::Warn } else { Status::Pass };
            let c = Check::new("completion", status, format!("first token in {ms:.0} ms")).ms(ms);
            if status == Status::Warn {
                c.remedy("slow first token: the model may be loading, the studio busy, or the prompt cache cold")
            } else {
                c
            }
        }
        Ok(Err(e)) => Check::new("completion", Status::Fail, e)
            .remedy("the studio lists models but cannot generate: check its logs and that the model fits in memory"),
        Err(_) => Check::new("completion", Status::Warn, format!("no token within {} ms", timeout.as_millis()))
            .remedy("the model may still be loading or the studio is saturated; run preflight again in a minute"),
    }
}

fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s = format!("{s}: {x}");
        src = x.source();
    }
    s
}

/// Does the studio offer another API the pool is asked to serve? An empty
/// request to an endpoint it has gets an error about the request; one it
/// lacks gets "not found" (LM Studio: a 200 saying "Unexpected endpoint").
pub async fn api(
    client: &reqwest::Client,
    w: &Worker,
    auth: Option<&str>,
    api: crate::config::ClientApi,
    timeout: Duration,
) -> Check {
    use crate::config::ClientApi;
    let (name, path, what) = match api {
        ClientApi::Anthropic => ("api_anthropic", "/v1/messages", "Anthropic's Messages API"),
        ClientApi::Ollama => ("api_ollama", "/api/chat", "Ollama's API"),
        ClientApi::Openai => ("api_openai", "/v1/chat/completions", "OpenAI's API"),
    };
    let mut rb = client
        .post(format!("{}{path}", w.base_url()))
        .header("content-type", "application/json")
        .body("{}")
        .timeout(timeout);
    if let Some(k) = auth {
        rb = rb.bearer_auth(k).header("x-api-key", k);
    }
    let (status, body) = match rb.send().await {
        Ok(r) => {
            let status = axum::http::StatusCode::from_u16(r.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            (status, r.bytes().await.unwrap_or_default())
        }
        Err(e) => {
            return Check::new(name, Status::Warn, format!("{path}: {}", short(&e))).remedy(
                format!("the studio did not answer {path}; check it serves {what}"),
            );
        }
    };
    if studio::lacks_api(status, &body) {
        Check::new(name, Status::Warn, format!("no {path}: {what} is not served here"))
            .remedy(format!(
                "Baton sends {what} requests to the studios that have it; to serve it here, update the server ({})",
                match (api, w.kind) {
                    (ClientApi::Anthropic, StudioKind::LmStudio) => "LM Studio 0.3.30 or later",
                    (ClientApi::Anthropic, StudioKind::Ollama) => "Ollama 0.14 or later",
                    (ClientApi::Anthropic, StudioKind::LlamaCpp) => "a recent llama-server",
                    (ClientApi::Ollama, _) => "only Ollama itself serves Ollama's API",
                    _ => "a version that serves it",
                }
            ))
    } else {
        Check::new(name, Status::Pass, format!("{path} answers ({status})"))
    }
}
