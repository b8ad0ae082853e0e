//! The workers file: loading, validation and precise errors.
//!
//! The format is the user's own (`{"workers":[{"id","host","port","type",
//! "model","max_concurrent_requests"}]}`) plus optional fields. Validation
//! walks the parsed JSON by hand instead of relying on serde's messages so
//! that every error names the file, the JSON path, the problem and the fix.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::studio::StudioKind;

/// Largest slot count accepted per worker; a typo like 50000 is caught here.
const MAX_SLOTS: u64 = 4096;

/// A loaded, validated configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Config {
    pub workers: Vec<Worker>,
    pub balancer: BalancerSettings,
    /// Other names for models: a request for an alias (or any of its
    /// names) may go to any studio serving any of the names.
    pub aliases: Aliases,
    /// Models to serve instead when no studio can serve the one asked for,
    /// and the aliases that must never be served by another model.
    pub fallbacks: Fallbacks,
}

/// `{"mistral-7b": ["mistral-7b-instruct-v0.2", "mistral:7b-instruct"]}`:
/// the names in order of preference (a studio that has several of them is
/// sent the first it has loaded, else the first it lists).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Aliases(pub std::collections::BTreeMap<String, Vec<String>>);

/// `"fallbacks": {"qwen3-32b": ["qwen3-14b"]}`: when no studio can serve a
/// model (none has it, or all of those are down), the first of its
/// fallbacks that can. Fallbacks are not followed further.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fallbacks {
    /// A model (or alias) and the models to try instead, in order.
    pub to: std::collections::BTreeMap<String, Vec<String>>,
    /// Aliases written with `"fallbacks": false`: a client asking for one
    /// of their names wants exactly that model, never a stand-in.
    pub pinned: std::collections::BTreeSet<String>,
}

impl Fallbacks {
    /// Whether any of `names` (an alias group) is pinned.
    pub fn pinned_any(&self, names: &[String]) -> bool {
        names.iter().any(|n| self.pinned.contains(n))
    }

    /// What a request for `model` may fall back to, in order: none when its
    /// alias is pinned.
    pub fn for_model(&self, aliases: &Aliases, model: &str) -> &[String] {
        let group = aliases.names_for(model);
        if self.pinned_any(&group) {
            return &[];
        }
        group
            .iter()
            .find_map(|n| self.to.get(n))
            .map_or(&[], Vec::as_slice)
    }
}

impl Aliases {
    /// Every name a request for `model` may be served under: its alias
    /// group (the alias first), or just itself.
    pub fn names_for(&self, model: &str) -> Vec<String> {
        for (alias, names) in &self.0 {
            if alias == model || names.iter().any(|n| n == model) {
                let mut all = vec![alias.clone()];
                all.extend(names.iter().cloned());
                return all;
            }
        }
        vec![model.to_string()]
    }
}

/// One studio (or one multi-node cluster that serves as a single endpoint).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub port: u16,
    #[serde(rename = "type")]
    pub kind: StudioKind,
    pub model: String,
    /// How many requests it runs at once: a ceiling Baton adapts under.
    pub max_concurrent_requests: Slots,
    pub enabled: bool,
    pub weight: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

impl Worker {
    /// `http://host:port`, with IPv6 hosts bracketed.
    pub fn base_url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// `max_concurrent_requests`: a number (a ceiling; Baton learns how many
/// the studio really runs, up to it) or `"auto"` (Baton learns it, up to
/// the balancer's auto ceiling). Absent means `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slots {
    Auto,
    Max(u32),
}

impl Slots {
    /// The most requests it may be given at once.
    pub fn ceiling(self) -> u32 {
        match self {
            Slots::Auto => crate::studio::AUTO_CEILING,
            Slots::Max(n) => n,
        }
    }

    /// The declared number, if one was declared.
    pub fn declared(self) -> Option<u32> {
        match self {
            Slots::Auto => None,
            Slots::Max(n) => Some(n),
        }
    }
}

impl fmt::Display for Slots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slots::Auto => f.write_str("auto"),
            Slots::Max(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Slots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Slots::Auto => s.serialize_str("auto"),
            Slots::Max(n) => s.serialize_u32(*n),
        }
    }
}

impl From<Slots> for Value {
    fn from(s: Slots) -> Value {
        match s {
            Slots::Auto => Value::from("auto"),
            Slots::Max(n) => Value::from(n),
        }
    }
}

/// Where a secret lives. The config file names it; it never holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// An entry in the OS keychain under Baton's service name.
    Keychain(String),
    /// An environment variable.
    Env(String),
}

/// Routing policy among workers that have a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Lowest expected completion time (load relative to slots x EWMA latency).
    LeastTime,
    /// Plain rotation; kept for comparison in benchmarks.
    RoundRobin,
    /// Least time, but a conversation's next turn goes back to the studio
    /// that holds its prompt cache when waiting for it costs less than the
    /// prefill it saves.
    CacheAffinity,
}

/// An API clients use to reach the pool (preflight checks each one the
/// pool is asked to serve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientApi {
    /// OpenAI's API (always served).
    Openai,
    /// Anthropic's Messages API (Claude Code and other Anthropic clients).
    Anthropic,
    /// Ollama's own API (Open WebUI and other Ollama clients).
    Ollama,
}

impl ClientApi {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientApi::Openai => "openai",
            ClientApi::Anthropic => "anthropic",
            ClientApi::Ollama => "ollama",
        }
    }
}

/// Optional top-level `balancer` section. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BalancerSettings {
    pub listen: Option<SocketAddr>,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
    pub queue_limit: usize,
    pub queue_timeout: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub max_body_bytes: usize,
    pub strategy: Strategy,
    /// The APIs clients use to reach the pool (preflight checks each).
    pub apis: Vec<ClientApi>,
    /// Names clients may put in `Host` besides loopback and the address
    /// the balancer listens on (anything else is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Web pages (origins) allowed to call the balancer from a browser;
    /// `*` (any page) only together with an API key. Requests without an
    /// `Origin` are not affected.
    pub allowed_origins: Vec<String>,
    /// Route a request to a studio that has its model loaded rather than
    /// one that would load it first (`false`: as if every listed model were
    /// loaded, Baton's routing before it read the studios' inventories).
    pub prefer_loaded: bool,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        BalancerSettings {
            listen: None,
            // A LAN connect takes a millisecond; anything past a few hundred
            // is a dead or unreachable host.
            connect_timeout: Duration::from_millis(500),
            // Long prompts on big models can take a while before the first token.
            first_token_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
            queue_limit: 1024,
            // As long as an OpenAI client waits by default (10 min): one
            // studio alone would keep a request waiting in its own queue,
            // so the pool must not give up sooner (answers of 30-60 s on a
            // one-at-a-time server make a short queue wait minutes).
            queue_timeout: Duration::from_secs(600),
            // With the probe timeout, a dead studio is noticed within ~2 s
            // even when no request touches it (requests notice at once).
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(1000),
            max_body_bytes: 16 * 1024 * 1024,
            // Measured better on conversations (2.4x lower mean time to
            // first token) and equal on single-turn traffic.
            strategy: Strategy::CacheAffinity,
            apis: vec![ClientApi::Openai],
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            prefer_loaded: true,
        }
    }
}

/// A configuration error: where it is, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// JSON path such as `workers[1].port`; empty for file-level problems.
    pub json_path: String,
    /// Line and column for syntax errors.
    pub position: Option<(usize, usize)>,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.json_path.is_empty() {
            write!(f, ": {}", self.json_path)?;
        }
        write!(f, ": {}\n  fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// Default location of the workers file: `<platform config dir>/workers.json`.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "Baton", "baton")
        .map(|d| d.config_dir().join("workers.json"))
}

impl Config {
    /// Read and validate a workers file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            json_path: String::new(),
            position: None,
            problem: format!("cannot read the file: {e}"),
            fix: if e.kind() == std::io::ErrorKind::NotFound {
                "check the path, or pass another file with -c/--config".into()
            } else {
                "check the file's permissions".into()
            },
        })?;
        Self::parse(&text, path)
    }

    /// Validate workers-file text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator { file: path };
        let root: Value = serde_json::from_str(text).map_err(|e| v.syntax(e))?;
        v.config(&root)
    }

    /// The enabled workers.
    pub fn enabled_workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| w.enabled)
    }

    /// Serialize back to the file format (secrets stay references). This is
    /// the one serialization of the file: `Config::parse(to_json())` gives
    /// back the same configuration, `balancer` section included (only the
    /// settings that differ from the defaults are written).
    pub fn to_json(&self) -> Value {
        let workers: Vec<Value> = self.workers.iter().map(Worker::to_json).collect();
        let mut root = Map::new();
        root.insert("workers".into(), Value::Array(workers));
        let balancer = self.balancer.to_json();
        if !balancer.as_object().is_some_and(Map::is_empty) {
            root.insert("balancer".into(), balancer);
        }
        if !self.aliases.0.is_empty() {
            let aliases: Map<String, Value> = self
                .aliases
                .0
                .iter()
                .map(|(alias, names)| {
                    let v = if self.fallbacks.pinned.contains(alias) {
                        serde_json::json!({"models": names, "fallbacks": false})
                    } else {
                        names.clone().into()
                    };
                    (alias.clone(), v)
                })
                .collect();
            root.insert("aliases".into(), Value::Object(aliases));
        }
        if !self.fallbacks.to.is_empty() {
            root.insert(
                "fallbacks".into(),
                serde_json::to_value(&self.fallbacks.to).expect("names serialize"),
            );
        }
        Value::Object(root)
    }

    /// The file's text: pretty JSON with a trailing newline.
    pub fn to_text(&self) -> String {
        let mut t = serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialize");
        t.push('\n');
        t
    }
}

impl Worker {
    /// This worker as a workers-file entry (optional fields only when set).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("host".into(), self.host.clone().into());
        m.insert("port".into(), self.port.into());
        m.insert("type".into(), self.kind.as_str().into());
        m.insert("model".into(), self.model.clone().into());
        m.insert(
            "max_concurrent_requests".into(),
            self.max_concurrent_requests.into(),
        );
        if !self.enabled {
            m.insert("enabled".into(), false.into());
        }
        if self.weight != 1.0 {
            m.insert("weight".into(), self.weight.into());
        }
        if let Some(r) = &self.api_key {
            let (k, v) = match r {
                SecretRef::Keychain(n) => ("keychain", n),
                SecretRef::Env(n) => ("env", n),
            };
            m.insert("api_key".into(), serde_json::json!({ k: v }));
        }
        if !self.members.is_empty() {
            m.insert("members".into(), self.members.clone().into());
        }
        Value::Object(m)
    }
}

impl BalancerSettings {
    /// The `balancer` section: only what differs from the defaults.
    pub fn to_json(&self) -> Value {
        let d = BalancerSettings::default();
        let mut m = Map::new();
        if let Some(l) = self.listen {
            m.insert("listen".into(), l.to_string().into());
        }
        let mut ms = |key: &str, v: Duration, default: Duration| {
            if v != default {
                m.insert(key.into(), (v.as_millis() as u64).into());
            }
        };
        ms(
            "connect_timeout_ms",
            self.connect_timeout,
            d.connect_timeout,
        );
        ms(
            "first_token_timeout_ms",
            self.first_token_timeout,
            d.first_token_timeout,
        );
        ms("idle_timeout_ms", self.idle_timeout, d.idle_timeout);
        ms("queue_timeout_ms", self.queue_timeout, d.queue_timeout);
        ms("probe_interval_ms", self.probe_interval, d.probe_interval);
        ms("probe_timeout_ms", self.probe_timeout, d.probe_timeout);
        if self.queue_limit != d.queue_limit {
            m.insert("queue_limit".into(), self.queue_limit.into());
        }
        if self.max_body_bytes != d.max_body_bytes {
            m.insert("max_body_bytes".into(), self.max_body_bytes.into());
        }
        if self.apis != d.apis {
            m.insert(
                "apis".into(),
                self.apis
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        if !self.allowed_hosts.is_empty() {
            m.insert("allowed_hosts".into(), self.allowed_hosts.clone().into());
        }
        if !self.allowed_origins.is_empty() {
            m.insert(
                "allowed_origins".into(),
                self.allowed_origins.clone().into(),
            );
        }
        if self.prefer_loaded != d.prefer_loaded {
            m.insert("prefer_loaded".into(), self.prefer_loaded.into());
        }
        if self.strategy != d.strategy {
            m.insert(
                "strategy".into(),
                match self.strategy {
                    Strategy::LeastTime => "least_time",
                    Strategy::RoundRobin => "round_robin",
                    Strategy::CacheAffinity => "cache_affinity",
                }
                .into(),
            );
        }
        Value::Object(m)
    }
}

const TOP_FIELDS: &[&str] = &["workers", "balancer", "aliases", "fallbacks"];
const ALIAS_FIELDS: &[&str] = &["models", "fallbacks"];
const WORKER_FIELDS: &[&str] = &[
    "id",
    "host",
    "port",
    "type",
    "model",
    "max_concurrent_requests",
    "enabled",
    "weight",
    "api_key",
    "members",
];
const BALANCER_FIELDS: &[&str] = &[
    "listen",
    "connect_timeout_ms",
    "first_token_timeout_ms",
    "idle_timeout_ms",
    "queue_limit",
    "queue_timeout_ms",
    "probe_interval_ms",
    "probe_timeout_ms",
    "max_body_bytes",
    "strategy",
    "apis",
    "allowed_hosts",
    "allowed_origins",
    "prefer_loaded",
];

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, path: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            json_path: path.to_string(),
            position: None,
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn syntax(&self, e: serde_json::Error) -> ConfigError {
        // serde_json's message ends with " at line L column C"; we print the
        // position in the usual file:line:col form instead.
        let msg = e.to_string();
        let msg = msg
            .rsplit_once(" at line ")
            .map(|(m, _)| m.to_string())
            .unwrap_or(msg);
        let fix = match e.classify() {
            serde_json::error::Category::Eof => {
                "the file ends early: close every `{` and `[`".to_string()
            }
            _ if msg.contains("trailing comma") => "remove the comma before the closing bracket".into(),
            _ if msg.contains("key must be a string") => {
                "put object keys in double quotes, e.g. \"port\": 1234".into()
            }
            _ => "fix the JSON syntax at that position (strings in double quotes, commas between items, no comments)".into(),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            json_path: String::new(),
            position: Some((e.line(), e.column())),
            problem: format!("invalid JSON: {msg}"),
            fix,
        }
    }

    fn object<'v>(
        &self,
        v: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Result<&'v Map<String, Value>, ConfigError> {
        let Some(m) = v.as_object() else {
            return Err(self.err(
                path_or_root(path),
                format!("expected an object, found {}", describe(v)),
                "use { ... } with named fields",
            ));
        };
        for key in m.keys() {
            if !allowed.contains(&key.as_str()) {
                let fix = match did_you_mean(key, allowed) {
                    Some(s) => format!("did you mean `{s}`? Known fields: {}", allowed.join(", ")),
                    None => format!("remove it; known fields: {}", allowed.join(", ")),
                };
                return Err(self.err(&join(path, key), format!("unknown field `{key}`"), fix));
            }
        }
        Ok(m)
    }

    fn config(&self, root: &Value) -> Result<Config, ConfigError> {
        let top = self.object(root, "", TOP_FIELDS)?;
        let Some(workers) = top.get("workers") else {
            return Err(self.err(
                "workers",
                "missing field `workers`",
                "add \"workers\": [ { \"id\": ..., \"host\": ..., \"port\": 1234, \"type\": \"lm_studio\", \"model\": ..., \"max_concurrent_requests\": 4 } ]",
            ));
        };
        let Some(list) = workers.as_array() else {
            return Err(self.err(
                "workers",
                format!("expected a list of workers, found {}", describe(workers)),
                "make `workers` a JSON array: [ {...}, {...} ]",
            ));
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(list.len());
        for (i, w) in list.iter().enumerate() {
            let path = format!("workers[{i}]");
            let worker = self.worker(w, &path)?;
            if !seen.insert(worker.id.clone()) {
                let first = out
                    .iter()
                    .position(|o: &Worker| o.id == worker.id)
                    .unwrap_or(0);
                return Err(self.err(
                    &format!("{path}.id"),
                    format!(
                        "duplicate id `{}` (also used by workers[{first}])",
                        worker.id
                    ),
                    "give every worker a unique id, e.g. mac-studio-1, mac-studio-2",
                ));
            }
            out.push(worker);
        }
        let balancer = match top.get("balancer") {
            None => BalancerSettings::default(),
            Some(b) => self.balancer(b)?,
        };
        let (aliases, pinned) = match top.get("aliases") {
            None => Default::default(),
            Some(a) => self.aliases(a)?,
        };
        let to = match top.get("fallbacks") {
            None => Default::default(),
            Some(f) => self.fallbacks(f, &aliases, &pinned)?,
        };
        let config = Config {
            workers: out,
            balancer,
            aliases,
            fallbacks: Fallbacks { to, pinned },
        };
        let listen = config.balancer.listen.unwrap_or(DEFAULT_LISTEN);
        config.check_self_loop(listen, &[], self.file)?;
        Ok(config)
    }

    /// The aliases, and those that never fall back.
    fn aliases(
        &self,
        v: &Value,
    ) -> Result<(Aliases, std::collections::BTreeSet<String>), ConfigError> {
        let Some(m) = v.as_object() else {
            return Err(self.err(
                "aliases",
                format!("expected an object, found {}", describe(v)),
                "write it as {\"mistral-7b\": [\"mistral-7b-instruct-v0.2\", \"mistral:7b-instruct\"]}",
            ));
        };
        let mut out = std::collections::BTreeMap::new();
        let mut pinned = std::collections::BTreeSet::new();
        // Where each name was first seen, so a name in two groups is caught.
        let mut seen: std::collections::HashMap<String, String> = Default::default();
        for (alias, entry) in m {
            let path = format!("aliases.{alias}");
            if alias.trim().is_empty() {
                return Err(self.err(
                    "aliases",
                    "an alias has an empty name",
                    "give every alias a name, e.g. \"mistral-7b\"",
                ));
            }
            // A list of names, or {"models": [...], "fallbacks": false}.
            let (names, names_path) = match entry {
                Value::Object(_) => {
                    let o = self.object(entry, &path, ALIAS_FIELDS)?;
                    match o.get("fallbacks") {
                        None | Some(Value::Bool(true)) => {}
                        Some(Value::Bool(false)) => {
                            pinned.insert(alias.clone());
                        }
                        Some(other) => {
                            return Err(self.err(
                                &format!("{path}.fallbacks"),
                                format!("expected false (or true), found {}", describe(other)),
                                "write \"fallbacks\": false to never serve this alias with another model",
                            ));
                        }
                    }
                    let Some(names) = o.get("models") else {
                        return Err(self.err(
                            &path,
                            "missing field `models`",
                            format!(
                                "list the names, e.g. \"{alias}\": {{\"models\": [\"qwen3-32b@q8_0\", \"qwen3:32b-q8_0\"], \"fallbacks\": false}}"
                            ),
                        ));
                    };
                    (names, format!("{path}.models"))
                }
                other => (other, path.clone()),
            };
            let Some(list) = names.as_array().filter(|l| !l.is_empty()) else {
                return Err(self.err(
                    &names_path,
                    format!(
                        "expected a non-empty list of model names, found {}",
                        describe(names)
                    ),
                    format!(
                        "e.g. \"{alias}\": [\"mistral-7b-instruct-v0.2\", \"mistral:7b-instruct\"]"
                    ),
                ));
            };
            let mut group = Vec::with_capacity(list.len());
            for (i, n) in list.iter().enumerate() {
                let Some(name) = n.as_str().filter(|s| !s.trim().is_empty()) else {
                    return Err(self.err(
                        &format!("{names_path}[{i}]"),
                        format!("expected a model name, found {}", describe(n)),
                        "write each name as a string, as the studio lists it in /v1/models",
                    ));
                };
                group.push(name.to_string());
            }
            for name in std::iter::once(alias).chain(group.iter()) {
                if let Some(other) = seen.insert(name.clone(), alias.clone())
                    && other != *alias
                {
                    return Err(self.err(
                        &path,
                        format!("`{name}` is also in the alias `{other}`"),
                        "a name may belong to one alias only: merge the two aliases, or remove it from one",
                    ));
                }
            }
            out.insert(alias.clone(), group);
        }
        Ok((Aliases(out), pinned))
    }

    /// `"fallbacks": {"qwen3-32b": ["qwen3-14b"]}`.
    fn fallbacks(
        &self,
        v: &Value,
        aliases: &Aliases,
        pinned: &std::collections::BTreeSet<String>,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ConfigError> {
        let example = "write it as {\"qwen3-32b\": [\"qwen3-14b\", \"qwen3-8b\"]}: a model, and the models to serve instead, in order";
        let Some(m) = v.as_object() else {
            return Err(self.err(
                "fallbacks",
                format!("expected an object, found {}", describe(v)),
                example,
            ));
        };
        let mut out = std::collections::BTreeMap::new();
        // The alias group each key belongs to, so one model is given once.
        let mut keyed: std::collections::HashMap<String, String> = Default::default();
        for (model, list) in m {
            let path = format!("fallbacks.{model}");
            if model.trim().is_empty() {
                return Err(self.err("fallbacks", "a model has an empty name", example));
            }
            let group = aliases.names_for(model);
            if let Some(p) = group.iter().find(|n| pinned.contains(*n)) {
                return Err(self.err(
                    &path,
                    format!(
                        "`{model}` is pinned (\"fallbacks\": false in aliases.{p}), so it never falls back"
                    ),
                    format!(
                        "remove fallbacks.{model}, or the \"fallbacks\": false of aliases.{p}"
                    ),
                ));
            }
            if let Some(other) = keyed.insert(group[0].clone(), model.clone()) {
                return Err(self.err(
                    &path,
                    format!(
                        "`{model}` and `{other}` are names of the alias `{}`: its fallbacks are given twice",
                        group[0]
                    ),
                    format!("give them once, under \"{}\"", group[0]),
                ));
            }
            let Some(items) = list.as_array().filter(|l| !l.is_empty()) else {
                return Err(self.err(
                    &path,
                    format!(
                        "expected a non-empty list of model names, found {}",
                        describe(list)
                    ),
                    format!("e.g. \"{model}\": [\"qwen3-14b\"]"),
                ));
            };
            let mut to: Vec<String> = Vec::with_capacity(items.len());
            for (i, n) in items.iter().enumerate() {
                let at = format!("{path}[{i}]");
                let Some(name) = n.as_str().filter(|s| !s.trim().is_empty()) else {
                    return Err(self.err(
                        &at,
                        format!("expected a model name, found {}", describe(n)),
                        "write each name as a string, as the studio lists it in /v1/models (or an alias)",
                    ));
                };
                if group.iter().any(|g| g == name) {
                    return Err(self.err(
                        &at,
                        format!("`{model}` falls back to itself (`{name}` is the same model)"),
                        "list other models only: the request already goes to every studio serving this one",
                    ));
                }
                if to
                    .iter()
                    .any(|t| aliases.names_for(t).iter().any(|g| g == name))
                {
                    return Err(self.err(
                        &at,
                        format!("`{name}` is already in the list"),
                        "list each fallback once",
                    ));
                }
                to.push(name.to_string());
            }
            out.insert(model.clone(), to);
        }
        Ok(out)
    }

    fn worker(&self, v: &Value, path: &str) -> Result<Worker, ConfigError> {
        let m = self.object(v, path, WORKER_FIELDS)?;
        let id = self.id(m, path)?;
        let host = self.nonempty_string(
            m,
            path,
            "host",
            "the studio's IP address or hostname, e.g. \"192.168.1.105\"",
        )?;
        if host.contains("://") || host.contains('/') {
            return Err(self.err(
                &join(path, "host"),
                format!("`{host}` is a URL, not a host"),
                "give only the address, e.g. \"192.168.1.105\", and the port in `port`",
            ));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(self.err(
                &join(path, "host"),
                format!("`{host}` contains a port or is not a valid address"),
                "give only the address in `host` and the number in `port`",
            ));
        }
        let port_path = join(path, "port");
        let port = match m.get("port") {
            None => return Err(self.missing(path, "port", "1234 (LM Studio's default)")),
            Some(p) => match p.as_u64() {
                Some(n) if (1..=65535).contains(&n) => n as u16,
                _ if p.is_number() => {
                    return Err(self.err(
                        &port_path,
                        format!("port {p} is out of range"),
                        "use a port between 1 and 65535 (LM Studio's default is 1234)",
                    ));
                }
                _ => {
                    return Err(self.err(
                        &port_path,
                        format!("expected a port number, found {}", describe(p)),
                        "write the port as a number without quotes, e.g. 1234",
                    ));
                }
            },
        };
        let kind_path = join(path, "type");
        let kind = match m.get("type") {
            None => return Err(self.missing(path, "type", "\"lm_studio\"")),
            Some(Value::String(s)) => s.parse::<StudioKind>().map_err(|_| {
                let known = StudioKind::known_list();
                let names: Vec<&str> = StudioKind::ALL.iter().map(|k| k.as_str()).collect();
                let fix = match did_you_mean(s, &names) {
                    Some(g) => format!("did you mean \"{g}\"? Known types: {known}"),
                    None => format!("use one of: {known}"),
                };
                self.err(&kind_path, format!("unknown type \"{s}\""), fix)
            })?,
            Some(other) => {
                return Err(self.err(
                    &kind_path,
                    format!("expected a string, found {}", describe(other)),
                    format!("use one of: {}", StudioKind::known_list()),
                ));
            }
        };
        let model = self.nonempty_string(
            m,
            path,
            "model",
            "the model id the studio serves, e.g. \"mistral-7b-instruct-v0.2\"",
        )?;
        let slots_path = join(path, "max_concurrent_requests");
        let max_concurrent_requests = match m.get("max_concurrent_requests") {
            None => Slots::Auto,
            Some(Value::String(a)) if a == "auto" => Slots::Auto,
            Some(v) => Slots::Max(match v.as_u64() {
                Some(0) => {
                    return Err(self.err(
                        &slots_path,
                        "max_concurrent_requests is 0, so this worker could never serve a request",
                        "use 1 or more (the number of requests the studio runs in parallel), or set \"enabled\": false",
                    ));
                }
                Some(n) if n <= MAX_SLOTS => n as u32,
                _ => {
                    return Err(self.err(
                        &slots_path,
                        format!("expected a whole number from 1 to {MAX_SLOTS} or \"auto\", found {v}"),
                        "use the number of requests the studio runs in parallel, e.g. 4, or \"auto\" to let Baton learn it",
                    ));
                }
            }),
        };
        let enabled = match m.get("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(self.err(
                    &join(path, "enabled"),
                    format!("expected true or false, found {}", describe(other)),
                    "write true or false without quotes",
                ));
            }
        };
        let weight = match m.get("weight") {
            None => 1.0,
            Some(w) => match w.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => x,
                _ => {
                    return Err(self.err(
                        &join(path, "weight"),
                        format!("expected a positive number, found {w}"),
                        "use a number greater than 0 (1.0 is the default)",
                    ));
                }
            },
        };
        let api_key = match m.get("api_key") {
            None | Some(Value::Null) => None,
            Some(v) => Some(self.secret_ref(v, &join(path, "api_key"), &id)?),
        };
        let members = match m.get("members") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
                        _ => {
                            return Err(self.err(
                                &format!("{}[{i}]", join(path, "members")),
                                format!("expected a host name or address, found {}", describe(item)),
                                "list the cluster's hosts as strings, e.g. [\"192.168.1.10\", \"192.168.1.11\"]",
                            ));
                        }
                    }
                }
                out
            }
            Some(other) => {
                return Err(self.err(
                    &join(path, "members"),
                    format!("expected a list of hosts, found {}", describe(other)),
                    "list the cluster's hosts as strings, e.g. [\"192.168.1.10\", \"192.168.1.11\"]",
                ));
            }
        };
        Ok(Worker {
            id,
            host,
            port,
            kind,
            model,
            max_concurrent_requests,
            enabled,
            weight,
            api_key,
            members,
        })
    }

    fn secret_ref(&self, v: &Value, path: &str, id: &str) -> Result<SecretRef, ConfigError> {
        let fix = "store the key in the OS keychain and reference it: \"api_key\": {\"keychain\": \"mac-studio-1\"}, or {\"env\": \"STUDIO1_KEY\"}";
        match v {
            Value::Object(m) if m.len() == 1 => {
                let (k, val) = m.iter().next().expect("len is 1");
                let Some(name) = val.as_str().filter(|s| !s.is_empty()) else {
                    return Err(self.err(&join(path, k), "expected a non-empty name", fix));
                };
                let at = join(path, k);
                match k.as_str() {
                    "keychain" => {
                        if let Some(own) = crate::secrets::Own::named(name) {
                            return Err(self.err(
                                &at,
                                format!(
                                    "`{name}` is Baton's own keychain entry ({}); a worker may not use it, or Baton would send it to the studio",
                                    own.describe()
                                ),
                                format!(
                                    "store the studio's own key under a name of its own: `baton key set {id}` (or the dashboard's \"Set API key\"), then write {{\"keychain\": \"{id}\"}}"
                                ),
                            ));
                        }
                        if let Err(problem) = check_name(name) {
                            return Err(self.err(
                                &at,
                                format!("keychain entry name {name:?} {problem}"),
                                format!(
                                    "use 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-', e.g. \"{}\", and store the key under it with `baton key set {}`",
                                    suggest_name(name),
                                    suggest_name(name)
                                ),
                            ));
                        }
                        Ok(SecretRef::Keychain(name.to_string()))
                    }
                    "env" => {
                        if name == crate::secrets::BALANCER_KEY_ENV {
                            return Err(self.err(
                                &at,
                                format!(
                                    "`{name}` holds the balancer's own API key; a worker may not use it, or Baton would send it to the studio"
                                ),
                                "export the studio's key in a variable of its own, e.g. {\"env\": \"STUDIO1_KEY\"}",
                            ));
                        }
                        Ok(SecretRef::Env(name.to_string()))
                    }
                    _ => Err(self.err(&at, format!("unknown secret source `{k}`"), fix)),
                }
            }
            // Never echo the value: it may be the secret itself.
            Value::String(_) => Err(self.err(
                path,
                "api_key must name where the key is stored, not contain the key",
                fix,
            )),
            _ => Err(self.err(
                path,
                format!("expected an object, found {}", describe(v)),
                fix,
            )),
        }
    }

    fn balancer(&self, v: &Value) -> Result<BalancerSettings, ConfigError> {
        let m = self.object(v, "balancer", BALANCER_FIELDS)?;
        let mut s = BalancerSettings::default();
        if let Some(l) = m.get("listen") {
            let parsed = l.as_str().and_then(|t| t.parse::<SocketAddr>().ok());
            s.listen = Some(parsed.ok_or_else(|| {
                self.err(
                    "balancer.listen",
                    format!("expected an address:port, found {l}"),
                    "write it as \"127.0.0.1:8181\"",
                )
            })?);
        }
        let ms = |key: &str, slot: &mut Duration| -> Result<(), ConfigError> {
            if let Some(x) = m.get(key) {
                match x.as_u64() {
                    Some(n) if n > 0 => *slot = Duration::from_millis(n),
                    _ => {
                        return Err(self.err(
                            &format!("balancer.{key}"),
                            format!("expected milliseconds (a whole number above 0), found {x}"),
                            format!("e.g. \"{key}\": {}", slot.as_millis()),
                        ));
                    }
                }
            }
            Ok(())
        };
        ms("connect_timeout_ms", &mut s.connect_timeout)?;
        ms("first_token_timeout_ms", &mut s.first_token_timeout)?;
        ms("idle_timeout_ms", &mut s.idle_timeout)?;
        ms("queue_timeout_ms", &mut s.queue_timeout)?;
        ms("probe_interval_ms", &mut s.probe_interval)?;
        ms("probe_timeout_ms", &mut s.probe_timeout)?;
        let count = |key: &str, default: usize| -> Result<usize, ConfigError> {
            match m.get(key) {
                None => Ok(default),
                Some(x) => x.as_u64().map(|n| n as usize).ok_or_else(|| {
                    self.err(
                        &format!("balancer.{key}"),
                        format!("expected a whole number, found {x}"),
                        format!("e.g. \"{key}\": {default}"),
                    )
                }),
            }
        };
        s.queue_limit = count("queue_limit", s.queue_limit)?;
        s.max_body_bytes = count("max_body_bytes", s.max_body_bytes)?;
        if let Some(x) = m.get("apis") {
            let bad = || {
                self.err(
                    "balancer.apis",
                    format!("expected a list of APIs, found {x}"),
                    "e.g. \"apis\": [\"openai\", \"anthropic\", \"ollama\"]",
                )
            };
            let list = x.as_array().ok_or_else(bad)?;
            let mut apis = vec![ClientApi::Openai];
            for (i, a) in list.iter().enumerate() {
                let api = match a.as_str() {
                    Some("openai") => ClientApi::Openai,
                    Some("anthropic") => ClientApi::Anthropic,
                    Some("ollama") => ClientApi::Ollama,
                    _ => {
                        return Err(self.err(
                            &format!("balancer.apis[{i}]"),
                            format!("unknown API {a}"),
                            "use \"openai\", \"anthropic\" or \"ollama\"",
                        ));
                    }
                };
                if !apis.contains(&api) {
                    apis.push(api);
                }
            }
            s.apis = apis;
        }
        if let Some(x) = m.get("allowed_hosts") {
            s.allowed_hosts = self.list(x, "balancer.allowed_hosts", "\"my-mac.local\"", |h| {
                check_host_name(h)
            })?;
        }
        if let Some(x) = m.get("allowed_origins") {
            s.allowed_origins = self.list(
                x,
                "balancer.allowed_origins",
                "\"http://localhost:3000\"",
                check_origin,
            )?;
        }
        if let Some(x) = m.get("prefer_loaded") {
            s.prefer_loaded = x.as_bool().ok_or_else(|| {
                self.err(
                    "balancer.prefer_loaded",
                    format!("expected true or false, found {}", describe(x)),
                    "write true (the default: requests go where their model is loaded) or false, without quotes",
                )
            })?;
        }
        if let Some(x) = m.get("strategy") {
            s.strategy = match x.as_str() {
                Some("least_time") => Strategy::LeastTime,
                Some("round_robin") => Strategy::RoundRobin,
                Some("cache_affinity") => Strategy::CacheAffinity,
                _ => {
                    return Err(self.err(
                        "balancer.strategy",
                        format!("unknown strategy {x}"),
                        "use \"cache_affinity\" (default), \"least_time\" or \"round_robin\"",
                    ));
                }
            };
        }
        Ok(s)
    }

    /// A list of strings, each checked by `check` (which gives the problem
    /// and the fix).
    fn list(
        &self,
        v: &Value,
        path: &str,
        example: &str,
        check: impl Fn(&str) -> Result<(), (String, String)>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(items) = v.as_array() else {
            return Err(self.err(
                path,
                format!("expected a list, found {}", describe(v)),
                format!("write it as a list, e.g. [{example}]"),
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(text) = item.as_str() else {
                return Err(self.err(
                    &at,
                    format!("expected a string, found {}", describe(item)),
                    format!("write it in double quotes, e.g. {example}"),
                ));
            };
            check(text).map_err(|(problem, fix)| self.err(&at, problem, fix))?;
            out.push(text.to_string());
        }
        Ok(out)
    }

    /// A worker's id: it becomes a keychain entry's name, a URL path
    /// segment and a response header, so it is kept to a safe alphabet,
    /// exactly as written (no silent trimming).
    fn id(&self, m: &Map<String, Value>, path: &str) -> Result<String, ConfigError> {
        let at = join(path, "id");
        match m.get("id") {
            None => Err(self.missing(path, "id", "a short name such as \"mac-studio-1\"")),
            Some(Value::String(s)) if s.is_empty() => Err(self.err(
                &at,
                "`id` is empty",
                "set it to a short name such as \"mac-studio-1\"",
            )),
            Some(Value::String(s)) => match check_name(s) {
                Ok(()) => Ok(s.clone()),
                Err(problem) => Err(self.err(
                    &at,
                    format!("id {s:?} {problem}"),
                    format!(
                        "use 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-', e.g. \"{}\"",
                        suggest_name(s)
                    ),
                )),
            },
            Some(other) => Err(self.err(
                &at,
                format!("expected a string, found {}", describe(other)),
                "set it to a short name such as \"mac-studio-1\"",
            )),
        }
    }

    fn missing(&self, path: &str, field: &str, example: &str) -> ConfigError {
        self.err(
            &join(path, field),
            format!("missing field `{field}`"),
            format!("add \"{field}\": {example}"),
        )
    }

    fn nonempty_string(
        &self,
        m: &Map<String, Value>,
        path: &str,
        field: &str,
        example: &str,
    ) -> Result<String, ConfigError> {
        match m.get(field) {
            None => Err(self.missing(path, field, example)),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(Value::String(_)) => Err(self.err(
                &join(path, field),
                format!("`{field}` is empty"),
                format!("set it to {example}"),
            )),
            Some(other) => Err(self.err(
                &join(path, field),
                format!("expected a string, found {}", describe(other)),
                format!("set it to {example}"),
            )),
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn path_or_root(path: &str) -> &str {
    if path.is_empty() { "(top level)" } else { path }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The closest known name, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&word.to_lowercase(), k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Where the balancer listens unless the file or the command line says
/// otherwise: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8421);

impl Config {
    /// The first worker that is the balancer itself when it listens on
    /// `listen`, with its index: requests sent to it would come straight
    /// back, forever. `local` lists this machine's own addresses (for a
    /// balancer listening on every interface). Host names are not resolved
    /// here; the balancer's `Via` header catches a loop through a name.
    pub fn self_loop(&self, listen: SocketAddr, local: &[IpAddr]) -> Option<(usize, &Worker)> {
        self.workers
            .iter()
            .enumerate()
            .find(|(_, w)| points_at(w, listen, local))
    }

    /// [`Config::self_loop`] as the loader's error, naming the field.
    pub fn check_self_loop(
        &self,
        listen: SocketAddr,
        local: &[IpAddr],
        file: &Path,
    ) -> Result<(), ConfigError> {
        match self.self_loop(listen, local) {
            None => Ok(()),
            Some((i, w)) => Err(ConfigError {
                file: file.to_path_buf(),
                json_path: format!("workers[{i}].port"),
                position: None,
                problem: format!(
                    "worker `{}` ({}:{}) is this balancer's own address {listen}: requests sent to it would come back to Baton forever",
                    w.id, w.host, w.port
                ),
                fix: format!(
                    "point it at the studio's own server (LM Studio listens on {}, Ollama on {}), or move the balancer with balancer.listen / --listen",
                    crate::studio::StudioKind::LmStudio.default_port(),
                    crate::studio::StudioKind::Ollama.default_port()
                ),
            }),
        }
    }
}

/// Whether `w` names the address a balancer listening on `listen` answers.
fn points_at(w: &Worker, listen: SocketAddr, local: &[IpAddr]) -> bool {
    if w.port != listen.port() {
        return false;
    }
    let host = w.host.trim_start_matches('[').trim_end_matches(']');
    let ips: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]
    } else {
        match host.parse() {
            Ok(ip) => vec![ip],
            Err(_) => return false,
        }
    };
    ips.iter().any(|ip| {
        if listen.ip().is_unspecified() {
            ip.is_loopback() || ip.is_unspecified() || local.contains(ip)
        } else {
            *ip == listen.ip()
        }
    })
}

/// Longest worker id (and keychain entry name).
pub const MAX_ID_LEN: usize = 64;

/// Whether `name` is a valid worker id or keychain entry name:
/// `[A-Za-z0-9._-]{1,64}`. The error says what is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.trim() != name {
        return Err("starts or ends with a space".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("contains {c:?}, which an id cannot have"));
    }
    if name.len() > MAX_ID_LEN {
        return Err(format!(
            "is {} characters long, more than {MAX_ID_LEN}",
            name.len()
        ));
    }
    if name.chars().all(|c| c == '.') {
        return Err("is only dots".into());
    }
    Ok(())
}

/// A valid name close to `raw` (for fixes, and for ids made from hosts):
/// other characters become `-`, runs of `-` shrink to one.
pub fn suggest_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.trim().chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.trim_matches(|c| c == '-' || c == '.');
    let mut out: String = out.chars().take(MAX_ID_LEN).collect();
    if out.is_empty() {
        out = "mac-studio-1".into();
    }
    out
}

/// One `balancer.allowed_hosts` entry: a host name or an IP address, with
/// no port, scheme or wildcard.
fn check_host_name(h: &str) -> Result<(), (String, String)> {
    let example = "e.g. \"my-mac.local\" or \"192.168.1.20\"".to_string();
    if h.is_empty() || h.trim() != h || h.chars().any(char::is_whitespace) {
        return Err((
            format!("{h:?} is empty or has spaces"),
            format!("write the name alone, {example}"),
        ));
    }
    if h.contains('*') {
        return Err((
            format!("`{h}` has a wildcard; any name would let a web page in through DNS rebinding"),
            format!("list each name clients use to reach the balancer, {example}"),
        ));
    }
    if let Some((_, rest)) = h.split_once("://") {
        let name = rest.split(['/', ':']).next().unwrap_or(rest);
        return Err((
            format!("`{h}` is a URL, not a host name"),
            format!("give only the name: \"{name}\""),
        ));
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|x| x.strip_suffix(']'))
        && inner.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Err((
            format!("`{h}` has brackets"),
            format!("write the IPv6 address without them: \"{inner}\""),
        ));
    }
    if let Some((name, port)) = h.rsplit_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        return Err((
            format!("`{h}` has a port"),
            format!("give the name without the port (any port is accepted): \"{name}\""),
        ));
    }
    let valid = h.len() <= 253
        && h.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err((
            format!("`{h}` is not a host name or an IP address"),
            format!("use letters, digits, '-' and dots, {example}"),
        ));
    }
    Ok(())
}

/// One `balancer.allowed_origins` entry: `*`, or an origin exactly as
/// browsers send it: `scheme://host[:port]`, no path.
fn check_origin(o: &str) -> Result<(), (String, String)> {
    let example = "e.g. \"http://localhost:3000\" or \"https://chat.example.com\"";
    if o == "*" {
        return Ok(());
    }
    if o.eq_ignore_ascii_case("null") {
        return Err((
            "`null` is the origin of sandboxed frames and local files of any site; allowing it would let any page in".into(),
            format!("list the origins of the pages you trust, {example}"),
        ));
    }
    if o.is_empty() || o.trim() != o || o.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            format!("{o:?} is empty or has spaces"),
            format!("write the origin alone, {example}"),
        ));
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return Err((
            format!("`{o}` is not an origin (scheme://host[:port])"),
            format!("write it as the browser's address bar shows it, without the path, {example}"),
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err((
            format!("`{o}` has no valid scheme"),
            format!("start it with http:// or https://, {example}"),
        ));
    }
    if rest.contains('*') {
        return Err((
            format!(
                "`{o}` has a wildcard; only a lone \"*\" (any page, with an API key) is accepted"
            ),
            format!("list each origin, {example}"),
        ));
    }
    if let Some((authority, _)) = rest.split_once('/') {
        return Err((
            format!("`{o}` has a path; an origin is only scheme://host[:port]"),
            format!("write \"{scheme}://{authority}\""),
        ));
    }
    if rest.is_empty() || rest.contains(['?', '#', '@']) {
        return Err((
            format!("`{o}` is not an origin (scheme://host[:port])"),
            format!("write it like the browser sends it, {example}"),
        ));
    }
    let port = if rest.starts_with('[') {
        rest.split_once(']').map(|(_, p)| p).unwrap_or("x")
    } else {
        rest.rsplit_once(':').map(|(_, p)| p).unwrap_or("")
    };
    let port = port.strip_prefix(':').unwrap_or(port);
    if !port.is_empty() && port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err((
            format!("`{o}` has an invalid port"),
            format!("use a port from 1 to 65535, {example}"),
        ));
    }
    Ok(())
}
