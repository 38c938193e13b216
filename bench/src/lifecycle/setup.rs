//! The three implementations of one sandbox cgroup lifecycle, and what every
//! iteration needs, computed once.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use crate::util;
use crate::BenchError;
use host_cgroups::host::CgroupLayout;
use host_cgroups::manager::{FsManager, Manager};
use host_cgroups::resources;

/// One implementation of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// This project's `FsManager`.
    Project,
    /// `cgroups-rs` 0.5.1's `FsManager`, used directly.
    CgroupsRs,
    /// The bare mkdir/write/rmdir calls, by hand.
    Floor,
}

impl Impl {
    /// Every implementation, in the order of the table.
    pub const ALL: [Impl; 3] = [Impl::Project, Impl::CgroupsRs, Impl::Floor];

    /// Its name in the results and on `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Project => "host-cgroups",
            Impl::CgroupsRs => "cgroups-rs",
            Impl::Floor => "floor",
        }
    }

    /// The implementation named `s`.
    pub fn parse(s: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == s)
    }
}

/// What every iteration needs, computed once.
pub struct Setup {
    layout: CgroupLayout,
    relative: String,
    res: LinuxResources,
    /// The cpuset every lifecycle sets: the first online CPU.
    pub cpus: String,
    mems: String,
    /// The CPU quota every lifecycle sets, in µs per period.
    pub quota_us: i64,
    /// The CFS period, in µs.
    pub period_us: u64,
    /// The floor's directories: (cgroup dir, this process's home dir), one per hierarchy.
    floor_dirs: Vec<(PathBuf, PathBuf)>,
    floor_cpuset: PathBuf,
    floor_cpu: PathBuf,
    me: i32,
}

impl Setup {
    /// The setup for cgroups named `relative` on `layout` (cgroup v1).
    pub fn new(layout: &CgroupLayout, relative: &str) -> Result<Self, BenchError> {
        let cpus = host_cgroups::host::online_cpus()
            .map_err(|e| BenchError::step("online CPUs", e))?
            .iter()
            .next()
            .unwrap_or(0)
            .to_string();
        let mems = "0".to_string();
        let (quota, period) = (50_000_i64, 100_000_u64);
        let res = resources::from_json(
            &json!({"cpu": {"cpus": cpus, "mems": mems, "quota": quota, "period": period}})
                .to_string(),
        )
        .map_err(|e| BenchError::step("resources", e))?;
        let floor_dirs: Vec<(PathBuf, PathBuf)> = layout
            .v1_hierarchies()
            .into_iter()
            .map(|(mount, _)| (mount.join(relative), util::home_of(layout, &mount)))
            .collect();
        let dir_of = |c: &str| {
            layout
                .mounts
                .get(c)
                .map(|m| m.join(relative))
                .ok_or_else(|| BenchError::Unsupported(format!("no {c} hierarchy")))
        };
        Ok(Setup {
            layout: layout.clone(),
            relative: relative.to_string(),
            floor_cpuset: dir_of("cpuset")?,
            floor_cpu: dir_of("cpu")?,
            res,
            cpus,
            mems,
            quota_us: quota,
            period_us: period,
            floor_dirs,
            me: std::process::id() as i32,
        })
    }

    /// One lifecycle of `which`.
    pub fn once(&self, which: Impl) -> Result<(), BenchError> {
        match which {
            Impl::Project => {
                let mut m = FsManager::new(&self.layout, &self.relative);
                m.create()
                    .map_err(|e| BenchError::step("host-cgroups create", e))?;
                // Validated in the timed lifecycle, as a runtime's entry point validates
                // the resources it is handed (cgroups-rs below is handed the same value).
                let res = resources::Checked::new(self.res.clone())
                    .map_err(|e| BenchError::step("host-cgroups set", e))?;
                m.set(&res)
                    .map_err(|e| BenchError::step("host-cgroups set", e))?;
                m.add_proc(self.me)
                    .map_err(|e| BenchError::step("host-cgroups add_proc", e))?;
                m.destroy()
                    .map_err(|e| BenchError::step("host-cgroups destroy", e))?;
            }
            Impl::CgroupsRs => {
                use cgroups_rs::manager::Manager as _;
                let mut m = cgroups_rs::manager::FsManager::new(&self.relative)
                    .map_err(|e| BenchError::step("cgroups-rs new", e))?;
                // cgroups-rs creates the cgroup on the first add_proc.
                m.add_proc(cgroups_rs::CgroupPid::from(self.me as u64))
                    .map_err(|e| BenchError::step("cgroups-rs add_proc", e))?;
                m.set(&self.res)
                    .map_err(|e| BenchError::step("cgroups-rs set", e))?;
                m.destroy()
                    .map_err(|e| BenchError::step("cgroups-rs destroy", e))?;
            }
            Impl::Floor => self.floor()?,
        }
        Ok(())
    }

    /// The bare system calls: mkdir per hierarchy, four writes, a move in and out, rmdir.
    fn floor(&self) -> Result<(), BenchError> {
        let write = |p: PathBuf, v: &str| -> Result<(), BenchError> {
            OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(v.as_bytes()))
                .map_err(|e| BenchError::step(format!("floor: write {v} to {}", p.display()), e))
        };
        for (d, _) in &self.floor_dirs {
            std::fs::create_dir(d)
                .map_err(|e| BenchError::step(format!("floor: mkdir {}", d.display()), e))?;
        }
        write(self.floor_cpuset.join("cpuset.cpus"), &self.cpus)?;
        write(self.floor_cpuset.join("cpuset.mems"), &self.mems)?;
        write(
            self.floor_cpu.join("cpu.cfs_period_us"),
            &self.period_us.to_string(),
        )?;
        write(
            self.floor_cpu.join("cpu.cfs_quota_us"),
            &self.quota_us.to_string(),
        )?;
        let me = self.me.to_string();
        for (d, _) in &self.floor_dirs {
            write(d.join("cgroup.procs"), &me)?;
        }
        for (_, home) in &self.floor_dirs {
            write(home.join("cgroup.procs"), &me)?;
        }
        for (d, _) in &self.floor_dirs {
            std::fs::remove_dir(d)
                .map_err(|e| BenchError::step(format!("floor: rmdir {}", d.display()), e))?;
        }
        Ok(())
    }

    /// Directories the implementation creates (one per hierarchy it uses).
    pub fn dirs(&self, which: Impl) -> usize {
        match which {
            Impl::Project | Impl::Floor => self.floor_dirs.len(),
            Impl::CgroupsRs => self
                .layout
                .mounts
                .values()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        }
    }
}
