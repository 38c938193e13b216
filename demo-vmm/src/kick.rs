//! Kicking a vCPU thread out of `KVM_RUN`: the `immediate_exit` flag plus a
//! real-time signal.
//!
//! KVM's rule (Documentation/virt/kvm/api.rst, `immediate_exit`): if
//! `kvm_run.immediate_exit` is non-zero when `KVM_RUN` starts, it returns
//! `EINTR` at once; a signal that arrives while the vCPU is in the guest makes
//! `KVM_RUN` return `EINTR` too. Setting the flag first and then signalling
//! the thread closes the window between the thread's last stop-flag check and
//! its next `KVM_RUN`.

use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use vmm_sys_util::errno;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Offset of the kick signal from SIGRTMIN (dragonball uses SIGRTMIN+0 too).
const KICK_SIGNAL_OFFSET: i32 = 0;

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only job is to interrupt KVM_RUN (which then
    // returns EINTR). A handler must exist because the default action of a
    // real-time signal terminates the process.
}

/// Installs the no-op kick handler once per process (without SA_RESTART, so
/// the interrupted ioctl returns EINTR instead of being restarted).
pub fn install_handler() -> Result<(), errno::Error> {
    static INSTALLED: OnceLock<Result<(), errno::Error>> = OnceLock::new();
    *INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), on_kick))
}

/// Sends the kick signal to a thread; a thread that already left is fine.
pub fn signal_thread(thread: libc::pthread_t) -> Result<(), errno::Error> {
    // SAFETY: `thread` comes from a JoinHandle that has not been joined yet, so
    // the pthread_t is still valid (glibc returns ESRCH if it has exited).
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    match rc {
        0 | libc::ESRCH => Ok(()),
        e => Err(errno::Error::new(e)),
    }
}

/// A second, stopper-owned mapping of a vCPU's `kvm_run` page, used only to
/// set `immediate_exit` from another thread.
///
/// `VcpuFd::set_kvm_immediate_exit` needs `&mut VcpuFd`, which the vCPU thread
/// holds while it sits in `KVM_RUN`. Mapping the vCPU fd again (offset 0 is
/// `kvm_run`, `KVM_GET_VCPU_MMAP_SIZE` long) gives the stopping side its own
/// view of the same page, valid for as long as this value lives, whatever
/// happens to the thread.
#[derive(Debug)]
pub struct ImmediateExit {
    run: NonNull<kvm_run>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; the only access is a volatile
// byte store to `immediate_exit`, which the kernel reads at KVM_RUN entry.
unsafe impl Send for ImmediateExit {}
// SAFETY: as above; concurrent byte stores of the same value are harmless.
unsafe impl Sync for ImmediateExit {}

impl ImmediateExit {
    /// Maps `kvm_run` of the vCPU behind `vcpu_fd`; `mmap_size` is `KVM_GET_VCPU_MMAP_SIZE`.
    pub fn map(vcpu_fd: &impl AsRawFd, mmap_size: usize) -> Result<Self, errno::Error> {
        map_shared(vcpu_fd.as_raw_fd(), mmap_size)
    }

    /// Sets `kvm_run.immediate_exit = 1`: every later `KVM_RUN` returns EINTR at once.
    pub fn set(&self) {
        // SAFETY: `run` points to a live kvm_run mapping of at least
        // size_of::<kvm_run>() bytes (KVM_GET_VCPU_MMAP_SIZE >= one page).
        unsafe {
            std::ptr::addr_of_mut!((*self.run.as_ptr()).immediate_exit).write_volatile(1);
        }
        // The store must be visible before the signal is sent.
        fence(Ordering::SeqCst);
    }

    /// Clears `immediate_exit` so a parked vCPU can run again after a later hotplug.
    pub fn clear(&self) {
        // SAFETY: as in `set`; only called while no thread runs this vCPU.
        unsafe {
            std::ptr::addr_of_mut!((*self.run.as_ptr()).immediate_exit).write_volatile(0);
        }
    }
}

fn map_shared(fd: RawFd, len: usize) -> Result<ImmediateExit, errno::Error> {
    if len < std::mem::size_of::<kvm_run>() {
        return Err(errno::Error::new(libc::EINVAL));
    }
    // SAFETY: a fresh shared mapping of a vCPU fd at offset 0; the kernel
    // validates fd and length, and we check the result.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(errno::Error::last());
    }
    match NonNull::new(ptr.cast::<kvm_run>()) {
        Some(run) => Ok(ImmediateExit { run, len }),
        None => Err(errno::Error::new(libc::ENOMEM)),
    }
}

impl Drop for ImmediateExit {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map_shared`. The
        // mapping holds a reference on the vCPU file, so this must go before
        // the VM can be destroyed.
        unsafe {
            libc::munmap(self.run.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_installs_once_and_signal_is_realtime() {
        install_handler().unwrap();
        install_handler().unwrap();
        let s = kick_signal();
        assert!(s >= libc::SIGRTMIN() && s <= libc::SIGRTMAX());
    }

    #[test]
    fn kicking_a_live_thread_does_not_kill_the_process() {
        use std::os::unix::thread::JoinHandleExt;
        install_handler().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        signal_thread(t.as_pthread_t()).unwrap();
        tx.send(()).unwrap();
        t.join().unwrap();
    }
}
