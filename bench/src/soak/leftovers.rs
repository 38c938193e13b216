//! What a soak window looks for: cgroup directories and systemd units left behind,
//! and this process's threads once exiting ones have gone.

use std::path::Path;
use std::process::Command;

use crate::util::{self, BenchCgroups};
use host_cgroups::host::CgroupLayout;

/// This process's threads, once threads that are still exiting have gone: a joined
/// thread leaves `/proc/self/task` a moment after `pthread_join` returns (its tid futex
/// is cleared first), so the smallest count over half a second is taken; a leaked
/// thread stays in every sample.
pub fn settled_threads() -> usize {
    let mut least = count_dir("/proc/self/task");
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        least = least.min(count_dir("/proc/self/task"));
    }
    least
}

/// Entries of directory `d` (0 when it cannot be read).
pub fn count_dir(d: &str) -> usize {
    std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0)
}

/// systemd scopes whose name starts with `prefix`, loaded in any state (the soak's
/// slice itself stays loaded while the soak runs and is not counted).
pub fn units_left(prefix: &str) -> Option<usize> {
    let out = Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            &format!("{prefix}*"),
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|u| u.ends_with(".scope"))
            })
            .count()
    })
}

/// Directories below `<mount>/<name>` (and below the systemd slice's directory).
pub fn dirs_left(layout: &CgroupLayout, guard: &BenchCgroups, slice_dir: Option<&str>) -> usize {
    let mut n = guard.leftovers().len();
    if let Some(s) = slice_dir {
        for m in util::mounts(layout) {
            let d = m.join(s);
            if d.is_dir() {
                // Below the slice: the slice's own directory stays while the soak runs.
                n += walk_count(&d) - 1;
            }
        }
    }
    n
}

fn walk_count(d: &Path) -> usize {
    1 + std::fs::read_dir(d)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| walk_count(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}
