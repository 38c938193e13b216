//! The bench's own cgroups: the host layouts a bench needs, the guard that owns the
//! `hcgbench-<random>` names and removes them, and this process's way back home.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};

use super::{own_tids, random_u32};
use crate::BenchError;

/// The host layout, for a bench that needs cgroup v1 (thread placement).
pub fn v1_layout() -> Result<CgroupLayout, BenchError> {
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    if layout.version() != CgroupVersion::V1 {
        return Err(BenchError::Unsupported(
            "this bench needs cgroup v1 (legacy or hybrid): per-thread placement exists only there"
                .into(),
        ));
    }
    Ok(layout)
}

/// The host layout, for a bench that places single threads: cgroup v1 (legacy or
/// hybrid: a thread moves through `tasks`) or v2 (unified: a thread moves inside a
/// threaded subtree through `cgroup.threads`). Fails with `Unsupported` when no
/// cgroup hierarchy is mounted, or when it is v1 without a `cpu` hierarchy or v2
/// without the `cpu` controller (the split layouts place vCPUs by CPU controller).
pub fn thread_layout() -> Result<CgroupLayout, BenchError> {
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    let has_cpu = match layout.version() {
        CgroupVersion::V1 => layout.mounts.contains_key("cpu"),
        CgroupVersion::V2 => layout.v2_controllers.iter().any(|c| c == "cpu"),
    };
    if !has_cpu {
        return Err(BenchError::Unsupported(format!(
            "this bench needs the cpu controller ({}), which this cgroup v{} host does not offer",
            match layout.version() {
                CgroupVersion::V1 => "a v1 cpu hierarchy",
                CgroupVersion::V2 => "in the unified root's cgroup.controllers",
            },
            layout.version()
        )));
    }
    Ok(layout)
}

/// Every cgroup mount point of the layout (v1 hierarchies and the unified one).
pub fn mounts(layout: &CgroupLayout) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = layout.mounts.values().cloned().collect();
    if let Some(u) = &layout.unified {
        v.push(u.clone());
    }
    v.sort();
    v.dedup();
    v
}

/// Owns the name `hcgbench-<random>` in every hierarchy and removes what is
/// below it (and below `kata_overhead/<name>`) on drop, children first, after
/// moving this process's own threads back to where they came from. Foreign
/// tasks are never touched: a cgroup holding one is left in place.
#[derive(Debug)]
pub struct BenchCgroups {
    /// `hcgbench-<random>`.
    pub name: String,
    layout: CgroupLayout,
    /// `kata_overhead` directories that did not exist before this guard.
    overhead_parents: Vec<PathBuf>,
}

impl BenchCgroups {
    /// A fresh name on `layout`.
    pub fn new(layout: &CgroupLayout) -> Self {
        let overhead_parents = mounts(layout)
            .into_iter()
            .map(|m| m.join(host_cgroups::path::OVERHEAD_PARENT))
            .filter(|p| !p.exists())
            .collect();
        BenchCgroups {
            name: format!("hcgbench-{:08x}", random_u32()),
            layout: layout.clone(),
            overhead_parents,
        }
    }

    /// Directories that exist below the guarded names, deepest first.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in mounts(&self.layout) {
            for top in [
                m.join(&self.name),
                m.join(host_cgroups::path::OVERHEAD_PARENT).join(&self.name),
            ] {
                if top.is_dir() {
                    walk(&top, &mut out);
                }
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        out
    }

    /// Removes everything below the guarded names now.
    ///
    /// On a cgroup v2 hierarchy (no `tasks` file) a thread cannot leave its threaded
    /// subtree alone, so when any of this process's threads is in a guarded cgroup
    /// (`cgroup.threads`, readable in threaded cgroups too, unlike `cgroup.procs`)
    /// the whole process is moved back to its original cgroup first.
    pub fn clean(&self) {
        let own = own_tids();
        let me = std::process::id().to_string();
        for mount in mounts(&self.layout) {
            if mount.join("tasks").exists() {
                continue;
            }
            let ours_inside = self.leftovers().iter().any(|d| {
                d.starts_with(&mount)
                    && std::fs::read_to_string(d.join("cgroup.threads")).is_ok_and(|t| {
                        t.lines()
                            .filter_map(|l| l.trim().parse::<i32>().ok())
                            .any(|id| own.contains(&id))
                    })
            });
            if ours_inside {
                let home = home_of(&self.layout, &mount);
                let _ = std::fs::write(home.join("cgroup.procs"), &me);
            }
        }
        for d in self.leftovers() {
            let Some(mount) = mounts(&self.layout)
                .into_iter()
                .filter(|m| d.starts_with(m))
                .max_by_key(|m| m.components().count())
            else {
                continue;
            };
            let file = if mount.join("tasks").exists() {
                "tasks"
            } else {
                "cgroup.procs"
            };
            let home = home_of(&self.layout, &mount);
            if let Ok(t) = std::fs::read_to_string(d.join(file)) {
                for id in t.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if own.contains(&id) {
                        let _ = std::fs::write(home.join(file), id.to_string());
                    }
                }
            }
            let start = Instant::now();
            while std::fs::remove_dir(&d).is_err()
                && d.exists()
                && start.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for p in &self.overhead_parents {
            // Only when empty: another sandbox may have started using it meanwhile.
            let _ = std::fs::remove_dir(p);
        }
    }
}

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        self.clean();
    }
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
}

/// This process's original cgroup directory in the hierarchy mounted at `mount`.
pub fn home_of(layout: &CgroupLayout, mount: &Path) -> PathBuf {
    layout
        .mounts
        .iter()
        .find(|(_, m)| m.as_path() == mount)
        .and_then(|(c, _)| layout.own.get(c))
        .or_else(|| {
            (layout.unified.as_deref() == Some(mount))
                .then(|| layout.own.get("unified"))
                .flatten()
        })
        .map(|p| mount.join(p.trim_start_matches('/')))
        .unwrap_or_else(|| mount.to_path_buf())
}

/// Moves this whole process back to its original cgroup in every v1
/// hierarchy where it is elsewhere now (after `cgroups-rs` moved it to the root).
pub fn restore_home(layout: &CgroupLayout) -> Result<(), BenchError> {
    let now = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .map_err(|e| BenchError::step("read /proc/self/cgroup", e))?;
    let me = std::process::id().to_string();
    for (c, m) in &layout.mounts {
        let Some(own) = layout.own.get(c) else {
            continue;
        };
        if now.get(c) == Some(own) || !m.join("cgroup.procs").exists() {
            continue;
        }
        let file = m.join(own.trim_start_matches('/')).join("cgroup.procs");
        std::fs::write(&file, &me)
            .map_err(|e| BenchError::step(format!("move back to {}", file.display()), e))?;
    }
    Ok(())
}
