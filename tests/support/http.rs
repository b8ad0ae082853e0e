//! Talking to Baton and studios over HTTP: a client, request bodies, and
//! strict SSE parsing.

use std::time::Duration;

use serde_json::Value;

/// One parsed SSE stream: the JSON events and whether `[DONE]` arrived.
#[derive(Debug, Default)]
pub struct Sse {
    pub events: Vec<Value>,
    pub done: bool,
}

impl Sse {
    /// Concatenated content of chat deltas or legacy completion texts.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| {
                e.pointer("/choices/0/delta/content")
                    .or_else(|| e.pointer("/choices/0/text"))
                    .and_then(Value::as_str)
            })
            .collect()
    }

    /// Events that carry non-empty content.
    pub fn content_events(&self) -> usize {
        self.events
            .iter()
            .filter(|e| {
                e.pointer("/choices/0/delta/content")
                    .or_else(|| e.pointer("/choices/0/text"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
            .count()
    }

    pub fn usage(&self) -> Option<&Value> {
        self.events
            .iter()
            .rev()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()))
    }
}

/// Parse an SSE body strictly: every event must be `data: <json>` or `data: [DONE]`.
pub fn parse_sse(body: &str) -> Result<Sse, String> {
    let mut out = Sse::default();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let data = block
            .strip_prefix("data: ")
            .ok_or_else(|| format!("event without `data: `: {block:?}"))?;
        if out.done {
            return Err(format!("event after [DONE]: {data}"));
        }
        if data == "[DONE]" {
            out.done = true;
        } else {
            out.events
                .push(serde_json::from_str(data).map_err(|e| format!("bad JSON {data:?}: {e}"))?);
        }
    }
    Ok(out)
}

/// Poll `f` every 5 ms until it returns true or `limit` passes.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

pub fn chat_body(max_tokens: u32, stream: bool) -> Value {
    serde_json::json!({
        "model": baton::sim::DEFAULT_MODEL,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say something about pooled studios"}],
    })
}

/// Run one streamed chat through the balancer; returns (status, worker, parsed SSE).
pub async fn stream_chat(
    c: &reqwest::Client,
    url: &str,
    max_tokens: u32,
) -> (u16, String, Result<Sse, String>) {
    let r = c
        .post(format!("{url}/chat/completions"))
        .json(&chat_body(max_tokens, true))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let worker = r
        .headers()
        .get("x-baton-worker")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r.text().await.unwrap_or_default();
    (status, worker, parse_sse(&body))
}

/// `n` streamed chats sent at once (each its own task), their results in
/// the order sent.
pub async fn stream_chats(
    c: &reqwest::Client,
    url: &str,
    n: usize,
    max_tokens: u32,
) -> Vec<(u16, String, Result<Sse, String>)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.to_string());
            tokio::spawn(async move { stream_chat(&c, &url, max_tokens).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("a streamed chat's task"));
    }
    out
}

/// A free TCP port on 127.0.0.1 (for a command that must be told one
/// before it starts; another process could take it in between).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
