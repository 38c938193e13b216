//! Sandbox cgroups paths: which driver a path selects, and where it leads.
//!
//! The rules follow the OCI runtimes: a path of the colon form
//! `slice:prefix:name` belongs to systemd (runc's `systemd` cgroup driver),
//! anything else is a cgroupfs path taken relative to each hierarchy's root.
//! Every path is checked here, before anything on the host is created.

use serde::Serialize;
use thiserror::Error;

pub use crate::cgroup::Driver;

/// Parent of sandbox cgroups when the runtime gives no path (Kata's default).
pub const DEFAULT_SANDBOX_PARENT: &str = "kata_sandboxed_pod";
/// Parent of overhead cgroups on the cgroupfs driver.
pub const OVERHEAD_PARENT: &str = "kata_overhead";
/// Slice holding overhead scopes on the systemd driver.
pub const OVERHEAD_SLICE: &str = "kata-overhead.slice";
/// Scope prefix of overhead scopes on the systemd driver.
pub const OVERHEAD_PREFIX: &str = "runtime-rs";
/// systemd's slice for system services, used when a colon path leaves the slice empty.
pub const DEFAULT_SLICE: &str = "system.slice";

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` is 256 with the NUL).
const UNIT_NAME_MAX: usize = 255;
/// Longest directory name accepted (the kernel's `NAME_MAX`; cgroupfs itself takes more).
const NAME_MAX: usize = 255;
/// Longest relative path accepted: with a mount point and a file name it must stay under PATH_MAX.
const PATH_LEN_MAX: usize = 3072;

/// A cgroups path that cannot be used, with the offending value.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// A `..` component, which could climb out of the cgroup root.
    #[error(
        "cgroups path {path:?} contains a '..' component; paths may not leave the cgroup root"
    )]
    ParentComponent {
        /// The path as given.
        path: String,
    },
    /// A NUL or newline byte, which cgroupfs and systemd both refuse.
    #[error("cgroups path {path:?} contains a NUL or newline byte")]
    ControlByte {
        /// The path as given.
        path: String,
    },
    /// The path names the hierarchy root itself, which a sandbox never owns.
    #[error(
        "cgroups path {path:?} names the cgroup root; a sandbox needs its own cgroup below it"
    )]
    Root {
        /// The path as given.
        path: String,
    },
    /// One component is longer than the kernel's NAME_MAX.
    #[error("cgroups path {path:?}: component of {len} bytes exceeds the limit of {NAME_MAX}")]
    NameTooLong {
        /// The path as given.
        path: String,
        /// Length of the longest component.
        len: usize,
    },
    /// The whole path is too long to address below a cgroup mount.
    #[error(
        "cgroups path of {len} bytes exceeds the limit of {PATH_LEN_MAX} (it starts {start:?})"
    )]
    PathTooLong {
        /// The start of the path.
        start: String,
        /// Its length.
        len: usize,
    },
    /// A component that would collide with cgroupfs's own control files.
    #[error("cgroups path {path:?}: component {component:?} is reserved by cgroupfs (names starting with 'cgroup.')")]
    ReservedName {
        /// The path as given.
        path: String,
        /// The reserved component.
        component: String,
    },
    /// A colon path that is not `slice:prefix:name`.
    #[error("cgroups path {path:?} has a colon but is not of the systemd form 'slice:prefix:name' ({reason})")]
    MalformedColon {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A slice name systemd refuses.
    #[error("invalid systemd slice name {slice:?}: {reason}")]
    BadSlice {
        /// The slice as given.
        slice: String,
        /// What systemd objects to.
        reason: &'static str,
    },
    /// A unit name systemd refuses.
    #[error("invalid systemd unit name {unit:?}: {reason}")]
    BadUnit {
        /// The unit name that would be built.
        unit: String,
        /// What systemd objects to.
        reason: &'static str,
    },
    /// A colon path whose slice or unit systemd would refuse.
    #[error("cgroups path {path:?}: {source}")]
    InPath {
        /// The path as given.
        path: String,
        /// What is wrong with its slice or unit.
        source: Box<PathError>,
    },
    /// A sandbox id that cannot be used in a cgroup or unit name.
    #[error("invalid sandbox id {id:?}: {reason}")]
    BadSandboxId {
        /// The id as given.
        id: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// A systemd unit a sandbox lives in, from a `slice:prefix:name` path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SystemdUnit {
    /// The parent slice (`system.slice` when the path left it empty).
    pub slice: String,
    /// The scope prefix (middle part).
    pub prefix: String,
    /// The name (last part).
    pub name: String,
    /// The unit systemd is asked for: `<prefix>-<name>.scope`, or `<name>` when it is a slice.
    pub unit: String,
}

impl SystemdUnit {
    /// Whether the unit is a slice rather than a scope.
    pub fn is_slice(&self) -> bool {
        self.unit.ends_with(".slice")
    }

    /// The unit's cgroup, relative to the hierarchy root, where systemd will put it.
    pub fn cgroup_path(&self) -> String {
        // systemd derives a slice's place from its name alone (dashes are
        // ancestry), and puts a scope directly below the slice it names.
        let expanded = if self.is_slice() {
            expand_slice(&self.unit)
        } else {
            expand_slice(&self.slice).map(|s| join_rel(&s, &self.unit))
        };
        // The name was validated when parsed, so expansion cannot fail here.
        expanded.unwrap_or_default()
    }
}

/// A parsed, validated sandbox cgroups path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase")]
pub enum CgroupsPath {
    /// A cgroupfs path, relative to each hierarchy's root, normalised (`a/b/c`).
    Cgroupfs {
        /// The normalised relative path.
        path: String,
    },
    /// A systemd unit.
    Systemd(SystemdUnit),
}

impl CgroupsPath {
    /// Parses `raw` for sandbox `sandbox_id`; an empty path means `kata_sandboxed_pod/<id>`.
    pub fn parse(raw: &str, sandbox_id: &str) -> Result<Self, PathError> {
        validate_sandbox_id(sandbox_id)?;
        if raw.bytes().any(|b| b == 0 || b == b'\n') {
            return Err(PathError::ControlByte { path: raw.into() });
        }
        if raw.is_empty() {
            return Ok(CgroupsPath::Cgroupfs {
                path: format!("{DEFAULT_SANDBOX_PARENT}/{sandbox_id}"),
            });
        }
        if raw.contains(':') {
            return parse_colon(raw)
                .map(CgroupsPath::Systemd)
                .map_err(|e| match e {
                    PathError::BadSlice { .. } | PathError::BadUnit { .. } => PathError::InPath {
                        path: raw.into(),
                        source: Box::new(e),
                    },
                    other => other,
                });
        }
        normalise_fs(raw).map(|path| CgroupsPath::Cgroupfs { path })
    }

    /// The driver this path selects.
    pub fn driver(&self) -> Driver {
        match self {
            CgroupsPath::Cgroupfs { .. } => Driver::Cgroupfs,
            CgroupsPath::Systemd(_) => Driver::Systemd,
        }
    }

    /// The cgroup relative to each hierarchy's root.
    pub fn relative(&self) -> String {
        match self {
            CgroupsPath::Cgroupfs { path } => path.clone(),
            CgroupsPath::Systemd(u) => u.cgroup_path(),
        }
    }

    /// The systemd unit, when the systemd driver manages this path.
    pub fn unit(&self) -> Option<&SystemdUnit> {
        match self {
            CgroupsPath::Systemd(u) => Some(u),
            CgroupsPath::Cgroupfs { .. } => None,
        }
    }

    /// The path as a user writes it (`slice:prefix:name` or `a/b/c`); parses back to `self`.
    pub fn raw(&self) -> String {
        match self {
            CgroupsPath::Cgroupfs { path } => path.clone(),
            CgroupsPath::Systemd(u) => format!("{}:{}:{}", u.slice, u.prefix, u.name),
        }
    }

    /// Every overhead cgroup a run of this sandbox may have used, the current form
    /// first: state-less cleanup looks for all of them.
    pub fn overhead_candidates(&self, sandbox_id: &str) -> Result<Vec<Self>, PathError> {
        let mut out = vec![self.overhead(sandbox_id)?];
        if let Some(legacy) = self.legacy_overhead() {
            if !out.contains(&legacy) {
                out.push(legacy);
            }
        }
        Ok(out)
    }

    /// The overhead cgroup that goes with this sandbox (same driver), named after the
    /// sandbox id as Kata runtime-rs names it: `kata_overhead/<sandbox-id>` (cgroupfs)
    /// or `kata-overhead.slice:runtime-rs:<sandbox-id>` (systemd).
    pub fn overhead(&self, sandbox_id: &str) -> Result<Self, PathError> {
        match self {
            CgroupsPath::Cgroupfs { .. } => {
                validate_sandbox_id(sandbox_id)?;
                Ok(CgroupsPath::Cgroupfs {
                    path: format!("{OVERHEAD_PARENT}/{sandbox_id}"),
                })
            }
            CgroupsPath::Systemd(_) => Self::parse(
                &format!("{OVERHEAD_SLICE}:{OVERHEAD_PREFIX}:{sandbox_id}"),
                sandbox_id,
            ),
        }
    }
}

impl CgroupsPath {
    /// The overhead cgroup earlier versions of this component used on cgroupfs:
    /// `kata_overhead/<cgroups path>`. Only for removing what an older run left
    /// (`cleanup` by path); state files record their own paths.
    pub fn legacy_overhead(&self) -> Option<Self> {
        match self {
            CgroupsPath::Cgroupfs { path } => Some(CgroupsPath::Cgroupfs {
                path: format!("{OVERHEAD_PARENT}/{path}"),
            }),
            CgroupsPath::Systemd(_) => None,
        }
    }
}

fn join_rel(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Checks a sandbox id: it becomes a directory and a unit name, so systemd's unit characters only.
pub fn validate_sandbox_id(id: &str) -> Result<(), PathError> {
    let bad = |reason| {
        Err(PathError::BadSandboxId {
            id: id.into(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 128 {
        return bad("it is longer than 128 bytes");
    }
    if id == "." || id == ".." {
        return bad("it is a relative directory name");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("only letters, digits and '_', '.', '-' are allowed");
    }
    Ok(())
}

/// Normalises a cgroupfs path to `a/b/c`, refusing what could leave the root.
fn normalise_fs(raw: &str) -> Result<String, PathError> {
    let mut parts = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => continue,
            ".." => return Err(PathError::ParentComponent { path: raw.into() }),
            c if c.len() > NAME_MAX => {
                return Err(PathError::NameTooLong {
                    path: raw.into(),
                    len: c.len(),
                })
            }
            // mkdir of "cgroup.procs" would hit the control file (EEXIST) instead of a directory.
            c if c.starts_with("cgroup.") => {
                return Err(PathError::ReservedName {
                    path: raw.into(),
                    component: c.into(),
                })
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Root { path: raw.into() });
    }
    let joined = parts.join("/");
    if joined.len() > PATH_LEN_MAX {
        return Err(PathError::PathTooLong {
            start: joined.chars().take(40).collect(),
            len: joined.len(),
        });
    }
    Ok(joined)
}

/// Parses `slice:prefix:name`.
fn parse_colon(raw: &str) -> Result<SystemdUnit, PathError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let malformed = |reason| PathError::MalformedColon {
        path: raw.into(),
        reason,
    };
    if parts.len() != 3 {
        return Err(malformed("it needs exactly three parts"));
    }
    let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
    if !slice.is_empty() && !slice.ends_with(".slice") {
        return Err(malformed("the first part must be empty or end in '.slice'"));
    }
    if name.is_empty() {
        return Err(malformed("the name (third part) is empty"));
    }
    let slice = if slice.is_empty() {
        DEFAULT_SLICE.to_string()
    } else {
        slice.to_string()
    };
    validate_slice(&slice)?;
    let unit = if name.ends_with(".slice") {
        validate_slice(name)?;
        if name == "-.slice" {
            // systemd's root slice is the hierarchy root: never a sandbox's own.
            return Err(PathError::Root {
                path: format!("{slice}:{prefix}:{name}"),
            });
        }
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    validate_unit(&unit)?;
    Ok(SystemdUnit {
        slice,
        prefix: prefix.into(),
        name: name.into(),
        unit,
    })
}

/// Bytes systemd allows in a unit name (`unit_name_is_valid`: letters, digits, `:-_.\`).
fn is_unit_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\')
}

fn validate_unit(unit: &str) -> Result<(), PathError> {
    let bad = |reason| {
        Err(PathError::BadUnit {
            unit: unit.into(),
            reason,
        })
    };
    if unit.len() > UNIT_NAME_MAX {
        return bad("longer than systemd's 255-byte limit");
    }
    let Some((stem, suffix)) = unit.rsplit_once('.') else {
        return bad("it has no unit type suffix");
    };
    if suffix != "scope" && suffix != "slice" {
        return bad("only .scope and .slice units hold sandboxes");
    }
    if stem.is_empty() {
        return bad("the part before the suffix is empty");
    }
    if stem.contains('/') {
        return bad("it contains '/'");
    }
    if !stem.bytes().all(is_unit_byte) {
        return bad("only letters, digits and ':', '-', '_', '.', '\\' are allowed");
    }
    Ok(())
}

/// Checks a slice name the way systemd's `slice_name_is_valid` does.
pub fn validate_slice(slice: &str) -> Result<(), PathError> {
    let bad = |reason| {
        Err(PathError::BadSlice {
            slice: slice.into(),
            reason,
        })
    };
    if slice == "-.slice" {
        return Ok(());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return bad("it does not end in '.slice'");
    };
    if stem.is_empty() {
        return bad("the name before '.slice' is empty");
    }
    if slice.contains('/') {
        return bad("it contains '/'");
    }
    if slice.len() > UNIT_NAME_MAX {
        return bad("longer than systemd's 255-byte limit");
    }
    if !stem.bytes().all(is_unit_byte) {
        return bad("only letters, digits and ':', '-', '_', '.', '\\' are allowed");
    }
    // A dash separates ancestry levels, so no level may be empty.
    if stem.starts_with('-') {
        return bad("it starts with '-'");
    }
    if stem.ends_with('-') {
        return bad("it ends with '-'");
    }
    if stem.contains("--") {
        return bad("it contains '--'");
    }
    Ok(())
}

/// Expands a slice to its cgroup path: `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`, `-.slice` → ``.
pub fn expand_slice(slice: &str) -> Result<String, PathError> {
    validate_slice(slice)?;
    if slice == "-.slice" {
        return Ok(String::new());
    }
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut out = String::new();
    let mut prefix = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            prefix.push('-');
            out.push('/');
        }
        prefix.push_str(part);
        out.push_str(&prefix);
        out.push_str(".slice");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123abcd";

    fn fs(raw: &str) -> String {
        match CgroupsPath::parse(raw, ID).unwrap() {
            CgroupsPath::Cgroupfs { path } => path,
            other => panic!("{raw}: expected cgroupfs, got {other:?}"),
        }
    }

    fn sd(raw: &str) -> SystemdUnit {
        match CgroupsPath::parse(raw, ID).unwrap() {
            CgroupsPath::Systemd(u) => u,
            other => panic!("{raw}: expected systemd, got {other:?}"),
        }
    }

    #[test]
    fn cgroupfs_paths_normalise_relative_to_root() {
        for (raw, want) in [
            ("", "kata_sandboxed_pod/0123abcd"),
            ("foo", "foo"),
            ("/foo", "foo"),
            ("/foo/bar/", "foo/bar"),
            ("foo//bar", "foo/bar"),
            ("./foo/./bar", "foo/bar"),
            (
                "/kubepods/burstable/pod123/abc",
                "kubepods/burstable/pod123/abc",
            ),
            ("a.b/c_d-e", "a.b/c_d-e"),
            ("a...b", "a...b"),
        ] {
            assert_eq!(fs(raw), want, "{raw}");
        }
    }

    #[test]
    fn cgroupfs_paths_refused() {
        let long = "x".repeat(256);
        for raw in [
            "..",
            "../x",
            "/a/../b",
            "a/..",
            "/..",
            "a/b/../../..",
            "/",
            "//",
            ".",
            "./",
            "a\0b",
            "a\nb",
            "\n",
            long.as_str(),
            "a/cgroup.procs",
            "cgroup.subtree_control",
            "kata.slice:p:-.slice",
            ":p:-.slice",
        ] {
            assert!(CgroupsPath::parse(raw, ID).is_err(), "{raw:?} accepted");
        }
        assert!(fs(&"x".repeat(255)).len() == 255);
        let deep = vec!["abcdefg"; 500].join("/");
        assert!(matches!(
            CgroupsPath::parse(&deep, ID),
            Err(PathError::PathTooLong { len: 3999, .. })
        ));
    }

    #[test]
    fn colon_paths_select_systemd() {
        let u = sd("kata.slice:kata:abc");
        assert_eq!(u.slice, "kata.slice");
        assert_eq!(u.unit, "kata-abc.scope");
        assert_eq!(u.cgroup_path(), "kata.slice/kata-abc.scope");

        let u = sd(":kata:abc");
        assert_eq!(u.slice, "system.slice");
        assert_eq!(u.cgroup_path(), "system.slice/kata-abc.scope");

        let u = sd("kata-pods-besteffort.slice:cri:abc");
        assert_eq!(
            u.cgroup_path(),
            "kata.slice/kata-pods.slice/kata-pods-besteffort.slice/cri-abc.scope"
        );

        let u = sd("-.slice:p:abc");
        assert_eq!(u.cgroup_path(), "p-abc.scope");

        let u = sd("kata.slice::abc");
        assert_eq!(u.unit, "abc.scope");

        let u = sd("kata.slice:ignored:kata-pod1.slice");
        assert!(u.is_slice());
        assert_eq!(u.unit, "kata-pod1.slice");
        assert_eq!(u.cgroup_path(), "kata.slice/kata-pod1.slice");
    }

    #[test]
    fn colon_paths_refused() {
        for raw in [
            "a:b",
            "a.slice:b",
            "a.slice:b:c:d",
            "::",
            "foo:bar:baz",
            "a.slice:p:",
            "a--b.slice:p:n",
            "-a.slice:p:n",
            "a-.slice:p:n",
            ".slice:p:n",
            "a/b.slice:p:n",
            "a.slice:p/q:n",
            "a.slice:p:n/m",
            "a.slice:p:n m",
            "a.slice:p:n\u{e9}",
            "a.slice:p:a--b.slice",
            "a.slice:p:-x.slice",
        ] {
            assert!(CgroupsPath::parse(raw, ID).is_err(), "{raw:?} accepted");
        }
        let long = format!("k.slice:p:{}", "n".repeat(250));
        let err = CgroupsPath::parse(&long, ID).unwrap_err();
        assert!(
            matches!(err, PathError::InPath { ref source, .. } if matches!(**source, PathError::BadUnit { .. }))
        );
    }

    #[test]
    fn slice_expansion() {
        for (slice, want) in [
            ("-.slice", ""),
            ("system.slice", "system.slice"),
            ("a-b.slice", "a.slice/a-b.slice"),
            ("a-b-c.slice", "a.slice/a-b.slice/a-b-c.slice"),
            (
                "kubepods-burstable-pod1.slice",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
            ),
            ("a_b.c.slice", "a_b.c.slice"),
        ] {
            assert_eq!(expand_slice(slice).unwrap(), want, "{slice}");
        }
        for bad in [
            "",
            ".slice",
            "a",
            "a.scope",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
            "--.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn overhead_paths() {
        let p = CgroupsPath::parse("", ID).unwrap();
        assert_eq!(p.overhead(ID).unwrap().relative(), "kata_overhead/0123abcd");
        let p = CgroupsPath::parse("/kubepods/burstable/pod1/abc", ID).unwrap();
        assert_eq!(p.overhead(ID).unwrap().relative(), "kata_overhead/0123abcd");
        assert_eq!(
            p.legacy_overhead().unwrap().relative(),
            "kata_overhead/kubepods/burstable/pod1/abc"
        );
        let p = CgroupsPath::parse("kata.slice:kata:x", ID).unwrap();
        let o = p.overhead(ID).unwrap();
        assert_eq!(o.driver(), Driver::Systemd);
        assert_eq!(o.unit().unwrap().unit, "runtime-rs-0123abcd.scope");
        assert_eq!(
            o.relative(),
            "kata.slice/kata-overhead.slice/runtime-rs-0123abcd.scope"
        );
    }

    #[test]
    fn sandbox_ids() {
        for ok in ["abc", "0123456789abcdef", "a_b-c.d"] {
            assert!(validate_sandbox_id(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a\0",
            long.as_str(),
            "a\\b",
            "a:b",
        ] {
            assert!(validate_sandbox_id(bad).is_err(), "{bad:?}");
        }
    }
}
