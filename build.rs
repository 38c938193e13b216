//! Records the git commit the binary is built from, for `--version`:
//! `git rev-parse --short HEAD`, or "unknown" when git or the repository is absent
//! (a source tarball). The build script reruns when HEAD or the branch it names moves.

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

fn main() {
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
