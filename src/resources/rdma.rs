//! The `rdma` controller: OCI `rdma` is refused (this component does not apply
//! RDMA limits to the host sandbox cgroup; the guest owns its devices).

use oci_spec::runtime::LinuxResources;

use super::{unsupported, ResourceError, Rules};
use crate::cgroup::{Controller, HierarchyKey};

/// The `rdma` controller's rules.
pub(super) struct Rdma;

impl Rules for Rdma {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Rdma)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("", &["rdma"])]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(unsupported(
                "rdma",
                "this component does not apply RDMA limits to the host sandbox cgroup",
            ));
        }
        Ok(())
    }
}
