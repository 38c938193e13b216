//! Records the git commit the binary is built from, for `--version`:
//! `git rev-parse --short HEAD`, or "unknown" when git or the repository is absent
//! (a source tarball). The build script reruns when HEAD or the branch it names moves.
//!
//! For the tests (`tests/seccomp.rs`) it also writes `$OUT_DIR/runtime_rs_seccomp.rs`:
//! the syscalls of runtime-rs' process-wide seccomp allow-list, read from `seccomp.rs` in
//! the Kata source tarball at `../shared/reference/kata/` (`HCG_KATA_TARBALL` overrides),
//! for this target's architecture. Without the tarball the list is empty and those tests
//! fail, naming it.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The allow-list's syscall names for `arch`, from runtime-rs' `seccomp.rs`: every
/// `libc::SYS_<name>` in `get_process_seccomp_rules`, less those behind a
/// `#[cfg(target_arch = ...)]` of another architecture.
fn allow_list(source: &str, arch: &str) -> Vec<String> {
    let body = match source.find("fn get_process_seccomp_rules") {
        Some(i) => &source[i..],
        None => return Vec::new(),
    };
    let mut names = Vec::new();
    let mut skip_next = false;
    for line in body.lines().skip(1) {
        let line = line.trim();
        if line.starts_with("pub fn ") || line.starts_with("fn ") {
            break;
        }
        if let Some(rest) = line.strip_prefix("#[cfg(target_arch = \"") {
            skip_next = !rest.starts_with(&format!("{arch}\""));
            continue;
        }
        if let Some(i) = line.find("libc::SYS_") {
            let name: String = line[i + "libc::SYS_".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !skip_next {
                names.push(name);
            }
            skip_next = false;
        }
    }
    names
}

fn write_seccomp_list() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let tarball = std::env::var("HCG_KATA_TARBALL")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            let dir = manifest.parent()?.parent()?.join("shared/reference/kata");
            std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("kata-containers-"))
                })
        });
    println!("cargo:rerun-if-env-changed=HCG_KATA_TARBALL");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (names, source) = match &tarball {
        Some(t) => {
            println!("cargo:rerun-if-changed={}", t.display());
            let out = Command::new("tar")
                .arg("-xJOf")
                .arg(t)
                .args([
                    "--wildcards",
                    "*/src/runtime-rs/crates/hypervisor/src/dragonball/seccomp.rs",
                ])
                .output();
            let text = out
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            (allow_list(&text, &arch), t.display().to_string())
        }
        None => (Vec::new(), String::new()),
    };
    let mut code = String::from(
        "/// runtime-rs' process-wide allow-list (name, number), from build.rs.\n\
         pub const RUNTIME_RS_ALLOW: &[(&str, i64)] = &[\n",
    );
    for n in &names {
        code.push_str(&format!("    (\"{n}\", libc::SYS_{n}),\n"));
    }
    code.push_str("];\n");
    code.push_str(&format!(
        "/// The tarball it was read from (empty: not found at build time).\n\
         pub const RUNTIME_RS_SECCOMP_SOURCE: &str = {source:?};\n"
    ));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let _ = std::fs::write(out.join("runtime_rs_seccomp.rs"), code);
}

fn main() {
    write_seccomp_list();
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HOST_CGROUPS_GIT_COMMIT={commit}");
    // Rerun when HEAD moves: the HEAD file (a worktree has its own), the branch's ref
    // file and packed-refs (in the common directory). Only existing files are named:
    // a missing one would make cargo rerun the script on every build.
    let mut watch: Vec<PathBuf> = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(PathBuf::from(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        watch.push(PathBuf::from(&common).join("packed-refs"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(PathBuf::from(&common).join(r));
        }
    }
    watch.retain(|p| p.exists());
    println!("cargo:rerun-if-changed=build.rs");
    for p in watch {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
