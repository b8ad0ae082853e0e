//! The workers file: the user's format loads; every error class names the
//! file, the JSON path, the problem and the fix.

use std::path::Path;

use baton::config::{Config, ConfigError, SecretRef, Strategy};
use baton::studio::StudioKind;

const USER_FILE: &str = r#"{
  "workers": [
    {
      "id": "mac-studio-1",
      "host": "192.168.1.105",
      "port": 1234,
      "type": "lm_studio",
      "model": "mistral-7b-instruct-v0.2",
      "max_concurrent_requests": 5
    },
    {
      "id": "mac-studio-2",
      "host": "192.168.1.106",
      "port": 1234,
      "type": "lm_studio",
      "model": "mistral-7b-instruct-v0.2",
      "max_concurrent_requests": 5
    }
  ]
}"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/home/me/workers.json"))
}

fn error_of(text: &str) -> (ConfigError, String) {
    let e = parse(text).expect_err("should be rejected");
    let msg = e.to_string();
    assert!(
        msg.starts_with("/home/me/workers.json"),
        "names the file: {msg}"
    );
    assert!(msg.contains("fix: "), "gives a fix: {msg}");
    (e, msg)
}

/// The user's file with one worker field replaced (or removed with `None`).
fn with_field(field: &str, value: Option<&str>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(USER_FILE).unwrap();
    let w = v["workers"][1].as_object_mut().unwrap();
    match value {
        Some(x) => {
            w.insert(field.into(), serde_json::from_str(x).unwrap());
        }
        None => {
            w.remove(field);
        }
    }
    v.to_string()
}

#[test]
fn the_users_file_loads() {
    let c = parse(USER_FILE).unwrap();
    assert_eq!(c.workers.len(), 2);
    let w = &c.workers[1];
    assert_eq!(w.id, "mac-studio-2");
    assert_eq!(w.host, "192.168.1.106");
    assert_eq!(w.port, 1234);
    assert_eq!(w.kind, StudioKind::LmStudio);
    assert_eq!(w.model, "mistral-7b-instruct-v0.2");
    assert_eq!(w.max_concurrent_requests, baton::config::Slots::Max(5));
    assert!(w.enabled);
    assert_eq!(w.base_url(), "http://192.168.1.106:1234");
    // Defaults apply where the file says nothing.
    assert_eq!(c.balancer.strategy, Strategy::CacheAffinity);
}

#[test]
fn optional_fields_and_balancer_section() {
    let text = r#"{"workers":[{"id":"a","host":"10.0.0.1","port":8000,"type":"vllm","model":"m",
        "max_concurrent_requests":8,"enabled":false,"weight":2.5,
        "api_key":{"keychain":"studio-a"},"members":["10.0.0.1","10.0.0.2"]}],
        "balancer":{"listen":"127.0.0.1:9000","connect_timeout_ms":250,"queue_limit":7,
        "strategy":"round_robin"}}"#;
    let c = parse(text).unwrap();
    let w = &c.workers[0];
    assert!(!w.enabled);
    assert_eq!(w.weight, 2.5);
    assert_eq!(w.api_key, Some(SecretRef::Keychain("studio-a".into())));
    assert_eq!(w.members, vec!["10.0.0.1", "10.0.0.2"]);
    assert_eq!(c.balancer.listen.unwrap().port(), 9000);
    assert_eq!(c.balancer.connect_timeout.as_millis(), 250);
    assert_eq!(c.balancer.queue_limit, 7);
    assert_eq!(c.balancer.strategy, Strategy::RoundRobin);
    // Round trip through the file format.
    let again = parse(&c.to_json().to_string()).unwrap();
    assert_eq!(again.workers, c.workers);
}

#[test]
fn syntax_error_gives_line_and_column() {
    let broken = USER_FILE.replace("\"port\": 1234,\n      \"type\": \"lm_studio\",\n      \"model\": \"mistral-7b-instruct-v0.2\",\n      \"max_concurrent_requests\": 5\n    },\n    {", "\"port\": 1234\n      \"type\": \"lm_studio\",\n      \"model\": \"mistral-7b-instruct-v0.2\",\n      \"max_concurrent_requests\": 5\n    },\n    {");
    assert_ne!(broken, USER_FILE);
    let (e, msg) = error_of(&broken);
    assert_eq!(e.position, Some((7, 7)), "{msg}");
    assert!(msg.contains("workers.json:7:7"), "{msg}");
    assert!(msg.contains("invalid JSON"), "{msg}");

    let (e, msg) = error_of("{\"workers\": [");
    assert!(e.position.is_some());
    assert!(msg.contains("close every"), "{msg}");

    let (_, msg) = error_of("{\"workers\": [],}");
    assert!(
        msg.contains("trailing comma") && msg.contains("remove the comma"),
        "{msg}"
    );
}

#[test]
fn unknown_field_suggests_the_right_one() {
    let (e, msg) = error_of(&with_field("max_concurent_requests", Some("5")));
    assert_eq!(e.json_path, "workers[1].max_concurent_requests");
    assert!(
        msg.contains("unknown field `max_concurent_requests`"),
        "{msg}"
    );
    assert!(
        msg.contains("did you mean `max_concurrent_requests`"),
        "{msg}"
    );

    let (e, msg) = error_of(r#"{"worker": []}"#);
    assert_eq!(e.json_path, "worker");
    assert!(msg.contains("did you mean `workers`"), "{msg}");

    let (_, msg) = error_of(&with_field("colour", Some("\"red\"")));
    assert!(msg.contains("remove it; known fields: id, host"), "{msg}");
}

#[test]
fn missing_field_names_it_and_shows_an_example() {
    let (e, msg) = error_of(&with_field("port", None));
    assert_eq!(e.json_path, "workers[1].port");
    assert!(msg.contains("missing field `port`"), "{msg}");
    assert!(msg.contains("add \"port\": 1234"), "{msg}");

    let (e, _) = error_of(&with_field("model", None));
    assert_eq!(e.json_path, "workers[1].model");
    let (e, msg) = error_of("{}");
    assert_eq!(e.json_path, "workers");
    assert!(msg.contains("missing field `workers`"), "{msg}");
}

#[test]
fn duplicate_id_points_at_both() {
    let (e, msg) = error_of(&USER_FILE.replace("mac-studio-2", "mac-studio-1"));
    assert_eq!(e.json_path, "workers[1].id");
    assert!(
        msg.contains("duplicate id `mac-studio-1` (also used by workers[0])"),
        "{msg}"
    );
    assert!(msg.contains("unique id"), "{msg}");
}

#[test]
fn port_out_of_range_or_wrong_type() {
    for bad in ["0", "65536", "-1", "99999"] {
        let (e, msg) = error_of(&with_field("port", Some(bad)));
        assert_eq!(e.json_path, "workers[1].port");
        assert!(
            msg.contains("out of range") && msg.contains("between 1 and 65535"),
            "{msg}"
        );
    }
    let (_, msg) = error_of(&with_field("port", Some("\"1234\"")));
    assert!(msg.contains("without quotes"), "{msg}");
}

#[test]
fn unknown_type_lists_the_known_ones() {
    let (e, msg) = error_of(&with_field("type", Some("\"lmstudio\"")));
    assert_eq!(e.json_path, "workers[1].type");
    assert!(msg.contains("unknown type \"lmstudio\""), "{msg}");
    assert!(msg.contains("did you mean \"lm_studio\""), "{msg}");
    assert!(
        msg.contains("lm_studio, ollama, llama_cpp, mlx, vllm, exo, openai"),
        "{msg}"
    );
}

#[test]
fn zero_slots_is_rejected_with_the_reason() {
    let (e, msg) = error_of(&with_field("max_concurrent_requests", Some("0")));
    assert_eq!(e.json_path, "workers[1].max_concurrent_requests");
    assert!(msg.contains("could never serve a request"), "{msg}");
    assert!(msg.contains("use 1 or more"), "{msg}");
}

#[test]
fn a_secret_in_the_file_is_refused_without_echoing_it() {
    let (e, msg) = error_of(&with_field("api_key", Some("\"sk-very-secret-123\"")));
    assert_eq!(e.json_path, "workers[1].api_key");
    assert!(!msg.contains("sk-very-secret-123"), "{msg}");
    assert!(msg.contains("keychain"), "{msg}");
}

#[test]
fn url_in_host_is_explained() {
    let (e, msg) = error_of(&with_field("host", Some("\"http://192.168.1.106:1234\"")));
    assert_eq!(e.json_path, "workers[1].host");
    assert!(msg.contains("is a URL"), "{msg}");
}

#[test]
fn missing_file_says_how_to_fix() {
    let e = Config::load(Path::new("/nonexistent/dir/workers.json")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/dir/workers.json"), "{msg}");
    assert!(msg.contains("-c/--config"), "{msg}");
}

#[test]
fn default_location_is_in_the_platform_config_dir() {
    let p = baton::config::default_path().expect("a home directory");
    assert!(p.ends_with("workers.json"));
    assert!(p.to_string_lossy().contains("baton"), "{}", p.display());
}

#[test]
fn every_field_round_trips_through_the_files_one_serialization() {
    let text = r#"{
      "workers": [
        {"id": "a", "host": "10.0.0.5", "port": 1234, "type": "lm_studio", "model": "m",
         "max_concurrent_requests": "auto", "enabled": false, "weight": 2.5,
         "api_key": {"keychain": "a"}, "members": ["10.0.0.6"]},
        {"id": "b", "host": "10.0.0.7", "port": 11434, "type": "ollama", "model": "m:7b",
         "max_concurrent_requests": 3, "api_key": {"env": "B_KEY"}}
      ],
      "balancer": {"listen": "127.0.0.1:9000", "connect_timeout_ms": 250, "first_token_timeout_ms": 9000,
                   "idle_timeout_ms": 8000, "queue_limit": 7, "queue_timeout_ms": 1500,
                   "probe_interval_ms": 300, "probe_timeout_ms": 400, "max_body_bytes": 1000,
                   "strategy": "round_robin", "apis": ["openai", "anthropic", "ollama"],
                   "allowed_hosts": ["my-mac.local", "192.168.1.20", "fe80::1"],
                   "allowed_origins": ["http://localhost:3000", "https://chat.example.com"],
                   "prefer_loaded": false},
      "aliases": {"mistral": ["m", "m:7b"], "qwen-q8": {"models": ["qwen@q8", "qwen:q8"], "fallbacks": false}},
      "fallbacks": {"mistral": ["qwen-14b", "qwen-8b"]}
    }"#;
    let path = std::path::Path::new("workers.json");
    let c = Config::parse(text, path).unwrap();
    let again = Config::parse(&c.to_text(), path).unwrap();
    assert_eq!(again, c);
    assert_eq!(
        c.workers[0].max_concurrent_requests,
        baton::config::Slots::Auto
    );
    assert_eq!(c.balancer.strategy, Strategy::RoundRobin);
    assert_eq!(c.aliases.names_for("m:7b"), ["mistral", "m", "m:7b"]);
    assert_eq!(c.balancer.allowed_hosts.len(), 3);
    assert_eq!(c.balancer.allowed_origins[0], "http://localhost:3000");
    assert!(!c.balancer.prefer_loaded);
    assert_eq!(
        c.aliases.names_for("qwen:q8"),
        ["qwen-q8", "qwen@q8", "qwen:q8"]
    );
    assert!(c.fallbacks.pinned.contains("qwen-q8"));
    // Any name of the alias finds its fallbacks; a pinned one has none.
    assert_eq!(
        c.fallbacks.for_model(&c.aliases, "m:7b"),
        ["qwen-14b", "qwen-8b"]
    );
    assert!(c.fallbacks.for_model(&c.aliases, "qwen@q8").is_empty());
    assert!(c.fallbacks.for_model(&c.aliases, "other").is_empty());
    // The pinned alias is written back as an object, the others as lists.
    let json = c.to_json();
    assert_eq!(json["aliases"]["qwen-q8"]["fallbacks"], false);
    assert!(json["aliases"]["mistral"].is_array());
    assert_eq!(json["fallbacks"]["mistral"][1], "qwen-8b");
}

#[test]
fn fallback_mistakes_are_named_with_their_fix() {
    let base = r#"{"workers":[{"id":"a","host":"10.0.0.5","port":1234,"type":"openai","model":"m"}],"aliases":{"big":["m","m:32b"],"pin":{"models":["p1"],"fallbacks":false}},"fallbacks":"#;
    let err = |f: &str| {
        Config::parse(&format!("{base}{f}}}"), std::path::Path::new("w.json")).unwrap_err()
    };
    let e = err(r#"["x"]"#);
    assert_eq!(e.json_path, "fallbacks");
    assert!(e.fix.contains("\"qwen3-32b\": [\"qwen3-14b\""), "{e}");
    let e = err(r#"{"big": []}"#);
    assert_eq!(e.json_path, "fallbacks.big");
    assert!(e.problem.contains("non-empty list"), "{e}");
    let e = err(r#"{"big": ["small", 7]}"#);
    assert_eq!(e.json_path, "fallbacks.big[1]");
    let e = err(r#"{"big": ["m:32b"]}"#);
    assert_eq!(e.json_path, "fallbacks.big[0]");
    assert!(e.problem.contains("falls back to itself"), "{e}");
    let e = err(r#"{"big": ["small", "small"]}"#);
    assert!(e.problem.contains("already in the list"), "{e}");
    let e = err(r#"{"m": ["a"], "m:32b": ["b"]}"#);
    assert!(e.problem.contains("names of the alias `big`"), "{e}");
    assert!(e.fix.contains("under \"big\""), "{e}");
    let e = err(r#"{"p1": ["small"]}"#);
    assert_eq!(e.json_path, "fallbacks.p1");
    assert!(e.problem.contains("pinned"), "{e}");
    assert!(e.fix.contains("aliases.pin"), "{e}");
    // An alias object is checked like any object.
    let alias = |a: &str| {
        Config::parse(
            &format!(r#"{{"workers":[{{"id":"a","host":"10.0.0.5","port":1234,"type":"openai","model":"m"}}],"aliases":{{"x":{a}}}}}"#),
            std::path::Path::new("w.json"),
        )
        .unwrap_err()
    };
    let e = alias(r#"{"models": ["m"], "fallback": false}"#);
    assert_eq!(e.json_path, "aliases.x.fallback");
    assert!(e.fix.contains("did you mean `fallbacks`"), "{e}");
    let e = alias(r#"{"fallbacks": false}"#);
    assert!(e.problem.contains("missing field `models`"), "{e}");
    let e = alias(r#"{"models": ["m"], "fallbacks": "no"}"#);
    assert_eq!(e.json_path, "aliases.x.fallbacks");
    let e = alias(r#"{"models": []}"#);
    assert_eq!(e.json_path, "aliases.x.models");
    let e = Config::parse(
        r#"{"workers":[],"balancer":{"prefer_loaded":"yes"}}"#,
        std::path::Path::new("w.json"),
    )
    .unwrap_err();
    assert_eq!(e.json_path, "balancer.prefer_loaded");
}

#[test]
fn alias_mistakes_are_named_with_their_fix() {
    let base = r#"{"workers":[{"id":"a","host":"10.0.0.5","port":1234,"type":"openai","model":"m"}],"aliases":"#;
    let err = |aliases: &str| {
        Config::parse(
            &format!("{base}{aliases}}}"),
            std::path::Path::new("w.json"),
        )
        .unwrap_err()
    };
    let e = err(r#"{"x": []}"#);
    assert_eq!(e.json_path, "aliases.x");
    assert!(e.problem.contains("non-empty list"), "{e}");
    let e = err(r#"{"x": ["m"], "y": ["m"]}"#);
    assert!(e.problem.contains("also in the alias `x`"), "{e}");
    assert!(e.fix.contains("one alias only"), "{e}");
    let e = err(r#"{"x": ["m", 3]}"#);
    assert_eq!(e.json_path, "aliases.x[1]");
}

#[test]
fn ids_are_kept_to_a_safe_alphabet_exactly_as_written() {
    for ok in ["mac-studio-9", "a", "Studio_2.lan", &"x".repeat(64)] {
        let c = parse(&with_field("id", Some(&serde_json::to_string(ok).unwrap()))).unwrap();
        assert_eq!(c.workers[1].id, ok);
    }
    for (bad, problem, suggestion) in [
        (" pad ", "starts or ends with a space", "\"pad\""),
        ("a\r\nX-Evil: 1", "contains '\\r'", "\"a-X-Evil-1\""),
        ("../../etc", "contains '/'", "\"etc\""),
        ("mac studio", "contains ' '", "\"mac-studio\""),
        ("studio-é", "contains 'é'", "\"studio\""),
        ("..", "only dots", "\"mac-studio-1\""),
    ] {
        let (e, msg) = error_of(&with_field(
            "id",
            Some(&serde_json::to_string(bad).unwrap()),
        ));
        assert_eq!(e.json_path, "workers[1].id", "{msg}");
        assert!(e.problem.contains(problem), "{bad:?}: {msg}");
        assert!(e.fix.contains("letters, digits, '.', '_' or '-'"), "{msg}");
        assert!(e.fix.contains(suggestion), "{bad:?}: {msg}");
        // The message never carries a raw line break from the id.
        assert!(
            !e.problem.contains('\r') && !e.problem.contains('\n'),
            "{msg}"
        );
    }
    let (e, _) = error_of(&with_field(
        "id",
        Some(&serde_json::to_string(&"y".repeat(65)).unwrap()),
    ));
    assert!(e.problem.contains("more than 64"), "{e}");
}

#[test]
fn a_workers_key_reference_may_not_name_batons_own_secrets() {
    for name in [
        "control-token",
        "baton/control-token",
        "balancer-api-key",
        "baton/balancer-key",
    ] {
        let r = format!(r#"{{"keychain": "{name}"}}"#);
        let (e, msg) = error_of(&with_field("api_key", Some(&r)));
        assert_eq!(e.json_path, "workers[1].api_key.keychain", "{msg}");
        assert!(e.problem.contains("Baton's own"), "{msg}");
        assert!(e.fix.contains("baton key set mac-studio-2"), "{msg}");
    }
    let (e, msg) = error_of(&with_field("api_key", Some(r#"{"env": "BATON_API_KEY"}"#)));
    assert_eq!(e.json_path, "workers[1].api_key.env");
    assert!(e.problem.contains("balancer's own"), "{msg}");
    let (e, msg) = error_of(&with_field("api_key", Some(r#"{"keychain": "my key/1"}"#)));
    assert!(e.fix.contains("\"my-key-1\""), "{msg}");
    // Its own names are fine.
    assert!(
        parse(&with_field(
            "api_key",
            Some(r#"{"keychain": "mac-studio-2"}"#)
        ))
        .is_ok()
    );
}

#[test]
fn allowed_hosts_and_origins_mistakes_are_named_with_their_fix() {
    let with = |field: &str, list: &str| {
        format!(r#"{{"workers": [], "balancer": {{"{field}": {list}}}}}"#)
    };
    for (list, path, problem, fix) in [
        (
            r#"["*"]"#,
            "balancer.allowed_hosts[0]",
            "wildcard",
            "list each name",
        ),
        (
            r#"["ok.local", "my-mac.local:8421"]"#,
            "balancer.allowed_hosts[1]",
            "has a port",
            "\"my-mac.local\"",
        ),
        (
            r#"["http://my-mac.local/"]"#,
            "balancer.allowed_hosts[0]",
            "is a URL",
            "\"my-mac.local\"",
        ),
        (
            r#"[" my-mac.local"]"#,
            "balancer.allowed_hosts[0]",
            "spaces",
            "name alone",
        ),
        (
            r#"["[fe80::1]"]"#,
            "balancer.allowed_hosts[0]",
            "brackets",
            "\"fe80::1\"",
        ),
        (
            r#""my-mac.local""#,
            "balancer.allowed_hosts",
            "expected a list",
            "e.g. [",
        ),
        (
            r#"[3]"#,
            "balancer.allowed_hosts[0]",
            "expected a string",
            "double quotes",
        ),
    ] {
        let (e, msg) = error_of(&with("allowed_hosts", list));
        assert_eq!(e.json_path, path, "{msg}");
        assert!(e.problem.contains(problem), "{list}: {msg}");
        assert!(e.fix.contains(fix), "{list}: {msg}");
    }
    for (list, problem, fix) in [
        (
            r#"["http://localhost:3000/"]"#,
            "has a path",
            "\"http://localhost:3000\"",
        ),
        (
            r#"["http://localhost:3000/chat"]"#,
            "has a path",
            "\"http://localhost:3000\"",
        ),
        (r#"["null"]"#, "sandboxed", "origins of the pages you trust"),
        (r#"["localhost:3000"]"#, "not an origin", "without the path"),
        (
            r#"["https://*.example.com"]"#,
            "wildcard",
            "list each origin",
        ),
        (r#"["http://localhost:0"]"#, "invalid port", "1 to 65535"),
        (r#"["http://localhost:3000 "]"#, "spaces", "origin alone"),
    ] {
        let (e, msg) = error_of(&with("allowed_origins", list));
        assert_eq!(e.json_path, "balancer.allowed_origins[0]", "{msg}");
        assert!(e.problem.contains(problem), "{list}: {msg}");
        assert!(e.fix.contains(fix), "{list}: {msg}");
    }
    let c = parse(&with(
        "allowed_origins",
        r#"["*", "chrome-extension://abcdef", "http://[::1]:8080"]"#,
    ))
    .unwrap();
    assert_eq!(c.balancer.allowed_origins.len(), 3);
}
