//! The user's failure (seeds/000), reproduced with real network faults:
//! two studios, one black-holed after Baton has seen it healthy. The pool
//! must stay as fast as the healthy studio alone, lose nothing, and take
//! the studio back when its link returns.

use crate::support;

use std::time::Duration;

use baton::balancer::State;
use baton::config::BalancerSettings;
use baton::sim::{self, SimConfig};
use serde_json::json;
use support::netlab::{self, Host};
use support::{Lab, seed000};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_a_black_holed_studio_costs_nothing() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    let o = seed000::run(3.0).await;
    assert!(o.warm_share > 0.2, "both took traffic while healthy");
    assert!(
        o.ejected_after < Duration::from_secs(3),
        "ejected after {:?}",
        o.ejected_after
    );
    for l in &o.levels {
        let ratio = l.pool.window_requests_per_second() / l.alone.window_requests_per_second();
        let latency = l.pool.mean_latency_ms() / l.alone.mean_latency_ms();
        eprintln!(
            "concurrency {}: one studio {:.2} req/s avg {:.0} ms; pool with a black hole {:.2} req/s avg {:.0} ms ({ratio:.2}x)",
            l.concurrency,
            l.alone.window_requests_per_second(),
            l.alone.mean_latency_ms(),
            l.pool.window_requests_per_second(),
            l.pool.mean_latency_ms()
        );
        assert_eq!(l.pool.failed, 0, "{:?}", l.pool.errors);
        assert!(
            ratio >= 0.95,
            "concurrency {}: {ratio:.2}x of one studio (the user saw 0.94x and 0.59x)",
            l.concurrency
        );
        assert!(
            (latency - 1.0).abs() <= 0.10,
            "concurrency {}: average latency {latency:.2}x of one studio",
            l.concurrency
        );
        assert!(!l.pool.per_worker.contains_key("mac-studio-07"));
    }
    assert!(
        o.readmitted_after.is_some(),
        "not readmitted within 20 s of the link coming back"
    );
    assert!(
        o.share_after > 0.3,
        "readmitted studio served {:.0}% of requests",
        o.share_after * 100.0
    );
    assert_eq!(o.failed_after, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_going_dark_mid_stream_ends_its_streams_within_seconds() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    let lab = Lab::builder()
        .studio(SimConfig {
            tokens_per_second: 5.0,
            ..seed000::studio()
        })
        .ids(["dark"])
        .settings(BalancerSettings::default())
        .in_namespaces()
        .start()
        .await;
    let (b, h) = (&lab.balancer, &lab.hosts[0]);
    let c = baton::bench::load::client();
    let r = c
        .post(format!("{}/chat/completions", b.url()))
        .json(&json!({"model": sim::DEFAULT_MODEL, "stream": true, "max_tokens": 200, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    h.black_hole().unwrap();
    let text = tokio::time::timeout(Duration::from_secs(10), r.text())
        .await
        .expect("the stream ended")
        .unwrap();
    let took = t0.elapsed();
    // Not the 30 s idle timeout: ejection (probe timeout) plus a 1 s grace.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let sse = support::parse_sse(&text).unwrap();
    let last = sse.events.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_failed", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_loss_and_tcp_resets_are_seen_for_what_they_are() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    use baton::preflight::{self, Status, Thresholds};
    let lossy = Host::new().unwrap();
    let resetting = Host::new().unwrap();
    let _a = support::start_sim_at(lossy.listen(1234), seed000::studio()).await;
    let b = support::start_sim_at(resetting.listen(1234), seed000::studio()).await;
    lossy.loss(40).unwrap();
    resetting.reset_tcp(1234).unwrap();
    let mut wa = sim::worker_for("lossy", &b);
    wa.host = lossy.ip.to_string();
    let mut wb = sim::worker_for("resetting", &b);
    wb.host = resetting.ip.to_string();
    let cfg = baton::config::Config {
        workers: vec![wa, wb],
        balancer: Default::default(),
        ..Default::default()
    };
    let t = Thresholds {
        ping_count: 20,
        ..Thresholds::default()
    };
    let r = preflight::run(&cfg, &t).await;
    let check = |w: &str, name: &str| {
        r.hosts
            .iter()
            .find(|h| h.worker == w)
            .unwrap()
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .clone()
    };
    let ping = check("lossy", "ping");
    let loss = ping.ping.as_ref().unwrap().loss_pct;
    assert!(
        loss > 0.0 && loss < 100.0,
        "40% random loss measured as {loss}%"
    );
    assert_eq!(ping.status, Status::Fail);
    assert!(ping.remedy.unwrap().contains("packet loss"));
    let tcp = check("resetting", "tcp");
    assert_eq!(tcp.status, Status::Fail);
    assert!(tcp.value.contains("refused"), "{tcp:?}");
    lossy.clear_loss().unwrap();
    resetting.clear_reset().unwrap();
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    assert_eq!(r.status, Status::Pass, "{}", preflight::render(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_single_threaded_studio_that_goes_dark_is_ejected_within_two_seconds() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    // A studio that serves HTTP one request at a time: while it streams, a
    // probe would wait. Baton must leave it alone while it is busy, and
    // still drop it fast when it really goes dark.
    let lab = Lab::builder()
        .studio(SimConfig {
            slots: 1,
            tokens_per_second: 10.0,
            faults: sim::Faults {
                serial: true,
                ..Default::default()
            },
            ..seed000::studio()
        })
        .ids(["serial"])
        .settings(BalancerSettings::default())
        .in_namespaces()
        .start()
        .await;
    let (b, h) = (&lab.balancer, &lab.hosts[0]);
    let c = baton::bench::load::client();
    let url = format!("{}/chat/completions", b.url());
    let body = json!({"model": sim::DEFAULT_MODEL, "stream": true, "max_tokens": 400,
                      "messages": [{"role": "user", "content": "x"}]});
    let r = c.post(&url).json(&body).send().await.unwrap();
    // Busy for a while first: serving, never ejected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(seed000::state(b, "serial"), Some(State::Ready));
    let t0 = std::time::Instant::now();
    h.black_hole().unwrap();
    let ejected = support::wait_until(Duration::from_secs(5), || {
        seed000::state(b, "serial") != Some(State::Ready)
    })
    .await;
    let took = t0.elapsed();
    assert!(ejected, "never ejected");
    assert!(
        took <= Duration::from_secs(2),
        "ejected {took:?} after going dark"
    );
    eprintln!("busy serial studio ejected {took:?} after its link went dark");
    drop(r);
}
