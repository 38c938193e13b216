//! The sandbox's persisted state: enough to restore a sandbox after a restart
//! and to remove everything after a crash.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) with
//! mode 0600, in a directory that is not followed through symlinks.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cgroup::CgroupVersion;
use crate::path::{CgroupsPath, Driver};
use crate::placement::{Placement, VcpuLayout, VCPU_CHILD};

/// Where state files live by default.
pub const DEFAULT_STATE_DIR: &str = "/run/host-cgroups/state";

/// State that cannot be written, read or trusted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// An I/O operation on the state directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state directory is a symlink or not a directory.
    #[error("state directory {path} is a symlink or not a directory; refusing to use it")]
    NotADirectory {
        /// The directory.
        path: PathBuf,
    },
    /// The state file is not valid JSON state.
    #[error("state file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The state file was written in a format newer than this version reads (a runtime
    /// downgraded while its sandboxes run): nothing is done with it.
    #[error("state file {path} has format {found}, newer than this version of host-cgroups reads (up to {known}); use the version that wrote it, or a newer one")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its `format`.
        found: u64,
        /// The newest format this version reads ([`STATE_FORMAT`]).
        known: u32,
    },
    /// The state file names cgroups outside the sandbox's own subtree.
    #[error("state file {path} is not trusted: {reason}")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One cgroup the sandbox owns, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CgroupState {
    /// The parsed cgroups path (driver, relative path, unit).
    pub path: CgroupsPath,
    /// Directories this sandbox created or was about to create, outermost first.
    pub created: Vec<PathBuf>,
}

/// The nested layout's vCPU child, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildState {
    /// Its directories, one per hierarchy (`<sandbox>/vcpus`).
    pub dirs: Vec<PathBuf>,
    /// Directories this sandbox created or was about to create.
    pub created: Vec<PathBuf>,
}

/// The format of the state files this version writes, and the newest it reads.
///
/// The history (`tests/data/state/`, `tests/state_formats.rs` hold a file of each):
/// - 1: every file written before the field existed. It grew in place: the first
///   (`ed516f6`) wrote `cgroup_version` as the strings `"1"`/`"2"`, later versions as the
///   numbers 1/2 (both read); the nested layout (`043b56d`) added `vcpu_layout` and
///   `vcpus` (absent: derived from `placement` and `sandbox_cgroup_only`).
/// - 2: `format` itself (issue 20); a reader refuses a newer format
///   ([`StateError::NewerFormat`]) rather than guess at it.
pub const STATE_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

/// The persisted sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxState {
    /// The format ([`STATE_FORMAT`] when written by this version; 1 when absent).
    #[serde(default = "format_1")]
    pub format: u32,
    /// The sandbox id.
    pub sandbox_id: String,
    /// The driver.
    pub driver: Driver,
    /// The cgroup version.
    pub cgroup_version: CgroupVersion,
    /// The placement policy.
    pub placement: Placement,
    /// `sandbox_cgroup_only` in effect.
    pub sandbox_cgroup_only: bool,
    /// `enable_vcpus_pinning`.
    pub enable_vcpus_pinning: bool,
    /// The VMM process.
    pub vmm_pid: i32,
    /// The sandbox cgroup.
    pub sandbox: CgroupState,
    /// The overhead cgroup, when used.
    pub overhead: Option<CgroupState>,
    /// sandbox-only, sibling or nested (absent in state written before the nested
    /// layout existed: derived from `placement` and `sandbox_cgroup_only`).
    #[serde(default)]
    pub vcpu_layout: Option<VcpuLayout>,
    /// The nested layout's vCPU child; removed before the sandbox cgroup.
    #[serde(default)]
    pub vcpus: Option<ChildState>,
    /// Per-container resources; the sandbox cgroup's cpuset is their union.
    pub containers: BTreeMap<String, LinuxResources>,
    /// Resources applied to the sandbox cgroup as a whole (`run --resources`).
    pub sandbox_resources: Option<LinuxResources>,
}

impl SandboxState {
    /// The file of sandbox `id` in `dir`.
    pub fn file(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Writes the state atomically with mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        ensure_dir(dir)?;
        let path = Self::file(dir, &self.sandbox_id);
        let tmp = dir.join(format!(".{}.json.tmp", self.sandbox_id));
        let io = |op, p: &Path| {
            let p = p.to_path_buf();
            move |source| StateError::Io {
                op,
                path: p,
                source,
            }
        };
        let body = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        let written = f
            .write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(io("write", &tmp));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        rename_at(&tmp, &path).map_err(io("rename into", &path))?;
        // The rename is durable only once the directory entry is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
        crate::failpoint::hit(crate::failpoint::Point::StateSave).map_err(|source| {
            StateError::Io {
                op: "save",
                path: path.clone(),
                source,
            }
        })?;
        Ok(())
    }

    /// Reads sandbox `id`'s state from `dir`, refusing symlinks and paths outside the
    /// sandbox's own subtree below one of `mounts` (the host's cgroup mount points).
    pub fn load(dir: &Path, id: &str, mounts: &[PathBuf]) -> Result<Self, StateError> {
        check_dir(dir)?;
        let path = Self::file(dir, id);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| StateError::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
        let corrupt = |e: serde_json::Error| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        // The format first: a newer file may not even parse as this version's state.
        let value: serde_json::Value = serde_json::from_reader(f).map_err(corrupt)?;
        if let Some(found) = value.get("format").and_then(serde_json::Value::as_u64) {
            if found > u64::from(STATE_FORMAT) {
                return Err(StateError::NewerFormat {
                    path,
                    found,
                    known: STATE_FORMAT,
                });
            }
        }
        let state: SandboxState = serde_json::from_value(value).map_err(corrupt)?;
        if state.sandbox_id != id {
            return Err(StateError::Untrusted {
                path,
                reason: format!("it is for sandbox {:?}, not {id:?}", state.sandbox_id),
            });
        }
        state.verify(&path, mounts)?;
        Ok(state)
    }

    /// Removes sandbox `id`'s state file; a missing one is fine.
    pub fn remove(dir: &Path, id: &str) -> Result<(), StateError> {
        let path = Self::file(dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Checks that every cgroup named is the sandbox's own: a valid path, and
    /// created directories that are that path or its ancestors below a root.
    pub fn verify(&self, file: &Path, mounts: &[PathBuf]) -> Result<(), StateError> {
        let untrusted = |reason: String| StateError::Untrusted {
            path: file.into(),
            reason,
        };
        crate::path::validate_sandbox_id(&self.sandbox_id).map_err(|e| untrusted(e.to_string()))?;
        for cg in std::iter::once(&self.sandbox).chain(self.overhead.iter()) {
            // Re-parse the path: a forged state cannot name what parsing refuses.
            let raw = match &cg.path {
                CgroupsPath::Cgroupfs { path } => path.clone(),
                CgroupsPath::Systemd(u) => format!("{}:{}:{}", u.slice, u.prefix, u.name),
            };
            let reparsed =
                CgroupsPath::parse(&raw, &self.sandbox_id).map_err(|e| untrusted(e.to_string()))?;
            if reparsed != cg.path {
                return Err(untrusted(format!(
                    "cgroups path {raw:?} is not in canonical form"
                )));
            }
            let rel = reparsed.relative();
            if rel.is_empty() {
                return Err(untrusted("it names the cgroup root".into()));
            }
            // Well-known slices and parents are never a sandbox's own.
            let first = rel.split('/').next().unwrap_or("");
            if cg.path.driver() == Driver::Cgroupfs
                && matches!(
                    first,
                    "system.slice" | "user.slice" | "init.scope" | "machine.slice"
                )
                && !rel.contains('/')
            {
                return Err(untrusted(format!("{rel:?} is a systemd-owned cgroup")));
            }
            for d in &cg.created {
                let ok = d.is_absolute()
                    && !d
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                    && mounts.iter().any(|mount| {
                        d.strip_prefix(mount).is_ok_and(|tail| {
                            let tail = tail.to_string_lossy();
                            !tail.is_empty()
                                && (rel == tail || rel.starts_with(&format!("{tail}/")))
                        })
                    });
                if !ok {
                    return Err(untrusted(format!(
                        "created directory {} is not the sandbox cgroup {rel:?} or one of its parents",
                        d.display()
                    )));
                }
            }
        }
        if let Some(child) = &self.vcpus {
            let rel = format!("{}/{VCPU_CHILD}", self.sandbox.path.relative());
            for d in child.dirs.iter().chain(child.created.iter()) {
                let ok = d.is_absolute()
                    && !d
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                    && mounts
                        .iter()
                        .any(|m| d.strip_prefix(m).is_ok_and(|t| t.to_string_lossy() == rel));
                if !ok {
                    return Err(untrusted(format!(
                        "vCPU child directory {} is not {rel:?} below a cgroup mount",
                        d.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Creates the state directory (0700) if needed, refusing a symlink.
/// `rename(2)` of `from` to `to` made with `renameat(2)`.
///
/// runtime-rs installs a process-wide seccomp allow-list (action Trap) when dragonball
/// starts the VM (`src/runtime-rs/crates/hypervisor/src/dragonball/seccomp.rs`); it has
/// `renameat` and `renameat2` but not `rename`, which `std::fs::rename` calls on x86_64:
/// the first state save after the VM started (a container update) killed the runtime
/// with SIGSYS. `integrations/dragonball` runs the flows under that list.
fn rename_at(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let rc = unsafe { libc::renameat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => check_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Io {
                    op: "create directory",
                    path: dir.into(),
                    source,
                })?;
            check_dir(dir)
        }
        Err(source) => Err(StateError::Io {
            op: "stat",
            path: dir.into(),
            source,
        }),
    }
}

use std::os::unix::fs::DirBuilderExt;

fn check_dir(dir: &Path) -> Result<(), StateError> {
    let md = std::fs::symlink_metadata(dir).map_err(|source| StateError::Io {
        op: "stat",
        path: dir.into(),
        source,
    })?;
    if md.file_type().is_symlink() || !md.is_dir() {
        return Err(StateError::NotADirectory { path: dir.into() });
    }
    // A directory others can write to could be swapped under us.
    if md.mode() & 0o022 != 0 && md.uid() == 0 {
        tracing::warn!(dir = %dir.display(), "state directory is group/world writable");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, rel: &str, created: Vec<PathBuf>) -> SandboxState {
        SandboxState {
            format: STATE_FORMAT,
            sandbox_id: id.into(),
            driver: Driver::Cgroupfs,
            cgroup_version: CgroupVersion::V1,
            placement: Placement::VcpuThreads,
            sandbox_cgroup_only: true,
            enable_vcpus_pinning: false,
            vmm_pid: 1,
            sandbox: CgroupState {
                path: CgroupsPath::parse(rel, id).unwrap(),
                created,
            },
            overhead: None,
            vcpu_layout: None,
            vcpus: None,
            containers: BTreeMap::new(),
            sandbox_resources: None,
        }
    }

    fn mounts() -> Vec<PathBuf> {
        crate::plan::nominal_layout(CgroupVersion::V1).mount_points()
    }

    fn tmpdir() -> PathBuf {
        std::env::temp_dir().join(format!("hcg-state-{:08x}", rand::random::<u32>()))
    }

    #[test]
    fn save_load_roundtrip_with_mode_0600() {
        let dir = tmpdir();
        let s = sample(
            "sb1",
            "",
            vec![PathBuf::from("/sys/fs/cgroup/cpu/kata_sandboxed_pod")],
        );
        s.save(&dir).unwrap();
        let md = std::fs::metadata(SandboxState::file(&dir, "sb1")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(SandboxState::load(&dir, "sb1", &mounts()).unwrap(), s);
        SandboxState::remove(&dir, "sb1").unwrap();
        SandboxState::remove(&dir, "sb1").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn untrusted_paths_are_refused() {
        let dir = tmpdir();
        for created in [
            PathBuf::from("/sys/fs/cgroup/cpu"),
            PathBuf::from("/sys/fs/cgroup/cpu/system.slice"),
            PathBuf::from("/etc"),
            PathBuf::from("/sys/fs/cgroup/cpu/kata_sandboxed_pod/../x"),
            PathBuf::from("/sys/fs/cgroup/cpu/kata_sandboxed_pod/sb1/deeper"),
        ] {
            let s = sample("sb1", "", vec![created.clone()]);
            s.save(&dir).unwrap();
            let err = SandboxState::load(&dir, "sb1", &mounts()).unwrap_err();
            assert!(
                matches!(err, StateError::Untrusted { .. }),
                "{created:?}: {err}"
            );
        }
        let s = sample("sb1", "system.slice", vec![]);
        s.save(&dir).unwrap();
        assert!(SandboxState::load(&dir, "sb1", &mounts()).is_err());
        // A state file written for another sandbox id.
        let s = sample("other", "", vec![]);
        s.save(&dir).unwrap();
        std::fs::rename(
            SandboxState::file(&dir, "other"),
            SandboxState::file(&dir, "sb2"),
        )
        .unwrap();
        assert!(SandboxState::load(&dir, "sb2", &mounts()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinked_state_dir_is_refused() {
        let dir = tmpdir();
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.with_extension("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let s = sample("sb1", "", vec![]);
        assert!(matches!(
            s.save(&link),
            Err(StateError::NotADirectory { .. })
        ));
        assert!(SandboxState::load(&link, "sb1", &mounts()).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
