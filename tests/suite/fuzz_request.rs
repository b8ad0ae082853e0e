//! Property test of the request path: whatever a client sends, the
//! balancer answers with a well-formed status and keeps serving.

use crate::support;

use proptest::prelude::*;
use serde_json::{Value, json};
use support::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        Just(json!(baton::sim::DEFAULT_MODEL)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("model".to_string()),
                    Just("messages".to_string()),
                    Just("stream".to_string()),
                    Just("max_tokens".to_string()),
                    Just("prompt".to_string()),
                    Just("input".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    Raw(Vec<u8>),
    Json(Value),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Body::Raw),
        json_value().prop_map(Body::Json),
        // A plausible request with odd values in its fields.
        (json_value(), json_value(), json_value()).prop_map(|(m, s, t)| Body::Json(json!({
            "model": baton::sim::DEFAULT_MODEL, "messages": m, "stream": s, "max_tokens": t
        }))),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/chat/completions".to_string()),
        Just("/v1/completions".to_string()),
        Just("/v1/embeddings".to_string()),
        Just("/v1/responses".to_string()),
        Just("/v1/models".to_string()),
        "/[a-z0-9/._-]{0,30}",
    ]
}

#[test]
fn any_request_gets_a_clean_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let settings = baton::config::BalancerSettings {
        max_body_bytes: 400,
        ..test_settings()
    };
    let lab = rt.block_on(Lab::start(vec![sim_cfg(4, 0, 5000.0)], settings));
    let c = reqwest::Client::new();
    let base = format!("http://{}", lab.balancer.addr());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..Default::default()
    });
    runner
        .run(&(path(), body(), any::<bool>()), |(p, b, post)| {
            let url = format!("{base}{p}");
            let status = rt.block_on(async {
                let rb = if post { c.post(&url) } else { c.get(&url) };
                let rb = match &b {
                    Body::Raw(bytes) => rb.body(bytes.clone()),
                    Body::Json(v) => rb.json(v),
                };
                let r = rb.send().await.expect("the balancer answered");
                let status = r.status().as_u16();
                let text = r.text().await.expect("the body arrived whole");
                (status, text)
            });
            let (code, text) = status;
            prop_assert!(
                [200, 400, 401, 404, 405, 413, 503].contains(&code),
                "status {code} for {p} {b:?}: {text}"
            );
            if code >= 400 && code != 405 {
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert!(v["error"]["message"].is_string(), "{text}");
            }
            Ok(())
        })
        .unwrap();
    // Still healthy after all that.
    let r = rt.block_on(lab.chat(&c, &chat_body(2, false)));
    assert_eq!(r.status(), 200);
    assert!(
        lab.balancer
            .stats()
            .workers
            .iter()
            .all(|w| w.in_flight == 0 && w.state == baton::balancer::State::Ready)
    );
}
