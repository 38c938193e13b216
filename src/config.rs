//! The Kata runtime TOML (the file users have) and the OCI bundle's cgroup fields.
//!
//! Only the keys this component reads are interpreted; every other section and
//! key of a full `configuration-dragonball.toml` is ignored, so the user's file
//! loads unchanged.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Spec};
use serde::Serialize;
use thiserror::Error;

use crate::suggest::nearest;
use toml::Value;

/// Kata's ceiling on vCPUs per VM (`MAX_DRAGONBALL_VCPUS` and the docs' 240).
pub const MAX_VCPUS: u32 = 240;

/// The configuration used when no file is given: dragonball in-process, sandbox cgroup only.
pub const EMBEDDED_DEFAULT: &str = r#"
[hypervisor.dragonball]
default_vcpus = 1
default_maxvcpus = 0

[runtime]
hypervisor_name = "dragonball"
sandbox_cgroup_only = true
enable_vcpus_pinning = false
static_sandbox_resource_mgmt = false
"#;

/// A configuration that cannot be used, naming the file and key.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key holds a value of the wrong type.
    #[error("configuration {path}: key {key} must be {expected}, found {found}")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// What was expected.
        expected: &'static str,
        /// What the file has.
        found: String,
    },
    /// A key holds a value outside its range.
    #[error("configuration {path}: key {key} = {value} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// The value as written.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No `[hypervisor.<name>]` section matches.
    #[error("configuration {path}: no [hypervisor.{name}] section")]
    NoHypervisor {
        /// The file.
        path: PathBuf,
        /// The hypervisor looked for.
        name: String,
    },
    /// The OCI bundle's config.json could not be loaded.
    #[error("cannot load OCI bundle config {path}: {message}")]
    Bundle {
        /// The config.json.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The runtime settings this component acts on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeConfig {
    /// Where the settings came from (`<embedded>` for the default).
    pub source: PathBuf,
    /// `runtime.hypervisor_name`; `dragonball` means the VMM runs in-process.
    pub hypervisor_name: String,
    /// `runtime.sandbox_cgroup_only`: everything in the sandbox cgroup, no overhead cgroup.
    pub sandbox_cgroup_only: bool,
    /// `runtime.enable_vcpus_pinning`: pin vCPU i to the i-th CPU of the cpuset when sizes match.
    pub enable_vcpus_pinning: bool,
    /// `runtime.vcpu_cgroup_layout` (this component's key, not Kata's): which split
    /// `sandbox_cgroup_only = false` makes; `None` when unset (see
    /// [`crate::placement::VcpuLayout::choose`]).
    pub vcpu_cgroup_layout: Option<crate::placement::SplitChoice>,
    /// `runtime.static_sandbox_resource_mgmt`.
    pub static_sandbox_resource_mgmt: bool,
    /// `hypervisor.<name>.default_vcpus` as written (may be fractional; negative means
    /// all host CPUs, 0 or unset means 1: see [`RuntimeConfig::vcpus`]).
    pub default_vcpus: f64,
    /// `hypervisor.<name>.default_maxvcpus` as written (0 = all host CPUs).
    pub default_maxvcpus: u32,
    /// Unknown keys in the tables this component reads, each with the nearest known key.
    pub warnings: Vec<String>,
}

/// The vCPU counts of a sandbox: as configured and as in force after Kata's adjustments.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VcpuCounts {
    /// `default_vcpus` as written (0 when unset).
    pub configured_default_vcpus: f64,
    /// `default_maxvcpus` as written.
    pub configured_default_maxvcpus: u32,
    /// The host CPUs the adjustment used.
    pub host_cpus: u32,
    /// `default_vcpus` in force (may be fractional).
    pub default_vcpus: f64,
    /// vCPUs at boot: `default_vcpus` in force, rounded up.
    pub boot: u32,
    /// The hotplug ceiling in force.
    pub max: u32,
}

impl VcpuCounts {
    /// The counts for an explicit boot count (`host-cgroups run --vcpus N`), which
    /// overrides `default_vcpus`: `boot` becomes `vcpus`, and when that is above the
    /// maximum in force the hotplug ceiling `max` is raised to it, with a note saying
    /// so (Kata's rules would have brought the boot count down to the maximum, at most
    /// the host's CPUs). Below or at the maximum: no note, `max` unchanged. `source`
    /// is the configuration file named in the note.
    pub fn with_boot(&self, vcpus: u32, source: &Path) -> (VcpuCounts, Option<String>) {
        let mut c = *self;
        c.boot = vcpus;
        if vcpus <= self.max {
            return (c, None);
        }
        c.max = vcpus;
        let note = format!(
            "--vcpus {vcpus} is above the vCPU maximum in force, {} (default_maxvcpus = {} in {}; Kata brings it to at most the host's {} CPUs, and would boot at most {} vCPUs): booting {vcpus} as asked, and the hotplug ceiling is raised to {vcpus}",
            self.max,
            self.configured_default_maxvcpus,
            source.display(),
            self.host_cpus,
            self.max
        );
        (c, Some(note))
    }

    /// A line for `notes` when Kata's rules changed a configured value, else `None`.
    pub fn note(&self, source: &Path) -> Option<String> {
        // 0 (and a negative default_vcpus) are documented spellings, not clamps.
        let changed_boot = self.configured_default_vcpus > 0.0
            && self.configured_default_vcpus != self.default_vcpus;
        let changed_max =
            self.configured_default_maxvcpus != 0 && self.configured_default_maxvcpus != self.max;
        if !changed_boot && !changed_max {
            return None;
        }
        Some(format!(
            "vCPUs: default_vcpus = {} → {} and default_maxvcpus = {} → {} in force ({} host CPUs; Kata's rules: maxvcpus 0 or above the host's CPUs = the host's CPUs, vcpus negative or above them = the host's CPUs, 0 = 1, then at most maxvcpus) for {}",
            self.configured_default_vcpus,
            self.default_vcpus,
            self.configured_default_maxvcpus,
            self.max,
            self.host_cpus,
            source.display()
        ))
    }
}

/// Keys Kata's runtime-rs knows in `[runtime]` (kata-types `Runtime`, and the shipped
/// configuration-dragonball.toml): others are typos, warned about with the nearest.
pub const RUNTIME_KEYS: &[&str] = &[
    "name",
    "hypervisor_name",
    "agent_name",
    "log_level",
    "enable_debug",
    "enable_tracing",
    "jaeger_endpoint",
    "jaeger_user",
    "jaeger_password",
    "experimental",
    "enable_pprof",
    "internetworking_model",
    "disable_guest_seccomp",
    "disable_new_netns",
    "sandbox_cgroup_only",
    "static_sandbox_resource_mgmt",
    "sandbox_bind_mounts",
    "vfio_mode",
    "disable_guest_empty_dir",
    "emptydir_mode",
    "keep_abnormal",
    "enable_vcpus_pinning",
    "dan_conf",
    "use_passfd_io",
    "passfd_listener_port",
    "pod_resource_api_sock",
    "create_container_timeout",
    "shared_fs",
    // This component's own key (not Kata's): the split `sandbox_cgroup_only = false` makes.
    "vcpu_cgroup_layout",
];

/// Keys Kata's runtime-rs knows in `[hypervisor.<name>]` (kata-types hypervisor
/// sections, and the shipped configuration-dragonball.toml).
pub const HYPERVISOR_KEYS: &[&str] = &[
    "path",
    "ctlpath",
    "valid_ctlpaths",
    "valid_hypervisor_paths",
    "jailer_path",
    "valid_jailer_paths",
    "kernel",
    "initrd",
    "image",
    "kernel_params",
    "kernel_verity_params",
    "firmware",
    "machine_type",
    "machine_accelerators",
    "cpu_features",
    "default_vcpus",
    "default_maxvcpus",
    "default_memory",
    "default_maxmemory",
    "default_bridges",
    "memory_slots",
    "memory_offset",
    "enable_virtio_mem",
    "enable_mem_prealloc",
    "enable_hugepages",
    "file_mem_backend",
    "valid_file_mem_backends",
    "enable_swap",
    "enable_guest_swap",
    "guest_swap_path",
    "guest_swap_size_percent",
    "guest_swap_create_threshold_secs",
    "reclaim_guest_freed_memory",
    "rootfs_type",
    "block_device_driver",
    "block_device_aio",
    "block_device_cache_set",
    "block_device_cache_direct",
    "block_device_cache_noflush",
    "disable_block_device_use",
    "disable_image_nvdimm",
    "vm_rootfs_driver",
    "shared_fs",
    "virtio_fs_daemon",
    "valid_virtio_fs_daemon_paths",
    "virtio_fs_cache",
    "virtio_fs_cache_size",
    "virtio_fs_extra_args",
    "virtio_fs_queue_size",
    "virtio_fs_is_dax",
    "msize_9p",
    "enable_vhost_user_store",
    "vhost_user_store_path",
    "valid_vhost_user_store_paths",
    "vhost_user_reconnect_timeout_sec",
    "network_queues",
    "num_queues",
    "queue_size",
    "disable_vhost_net",
    "enable_iommu",
    "enable_iommu_platform",
    "hotplug_vfio_on_root_bus",
    "pcie_root_port",
    "pcie_switch_port",
    "cold_plug_vfio",
    "hot_plug_vfio",
    "entropy_source",
    "valid_entropy_sources",
    "pflashes",
    "enable_annotations",
    "disable_nesting_checks",
    "disable_seccomp",
    "seccompsandbox",
    "disable_selinux",
    "disable_guest_selinux",
    "enable_debug",
    "log_level",
    "debug_console_enabled",
    "guest_hook_path",
    "guest_memory_dump_path",
    "guest_memory_dump_paging",
    "confidential_guest",
    "sev_snp_guest",
    "rootless",
    "use_legacy_serial",
    "dial_timeout",
    "overhead_memory",
    "overhead_vcpus",
    "factory",
];

impl RuntimeConfig {
    /// The embedded default configuration.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, Path::new("<embedded>"))
    }

    /// Loads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Self::embedded();
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.into(),
                // The whole report: line, column, the offending line and the parser's text.
                message: e.to_string().trim_end().to_string(),
            })?;
        let keys = Keys { path, root: &root };
        let hypervisors = keys.table(&["hypervisor"])?;
        let hypervisor_name = match keys.string(&["runtime", "hypervisor_name"])? {
            Some(name) => name,
            // Kata picks the only hypervisor section when the runtime names none.
            None => match hypervisors.map(|h| h.keys().collect::<Vec<_>>()) {
                Some(names) if names.len() == 1 => names[0].clone(),
                _ => "dragonball".to_string(),
            },
        };
        if hypervisors.and_then(|h| h.get(&hypervisor_name)).is_none() {
            return Err(ConfigError::NoHypervisor {
                path: path.into(),
                name: hypervisor_name,
            });
        }
        let hv = ["hypervisor", hypervisor_name.as_str()];
        let default_vcpus = keys
            .number(&[hv[0], hv[1], "default_vcpus"])?
            .unwrap_or(0.0);
        let maxv = keys
            .number(&[hv[0], hv[1], "default_maxvcpus"])?
            .unwrap_or(0.0);
        if maxv < 0.0 || maxv.fract() != 0.0 || maxv > f64::from(u32::MAX) {
            return Err(keys.invalid(
                &[hv[0], hv[1], "default_maxvcpus"],
                maxv.to_string(),
                "must be a whole number, 0 or more (Kata reads it as an unsigned integer)",
            ));
        }
        let mut warnings = Vec::new();
        for (table, known) in [
            (vec!["runtime"], RUNTIME_KEYS),
            (vec![hv[0], hv[1]], HYPERVISOR_KEYS),
        ] {
            if let Some(t) = keys.table(&table)? {
                for (k, v) in t {
                    if v.is_table() || known.contains(&k.as_str()) {
                        continue;
                    }
                    let hint = nearest(k, known)
                        .map(|n| format!("; did you mean {n}?"))
                        .unwrap_or_default();
                    let w = format!(
                        "configuration {}: unknown key {}.{k}{hint} (ignored; Kata's default applies)",
                        path.display(),
                        table.join(".")
                    );
                    tracing::warn!("{w}");
                    warnings.push(w);
                }
            }
        }
        let layout_key = ["runtime", crate::placement::LAYOUT_KEY];
        let vcpu_cgroup_layout = match keys.string(&layout_key)? {
            None => None,
            Some(v) => Some(crate::placement::SplitChoice::parse(&v).ok_or_else(|| {
                keys.invalid(
                    &layout_key,
                    format!("{v:?}"),
                    "must be \"nested\" (vCPU threads in a child of the sandbox cgroup) or \"sibling\" (upstream Kata's kata_overhead split, cgroup v1 + cgroupfs only)",
                )
            })?),
        };
        Ok(RuntimeConfig {
            source: path.into(),
            vcpu_cgroup_layout,
            sandbox_cgroup_only: keys
                .boolean(&["runtime", "sandbox_cgroup_only"])?
                .unwrap_or(false),
            enable_vcpus_pinning: keys
                .boolean(&["runtime", "enable_vcpus_pinning"])?
                .unwrap_or(false),
            static_sandbox_resource_mgmt: keys
                .boolean(&["runtime", "static_sandbox_resource_mgmt"])?
                .unwrap_or(false),
            default_vcpus,
            default_maxvcpus: maxv as u32,
            hypervisor_name,
            warnings,
        })
    }

    /// Whether the VMM runs inside this process, which is what activates the supervisor.
    pub fn vmm_in_process(&self) -> bool {
        self.hypervisor_name == "dragonball"
    }

    /// The vCPU counts in force on a host with `host_cpus` CPUs, by Kata runtime-rs'
    /// rules (kata-types `CpuInfo::adjust_config`): `default_maxvcpus` of 0 or above the
    /// host's CPUs becomes the host's CPUs; `default_vcpus` negative or above the host's
    /// CPUs becomes the host's CPUs, 0 (or unset) becomes 1; then `default_vcpus` is
    /// brought down to `default_maxvcpus`. Both stay within Kata's 240 for dragonball.
    /// The VM boots `ceil(default_vcpus)` vCPUs.
    pub fn vcpus(&self, host_cpus: u32) -> VcpuCounts {
        let host = host_cpus.clamp(1, MAX_VCPUS);
        let max = if self.default_maxvcpus == 0 || self.default_maxvcpus > host {
            host
        } else {
            self.default_maxvcpus
        };
        let host_f = f64::from(host);
        let mut v = self.default_vcpus;
        if v < 0.0 || v > host_f {
            v = host_f;
        } else if v == 0.0 {
            v = 1.0;
        }
        if v > f64::from(max) {
            v = f64::from(max);
        }
        // v is within 1..=240 here, so the cast is exact.
        let boot = (v.ceil() as u32).clamp(1, max);
        VcpuCounts {
            configured_default_vcpus: self.default_vcpus,
            configured_default_maxvcpus: self.default_maxvcpus,
            host_cpus: host,
            default_vcpus: v,
            boot,
            max,
        }
    }

    /// vCPUs at boot on a host with `host_cpus` CPUs ([`Self::vcpus`]).
    pub fn boot_vcpus(&self, host_cpus: u32) -> u32 {
        self.vcpus(host_cpus).boot
    }

    /// The hotplug ceiling on a host with `host_cpus` CPUs ([`Self::vcpus`]).
    pub fn max_vcpus(&self, host_cpus: u32) -> u32 {
        self.vcpus(host_cpus).max
    }
}

/// Typed access to dotted keys, with errors naming the file and key.
struct Keys<'a> {
    path: &'a Path,
    root: &'a toml::Table,
}

impl Keys<'_> {
    fn get(&self, key: &[&str]) -> Option<&Value> {
        let (last, parents) = key.split_last()?;
        let mut table = self.root;
        for p in parents {
            table = table.get(*p)?.as_table()?;
        }
        table.get(*last)
    }

    fn wrong(&self, key: &[&str], expected: &'static str, v: &Value) -> ConfigError {
        ConfigError::WrongType {
            path: self.path.into(),
            key: key.join("."),
            expected,
            found: format!("{} {v}", v.type_str()),
        }
    }

    fn invalid(&self, key: &[&str], value: String, reason: &'static str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.into(),
            key: key.join("."),
            value,
            reason,
        }
    }

    fn table(&self, key: &[&str]) -> Result<Option<&toml::Table>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(v) => Err(self.wrong(key, "a table", v)),
        }
    }

    fn string(&self, key: &[&str]) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    fn boolean(&self, key: &[&str]) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// An integer or a float (Kata accepts both for vCPU counts).
    fn number(&self, key: &[&str]) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(v) => Err(self.wrong(key, "a number", v)),
        }
    }
}

/// The cgroup fields of an OCI bundle's `config.json`.
#[derive(Debug, Clone, Default)]
pub struct BundleCgroup {
    /// `linux.cgroupsPath`, empty when absent.
    pub cgroups_path: String,
    /// `linux.resources`.
    pub resources: Option<LinuxResources>,
    /// Unknown keys in `linux.resources` (see [`crate::resources::Parsed`]).
    pub warnings: Vec<String>,
}

/// Reads `linux.cgroupsPath` and `linux.resources` from `<bundle>/config.json`.
///
/// A missing or unreadable file keeps the OS error; the resources are read from the
/// JSON itself (so `pids` without `limit` changes nothing, and unknown keys warn).
pub fn load_bundle(bundle: &Path) -> Result<BundleCgroup, ConfigError> {
    let path = bundle.join("config.json");
    let err = |message: String| ConfigError::Bundle {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let spec: Spec = serde_json::from_value(value.clone())
        .map_err(|e| err(format!("not an OCI runtime spec: {e}")))?;
    let linux = spec.linux().as_ref();
    let parsed = match value.get("linux").and_then(|l| l.get("resources")) {
        Some(r) if !r.is_null() => Some(
            crate::resources::parse_value(r.clone())
                .map_err(|e| err(format!("linux.resources: {e}")))?,
        ),
        _ => None,
    };
    Ok(BundleCgroup {
        cgroups_path: linux
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        warnings: parsed
            .as_ref()
            .map(|p| p.warnings.clone())
            .unwrap_or_default(),
        resources: parsed.map(|p| p.resources),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuntimeConfig, ConfigError> {
        RuntimeConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn upstream_dragonball_configuration_loads_unchanged() {
        let text = include_str!("../tests/data/configuration-dragonball.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.hypervisor_name, "dragonball");
        assert!(c.sandbox_cgroup_only);
        assert!(!c.enable_vcpus_pinning);
        assert!(c.static_sandbox_resource_mgmt);
        assert_eq!(c.default_vcpus, 1.0);
        assert_eq!(c.default_maxvcpus, 0);
        assert!(c.vmm_in_process());
        assert_eq!(c.boot_vcpus(2), 1);
        assert_eq!(c.max_vcpus(2), 2);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn embedded_default() {
        let c = RuntimeConfig::load(None).unwrap();
        assert!(c.sandbox_cgroup_only);
        assert_eq!(c.hypervisor_name, "dragonball");
    }

    #[test]
    fn floats_and_ints_for_vcpus() {
        let c = parse(
            "[hypervisor.dragonball]\ndefault_vcpus = 1.5\ndefault_maxvcpus = 8\n[runtime]\nhypervisor_name='dragonball'\nenable_vcpus_pinning=true\n",
        )
        .unwrap();
        assert_eq!(c.boot_vcpus(64), 2);
        assert_eq!(c.max_vcpus(64), 8);
        // Kata brings the maximum down to the host's CPUs.
        assert_eq!(c.max_vcpus(4), 4);
        assert!(c.enable_vcpus_pinning);
        assert!(!c.sandbox_cgroup_only);
        let c = parse("[hypervisor.dragonball]\ndefault_maxvcpus = 4.0\n").unwrap();
        assert_eq!(c.default_maxvcpus, 4);
    }

    #[test]
    fn unknown_keys_and_sections_are_ignored() {
        let c = parse(
            "[hypervisor.dragonball]\nfoo = 'bar'\n[hypervisor.dragonball.x]\ny=1\n[agent.kata]\nz=[1,2]\n[runtime]\nwhatever=3\nsandbox_cgroup_only=true\n[other]\n",
        )
        .unwrap();
        assert!(c.sandbox_cgroup_only);
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (text, key) in [
            (
                "[hypervisor.dragonball]\ndefault_vcpus = 'two'\n",
                "default_vcpus",
            ),
            (
                "[hypervisor.dragonball]\ndefault_maxvcpus = -2\n",
                "default_maxvcpus",
            ),
            (
                "[hypervisor.dragonball]\ndefault_maxvcpus = 1.5\n",
                "default_maxvcpus",
            ),
            (
                "[hypervisor.dragonball]\n[runtime]\nsandbox_cgroup_only = 'yes'\n",
                "sandbox_cgroup_only",
            ),
            (
                "[hypervisor.dragonball]\n[runtime]\nhypervisor_name = 3\n",
                "hypervisor_name",
            ),
            (
                "[hypervisor.qemu]\n[runtime]\nhypervisor_name = 'dragonball'\n",
                "hypervisor.dragonball",
            ),
            ("hypervisor = 1\n", "hypervisor"),
            ("[hypervisor.dragonball\n", "TOML"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
            assert!(err.contains("test.toml"), "{err}");
        }
    }

    #[test]
    fn vcpu_counts_follow_kata() {
        let cfg = |v: &str, m: &str| {
            parse(&format!(
                "[hypervisor.dragonball]\ndefault_vcpus = {v}\ndefault_maxvcpus = {m}\n"
            ))
            .unwrap()
        };
        // (default_vcpus, default_maxvcpus, host CPUs) → (boot, max)
        for (v, m, host, boot, max) in [
            ("-1", "0", 2, 2, 2),
            ("0", "0", 2, 1, 2),
            ("1", "0", 2, 1, 2),
            ("4", "2", 2, 2, 2),
            ("4", "2", 8, 2, 2),
            ("1", "8", 2, 1, 2),
            ("3", "8", 2, 2, 2),
            ("1.5", "0", 4, 2, 4),
            ("-3", "3", 8, 3, 3),
            ("300", "0", 500, 240, 240),
        ] {
            let c = cfg(v, m).vcpus(host);
            assert_eq!(
                (c.boot, c.max),
                (boot, max),
                "vcpus {v} maxvcpus {m} host {host}"
            );
        }
        let c = cfg("4", "8").vcpus(2);
        let note = c.note(Path::new("x.toml")).unwrap();
        assert!(
            note.contains("default_vcpus = 4 → 2") && note.contains("default_maxvcpus = 8 → 2"),
            "{note}"
        );
        assert!(cfg("1", "0").vcpus(2).note(Path::new("x")).is_none());
        // An explicit boot count above the maximum: booted as asked, the ceiling raised,
        // and a note naming both; at or below it nothing changes but the boot count.
        let c = cfg("1", "0").vcpus(2);
        let (r, note) = c.with_boot(3, Path::new("x.toml"));
        assert_eq!((r.boot, r.max), (3, 3));
        let note = note.unwrap();
        for needle in [
            "--vcpus 3",
            "maximum in force, 2",
            "x.toml",
            "host's 2 CPUs",
        ] {
            assert!(note.contains(needle), "{needle}: {note}");
        }
        let (r, note) = c.with_boot(2, Path::new("x.toml"));
        assert_eq!((r.boot, r.max, note), (2, 2, None));
    }

    #[test]
    fn unknown_keys_warn_with_the_nearest_known_key() {
        let c = parse("[hypervisor.dragonball]\ndefault_vcpu = 2\n[runtime]\nsandbox_cgroups_only = false\nzzzzzzzz = 1\n").unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("runtime.sandbox_cgroups_only")
                && w.contains("did you mean sandbox_cgroup_only")));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("default_vcpu;") && w.contains("default_vcpus")));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("runtime.zzzzzzzz") && !w.contains("did you mean")));
    }

    #[test]
    fn syntax_errors_keep_line_column_and_snippet() {
        let err = parse("[runtime]\nsandbox_cgroup_only = tru\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("column"), "{err}");
        assert!(err.contains("sandbox_cgroup_only = tru"), "{err}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = RuntimeConfig::load(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/x.toml"));
    }

    #[test]
    fn bundle_cgroup_fields() {
        let dir = std::env::temp_dir().join(format!("hcg-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"cgroupsPath":"kata.slice:kata:x","resources":{"cpu":{"quota":50000,"period":100000}}}}"#,
        )
        .unwrap();
        let b = load_bundle(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(b.cgroups_path, "kata.slice:kata:x");
        let cpu = b.resources.unwrap().cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(50000));
        let err = load_bundle(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("No such file or directory"), "{err}");
    }
}
