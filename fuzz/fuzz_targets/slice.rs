//! Slice expansion never panics; an accepted slice expands to `.slice` levels that each validate.
#![no_main]

use host_cgroups::path::{expand_slice, validate_slice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(expanded) = expand_slice(s) else { return };
    if s == "-.slice" {
        assert!(expanded.is_empty());
        return;
    }
    let levels: Vec<&str> = expanded.split('/').collect();
    assert_eq!(*levels.last().unwrap(), s);
    for l in levels {
        assert!(validate_slice(l).is_ok(), "{s:?} expanded to invalid level {l:?}");
        assert!(l != ".." && !l.is_empty());
    }
});
