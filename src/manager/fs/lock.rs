//! The node-wide tree lock: creation below a parent and removal of that parent do not
//! interleave between processes.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::warn;

/// Lock serialising the removal of shared parents against creation below them.
pub const TREE_LOCK: &str = "/run/host-cgroups/tree.lock";

/// Holds `TREE_LOCK` (shared for creation, exclusive for removing parents) until dropped.
pub(super) struct TreeLock(#[allow(dead_code)] Option<File>);

/// How long `TreeLock::take` waits for the lock before going on without it. Holders keep it
/// for a few `mkdir`s or `rmdir`s (microseconds); a holder that is stopped (SIGSTOP, a
/// debugger) or stuck in the kernel must not hang every sandbox start and cleanup on the
/// node. Without the lock, creation still survives a parent removed under it (ENOENT
/// retries) and removal refuses a non-empty parent (EBUSY), so the cost is a retry.
const TREE_LOCK_WAIT: Duration = Duration::from_secs(10);

impl TreeLock {
    pub(super) fn take(exclusive: bool) -> Self {
        let path = Path::new(TREE_LOCK);
        let open = || -> std::io::Result<File> {
            let open = || {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
            };
            match open() {
                // The directory is made once per boot (/run is a tmpfs): only then.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    open()
                }
                r => r,
            }
        };
        let f = match open() {
            Ok(f) => f,
            Err(e) => {
                // Without the lock, creation still survives a vanished parent by retrying.
                warn!(path = TREE_LOCK, error = %e, "cannot open the tree lock");
                return TreeLock(None);
            }
        };
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            // SAFETY: flock on a file descriptor we own; it cannot touch memory.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return TreeLock(Some(f));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                warn!(path = TREE_LOCK, error = %e, "flock failed; relying on ENOENT retries");
                return TreeLock(None);
            }
            if start.elapsed() >= TREE_LOCK_WAIT {
                warn!(
                    path = TREE_LOCK,
                    waited_ms = start.elapsed().as_millis() as u64,
                    "tree lock still held by another process; going on without it (ENOENT retries)"
                );
                return TreeLock(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
