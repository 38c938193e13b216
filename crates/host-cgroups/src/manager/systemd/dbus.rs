//! The D-Bus side of the systemd driver: one system-bus connection to
//! `org.freedesktop.systemd1`, method calls with busy retries and one reopen,
//! and jobs awaited through their `JobRemoved` signal.

use std::fmt;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use serde::Serialize;
use tracing::{debug, warn};
use zbus::blocking::Connection;
use zbus::message::Type;
use zbus::zvariant::{DynamicType, OwnedObjectPath, OwnedValue};
use zbus::{MatchRule, Message, MessageStream};

use super::props::parse_version;
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

/// systemd's error for a unit that is not loaded.
pub const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// systemd's error for `StartTransientUnit` on a name that is already loaded.
pub const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
/// The bus daemon's answer when a client exceeds its quota (back off and retry).
const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

/// A failed D-Bus exchange: the D-Bus error name when systemd answered with one.
#[derive(Debug, Clone)]
pub struct BusError {
    /// The D-Bus error name (`org.freedesktop.systemd1.NoSuchUnit`), if any.
    pub name: Option<String>,
    /// What happened.
    pub message: String,
}

impl BusError {
    fn other(message: impl Into<String>) -> Self {
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

/// How a job ended: systemd's `JobRemoved` result (`done`, `failed`, `timeout`, `canceled`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The job object.
    pub job: String,
    /// The result word.
    pub result: String,
}

/// One connection to systemd on the system bus, kept for the manager's lifetime.
pub struct Bus {
    conn: Connection,
    timeout: Duration,
    /// systemd's `Version` property as given.
    pub version_string: String,
    /// Its leading number, when it parses.
    pub version: Option<u32>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("timeout", &self.timeout)
            .field("version", &self.version_string)
            .finish()
    }
}

fn open(timeout: Duration) -> Result<Connection, zbus::Error> {
    let conn = zbus::blocking::connection::Builder::system()?
        .method_timeout(timeout)
        .build()?;
    // Without a subscription systemd may not emit JobRemoved to us.
    while_reexecuting(timeout, || {
        conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
    })?;
    Ok(conn)
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

impl Bus {
    /// Connects to the system bus, subscribes to systemd's signals and reads its version.
    pub fn connect(timeout: Duration) -> Result<Self, BusError> {
        let conn = open(timeout)?;
        let version_string: String =
            while_reexecuting(timeout, || get_property(&conn, PATH, MANAGER, "Version"))
                .and_then(|v| String::try_from(v).map_err(zbus::Error::from))?;
        let version = parse_version(&version_string);
        debug!(version = %version_string, "connected to systemd");
        Ok(Bus {
            conn,
            timeout,
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
        self.conn = open(self.timeout)?;
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
        self.retrying(method, |c| {
            c.call_method(Some(DEST), PATH, Some(MANAGER), method, body)
        })
    }

    /// Calls a Manager method that returns a job, and waits for that job's `JobRemoved`.
    ///
    /// The signal match is added before the call, so a job that finishes at once is
    /// not missed; the wait is bounded by the timeout.
    pub fn run_job<B>(&mut self, unit: &str, method: &str, body: &B) -> Result<JobResult, BusError>
    where
        B: Serialize + DynamicType,
    {
        let timeout = self.timeout;
        let (mut stream, job) = self.retrying(method, |c| {
            let rule = MatchRule::builder()
                .msg_type(Type::Signal)
                .sender(DEST)?
                .interface(MANAGER)?
                .member("JobRemoved")?
                .path(PATH)?
                // JobRemoved(u id, o job, s unit, s result): let the bus filter on the unit.
                .arg(2, unit)?
                .build();
            let stream = async_io::block_on(MessageStream::for_match_rule(
                rule,
                c.inner(),
                Some(JOB_QUEUE),
            ))?;
            let reply = c.call_method(Some(DEST), PATH, Some(MANAGER), method, body)?;
            let job: OwnedObjectPath = reply.body().deserialize()?;
            Ok((stream, job))
        })?;
        debug!(unit, method, job = %job.as_str(), "waiting for job");
        // The job is queued and its JobRemoved not yet awaited: a crash here is a
        // process killed while it waits for systemd.
        crate::failpoint::hit(match method {
            "StopUnit" => "systemd-stop-job",
            _ => "systemd-start-job",
        })
        .map_err(|e| BusError::other(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = async_io::block_on(futures_lite::future::or(
                async { Some(stream.next().await) },
                async {
                    async_io::Timer::after(left).await;
                    None
                },
            ));
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
            let Ok((_id, path, _unit, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path == job {
                return Ok(JobResult {
                    job: job.as_str().to_string(),
                    result,
                });
            }
        }
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
        let path = self.get_unit(unit)?;
        let v = self.retrying(property, |c| get_property(c, path.as_str(), UNIT, property))?;
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
}
