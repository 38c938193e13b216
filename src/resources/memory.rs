//! The `memory` controller: OCI `memory.limit`, `reservation`, `swap`, `kernelTCP`,
//! `swappiness`, `disableOOMKiller` (and the fields that have no write: `kernel`,
//! `useHierarchy`, `checkBeforeUpdate`).
//!
//! v1 writes `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` in the order
//! the kernel's rule asks for ([`order_v1_memory`]), `memory.soft_limit_in_bytes`,
//! `memory.kmem.tcp.limit_in_bytes`, `memory.swappiness`, `memory.oom_control`; v2
//! writes `memory.max`, `memory.swap.max` (swap alone: [`swap_to_v2`]), `memory.low`.
//! systemd: `MemoryLimit` (v1), `MemoryMax`, `MemoryLow`, `MemorySwapMax` (v2).

use oci_spec::runtime::LinuxResources;

use super::systemd::{limit, PropValue, UnitProperty};
use super::{
    max_or, missing, only_v1, range_err, unsupported, HostSupport, ResourceError, Rules, Write,
};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// OCI `memory.swap` (memory+swap, v1 semantics) → v2 `memory.swap.max` (swap alone).
///
/// The rule of opencontainers/cgroups (runc) today: −1 stays unlimited; 0 is unset,
/// except that unlimited memory with no swap given means unlimited swap too; with
/// unlimited memory (−1) a positive memory+swap figure is the swap limit itself;
/// otherwise swap − limit, which must not be negative. A swap value with the memory
/// limit unset (0) is refused: there is nothing to subtract it from.
pub fn swap_to_v2(swap: i64, limit: i64) -> Result<i64, ResourceError> {
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    let bad = |reason: &str| ResourceError::OutOfRange {
        field: "memory.swap",
        value: swap.to_string(),
        reason: reason.into(),
    };
    if limit == -1 {
        return Ok(swap);
    }
    if limit == 0 {
        return Err(bad(
            "a swap limit needs a memory limit (memory.limit is unset)",
        ));
    }
    if swap < limit {
        return Err(bad(&format!(
            "memory+swap must be at least the memory limit {limit}"
        )));
    }
    swap.checked_sub(limit)
        .ok_or_else(|| bad("memory+swap minus the memory limit overflows"))
}

/// The kernel's ordering rule for v1 `memory.limit_in_bytes` and
/// `memory.memsw.limit_in_bytes`: the memory limit may never exceed memory+swap,
/// so each write is refused (EINVAL) when it would break that. Given the new
/// memory+swap value (`-1` = unlimited) and the memory limit in force, it answers
/// whether memory+swap must be written first: yes when it does not go below the
/// limit in force (raising, or lifting both to −1), else the memory limit first
/// (lowering). Both the cgroupfs driver and the systemd driver's v1 writes use it.
pub fn memsw_first(new_memsw: i64, current_limit: u64) -> bool {
    if new_memsw < 0 {
        return true;
    }
    // `new_memsw` is positive here, so the cast is exact.
    new_memsw as u64 >= current_limit
}

/// Puts the v1 memory limit and memory+swap writes of `writes` in the order
/// [`memsw_first`] asks for, given the memory limit in force.
pub fn order_v1_memory(writes: &mut [Write], current_limit: u64) {
    let lim = writes
        .iter()
        .position(|w| w.file == "memory.limit_in_bytes");
    let sw = writes
        .iter()
        .position(|w| w.file == "memory.memsw.limit_in_bytes");
    if let (Some(l), Some(s)) = (lim, sw) {
        let memsw: i64 = writes[s].value.parse().unwrap_or(-1);
        let want_sw_first = memsw_first(memsw, current_limit);
        if want_sw_first != (s < l) {
            writes.swap(l, s);
        }
    }
}

/// The smallest memory limit, in bytes, for a cgroup that holds the VMM process: 6 MiB.
///
/// Not a kernel bound (the kernel takes any byte count): with the whole VMM process in
/// the cgroup (layouts `sandbox-only` and `nested`), the runtime and VMM themselves are
/// charged to it, and a limit below what they already use at set-up gets them
/// OOM-killed before the first vCPU runs (seen: `memory.limit = 4096`, exit 137, the
/// cgroups and state left behind). Docker's daemon refuses container memory limits
/// under the same figure for the same reason (`linuxMinMemory = 6291456` in moby's
/// daemon_unix.go, "Minimum memory limit allowed is 6MB": startup overhead). With the
/// `sibling` layout only vCPU threads move and memory stays charged to the overhead
/// cgroup, so the floor does not apply there.
pub const VMM_MEMORY_MIN: i64 = 6 * 1024 * 1024;

/// Refuses memory limits below [`VMM_MEMORY_MIN`] for `cgroup` (relative path, named in
/// the error), a cgroup the VMM process is placed in, on cgroup `version`. The one home
/// of the rule: the plan (`resolve`, `run`, `Sandbox::new`/`start`, both drivers: the
/// systemd driver's `MemoryMax`/`MemoryLimit` come from the same field) and the
/// supervisor's start and `set_sandbox_resources` call it.
///
/// Checked: `memory.limit`; on v1 `memory.swap` (memory+swap, which bounds memory
/// too); on v2 `unified["memory.max"]`. v2 `memory.swap.max` bounds swap alone and
/// `memory.reservation` / `memory.high` do not kill, so they are not checked. −1 (no
/// limit) and 0 (unset) pass.
///
/// # Errors
/// [`ResourceError::OutOfRange`] naming the field, the value, the floor and the cgroup.
pub fn check_vmm_memory_floor(
    res: &LinuxResources,
    version: CgroupVersion,
    cgroup: &str,
) -> Result<(), ResourceError> {
    let low = |field: &'static str, v: i64| -> Result<(), ResourceError> {
        if v > 0 && v < VMM_MEMORY_MIN {
            return Err(range_err(
                field,
                v,
                format!(
                    "below {VMM_MEMORY_MIN} bytes (6 MiB), the smallest memory limit for cgroup {cgroup}, which holds the VMM process: the runtime and VMM are charged to it and would be OOM-killed (Docker refuses container memory limits under 6 MB for the same reason)"
                ),
            ));
        }
        Ok(())
    };
    if let Some(m) = res.memory() {
        low("memory.limit", m.limit().unwrap_or(0))?;
        if version == CgroupVersion::V1 {
            low("memory.swap", m.swap().unwrap_or(0))?;
        }
    }
    if version == CgroupVersion::V2 {
        if let Some(v) = res.unified().as_ref().and_then(|u| u.get("memory.max")) {
            // "max" and values the kernel parses otherwise are left to the kernel.
            if let Ok(n) = v.trim().parse::<i64>() {
                low("unified[\"memory.max\"]", n)?;
            }
        }
    }
    Ok(())
}

/// The `memory` controller's rules.
pub(super) struct Memory;

impl Rules for Memory {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Memory)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[(
            "memory",
            &[
                "limit",
                "reservation",
                "swap",
                "kernel",
                "kernelTCP",
                "swappiness",
                "disableOOMKiller",
                "useHierarchy",
                "checkBeforeUpdate",
            ],
        )]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        if let Some(mem) = res.memory() {
            for (field, v) in [
                ("memory.limit", mem.limit()),
                ("memory.reservation", mem.reservation()),
                ("memory.swap", mem.swap()),
                ("memory.kernelTCP", mem.kernel_tcp()),
            ] {
                if let Some(v) = v {
                    if v < -1 {
                        return Err(range_err(
                            field,
                            v,
                            "must be -1 (no limit), 0 (unset) or a byte count; the kernel refuses other negative values",
                        ));
                    }
                }
            }
            if let (Some(limit), Some(swap)) = (mem.limit(), mem.swap()) {
                if limit > 0 && swap > 0 && swap < limit {
                    return Err(range_err(
                        "memory.swap",
                        swap,
                        format!("memory+swap must be at least the memory limit {limit}"),
                    ));
                }
            }
            if let Some(s) = mem.swappiness() {
                if s > 100 {
                    return Err(range_err("memory.swappiness", s, "must be 0 to 100"));
                }
            }
            if mem.kernel().is_some_and(|k| k != 0) {
                return Err(unsupported(
                    "memory.kernel",
                    "kernel memory limits do not exist on cgroup v2 and Linux 6.1+ refuses memory.kmem.limit_in_bytes (runc ignores the field; it is refused here instead of dropped)",
                ));
            }
            if mem.use_hierarchy() == Some(false) {
                return Err(unsupported(
                    "memory.useHierarchy",
                    "memory accounting is always hierarchical (cgroup v2, and v1 since Linux 5.16); false cannot be honoured",
                ));
            }
        }
        Ok(())
    }

    fn writes(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        host: &HostSupport,
        w: &mut Vec<Write>,
    ) -> Result<(), ResourceError> {
        let v1 = version == CgroupVersion::V1;
        let c = Controller::Memory;
        if let Some(mem) = res.memory() {
            let limit = mem.limit().unwrap_or(0);
            let swap = mem.swap().unwrap_or(0);
            let reservation = mem.reservation().unwrap_or(0);
            if v1 {
                // runc and youki: unlimited memory with no swap given lifts memory+swap too.
                let memsw = if limit == -1 && swap == 0 { -1 } else { swap };
                if limit == -1 && swap > 0 {
                    return Err(range_err(
                        "memory.swap",
                        swap,
                        "cgroup v1 needs memory <= memory+swap, and memory.limit is -1 (unlimited)",
                    ));
                }
                if swap != 0 && !host.memsw {
                    return Err(missing(
                        "memory.swap",
                        "swap accounting (memory.memsw.*; swapaccount=1)",
                    ));
                }
                if limit != 0 {
                    w.push(Write::new(c, "memory.limit_in_bytes", limit));
                }
                if memsw != 0 && host.memsw {
                    w.push(Write::new(c, "memory.memsw.limit_in_bytes", memsw));
                }
                if reservation != 0 {
                    w.push(Write::new(c, "memory.soft_limit_in_bytes", reservation));
                }
                if let Some(t) = mem.kernel_tcp().filter(|t| *t != 0) {
                    if !host.kmem_tcp {
                        return Err(missing(
                            "memory.kernelTCP",
                            "memory.kmem.tcp.limit_in_bytes",
                        ));
                    }
                    w.push(Write::new(c, "memory.kmem.tcp.limit_in_bytes", t));
                }
                if let Some(s) = mem.swappiness() {
                    w.push(Write::new(c, "memory.swappiness", s));
                }
                if let Some(d) = mem.disable_oom_killer() {
                    w.push(Write::new(c, "memory.oom_control", u8::from(d)));
                }
            } else {
                if limit != 0 {
                    w.push(Write::new(c, "memory.max", max_or(limit)));
                }
                let swap2 = swap_to_v2(swap, limit)?;
                // swap == limit converts to 0, which here means "no swap", not "unset".
                if swap2 != 0 || swap > 0 {
                    w.push(Write::new(c, "memory.swap.max", max_or(swap2)));
                }
                if reservation != 0 {
                    w.push(Write::new(c, "memory.low", max_or(reservation)));
                }
                if mem.kernel_tcp().is_some_and(|t| t != 0) {
                    return Err(only_v1(
                        "memory.kernelTCP",
                        "TCP buffer memory is always charged to memory.max",
                    ));
                }
                if mem.swappiness().is_some() {
                    return Err(only_v1("memory.swappiness", "no per-cgroup swappiness"));
                }
                if mem.disable_oom_killer() == Some(true) {
                    return Err(only_v1(
                        "memory.disableOOMKiller",
                        "the OOM killer cannot be turned off per cgroup",
                    ));
                }
            }
        }
        Ok(())
    }

    fn properties(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        p: &mut Vec<UnitProperty>,
    ) -> Result<(), ResourceError> {
        let Some(mem) = res.memory() else {
            return Ok(());
        };
        let lim = mem.limit().unwrap_or(0);
        let swap = mem.swap().unwrap_or(0);
        let reservation = mem.reservation().unwrap_or(0);
        match version {
            CgroupVersion::V1 => {
                if lim != 0 {
                    p.push(UnitProperty::new("MemoryLimit", PropValue::U64(limit(lim))));
                }
            }
            CgroupVersion::V2 => {
                if lim != 0 {
                    p.push(UnitProperty::new("MemoryMax", PropValue::U64(limit(lim))));
                }
                if reservation != 0 {
                    p.push(UnitProperty::new(
                        "MemoryLow",
                        PropValue::U64(limit(reservation)),
                    ));
                }
                let swap2 = swap_to_v2(swap, lim)?;
                // swap == limit converts to 0 (no swap at all): runc's systemd driver drops
                // it, leaving swap unlimited; it is sent here, as runc's fs2 driver writes it.
                if swap2 != 0 || swap > 0 {
                    p.push(UnitProperty::new(
                        "MemorySwapMax",
                        PropValue::U64(limit(swap2)),
                    ));
                }
            }
        }
        Ok(())
    }

    fn covered(&self, version: CgroupVersion) -> &'static [&'static str] {
        match version {
            CgroupVersion::V1 => &["memory.limit_in_bytes"],
            CgroupVersion::V2 => &["memory.max", "memory.low", "memory.swap.max"],
        }
    }

    /// v1 `memory.oom_control` reads as key/value lines (`oom_kill_disable 1`,
    /// `under_oom 0`) but is written as `0` or `1`.
    fn restore(&self, file: &str, old: &str) -> Option<String> {
        (file == "memory.oom_control").then(|| {
            let on = old.lines().any(|l| l.trim() == "oom_kill_disable 1");
            u8::from(on).to_string()
        })
    }

    fn notes(&self, res: &LinuxResources, out: &mut Vec<String>) {
        let Some(m) = res.memory() else { return };
        if m.use_hierarchy() == Some(true) {
            out.push("memory.useHierarchy = true needs no write: memory accounting is always hierarchical".into());
        }
        if m.check_before_update() == Some(true) {
            out.push("memory.checkBeforeUpdate: not checked by this component; the kernel refuses (v1) or reclaims (v2) when a new limit is below usage".into());
        }
        if m.disable_oom_killer() == Some(false) {
            out.push("memory.disableOOMKiller = false is the kernel's default".into());
        }
    }
}
