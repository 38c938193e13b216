//! 50 sandboxes created, populated and destroyed at once from separate
//! processes under one shared parent: none fails, none disturbs another.

mod common;

use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

#[test]
fn fifty_sandboxes_at_once_under_one_parent() {
    let prefix = unique("conc");
    let guard = CgroupGuard::new(&prefix);
    let tmp = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&tmp).unwrap();
    let state = tmp.to_string_lossy().into_owned();
    let children: Vec<_> = (0..50)
        .map(|i| {
            let child = Command::new(BIN)
                .args([
                    "run",
                    "--cgroups-path",
                    &format!("{prefix}/kata_sandboxed_pod/sb{i}"),
                    "--sandbox-id",
                    &format!("sb{i}"),
                    "--vcpus",
                    "1",
                    "--duration",
                    "0.5",
                    "--state-dir",
                    &state,
                    "--json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            ChildGuardOutput(Some(child))
        })
        .collect();
    let mut failures = Vec::new();
    for (i, mut c) in children.into_iter().enumerate() {
        let out = c.0.take().unwrap().wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!("sb{i}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // Each saw its own vCPU placed in its own cgroup, read from /proc by the run.
        let own = format!("/{prefix}/kata_sandboxed_pod/sb{i}");
        let vcpu = &v["vcpus"][0]["cgroups"];
        let key = if vcpu.get("cpu").is_some() {
            "cpu"
        } else {
            "unified"
        };
        if vcpu[key] != own.as_str() {
            failures.push(format!("sb{i}: vCPU in {} not {own}", vcpu[key]));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let leaves: Vec<_> = guard
        .leftovers()
        .into_iter()
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sb"))
        })
        .collect();
    assert!(leaves.is_empty(), "{leaves:?}");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "state files left"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Kills the child by pid if the test fails before waiting for it.
struct ChildGuardOutput(Option<std::process::Child>);

impl Drop for ChildGuardOutput {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
