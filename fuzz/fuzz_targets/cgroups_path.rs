//! The cgroups-path parser never panics, and a parsed path never leaves the cgroup root.
#![no_main]

use host_cgroups::path::CgroupsPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(p) = CgroupsPath::parse(raw, "fuzzsb") else { return };
    let rel = p.relative();
    assert!(!rel.is_empty() || matches!(p, CgroupsPath::Systemd(_)), "{raw:?} resolved to the root");
    assert!(!rel.starts_with('/'), "{raw:?} -> {rel:?} is absolute");
    for comp in rel.split('/') {
        assert!(comp != ".." && comp != ".", "{raw:?} -> {rel:?} climbs");
        assert!(!comp.contains('\0') && !comp.contains('\n'), "{raw:?} -> control byte");
    }
    let joined = std::path::Path::new("/sys/fs/cgroup/cpu").join(&rel);
    assert!(joined.starts_with("/sys/fs/cgroup/cpu"), "{raw:?} -> {joined:?}");
    if let Ok(o) = p.overhead("fuzzsb") {
        assert!(!o.relative().split('/').any(|c| c == ".."));
    }
});
