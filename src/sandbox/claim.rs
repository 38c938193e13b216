//! One cgroups path, one sandbox: the claim on a path, taken in one O(1) atomic step
//! before anything is made (issue 20).
//!
//! A claim is a file `<state dir>/claims/<key>.claim`, where the key is a hash of the
//! driver and the path (its content, `<sandbox id>\n<path>\n`, is checked), held with an
//! exclusive `flock(2)` for as long as the sandbox lives in this process. Two starts on
//! one path at the same instant meet at the lock: one gets it, the other is refused
//! (`PathInUse`, naming the holder). The lock goes with the process, so a crash cannot
//! leave a path claimed by nobody: a later start finds the lock free and the claim's
//! sandbox id, and is refused only while that sandbox's state file exists (it is to be
//! cleaned up first, as before); a claim whose sandbox left no state (a crash between
//! the claim and the first state write) is taken over.
//!
//! `teardown` and `cleanup` remove the claim after the state file. A releasing owner
//! unlinks the file before it unlocks it; a starter that locked an unlinked inode sees
//! that the path names another inode (or none) and starts again, so the lock and the
//! file a path names are always one.
//!
//! State directories from before claims: a start that makes `claims/` writes a claim for
//! every state file there, into a temporary directory renamed into place, so that a
//! start racing it finds either no `claims/` or a complete one. The directory is
//! removed when its last claim goes (a refused start, like any bad input, leaves the
//! state directory as it found it), so that pass runs only while no sandbox holds a
//! claim, and then over the state files of runs from before claims alone (every run
//! since claims before its state file).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::path::CgroupsPath;
use crate::state::{SandboxState, StateError};

use super::SandboxError;

/// The claims' directory inside a state directory.
pub const CLAIMS_DIR: &str = "claims";

/// How often a start retries after meeting a claim file unlinked under its lock.
const ATTEMPTS: usize = 16;

/// A path claimed by this process for one sandbox; the lock lasts as long as the value.
#[derive(Debug)]
pub(crate) struct Claim {
    /// The locked file: the lock is the claim, and lasts until this is dropped.
    #[allow(dead_code)]
    file: File,
    path: PathBuf,
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> SandboxError {
    SandboxError::State(StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// The claim file of `parsed` in `state_dir`: FNV-1a (64 bits) of the driver and the
/// path, stable across builds and versions.
pub(crate) fn claim_file(state_dir: &Path, parsed: &CgroupsPath) -> PathBuf {
    state_dir.join(CLAIMS_DIR).join(claim_name(parsed))
}

/// The claim file's name: FNV-1a (64 bits) of [`what`] the claim names.
fn claim_name(parsed: &CgroupsPath) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what(parsed).bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}.claim")
}

/// What a claim names: the driver and the sandbox cgroup (the unit for systemd).
fn what(parsed: &CgroupsPath) -> String {
    format!("{}:{}", parsed.driver(), parsed.relative())
}

/// The sandbox id a claim file names, if it names one for `parsed`.
fn holder(text: &str, parsed: &CgroupsPath) -> Option<String> {
    let mut lines = text.lines();
    let id = lines.next()?.trim();
    (lines.next()? == what(parsed) && !id.is_empty()).then(|| id.to_string())
}

fn in_use(sandbox_id: &str, parsed: &CgroupsPath, other: String, holder: String) -> SandboxError {
    SandboxError::PathInUse {
        sandbox_id: sandbox_id.to_string(),
        cgroups_path: parsed.relative(),
        other_sandbox: Some(other),
        holder,
    }
}

/// Opens (and makes, mode 0600) the claim file read-only, the descriptor its lock is
/// held on. (`OpenOptions` creates only with write access.)
fn open_for_lock(path: &Path) -> std::io::Result<File> {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `PathInUse` for a path whose claim (`path`) sandbox `other`'s live runtime holds.
fn held_in_use(sandbox_id: &str, parsed: &CgroupsPath, other: &str, path: &Path) -> SandboxError {
    in_use(
        sandbox_id,
        parsed,
        other.to_string(),
        format!(
            "sandbox {other} holds its claim {} (its runtime is alive)",
            path.display()
        ),
    )
}

/// `PathInUse` for a path whose claim names sandbox `other`, whose state file exists in
/// `state_dir` (a run that crashed or was kept: it is to be cleaned up first).
fn recorded_in_use(
    sandbox_id: &str,
    parsed: &CgroupsPath,
    other: &str,
    state_dir: &Path,
) -> SandboxError {
    let state = SandboxState::file(state_dir, other);
    in_use(
        sandbox_id,
        parsed,
        other.to_string(),
        format!(
            "sandbox {other} records it in {} (if that sandbox is gone: host-cgroups cleanup --sandbox-id {other} --state-dir {})",
            state.display(),
            state_dir.display()
        ),
    )
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` locked, `Ok(false)` held elsewhere.
fn try_lock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; it touches no memory.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn read_all(f: &mut File) -> std::io::Result<String> {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Every sandbox a state file in `state_dir` records: `(id, sandbox cgroups path)`.
/// Files that are not a sandbox's state are skipped (`cleanup` reports them by id).
fn recorded(state_dir: &Path) -> Result<Vec<(String, CgroupsPath)>, SandboxError> {
    let rd = match std::fs::read_dir(state_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read directory", state_dir, e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if let Ok(state) = serde_json::from_str::<SandboxState>(&text) {
            out.push((id.to_string(), state.sandbox.path));
        }
    }
    Ok(out)
}

/// How long a start refused by a held claim waits for the holder to write its id: the
/// holder writes it right after it locks, so this bounds only a stalled machine.
const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sandbox id of a claim another process holds locked. The holder locks, then writes
/// its id (taking over a stale claim truncates it first), so an empty or unreadable
/// claim is read again until the id is there, for at most [`HOLDER_WAIT`].
fn live_holder(file: &mut File, parsed: &CgroupsPath) -> String {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        if let Some(id) = read_all(file).ok().and_then(|t| holder(&t, parsed)) {
            return id;
        }
        if start.elapsed() >= HOLDER_WAIT {
            return "(a sandbox that has not written its id)".to_string();
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Makes `<state_dir>/claims` with a claim for every state file already there.
fn ensure_claims_dir(state_dir: &Path) -> Result<(), SandboxError> {
    let dir = state_dir.join(CLAIMS_DIR);
    if dir.is_dir() {
        return Ok(());
    }
    crate::state::ensure_dir(state_dir)?;
    let tmp = state_dir.join(format!(".{CLAIMS_DIR}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| io("create directory", &tmp, e))?;
    // Sandboxes recorded before claims existed: each gets the claim it would have.
    for (id, path) in recorded(state_dir)? {
        let target = tmp.join(claim_name(&path));
        let body = format!("{id}\n{}\n", what(&path));
        std::fs::write(&target, body).map_err(|e| io("write", &target, e))?;
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(()),
        // Another start made it first: its directory is complete; ours goes.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(io("rename", &tmp, e)),
    }
}

impl Claim {
    /// Claims `parsed` for `sandbox_id` (O(1): one file, one lock).
    ///
    /// # Errors
    /// [`SandboxError::PathInUse`] naming the other sandbox when a live process holds the
    /// claim, or when the claim names a sandbox whose state file exists (a run that
    /// crashed or was kept: `cleanup` it first); [`SandboxError::State`] when the state
    /// directory cannot be used.
    pub(crate) fn take(
        state_dir: &Path,
        sandbox_id: &str,
        parsed: &CgroupsPath,
    ) -> Result<Claim, SandboxError> {
        let path = claim_file(state_dir, parsed);
        for _ in 0..ATTEMPTS {
            ensure_claims_dir(state_dir)?;
            let opened = open_for_lock(&path);
            let mut file = match opened {
                Ok(f) => f,
                // The directory went with another sandbox's last claim: make it again.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("open", &path, e)),
            };
            if !try_lock(&file).map_err(|e| io("lock", &path, e))? {
                let other = live_holder(&mut file, parsed);
                return Err(held_in_use(sandbox_id, parsed, &other, &path));
            }
            // Locked; but a releasing owner may have unlinked this inode meanwhile.
            let locked = file.metadata().map_err(|e| io("stat", &path, e))?.ino();
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() == locked => {}
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat", &path, e)),
            }
            let text = read_all(&mut file).map_err(|e| io("read", &path, e))?;
            if let Some(other) = holder(&text, parsed).filter(|o| o != sandbox_id) {
                let state = SandboxState::file(state_dir, &other);
                if state.exists() {
                    return Err(recorded_in_use(sandbox_id, parsed, &other, state_dir));
                }
                tracing::info!(claim = %path.display(), stale = %other, "taking over a claim whose sandbox left no state");
            }
            let body = format!("{sandbox_id}\n{}\n", what(parsed));
            // Written through a second, short-lived descriptor: the one kept for the
            // lock is read-only, so a running sandbox does not keep the state
            // directory's filesystem from being remounted read-only.
            let written = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut w| w.write_all(body.as_bytes()));
            if let Err(e) = written {
                // A claim that cannot say whose it is (a full or read-only filesystem)
                // is no claim: nothing of it stays.
                let claim = Claim {
                    file,
                    path: path.clone(),
                };
                claim.release();
                return Err(io("write", &path, e));
            }
            return Ok(Claim { file, path });
        }
        Err(io(
            "lock",
            &path,
            std::io::Error::other("the claim file kept being replaced while it was locked"),
        ))
    }

    /// What [`Claim::take`] would refuse, without taking anything or making a file
    /// (`preflight`, `resolve`).
    ///
    /// # Errors
    /// As [`Claim::take`].
    pub(crate) fn check(
        state_dir: &Path,
        sandbox_id: &str,
        parsed: &CgroupsPath,
    ) -> Result<(), SandboxError> {
        let path = claim_file(state_dir, parsed);
        if !state_dir.join(CLAIMS_DIR).is_dir() {
            // No claims yet: what `take` would make them from, the state files.
            let other = recorded(state_dir)?
                .into_iter()
                .find(|(id, p)| id != sandbox_id && what(p) == what(parsed));
            if let Some((other, _)) = other {
                return Err(recorded_in_use(sandbox_id, parsed, &other, state_dir));
            }
            return Ok(());
        }
        let Ok(mut file) = File::open(&path) else {
            return Ok(());
        };
        let text = read_all(&mut file).unwrap_or_default();
        let Some(other) = holder(&text, parsed).filter(|o| o != sandbox_id) else {
            return Ok(());
        };
        // SAFETY: flock on a file descriptor we own; it touches no memory.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        let state = SandboxState::file(state_dir, &other);
        if !free {
            return Err(held_in_use(sandbox_id, parsed, &other, &path));
        }
        if state.exists() {
            return Err(recorded_in_use(sandbox_id, parsed, &other, state_dir));
        }
        Ok(())
    }

    /// Gives the claim up: the file goes first, then the lock (see the module docs),
    /// then the claims' directory if this was its last claim.
    pub(crate) fn release(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(claim = %self.path.display(), error = %e, "cannot remove the claim");
            }
        }
        if let Some(dir) = self.path.parent() {
            remove_if_empty(dir);
        }
    }

    /// Removes the claim of `parsed` when it names `sandbox_id` (after `cleanup`: the
    /// run that held it is gone). A claim another sandbox took since is left alone.
    pub(crate) fn remove_for(state_dir: &Path, sandbox_id: &str, parsed: &CgroupsPath) {
        let path = claim_file(state_dir, parsed);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        if holder(&text, parsed).as_deref() != Some(sandbox_id) {
            return;
        }
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(claim = %path.display(), error = %e, "cannot remove the claim");
            }
        }
        if let Some(dir) = path.parent() {
            remove_if_empty(dir);
        }
    }
}

/// Removes the claims' directory when it holds nothing (`rmdir` refuses otherwise, so a
/// claim made meanwhile keeps it; a start that meets it gone makes it again).
fn remove_if_empty(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hcg-claim-{tag}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn one_claim_per_path_and_taken_over_only_without_state() {
        let d = dir("one");
        let p = CgroupsPath::parse("pod/sb", "a").unwrap();
        let a = Claim::take(&d, "a", &p).unwrap();
        // Held by a live owner (this process's other file description): refused.
        match Claim::take(&d, "b", &p) {
            Err(SandboxError::PathInUse { other_sandbox, .. }) => {
                assert_eq!(other_sandbox.as_deref(), Some("a"))
            }
            other => panic!("{other:?}"),
        }
        assert!(Claim::check(&d, "b", &p).is_err());
        // Another path is free.
        let q = CgroupsPath::parse("pod/other", "b").unwrap();
        let b = Claim::take(&d, "b", &q).unwrap();
        b.release();
        // The owner died without state (the lock goes with it): taken over.
        drop(a);
        let c = Claim::take(&d, "c", &p).unwrap();
        // Died with a state file: refused until cleanup.
        std::fs::write(SandboxState::file(&d, "c"), "{}").unwrap();
        drop(c);
        assert!(matches!(
            Claim::take(&d, "e", &p),
            Err(SandboxError::PathInUse { .. })
        ));
        // cleanup removes the state, then the claim.
        std::fs::remove_file(SandboxState::file(&d, "c")).unwrap();
        Claim::remove_for(&d, "c", &p);
        assert!(!claim_file(&d, &p).exists());
        Claim::take(&d, "e", &p).unwrap().release();
        assert!(!claim_file(&d, &p).exists());
        // The last claim gone, the state directory is as it was.
        assert!(!d.join(CLAIMS_DIR).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
