//! Every error that wraps another keeps it as its `source`, and its own
//! message does not repeat the source's text: a report that walks the chain
//! ([`ErrorChain`], anyhow's `{:#}`) then says each cause once.

use std::error::Error;
use std::io;
use std::path::PathBuf;

use plumber::admin::AdminServerError;
use plumber::command::CommandError;
use plumber::config::validate::ValidateError;
use plumber::config::ConfigError;
use plumber::pipeline::PipelineError;
use plumber::runtime::LoadError;
use plumber::state::StateError;
use plumber::step::StepError;
use plumber::streams::StreamError;
use plumber::tenant::QuotaError;
use plumber::ErrorChain;
use plumber_cli::build::BuildError;
use plumber_cli::new::NewError;

/// A root cause whose text appears nowhere else.
fn disk_on_fire() -> io::Error {
    io::Error::other("disk on fire")
}

/// wasmtime's own error type, with context over its cause.
fn wasmtime_error() -> wasmtime::Error {
    wasmtime::Error::new(disk_on_fire()).context("in wasmtime")
}

fn unreadable_module() -> LoadError {
    LoadError::Read {
        path: PathBuf::from("upper.wasm"),
        source: disk_on_fire(),
    }
}

fn backend_failure() -> StateError {
    StateError::Backend {
        backend: "sled",
        location: "/var/lib/plumber".to_owned(),
        source: Box::new(disk_on_fire()),
    }
}

/// Every variant that wraps an error, one value each.
fn wrapping_errors() -> Vec<(&'static str, Box<dyn Error>)> {
    vec![
        ("LoadError::Read", Box::new(unreadable_module())),
        (
            "LoadError::Cache",
            Box::new(LoadError::Cache {
                path: PathBuf::from("cache"),
                source: disk_on_fire(),
            }),
        ),
        (
            "CommandError::Spawn",
            Box::new(CommandError::Spawn {
                step: "sort".to_owned(),
                path: PathBuf::from("/usr/bin/sort"),
                source: disk_on_fire(),
            }),
        ),
        (
            "ConfigError::Read",
            Box::new(ConfigError::Read {
                file: PathBuf::from("pipeline.json"),
                source: disk_on_fire(),
            }),
        ),
        (
            "ValidateError::Module",
            Box::new(ValidateError::Module {
                file: "pipeline.json".to_owned(),
                path: "pipeline[0].module".to_owned(),
                kind: "pipe",
                name: "upper".to_owned(),
                source: unreadable_module(),
            }),
        ),
        ("StateError::Backend", Box::new(backend_failure())),
        (
            "StreamError::Io",
            Box::new(StreamError::Io {
                stream: "file source `in.txt`".to_owned(),
                action: "read",
                source: disk_on_fire(),
            }),
        ),
        (
            "StepError::Restart",
            Box::new(StepError::Restart {
                step: "upper".to_owned(),
                source: unreadable_module(),
            }),
        ),
        (
            "QuotaError::State",
            Box::new(QuotaError::State {
                tenant: "acme".to_owned(),
                source: backend_failure(),
            }),
        ),
        (
            "PipelineError::Load",
            Box::new(PipelineError::Load {
                pipeline: "names".to_owned(),
                pipe: "upper".to_owned(),
                source: unreadable_module(),
            }),
        ),
        (
            "PipelineError::Command",
            Box::new(PipelineError::Command {
                pipeline: "names".to_owned(),
                step: "sort".to_owned(),
                source: CommandError::Spawn {
                    step: "sort".to_owned(),
                    path: PathBuf::from("/usr/bin/sort"),
                    source: disk_on_fire(),
                },
            }),
        ),
        (
            "PipelineError::Step",
            Box::new(PipelineError::Step {
                pipeline: "names".to_owned(),
                source: StepError::Restart {
                    step: "upper".to_owned(),
                    source: unreadable_module(),
                },
            }),
        ),
        (
            "PipelineError::Stream",
            Box::new(PipelineError::Stream {
                pipeline: "names".to_owned(),
                source: StreamError::Io {
                    stream: "file sink `out.txt`".to_owned(),
                    action: "write",
                    source: disk_on_fire(),
                },
            }),
        ),
        (
            "PipelineError::State",
            Box::new(PipelineError::State {
                pipeline: "names".to_owned(),
                source: backend_failure(),
            }),
        ),
        (
            "PipelineError::Quota",
            Box::new(PipelineError::Quota {
                pipeline: "names".to_owned(),
                source: QuotaError::State {
                    tenant: "acme".to_owned(),
                    source: backend_failure(),
                },
            }),
        ),
        (
            "AdminServerError::Bind",
            Box::new(AdminServerError::Bind {
                addr: "127.0.0.1:9090".parse().expect("an address"),
                source: disk_on_fire(),
            }),
        ),
        (
            "AdminServerError::ModuleDir",
            Box::new(AdminServerError::ModuleDir {
                path: PathBuf::from("modules"),
                source: disk_on_fire(),
            }),
        ),
        (
            "NewError::Io",
            Box::new(NewError::Io {
                path: PathBuf::from("my-pipe/Cargo.toml"),
                source: disk_on_fire(),
            }),
        ),
        (
            "BuildError::Io",
            Box::new(BuildError::Io {
                path: PathBuf::from("my-pipe.wasm"),
                source: disk_on_fire(),
            }),
        ),
        (
            "BuildError::Check",
            Box::new(BuildError::Check(unreadable_module())),
        ),
        (
            "LoadError::Compile",
            Box::new(LoadError::Compile {
                path: PathBuf::from("upper.wasm"),
                source: wasmtime_error(),
            }),
        ),
        (
            "LoadError::WrongWorld",
            Box::new(LoadError::WrongWorld {
                path: PathBuf::from("upper.wasm"),
                source: wasmtime_error(),
            }),
        ),
        (
            "LoadError::Instantiate",
            Box::new(LoadError::Instantiate {
                pipe: "upper".to_owned(),
                source: wasmtime_error(),
            }),
        ),
        (
            "LoadError::Engine",
            Box::new(LoadError::Engine(wasmtime_error())),
        ),
        (
            "LoadError::EpochTicker",
            Box::new(LoadError::EpochTicker(disk_on_fire())),
        ),
        (
            "StreamError::Parse",
            Box::new(StreamError::Parse {
                stream: "file source `in.jsonl`".to_owned(),
                offset: 12,
                source: serde_json::from_str::<serde_json::Value>("{").expect_err("not JSON"),
            }),
        ),
    ]
}

#[test]
fn a_wrapping_error_keeps_its_source_and_does_not_repeat_it() {
    for (variant, error) in wrapping_errors() {
        let Some(source) = error.source() else {
            panic!("{variant} has no source: {error}");
        };
        let own = error.to_string();
        let cause = source.to_string();
        assert!(
            !own.contains(&cause),
            "{variant}: its message repeats its source's: `{own}` has `{cause}`"
        );
        // The whole chain, each cause once, down to the root.
        let mut root = source;
        while let Some(deeper) = root.source() {
            root = deeper;
        }
        let root = root.to_string();
        let report = ErrorChain(error.as_ref()).to_string();
        assert!(report.starts_with(&own), "{variant}: {report}");
        assert_eq!(report.matches(&root).count(), 1, "{variant}: {report}");
    }
}

#[test]
fn anyhow_reports_each_cause_once() {
    let error = anyhow::Error::from(PipelineError::Step {
        pipeline: "names".to_owned(),
        source: StepError::Restart {
            step: "upper".to_owned(),
            source: unreadable_module(),
        },
    });
    assert_eq!(
        format!("{error:#}"),
        "pipeline `names`: pipe `upper` could not be restarted after a failure: \
         cannot read WebAssembly file `upper.wasm`: disk on fire"
    );
}
