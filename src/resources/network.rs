//! The v1 network controllers: `net_cls` (OCI `network.classID` →
//! `net_cls.classid`) and `net_prio` (OCI `network.priorities` →
//! `net_prio.ifpriomap`, one interface per write). cgroup v2 has neither (it
//! classifies with eBPF): refused there.

use oci_spec::runtime::LinuxResources;

use super::{only_v1, range_err, unsupported, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// The `net_cls` and `net_prio` rules.
pub(super) struct Network;

impl Rules for Network {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::NetCls)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("network", &["classID", "priorities"])]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        if let Some(n) = res.network() {
            for p in n.priorities().iter().flatten() {
                let name = p.name();
                if name.is_empty()
                    || name.len() > 15
                    || name.contains('/')
                    || name.chars().any(|c| c.is_whitespace())
                {
                    return Err(range_err(
                        "network.priorities.name",
                        format!("{name:?}"),
                        "must be an interface name (1 to 15 bytes, no '/' or blanks)",
                    ));
                }
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
        if let Some(n) = res.network() {
            if let Some(c) = n.class_id() {
                if !v1 {
                    return Err(only_v1(
                        "network.classID",
                        "net_cls is v1 only; v2 classifies with eBPF",
                    ));
                }
                if !host.net_cls {
                    return Err(unsupported(
                        "network.classID",
                        "the net_cls controller is not mounted on this host",
                    ));
                }
                w.push(Write::new(Controller::NetCls, "net_cls.classid", c));
            }
            for p in n.priorities().iter().flatten() {
                if !v1 {
                    return Err(only_v1("network.priorities", "net_prio is v1 only"));
                }
                if !host.net_prio {
                    return Err(unsupported(
                        "network.priorities",
                        "the net_prio controller is not mounted on this host",
                    ));
                }
                w.push(Write::new(
                    Controller::NetPrio,
                    "net_prio.ifpriomap",
                    format!("{} {}", p.name(), p.priority()),
                ));
            }
        }
        Ok(())
    }

    /// `net_prio.ifpriomap` lists every interface; a write sets one, so the first line
    /// read is the best restore.
    fn restore(&self, file: &str, old: &str) -> Option<String> {
        (file == "net_prio.ifpriomap").then(|| old.lines().next().unwrap_or("").to_string())
    }

    /// Named by its section (`network`): the runtime's readers take it as one field.
    fn given(&self, res: &serde_json::Value, out: &mut Vec<String>) {
        if res.get("network").is_some_and(|v| !v.is_null()) {
            out.push("network".into());
        }
    }
}
