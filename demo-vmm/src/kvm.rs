//! KVM backend: one VM with a small guest memory region, vCPU fds that enter
//! the ring-3 busy loop of [`super::guest`], and the `KVM_RUN` loop.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::errno;

use super::guest;
use super::kick::ImmediateExit;
use super::{RunStats, VcpuRunError, VmmError};

/// Anonymous host memory backing the guest, unmapped on drop.
#[derive(Debug)]
struct GuestMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain anonymous memory; the host only writes it before any vCPU
// exists, afterwards only the guest touches it (through KVM).
unsafe impl Send for GuestMemory {}
// SAFETY: as above, no host-side access after setup.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    fn new(len: usize) -> Result<Self, errno::Error> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(errno::Error::last());
        }
        NonNull::new(ptr.cast::<u8>())
            .map(|ptr| GuestMemory { ptr, len })
            .ok_or_else(|| errno::Error::new(libc::ENOMEM))
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe our own live mapping, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; the VM that used it is
        // already closed (field order in `KvmVm`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Why opening `/dev/kvm` or creating the VM failed: the host has no usable KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmUnavailable {
    /// `open("/dev/kvm")` failed.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] errno::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("/dev/kvm opened but KVM_CREATE_VM failed: {0}")]
    CreateVm(#[source] errno::Error),
}

/// The VM: its fd and its memory (`/dev/kvm` itself is not needed after setup).
///
/// Field order is drop order: the VM fd closes before its memory is unmapped.
#[derive(Debug)]
pub struct KvmVm {
    vm: VmFd,
    /// Held only to stay mapped for as long as the VM exists.
    _memory: GuestMemory,
    cpuid: CpuId,
    run_size: usize,
    max_vcpus: u32,
}

impl KvmVm {
    /// Opens `/dev/kvm` and creates the VM; fails with [`KvmUnavailable`] if the host has no usable KVM.
    pub fn open() -> Result<(Kvm, VmFd), KvmUnavailable> {
        let kvm = Kvm::new().map_err(KvmUnavailable::Open)?;
        let vm = kvm.create_vm().map_err(KvmUnavailable::CreateVm)?;
        Ok((kvm, vm))
    }

    /// Sets up guest memory and reads what each vCPU needs (CPUID, kvm_run size).
    pub fn new(kvm: &Kvm, vm: VmFd) -> Result<Self, VmmError> {
        let setup = |step: &'static str| move |source| VmmError::KvmSetup { step, source };
        let mut memory = GuestMemory::new(guest::MEM_SIZE).map_err(setup("mmap guest memory"))?;
        guest::write_image(memory.as_mut_slice()).map_err(VmmError::GuestImage)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: guest::MEM_SIZE as u64,
            userspace_addr: memory.ptr.as_ptr() as u64,
        };
        // SAFETY: the region is our own mapping of MEM_SIZE bytes; it stays
        // mapped until after the VM fd is closed (field order of KvmVm).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(setup("KVM_SET_USER_MEMORY_REGION"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
        let run_size = kvm
            .get_vcpu_mmap_size()
            .map_err(setup("KVM_GET_VCPU_MMAP_SIZE"))?;
        // KVM_CAP_MAX_VCPUS: the per-VM vCPU limit (0 means the recommended count applies).
        let max_vcpus = u32::try_from(kvm.check_extension_int(Cap::MaxVcpus))
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(1);
        Ok(KvmVm {
            vm,
            _memory: memory,
            cpuid,
            run_size,
            max_vcpus,
        })
    }

    /// KVM's limit on vCPUs per VM.
    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus
    }

    /// Creates vCPU `index` (`KVM_CREATE_VCPU`) and its stopper-side `kvm_run` mapping.
    pub fn create_vcpu(&self, index: u32) -> Result<KvmVcpu, VmmError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VmmError::CreateVcpu { index, source })?;
        let kick =
            ImmediateExit::map(&fd, self.run_size).map_err(|source| VmmError::VcpuSetup {
                index,
                step: "mmap kvm_run",
                source,
            })?;
        let vcpu = KvmVcpu {
            index,
            fd,
            kick: Arc::new(kick),
        };
        // A vCPU starts with an empty CPUID table; give it what the host KVM
        // supports (the usual VMM practice; long mode needs CPUID.LM). Only
        // here: once a vCPU has run, KVM refuses KVM_SET_CPUID2 with EINVAL
        // unless the table equals the one it holds (which it adjusts at
        // runtime), so a parked vCPU keeps its table.
        vcpu.fd
            .set_cpuid2(&self.cpuid)
            .map_err(|source| VmmError::VcpuSetup {
                index,
                step: "KVM_SET_CPUID2",
                source,
            })?;
        vcpu.reset()?;
        Ok(vcpu)
    }

    /// Puts a parked vCPU back at the guest entry point before it runs again.
    pub fn reset_vcpu(&self, vcpu: &KvmVcpu) -> Result<(), VmmError> {
        vcpu.reset()
    }
}

/// One KVM vCPU: its fd and the mapping the stopper uses to set `immediate_exit`.
///
/// Field order is drop order; both hold a reference on the vCPU file.
#[derive(Debug)]
pub struct KvmVcpu {
    index: u32,
    fd: VcpuFd,
    kick: Arc<ImmediateExit>,
}

impl KvmVcpu {
    /// The stopper-side handle that sets `immediate_exit` on this vCPU.
    pub fn kicker(&self) -> Arc<ImmediateExit> {
        Arc::clone(&self.kick)
    }

    /// Loads 64-bit ring-3 segment state and entry registers.
    fn reset(&self) -> Result<(), VmmError> {
        let index = self.index;
        let step = |step: &'static str| {
            move |source| VmmError::VcpuSetup {
                index,
                step,
                source,
            }
        };
        // A parked vCPU was stopped with immediate_exit set; it must be 0 to run again.
        self.kick.clear();
        let mut sregs = self.fd.get_sregs().map_err(step("KVM_GET_SREGS"))?;
        guest::long_mode_sregs(&mut sregs);
        self.fd.set_sregs(&sregs).map_err(step("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&guest::entry_regs())
            .map_err(step("KVM_SET_REGS"))?;
        Ok(())
    }

    /// The `KVM_RUN` loop: runs until `stop` is seen at a port-write exit or a kick (EINTR).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<RunStats, VcpuRunError> {
        let index = self.index;
        let mut stats = RunStats::default();
        // The stopper may have set immediate_exit before we got here.
        while !stop.load(Ordering::Acquire) {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(guest::EXIT_PORT, _)) => stats.io_exits += 1,
                Ok(exit) => {
                    let mut exit = format!("{exit:?}");
                    // Where the guest was helps tell a fault from a bad setup.
                    if let Ok(regs) = self.fd.get_regs() {
                        exit.push_str(&format!(" at rip {:#x}", regs.rip));
                    }
                    return Err(VcpuRunError::UnexpectedExit { index, exit, stats });
                }
                // EINTR: a signal (our kick, or any other) or immediate_exit;
                // the loop condition decides whether it was a stop request.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    stats.interrupts += 1
                }
                Err(source) => {
                    return Err(VcpuRunError::Run {
                        index,
                        source,
                        stats,
                    })
                }
            }
        }
        Ok(stats)
    }
}
