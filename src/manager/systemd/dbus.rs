//! The D-Bus side of the systemd driver: one system-bus connection to
//! `org.freedesktop.systemd1`, method calls with busy retries and one reopen,
//! and jobs awaited through their `JobRemoved` signal. [`Bus`] is the real
//! [`SystemdClient`]: the driver's typed requests become zbus messages here.

use std::fmt;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use serde::Serialize;
use tracing::{debug, warn};
use zbus::blocking::Connection;
use zbus::message::Type;
use zbus::zvariant::{DynamicType, OwnedObjectPath, OwnedValue, Value};
use zbus::{MatchRule, Message, MessageStream};

use super::client::SystemdClient;
pub use super::client::{BusError, JobResult, StopResult, NO_SUCH_UNIT, UNIT_EXISTS};
use super::props::{parse_version, PropValue, UnitProperty};
use crate::host::SYSTEM_BUS_SOCKET;

/// systemd's bus name.
pub const DEST: &str = "org.freedesktop.systemd1";
/// The Manager object.
pub const PATH: &str = "/org/freedesktop/systemd1";
/// The Manager interface.
pub const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The Unit interface.
pub const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// JobRemoved signals queued per wait: the bus reader blocks when a queue is full.
const JOB_QUEUE: usize = 1024;

/// The bus daemon's answer when a client exceeds its quota (back off and retry).
const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

impl From<zbus::Error> for BusError {
    fn from(e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, msg, _) => BusError {
                name: Some(name.to_string()),
                message: msg.unwrap_or_default(),
            },
            zbus::Error::FDO(fdo) => BusError {
                name: Some(zbus::DBusError::name(fdo.as_ref()).to_string()),
                message: zbus::DBusError::description(fdo.as_ref())
                    .unwrap_or_default()
                    .to_string(),
            },
            other => BusError::other(other.to_string()),
        }
    }
}

/// The bus connection closed under us: reopen once and retry.
fn is_closed(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::InputOutput(io) if matches!(
        io.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::UnexpectedEof
    ))
}

/// The bus daemon's answer when the recipient left the bus before replying.
const NO_REPLY: &str = "org.freedesktop.DBus.Error.NoReply";

/// systemd left the bus before answering the call ("Message recipient disconnected from
/// message bus without replying"): it is re-executing (`systemctl daemon-reexec`, a package
/// upgrade) and comes back on the bus by itself. The call is repeated within the timeout: a
/// `StartTransientUnit` it had already carried out then answers `UnitExists`, which
/// [`super::SystemdManager`] adopts, and a repeated `StopUnit` is harmless. The daemon's own
/// reply timeout (also `NoReply`, another message) is not repeated.
fn is_reexecuting(e: &zbus::Error) -> bool {
    let gone = |m: &str| m.contains("disconnected");
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            name.as_str() == NO_REPLY && msg.as_deref().is_some_and(gone)
        }
        zbus::Error::FDO(f) => matches!(&**f, zbus::fdo::Error::NoReply(m) if gone(m)),
        _ => false,
    }
}

/// The bus is busy (EAGAIN, or the daemon's quota): back off and retry within the timeout.
fn is_busy(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::InputOutput(io) => {
            io.kind() == ErrorKind::WouldBlock || io.raw_os_error() == Some(libc::EAGAIN)
        }
        zbus::Error::MethodError(name, _, _) => name.as_str() == LIMITS_EXCEEDED,
        _ => false,
    }
}

/// The system bus address zbus will use, for messages.
pub fn bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| SYSTEM_BUS_SOCKET.to_string())
}

/// The signal streams of one unit, kept for the connection's lifetime: `JobRemoved` and
/// `UnitRemoved` filtered by the bus on the unit's name, so each operation costs no
/// `AddMatch`/`RemoveMatch` round trip. `removed` is matched while the first job runs
/// (or before the first stop), off the connection set-up's critical path.
struct Watch {
    unit: String,
    jobs: MessageStream,
    removed: Option<MessageStream>,
}

/// One connection to systemd on the system bus, kept for the manager's lifetime.
pub struct Bus {
    conn: Connection,
    timeout: Duration,
    /// The unit whose signals are watched (`connect_watching`), re-watched after a reopen.
    unit: Option<String>,
    watch: Option<Watch>,
    /// systemd's `Version` property as given.
    pub version_string: String,
    /// Its leading number, when it parses.
    pub version: Option<u32>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("timeout", &self.timeout)
            .field("unit", &self.unit)
            .field("version", &self.version_string)
            .finish()
    }
}

fn us(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// `JobRemoved(u id, o job, s unit, s result)` of `unit` (the bus filters on `arg2`).
fn job_rule(unit: &str) -> Result<MatchRule<'_>, zbus::Error> {
    Ok(MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(DEST)?
        .interface(MANAGER)?
        .member("JobRemoved")?
        .path(PATH)?
        .arg(2, unit)?
        .build())
}

/// `UnitRemoved(s unit, o path)` of `unit` (the bus filters on `arg0`).
fn removed_rule(unit: &str) -> Result<MatchRule<'_>, zbus::Error> {
    Ok(MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(DEST)?
        .interface(MANAGER)?
        .member("UnitRemoved")?
        .path(PATH)?
        .arg(0, unit)?
        .build())
}

/// Opens the connection and, in parallel (one round trip instead of three or four):
/// `Subscribe()` (without it systemd may not emit the signals to us), the `Version`
/// property, and the unit's signal matches when `unit` is given.
fn open(
    timeout: Duration,
    unit: Option<&str>,
) -> Result<(Connection, Option<Watch>, String), zbus::Error> {
    let t0 = Instant::now();
    let conn = zbus::blocking::connection::Builder::system()?
        .method_timeout(timeout)
        .build()?;
    debug!(us = us(t0), "bus connection open");
    let c = conn.inner();
    // systemd re-executing answers NoReply ("recipient disconnected"): the three go out
    // again, with back-off, within the timeout.
    let (version, watch) = while_reexecuting(timeout, || {
        let subscribe = c.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &());
        let version = async {
            let reply = c
                .call_method(
                    Some(DEST),
                    PATH,
                    Some(PROPERTIES),
                    "Get",
                    &(MANAGER, "Version"),
                )
                .await?;
            let v: OwnedValue = reply.body().deserialize()?;
            String::try_from(v).map_err(zbus::Error::from)
        };
        let watch = async {
            let Some(unit) = unit else {
                return Ok(None);
            };
            let jobs = MessageStream::for_match_rule(job_rule(unit)?, c, Some(JOB_QUEUE)).await?;
            Ok::<_, zbus::Error>(Some(Watch {
                unit: unit.to_string(),
                jobs,
                removed: None,
            }))
        };
        let (sub, (version, watch)) = async_io::block_on(futures_lite::future::zip(
            subscribe,
            futures_lite::future::zip(version, watch),
        ));
        sub?;
        Ok((version?, watch?))
    })?;
    debug!(us = us(t0), "subscribed, version read, signals matched");
    Ok((conn, watch, version))
}

/// Runs `op`, again while systemd answers that it left the bus (see [`is_reexecuting`]),
/// with back-off, within `timeout`.
fn while_reexecuting<T>(
    timeout: Duration,
    mut op: impl FnMut() -> Result<T, zbus::Error>,
) -> Result<T, zbus::Error> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        match op() {
            Err(e) if is_reexecuting(&e) && Instant::now() + backoff < deadline => {
                debug!(error = %e, ?backoff, "systemd left the bus (re-executing?); retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

fn get_property(
    conn: &Connection,
    path: &str,
    iface: &str,
    name: &str,
) -> Result<OwnedValue, zbus::Error> {
    let reply = conn.call_method(Some(DEST), path, Some(PROPERTIES), "Get", &(iface, name))?;
    reply.body().deserialize::<OwnedValue>()
}

/// Takes every message already queued on `stream`, without waiting.
fn drain(stream: &mut MessageStream) -> usize {
    let mut n = 0;
    while let Some(Some(_)) =
        futures_lite::future::block_on(futures_lite::future::poll_once(stream.next()))
    {
        n += 1;
    }
    n
}

/// `(job, result)` of a `JobRemoved` signal.
fn job_removed(msg: &Message) -> Option<(OwnedObjectPath, String)> {
    msg.body()
        .deserialize::<(u32, OwnedObjectPath, String, String)>()
        .ok()
        .map(|(_, job, _, result)| (job, result))
}

impl Bus {
    /// Connects to the system bus, subscribes to systemd's signals and reads its version.
    pub fn connect(timeout: Duration) -> Result<Self, BusError> {
        Self::open_bus(timeout, None)
    }

    /// [`Bus::connect`], and also matches `unit`'s `JobRemoved` and `UnitRemoved` signals
    /// once for the connection's lifetime ([`Bus::run_job`], [`Bus::stop_unit`]).
    pub fn connect_watching(timeout: Duration, unit: &str) -> Result<Self, BusError> {
        Self::open_bus(timeout, Some(unit))
    }

    fn open_bus(timeout: Duration, unit: Option<&str>) -> Result<Self, BusError> {
        let t0 = Instant::now();
        let (conn, watch, version_string) = open(timeout, unit)?;
        let version = parse_version(&version_string);
        debug!(version = %version_string, us = us(t0), "connected to systemd");
        Ok(Bus {
            conn,
            timeout,
            unit: unit.map(str::to_string),
            watch,
            version_string,
            version,
        })
    }

    /// The bound on every call and job wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn reopen(&mut self) -> Result<(), BusError> {
        warn!("the system bus connection closed; reopening it once");
        let had_removed = self.watch.as_ref().is_some_and(|w| w.removed.is_some());
        self.watch = None;
        let (conn, mut watch, _) = open(self.timeout, self.unit.as_deref())?;
        if let (Some(w), true) = (watch.as_mut(), had_removed) {
            w.removed = Some(async_io::block_on(MessageStream::for_match_rule(
                removed_rule(&w.unit)?,
                conn.inner(),
                Some(JOB_QUEUE),
            ))?);
        }
        self.conn = conn;
        self.watch = watch;
        Ok(())
    }

    /// Runs `op` on the connection: busy answers are retried with back-off until the
    /// timeout, and a closed connection is reopened once.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&Connection) -> Result<T, zbus::Error>,
    ) -> Result<T, BusError> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(10);
        let mut reopened = false;
        loop {
            match op(&self.conn) {
                Ok(v) => return Ok(v),
                Err(e) if is_busy(&e) && Instant::now() + backoff < deadline => {
                    debug!(what, error = %e, ?backoff, "bus busy; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) if is_reexecuting(&e) && Instant::now() + backoff < deadline => {
                    debug!(what, error = %e, ?backoff, "systemd left the bus (re-executing?); retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) if is_closed(&e) && !reopened => {
                    reopened = true;
                    debug!(what, error = %e, "connection closed");
                    self.reopen()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Calls a Manager method.
    pub fn call<B>(&mut self, method: &str, body: &B) -> Result<Message, BusError>
    where
        B: Serialize + DynamicType,
    {
        let t0 = Instant::now();
        let r = self.retrying(method, |c| {
            c.call_method(Some(DEST), PATH, Some(MANAGER), method, body)
        });
        debug!(method, ok = r.is_ok(), us = us(t0), "call");
        r
    }

    /// The watch of `unit`, matched now when the connection has none (or one of another
    /// unit); signals left from earlier operations are dropped.
    fn watch(&mut self, unit: &str) -> Result<&mut Watch, BusError> {
        if self.watch.as_ref().is_none_or(|w| w.unit != unit) {
            self.watch = None;
            self.unit = Some(unit.to_string());
            let t0 = Instant::now();
            let c = self.conn.inner();
            let jobs = async_io::block_on(MessageStream::for_match_rule(
                job_rule(unit)?,
                c,
                Some(JOB_QUEUE),
            ))?;
            debug!(unit, us = us(t0), "signals matched");
            self.watch = Some(Watch {
                unit: unit.to_string(),
                jobs,
                removed: None,
            });
        }
        let w = self
            .watch
            .as_mut()
            .ok_or_else(|| BusError::other("no signal match"))?;
        let stale = drain(&mut w.jobs) + w.removed.as_mut().map_or(0, drain);
        if stale > 0 {
            debug!(unit, stale, "dropped signals of earlier operations");
        }
        Ok(w)
    }

    /// Sends `method` (a Manager method that returns a job) with the unit's signals
    /// matched, and returns the job and the reply's position in the received stream.
    fn queue_job<B>(
        &mut self,
        unit: &str,
        method: &str,
        body: &B,
    ) -> Result<(OwnedObjectPath, zbus::message::Sequence), BusError>
    where
        B: Serialize + DynamicType,
    {
        // The match is in place before the call, so a job that ends at once is not missed.
        self.watch(unit)?;
        let reply = self.call(method, body)?;
        // A reopen inside `call` matched the unit's signals on the new connection before
        // the call was sent again there.
        let job: OwnedObjectPath = reply.body().deserialize().map_err(BusError::from)?;
        // The job is queued and its JobRemoved not yet awaited: a crash here is a
        // process killed while it waits for systemd.
        crate::failpoint::hit(match method {
            "StopUnit" => crate::failpoint::Point::SystemdStopJob,
            _ => crate::failpoint::Point::SystemdStartJob,
        })
        .map_err(|e| BusError::other(e.to_string()))?;
        Ok((job, reply.recv_position()))
    }

    /// Calls a Manager method that returns a job, and waits for that job's `JobRemoved`.
    ///
    /// The signal match is in place before the call (added once per connection), so a job
    /// that finishes at once is not missed; the wait is bounded by the timeout.
    pub fn run_job<B>(&mut self, unit: &str, method: &str, body: &B) -> Result<JobResult, BusError>
    where
        B: Serialize + DynamicType,
    {
        let t0 = Instant::now();
        let (job, _) = self.queue_job(unit, method, body)?;
        debug!(unit, method, job = %job.as_str(), us = us(t0), "job queued");
        let deadline = t0 + self.timeout;
        let timeout = self.timeout;
        let c = self.conn.inner();
        let w = self
            .watch
            .as_mut()
            .ok_or_else(|| BusError::other("no signal match"))?;
        let wait = async {
            loop {
                let next = futures_lite::future::or(async { Some(w.jobs.next().await) }, async {
                    async_io::Timer::after(deadline.saturating_duration_since(Instant::now()))
                        .await;
                    None
                })
                .await;
                let msg = match next {
                    None => {
                        return Err(BusError::other(format!(
                            "{method}: job {} did not finish within {} s",
                            job.as_str(),
                            timeout.as_secs_f64()
                        )))
                    }
                    Some(None) => {
                        return Err(BusError::other(format!(
                            "{method}: the bus connection closed while waiting for job {}",
                            job.as_str()
                        )))
                    }
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(Some(Ok(m))) => m,
                };
                let Some((path, result)) = job_removed(&msg) else {
                    continue;
                };
                debug!(unit, method, job = %path.as_str(), %result, us = us(t0), "JobRemoved");
                if path == job {
                    return Ok(JobResult {
                        job: job.as_str().to_string(),
                        result,
                    });
                }
            }
        };
        // The UnitRemoved match for a later stop costs a round trip: send it while
        // systemd runs the job.
        let need = w.removed.is_none();
        let add = async {
            if !need {
                return None;
            }
            let rule = match removed_rule(unit) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            Some(MessageStream::for_match_rule(rule, c, Some(JOB_QUEUE)).await)
        };
        let (result, removed) = async_io::block_on(futures_lite::future::zip(wait, add));
        match removed {
            Some(Ok(stream)) => w.removed = Some(stream),
            // Tried again before the first stop.
            Some(Err(e)) => debug!(unit, error = %e, "UnitRemoved match not added"),
            None => {}
        }
        result
    }

    /// `StopUnit(unit, "replace")`, waits for its job, then for systemd to unload the unit.
    ///
    /// systemd sends `JobRemoved` when the unit is inactive (its cgroup already pruned) and
    /// `UnitRemoved` when it unloads it, which it does before it handles any further
    /// request, but after other work it may have queued (on cgroup v2, re-realising the
    /// parent slice's controllers). So after a `done` job this waits for whichever comes
    /// first: `UnitRemoved`, or the answer to `GetUnit` (`NoSuchUnit`: gone; a path: the
    /// unit stays loaded, `gone` is false). `UnitRemoved` is only counted when received
    /// after the `StopUnit` reply. `NoSuchUnit` from `StopUnit` is returned as an error for
    /// the caller to treat as "nothing to stop".
    pub fn stop_unit(&mut self, unit: &str) -> Result<StopResult, BusError> {
        let method = "StopUnit";
        let t0 = Instant::now();
        self.watch(unit)?;
        if self.watch.as_ref().is_some_and(|w| w.removed.is_none()) {
            let c = self.conn.inner();
            let stream = async_io::block_on(MessageStream::for_match_rule(
                removed_rule(unit)?,
                c,
                Some(JOB_QUEUE),
            ))?;
            if let Some(w) = self.watch.as_mut() {
                w.removed = Some(stream);
            }
        }
        let (job, after) = self.queue_job(unit, method, &(unit, "replace"))?;
        debug!(unit, method, job = %job.as_str(), us = us(t0), "job queued");
        let deadline = t0 + self.timeout;
        let timeout = self.timeout;
        let w = self
            .watch
            .as_mut()
            .ok_or_else(|| BusError::other("no signal match"))?;
        let (jobs, removed) = match w.removed.as_mut() {
            Some(r) => (&mut w.jobs, r),
            None => return Err(BusError::other("no UnitRemoved match")),
        };
        let is_ours = |m: &Message| m.recv_position() > after;
        let mut gone = false;
        // The job, noting an UnitRemoved that comes first.
        let job = loop {
            let next = async_io::block_on(futures_lite::future::or(
                async { Some((true, jobs.next().await)) },
                futures_lite::future::or(async { Some((false, removed.next().await)) }, async {
                    async_io::Timer::after(deadline.saturating_duration_since(Instant::now()))
                        .await;
                    None
                }),
            ));
            let (is_job, msg) = match next {
                None => {
                    return Err(BusError::other(format!(
                        "{method}: job {} did not finish within {} s",
                        job.as_str(),
                        timeout.as_secs_f64()
                    )))
                }
                Some((_, None)) => {
                    return Err(BusError::other(format!(
                        "{method}: the bus connection closed while waiting for job {}",
                        job.as_str()
                    )))
                }
                Some((_, Some(Err(e)))) => return Err(e.into()),
                Some((is_job, Some(Ok(m)))) => (is_job, m),
            };
            if !is_job {
                gone |= is_ours(&msg);
                debug!(
                    unit,
                    ours = is_ours(&msg),
                    us = us(t0),
                    "UnitRemoved before JobRemoved"
                );
                continue;
            }
            let Some((path, result)) = job_removed(&msg) else {
                continue;
            };
            debug!(unit, method, job = %path.as_str(), %result, us = us(t0), "JobRemoved");
            if path == job {
                break JobResult {
                    job: job.as_str().to_string(),
                    result,
                };
            }
        };
        if gone || job.result != "done" {
            return Ok(StopResult { job, gone });
        }
        // UnitRemoved, or GetUnit's answer, whichever comes first.
        let c = self.conn.inner();
        let outcome = async_io::block_on(futures_lite::future::or(
            async {
                loop {
                    match removed.next().await {
                        Some(Ok(m)) if is_ours(&m) => {
                            debug!(unit, us = us(t0), "UnitRemoved");
                            return Ok(true);
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(BusError::from(e)),
                        None => return Err(BusError::other("the bus connection closed")),
                    }
                }
            },
            async {
                match c
                    .call_method(Some(DEST), PATH, Some(MANAGER), "GetUnit", &(unit,))
                    .await
                {
                    Ok(_) => {
                        debug!(unit, us = us(t0), "GetUnit: still loaded");
                        Ok(false)
                    }
                    Err(e) => {
                        let e = BusError::from(e);
                        if e.is(NO_SUCH_UNIT) {
                            debug!(unit, us = us(t0), "GetUnit: NoSuchUnit");
                            Ok(true)
                        } else {
                            Err(e)
                        }
                    }
                }
            },
        ))
        .map_err(|e| BusError::other(format!("{method}: after job {}: {e}", job.job)))?;
        debug!(unit, gone = outcome, us = us(t0), "unit unloaded?");
        Ok(StopResult { job, gone: outcome })
    }

    /// The object path of a loaded unit (`NoSuchUnit` when it is not loaded).
    pub fn get_unit(&mut self, unit: &str) -> Result<OwnedObjectPath, BusError> {
        let reply = self.call("GetUnit", &(unit,))?;
        reply
            .body()
            .deserialize::<OwnedObjectPath>()
            .map_err(BusError::from)
    }

    /// A string property of the Unit interface (`ActiveState`, `SubState`, ...).
    pub fn unit_state(&mut self, unit: &str, property: &str) -> Result<String, BusError> {
        let t0 = Instant::now();
        let path = self.get_unit(unit)?;
        let v = self.retrying(property, |c| get_property(c, path.as_str(), UNIT, property))?;
        debug!(unit, property, us = us(t0), "unit_state");
        String::try_from(v).map_err(|e| BusError::other(format!("{property}: {e}")))
    }

    /// A property of `iface` on the unit's object, as sent by systemd.
    pub fn unit_property(
        &mut self,
        unit: &str,
        iface: &str,
        property: &str,
    ) -> Result<OwnedValue, BusError> {
        let path = self.get_unit(unit)?;
        self.retrying(property, |c| {
            get_property(c, path.as_str(), iface, property)
        })
    }
}

/// A property value as the D-Bus variant body systemd expects (`b`, `t`, `s`, `as`, `au`,
/// `ay`, `a(st)`), the type each property has in `org.freedesktop.systemd1(5)` and
/// `systemd.resource-control(5)`.
fn variant(v: &PropValue) -> Value<'_> {
    match v {
        PropValue::Bool(b) => Value::from(*b),
        PropValue::U64(v) => Value::from(*v),
        PropValue::Str(s) => Value::from(s.as_str()),
        PropValue::Strs(v) => Value::from(v.iter().map(String::as_str).collect::<Vec<_>>()),
        PropValue::U32s(v) => Value::from(v.clone()),
        PropValue::Bytes(v) => Value::from(v.clone()),
        PropValue::DevU64s(v) => Value::from(
            v.iter()
                .map(|(d, n)| (d.as_str(), *n))
                .collect::<Vec<(&str, u64)>>(),
        ),
    }
}

/// `properties` as the `a(sv)` array of name and variant.
fn variants(properties: &[UnitProperty]) -> Vec<(&str, Value<'_>)> {
    properties
        .iter()
        .map(|p| (p.name, variant(&p.value)))
        .collect()
}

/// The driver's requests over this connection: each a Manager method call through
/// [`Bus::call`] (busy and re-exec retries, one reopen), the two that wait for their job
/// through [`Bus::run_job`] and [`Bus::stop_unit`].
impl SystemdClient for Bus {
    fn version(&self) -> Option<u32> {
        self.version
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
        // `a(sa(sv))`: no auxiliary units.
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let body = (unit, mode, variants(properties), aux);
        self.run_job(unit, "StartTransientUnit", &body)
    }

    fn set_unit_properties(
        &mut self,
        unit: &str,
        runtime: bool,
        properties: &[UnitProperty],
    ) -> Result<(), BusError> {
        self.call("SetUnitProperties", &(unit, runtime, variants(properties)))
            .map(|_| ())
    }

    fn attach_processes_to_unit(
        &mut self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), BusError> {
        self.call("AttachProcessesToUnit", &(unit, subcgroup, pids.to_vec()))
            .map(|_| ())
    }

    fn stop_unit(&mut self, unit: &str) -> Result<StopResult, BusError> {
        Bus::stop_unit(self, unit)
    }

    fn stop_unit_no_wait(&mut self, unit: &str) -> Result<(), BusError> {
        self.call("StopUnit", &(unit, "replace")).map(|_| ())
    }

    fn reset_failed_unit(&mut self, unit: &str) -> Result<(), BusError> {
        self.call("ResetFailedUnit", &(unit,)).map(|_| ())
    }

    fn freeze_unit(&mut self, unit: &str) -> Result<(), BusError> {
        self.call("FreezeUnit", &(unit,)).map(|_| ())
    }

    fn thaw_unit(&mut self, unit: &str) -> Result<(), BusError> {
        self.call("ThawUnit", &(unit,)).map(|_| ())
    }

    fn unit_state(&mut self, unit: &str, property: &str) -> Result<String, BusError> {
        Bus::unit_state(self, unit, property)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io(e: std::io::Error) -> zbus::Error {
        zbus::Error::InputOutput(Arc::new(e))
    }

    #[test]
    fn closed_and_busy_are_told_apart() {
        for kind in [
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(is_closed(&io(kind.into())), "{kind:?}");
            assert!(!is_busy(&io(kind.into())), "{kind:?}");
        }
        let eagain = io(std::io::Error::from_raw_os_error(libc::EAGAIN));
        assert!(is_busy(&eagain) && !is_closed(&eagain));
        // A method timeout is neither: it is reported, not retried.
        let timed_out = io(ErrorKind::TimedOut.into());
        assert!(!is_busy(&timed_out) && !is_closed(&timed_out));
    }

    #[test]
    fn reexec_is_told_from_a_reply_timeout() {
        let fdo = |m: &str| zbus::Error::FDO(Box::new(zbus::fdo::Error::NoReply(m.into())));
        assert!(is_reexecuting(&fdo(
            "Message recipient disconnected from message bus without replying"
        )));
        assert!(!is_reexecuting(&fdo("Did not receive a reply.")));
        assert!(!is_reexecuting(&io(ErrorKind::BrokenPipe.into())));
    }

    #[test]
    fn bus_error_names_the_dbus_error() {
        let e = BusError {
            name: Some(NO_SUCH_UNIT.into()),
            message: "Unit x.scope not loaded.".into(),
        };
        assert!(e.is(NO_SUCH_UNIT) && !e.is(UNIT_EXISTS));
        assert_eq!(
            e.to_string(),
            "org.freedesktop.systemd1.NoSuchUnit: Unit x.scope not loaded."
        );
    }

    #[test]
    fn dbus_values_have_systemd_signatures() {
        use crate::cgroup::CgroupVersion;
        use crate::path::SystemdUnit;
        use crate::resources::from_json;
        use crate::resources::systemd::{resource_properties, start_properties};
        let scope = SystemdUnit {
            slice: "a.slice".into(),
            prefix: "p".into(),
            name: "n".into(),
            unit: "p-n.scope".into(),
        };
        for p in start_properties(&scope, CgroupVersion::V2, Some(1)) {
            let sig = variant(&p.value).value_signature().to_string();
            let want = match p.name {
                "PIDs" => "au",
                "Slice" | "Description" => "s",
                "TimeoutStopUSec" => "t",
                _ => "b",
            };
            assert_eq!(sig, want, "{}", p.name);
        }
        let r = from_json(r#"{"cpu":{"cpus":"0"},"pids":{"limit":5}}"#).unwrap();
        let r = crate::resources::Checked::new(r).unwrap();
        let sigs: Vec<String> = resource_properties(&r, CgroupVersion::V2)
            .unwrap()
            .iter()
            .map(|p| variant(&p.value).value_signature().to_string())
            .collect();
        assert_eq!(sigs, ["ay", "t"]);
    }
}
