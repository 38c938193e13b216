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

/// Passes point `name`: nothing happens in a build without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(feature = "failpoints")]
pub use armed::hit;

#[cfg(feature = "failpoints")]
mod armed {
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
        name: String,
        nth: u32,
        action: Action,
        hits: AtomicU32,
    }

    fn parse(spec: &str) -> Option<Armed> {
        let (point, action) = match spec.split_once('=') {
            Some((p, "kill")) => (p, Action::Kill),
            Some((p, "error")) => (p, Action::Error),
            Some(_) => return None,
            None => (spec, Action::Kill),
        };
        let (name, nth) = match point.split_once(':') {
            Some((n, k)) => (n, k.parse().ok()?),
            None => (point, 1),
        };
        Some(Armed {
            name: name.to_string(),
            nth,
            action,
            hits: AtomicU32::new(0),
        })
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| std::env::var(ENV).ok().and_then(|s| parse(&s)))
            .as_ref()
    }

    /// Passes point `name`: dies or fails there if armed for this hit.
    pub fn hit(name: &'static str) -> std::io::Result<()> {
        let Some(a) = armed() else { return Ok(()) };
        if a.name != name {
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
                "injected failure at failpoint {name} (hit {n})"
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
                (a.name.as_str(), a.nth, a.action),
                ("fs-mkdir", 3, Action::Error)
            );
            let a = parse("state-save").unwrap();
            assert_eq!((a.nth, a.action), (1, Action::Kill));
            assert!(parse("x=explode").is_none());
            assert!(parse("x:y").is_none());
            // Unarmed in the unit-test process.
            assert!(hit("nothing").is_ok());
        }
    }
}
