//! Step instantiation: a step that cannot be created fails the run with
//! an error that names it.

use std::time::Duration;

use crate::command::CommandError;
use crate::pipeline::{CommandPipe, ExecPipe, Phase, Pipeline, PipelineBuilder, PipelineError};
use crate::runtime::{PipeLimits, Runtime};
use crate::step::WasmPipe;
use crate::streams::{ArraySource, DiscardSink};
use crate::ErrorChain;

fn pipeline(name: &str) -> PipelineBuilder {
    Pipeline::builder(name)
        .from(ArraySource::from_strings(["a"]))
        .to(DiscardSink::new())
}

/// Runs `builder`, which must fail, and checks the live status says so.
async fn failure(builder: PipelineBuilder) -> PipelineError {
    let handle = builder.handle();
    let error = builder.run().await.expect_err("a step cannot start");
    assert_eq!(handle.status().phase(), Phase::Failed);
    // The live status says the whole chain, as a report would.
    assert_eq!(
        handle.status().error(),
        Some(ErrorChain(&error).to_string())
    );
    error
}

fn exec(name: &str, allowed: bool) -> ExecPipe {
    ExecPipe {
        name: name.to_owned(),
        path: "cat".into(),
        args: Vec::new(),
        timeout: Duration::from_secs(1),
        allow_unsandboxed: allowed,
    }
}

#[tokio::test]
async fn a_command_step_that_cannot_start_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("absent.wasm");
    let builder = pipeline("commands")
        .runtime(Runtime::new(Some(dir.path().join("cache"))).unwrap())
        .then(CommandPipe {
            name: "shout".to_owned(),
            module: module.clone(),
            args: Vec::new(),
            limits: PipeLimits::default(),
        });
    let error = failure(builder).await;
    assert!(
        matches!(&error, PipelineError::Command { step, source: CommandError::Module { path, .. }, .. }
            if step == "shout" && *path == module),
        "{error:?}"
    );
    let text = ErrorChain(&error).to_string();
    assert!(
        text.starts_with("pipeline `commands`, step `shout`: command module"),
        "{text}"
    );
}

#[tokio::test]
async fn an_executable_step_refused_is_named_once() {
    let error = failure(pipeline("execs").then(exec("echo", false))).await;
    assert!(
        matches!(&error, PipelineError::Command { step, source: CommandError::Refused { .. }, .. }
            if step == "echo"),
        "{error:?}"
    );
    let text = ErrorChain(&error).to_string();
    assert_eq!(text.matches("`echo`").count(), 1, "{text}");
    assert!(text.contains("allow_unsandboxed"), "{text}");

    // Allowed by the step, refused for a tenant's pipeline.
    let error = failure(pipeline("execs").tenant("acme").then(exec("echo", true))).await;
    assert!(
        matches!(&error, PipelineError::Command { step, source: CommandError::Refused { .. }, .. }
            if step == "echo"),
        "{error:?}"
    );
    assert!(
        ErrorChain(&error).to_string().contains("multi-tenant"),
        "{error}"
    );
}

#[tokio::test]
async fn a_wasm_pipe_that_cannot_load_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let builder = pipeline("pipes")
        .runtime(Runtime::new(Some(dir.path().join("cache"))).unwrap())
        .then(WasmPipe::new("upper", dir.path().join("absent.wasm")));
    let error = failure(builder).await;
    assert!(
        matches!(&error, PipelineError::Load { pipe, .. } if pipe == "upper"),
        "{error:?}"
    );
}
