//! Preflight: loopback checks everywhere, and real network faults in
//! namespaces the tests create (as root).

use crate::support;

use std::time::Duration;

use baton::config::{BalancerSettings, Config, Worker};
use baton::preflight::{self, Report, Status, Thresholds};
use baton::sim::{self, SimConfig};
use baton::studio::StudioKind;
use support::netlab::{self, Host};

fn worker(id: &str, host: &str, port: u16, model: &str) -> Worker {
    Worker {
        model: model.into(),
        max_concurrent_requests: baton::config::Slots::Max(2),
        ..support::worker(id, host, port)
    }
}

fn config(workers: Vec<Worker>) -> Config {
    Config {
        workers,
        balancer: BalancerSettings::default(),
        ..Default::default()
    }
}

fn check<'a>(r: &'a Report, worker: &str, name: &str) -> &'a preflight::Check {
    r.hosts
        .iter()
        .find(|h| h.worker == worker && h.role == "worker")
        .and_then(|h| h.checks.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("no {name} check for {worker}"))
}

fn fast() -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(5),
        tokens_per_second: 1000.0,
        ..SimConfig::default()
    }
}

macro_rules! need_netns {
    () => {
        if !support::skip::can_run(netlab::unavailable()) {
            return;
        }
    };
}

#[tokio::test]
async fn loopback_studio_passes_and_problems_are_explained() {
    let s = support::start_sim(fast()).await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(vec![
        worker("good", "127.0.0.1", s.addr().port(), sim::DEFAULT_MODEL),
        worker("refused", "127.0.0.1", dead_port, sim::DEFAULT_MODEL),
        worker("wrong-model", "127.0.0.1", s.addr().port(), "llama-3-70b"),
        worker(
            "unresolvable",
            "no-such-host.invalid",
            1234,
            sim::DEFAULT_MODEL,
        ),
    ]);
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    assert_eq!(r.status, Status::Fail);
    assert_eq!(r.exit_code(false), 2);
    for name in ["resolve", "tcp", "models", "model", "completion", "subnet"] {
        assert_eq!(
            check(&r, "good", name).status,
            Status::Pass,
            "{name}: {:?}",
            check(&r, "good", name)
        );
    }
    let good = r.hosts.iter().find(|h| h.worker == "good").unwrap();
    assert_eq!(good.status.max(Status::Pass), good.status);
    let tcp = check(&r, "refused", "tcp");
    assert_eq!(tcp.status, Status::Fail);
    assert!(tcp.value.contains("refused"), "{tcp:?}");
    assert!(
        tcp.remedy
            .as_ref()
            .unwrap()
            .contains("Serve on Local Network")
    );
    assert_eq!(check(&r, "refused", "models").status, Status::Skip);
    let m = check(&r, "wrong-model", "model");
    assert_eq!(m.status, Status::Fail);
    assert!(
        m.detail.as_ref().unwrap().contains(sim::DEFAULT_MODEL),
        "{m:?}"
    );
    assert_eq!(check(&r, "unresolvable", "resolve").status, Status::Fail);
    // JSON round trip (what `--json` prints and what is kept for the UI).
    let json = serde_json::to_string(&r).unwrap();
    let again: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(again.hosts.len(), r.hosts.len());
    assert_eq!(again.status, r.status);
    assert_eq!(
        serde_json::to_value(&again).unwrap()["hosts"][1]["checks"][2]["value"],
        "port ".to_string() + &dead_port.to_string() + ": connection refused"
    );
}

#[tokio::test]
async fn lm_studio_model_present_but_not_loaded_is_a_warning_not_pass() {
    // A generic OpenAI server that lists the model passes on the list alone;
    // an LM Studio one is asked for its load state.
    let s = support::start_sim(SimConfig {
        kind: StudioKind::Openai,
        ..fast()
    })
    .await;
    let mut w = worker("plain", "127.0.0.1", s.addr().port(), sim::DEFAULT_MODEL);
    w.kind = StudioKind::Openai;
    let r = preflight::run(&config(vec![w]), &Thresholds::default()).await;
    assert_eq!(check(&r, "plain", "model").status, Status::Pass);
    assert_eq!(r.exit_code(true), 0);
}

#[tokio::test]
async fn netns_healthy_studio_passes_every_check_with_real_icmp() {
    need_netns!();
    let h = Host::new().unwrap();
    let s = support::start_sim_at(h.listen(1234), fast()).await;
    let cfg = config(vec![worker(
        "ns-good",
        &h.ip.to_string(),
        1234,
        sim::DEFAULT_MODEL,
    )]);
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    let ping = check(&r, "ns-good", "ping");
    assert_eq!(ping.status, Status::Pass, "{ping:?}");
    let stats = ping.ping.as_ref().unwrap();
    assert_eq!((stats.sent, stats.received), (5, 5));
    for name in ["tcp", "models", "model", "completion"] {
        assert_eq!(
            check(&r, "ns-good", name).status,
            Status::Pass,
            "{:?}",
            check(&r, "ns-good", name)
        );
    }
    let subnet = check(&r, "ns-good", "subnet");
    assert_eq!(subnet.status, Status::Pass, "{subnet:?}");
    assert_eq!(r.status, Status::Pass);
    drop(s);
}

#[tokio::test]
async fn netns_black_hole_shows_total_loss_and_a_timed_out_connect_within_bounds() {
    need_netns!();
    let h = Host::new().unwrap();
    let _s = support::start_sim_at(h.listen(1234), fast()).await;
    h.black_hole().unwrap();
    let cfg = config(vec![worker(
        "ns-hole",
        &h.ip.to_string(),
        1234,
        sim::DEFAULT_MODEL,
    )]);
    let t0 = std::time::Instant::now();
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    let took = t0.elapsed();
    let ping = check(&r, "ns-hole", "ping");
    assert_eq!(ping.status, Status::Fail);
    assert_eq!(ping.ping.as_ref().unwrap().loss_pct, 100.0);
    assert!(ping.remedy.as_ref().unwrap().contains("100% packet loss"));
    let tcp = check(&r, "ns-hole", "tcp");
    assert_eq!(tcp.status, Status::Fail);
    assert!(tcp.value.contains("timed out"), "{tcp:?}");
    assert!(tcp.remedy.as_ref().unwrap().contains("firewall"), "{tcp:?}");
    // Bounded timeouts: about two seconds, never a stack of TCP retries.
    assert!(
        took < Duration::from_secs(4),
        "preflight of a black hole took {took:?}"
    );
}

#[tokio::test]
async fn netns_link_down_is_unreachable() {
    need_netns!();
    let h = Host::new().unwrap();
    h.link_down().unwrap();
    let cfg = config(vec![worker(
        "ns-down",
        &h.ip.to_string(),
        1234,
        sim::DEFAULT_MODEL,
    )]);
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    assert_eq!(
        check(&r, "ns-down", "ping").ping.as_ref().unwrap().loss_pct,
        100.0
    );
    assert_eq!(check(&r, "ns-down", "tcp").status, Status::Fail);
    assert_eq!(r.exit_code(false), 2);
}

#[tokio::test]
async fn netns_live_host_without_a_server_is_refused() {
    need_netns!();
    let h = Host::new().unwrap();
    let cfg = config(vec![worker(
        "ns-empty",
        &h.ip.to_string(),
        1234,
        sim::DEFAULT_MODEL,
    )]);
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    assert_eq!(check(&r, "ns-empty", "ping").status, Status::Pass);
    let tcp = check(&r, "ns-empty", "tcp");
    assert_eq!(tcp.status, Status::Fail);
    assert!(tcp.value.contains("refused"), "{tcp:?}");
    assert!(
        tcp.remedy.as_ref().unwrap().contains("nothing listens"),
        "{tcp:?}"
    );
}

#[tokio::test]
async fn netns_studio_without_the_model_fails_the_model_check() {
    need_netns!();
    let h = Host::new().unwrap();
    let _s = support::start_sim_at(
        h.listen(1234),
        SimConfig {
            models: vec!["qwen-7b".into()],
            ..fast()
        },
    )
    .await;
    let cfg = config(vec![worker(
        "ns-model",
        &h.ip.to_string(),
        1234,
        sim::DEFAULT_MODEL,
    )]);
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    let m = check(&r, "ns-model", "model");
    assert_eq!(m.status, Status::Fail);
    assert!(m.detail.as_ref().unwrap().contains("qwen-7b"), "{m:?}");
    assert_eq!(check(&r, "ns-model", "completion").status, Status::Skip);
}

#[tokio::test]
async fn netns_added_latency_fails_the_rtt_threshold() {
    need_netns!();
    let mut h = Host::new().unwrap();
    let _s = support::start_sim_at(h.listen(1234), fast()).await;
    h.delay_icmp(Duration::from_millis(25)).unwrap();
    let cfg = config(vec![worker(
        "ns-slow",
        &h.ip.to_string(),
        1234,
        sim::DEFAULT_MODEL,
    )]);
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    let ping = check(&r, "ns-slow", "ping");
    assert_eq!(ping.status, Status::Fail, "{ping:?}");
    let avg = ping.ping.as_ref().unwrap().avg_ms.unwrap();
    assert!(avg >= 25.0, "avg {avg} ms");
    assert!(
        ping.remedy.as_ref().unwrap().contains("RTT above 10 ms"),
        "{ping:?}"
    );
    // The same host passes with a looser threshold.
    let loose = Thresholds {
        max_rtt_ms: 100.0,
        ..Thresholds::default()
    };
    let r = preflight::run(&cfg, &loose).await;
    assert_eq!(check(&r, "ns-slow", "ping").status, Status::Pass);
}

#[tokio::test]
async fn cluster_members_are_checked_too() {
    need_netns!();
    let head = Host::new().unwrap();
    let member = Host::new().unwrap();
    let _s = support::start_sim_at(head.listen(1234), fast()).await;
    let mut w = worker("cluster", &head.ip.to_string(), 1234, sim::DEFAULT_MODEL);
    w.kind = StudioKind::Exo;
    w.members = vec![head.ip.to_string(), member.ip.to_string()];
    member.black_hole().unwrap();
    let r = preflight::run(&config(vec![w]), &Thresholds::default()).await;
    let m = r
        .hosts
        .iter()
        .find(|h| h.role == "member")
        .expect("member report");
    assert_eq!(m.host, member.ip.to_string());
    assert_eq!(m.status, Status::Fail);
    assert_eq!(r.status, Status::Fail);
}
