//! The embedding example (`crates/host-cgroups/examples/embed.rs`) runs as a test:
//! a `Sandbox` from the shipped Kata TOML, `db_vcpu<N>` threads calling the hooks
//! where dragonball does, a container cpuset update, teardown, nothing left.
//! Included as a module so that it also runs inside the test hosts.

#[allow(dead_code)]
#[path = "../examples/embed.rs"]
mod embed;

use std::path::Path;

#[test]
fn embed_example_places_every_vcpu_and_leaves_nothing() {
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configuration-dragonball.toml");
    embed::run(3, &config).unwrap();
}
