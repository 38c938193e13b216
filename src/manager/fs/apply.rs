//! Applying resources: the writes a `LinuxResources` needs on this host, in the
//! kernel's order, with the previous values kept for rollback; the checks made
//! before anything is written (real-time bandwidth, cpusets); freezing.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use tracing::warn;

use super::io::{io_err, read_file, read_whole, write_file};
use super::FsManager;
use crate::host::{online_cpus, CgroupVersion};
use crate::manager::CgroupError;
use crate::resources::{self, Checked, CpuList};

/// The hierarchies a probe was made on: v1 mounts and the unified mount.
type SupportKey = (BTreeMap<String, PathBuf>, Option<PathBuf>);

/// The last [`resources::HostSupport`] probed by this driver, and where (see `FsManager::plan`).
static SUPPORT: Mutex<Option<(SupportKey, resources::HostSupport)>> = Mutex::new(None);

impl FsManager {
    /// [`crate::manager::Manager::set`]: every write or none (rollback in reverse order).
    pub(super) fn set_all(&mut self, res: &Checked) -> Result<(), CgroupError> {
        let mut undo = Vec::new();
        let r = self.set_inner(res, &mut undo);
        if r.is_err() {
            for (path, old) in undo.iter().rev() {
                if let Err(e) = write_file(path, old) {
                    warn!(error = %e, "could not restore previous value");
                }
            }
        }
        r
    }

    /// [`crate::manager::Manager::check`]: what `set` would refuse, with nothing written.
    pub(super) fn check_all(&self, res: &Checked) -> Result<(), CgroupError> {
        self.plan(res)?;
        self.check_rt(res.resources())?;
        self.check_cpuset(res.resources())
    }

    fn set_inner(
        &mut self,
        res: &Checked,
        undo: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), CgroupError> {
        let mut writes = self.plan(res)?;
        self.check_cpuset(res.resources())?;
        self.order_memory(&mut writes)?;
        let mut known = std::mem::take(&mut self.initial);
        let r = self.apply_writes_known(&writes, undo, &mut known);
        self.initial = known;
        r
    }

    /// The writes `res` needs on this host ([`resources::plan_for`]), against what the
    /// kernel offers. Probing that costs some twenty calls (a `statx` per feature file,
    /// the huge page sizes), so it is kept per process and hierarchy set and reused; what
    /// it finds is fixed at boot (kernel build, `swapaccount`, huge page sizes, mounts)
    /// except a block I/O scheduler module loaded or unloaded later. A refusal is never
    /// made on a kept probe: the host is probed again and the plan made again, so a
    /// feature that appeared since is seen. A feature gone since shows as the failed
    /// write naming its file.
    fn plan(&self, res: &Checked) -> Result<Vec<resources::Write>, CgroupError> {
        if let Some(kept) = self.kept_support() {
            if let Ok(w) = resources::plan_for(res, self.version, &kept) {
                return Ok(w);
            }
        }
        let fresh = resources::HostSupport::probe(&self.layout);
        let r = resources::plan_for(res, self.version, &fresh);
        if let Ok(mut kept) = SUPPORT.lock() {
            *kept = Some((self.support_key(), fresh));
        }
        Ok(r?)
    }

    fn support_key(&self) -> SupportKey {
        (self.layout.mounts.clone(), self.layout.unified.clone())
    }

    fn kept_support(&self) -> Option<resources::HostSupport> {
        let kept = SUPPORT.lock().ok()?;
        match kept.as_ref() {
            Some((k, s)) if *k == self.support_key() => Some(s.clone()),
            _ => None,
        }
    }

    /// v1: orders the memory limit and memory+swap writes by the kernel's rule
    /// ([`resources::memsw_first`]) against the limit in force.
    pub(crate) fn order_memory(&self, writes: &mut [resources::Write]) -> Result<(), CgroupError> {
        if self.version != CgroupVersion::V1 {
            return Ok(());
        }
        if !writes
            .iter()
            .any(|w| w.file == "memory.memsw.limit_in_bytes")
        {
            return Ok(());
        }
        let cur = self.dir_of("memory")?.join("memory.limit_in_bytes");
        // Absent (not created yet): the kernel's initial limit is unlimited.
        let current = read_file(&cur)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        resources::order_v1_memory(writes, current);
        Ok(())
    }

    /// Writes each of `writes` in order, recording the previous values (read from each
    /// file before its write) in `undo`.
    /// On v2 every file lives in the one directory (OCI `unified` keys too).
    /// Used by the systemd driver (its v1 cpuset writes).
    #[cfg_attr(not(feature = "systemd"), allow(dead_code))]
    pub(crate) fn apply_writes(
        &self,
        writes: &[resources::Write],
        undo: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), CgroupError> {
        self.apply_writes_known(writes, undo, &mut BTreeMap::new())
    }

    /// [`Self::apply_writes`], where a file listed in `known` is not read: its value there
    /// is recorded instead, and the entry dropped once the file is written. `set` passes
    /// the values a leaf the last `create` made was made with (the parent's cpuset as
    /// filled, the kernel's defaults of [`new_cgroup_values`]), so rollback restores the
    /// cgroup as made; a value another process wrote there in between is not kept.
    fn apply_writes_known(
        &self,
        writes: &[resources::Write],
        undo: &mut Vec<(PathBuf, String)>,
        known: &mut BTreeMap<PathBuf, String>,
    ) -> Result<(), CgroupError> {
        for w in writes {
            let dir = match self.version {
                CgroupVersion::V2 => self.first_dir()?,
                CgroupVersion::V1 => self.dir_of(w.controller.name())?,
            };
            let path = dir.join(&w.file);
            let old = match known.get(&path) {
                Some(v) => v.clone(),
                None => read_file(&path)?,
            };
            write_file(&path, &w.value)?;
            known.remove(&path);
            undo.push((path, resources::restore_value(&w.file, &old)));
        }
        Ok(())
    }

    /// Real-time bandwidth (v1): the kernel lets a cgroup have only what its parent
    /// grants, and a parent this manager creates starts with none; refused before
    /// anything is created, naming the parent's value.
    /// Both drivers run it: on the systemd driver the parent is the unit's slice.
    pub(crate) fn check_rt(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        let Some(cpu) = res.cpu() else { return Ok(()) };
        let Some(runtime) = cpu.realtime_runtime() else {
            return Ok(());
        };
        if self.version != CgroupVersion::V1 || runtime == 0 {
            return Ok(());
        }
        let dir = self.dir_of("cpu")?;
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        let field = "cpu.realtimeRuntime".to_string();
        if !parent.is_dir() {
            return Err(resources::ResourceError::Unsupported {
                field,
                reason: format!(
                    "the parent cgroup {} does not exist yet and would be created with cpu.rt_runtime_us = 0, which grants no real-time time to children",
                    parent.display()
                ),
            }
            .into());
        }
        let p_runtime: i64 = read_file(&parent.join("cpu.rt_runtime_us"))?
            .parse()
            .unwrap_or(0);
        let p_period: i64 = read_file(&parent.join("cpu.rt_period_us"))?
            .parse()
            .unwrap_or(1);
        let period = cpu
            .realtime_period()
            .and_then(|p| i64::try_from(p).ok())
            .unwrap_or(p_period);
        // runtime/period <= p_runtime/p_period, cross-multiplied in 128 bits.
        let enough = if runtime < 0 {
            p_runtime < 0
        } else {
            p_runtime < 0
                || i128::from(runtime) * i128::from(p_period.max(1))
                    <= i128::from(p_runtime) * i128::from(period.max(1))
        };
        if !enough {
            return Err(resources::ResourceError::Unsupported {
                field,
                reason: format!(
                    "{runtime} µs per {period} µs is more than the parent {} grants (cpu.rt_runtime_us = {p_runtime} per {p_period} µs)",
                    parent.display()
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Checks requested CPUs and memory nodes against the host and the parent cgroup.
    pub(crate) fn check_cpuset(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        let (cpus, mems) = resources::cpuset_of(res)?;
        if cpus.is_none() && mems.is_none() {
            return Ok(());
        }
        let dir = self.dir_of("cpuset")?;
        // The nearest existing ancestor grants the CPUs: the cgroup may not exist yet.
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|a| a.is_dir())
            .unwrap_or(&dir)
            .to_path_buf();
        let eff = |name: &str| -> Result<Option<CpuList>, CgroupError> {
            // v2 lists what the parent really grants in *.effective; v1 in the plain file.
            let f = match self.version {
                CgroupVersion::V1 => parent.join(name),
                CgroupVersion::V2 => parent.join(format!("{name}.effective")),
            };
            match read_whole(&f) {
                Ok(s) => Ok(Some(CpuList::parse("cpus", s.trim())?)),
                Err(_) => Ok(None),
            }
        };
        if let (Some(want), Some(cpu)) = (&cpus, res.cpu()) {
            let raw = cpu.cpus().clone().unwrap_or_default();
            want.check_within("cpus", &raw, &online_cpus()?)?;
            if let Some(avail) = eff("cpuset.cpus")? {
                if !avail.is_empty() {
                    want.check_within("cpus", &raw, &avail)?;
                }
            }
        }
        if let (Some(want), Some(cpu)) = (&mems, res.cpu()) {
            let raw = cpu.mems().clone().unwrap_or_default();
            if let Some(avail) = eff("cpuset.mems")? {
                if !avail.is_empty() {
                    want.check_within("mems", &raw, &avail)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn freeze_to(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value, state_file, want) = match self.version {
            CgroupVersion::V1 => (
                self.dir_of("freezer")?.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
                None,
                "",
            ),
            CgroupVersion::V2 => (
                self.first_dir()?.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                Some(self.first_dir()?.join("cgroup.events")),
                if frozen { "frozen 1" } else { "frozen 0" },
            ),
        };
        write_file(&file, value)?;
        // Freezing is asynchronous: v1 passes through FREEZING, v2 reports in cgroup.events.
        let start = Instant::now();
        loop {
            let done = match &state_file {
                None => read_file(&file)? == value,
                Some(ev) => read_file(ev)?.lines().any(|l| l.trim() == want),
            };
            if done {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(5) {
                return Err(io_err(
                    format!("wait for {value:?} in"),
                    &file,
                    std::io::Error::from(ErrorKind::TimedOut),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
