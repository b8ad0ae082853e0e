//! The `baton` binary as tests and benches run it: [`BatonCmd`] builds the
//! command line, [`BatonProcess`] is the running process, killed when
//! dropped (a failing test leaves nothing behind).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};

/// The binary cargo built for these tests (for benches, the release one).
pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// `baton ARGS`, as a user would type it. Stdin is closed unless
/// [`BatonCmd::stdin`] says otherwise; stdout and stderr are std's defaults
/// (inherited by `spawn`/`status`, captured by `output`).
pub struct BatonCmd {
    cmd: Command,
}

impl BatonCmd {
    pub fn new<I, S>(args: I) -> BatonCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(BATON);
        cmd.args(args).stdin(Stdio::null());
        BatonCmd { cmd }
    }

    /// The same inside network namespace `ns` (`ip netns exec NS baton ARGS`).
    pub fn in_namespace<I, S>(ns: &str, args: I) -> BatonCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BATON])
            .args(args)
            .stdin(Stdio::null());
        BatonCmd { cmd }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> BatonCmd {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> BatonCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> BatonCmd {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> BatonCmd {
        self.cmd.env_remove(key);
        self
    }

    /// A throwaway home in `dir`: `HOME` and the XDG config, data and cache
    /// folders under it, so nothing of the user's is read or written.
    pub fn home(self, dir: &Path) -> BatonCmd {
        self.env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
    }

    /// Started with Ctrl-C ignored, as a non-interactive shell starts a
    /// background job (`cmd &`) and as CI runners often start tests: only a
    /// handler the process installs itself hears it then.
    pub fn ignoring_interrupt(mut self) -> BatonCmd {
        // SAFETY: between fork and exec, `signal` is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut self.cmd, || {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        self
    }

    pub fn stdin(mut self, s: Stdio) -> BatonCmd {
        self.cmd.stdin(s);
        self
    }

    pub fn stdout(mut self, s: Stdio) -> BatonCmd {
        self.cmd.stdout(s);
        self
    }

    pub fn stderr(mut self, s: Stdio) -> BatonCmd {
        self.cmd.stderr(s);
        self
    }

    /// Both output streams discarded.
    pub fn quiet(self) -> BatonCmd {
        self.stdout(Stdio::null()).stderr(Stdio::null())
    }

    /// Run to the end; stdout and stderr captured unless set otherwise.
    pub fn output(mut self) -> Output {
        self.cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cmd))
    }

    /// Run to the end; its exit status.
    pub fn status(mut self) -> ExitStatus {
        self.cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cmd))
    }

    /// Start it; the process is killed when the handle drops.
    pub fn spawn(mut self) -> BatonProcess {
        let child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.cmd));
        BatonProcess { child: Some(child) }
    }
}

/// A running `baton`, killed (SIGKILL) and reaped on drop if still running.
pub struct BatonProcess {
    child: Option<Child>,
}

impl BatonProcess {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process is still held")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the process is still held").id()
    }

    /// Send `signal` (`libc::SIGINT`, ...).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.id() as libc::pid_t;
        // SAFETY: signalling our own child, which we have not reaped yet.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGINT, as Ctrl-C in a terminal sends.
    pub fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    /// SIGHUP: reload the workers file.
    pub fn hang_up(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGKILL (a crash, a power cut), then reap it.
    pub fn kill(&mut self) {
        let c = self.child();
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child().wait().expect("wait for baton")
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().expect("poll baton")
    }

    /// Wait for the end; what it printed (on the streams that were piped).
    pub fn wait_with_output(mut self) -> Output {
        let child = self.child.take().expect("the process is still held");
        child.wait_with_output().expect("wait for baton")
    }

    /// Its stdin (piped with [`BatonCmd::stdin`]).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child().stdin.take().expect("stdin is piped")
    }

    /// Read its stdout (piped) line by line up to and including the first
    /// line that matches `until` (a `&str` it contains, or a predicate);
    /// the rest is read (and dropped) in the background so the process
    /// never blocks on a full pipe. Panics if stdout ends first.
    pub fn stdout_until(&mut self, until: impl LineMatch) -> Vec<String> {
        let out = self.child().stdout.take().expect("stdout is piped");
        read_until(out, until, "stdout")
    }

    /// The same on stderr.
    pub fn stderr_until(&mut self, until: impl LineMatch) -> Vec<String> {
        let err = self.child().stderr.take().expect("stderr is piped");
        read_until(err, until, "stderr")
    }

    /// What follows `needle` on the first stdout line that holds it
    /// (trimmed): `stdout_after("dashboard: ")` is the dashboard's URL.
    pub fn stdout_after(&mut self, needle: &str) -> String {
        let lines = self.stdout_until(needle);
        let last = lines.last().expect("the line with the needle");
        last.split_once(needle)
            .map(|(_, rest)| rest.trim().to_string())
            .unwrap_or_default()
    }
}

/// What a line must be: one containing a `&str`, or one a predicate accepts.
pub trait LineMatch {
    fn matches(&self, line: &str) -> bool;
}

impl LineMatch for &str {
    fn matches(&self, line: &str) -> bool {
        line.contains(self)
    }
}

impl<F: Fn(&str) -> bool> LineMatch for F {
    fn matches(&self, line: &str) -> bool {
        self(line)
    }
}

fn read_until(
    stream: impl Read + Send + 'static,
    until: impl LineMatch,
    name: &str,
) -> Vec<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_else(|e| panic!("reading baton's {name}: {e}"));
        let done = until.matches(&line);
        seen.push(line);
        if done {
            std::thread::spawn(move || for _ in lines {});
            return seen;
        }
    }
    panic!(
        "baton's {name} ended before the line it was waited for:\n{}",
        seen.join("\n")
    );
}

impl Drop for BatonProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
