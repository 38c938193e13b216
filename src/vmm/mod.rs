//! The minimal in-process KVM VMM (placeholder until the vCPU issue lands).
