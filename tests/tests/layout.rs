//! The crates keep their concerns (read from `cargo tree` over the lock
//! file, offline): the engine links no server library and none of the
//! tool's; each connector's library comes with its cargo feature only; the
//! library an embedder links (`plumber`) has none of the tool's libraries,
//! which the tool (`plumber-cli`) does have.

use std::collections::BTreeSet;
use std::process::Command;

/// Each connector feature and the libraries only it brings.
const CONNECTOR_LIBRARIES: [(&str, &[&str]); 6] = [
    ("nats", &["async-nats"]),
    ("http", &["axum", "reqwest"]),
    ("sql", &["sqlx"]),
    ("redis", &["redis"]),
    ("sled", &["sled"]),
    ("redb", &["redb"]),
];

/// What `plumber bench`, `build` and the binary need and a library does not.
const TOOL_LIBRARIES: [&str; 5] = [
    "clap",
    "mimalloc",
    "tracing-subscriber",
    "wasi-preview1-component-adapter-provider",
    "wit-parser",
];

/// The packages `package` links with `arguments` (features), procedural
/// macros and build dependencies left out.
fn linked(package: &str, arguments: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-p", package])
        .args(arguments)
        .args([
            "-e",
            "normal,no-proc-macro",
            "--prefix",
            "none",
            "-f",
            "{p}",
        ])
        .current_dir(plumber_tests::workspace_root())
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package} {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn server_libraries() -> impl Iterator<Item = &'static str> {
    CONNECTOR_LIBRARIES
        .iter()
        .flat_map(|(_, libraries)| libraries.iter().copied())
}

#[test]
fn the_engine_links_no_server_library_and_none_of_the_tools() {
    let engine = linked("plumber-engine", &["--no-default-features"]);
    assert!(engine.contains("wasmtime"), "{engine:?}");
    for library in server_libraries().chain(TOOL_LIBRARIES) {
        assert!(!engine.contains(library), "plumber-engine links {library}");
    }
}

#[test]
fn each_connector_library_comes_with_its_feature_only() {
    let none = linked("plumber-connectors", &["--no-default-features"]);
    for library in server_libraries() {
        assert!(!none.contains(library), "without features: {library}");
    }
    for (feature, own) in CONNECTOR_LIBRARIES {
        let with = linked(
            "plumber-connectors",
            &["--no-default-features", "--features", feature],
        );
        for library in server_libraries() {
            assert_eq!(
                with.contains(library),
                own.contains(&library),
                "feature {feature}: {library}"
            );
        }
    }
}

#[test]
fn the_library_embedders_link_has_none_of_the_tools_libraries() {
    let library = linked("plumber", &[]);
    for connector in server_libraries() {
        assert!(library.contains(connector), "plumber lacks {connector}");
    }
    let tool = linked("plumber-cli", &[]);
    for tool_library in TOOL_LIBRARIES {
        assert!(
            tool.contains(tool_library),
            "plumber-cli lacks {tool_library}"
        );
        assert!(
            !library.contains(tool_library),
            "plumber links {tool_library}"
        );
    }
}
