//! `plumber new` for every language, then the project's own native test,
//! `plumber build`, and `plumber run` of the pipeline it comes with.

use plumber_tests as harness;

use std::path::Path;
use std::process::Command;

fn plumber(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(args)
        .current_dir(dir)
        // Rust projects share one target directory across test runs.
        .env(
            "CARGO_TARGET_DIR",
            harness::workspace_root().join("target").join("templates"),
        )
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plumber");
    assert!(
        output.status.success(),
        "plumber {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn native(dir: &Path, program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env(
            "CARGO_TARGET_DIR",
            harness::workspace_root().join("target").join("templates"),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}

fn new_build_run(lang: &str, native_test: &[(&str, &[&str])]) {
    let parent = tempfile::tempdir().unwrap();
    let name = format!("wc-{lang}");
    plumber(parent.path(), &["new", &name, "--lang", lang]);
    let dir = parent.path().join(&name);
    for (program, args) in native_test {
        native(&dir, program, args);
    }
    let built = plumber(parent.path(), &["build", &name]);
    assert!(built.contains(&format!("{lang} pipe")), "{built}");
    let out = plumber(parent.path(), &["run", &format!("{name}/pipeline.json")]);
    assert_eq!(out, "ada 1\nbob 1\nada 2\n", "{lang}");
}

#[test]
fn a_new_rust_pipe_tests_builds_and_runs() {
    new_build_run("rust", &[("cargo", &["test", "--quiet"])]);
}

#[test]
fn a_new_go_pipe_tests_builds_and_runs() {
    new_build_run("go", &[("go", &["test", "./..."])]);
}

#[test]
fn a_new_python_pipe_tests_builds_and_runs() {
    new_build_run("python", &[("python3", &["-m", "unittest", "-q"])]);
}

/// `-o` relative to where `plumber build` runs, not to the project (the
/// language tool runs in the project's directory: componentize-py wrote
/// the component there).
#[test]
fn build_writes_a_relative_out_path_where_it_runs() {
    let parent = tempfile::tempdir().unwrap();
    plumber(parent.path(), &["new", "rel-py", "--lang", "python"]);
    std::fs::create_dir(parent.path().join("out")).unwrap();
    let built = plumber(parent.path(), &["build", "rel-py", "-o", "out/rel-py.wasm"]);
    assert!(built.contains("python pipe"), "{built}");
    assert!(
        parent.path().join("out").join("rel-py.wasm").is_file(),
        "no component at out/rel-py.wasm: {built}"
    );
    assert!(!parent.path().join("rel-py").join("out").exists());
}

#[test]
fn a_new_js_pipe_tests_builds_and_runs() {
    new_build_run(
        "js",
        &[
            ("npm", &["ci", "--no-audit", "--no-fund"]),
            ("node", &["--test"]),
        ],
    );
}
