//! Named points where a test can make this process fail or die, to prove that
//! a crash or an error at any step leaves nothing `cleanup` cannot remove.
//!
//! Compiled only with the crate feature `failpoints`, which the test suite turns
//! on; in every other build [`hit`] is an empty inline function, the variable
//! below is never read, and no error type carries an injected case.
//!
//! With the feature, a point is off unless `HOST_CGROUPS_FAILPOINT=<name>[:<nth>][=kill|error]`
//! is set (the `nth` hit of `<name>`, default the first; default action `kill`,
//! which is SIGKILL to this process, as a crash or an OOM kill would be; `error`
//! returns an I/O error of kind `Other` naming the point). When unset a point
//! costs one atomic load.
//!
//! The points are one list, [`Point::ALL`]: code passes a [`Point`], never a string, and
//! arming a name that is not on the list is an error ([`check_armed`]). A run whose armed
//! point was never reached says so ([`unreached`]), so that a crash test cannot pass on a
//! point that does not exist or that its run never passes.

/// A failpoint: where the library (or the `host-cgroups` command) can be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Point {
    /// The state file was written (before the first directory, and after set-up).
    StateSave,
    /// The sandbox cgroup was created.
    CreateSandbox,
    /// The overhead cgroup was created (sibling layout).
    CreateOverhead,
    /// The sandbox resources were applied.
    SetResources,
    /// The process was moved into its cgroup.
    AddProc,
    /// The nested layout's `vcpus` child was created.
    CreateVcpus,
    /// The placement actor's thread is up; `Supervisor::start` is about to return.
    SupervisorStarted,
    /// A vCPU is about to be placed (hook or actor).
    VcpuPlaced,
    /// A vCPU is about to move itself (`0` written to its target files).
    VcpuSelfMove,
    /// The nested child's directory is about to be made.
    VcpusMkdir,
    /// The nested child (v2) is about to be made `threaded`.
    VcpusThreaded,
    /// The nested child's controllers are about to be enabled (v2).
    VcpusControllers,
    /// The nested child's directory is about to be removed.
    VcpusRmdir,
    /// The nested child was removed at teardown.
    VcpusRemoved,
    /// The state file is about to be removed at teardown.
    StateRemove,
    /// A cgroupfs file is about to be written.
    FsWrite,
    /// A cgroupfs directory is about to be made.
    FsMkdir,
    /// A cgroupfs directory is about to be removed.
    FsRmdir,
    /// systemd queued the scope's start job; its end is not yet awaited.
    SystemdStartJob,
    /// systemd queued the scope's stop job; its end is not yet awaited.
    SystemdStopJob,
    /// The `host-cgroups run` command's VMM has started.
    VmmStarted,
    /// The VMM was stopped inside `Sandbox::teardown`, before the cgroups go.
    VmmStopped,
}

impl Point {
    /// Every point, in set-up and teardown order.
    pub const ALL: &'static [Point] = &[
        Point::StateSave,
        Point::CreateSandbox,
        Point::CreateOverhead,
        Point::SetResources,
        Point::AddProc,
        Point::CreateVcpus,
        Point::SupervisorStarted,
        Point::VcpuPlaced,
        Point::VcpuSelfMove,
        Point::VcpusMkdir,
        Point::VcpusThreaded,
        Point::VcpusControllers,
        Point::VcpusRmdir,
        Point::VcpusRemoved,
        Point::StateRemove,
        Point::FsWrite,
        Point::FsMkdir,
        Point::FsRmdir,
        Point::SystemdStartJob,
        Point::SystemdStopJob,
        Point::VmmStarted,
        Point::VmmStopped,
    ];

    /// The name `HOST_CGROUPS_FAILPOINT` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Point::StateSave => "state-save",
            Point::CreateSandbox => "create-sandbox",
            Point::CreateOverhead => "create-overhead",
            Point::SetResources => "set-resources",
            Point::AddProc => "add-proc",
            Point::CreateVcpus => "create-vcpus",
            Point::SupervisorStarted => "supervisor-started",
            Point::VcpuPlaced => "vcpu-placed",
            Point::VcpuSelfMove => "vcpu-self-move",
            Point::VcpusMkdir => "vcpus-mkdir",
            Point::VcpusThreaded => "vcpus-threaded",
            Point::VcpusControllers => "vcpus-controllers",
            Point::VcpusRmdir => "vcpus-rmdir",
            Point::VcpusRemoved => "vcpus-removed",
            Point::StateRemove => "state-remove",
            Point::FsWrite => "fs-write",
            Point::FsMkdir => "fs-mkdir",
            Point::FsRmdir => "fs-rmdir",
            Point::SystemdStartJob => "systemd-start-job",
            Point::SystemdStopJob => "systemd-stop-job",
            Point::VmmStarted => "vmm-started",
            Point::VmmStopped => "vmm-stopped",
        }
    }

    /// The point named `name`, if it is on the list.
    pub fn from_name(name: &str) -> Option<Point> {
        Point::ALL.iter().copied().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Passes point `p`: nothing happens in a build without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_p: Point) -> std::io::Result<()> {
    Ok(())
}

/// Whether `HOST_CGROUPS_FAILPOINT` is well formed and names a point on the list; always
/// `Ok` without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
pub fn check_armed() -> Result<(), String> {
    Ok(())
}

/// The armed point, when it was armed and this process never reached its `nth` hit;
/// always `None` without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
pub fn unreached() -> Option<String> {
    None
}

#[cfg(feature = "failpoints")]
pub use armed::{check_armed, hit, unreached};

#[cfg(feature = "failpoints")]
mod armed {
    use super::Point;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    /// The environment variable that arms one failpoint.
    pub const ENV: &str = "HOST_CGROUPS_FAILPOINT";

    #[derive(Debug, PartialEq, Eq)]
    enum Action {
        Kill,
        Error,
    }

    #[derive(Debug)]
    struct Armed {
        point: Point,
        nth: u32,
        action: Action,
        hits: AtomicU32,
    }

    fn parse(spec: &str) -> Result<Armed, String> {
        let bad = || {
            format!(
                "{ENV}={spec:?}: expected <point>[:<nth>][=kill|error], nth a whole number from 1"
            )
        };
        let (point, action) = match spec.split_once('=') {
            Some((p, "kill")) => (p, Action::Kill),
            Some((p, "error")) => (p, Action::Error),
            Some(_) => return Err(bad()),
            None => (spec, Action::Kill),
        };
        let (name, nth) = match point.split_once(':') {
            Some((n, k)) => (n, k.parse().ok().filter(|k| *k >= 1).ok_or_else(bad)?),
            None => (point, 1),
        };
        let point = Point::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
            format!(
                "{ENV}={spec:?}: no failpoint named {name:?} (known: {})",
                known.join(", ")
            )
        })?;
        Ok(Armed {
            point,
            nth,
            action,
            hits: AtomicU32::new(0),
        })
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| std::env::var(ENV).ok().and_then(|s| parse(&s).ok()))
            .as_ref()
    }

    /// Whether the variable is well formed and names a point on the list.
    pub fn check_armed() -> Result<(), String> {
        match std::env::var(ENV) {
            Ok(spec) => parse(&spec).map(|_| ()),
            Err(_) => Ok(()),
        }
    }

    /// The armed point (`name:nth`), when this process never reached that hit.
    pub fn unreached() -> Option<String> {
        let a = armed()?;
        (a.hits.load(Ordering::SeqCst) < a.nth).then(|| format!("{}:{}", a.point, a.nth))
    }

    /// Passes point `p`: dies or fails there if armed for this hit.
    pub fn hit(p: Point) -> std::io::Result<()> {
        let Some(a) = armed() else { return Ok(()) };
        if a.point != p {
            return Ok(());
        }
        let n = a.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if n != a.nth {
            return Ok(());
        }
        match a.action {
            Action::Kill => {
                // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, as in a real crash.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            }
            Action::Error => Err(std::io::Error::other(format!(
                "injected failure at failpoint {p} (hit {n})"
            ))),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn specs() {
            let a = parse("fs-mkdir:3=error").unwrap();
            assert_eq!(
                (a.point, a.nth, a.action),
                (Point::FsMkdir, 3, Action::Error)
            );
            let a = parse("state-save").unwrap();
            assert_eq!((a.nth, a.action), (1, Action::Kill));
            assert!(parse("state-save=explode").is_err());
            assert!(parse("state-save:y").is_err());
            assert!(parse("state-save:0").is_err());
            // A name not on the list is refused, naming it.
            let e = parse("controller-startd").unwrap_err();
            assert!(e.contains("\"controller-startd\""), "{e}");
            // Unarmed in the unit-test process.
            assert!(hit(Point::StateSave).is_ok());
            assert_eq!(unreached(), None);
        }

        #[test]
        fn names_are_unique_and_round_trip() {
            for p in Point::ALL {
                assert_eq!(Point::from_name(p.name()), Some(*p));
            }
            let mut names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), Point::ALL.len());
        }
    }
}
