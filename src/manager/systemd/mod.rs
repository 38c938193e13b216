//! `SystemdManager`: the systemd driver, for `slice:prefix:name` cgroups paths.
//!
//! systemd owns the unit's cgroup, so every change goes through it over D-Bus:
//! the scope is started with `StartTransientUnit`, resources are unit properties
//! (`SetUnitProperties`), and removal is `StopUnit`. cgroupfs is written only
//! where systemd does not manage a controller itself: on cgroup v1 the cpuset and
//! freezer hierarchies (and the memory+swap and soft limits, which have no unit
//! property). Reads (`procs`, `threads`, `stats`) come from cgroupfs.
//!
//! The requests go through a [`client::SystemdClient`], named after systemd's D-Bus
//! API; the real one is [`dbus::Bus`], connected on first use. Unit tests give the
//! driver a scripted one instead, so its rules are tested without systemd.
//!
//! `create` only opens the bus connection and checks that systemd answers: a
//! scope cannot exist without a process, so the unit is started by the first
//! `add_proc`, with every property `set` was given before. A `.slice` unit is
//! started by `create` itself (a slice holds no processes).

pub mod client;
pub mod dbus;
pub use crate::resources::systemd as props;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use self::client::{BusError, SystemdClient, NO_SUCH_UNIT, UNIT_EXISTS};
use self::dbus::Bus;
use self::props::{UnitProperty, SYSTEMD_ATTACH, SYSTEMD_FREEZE};
use super::fs::{read_file, write_file};
use super::{CgroupError, FsManager, Manager, Stats};
use crate::cgroup::{Controller, HierarchyKey};
use crate::host::{CgroupLayout, CgroupVersion, DirSet};
use crate::metrics::{IncMetric, METRICS};
use crate::path::{Driver, SystemdUnit};
use crate::resources::Checked;
use crate::resources::{self, Write};

pub use crate::sigterm::{ignore_sigterm_during, SigtermIgnored};

/// How long a systemd job (start, stop) and each D-Bus call may take by default.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// v1 hierarchies systemd does not manage; the driver makes the unit's directory there itself.
const UNMANAGED_V1: [&str; 5] = ["cpuset", "freezer", "hugetlb", "net_cls", "net_prio"];
/// How long `destroy` waits for the other processes of a unit we sit in to exit.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// The systemd driver.
pub struct SystemdManager {
    unit: SystemdUnit,
    version: CgroupVersion,
    relative: String,
    /// Reads cgroupfs at the unit's cgroup (all hierarchies); never creates or removes.
    reader: FsManager,
    /// v1 only: the cpuset and freezer hierarchies, which this driver fills itself.
    unmanaged: Option<FsManager>,
    /// systemd, once connected ([`Self::client`] connects on first use). A boxed trait
    /// object rather than a type parameter: the driver is used as a `Box<dyn Manager>` and
    /// named `SystemdManager` by embedders, so a parameter would only leak into their
    /// types, and one dynamic call is nothing next to the D-Bus round trip behind it.
    /// Unit tests put a scripted client here (`with_client`).
    client: Option<Box<dyn SystemdClient>>,
    timeout: Duration,
    /// The unit exists and holds (or held) our process.
    started: bool,
    /// Resources given before the unit existed; they go with `StartTransientUnit`.
    pending: Option<Checked>,
    /// The host layout (for probing what the kernel offers).
    layout: CgroupLayout,
}

impl std::fmt::Debug for SystemdManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdManager")
            .field("unit", &self.unit.unit)
            .field("slice", &self.unit.slice)
            .field("version", &self.version)
            .field("started", &self.started)
            .field("bus", &self.client)
            .finish()
    }
}

fn unreachable(e: BusError) -> CgroupError {
    CgroupError::SystemdUnreachable {
        address: dbus::bus_address(),
        message: e.to_string(),
    }
}

/// systemd's version over D-Bus, when it answers within `timeout` (for `check`).
pub fn query_version(timeout: Duration) -> Option<u32> {
    Bus::connect(timeout).ok().and_then(|b| b.version)
}

impl SystemdManager {
    /// A manager for `unit` on `layout`; touches nothing yet.
    pub fn new(layout: &CgroupLayout, unit: &SystemdUnit) -> Self {
        Self::adopt(layout, unit, Vec::new())
    }

    /// A manager that also owns `created` v1 cpuset/freezer directories (restored from state).
    pub fn adopt(layout: &CgroupLayout, unit: &SystemdUnit, created: Vec<PathBuf>) -> Self {
        let relative = unit.cgroup_path();
        let version = layout.version();
        let unmanaged = (version == CgroupVersion::V1).then(|| {
            let mut only = layout.clone();
            only.mounts
                .retain(|c, _| UNMANAGED_V1.contains(&c.as_str()));
            FsManager::adopt(&only, &relative, created)
        });
        SystemdManager {
            unit: unit.clone(),
            version,
            reader: FsManager::new(layout, &relative),
            relative,
            unmanaged,
            client: None,
            timeout: DEFAULT_JOB_TIMEOUT,
            started: false,
            pending: None,
            layout: layout.clone(),
        }
    }

    /// Bounds every D-Bus call and job wait by `timeout` instead of 30 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The manager talking to systemd through `client` (already connected) instead of
    /// connecting to the system bus on first use: for unit tests with a scripted client.
    #[cfg(test)]
    pub(crate) fn with_client(mut self, client: Box<dyn SystemdClient>) -> Self {
        self.client = Some(client);
        self
    }

    /// The unit's name (`<prefix>-<name>.scope` or a slice).
    pub fn unit(&self) -> &str {
        &self.unit.unit
    }

    /// systemd's version, once connected.
    pub fn systemd_version(&self) -> Option<u32> {
        self.client.as_ref().and_then(|c| c.version())
    }

    /// A refusal or failed job on this unit (counted in the metrics).
    fn err(&self, what: &str, e: impl std::fmt::Display) -> CgroupError {
        METRICS.systemd_job_failures.inc();
        CgroupError::SystemdUnit {
            unit: self.unit.unit.clone(),
            message: format!("{what}: {e}"),
        }
    }

    /// The client, connecting to the system bus first when there is none yet (watching
    /// the unit's signals, see [`Bus::connect_watching`], within the driver's timeout).
    ///
    /// # Errors
    /// [`CgroupError::SystemdUnreachable`] when systemd does not answer on the bus; the
    /// next call tries again.
    fn client(&mut self) -> Result<&mut (dyn SystemdClient + 'static), CgroupError> {
        if self.client.is_none() {
            let bus = Bus::connect_watching(self.timeout, &self.unit.unit).map_err(unreachable)?;
            self.client = Some(Box::new(bus));
        }
        // Just set when it was missing.
        self.client
            .as_deref_mut()
            .ok_or_else(|| CgroupError::SystemdUnreachable {
                address: dbus::bus_address(),
                message: "no connection".into(),
            })
    }

    /// Leaves out (with a warning) what this systemd is too old for.
    fn gated(&mut self, props: Vec<UnitProperty>) -> Result<Vec<UnitProperty>, CgroupError> {
        let version = self.client()?.version();
        let (kept, dropped) = props::gate(props, version);
        for p in dropped {
            warn!(
                unit = %self.unit.unit,
                property = p.name,
                needs = p.min_systemd,
                systemd = version,
                "systemd is too old for this property; it is not applied"
            );
        }
        Ok(kept)
    }

    fn active_state(&mut self) -> Result<Option<String>, CgroupError> {
        let unit = self.unit.unit.clone();
        match self.client()?.unit_state(&unit, "ActiveState") {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is(NO_SUCH_UNIT) => Ok(None),
            Err(e) => Err(self.err("reading ActiveState", e)),
        }
    }

    fn reset_failed(&mut self) -> Result<(), CgroupError> {
        let unit = self.unit.unit.clone();
        match self.client()?.reset_failed_unit(&unit) {
            Ok(_) => Ok(()),
            Err(e) if e.is(NO_SUCH_UNIT) => Ok(()),
            Err(e) => Err(self.err("ResetFailedUnit", e)),
        }
    }

    /// Starts the unit (with `pid` for a scope), or joins it when it already runs.
    fn start(&mut self, pid: Option<i32>) -> Result<(), CgroupError> {
        let mut props = props::start_properties(&self.unit, self.version, pid.map(|p| p as u32));
        if let Some(res) = &self.pending {
            props.extend(props::resource_properties(res, self.version)?);
        }
        let props = self.gated(props)?;
        let unit = self.unit.unit.clone();
        for attempt in 0..2 {
            match self
                .client()?
                .start_transient_unit(&unit, "replace", &props)
            {
                Ok(j) if j.result == "done" => {
                    debug!(unit = %unit, job = %j.job, "unit started");
                    self.started = true;
                    return Ok(());
                }
                Ok(j) => {
                    // Leave nothing behind: a failed transient unit stays loaded until reset.
                    let _ = self.reset_failed();
                    return Err(self.err(
                        "StartTransientUnit",
                        format!(
                            "job {} ended '{}' (see `journalctl -u {unit}`)",
                            j.job, j.result
                        ),
                    ));
                }
                Err(e) if e.is(UNIT_EXISTS) => {
                    let state = self.active_state()?;
                    match state.as_deref() {
                        Some("active") | Some("activating") | Some("reloading") => {
                            // A restarted runtime adopting its sandbox: join, don't recreate.
                            info!(unit = %unit, "unit exists; joining it");
                            self.started = true;
                            if let Some(pid) = pid {
                                self.attach(pid)?;
                            }
                            if let Some(res) = self.pending.clone() {
                                self.set_properties(&res)?;
                            }
                            return Ok(());
                        }
                        _ if attempt == 0 => {
                            // A failed (or stopped but still loaded) leftover: reset it and start once more.
                            info!(unit = %unit, state = ?state, "resetting a leftover unit");
                            self.reset_failed()?;
                        }
                        _ => {
                            return Err(self.err(
                                "StartTransientUnit",
                                format!("{e} (the unit is {})", state.as_deref().unwrap_or("gone")),
                            ))
                        }
                    }
                }
                Err(e) => return Err(self.err("StartTransientUnit", e)),
            }
        }
        Err(self.err("StartTransientUnit", "the unit still exists after a reset"))
    }

    fn attach(&mut self, pid: i32) -> Result<(), CgroupError> {
        let unit = self.unit.unit.clone();
        let client = self.client()?;
        if client.version().is_some_and(|v| v < SYSTEMD_ATTACH) {
            return Err(CgroupError::SystemdUnit {
                unit,
                message: format!(
                    "joining a running unit needs AttachProcessesToUnit (systemd ≥ {SYSTEMD_ATTACH}); this is systemd {}",
                    client.version_string()
                ),
            });
        }
        // "/" is the unit's own cgroup; systemd moves the whole thread group.
        match client.attach_processes_to_unit(&unit, "/", &[pid as u32]) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(&format!("AttachProcessesToUnit pid {pid}"), e)),
        }
    }

    /// `SetUnitProperties` (runtime) with the unit properties of `res`.
    fn set_properties(&mut self, res: &Checked) -> Result<(), CgroupError> {
        let props = props::resource_properties(res, self.version)?;
        let props = self.gated(props)?;
        if props.is_empty() {
            return Ok(());
        }
        let unit = self.unit.unit.clone();
        let names: Vec<&str> = props.iter().map(|p| p.name).collect();
        match self.client()?.set_unit_properties(&unit, true, &props) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(&format!("SetUnitProperties {names:?}"), e)),
        }
    }

    /// The directory holding `controller`'s files for the unit: the unmanaged
    /// hierarchies' (v1 cpuset, freezer, hugetlb, net_cls, net_prio) or systemd's.
    fn dir_of(&self, controller: &str) -> Result<PathBuf, CgroupError> {
        let from_unmanaged = self
            .unmanaged
            .as_ref()
            .and_then(|u| u.paths().remove(controller));
        let from_reader = || {
            let mut p = self.reader.paths();
            match self.version {
                CgroupVersion::V2 => p.remove("unified"),
                CgroupVersion::V1 => p.remove(controller),
            }
        };
        from_unmanaged
            .or_else(from_reader)
            .ok_or_else(|| CgroupError::NoController {
                controller: controller.into(),
                path: PathBuf::from(&self.relative),
            })
    }

    /// The cgroupfs part of `res` (what systemd has no property for, see
    /// [`props::cgroupfs_writes`]) around the unit properties. On v1 the memory limit
    /// is a property and memory+swap a file: which goes first is the kernel's rule
    /// in [`resources::memsw_first`], the one the cgroupfs driver uses too.
    fn apply(&mut self, res: &Checked, with_properties: bool) -> Result<(), CgroupError> {
        let support = resources::HostSupport::probe(&self.layout);
        let writes: Vec<Write> = props::cgroupfs_writes_for(res, self.version, &support)?;
        let (cpuset, rest): (Vec<Write>, Vec<Write>) = writes
            .into_iter()
            .partition(|w| w.controller == HierarchyKey::Controller(Controller::Cpuset));
        let mut undo: Vec<(PathBuf, String)> = Vec::new();
        let r = (|| -> Result<(), CgroupError> {
            if !cpuset.is_empty() {
                if let Some(u) = self.unmanaged.as_ref() {
                    u.apply_writes(&cpuset, &mut undo)?;
                }
            }
            let memsw_pos = rest
                .iter()
                .position(|w| w.file == "memory.memsw.limit_in_bytes");
            let mut before = Vec::new();
            let mut after = Vec::new();
            for (i, w) in rest.into_iter().enumerate() {
                let first = Some(i) == memsw_pos && {
                    let cur = read_file(&self.dir_of("memory")?.join("memory.limit_in_bytes"))
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    let new: i64 = w.value.parse().unwrap_or(-1);
                    resources::memsw_first(new, cur)
                };
                if first {
                    before.push(w);
                } else {
                    after.push(w);
                }
            }
            self.write_all(&before, &mut undo)?;
            if with_properties {
                self.set_properties(res)?;
            }
            self.write_all(&after, &mut undo)
        })();
        if r.is_err() {
            for (p, old) in undo.iter().rev() {
                if let Err(re) = write_file(p, old) {
                    warn!(error = %re, file = %p.display(), "could not restore the previous value");
                }
            }
        }
        r
    }

    fn write_all(
        &self,
        writes: &[Write],
        undo: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), CgroupError> {
        for w in writes {
            let path = self.dir_of(w.controller.name())?.join(&w.file);
            let old = read_file(&path)?;
            write_file(&path, &w.value)?;
            // What reading gave is not always what writing takes (v1 memory.oom_control).
            undo.push((path, super::fs::restore_value(&w.file, &old)));
        }
        Ok(())
    }

    /// Whether this process is in the unit's cgroup.
    fn self_inside(&self) -> bool {
        let me = std::process::id() as i32;
        self.reader
            .procs()
            .map(|p| p.contains(&me))
            .unwrap_or(false)
    }

    /// `StopUnit` while this process is in the unit: the job only ends when we exit, so
    /// wait until systemd has sent its SIGTERM (the unit is in `stop-sigterm`), with
    /// SIGTERM ignored meanwhile.
    fn stop_self(&mut self) -> Result<(), CgroupError> {
        let unit = self.unit.unit.clone();
        let _ignore = SigtermIgnored::new();
        match self.client()?.stop_unit_no_wait(&unit) {
            Ok(_) => {}
            Err(e) if e.is(NO_SUCH_UNIT) => return Ok(()),
            Err(e) => return Err(self.err("StopUnit", e)),
        }
        crate::failpoint::hit(crate::failpoint::Point::SystemdStopJob)
            .map_err(|e| self.err("StopUnit", e))?;
        let start = Instant::now();
        loop {
            let sub = match self.client()?.unit_state(&unit, "SubState") {
                Ok(s) => s,
                Err(e) if e.is(NO_SUCH_UNIT) => return Ok(()),
                Err(e) => return Err(self.err("reading SubState", e)),
            };
            if matches!(
                sub.as_str(),
                "stop-sigterm" | "stop-sigkill" | "dead" | "failed"
            ) {
                info!(unit = %unit, state = %sub, "stop requested; the unit ends when this process exits");
                return Ok(());
            }
            if start.elapsed() > self.timeout {
                return Err(self.err(
                    "StopUnit",
                    format!(
                        "the unit did not start stopping within {} s (state {sub})",
                        self.timeout.as_secs_f64()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `StopUnit` and its job, then systemd's unloading of the unit (see
    /// [`Bus::stop_unit`]); `ResetFailedUnit` when the unit ended failed; then checks that
    /// systemd removed the unit's cgroup directories.
    fn stop_and_wait(&mut self) -> Result<(), CgroupError> {
        let unit = self.unit.unit.clone();
        let r = self.client()?.stop_unit(&unit);
        let stop = match r {
            Ok(s) => s,
            Err(e) if e.is(NO_SUCH_UNIT) => return Ok(()),
            Err(e) => return Err(self.err("StopUnit", e)),
        };
        if stop.job.result != "done" {
            warn!(unit = %unit, result = %stop.job.result, "stop job did not end 'done'");
            METRICS.systemd_job_failures.inc();
        }
        // A unit that ended failed stays loaded (and its name taken) until reset; a unit
        // systemd unloaded did not.
        if !stop.gone && self.active_state()?.as_deref() == Some("failed") {
            self.reset_failed()?;
        }
        self.check_pruned()
    }

    /// The unit's cgroup directories systemd manages are gone (it prunes them when the unit
    /// becomes inactive); processes that systemd's SIGTERM has not ended yet may keep one
    /// briefly, so this waits up to `EXIT_WAIT` before naming what is left.
    fn check_pruned(&self) -> Result<(), CgroupError> {
        let dirs: Vec<PathBuf> = self
            .reader
            .paths()
            .into_iter()
            .filter(|(c, _)| {
                self.version == CgroupVersion::V2
                    || !(UNMANAGED_V1.contains(&c.name()) || c == "devices")
            })
            .map(|(_, d)| d)
            .collect();
        let start = Instant::now();
        loop {
            let Some(left) = dirs.iter().find(|d| d.exists()) else {
                return Ok(());
            };
            if start.elapsed() >= EXIT_WAIT {
                return Err(self.err(
                    "StopUnit",
                    format!(
                        "the unit stopped but its cgroup {} is still there after {} s",
                        left.display(),
                        EXIT_WAIT.as_secs_f64()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// v1: removes the cpuset/freezer directories, once the unit's other processes are gone.
    fn remove_unmanaged(&mut self) -> Result<(), CgroupError> {
        let Some(u) = self.unmanaged.as_mut() else {
            return Ok(());
        };
        let start = Instant::now();
        loop {
            match u.destroy() {
                // SIGTERMed processes of the unit may need a moment to exit.
                Err(CgroupError::Busy { .. }) if start.elapsed() < EXIT_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }
}

impl Manager for SystemdManager {
    fn driver(&self) -> Driver {
        Driver::Systemd
    }

    fn version(&self) -> CgroupVersion {
        self.version
    }

    fn relative(&self) -> &str {
        &self.relative
    }

    /// The unit's directories, from the directory map ([`CgroupLayout::cgroup_dirs`]):
    /// on v1 without `devices`, which systemd realises only for units with a device
    /// policy (a sandbox scope stays in an ancestor's devices cgroup).
    fn paths(&self) -> BTreeMap<HierarchyKey, PathBuf> {
        self.layout
            .cgroup_dirs(&self.relative, Driver::Systemd, DirSet::Sandbox)
    }

    /// Connects to systemd and checks it answers; starts the unit only when it is a slice.
    fn create(&mut self) -> Result<(), CgroupError> {
        self.client()?;
        if self.unit.is_slice() && !self.started {
            self.start(None)?;
        }
        Ok(())
    }

    /// Starts the scope with `pid` in it (first call), else `AttachProcessesToUnit`.
    fn add_proc(&mut self, pid: i32) -> Result<(), CgroupError> {
        debug!(unit = %self.unit.unit, pid, "add_proc");
        if self.unit.is_slice() {
            return Err(CgroupError::Unsupported {
                what: "placing a process in a slice unit",
                driver: Driver::Systemd,
                version: self.version,
                why: "systemd keeps processes in scopes and services only; use a 'slice:prefix:name' path whose name is not a slice",
            });
        }
        if self.started {
            self.attach(pid)?;
        } else {
            self.start(Some(pid))?;
        }
        if let Some(u) = self.unmanaged.as_mut() {
            // v1: systemd leaves cpuset, freezer, hugetlb, net_cls and net_prio alone;
            // the unit's directories there are ours.
            u.create()?;
        }
        // What went with StartTransientUnit as properties is done; the cgroupfs part now.
        if let Some(res) = self.pending.take() {
            self.apply(&res, false)?;
        }
        if let Some(u) = self.unmanaged.as_mut() {
            u.add_proc(pid)?;
        }
        Ok(())
    }

    /// Same as `add_proc`: systemd places whole processes, so the thread's whole
    /// thread group moves (the kernel moves every thread on a `cgroup.procs` write).
    fn add_thread(&mut self, tid: i32) -> Result<(), CgroupError> {
        self.add_proc(tid)
    }

    fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        self.reader.procs()
    }

    fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        self.reader.threads()
    }

    /// Everything `set` would refuse, before anything exists: the properties, the
    /// cgroupfs part on this host, and the cpuset against the host's online CPUs and
    /// the nearest existing parent (the cgroupfs driver's rule, one home for both).
    fn check(&self, res: &Checked) -> Result<(), CgroupError> {
        props::resource_properties(res, self.version)?;
        let support = resources::HostSupport::probe(&self.layout);
        props::cgroupfs_writes_for(res, self.version, &support)?;
        // v1 real-time bandwidth is a cgroupfs write here too, granted by the slice.
        self.reader.check_rt(res.resources())?;
        self.reader.check_cpuset(res.resources())
    }

    fn set(&mut self, res: &Checked) -> Result<(), CgroupError> {
        let t0 = Instant::now();
        self.check(res)?;
        debug!(unit = %self.unit.unit, us = t0.elapsed().as_micros() as u64, "set: validated");
        if !self.started && self.active_state()?.is_some_and(|s| s == "active") {
            // A manager restored from state: the unit runs already.
            self.started = true;
        }
        if !self.started {
            // Sent with StartTransientUnit by the first add_proc.
            self.pending = Some(res.clone());
            return Ok(());
        }
        let r = self.apply(res, true);
        debug!(unit = %self.unit.unit, us = t0.elapsed().as_micros() as u64, "set: applied");
        r
    }

    /// `FreezeUnit` on cgroup v2 with systemd ≥ 246, the cgroupfs freezer otherwise
    /// (systemd 252 does not freeze on v1).
    fn freeze(&mut self) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V2
            && self.client()?.version().is_none_or(|v| v >= SYSTEMD_FREEZE)
        {
            let unit = self.unit.unit.clone();
            return self
                .client()?
                .freeze_unit(&unit)
                .map_err(|e| self.err("FreezeUnit", e));
        }
        match self.unmanaged.as_mut() {
            Some(u) => u.freeze(),
            None => self.reader.freeze(),
        }
    }

    fn thaw(&mut self) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V2
            && self.client()?.version().is_none_or(|v| v >= SYSTEMD_FREEZE)
        {
            let unit = self.unit.unit.clone();
            return self
                .client()?
                .thaw_unit(&unit)
                .map_err(|e| self.err("ThawUnit", e));
        }
        match self.unmanaged.as_mut() {
            Some(u) => u.thaw(),
            None => self.reader.thaw(),
        }
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        self.reader.stats()
    }

    /// `StopUnit` (mode replace) and its job; `ResetFailedUnit` when it ended failed.
    /// A unit that no longer exists is not an error. When this process is in the
    /// unit, the job cannot finish before it exits: see [`ignore_sigterm_during`].
    fn destroy(&mut self) -> Result<(), CgroupError> {
        if let Err(e) = self.client() {
            // No systemd on the bus and no cgroup of the unit: nothing was ever started.
            let exists = self.reader.paths().values().any(|d| d.exists());
            if self.started || exists {
                return Err(e);
            }
            debug!(unit = %self.unit.unit, error = %e, "systemd unreachable and the unit's cgroup absent: nothing to stop");
            return self.remove_unmanaged();
        }
        let t0 = Instant::now();
        let inside = self.self_inside();
        debug!(unit = %self.unit.unit, inside, us = t0.elapsed().as_micros() as u64, "destroy: self_inside");
        if inside {
            self.stop_self()?;
        } else {
            self.stop_and_wait()?;
        }
        debug!(unit = %self.unit.unit, us = t0.elapsed().as_micros() as u64, "destroy: stopped");
        self.remove_unmanaged()?;
        debug!(unit = %self.unit.unit, us = t0.elapsed().as_micros() as u64, "destroy: done");
        self.started = false;
        self.pending = None;
        Ok(())
    }

    fn created(&self) -> Vec<PathBuf> {
        self.unmanaged
            .as_ref()
            .map(|u| u.created())
            .unwrap_or_default()
    }

    fn missing(&self) -> Vec<PathBuf> {
        self.unmanaged
            .as_ref()
            .map(|u| u.missing())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
