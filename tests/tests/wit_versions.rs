//! The WIT contract evolves by new versions beside the old ones, never by
//! editing a released one (see "Versions of the contract" in docs/architecture.md):
//!
//! - every released version is frozen under `wit/versions/<version>/`, and
//!   its text never changes (its hash is recorded here);
//! - `wit/plumber.wit`, the version guests build against today, differs
//!   from its frozen copy in comments and layout only;
//! - a component built against each frozen version still loads and runs in
//!   this host.

use std::path::Path;
use std::sync::Arc;

use plumber::checkpoint::CheckpointPolicy;
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::state::MemoryState;
use plumber::step::{OnError, WasmPipe};
use plumber::streams::ArraySource;
use plumber_tests::{cache_dir, guest, run_collect, workspace_root};
use sha2::{Digest, Sha256};

/// The released versions: their frozen text's SHA-256, and the guest built
/// against each.
const RELEASED: &[(&str, &str, &str)] = &[(
    "0.1.0",
    "4b88dab59d1ddf065d1cc9eacf47c9ea708b62734ea19e12ecc5f717d2b0c8a1",
    "compat-0-1-0",
)];

/// The WIT without comments and blank lines, each line trimmed: what a
/// component's contract depends on.
fn contract(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn package_version(text: &str) -> Option<String> {
    contract(text).iter().find_map(|line| {
        line.strip_prefix("package plumber:pipe@")
            .map(|rest| rest.trim_end_matches(';').to_owned())
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn released_versions_are_frozen_and_the_current_one_matches_its_copy() {
    let versions = workspace_root().join("wit").join("versions");
    let mut on_disk: Vec<String> = std::fs::read_dir(&versions)
        .expect("wit/versions")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut released: Vec<String> = RELEASED.iter().map(|(v, _, _)| (*v).to_owned()).collect();
    released.sort();
    assert_eq!(
        on_disk, released,
        "every frozen version is listed in RELEASED (with its hash and guest), and only those"
    );
    for (version, hash, _) in RELEASED {
        let text = read(&versions.join(version).join("plumber.wit"));
        assert_eq!(
            package_version(&text).as_deref(),
            Some(*version),
            "wit/versions/{version} declares another version"
        );
        assert_eq!(
            hex::encode(Sha256::digest(text.as_bytes())),
            *hash,
            "wit/versions/{version}/plumber.wit changed: a released contract is never edited; \
             add a new version beside it instead"
        );
    }

    let current = read(&workspace_root().join("wit").join("plumber.wit"));
    let version = package_version(&current).expect("wit/plumber.wit declares its version");
    let Some(frozen) = RELEASED.iter().find(|(v, _, _)| *v == version) else {
        // The next version, not released yet: it may only add to the
        // latest release (every line of its contract kept, in order).
        let numbers = |v: &str| -> Vec<u64> {
            v.split('.')
                .map(|n| n.parse().expect("a numeric version"))
                .collect()
        };
        let latest = RELEASED
            .iter()
            .map(|(v, _, _)| *v)
            .max_by_key(|v| numbers(v))
            .expect("a released version");
        assert!(
            numbers(&version) > numbers(latest),
            "wit/plumber.wit is {version}, which has no frozen copy and is not newer than \
             {latest}: copy it to wit/versions/{version}/ and list it in RELEASED when it is \
             released"
        );
        let released = read(&versions.join(latest).join("plumber.wit"));
        let is_package = |line: &String| line.starts_with("package ");
        let mut current_lines = contract(&current).into_iter().filter(|l| !is_package(l));
        for line in contract(&released).iter().filter(|l| !is_package(l)) {
            assert!(
                current_lines.any(|l| &l == line),
                "wit/plumber.wit ({version}) changes `{line}` of {latest}: a new version \
                 only adds"
            );
        }
        return;
    };
    let frozen_text = read(&versions.join(frozen.0).join("plumber.wit"));
    assert_eq!(
        contract(&current),
        contract(&frozen_text),
        "wit/plumber.wit ({version}) differs from its frozen copy beyond comments: \
         a change to the contract is a new version"
    );
}

#[tokio::test]
async fn a_component_built_against_each_released_version_runs() {
    for (version, _, guest_name) in RELEASED {
        let builder = Pipeline::builder(format!("compat-{version}"))
            .state(Arc::new(MemoryState::new()))
            .checkpoint(CheckpointPolicy::at_end_only())
            .runtime(Runtime::new(Some(cache_dir())).expect("runtime"))
            .from(ArraySource::from_strings([
                "ada", "bob", "ada", "fail", "ada",
            ]))
            .then(
                WasmPipe::new("compat", guest(guest_name))
                    .config(serde_json::json!({"version": version}))
                    .on_error(OnError::Skip),
            );
        let (result, values) = run_collect(builder).await;
        let report = result.unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(report.events_in, 5, "{version}");
        assert_eq!(values, ["ada 1", "bob 1", "ada 2", "ada 3"], "{version}");
    }
}
