//! Command pipes: a Go `GOOS=wasip1` program run sandboxed as a long-lived
//! WASI command, and host executables that need explicit permission.

use std::time::Duration;

use plumber::config::PipelineConfig;
use plumber::config::ReadStandard;
use plumber::pipeline::{CommandPipe, ExecPipe, Pipeline, PipelineBuilder, PipelineError};
use plumber::runtime::{PipeLimits, Runtime};
use plumber::step::StepError;
use plumber::streams::ArraySource;
use plumber::ErrorChain;
use plumber_tests::{cache_dir, go_command, run_collect};

fn pipeline(values: &[&str]) -> PipelineBuilder {
    Pipeline::builder("commands")
        .runtime(Runtime::new(Some(cache_dir())).expect("runtime"))
        .from(ArraySource::from_strings(values.iter().copied()))
}

fn shout(limits: PipeLimits) -> CommandPipe {
    CommandPipe {
        name: "shout".into(),
        module: go_command("shout"),
        args: vec![],
        limits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_wasi_command_answers_line_by_line_and_exits_cleanly() {
    let values: Vec<String> = (0..5000).map(|i| format!("event {i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let (result, out) = run_collect(
        pipeline(&refs)
            .batch_size(100)
            .then(shout(PipeLimits::default())),
    )
    .await;
    let report = result.expect("the command ends with exit 0 when its input closes");
    assert_eq!(report.events_out, 5000);
    assert_eq!(out[0], "EVENT 0!");
    assert_eq!(out[4999], "EVENT 4999!");
}

#[tokio::test]
async fn the_command_is_sandboxed() {
    let (result, out) = run_collect(
        pipeline(&["read:/etc/passwd", "read:/", "ok"]).then(shout(PipeLimits::default())),
    )
    .await;
    result.expect("runs");
    assert_eq!(out, vec!["read failed", "read failed", "OK!"]);
}

#[tokio::test]
async fn an_exit_with_an_error_status_stops_the_pipeline_saying_so() {
    let (result, out) = run_collect(
        pipeline(&["a", "exit", "b"])
            .batch_size(1)
            .then(shout(PipeLimits::default())),
    )
    .await;
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("exited with status 3"), "{text}");
    assert_eq!(out, vec!["A!"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_command_is_stopped_at_its_time_limit() {
    let limits = PipeLimits {
        call_timeout_ms: 300,
        ..PipeLimits::default()
    };
    let (result, _) = run_collect(pipeline(&["spin"]).then(shout(limits))).await;
    assert!(
        matches!(
            result,
            Err(PipelineError::Step {
                source: StepError::Limit { .. },
                ..
            })
        ),
        "{result:?}"
    );
}

fn echo_exec(allow: bool) -> ExecPipe {
    ExecPipe {
        name: "echo".into(),
        path: "sh".into(),
        args: vec![
            "-c".into(),
            r#"while IFS= read -r line; do printf '%s?\n' "$line"; done"#.into(),
        ],
        timeout: Duration::from_secs(10),
        allow_unsandboxed: allow,
    }
}

#[tokio::test]
async fn a_host_executable_runs_only_when_allowed_and_never_for_a_tenant() {
    let (result, out) = run_collect(pipeline(&["ada", "bob"]).then(echo_exec(true))).await;
    result.expect("allowed");
    assert_eq!(out, vec!["ada?", "bob?"]);

    let (result, _) = run_collect(pipeline(&["ada"]).then(echo_exec(false))).await;
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("allow_unsandboxed"), "{text}");

    let (result, _) = run_collect(pipeline(&["ada"]).tenant("acme").then(echo_exec(true))).await;
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("never run in a multi-tenant host"), "{text}");
}

#[test]
fn configs_name_the_permission_an_exec_step_lacks() {
    let text = r#"{"name":"p","from":{"type":"array","values":[]},
        "pipeline":[{"name":"cow","type":"exec","path":"cowsay"}],"to":{"type":"stdout"}}"#;
    let error = PipelineConfig::parse(text, "p.json", std::path::Path::new("/")).unwrap_err();
    let message = ErrorChain(&error).to_string();
    assert!(
        message.contains("pipeline[0].allow_unsandboxed") && message.contains("cowsay"),
        "{message}"
    );
    let command = r#"{"name":"p","from":{"type":"array","values":[]},
        "pipeline":[{"name":"s","type":"command","module":"shout.wasm","args":["-v"]}],"to":{"type":"stdout"}}"#;
    PipelineConfig::parse(command, "p.json", std::path::Path::new("/")).expect("a command step");
}
