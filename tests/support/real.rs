//! Real LLM servers for the integration tests: llama.cpp's C++
//! `llama-server` and llama-cpp-python's server, started on loopback,
//! waited for until they have loaded the model, killed on drop; and the
//! Python `openai` client run against an endpoint.
//!
//! The binary and the model come from `BATON_LLAMA_SERVER` and
//! `BATON_LLAMA_MODEL`, llama-cpp-python's interpreter from
//! `BATON_LLAMA_CPP_PYTHON`, else from `~/.cache/baton-real` (where
//! `.ci/run` builds them). Missing pieces skip the tests (they say
//! SKIPPED and are counted, see `support::skip`), except under `CI=true`,
//! where they fail.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The alias every server answers to (`--alias`), and the workers' model.
pub const MODEL: &str = "smollm2-135m";

/// How long a server may take to load the model before the test fails.
const HEALTH_LIMIT: Duration = Duration::from_secs(90);

/// Upper bound for one run of the Python client, unless the load says otherwise.
const CLIENT_LIMIT: Duration = Duration::from_secs(180);

/// Everything the real-server tests need on this machine.
#[derive(Debug, Clone)]
pub struct Kit {
    pub server: PathBuf,
    pub model: PathBuf,
    /// A Python with the `openai` client.
    pub python: String,
    /// A Python with `llama_cpp.server` (llama-cpp-python), when found.
    pub llama_cpp_python: Result<PathBuf, String>,
}

/// Which real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// llama.cpp's C++ `llama-server`: two slots, continuous batching, an
    /// HTTP thread pool.
    Cpp,
    /// llama-cpp-python's `python -m llama_cpp.server`: one request at a
    /// time behind a lock (its model list too), a new request ends the
    /// running stream, the response head at once and then silence until
    /// the first token.
    Python,
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/baton-real")
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or(default)
}

/// Find the binary, the model and a Python with `openai`; `Err` says what
/// is missing and how to get it.
pub fn locate() -> Result<Kit, String> {
    let server = from_env_or(
        "BATON_LLAMA_SERVER",
        cache_dir().join("build/bin/llama-server"),
    );
    let model = from_env_or(
        "BATON_LLAMA_MODEL",
        cache_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    let python = std::env::var("BATON_PYTHON").unwrap_or_else(|_| "python3".into());
    let how = "to get it, run `.ci/run` once (it builds llama-server and fetches the model \
               into ~/.cache/baton-real) or set BATON_LLAMA_SERVER and BATON_LLAMA_MODEL";
    if !server.is_file() {
        return Err(format!("no llama-server at {}; {how}", server.display()));
    }
    if !model.is_file() {
        return Err(format!("no model at {}; {how}", model.display()));
    }
    let openai = Command::new(&python)
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !openai.is_ok_and(|s| s.success()) {
        return Err(format!(
            "`{python} -c 'import openai'` failed (pip install openai, or set BATON_PYTHON)"
        ));
    }
    Ok(Kit {
        server,
        model,
        python,
        llama_cpp_python: locate_llama_cpp_python(),
    })
}

/// The interpreter of the venv `.ci/run` installs llama-cpp-python into.
fn locate_llama_cpp_python() -> Result<PathBuf, String> {
    let python = from_env_or(
        "BATON_LLAMA_CPP_PYTHON",
        cache_dir().join("venv-lcp/bin/python"),
    );
    let ok = Command::new(&python)
        .args(["-c", "import llama_cpp.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "no llama-cpp-python at {} (`import llama_cpp.server` failed); to get it, run              `.ci/run` once (it installs llama-cpp-python[server] into ~/.cache/baton-real/venv-lcp)              or set BATON_LLAMA_CPP_PYTHON to a Python that has it",
            python.display()
        ))
    }
}

/// The kit, or `None` after saying SKIPPED (see [`super::skip`]); under
/// `CI=true` a missing kit is a failure, so CI can never go green by skipping.
pub fn kit_or_skip() -> Option<Kit> {
    kit_for_or_skip(Flavor::Cpp)
}

/// The kit with what `flavor` needs, or `None` after saying SKIPPED (a
/// failure under `CI=true`).
pub fn kit_for_or_skip(flavor: Flavor) -> Option<Kit> {
    let kit = locate().and_then(|k| match (&k.llama_cpp_python, flavor) {
        (Err(why), Flavor::Python) => Err(why.clone()),
        _ => Ok(k),
    });
    match kit {
        Ok(k) => Some(k),
        Err(why) => {
            super::skip::skip_test(format!("real servers: {why}"));
            None
        }
    }
}

/// Kill the child if the test process dies without unwinding (SIGKILL,
/// abort), so no server outlives it. Linux only; elsewhere Drop suffices.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A free TCP port on `ip`, found by binding it (llama-server has no
/// "port 0"). Another process could take it before the server binds; the
/// caller retries then.
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a probe socket on {ip}: {e}"))
}

/// One running server. Dropping it kills the process.
pub struct LlamaServer {
    child: Child,
    pub flavor: Flavor,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    /// `http://ip:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ip:port/v1`, the base URL for OpenAI clients.
    pub fn v1(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `bytes` of the server's stderr and stdout.
    pub fn log_tail(&self, bytes: u64) -> String {
        tail(&self.log, bytes)
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A Baton worker entry for this server, as a user would write it:
    /// llama-server as `llama_cpp` with its two slots, llama-cpp-python as
    /// a generic OpenAI server with one.
    pub fn worker(&self, id: &str) -> baton::config::Worker {
        let (kind, slots) = match self.flavor {
            Flavor::Cpp => (baton::studio::StudioKind::LlamaCpp, 2),
            Flavor::Python => (baton::studio::StudioKind::Openai, 1),
        };
        baton::config::Worker {
            id: id.to_string(),
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            kind,
            model: MODEL.to_string(),
            max_concurrent_requests: baton::config::Slots::Max(slots),
            enabled: true,
            weight: 1.0,
            api_key: None,
            members: Vec::new(),
        }
    }

    /// Spawn one server on `ip`. Must run on the test's own thread (not in
    /// a spawned task): the parent-death signal follows the spawning thread.
    fn spawn(kit: &Kit, flavor: Flavor, ip: Ipv4Addr) -> LlamaServer {
        let port = free_port(ip);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let out = File::create(&log).expect("log file");
        let (host, port_s) = (ip.to_string(), port.to_string());
        let mut cmd = match flavor {
            Flavor::Cpp => {
                let mut c = Command::new(&kit.server);
                c.arg("-m")
                    .arg(&kit.model)
                    .args(["--host", &host, "--port", &port_s])
                    .args(["-np", "2", "-c", "4096", "-t", "1", "--alias", MODEL]);
                c
            }
            Flavor::Python => {
                let python = kit.llama_cpp_python.as_ref().expect("checked by the kit");
                let mut c = Command::new(python);
                c.args(["-m", "llama_cpp.server", "--model"])
                    .arg(&kit.model)
                    .args(["--model_alias", MODEL, "--host", &host, "--port", &port_s])
                    .args(["--n_ctx", "2048", "--n_threads", "1"]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", kit.server.display()));
        LlamaServer {
            child,
            flavor,
            addr: SocketAddr::from((ip, port)),
            log,
            _dir: dir,
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        // SIGKILL: nothing to save, and it cannot be ignored or delayed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The i-th server's address: 127.0.0.25, .26, ... for llama-server,
/// 127.0.0.35, .36, ... for llama-cpp-python (one address each, so logs
/// and stats tell them apart at a glance).
pub fn server_ip(flavor: Flavor, i: usize) -> Ipv4Addr {
    let base = match flavor {
        Flavor::Cpp => 25,
        Flavor::Python => 35,
    };
    Ipv4Addr::new(127, 0, 0, base + u8::try_from(i).expect("few servers"))
}

/// Start `n` llama-servers; see [`start_servers_of`].
pub async fn start_servers(kit: &Kit, n: usize) -> Vec<LlamaServer> {
    start_servers_of(kit, Flavor::Cpp, n).await
}

/// Start `n` servers and wait until each answers (llama-server's
/// `/health`; llama-cpp-python has none, so its model list). Panics (after
/// killing them all) with the log tail of one that exits or does not
/// become ready in time.
pub async fn start_servers_of(kit: &Kit, flavor: Flavor, n: usize) -> Vec<LlamaServer> {
    let mut servers: Vec<LlamaServer> = (0..n)
        .map(|i| LlamaServer::spawn(kit, flavor, server_ip(flavor, i)))
        .collect();
    let ready_path = match flavor {
        Flavor::Cpp => "/health",
        Flavor::Python => "/v1/models",
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .expect("client");
    let deadline = Instant::now() + HEALTH_LIMIT;
    let mut ready = vec![false; n];
    let mut port_retries = 0;
    while ready.iter().any(|r| !r) {
        for i in 0..n {
            if ready[i] {
                continue;
            }
            if !servers[i].alive() {
                let log = servers[i].log_tail(4000);
                // Someone took the probed port in between: try another once or twice.
                if port_retries < 3 && log.contains("bind") {
                    port_retries += 1;
                    servers[i] = LlamaServer::spawn(kit, flavor, server_ip(flavor, i));
                    continue;
                }
                let status = servers[i].child.try_wait().ok().flatten();
                drop(servers);
                panic!(
                    "{flavor:?} server #{i} exited before it was ready ({status:?}); its output ends with:\n{log}"
                );
            }
            let url = format!("{}{ready_path}", servers[i].base_url());
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                ready[i] = true;
            }
        }
        if Instant::now() > deadline {
            let which = ready.iter().position(|r| !r).unwrap_or(0);
            let log = servers[which].log_tail(4000);
            let addr = servers[which].addr;
            drop(servers);
            panic!(
                "{flavor:?} server #{which} on {addr} not ready within {HEALTH_LIMIT:?}; its output ends with:\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    servers
}

/// Production-like balancer settings (the defaults) on a free loopback port.
pub fn production_settings() -> baton::config::BalancerSettings {
    baton::config::BalancerSettings {
        listen: Some("127.0.0.1:0".parse().expect("address")),
        ..Default::default()
    }
}

/// Baton in front of `servers` (workers `llama0`, `llama1`, ...), every
/// worker ready: the lab's balancer in this process.
pub async fn balancer_over(servers: &[LlamaServer]) -> baton::balancer::Balancer {
    let config = baton::config::Config {
        workers: servers
            .iter()
            .enumerate()
            .map(|(i, s)| s.worker(&format!("llama{i}")))
            .collect(),
        balancer: production_settings(),
        ..Default::default()
    };
    super::lab::in_process(&config, None, Duration::from_secs(30)).await
}

/// What the client is asked to do.
#[derive(Debug, Clone)]
pub struct Load {
    pub requests: usize,
    pub threads: usize,
    pub max_tokens: u32,
    /// Extra flags: `--plain`, `--mixed`, `--include-usage`.
    pub flags: Vec<&'static str>,
    /// Words of context before each question (`--context-words`).
    pub context_words: usize,
    /// How long the whole run may take.
    pub limit: Duration,
}

impl Load {
    pub fn streamed(requests: usize, threads: usize) -> Load {
        Load {
            requests,
            threads,
            max_tokens: 56,
            flags: Vec::new(),
            context_words: 0,
            limit: CLIENT_LIMIT,
        }
    }

    /// Allow the whole run `limit` (long prompts on one core take a while).
    pub fn within(mut self, limit: Duration) -> Load {
        self.limit = limit;
        self
    }

    /// A long prompt: `words` of context before each question.
    pub fn context(mut self, words: usize) -> Load {
        self.context_words = words;
        self
    }

    pub fn tokens(mut self, max_tokens: u32) -> Load {
        self.max_tokens = max_tokens;
        self
    }

    pub fn with(mut self, flag: &'static str) -> Load {
        self.flags.push(flag);
        self
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct Outcome {
    pub index: usize,
    pub stream: bool,
    pub ok: bool,
    pub finish_reason: Option<String>,
    pub content_chunks: u64,
    pub text_len: u64,
    pub usage: Option<serde_json::Value>,
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Totals {
    pub requests: usize,
    pub wall_seconds: f64,
    pub completed: usize,
    pub failed: usize,
    pub without_finish_reason: usize,
    pub with_usage: usize,
    pub content_chunks: u64,
}

/// The client's report (`tests/clients/openai_stream.py`).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub base_url: String,
    pub openai_version: String,
    pub requests: Vec<Outcome>,
    pub totals: Totals,
}

impl Report {
    /// One line: the totals.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        format!(
            "{} requests to {}: {} complete, {} failed, {} without finish_reason, {} with usage, wall {:.2} s",
            t.requests,
            self.base_url,
            t.completed,
            t.failed,
            t.without_finish_reason,
            t.with_usage,
            t.wall_seconds
        )
    }

    /// Each distinct error with its count, most frequent first.
    pub fn errors(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for e in self.requests.iter().filter_map(|r| r.error.as_ref()) {
            match out.iter_mut().find(|(m, _)| m == e) {
                Some((_, n)) => *n += 1,
                None => out.push((e.clone(), 1)),
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.1));
        out
    }

    /// Summary plus the distinct errors, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = self.summary();
        for (e, n) in self.errors() {
            s.push_str(&format!("\n  {n} x {e}"));
        }
        for r in self
            .requests
            .iter()
            .filter(|r| r.error.is_none() && r.finish_reason.is_none())
        {
            s.push_str(&format!(
                "\n  request {} ended without finish_reason after {} chunks",
                r.index, r.content_chunks
            ));
        }
        s
    }
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_stream.py")
}

/// Run the Python client against `base_url` (ending in `/v1`) and parse its report.
pub async fn run_client(kit: &Kit, base_url: &str, load: &Load) -> Report {
    let mut cmd = tokio::process::Command::new(&kit.python);
    cmd.arg(client_script())
        .args(["--base-url", base_url, "--model", MODEL])
        .args(["--requests", &load.requests.to_string()])
        .args(["--threads", &load.threads.to_string()])
        .args(["--max-tokens", &load.max_tokens.to_string()])
        .args(["--context-words", &load.context_words.to_string()])
        .args(&load.flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The client must not outlive the test either.
    die_with_parent(cmd.as_std_mut());
    let child = cmd.spawn().expect("start the Python client");
    let out = match tokio::time::timeout(load.limit, child.wait_with_output()).await {
        Ok(r) => r.expect("Python client output"),
        // Dropping the future drops the child: kill_on_drop ends it.
        Err(_) => panic!(
            "the Python client ran longer than {:?} against {base_url}",
            load.limit
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("the Python client's report is not the expected JSON ({e}):\n{stdout}\n{stderr}")
    })
}
