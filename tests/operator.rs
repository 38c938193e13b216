//! The operator's commands as a new user meets them (issue 14): a sandbox id that
//! has state is refused, the `--keep` hint works as printed, `cleanup` reports
//! exactly what it found and did, `check` says why a host cannot run sandboxes,
//! `inspect --sandbox-id`, machine-readable logs and `--json` shapes.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cli::{run_args, RunArgs, BIN};
use common::*;
use host_cgroups::host::CgroupVersion;
use serde_json::Value;

fn hc(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run host-cgroups")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&ok(out).stdout).expect("JSON on stdout")
}

/// A state directory, a cgroup prefix (and its overhead twin) for one test; all removed on drop.
struct Fx {
    prefix: String,
    state: PathBuf,
    _guard: CgroupGuard,
    _overhead: CgroupGuard,
}

impl Fx {
    fn new(tag: &str) -> Self {
        let prefix = unique(tag);
        let state = std::env::temp_dir().join(unique("opstate"));
        std::fs::create_dir_all(&state).unwrap();
        Fx {
            _guard: CgroupGuard::new(&prefix),
            _overhead: CgroupGuard::new(&format!("kata_overhead/{prefix}"))
                .and_parent_if_empty("kata_overhead"),
            prefix,
            state,
        }
    }

    fn state_dir(&self) -> &str {
        self.state.to_str().unwrap()
    }

    fn state_file(&self, id: &str) -> PathBuf {
        self.state.join(format!("{id}.json"))
    }

    /// Every cgroup below the prefix (and below `kata_overhead/<prefix>`), relative to
    /// its hierarchy root, over all hierarchies.
    fn walk(&self) -> BTreeSet<String> {
        let layout = layout();
        let mut out = BTreeSet::new();
        for m in mounts(&layout) {
            for top in [
                self.prefix.clone(),
                format!("kata_overhead/{}", self.prefix),
            ] {
                let d = m.join(&top);
                if d.is_dir() {
                    walk_rel(&m, &d, &mut out);
                }
            }
        }
        out
    }

    /// `run` of sandbox `id` at `path`, with this test's state directory.
    fn run(&self, id: &str, path: &str) -> RunArgs {
        run_args(path, id, self.state_dir())
    }

    /// `run --keep` of sandbox `id` at `path`, ending at once.
    fn run_keep(&self, id: &str, path: &str) -> Output {
        self.run(id, path).keep().duration("0").output()
    }

    /// `<command> --sandbox-id <id> --state-dir <this test's>` and `extra`, run to the end.
    fn by_id(&self, command: &str, id: &str, extra: &[&str]) -> Output {
        let mut args = vec![command, "--sandbox-id", id, "--state-dir", self.state_dir()];
        args.extend_from_slice(extra);
        hc(&args)
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn walk_rel(mount: &Path, d: &Path, out: &mut BTreeSet<String>) {
    out.insert(d.strip_prefix(mount).unwrap().display().to_string());
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk_rel(mount, &e.path(), out);
            }
        }
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The names in `kept` entries (`name: reason`).
fn kept_names(v: &Value) -> BTreeSet<String> {
    strings(v)
        .into_iter()
        .map(|k| k.split(':').next().unwrap().to_string())
        .collect()
}

#[test]
fn same_sandbox_id_is_refused_and_the_first_record_stays() {
    let fx = Fx::new("sameid");
    let id = "sb1";
    let first = format!("{}/a/b", fx.prefix);
    ok(&fx.run_keep(id, &first));
    let state_before = std::fs::read(fx.state_file(id)).expect("first state file");
    let cgroups_before = fx.walk();
    assert!(cgroups_before.contains(&first), "{cgroups_before:?}");

    let second = format!("{}/x/y", fx.prefix);
    let out = fx.run_keep(id, &second);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    let file = fx.state_file(id);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.contains(&format!(
            "host-cgroups cleanup --sandbox-id {id} --state-dir {}",
            fx.state_dir()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), state_before);
    assert_eq!(fx.walk(), cgroups_before, "the refused run changed cgroups");

    ok(&fx.by_id("cleanup", id, &[]));
    assert!(fx.walk().is_empty(), "left: {:?}", fx.walk());
    assert!(!file.exists());
}

#[test]
fn keep_hint_works_as_printed() {
    let fx = Fx::new("hint");
    let out = fx.run_keep("sb1", &format!("{}/p/sb", fx.prefix));
    let stdout = text(&ok(&out).stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("remove with"))
        .unwrap_or_else(|| panic!("no hint in {stdout}"));
    let cmd = line
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no quoted command in {line}"));
    assert!(cmd.starts_with("host-cgroups cleanup "), "{cmd}");
    assert!(!fx.walk().is_empty());
    // As printed, through a shell, with the binary found on PATH.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir("/")
        .env("PATH", path)
        .output()
        .unwrap();
    ok(&out);
    assert!(fx.walk().is_empty(), "left: {:?}", fx.walk());
    assert!(!fx.state_file("sb1").exists());
}

#[test]
fn cleanup_from_state_lists_exactly_what_existed() {
    let fx = Fx::new("cleanst");
    let path = format!("{}/a/b", fx.prefix);
    ok(&fx.run_keep("sb1", &path));
    let before = fx.walk();
    assert!(before.contains(&path) && before.contains(&fx.prefix));
    let v = json(&fx.by_id("cleanup", "sb1", &["--json"]));
    let after = fx.walk();
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(strings(&v["removed"]), gone, "{v}");
    assert_eq!(
        gone,
        BTreeSet::from([fx.prefix.clone(), format!("{}/a", fx.prefix), path.clone()])
    );
    assert!(after.is_empty(), "{after:?}");
    assert!(strings(&v["kept"]).is_empty(), "{v}");
    assert!(!fx.state_file("sb1").exists());
}

#[test]
fn cleanup_keeps_a_parent_that_holds_another_cgroup() {
    let fx = Fx::new("cleankept");
    let path = format!("{}/a/b", fx.prefix);
    ok(&fx.run_keep("sb1", &path));
    // A sibling the run did not make, in one hierarchy only.
    let layout = layout();
    let m = mounts(&layout)[0].clone();
    let sibling = format!("{}/a/other", fx.prefix);
    std::fs::create_dir(m.join(&sibling)).unwrap();
    let before = fx.walk();
    let v = json(&fx.by_id("cleanup", "sb1", &["--json"]));
    let after = fx.walk();
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(strings(&v["removed"]), gone, "{v}");
    assert!(gone.contains(&path), "{gone:?}");
    assert_eq!(
        after,
        BTreeSet::from([fx.prefix.clone(), format!("{}/a", fx.prefix), sibling])
    );
    // What the run created and still stands is reported kept, with a reason.
    assert_eq!(
        kept_names(&v["kept"]),
        BTreeSet::from([fx.prefix.clone(), format!("{}/a", fx.prefix)]),
        "{v}"
    );
}

#[test]
fn cleanup_by_path_uses_the_state_file_when_there_is_one() {
    let fx = Fx::new("cleanpst");
    let path = format!("{}/a/b", fx.prefix);
    ok(&fx.run_keep("sb1", &path));
    let before = fx.walk();
    let v = json(&fx.by_id("cleanup", "sb1", &["--cgroups-path", &path, "--json"]));
    assert!(
        v["source"]
            .as_str()
            .unwrap()
            .contains(&fx.state_file("sb1").display().to_string()),
        "{v}"
    );
    let after = fx.walk();
    assert!(after.is_empty(), "parents left: {after:?}");
    assert_eq!(strings(&v["removed"]), before, "{v}");
    assert!(!fx.state_file("sb1").exists());
}

#[test]
fn cleanup_by_path_without_state_reports_absent_and_kept_truthfully() {
    let fx = Fx::new("cleanpath");
    let path = format!("{}/a/b", fx.prefix);
    // Nothing exists: everything absent, nothing removed or kept.
    let v = json(&fx.by_id("cleanup", "sb1", &["--cgroups-path", &path, "--json"]));
    assert!(strings(&v["removed"]).is_empty(), "{v}");
    assert!(strings(&v["kept"]).is_empty(), "{v}");
    assert_eq!(
        strings(&v["absent"]),
        // The overhead cgroup as named today (after the sandbox id) and as older runs
        // named it (after the path).
        BTreeSet::from([
            path.clone(),
            "kata_overhead/sb1".to_string(),
            format!("kata_overhead/{path}")
        ]),
        "{v}"
    );
    // A kept run whose state file is lost: the leaf goes, and so do the parents the run
    // made (the driver marks the parents it makes, with their inode, so the last sandbox
    // out removes them); the report lists every cgroup that is gone.
    ok(&fx.run_keep("sb1", &path));
    std::fs::remove_file(fx.state_file("sb1")).unwrap();
    let before = fx.walk();
    let v = json(&fx.by_id("cleanup", "sb1", &["--cgroups-path", &path, "--json"]));
    let after = fx.walk();
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(strings(&v["removed"]), gone, "{v}");
    assert!(gone.contains(&path), "{gone:?}");
    assert_eq!(kept_names(&v["kept"]), after, "{v}");
    assert_eq!(
        strings(&v["absent"]),
        BTreeSet::from([
            "kata_overhead/sb1".to_string(),
            format!("kata_overhead/{path}")
        ])
    );
}

#[test]
fn cleanup_of_a_live_sandbox_is_refused() {
    let fx = Fx::new("cleanlive");
    let path = format!("{}/sb", fx.prefix);
    let mut run = fx.run("sb1", &path).duration("600").spawn();
    run.wait_for("running");
    let pid = run.pid();
    let before = fx.walk();
    for extra in [&[][..], &["--cgroups-path", path.as_str()][..]] {
        let out = fx.by_id("cleanup", "sb1", extra);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!("sandbox sb1 is still running (pid {pid})")),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(fx.walk(), before);
        assert!(fx.state_file("sb1").exists());
    }
    assert!(run.stop().success());
    assert!(fx.walk().is_empty(), "{:?}", fx.walk());
}

/// Runs the binary as user and group 65534 (nobody), with no supplementary groups.
/// `None` when util-linux's `setpriv` is not installed.
fn as_nobody(args: &[&str]) -> Option<Output> {
    match Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(args)
        .current_dir("/")
        .output()
    {
        Ok(o) => Some(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("setpriv: {e}"),
    }
}

#[test]
fn check_as_non_root_fails_with_the_real_reason() {
    // The binary must be reachable by nobody (target/ under a private directory is not).
    let reachable = Path::new(BIN).ancestors().skip(1).all(|d| {
        std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if !reachable {
        return common::skip::skip(
            "check_as_non_root_fails_with_the_real_reason",
            "the test binary's directories are not searchable by other users",
        );
    }
    // setpriv must exist and take util-linux's options, and nobody must reach the binary.
    let usable = as_nobody(&["--version"]).is_some_and(|o| o.status.success());
    if !usable {
        return common::skip::skip(
            "check_as_non_root_fails_with_the_real_reason",
            "cannot run the binary as nobody with util-linux setpriv here",
        );
    }
    let out = as_nobody(&["check"]).unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("not running as root"), "{stdout}");
    assert!(
        stdout.contains("verdict: this host cannot run sandboxes (failed: root"),
        "{stdout}"
    );
    assert!(stderr.contains("not running as root"), "{stderr}");
    // KVM: the OS error of the step that failed, not a guess.
    if Path::new("/dev/kvm").exists() {
        let kvm = stdout
            .lines()
            .find(|l| l.contains(" kvm "))
            .unwrap_or_else(|| panic!("no kvm item: {stdout}"));
        let mode = std::fs::metadata("/dev/kvm").unwrap().permissions().mode();
        if mode & 0o006 != 0o006 {
            assert!(kvm.starts_with("FAIL"), "{kvm}");
            assert!(
                kvm.contains("open /dev/kvm: Permission denied (os error 13)"),
                "{kvm}"
            );
        }
    }
    let out = as_nobody(&["check", "--json"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["verdict"], "fail", "{v}");
    assert!(strings(&v["failed"]).contains("root"), "{v}");
    let root = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "root")
        .unwrap();
    assert_eq!(root["verdict"], "fail");
    for i in v["items"].as_array().unwrap() {
        assert!(
            ["ok", "warn", "fail"].contains(&i["verdict"].as_str().unwrap()),
            "{i}"
        );
        assert!(i["detail"].is_string(), "{i}");
    }
}

#[test]
fn check_as_root_agrees_with_its_items() {
    let out = hc(&["check", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let failed: BTreeSet<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["verdict"] == "fail")
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(strings(&v["failed"]), failed);
    assert_eq!(out.status.success(), failed.is_empty(), "{v}");
    assert!(!failed.contains("root"), "{v}");
}

/// Directories named `name` directly under any hierarchy root.
fn at_roots(name: &str) -> Vec<PathBuf> {
    mounts(&layout())
        .into_iter()
        .map(|m| m.join(name))
        .filter(|d| d.exists())
        .collect()
}

#[test]
fn an_option_is_never_taken_as_the_cgroups_path() {
    let fx = Fx::new("optpath");
    assert!(
        at_roots("--json").is_empty(),
        "a --json cgroup exists already"
    );
    let cases: Vec<Vec<&str>> = vec![
        vec!["resolve", "--cgroups-path", "--json", "--sandbox-id", "sb1"],
        vec!["resolve", "--sandbox-id", "sb1", "--cgroups-path", "--json"],
        vec![
            "run",
            "--cgroups-path",
            "--json",
            "--sandbox-id",
            "sb1",
            "--duration",
            "0",
            "--state-dir",
            fx.state_dir(),
        ],
        vec![
            "cleanup",
            "--sandbox-id",
            "sb1",
            "--state-dir",
            fx.state_dir(),
            "--cgroups-path",
            "--json",
        ],
    ];
    for args in cases {
        let out = hc(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("\"--json\""), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            at_roots("--json").is_empty(),
            "{args:?} made a --json cgroup"
        );
        assert!(!fx.state_file("sb1").exists(), "{args:?}");
    }
    // systemd's root slice form keeps its single leading dash.
    let out = hc(&[
        "resolve",
        "--sandbox-id",
        "sb1",
        "--cgroups-path",
        "-.slice:kata:sb1",
        "--cgroup-version",
        "2",
        "--json",
    ]);
    ok(&out);
}

#[test]
fn vcpu_counts_are_checked_both_ways_and_backends_are_listed() {
    let fx = Fx::new("vcpuargs");
    for (args, needle) in [
        (vec!["--vcpus", "2", "--unplug-to", "3"], "--unplug-to 3"),
        (
            vec!["--vcpus", "1", "--hotplug", "2", "--unplug-to", "3"],
            "--unplug-to 3",
        ),
        (vec!["--vcpus", "2", "--hotplug", "1"], "--hotplug 1"),
        (vec!["--backend", "quantum"], "quantum"),
    ] {
        let path = format!("{}/sb", fx.prefix);
        let out = fx.run("sb1", &path).duration("0").extra(&args).output();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(fx.walk().is_empty(), "{args:?} created cgroups");
        assert!(!fx.state_file("sb1").exists());
    }
    let help = text(&ok(&hc(&["run", "--help"])).stdout);
    for b in ["auto", "kvm", "thread"] {
        assert!(help.contains(&format!("- {b}:")), "{help}");
    }
}

#[test]
fn the_readme_hotplug_example_works() {
    let cpus = host_cgroups::host::online_cpus().unwrap().len();
    if cpus < 2 {
        return common::skip::skip(
            "the_readme_hotplug_example_works",
            "the example is for hosts with 2 or more CPUs",
        );
    }
    // Embedded at build time: the test hosts get only tests/, not the README.
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("--hotplug") && l.starts_with("cargo run"))
        .expect("a hotplug example in README.md");
    let cmd = line.split('#').next().unwrap();
    let args: Vec<&str> = cmd
        .split_whitespace()
        .skip_while(|w| *w != "--")
        .skip(1)
        .collect();
    assert_eq!(args.first(), Some(&"run"), "{line}");
    // As written, plus a cgroups path and state directory of this test's own.
    let fx = Fx::new("readme");
    let path = format!("{}/sb", fx.prefix);
    let mut all = args.clone();
    all.extend(["--cgroups-path", &path, "--state-dir", fx.state_dir()]);
    let out = hc(&all);
    let err = text(&ok(&out).stderr);
    assert!(err.contains("hotplugged to 2 vCPUs"), "{err}");
    assert!(err.contains("unplugged to 1 vCPUs"), "{err}");
    assert!(fx.walk().is_empty(), "{:?}", fx.walk());
}

/// `run` of a throwaway sandbox with extra environment and arguments before `run`.
fn run_with(fx: &Fx, env: &[(&str, &str)], global: &[&str], extra: &[&str]) -> Output {
    let path = format!("{}/sb", fx.prefix);
    let mut c = Command::new(BIN);
    c.args(global)
        .args(fx.run("sb1", &path).to_vec())
        .args(extra)
        .env_remove("HOST_CGROUPS_LOG")
        .env_remove("HOST_CGROUPS_FAILPOINT")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run host-cgroups")
}

fn assert_json_lines(stderr: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for l in stderr.lines() {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l:?}"));
        assert!(v.is_object(), "{l}");
        for k in ["timestamp", "level", "target"] {
            assert!(v[k].is_string(), "no {k}: {l}");
        }
        assert!(v["fields"]["message"].is_string(), "no message: {l}");
        out.push(v);
    }
    out
}

#[test]
fn log_format_json_gives_one_object_per_line() {
    let fx = Fx::new("logjson");
    let out = run_with(
        &fx,
        &[("HOST_CGROUPS_LOG", "debug")],
        &["--log-format", "json"],
        &["--duration", "1.5"],
    );
    ok(&out);
    let lines = assert_json_lines(&text(&out.stderr));
    let levels: BTreeSet<&str> = lines.iter().map(|v| v["level"].as_str().unwrap()).collect();
    assert!(levels.contains("DEBUG"), "{levels:?}");
    // The program's own lines are objects too: the running line and the per-vCPU use.
    assert!(
        lines.iter().any(|v| v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("sb1 running")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"].as_str().unwrap().contains("vcpu0:")),
        "{lines:?}"
    );
    // A malformed command line and a malformed filter: still one JSON object a line.
    for (env, args) in [
        (
            None,
            vec!["--log-format", "json", "run", "--backend", "quantum"],
        ),
        (Some("=["), vec!["--log-format", "json", "check"]),
    ] {
        let mut c = Command::new(BIN);
        c.args(&args).env_remove("HOST_CGROUPS_LOG");
        if let Some(f) = env {
            c.env("HOST_CGROUPS_LOG", f);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let lines = assert_json_lines(&text(&out.stderr));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["fields"]["exit_code"], 2);
    }
    // Not a terminal: no colour in either format.
    assert!(!text(&out.stderr).contains('\u{1b}'));
    let out = run_with(
        &fx,
        &[("HOST_CGROUPS_LOG", "debug")],
        &[],
        &["--duration", "0"],
    );
    ok(&out);
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "{}",
        text(&out.stderr)
    );
    assert!(fx.walk().is_empty());
}

#[test]
fn an_error_is_printed_once() {
    let fx = Fx::new("erronce");
    // A set-up step fails (an injected error): the run rolls back and says why, once.
    let env = [("HOST_CGROUPS_FAILPOINT", "add-proc=error")];
    let out = run_with(&fx, &env, &[], &["--duration", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.matches("failpoint add-proc").count(), 1, "{err}");
    assert!(fx.walk().is_empty());

    let out = run_with(
        &fx,
        &env,
        &["--log-format", "json"],
        &["--duration", "0", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let lines = assert_json_lines(&text(&out.stderr));
    let errors: Vec<&Value> = lines.iter().filter(|v| v["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert_eq!(
        text(&out.stderr).matches("failpoint add-proc").count(),
        1,
        "{lines:?}"
    );
    // --json: the error object on stdout.
    let v: Value = serde_json::from_slice(&out.stdout).expect("error object on stdout");
    assert_eq!(v["error"]["kind"], "runtime", "{v}");
    assert_eq!(v["error"]["exit_code"], 1);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("failpoint add-proc"));
    assert!(v["version"].is_string());
    assert!(fx.walk().is_empty());
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    // util-linux `script` gives the program a terminal.
    let util_linux = Command::new("script")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && text(&o.stdout).contains("util-linux"))
        .unwrap_or(false);
    if !util_linux {
        return common::skip::skip(
            "colour_only_on_a_terminal_and_never_with_no_color",
            "util-linux script is not installed (busybox's takes other options)",
        );
    }
    let fx = Fx::new("colour");
    let path = format!("{}/sb", fx.prefix);
    let cmd = format!(
        "{BIN} run --cgroups-path {path} --sandbox-id sb1 --state-dir {} --duration 0",
        fx.state_dir()
    );
    let on_tty = |no_color: Option<&str>| -> String {
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env("HOST_CGROUPS_LOG", "debug")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        text(&ok(&c.output().unwrap()).stdout)
    };
    assert!(on_tty(None).contains("\u{1b}["), "no colour on a terminal");
    assert!(
        !on_tty(Some("1")).contains("\u{1b}["),
        "colour despite NO_COLOR"
    );
    assert!(fx.walk().is_empty());
}

#[test]
fn version_names_the_commit() {
    let out = ok(&hc(&["--version"])).stdout.clone();
    let v = text(&out);
    let want_version = format!("host-cgroups {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want_version), "{v}");
    let commit = v
        .trim()
        .trim_start_matches(&want_version)
        .trim_end_matches(')');
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match git {
        Ok(g) if g.status.success() => assert_eq!(commit, text(&g.stdout).trim(), "{v}"),
        // No git here (a test host): the build machine's commit or "unknown".
        _ => assert!(
            commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{v}"
        ),
    }
}

fn inspect_json(fx: &Fx, id: &str) -> Value {
    json(&fx.by_id("inspect", id, &["--json"]))
}

/// Every task listed in the sandbox cgroup's directories.
fn tasks(v: &Value) -> Vec<Value> {
    v["cgroups"][0]["directories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["threads"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn inspect_a_kept_sandbox() {
    let fx = Fx::new("inspkept");
    let path = format!("{}/sb", fx.prefix);
    ok(&fx.run_keep("sb1", &path));
    let v = inspect_json(&fx, "sb1");
    assert!(v["version"].is_string());
    assert_eq!(v["sandbox_id"], "sb1");
    assert_eq!(v["cgroup_version"], layout().version().number());
    assert_eq!(v["vmm"]["running"], false, "{v}");
    let sb = &v["cgroups"][0];
    assert_eq!(sb["role"], "sandbox");
    assert_eq!(sb["cgroup"]["path"], path.as_str());
    assert_eq!(sb["exists"], true);
    for d in sb["directories"].as_array().unwrap() {
        assert_eq!(d["exists"], true, "{d}");
        assert!(d["threads"].as_array().unwrap().is_empty(), "{d}");
        assert!(Path::new(d["dir"].as_str().unwrap()).is_dir());
    }
    let created = sb["created"].as_array().unwrap();
    assert!(!created.is_empty());
    assert!(created.iter().all(|c| c["exists"] == true), "{sb}");

    // A process that is not the sandbox's VMM, in the sandbox cgroup: listed, role `-`.
    let child = ChildGuard::sleep();
    let dir = PathBuf::from(sb["directories"][0]["dir"].as_str().unwrap());
    std::fs::write(dir.join("cgroup.procs"), child.pid().to_string()).unwrap();
    let v = inspect_json(&fx, "sb1");
    let t = tasks(&v);
    assert_eq!(t.len(), 1, "{v}");
    assert_eq!(t[0]["pid"], child.pid());
    assert_eq!(t[0]["tid"], child.pid());
    assert_eq!(t[0]["name"], "sleep");
    assert_eq!(t[0]["role"], "-");
    assert_eq!(v["cgroups"][0]["directories"][0]["procs"][0], child.pid());
    drop(child);
    // The text form says the same.
    let out = ok(&fx.by_id("inspect", "sb1", &[])).stdout.clone();
    let s = text(&out);
    assert!(s.contains("not running"), "{s}");
    assert!(s.contains(&format!("sandbox cgroup {path}: exists")), "{s}");

    ok(&fx.by_id("cleanup", "sb1", &[]));
    // No state: exit 2, naming the directory searched.
    let out = fx.by_id("inspect", "sb1", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(fx.state_dir()),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn inspect_a_running_sandbox_and_a_plain_process() {
    let fx = Fx::new("insplive");
    let path = format!("{}/sb", fx.prefix);
    let mut run = fx.run("sb1", &path).duration("600").spawn();
    run.wait_for("running");
    let pid = run.pid() as i64;
    let v = inspect_json(&fx, "sb1");
    assert_eq!(v["vmm"]["running"], true, "{v}");
    assert_eq!(v["vmm"]["pid"], pid);
    let t = tasks(&v);
    assert!(t.iter().any(|t| t["role"] == "vcpu"), "{v}");
    for t in &t {
        assert_eq!(t["pid"], pid, "{t}");
        assert_ne!(t["role"], "-", "{t}");
    }
    assert!(run.stop().success());

    // A plain process's threads have no sandbox role.
    let child = ChildGuard::sleep();
    let v = json(&hc(&[
        "inspect",
        "--pid",
        &child.pid().to_string(),
        "--json",
    ]));
    assert!(v["version"].is_string());
    assert_eq!(v["threads"][0]["role"], "-", "{v}");
}

/// `Fields of `NAME`: `a`, `b`, …` lines of docs/cli.md: NAME → (fields, whether "at least").
fn documented_fields() -> std::collections::BTreeMap<String, (BTreeSet<String>, bool)> {
    // Embedded at build time: the test hosts get only tests/, not docs/.
    let doc = include_str!("../docs/cli.md");
    let mut out = std::collections::BTreeMap::new();
    for l in doc.lines().filter(|l| l.starts_with("Fields of `")) {
        let mut parts = l.split('`');
        parts.next();
        let name = parts.next().unwrap().to_string();
        let (head, list) = l.split_once(':').unwrap();
        let at_least = head.contains("(at least)");
        let fields: BTreeSet<String> = list
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        assert!(!fields.is_empty(), "{l}");
        out.insert(name, (fields, at_least));
    }
    out
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_json_output_has_the_documented_fields() {
    let docs = documented_fields();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut check = |name: &str, v: &Value| {
        let (want, at_least) = docs
            .get(name)
            .unwrap_or_else(|| panic!("docs/cli.md documents no `{name}`"));
        let have = keys(v);
        if *at_least {
            assert!(
                want.is_subset(&have),
                "{name}: documented {want:?}, got {have:?}"
            );
        } else {
            assert_eq!(&have, want, "{name}: the output and docs/cli.md differ");
        }
        seen.insert(name.to_string());
    };
    let fx = Fx::new("schema");
    let path = format!("{}/sb", fx.prefix);

    let out = hc(&["check", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    check("check --json", &v);
    assert!(v["cgroup_version"].is_u64());

    let v = json(&hc(&[
        "resolve",
        "--sandbox-id",
        "sb1",
        "--cgroups-path",
        &path,
        "--json",
    ]));
    check("resolve --json", &v);
    check("cgroup object", &v["sandbox"]);
    assert!(v["cgroup_version"].is_u64());

    let v = json(&fx.run("sb1", &path).keep().json().duration("0").output());
    check("run --json", &v);
    check("cgroup object", &v["sandbox"]);
    check("thread object", &v["threads"][0]);
    assert!(v["cgroup_version"].is_u64());
    assert!(v["usage"]["cpu_ns"].is_u64(), "{v}");
    assert!(v["vcpus"][0]["cpu_ns"].is_u64(), "{v}");
    assert_eq!(v["cleanup"]["kept"].as_array().unwrap().len(), 1, "{v}");

    let state: Value =
        serde_json::from_slice(&std::fs::read(fx.state_file("sb1")).unwrap()).unwrap();
    check("state file", &state);
    assert!(state["cgroup_version"].is_u64(), "{state}");

    let child = ChildGuard::sleep();
    let v = json(&fx.by_id("inspect", "sb1", &["--json"]));
    check("inspect --sandbox-id --json", &v);
    check("cgroup object", &v["cgroups"][0]["cgroup"]);
    assert!(v["cgroup_version"].is_u64());
    let dir = PathBuf::from(v["cgroups"][0]["directories"][0]["dir"].as_str().unwrap());
    std::fs::write(dir.join("cgroup.procs"), child.pid().to_string()).unwrap();
    let v = json(&fx.by_id("inspect", "sb1", &["--json"]));
    let mut task = tasks(&v)[0].clone();
    assert_eq!(
        task.as_object_mut().unwrap().remove("pid"),
        Some(child.pid().into())
    );
    check("thread object", &task);

    let v = json(&hc(&[
        "inspect",
        "--pid",
        &child.pid().to_string(),
        "--json",
    ]));
    check("inspect --pid --json", &v);
    check("thread object", &v["threads"][0]);
    drop(child);

    let v = json(&fx.by_id("cleanup", "sb1", &["--json"]));
    check("cleanup --json", &v);
    assert!(fx.walk().is_empty());

    // A failure under --json: the error object on stdout, the text on stderr.
    let out = hc(&["resolve", "--sandbox-id", "a/b", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).expect("error object");
    check("error", &v);
    assert_eq!(v["error"]["kind"], "bad-input");
    assert_eq!(v["error"]["exit_code"], 2);
    assert!(v["error"]["message"].as_str().unwrap().contains("a/b"));
    assert!(text(&out.stderr).contains("a/b"));

    // A malformed command line under --json: the same error object.
    let out = hc(&["run", "--json", "--backend", "quantum"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).expect("error object");
    check("error", &v);
    assert_eq!(v["error"]["kind"], "bad-input");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("quantum"),
        "{v}"
    );
    assert!(text(&out.stderr).contains("quantum"));
    // --help is not an error: no object.
    let out = hc(&["run", "--json", "--help"]);
    assert!(out.status.success());
    assert!(serde_json::from_slice::<Value>(&out.stdout).is_err());

    let out_dir = fx.state.join("bench");
    let v = json(&hc(&[
        "bench",
        "hooks",
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    check("bench --json", &v);

    let documented: BTreeSet<String> = docs.keys().cloned().collect();
    assert_eq!(
        seen, documented,
        "documented outputs this test did not check"
    );
}

#[test]
fn a_closed_stderr_does_not_leave_a_sandbox_behind() {
    let fx = Fx::new("epipe");
    let path = format!("{}/sb", fx.prefix);
    let mut child = fx
        .run("sb1", &path)
        .duration("3")
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the running line, then close the pipe (`2>&1 | head -1` does this):
    // the per-vCPU lines that follow meet a closed pipe.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("running") {
        line.clear();
        let n = err.read_line(&mut line).unwrap();
        assert!(n > 0, "run ended before its running line");
    }
    drop(err);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(fx.walk().is_empty(), "left: {:?}", fx.walk());
    assert!(!fx.state_file("sb1").exists());
}

#[test]
fn run_reports_every_cgroup_its_teardown_removed() {
    let fx = Fx::new("runrm");
    let path = format!("{}/a/b", fx.prefix);
    // A sibling the run did not make keeps `<prefix>/a` (and the prefix) in one hierarchy.
    let m = mounts(&layout())[0].clone();
    let sibling = format!("{}/a/other", fx.prefix);
    std::fs::create_dir_all(m.join(&sibling)).unwrap();
    let before = fx.walk();
    let v = json(&fx.run("sb1", &path).json().duration("0").output());
    let after = fx.walk();
    assert_eq!(after, before, "the run did not put back what was there");
    // Only the leaf is gone everywhere. On cgroup v1 the run also made the parents in
    // the other hierarchies and removed them there, but they still stand in the one
    // with the sibling: kept. On v2 (one hierarchy) the parents were there before the
    // run, so they are not its to report.
    assert_eq!(
        strings(&v["cleanup"]["removed"]),
        BTreeSet::from([path.clone()]),
        "{v}"
    );
    let l = layout();
    let want_kept = if l.version() == CgroupVersion::V1 && l.v1_hierarchies().len() > 1 {
        BTreeSet::from([fx.prefix.clone(), format!("{}/a", fx.prefix)])
    } else {
        BTreeSet::new()
    };
    assert_eq!(kept_names(&v["cleanup"]["kept"]), want_kept, "{v}");
    // What the test made by hand goes: the sibling and, in that hierarchy, its parents.
    std::fs::remove_dir(m.join(&sibling)).unwrap();
    std::fs::remove_dir(m.join(format!("{}/a", fx.prefix))).unwrap();
    std::fs::remove_dir(m.join(&fx.prefix)).unwrap();
    assert!(fx.walk().is_empty());

    // Without a sibling every created directory goes, and each is listed.
    let v = json(&fx.run("sb1", &path).json().duration("0").output());
    assert_eq!(
        strings(&v["cleanup"]["removed"]),
        BTreeSet::from([fx.prefix.clone(), format!("{}/a", fx.prefix), path.clone()]),
        "{v}"
    );
    assert!(strings(&v["cleanup"]["kept"]).is_empty(), "{v}");
    assert!(fx.walk().is_empty());
}
