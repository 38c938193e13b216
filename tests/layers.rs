//! The library's modules form layers (docs/design.md, "Layers"): a module may use
//! modules of its own layer's lower neighbours only, never one above it, so the
//! import graph has no cycle. This test reads every `crate::<module>` reference in
//! the library's non-test code and checks it against the table.

use std::collections::BTreeMap;
use std::path::Path;

/// Module → layer. Lower numbers are lower layers.
const LAYERS: &[(&str, u32)] = &[
    // 0: the shared vocabulary and process-wide helpers; they use no other module.
    ("cgroup", 0),
    ("cpulist", 0),
    ("failpoint", 0),
    ("metrics", 0),
    ("sigterm", 0),
    ("suggest", 0),
    // 1: inputs and host facts.
    ("path", 1),
    ("host", 1),
    ("placement", 1),
    // 2: resource rules (validation, cgroupfs writes, systemd properties).
    ("resources", 2),
    // 3: the runtime TOML and OCI bundle (bundle resources are read by `resources`' rules).
    ("config", 3),
    // 4: the plan (`resolve`), and the persisted state.
    ("plan", 4),
    ("state", 4),
    // 5: the drivers.
    ("manager", 5),
    // 6: what a vCPU thread does in its own hook (placement check or move, pinning).
    ("selfplace", 6),
    // 7: the supervisor thread inside the VMM.
    ("supervisor", 7),
    // 8: the entry point.
    ("sandbox", 8),
];

fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn non_test_code(text: &str) -> String {
    // Unit tests may use anything; they sit after `#[cfg(test)]` at the end of a file.
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn library_modules_import_only_lower_layers() {
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut violations = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        if rel == Path::new("lib.rs") {
            continue;
        }
        let m = module_of(rel);
        let Some(&own) = layer.get(m.as_str()) else {
            violations.push(format!(
                "{}: module {m} is not in the layer table",
                rel.display()
            ));
            continue;
        };
        let code = non_test_code(&std::fs::read_to_string(&f).unwrap());
        for (i, _) in code.match_indices("crate::") {
            let used: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used == m || used.is_empty() {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&l)
                    if l < own || (l == own && own > 0 && used != m && l_same_ok(&m, &used)) => {}
                Some(&l) => violations.push(format!(
                    "{}: {m} (layer {own}) uses {used} (layer {l})",
                    rel.display()
                )),
                None => violations.push(format!("{}: uses unknown module {used}", rel.display())),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}

/// Same-layer uses allowed, each one-way (so they cannot form a cycle).
fn l_same_ok(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("host", "path") | ("placement", "path") | ("state", "plan")
    )
}

/// tests/ holds the library's integration tests (root `Cargo.toml`) and the command's
/// (`cli/Cargo.toml`); both manifests list their tests (`autotests = false`), so a file
/// listed in neither would never run. Each file is listed exactly once.
#[test]
fn every_test_file_is_listed_in_one_manifest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut listed: BTreeMap<String, u32> = BTreeMap::new();
    for manifest in ["Cargo.toml", "cli/Cargo.toml"] {
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        for line in text.lines() {
            let Some(path) = line.trim().strip_prefix("path = \"") else {
                continue;
            };
            let path = path.trim_end_matches('"');
            if let Some(file) = path.rsplit_once("tests/").map(|(_, f)| f) {
                if !file.contains('/') {
                    *listed.entry(file.to_string()).or_default() += 1;
                }
            }
        }
    }
    let mut problems = Vec::new();
    for e in std::fs::read_dir(root.join("tests")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".rs") {
            continue;
        }
        match listed.remove(&name) {
            Some(1) => {}
            Some(n) => problems.push(format!("tests/{name} is listed {n} times")),
            None => problems.push(format!(
                "tests/{name} is in neither Cargo.toml nor cli/Cargo.toml: it never runs"
            )),
        }
    }
    for (name, _) in listed {
        problems.push(format!("tests/{name} is listed but does not exist"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The command is a thin client of the library's public API: outside its benchmark
/// harness (which measures the drivers and the supervisor themselves, through the
/// feature `internals`) it names no internal module, and neither does the embedding
/// example a runtime copies.
#[test]
fn the_command_and_the_example_use_the_public_api_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("cli/src"), &mut files);
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "bench"));
    files.push(root.join("examples/embed.rs"));
    let mut violations = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for internal in ["manager", "supervisor", "selfplace", "sigterm", "suggest"] {
            if text.contains(&format!("host_cgroups::{internal}")) {
                violations.push(format!("{} uses host_cgroups::{internal}", f.display()));
            }
        }
    }
    assert!(files.len() > 3, "{files:?}");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Resources are validated once, into `resources::Checked`, where they enter the library;
/// no other module calls the validation itself (the drivers, the plan and the supervisor
/// take a `Checked`).
#[test]
fn only_checked_resources_validates() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let callers: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("resources")))
        .filter(|f| {
            non_test_code(&std::fs::read_to_string(f).unwrap()).contains("resources::validate(")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        callers.is_empty(),
        "validation outside resources::Checked: {callers:?}"
    );
}

/// Every failpoint of the library's one list (`failpoint::Point::name`) is armed by some
/// test in tests/, so no point exists that no crash or fault test passes through (a test
/// whose armed point is never reached fails on its own: the run exits 3).
#[test]
fn every_failpoint_is_armed_by_a_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("src/failpoint.rs")).unwrap();
    let body = &src[src.find("pub const fn name(self)").unwrap()..];
    let body = &body[..body.find("\n    }\n").unwrap()];
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.split("=> \"").nth(1))
        .filter_map(|r| r.split('"').next())
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    let mut tests = String::new();
    for e in std::fs::read_dir(root.join("tests")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "rs") {
            tests.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    let unarmed: Vec<&&str> = names
        .iter()
        .filter(|n| !tests.contains(&format!("\"{n}")))
        .collect();
    assert!(unarmed.is_empty(), "failpoints no test arms: {unarmed:?}");
}
