//! The `host-cgroups` binary as the integration tests run it: the arguments of a
//! `run` ([`run_args`]), a `run` in the background with its stderr streamed
//! ([`RunChild`]), and `cleanup` of a sandbox's state.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

/// How long [`RunChild`] waits for a line or for the end of its stderr. Generous: a
/// loaded or emulated machine is slow, and slowness must not fail a test.
pub const WAIT: Duration = Duration::from_secs(120);

/// A path as a command-line argument (the tests' temp paths are UTF-8).
fn arg(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    p.to_str()
        .unwrap_or_else(|| panic!("not UTF-8: {}", p.display()))
        .to_string()
}

/// The arguments of `host-cgroups run` (the command included), built up one option
/// at a time; the options come out in the order they were added.
#[derive(Clone, Debug)]
pub struct RunArgs(Vec<String>);

/// `run --cgroups-path <path> --sandbox-id <id> --state-dir <state_dir>`.
pub fn run_args(path: &str, id: &str, state_dir: impl AsRef<Path>) -> RunArgs {
    RunArgs(vec!["run".to_string()])
        .opt("--cgroups-path", path)
        .opt("--sandbox-id", id)
        .opt("--state-dir", arg(state_dir))
}

impl RunArgs {
    fn opt(mut self, name: &str, value: impl ToString) -> Self {
        self.0.push(name.to_string());
        self.0.push(value.to_string());
        self
    }

    /// `--duration <seconds>` (as written, e.g. "0.2").
    pub fn duration(self, seconds: &str) -> Self {
        self.opt("--duration", seconds)
    }

    /// `--vcpus <n>`.
    pub fn vcpus(self, n: impl ToString) -> Self {
        self.opt("--vcpus", n)
    }

    /// `--hotplug <n>`.
    pub fn hotplug(self, n: impl ToString) -> Self {
        self.opt("--hotplug", n)
    }

    /// `--unplug-to <n>`.
    pub fn unplug_to(self, n: impl ToString) -> Self {
        self.opt("--unplug-to", n)
    }

    /// `--backend <name>`.
    pub fn backend(self, name: &str) -> Self {
        self.opt("--backend", name)
    }

    /// `--config <file>`.
    pub fn config(self, file: impl AsRef<Path>) -> Self {
        self.opt("--config", arg(file))
    }

    /// `--resources <json>`.
    pub fn resources(self, json: &str) -> Self {
        self.opt("--resources", json)
    }

    /// `--container-resources <json>`.
    pub fn container_resources(self, json: &str) -> Self {
        self.opt("--container-resources", json)
    }

    /// `--json`.
    pub fn json(self) -> Self {
        self.extra(&["--json"])
    }

    /// `--keep`.
    pub fn keep(self) -> Self {
        self.extra(&["--keep"])
    }

    /// Any other arguments, as given.
    pub fn extra(mut self, args: &[&str]) -> Self {
        self.0.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The arguments, `run` first.
    pub fn to_vec(&self) -> Vec<String> {
        self.0.clone()
    }

    /// A command of the binary with these arguments (to add environment, or more
    /// arguments, before running it).
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.args(&self.0);
        c
    }

    /// Runs it to the end.
    pub fn output(&self) -> Output {
        self.command().output().expect("run host-cgroups")
    }

    /// Starts it in the background.
    pub fn spawn(&self) -> RunChild {
        RunChild::spawn(&self.0)
    }
}

/// `host-cgroups cleanup --sandbox-id <id> --state-dir <state_dir>`.
pub fn cleanup_command(id: &str, state_dir: impl AsRef<Path>) -> Command {
    let mut c = Command::new(BIN);
    c.args(["cleanup", "--sandbox-id", id, "--state-dir"])
        .arg(state_dir.as_ref());
    c
}

/// [`cleanup_command`], run to the end.
pub fn cleanup(id: &str, state_dir: impl AsRef<Path>) -> Output {
    cleanup_command(id, state_dir)
        .output()
        .expect("run host-cgroups cleanup")
}

/// The binary started with `args` (the command first, e.g. `run`), its stdout piped
/// (read by [`RunChild::finish`]) and its stderr lines streamed to the test; killed
/// (by its pid) and reaped on drop.
pub struct RunChild {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl RunChild {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn host-cgroups");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        RunChild {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits for a stderr line containing `needle` (up to [`WAIT`]; panics with the
    /// lines seen so far when none comes or the stream ends).
    pub fn wait_for(&mut self, needle: &str) {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        panic!("no line with {needle:?}; stderr so far: {:#?}", self.seen);
    }

    /// SIGTERM (the run cleans up) and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("child");
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().expect("wait")
    }

    /// The exit status when it has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the exit; returns the status, stdout parsed as JSON (Null if it is
    /// not JSON) and every stderr line.
    pub fn finish(mut self) -> (ExitStatus, Value, Vec<String>) {
        let mut child = self.child.take().expect("child");
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let status = child.wait().expect("wait");
        // The reader thread sends the last lines after the exit: wait for its end (EOF).
        let start = Instant::now();
        while start.elapsed() < WAIT {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let v = serde_json::from_str(&out).unwrap_or(Value::Null);
        (status, v, std::mem::take(&mut self.seen))
    }
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asserts that `out` is of a command that succeeded (else panics with its stderr) and
/// returns its stdout parsed as JSON.
pub fn success_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}
