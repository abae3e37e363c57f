//! The lints hold the line: every crate of the workspace takes the
//! workspace's lints (unwrap, expect and panic denied outside tests), the
//! engine and the guest SDK document their whole public API, and CI fails
//! on a clippy warning or on unformatted code.

use std::path::Path;
use std::process::Command;

use plumber_tests::workspace_root;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of a TOML table (`[name]` up to the next table), trimmed.
fn table(manifest: &str, name: &str) -> Option<Vec<String>> {
    let header = format!("[{name}]");
    let mut lines = manifest.lines().map(str::trim);
    lines.find(|line| *line == header)?;
    Some(
        lines
            .take_while(|line| !line.starts_with('['))
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect(),
    )
}

/// Each workspace member: its package name and manifest path.
fn members() -> Vec<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--locked",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            (
                package["name"].as_str().expect("name").to_owned(),
                package["manifest_path"]
                    .as_str()
                    .expect("manifest_path")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_workspace_denies_unwrap_expect_and_panic_outside_tests() {
    let root = workspace_root();
    let lints = table(&read(&root.join("Cargo.toml")), "workspace.lints.clippy")
        .expect("a [workspace.lints.clippy] table in Cargo.toml");
    for lint in ["unwrap_used", "expect_used", "panic"] {
        assert!(
            lints.contains(&format!("{lint} = \"deny\"")),
            "{lint} is not denied: {lints:?}"
        );
    }
    let clippy = read(&root.join("clippy.toml"));
    for setting in [
        "allow-unwrap-in-tests",
        "allow-expect-in-tests",
        "allow-panic-in-tests",
    ] {
        assert!(
            clippy
                .lines()
                .any(|line| line.trim() == format!("{setting} = true")),
            "clippy.toml lacks `{setting} = true`"
        );
    }
}

#[test]
fn every_crate_but_the_tests_takes_the_workspace_lints() {
    let members = members();
    assert!(members.len() >= 8, "{members:?}");
    for (name, manifest) in members {
        if name == "plumber-tests" {
            // Tests and their harness fail by panicking: see its manifest.
            continue;
        }
        let lints = table(&read(Path::new(&manifest)), "lints");
        assert_eq!(
            lints,
            Some(vec!["workspace = true".to_owned()]),
            "{name} ({manifest}) does not take the workspace's lints"
        );
    }
}

#[test]
fn the_engine_and_the_sdk_document_their_public_api() {
    let root = workspace_root();
    for lib in [
        "host/engine/src/lib.rs",
        "guest-sdk/rust/src/lib.rs",
        "wire/src/lib.rs",
    ] {
        let text = read(&root.join(lib));
        assert!(
            text.lines()
                .any(|line| line.trim() == "#![warn(missing_docs, unreachable_pub)]"),
            "{lib} does not warn on missing docs and unreachable `pub`"
        );
    }
}

#[test]
fn ci_fails_on_a_clippy_warning_or_unformatted_code() {
    let run = read(&workspace_root().join(".ci").join("run"));
    let lines: Vec<&str> = run.lines().map(str::trim).collect();
    let at = |command: &str| {
        lines
            .iter()
            .position(|line| line.starts_with(command))
            .unwrap_or_else(|| panic!(".ci/run does not run `{command}`"))
    };
    let tests = at("bash .ci/test");
    for gate in [
        "cargo fmt --all --check",
        "cargo clippy --workspace --all-targets --locked -- -D warnings",
    ] {
        assert!(at(gate) < tests, "`{gate}` comes after the tests");
    }
}

/// The shipped binary is stripped (a tenth of the size), and a separate
/// profile keeps line tables and symbols for perf. A manifest check: a
/// release build is too long for a test; docs/benchmarks.md gives the sizes.
#[test]
fn the_release_binary_is_stripped_and_profiling_keeps_symbols() {
    let manifest = read(&workspace_root().join("Cargo.toml"));
    let release = table(&manifest, "profile.release").expect("[profile.release]");
    assert!(
        release.contains(&"strip = true".to_owned())
            && release.contains(&"debug = false".to_owned()),
        "[profile.release]: {release:?}"
    );
    let profiling = table(&manifest, "profile.profiling").expect("[profile.profiling]");
    assert!(
        profiling.contains(&"inherits = \"release\"".to_owned())
            && profiling.contains(&"strip = false".to_owned())
            && profiling
                .iter()
                .any(|line| line.starts_with("debug = ") && line != "debug = false"),
        "[profile.profiling]: {profiling:?}"
    );
}
