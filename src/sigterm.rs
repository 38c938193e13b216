//! Surviving the stop of our own unit.
//!
//! With the systemd driver and `sandbox_cgroup_only = true` the runtime (shim)
//! process sits in the very scope it asks systemd to stop. `StopUnit` makes
//! systemd send SIGTERM to every process of the scope, the caller included;
//! SIGKILL follows only after `TimeoutStopUSec` (300 s here). So teardown runs
//! with SIGTERM ignored, finishes its cleanup, and the process then exits, which
//! empties the scope and completes the stop job.

use std::sync::Mutex;

/// Saved SIGTERM disposition and the number of live guards.
struct Saved {
    depth: usize,
    old: Option<libc::sigaction>,
}

// The disposition that was in force before the first live guard (sigaction is plain data).
static SAVED: Mutex<Saved> = Mutex::new(Saved {
    depth: 0,
    old: None,
});

/// Ignores SIGTERM until dropped, then restores the disposition in force before the first guard.
///
/// Guards nest (also across threads): SIGTERM stays ignored until the last one is
/// dropped. A SIGTERM sent while ignored is discarded by the kernel, not queued, so
/// the restored handler does not see it later.
#[must_use = "SIGTERM is ignored only while the guard lives"]
pub struct SigtermIgnored(());

impl SigtermIgnored {
    /// Starts ignoring SIGTERM.
    pub fn new() -> Self {
        let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        if saved.depth == 0 {
            // SAFETY: sigaction is plain data; zeroed is a valid (empty) value.
            let mut ign: libc::sigaction = unsafe { std::mem::zeroed() };
            ign.sa_sigaction = libc::SIG_IGN;
            // SAFETY: same as above; filled in by the kernel.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers to initialised sigaction structs.
            let rc = unsafe { libc::sigaction(libc::SIGTERM, &ign, &mut old) };
            saved.old = (rc == 0).then_some(old);
        }
        saved.depth += 1;
        SigtermIgnored(())
    }
}

impl Default for SigtermIgnored {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SigtermIgnored {
    fn drop(&mut self) {
        let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        saved.depth = saved.depth.saturating_sub(1);
        if saved.depth == 0 {
            if let Some(old) = saved.old.take() {
                // SAFETY: restores the disposition sigaction(2) returned earlier.
                unsafe { libc::sigaction(libc::SIGTERM, &old, std::ptr::null_mut()) };
            }
        }
    }
}

/// Runs `f` (the sandbox teardown) with SIGTERM ignored, so stopping our own
/// systemd unit does not kill this process half-way through its cleanup.
///
/// Call it around the teardown and exit soon after: systemd's stop job completes
/// when the last process of the unit is gone, and it sends SIGKILL after
/// `TimeoutStopUSec`.
pub fn ignore_sigterm_during<T>(f: impl FnOnce() -> T) -> T {
    let _guard = SigtermIgnored::new();
    f()
}

/// Whether SIGTERM is ignored right now.
#[cfg(test)]
pub fn sigterm_ignored() -> bool {
    // SAFETY: reads the disposition only (null new action).
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer; a null act pointer only queries.
    let rc = unsafe { libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut cur) };
    rc == 0 && cur.sa_sigaction == libc::SIG_IGN
}

/// Unit tests that change or read the SIGTERM disposition, which is process-wide, take
/// this first, so that one's guard does not show in another's reading.
#[cfg(test)]
pub(crate) static TEST_SERIAL: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_ignores_sigterm_and_restores() {
        let _serial = TEST_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let before = sigterm_ignored();
        let r = ignore_sigterm_during(|| {
            assert!(sigterm_ignored());
            {
                let _inner = SigtermIgnored::new();
                assert!(sigterm_ignored());
            }
            // The outer guard still holds.
            assert!(sigterm_ignored());
            // SAFETY: a signal to ourselves; it is ignored, so nothing happens.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            7
        });
        assert_eq!(r, 7);
        assert_eq!(sigterm_ignored(), before);
    }
}
