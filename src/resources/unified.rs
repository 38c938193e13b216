//! OCI `unified`: cgroup v2 files written as given, after every other write (the
//! runtime spec's rule), each checked to be a `<controller>.<name>` file of a
//! controller the host offers, and never one that moves processes or shapes the tree.

use oci_spec::runtime::LinuxResources;

use super::{unsupported, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, HierarchyKey};

/// v2 files OCI `unified` may not write: they move processes or shape the tree this
/// component manages.
const UNIFIED_FORBIDDEN: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.type",
    "cgroup.kill",
    "cgroup.freeze",
];

fn unified_key(key: &str) -> Result<(), ResourceError> {
    let field = || format!("unified[{key:?}]");
    let ok_shape = key.split_once('.').is_some_and(|(c, rest)| {
        !c.is_empty() && !rest.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    }) && key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if !ok_shape {
        return Err(unsupported(
            field(),
            "a unified key is a cgroup v2 file name, <controller>.<name>",
        ));
    }
    if UNIFIED_FORBIDDEN.contains(&key) {
        return Err(unsupported(
            field(),
            "it moves processes or changes the cgroup tree this component manages",
        ));
    }
    Ok(())
}

/// The rules of OCI `unified`.
pub(super) struct Unified;

impl Rules for Unified {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Unified
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("", &["unified"])]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        if let Some(u) = res.unified() {
            for key in u.keys() {
                unified_key(key)?;
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
        if let Some(u) = res.unified() {
            let mut keys: Vec<(&String, &String)> = u.iter().collect();
            keys.sort();
            for (k, v) in keys {
                if v1 {
                    return Err(unsupported(
                        format!("unified[{k:?}]"),
                        "unified keys are cgroup v2 files; this is cgroup v1",
                    ));
                }
                let ctl = k.split('.').next().unwrap_or("");
                if host.probed && ctl != "cgroup" && !host.v2_controllers.iter().any(|c| c == ctl) {
                    return Err(unsupported(
                        format!("unified[{k:?}]"),
                        format!("controller {ctl} is not available at this host's cgroup root"),
                    ));
                }
                // Written as given, after everything else (the runtime spec's rule).
                w.push(Write::new(HierarchyKey::Unified, k.clone(), v));
            }
        }
        Ok(())
    }
}
