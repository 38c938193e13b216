//! Parent marks: which parent cgroups sandboxes made, so that the last sandbox to
//! leave a shared parent removes it.
//!
//! The registry of parents made by sandboxes. Two sandboxes created at once under a
//! fresh parent: one makes it, the other finds it (EEXIST); if the maker ends first its
//! rmdir meets the sibling (EBUSY), and the sibling, which did not make it, would leave
//! it behind. With a mark the last one out removes it. A mark holds the directory's
//! inode number and path: a parent removed and made again by someone else (a container
//! manager) has another inode, is not the sandboxes' and is never removed through a mark.
//! Failing to write or remove a mark is logged (warn), never fatal: without it only the
//! shared-parent case above leaves an empty parent, as before.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::warn;

/// Where the parent cgroups a sandbox made are registered (one file per directory),
/// so that the last sandbox to leave a shared parent removes it, not only its maker.
pub const PARENT_MARKS: &str = "/run/host-cgroups/parents";

/// The mark's file: FNV-1a of the path (stable across builds; the content is checked).
fn file(dir: &Path) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    Path::new(PARENT_MARKS).join(format!("{h:016x}"))
}

fn content(dir: &Path) -> Option<String> {
    let ino = std::fs::metadata(dir).ok()?.ino();
    Some(format!("{ino} {}\n", dir.display()))
}

/// Drops marks whose directory is gone or is another directory now (removed, or
/// removed and made again, by someone else): they would otherwise pile up.
fn sweep() {
    let Ok(rd) = std::fs::read_dir(PARENT_MARKS) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(m) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Some((_, path)) = m.trim_end().split_once(' ') else {
            continue;
        };
        if content(Path::new(path)).as_deref() != Some(m.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Marks `dir`, just made by this process, as a sandbox-made parent.
pub(super) fn add(dir: &Path) {
    sweep();
    let Some(c) = content(dir) else { return };
    let f = file(dir);
    let r = std::fs::create_dir_all(PARENT_MARKS).and_then(|()| std::fs::write(&f, c));
    if let Err(e) = r {
        warn!(dir = %dir.display(), mark = %f.display(), error = %e, "cannot mark a parent cgroup as sandbox-made");
    }
}

/// Whether `dir` is the very directory a sandbox made and marked.
pub(super) fn matches(dir: &Path) -> bool {
    match (std::fs::read_to_string(file(dir)), content(dir)) {
        (Ok(m), Some(c)) => m == c,
        _ => false,
    }
}

/// Drops `dir`'s mark (the directory is gone).
pub(super) fn remove(dir: &Path) {
    let f = file(dir);
    match std::fs::remove_file(&f) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(mark = %f.display(), error = %e, "cannot remove a parent mark"),
    }
}
