//! What the systemd driver asks of systemd, as a small trait: [`SystemdClient`].
//!
//! Each method is one request of systemd's D-Bus API (the `org.freedesktop.systemd1.Manager`
//! interface of the object `/org/freedesktop/systemd1`, documented in
//! `org.freedesktop.systemd1(5)`), or, for [`SystemdClient::start_transient_unit`] and
//! [`SystemdClient::stop_unit`], such a request together with the wait for its job. Values
//! cross the trait as this crate's own types ([`UnitProperty`], [`BusError`], [`JobResult`],
//! [`StopResult`]): the D-Bus encoding is the implementation's business
//! ([`super::dbus::Bus`] over zbus). The driver's own rules (job results, rollback,
//! version gates, stopping the unit it sits in) live in [`super::SystemdManager`], which
//! holds a client behind this trait, so that unit tests can give it a scripted one.

use std::fmt;

use super::props::UnitProperty;

/// systemd's D-Bus error for a unit that is not loaded (`GetUnit`, `StopUnit`,
/// `ResetFailedUnit`, ... on a name systemd does not know).
pub const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// systemd's D-Bus error for `StartTransientUnit` on a name that is already loaded.
pub const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";

/// A failed D-Bus exchange: the D-Bus error name when systemd answered with one.
#[derive(Debug, Clone)]
pub struct BusError {
    /// The D-Bus error name (`org.freedesktop.systemd1.NoSuchUnit`), if any.
    pub name: Option<String>,
    /// What happened.
    pub message: String,
}

impl BusError {
    /// An error that is no D-Bus error reply (a timeout, a closed connection, ...).
    pub(crate) fn other(message: impl Into<String>) -> Self {
        BusError {
            name: None,
            message: message.into(),
        }
    }

    /// Whether systemd answered with error `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name.as_deref() == Some(name)
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// How a job ended: systemd's `JobRemoved` result (`done`, `failed`, `timeout`, `canceled`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The job object.
    pub job: String,
    /// The result word.
    pub result: String,
}

/// How a stop ended: the job's result, and whether systemd has unloaded the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopResult {
    /// The stop job and its `JobRemoved` result.
    pub job: JobResult,
    /// systemd unloaded the unit (`UnitRemoved`, or `GetUnit` answered `NoSuchUnit`).
    pub gone: bool,
}

/// The requests the systemd driver makes, named after systemd's D-Bus API
/// (`org.freedesktop.systemd1.Manager`, see `org.freedesktop.systemd1(5)`).
///
/// Errors are [`BusError`]s: a D-Bus error reply keeps its name (for example
/// [`NO_SUCH_UNIT`], [`UNIT_EXISTS`]), anything else (a job that did not end in time, a
/// closed connection) has none. An implementation retries what the bus itself asks to
/// retry (a busy bus, systemd re-executing) within its timeout, so a caller sees only
/// final answers. Every wait is bounded by the timeout the client was made with.
///
/// `Send` because the driver is a [`crate::manager::Manager`], which is; `Debug` so that
/// the driver can still print what it is connected to.
pub trait SystemdClient: fmt::Debug + Send {
    /// systemd's version: the leading number of the Manager's `Version` property, read when
    /// the client connected (`None` when it did not parse; callers then assume a recent one).
    fn version(&self) -> Option<u32>;

    /// The Manager's `Version` property as systemd gave it (`"252.19-1~deb12u1"`), for messages.
    fn version_string(&self) -> &str;

    /// `StartTransientUnit(name, mode, properties, aux)`, then the wait for the job's
    /// `JobRemoved` signal: the job and its result (`done` when the unit runs).
    ///
    /// `mode` is the job mode (`replace`, `fail`, ...). No auxiliary units are sent (an
    /// empty `aux` array): the driver has none. Properties whose values a systemd does not
    /// accept are refused by it as a whole ([`UnitProperty::min_systemd`] is for the caller
    /// to check first). A name already loaded answers [`UNIT_EXISTS`].
    ///
    /// # Errors
    /// The request's D-Bus error, or an unnamed one when the job did not end within the
    /// timeout or the connection closed meanwhile.
    fn start_transient_unit(
        &mut self,
        unit: &str,
        mode: &str,
        properties: &[UnitProperty],
    ) -> Result<JobResult, BusError>;

    /// `SetUnitProperties(name, runtime, properties)`: changes the unit's properties,
    /// and its cgroup with them. `runtime` true keeps the change until reboot only
    /// (systemd writes its drop-in below `/run`).
    ///
    /// # Errors
    /// systemd's D-Bus error (an unknown or malformed property, [`NO_SUCH_UNIT`]).
    fn set_unit_properties(
        &mut self,
        unit: &str,
        runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError>;

    /// `AttachProcessesToUnit(name, subcgroup, pids)` (systemd ≥ 238): moves whole
    /// processes into the running unit's cgroup, or its `subcgroup` below it (`/` is the
    /// unit's own cgroup).
    ///
    /// # Errors
    /// systemd's D-Bus error (an unknown pid, a unit that is not running, ...).
    fn attach_processes_to_unit(
        &mut self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), BusError>;

    /// `StopUnit(name, "replace")`, then the wait for its job and for systemd to unload the
    /// unit (see [`super::dbus::Bus::stop_unit`] for how the unloading is told).
    ///
    /// # Errors
    /// [`NO_SUCH_UNIT`] when the unit is not loaded (for the caller to treat as "nothing to
    /// stop"), another D-Bus error, or an unnamed one when the job did not end within the
    /// timeout.
    fn stop_unit(&mut self, unit: &str) -> Result<StopResult, BusError>;

    /// `StopUnit(name, "replace")` alone: the stop job is queued and not waited for (the
    /// driver stopping the unit its own process sits in, whose job cannot end before
    /// that process exits).
    ///
    /// # Errors
    /// systemd's D-Bus error ([`NO_SUCH_UNIT`] when the unit is not loaded).
    fn stop_unit_no_wait(&mut self, unit: &str) -> Result<(), BusError>;

    /// `ResetFailedUnit(name)`: forgets the unit's failed state, so that a failed unit,
    /// which otherwise stays loaded, is unloaded and its name free again.
    ///
    /// # Errors
    /// systemd's D-Bus error ([`NO_SUCH_UNIT`] when the unit is not loaded).
    fn reset_failed_unit(&mut self, unit: &str) -> Result<(), BusError>;

    /// `FreezeUnit(name)` (systemd ≥ 246, cgroup v2): freezes every process of the unit.
    ///
    /// # Errors
    /// systemd's D-Bus error.
    fn freeze_unit(&mut self, unit: &str) -> Result<(), BusError>;

    /// `ThawUnit(name)` (systemd ≥ 246, cgroup v2): thaws the unit.
    ///
    /// # Errors
    /// systemd's D-Bus error.
    fn thaw_unit(&mut self, unit: &str) -> Result<(), BusError>;

    /// A string property of the unit's `org.freedesktop.systemd1.Unit` interface
    /// (`ActiveState`, `SubState`, ...), found through `GetUnit(name)`.
    ///
    /// # Errors
    /// [`NO_SUCH_UNIT`] when the unit is not loaded, or another D-Bus error.
    fn unit_state(&mut self, unit: &str, property: &str) -> Result<String, BusError>;
}
