//! The `devices` controller: OCI `devices` is deliberately not applied to the host
//! sandbox cgroup (the VMM needs its own devices: `/dev/kvm`, tap, vhost; the guest
//! enforces the containers' device rules). It is named in the notes, never dropped
//! silently.

use oci_spec::runtime::LinuxResources;

use super::Rules;
use crate::cgroup::{Controller, HierarchyKey};

/// The `devices` controller's rules.
pub(super) struct Devices;

impl Rules for Devices {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Devices)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("", &["devices"])]
    }

    fn notes(&self, res: &LinuxResources, out: &mut Vec<String>) {
        if res.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            out.push("resources.devices is not applied to the host sandbox cgroup: the VMM needs its own devices (/dev/kvm, tap, vhost), and the guest enforces the containers' device rules".to_string());
        }
    }
}
