//! ARCHITECTURE.md is kept true by machine: every crate is in its layer table, every
//! crate it names exists, and no dependency points up a layer.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("crates/cairn sits two levels below the workspace root")
}

/// The layer table: crate name → layer ("0", "1", …, or "test").
fn documented_layers() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md exists");
    let mut layers = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | layer | `crate` | owns |
        if cells.len() >= 4 && cells[2].starts_with('`') && cells[2].ends_with('`') {
            let layer = cells[1];
            if layer == "test" || layer.parse::<u32>().is_ok() {
                layers.insert(cells[2].trim_matches('`').to_owned(), layer.to_owned());
            }
        }
    }
    layers
}

/// Workspace crates with their dependencies on other workspace crates: (name, kind).
fn workspace_crates() -> BTreeMap<String, Vec<(String, Option<String>)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: Vec<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|dep| {
                    let name = dep["name"].as_str()?.to_owned();
                    names
                        .contains(&name)
                        .then(|| (name, dep["kind"].as_str().map(str::to_owned)))
                })
                .collect();
            (
                package["name"].as_str().unwrap_or_default().to_owned(),
                deps,
            )
        })
        .collect()
}

#[test]
fn every_crate_is_documented_and_every_documented_crate_exists() {
    let documented = documented_layers();
    let crates = workspace_crates();
    for name in crates.keys() {
        assert!(
            documented.contains_key(name),
            "crate {name} is missing from the layer table in ARCHITECTURE.md"
        );
    }
    for name in documented.keys() {
        assert!(
            crates.contains_key(name),
            "ARCHITECTURE.md names crate {name}, which does not exist"
        );
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    let documented = documented_layers();
    for (name, deps) in workspace_crates() {
        let Some(layer) = documented.get(&name) else {
            continue;
        };
        for (dep, kind) in deps {
            let Some(dep_layer) = documented.get(&dep) else {
                continue;
            };
            let is_dev = kind.as_deref() == Some("dev");
            if dep_layer == "test" {
                assert!(
                    is_dev,
                    "{name} depends on the test kit outside dev-dependencies"
                );
                continue;
            }
            if layer == "test" || is_dev {
                continue;
            }
            let (layer_n, dep_n): (u32, u32) = (
                layer.parse().expect("numeric layer"),
                dep_layer.parse().expect("numeric layer"),
            );
            assert!(
                dep_n < layer_n,
                "{name} (layer {layer_n}) depends on {dep} (layer {dep_n}): dependencies must point down"
            );
        }
    }
}

#[test]
fn the_layer_table_is_found() {
    let documented = documented_layers();
    assert_eq!(
        documented.get("cairn-log").map(String::as_str),
        Some("1"),
        "{documented:?}"
    );
    assert_eq!(
        documented.get("cairn-testkit").map(String::as_str),
        Some("test")
    );
}

/// Every `.rs` file under `dir`, however deep.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The HTTP crate may reach projections and the log only through
/// `cairn_domain::reads`, which takes a grant from the policy: no file under
/// `cairn-http/src` opens a read, a transaction or a connection of its own, or runs a
/// statement.
#[test]
fn the_http_api_reads_only_through_the_policy() {
    let dir = workspace_root().join("crates/cairn-http/src");
    let forbidden = [
        "queries::",
        "read_events(",
        "event_by_id(",
        "state::load",
        "state::list",
        ".snapshot(",
        ".scoped(",
        ".begin(",
        ".reader(",
        "_session(",
        ".pause_writer(",
        ".write_to(",
        ".conn(",
        "fetch_all(",
        "fetch_one(",
        "fetch_optional(",
        "execute(",
        "execute_script(",
    ];
    let mut offences = Vec::new();
    let files = rust_files(&dir);
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable");
        for (number, line) in text.lines().enumerate() {
            if forbidden.iter().any(|needle| line.contains(needle)) {
                offences.push(format!(
                    "{}:{}: {}",
                    path.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        files.len() > 20,
        "found only {} source files in {}",
        files.len(),
        dir.display()
    );
    assert!(
        offences.is_empty(),
        "cairn-http reads around the policy:\n{}",
        offences.join("\n")
    );
}

/// Only the log (and the test kit, which tampers with stored rows on purpose) knows a
/// database driver: every other crate reaches the database through `cairn-log`.
#[test]
fn only_the_log_knows_a_database_driver() {
    let mut offences = Vec::new();
    let crates = workspace_root().join("crates");
    for entry in std::fs::read_dir(&crates).expect("the crates") {
        let dir = entry.expect("an entry").path();
        let name = dir
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned();
        if name == "cairn-log" || name == "cairn-testkit" || !dir.is_dir() {
            continue;
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("a manifest");
        for driver in ["sqlx", "rusqlite"] {
            if manifest
                .lines()
                .any(|line| line.trim_start().starts_with(driver))
            {
                offences.push(format!("{name}/Cargo.toml depends on {driver}"));
            }
        }
        for path in rust_files(&dir) {
            // This test names them.
            if path.ends_with("architecture.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            for (number, line) in text.lines().enumerate() {
                if line.contains("sqlx") || line.contains("rusqlite") {
                    offences.push(format!(
                        "{}:{}: {}",
                        path.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "a crate other than cairn-log names a database driver:\n{}",
        offences.join("\n")
    );
}

/// Inside `cairn-log`, only the backend modules name a driver.
#[test]
fn inside_the_log_only_the_backends_name_a_driver() {
    let src = workspace_root().join("crates/cairn-log/src");
    let backend = src.join("backend");
    let mut offences = Vec::new();
    for path in rust_files(&src) {
        if path.starts_with(&backend) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        for (number, line) in text.lines().enumerate() {
            if line.contains("sqlx") || line.contains("rusqlite") {
                offences.push(format!(
                    "{}:{}: {}",
                    path.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "cairn-log names a driver outside src/backend:\n{}",
        offences.join("\n")
    );
}

/// A stored payload is decoded only after the registry brought it to its current
/// version (`Registry::upcast`): in the handlers' `payload`, the operators' decisions
/// and the trace's timeline, which upcast first, and in the payload contracts that
/// check a payload at the version it declares. Decoding `event.data` anywhere else
/// would read older events as if they were current.
#[test]
fn stored_payloads_are_decoded_only_after_the_registry_upcast_them() {
    let allowed = [
        "crates/cairn-dispatch/src/registry.rs",
        "crates/cairn-dispatch/src/spec.rs",
        "crates/cairn-dispatch/src/operations.rs",
        "crates/cairn-trace/src/lib.rs",
    ];
    let mut offences = Vec::new();
    let mut n_files = 0;
    for krate in std::fs::read_dir(workspace_root().join("crates")).expect("crates/") {
        let src = krate.expect("an entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        for path in rust_files(&src) {
            n_files += 1;
            let relative = path
                .strip_prefix(workspace_root())
                .unwrap_or(&path)
                .display()
                .to_string();
            if allowed.contains(&relative.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            for (number, line) in text.lines().enumerate() {
                let decodes = line.contains("from_value") || line.contains("::deserialize(");
                if decodes && (line.contains(".data") || line.contains("(data")) {
                    offences.push(format!("{relative}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(n_files > 100, "found only {n_files} source files");
    assert!(
        offences.is_empty(),
        "stored payloads decoded around the registry's upcast:\n{}",
        offences.join("\n")
    );
}

/// `Registry::to_current` brings a payload to its current version but leaves its
/// personal fields sealed: a reader serving events would show envelopes. Every reader
/// goes through `cairn_dispatch::current_events` (or `current_event`,
/// `current_events_in`), which upcasts and opens them.
#[test]
fn readers_open_personal_fields_on_the_one_decoding_path() {
    let allowed = [
        "crates/cairn-dispatch/src/registry.rs",
        "crates/cairn-dispatch/src/personal.rs",
    ];
    let mut offences = Vec::new();
    let mut n_files = 0;
    for krate in std::fs::read_dir(workspace_root().join("crates")).expect("crates/") {
        let src = krate.expect("an entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        for path in rust_files(&src) {
            n_files += 1;
            let relative = path
                .strip_prefix(workspace_root())
                .unwrap_or(&path)
                .display()
                .to_string();
            if allowed.contains(&relative.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            for (number, line) in text.lines().enumerate() {
                if line.contains(".to_current(") {
                    offences.push(format!("{relative}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(n_files > 100, "found only {n_files} source files");
    assert!(
        offences.is_empty(),
        "events served without their personal fields opened:\n{}",
        offences.join("\n")
    );
}
