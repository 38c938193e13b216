//! A scripted [`SystemdClient`] for unit tests of the driver's logic: it records every
//! request and answers each method from a script (a method's scripted answers are taken
//! in order, the last one taken repeating; an unscripted method gets the answer of a
//! healthy systemd, see [`FakeSystemd`]). No bus, no systemd: what systemd would do to
//! cgroupfs (pruning the unit's directories, ...) is for the test to lay out in its
//! temporary directory.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::client::{BusError, JobResult, StopResult, SystemdClient, NO_SUCH_UNIT, UNIT_EXISTS};
use super::props::UnitProperty;

/// One request the driver made, with what it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    /// `StartTransientUnit` (and the wait for its job).
    Start {
        unit: String,
        mode: String,
        properties: Vec<UnitProperty>,
    },
    /// `SetUnitProperties`.
    SetProperties {
        unit: String,
        runtime: bool,
        properties: Vec<UnitProperty>,
    },
    /// `AttachProcessesToUnit`.
    Attach {
        unit: String,
        subcgroup: String,
        pids: Vec<u32>,
    },
    /// `StopUnit` and the wait for its job and the unit's unloading.
    Stop { unit: String },
    /// `StopUnit` alone; whether SIGTERM was ignored by this process when it was sent.
    StopNoWait { unit: String, sigterm_ignored: bool },
    /// `ResetFailedUnit`.
    ResetFailed { unit: String },
    /// `FreezeUnit`.
    Freeze { unit: String },
    /// `ThawUnit`.
    Thaw { unit: String },
    /// A Unit property read (`GetUnit`, then `Get`).
    State { unit: String, property: String },
}

impl Call {
    /// The D-Bus method, or `Get <property>` for a property read: what tests compare.
    pub(super) fn method(&self) -> String {
        match self {
            Call::Start { .. } => "StartTransientUnit".into(),
            Call::SetProperties { .. } => "SetUnitProperties".into(),
            Call::Attach { .. } => "AttachProcessesToUnit".into(),
            Call::Stop { .. } => "StopUnit+wait".into(),
            Call::StopNoWait { .. } => "StopUnit".into(),
            Call::ResetFailed { .. } => "ResetFailedUnit".into(),
            Call::Freeze { .. } => "FreezeUnit".into(),
            Call::Thaw { .. } => "ThawUnit".into(),
            Call::State { property, .. } => format!("Get {property}"),
        }
    }
}

/// Scripted answers of one method: taken in order, the last one taken repeating.
struct Answers<T> {
    queue: VecDeque<T>,
    last: Option<T>,
}

impl<T: Clone> Answers<T> {
    fn push(&mut self, answer: T) {
        self.queue.push_back(answer);
    }

    fn next(&mut self) -> Option<T> {
        if let Some(a) = self.queue.pop_front() {
            self.last = Some(a);
        }
        self.last.clone()
    }
}

impl<T> Default for Answers<T> {
    fn default() -> Self {
        Answers {
            queue: VecDeque::new(),
            last: None,
        }
    }
}

/// A test's hook, run at each request before it is answered (with the lock released).
type Hook = Box<dyn FnMut(&Call) + Send>;

#[derive(Default)]
struct Script {
    calls: Vec<Call>,
    start: Answers<Result<JobResult, BusError>>,
    stop: Answers<Result<StopResult, BusError>>,
    /// Methods answering nothing, by [`Call::method`].
    plain: BTreeMap<String, Answers<Result<(), BusError>>>,
    /// Unit property reads, by property name.
    states: BTreeMap<String, Answers<Result<String, BusError>>>,
    jobs: u32,
    hook: Option<Hook>,
}

/// The test's side of the fake: scripts answers, hands out clients sharing the script, and
/// tells what they were asked.
///
/// Unscripted answers are a healthy systemd's: a start job ends `done`, a stop job ends
/// `done` with the unit unloaded, every other method succeeds, and a unit property read
/// answers `NoSuchUnit` (no unit loaded).
#[derive(Clone)]
pub(super) struct FakeSystemd {
    script: Arc<Mutex<Script>>,
    version: Option<u32>,
}

impl fmt::Debug for FakeSystemd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeSystemd")
            .field("version", &self.version)
            .finish()
    }
}

impl FakeSystemd {
    /// A fake systemd whose `Version` is `version` (`None`: a version that did not parse).
    pub(super) fn new(version: Option<u32>) -> Self {
        FakeSystemd {
            script: Arc::default(),
            version,
        }
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client for the driver, sharing this fake's script and record.
    pub(super) fn client(&self) -> Box<dyn SystemdClient> {
        Box::new(FakeClient {
            fake: self.clone(),
            version_string: self.version.map_or("unknown".into(), |v| v.to_string()),
        })
    }

    /// Adds `answer` to `StartTransientUnit`'s script.
    pub(super) fn on_start(&self, answer: Result<JobResult, BusError>) -> &Self {
        self.script().start.push(answer);
        self
    }

    /// Adds `answer` to the waiting `StopUnit`'s script.
    pub(super) fn on_stop(&self, answer: Result<StopResult, BusError>) -> &Self {
        self.script().stop.push(answer);
        self
    }

    /// Adds `answer` to the script of `method` (a [`Call::method`] of a method that
    /// returns nothing: `SetUnitProperties`, `StopUnit`, `ResetFailedUnit`, ...).
    pub(super) fn on(&self, method: &str, answer: Result<(), BusError>) -> &Self {
        self.script()
            .plain
            .entry(method.to_string())
            .or_default()
            .push(answer);
        self
    }

    /// Adds `answer` to the script of reads of the unit property `property`.
    pub(super) fn on_state(&self, property: &str, answer: Result<&str, BusError>) -> &Self {
        self.script()
            .states
            .entry(property.to_string())
            .or_default()
            .push(answer.map(str::to_string));
        self
    }

    /// Runs `hook` at every request, before it is answered.
    pub(super) fn hook(&self, hook: impl FnMut(&Call) + Send + 'static) {
        self.script().hook = Some(Box::new(hook));
    }

    /// Every request so far, in order.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.script().calls.clone()
    }

    /// [`Call::method`] of every request so far, in order.
    pub(super) fn methods(&self) -> Vec<String> {
        self.calls().iter().map(Call::method).collect()
    }

    /// Forgets the requests recorded so far (the script stays).
    pub(super) fn clear_calls(&self) {
        self.script().calls.clear();
    }

    /// Records `call` and runs the hook (outside the lock, so it may look at the fake).
    fn record(&self, call: Call) {
        let hook = {
            let mut s = self.script();
            s.calls.push(call.clone());
            s.hook.take()
        };
        if let Some(mut h) = hook {
            h(&call);
            let mut s = self.script();
            if s.hook.is_none() {
                s.hook = Some(h);
            }
        }
    }
}

/// A job object path as systemd names them.
pub(super) fn job(n: u32, result: &str) -> JobResult {
    JobResult {
        job: format!("/org/freedesktop/systemd1/job/{n}"),
        result: result.into(),
    }
}

/// A D-Bus error reply `name`.
pub(super) fn dbus_error(name: &str, message: &str) -> BusError {
    BusError {
        name: Some(name.into()),
        message: message.into(),
    }
}

/// systemd's answer for a unit it has not loaded.
pub(super) fn no_such_unit(unit: &str) -> BusError {
    dbus_error(NO_SUCH_UNIT, &format!("Unit {unit} not loaded."))
}

/// systemd's answer to `StartTransientUnit` on a loaded name.
pub(super) fn unit_exists(unit: &str) -> BusError {
    dbus_error(UNIT_EXISTS, &format!("Unit {unit} already exists."))
}

/// What a client gets when systemd left the bus (re-executing) and did not come back
/// within the client's timeout: the bus daemon's `NoReply`.
pub(super) fn reexecuting() -> BusError {
    dbus_error(
        "org.freedesktop.DBus.Error.NoReply",
        "Message recipient disconnected from message bus without replying",
    )
}

/// The driver's side: answers from the shared script.
struct FakeClient {
    fake: FakeSystemd,
    version_string: String,
}

impl fmt::Debug for FakeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeClient")
            .field("version", &self.version_string)
            .finish()
    }
}

impl FakeClient {
    fn plain(&self, call: Call) -> Result<(), BusError> {
        let method = call.method();
        self.fake.record(call);
        self.fake
            .script()
            .plain
            .get_mut(&method)
            .and_then(Answers::next)
            .unwrap_or(Ok(()))
    }
}

impl SystemdClient for FakeClient {
    fn version(&self) -> Option<u32> {
        self.fake.version
    }

    fn version_string(&self) -> &str {
        &self.version_string
    }

    fn start_transient_unit(
        &mut self,
        unit: &str,
        mode: &str,
        properties: &[UnitProperty],
    ) -> Result<JobResult, BusError> {
        self.fake.record(Call::Start {
            unit: unit.into(),
            mode: mode.into(),
            properties: properties.to_vec(),
        });
        let mut s = self.fake.script();
        s.jobs += 1;
        let n = s.jobs;
        s.start.next().unwrap_or_else(|| Ok(job(n, "done")))
    }

    fn set_unit_properties(
        &mut self,
        unit: &str,
        runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        self.plain(Call::SetProperties {
            unit: unit.into(),
            runtime,
            properties: properties.to_vec(),
        })
    }

    fn attach_processes_to_unit(
        &mut self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), BusError> {
        self.plain(Call::Attach {
            unit: unit.into(),
            subcgroup: subcgroup.into(),
            pids: pids.to_vec(),
        })
    }

    fn stop_unit(&mut self, unit: &str) -> Result<StopResult, BusError> {
        self.fake.record(Call::Stop { unit: unit.into() });
        let mut s = self.fake.script();
        s.jobs += 1;
        let n = s.jobs;
        s.stop.next().unwrap_or_else(|| {
            Ok(StopResult {
                job: job(n, "done"),
                gone: true,
            })
        })
    }

    fn stop_unit_no_wait(&mut self, unit: &str) -> Result<(), BusError> {
        self.plain(Call::StopNoWait {
            unit: unit.into(),
            sigterm_ignored: crate::sigterm::sigterm_ignored(),
        })
    }

    fn reset_failed_unit(&mut self, unit: &str) -> Result<(), BusError> {
        self.plain(Call::ResetFailed { unit: unit.into() })
    }

    fn freeze_unit(&mut self, unit: &str) -> Result<(), BusError> {
        self.plain(Call::Freeze { unit: unit.into() })
    }

    fn thaw_unit(&mut self, unit: &str) -> Result<(), BusError> {
        self.plain(Call::Thaw { unit: unit.into() })
    }

    fn unit_state(&mut self, unit: &str, property: &str) -> Result<String, BusError> {
        self.fake.record(Call::State {
            unit: unit.into(),
            property: property.into(),
        });
        self.fake
            .script()
            .states
            .get_mut(property)
            .and_then(Answers::next)
            .unwrap_or_else(|| Err(no_such_unit(unit)))
    }
}
