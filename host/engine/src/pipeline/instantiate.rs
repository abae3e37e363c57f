//! Step instantiation: what a step is before the pipeline starts
//! ([`StepSpec`]), and one build per kind of step, each failing with a
//! [`PipelineError`] that names the step.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::error::PipelineError;
use super::status::LiveStatus;
use crate::command::{CommandError, ExecStep, WasiCommandStep};
use crate::dead_letter::DeadLetters;
use crate::join::{Join, JoinOptions, JoinStep};
use crate::runtime::{InstanceSettings, LoadError, Runtime};
use crate::state::{Namespace, PendingBound, PipeState, SharedState, WriteMode};
use crate::step::{NativeStep, Step, WasmPipe, WasmStep};
use crate::swap::PipeSlot;
use crate::tenant::TenantLease;
use crate::window::{Window, WindowOptions, WindowStep};

/// A command pipe: a WASI preview 1 command module speaking the line
/// protocol of [`crate::command`], sandboxed.
#[derive(Debug, Clone)]
pub struct CommandPipe {
    /// The step's name.
    pub name: String,
    /// The core module (`.wasm`) with a `_start`.
    pub module: std::path::PathBuf,
    /// Its arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Memory cap and time per batch (the other limits do not apply).
    pub limits: crate::runtime::PipeLimits,
}

/// An executable of the host speaking the line protocol, unsandboxed.
#[derive(Debug, Clone)]
pub struct ExecPipe {
    /// The step's name.
    pub name: String,
    /// The program.
    pub path: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long one batch may take.
    pub timeout: Duration,
    /// The explicit permission to run outside the sandbox.
    pub allow_unsandboxed: bool,
}

/// A step to be created when the pipeline starts.
pub enum StepSpec {
    /// A WASM pipe, loaded and instantiated at start.
    Wasm(WasmPipe),
    /// A WASI command module, started at start.
    Command(CommandPipe),
    /// A host executable, started at start (when allowed).
    Exec(ExecPipe),
    /// A window, restored from the last checkpoint at start.
    Window(Window),
    /// A join, restored from the last checkpoint at start.
    Join(Join),
    /// A step that already exists.
    Ready(Box<dyn Step>),
}

impl StepSpec {
    /// The step's name.
    pub fn name(&self) -> &str {
        match self {
            StepSpec::Wasm(pipe) => pipe.name(),
            StepSpec::Command(pipe) => &pipe.name,
            StepSpec::Exec(pipe) => &pipe.name,
            StepSpec::Window(window) => window.name(),
            StepSpec::Join(join) => join.name(),
            StepSpec::Ready(step) => step.name(),
        }
    }
}

impl From<WasmPipe> for StepSpec {
    fn from(pipe: WasmPipe) -> Self {
        StepSpec::Wasm(pipe)
    }
}

impl From<CommandPipe> for StepSpec {
    fn from(pipe: CommandPipe) -> Self {
        StepSpec::Command(pipe)
    }
}

impl From<ExecPipe> for StepSpec {
    fn from(pipe: ExecPipe) -> Self {
        StepSpec::Exec(pipe)
    }
}

impl From<Window> for StepSpec {
    fn from(window: Window) -> Self {
        StepSpec::Window(window)
    }
}

impl From<Join> for StepSpec {
    fn from(join: Join) -> Self {
        StepSpec::Join(join)
    }
}

impl From<NativeStep> for StepSpec {
    fn from(step: NativeStep) -> Self {
        StepSpec::Ready(Box::new(step))
    }
}

/// What every step of one pipeline is created with.
pub(super) struct StepContext<'a> {
    pub(super) tenant: &'a str,
    pub(super) pipeline: &'a str,
    pub(super) state: &'a SharedState,
    pub(super) dead_letters: Option<&'a DeadLetters>,
    /// Whether pipes write through or keep a write set for the checkpoint.
    pub(super) mode: WriteMode,
    /// The tenant's place, with its state quota.
    pub(super) lease: Option<&'a TenantLease>,
    /// Unsandboxed executables never run in a multi-tenant host.
    pub(super) multi_tenant: bool,
    /// Where WASM pipes' swap points are published.
    pub(super) status: &'a Arc<LiveStatus>,
    /// Asks for a checkpoint (a module watcher's swap).
    pub(super) checkpoint_requests: &'a Arc<Notify>,
    /// What one call of a pipe may add to its write set.
    pub(super) pending_bound: PendingBound,
    /// How windows restore and whether their closes ask for checkpoints.
    pub(super) window_options: WindowOptions,
}

/// Creates the steps of `specs` in order.
///
/// # Errors
///
/// A step could not be created; the error names it.
pub(super) async fn instantiate_steps(
    context: &StepContext<'_>,
    specs: Vec<StepSpec>,
    runtime: Option<Runtime>,
) -> Result<Vec<Box<dyn Step>>, PipelineError> {
    let mut builder = StepBuilder { context, runtime };
    let mut steps: Vec<Box<dyn Step>> = Vec::with_capacity(specs.len());
    for spec in specs {
        steps.push(builder.build(spec).await?);
    }
    Ok(steps)
}

/// Builds steps of every kind for one pipeline.
struct StepBuilder<'c, 'a> {
    context: &'c StepContext<'a>,
    /// The pipeline's runtime, created with the default cache on first need.
    runtime: Option<Runtime>,
}

impl StepBuilder<'_, '_> {
    async fn build(&mut self, spec: StepSpec) -> Result<Box<dyn Step>, PipelineError> {
        Ok(match spec {
            StepSpec::Ready(step) => step,
            StepSpec::Command(pipe) => Box::new(self.command(&pipe)?),
            StepSpec::Exec(pipe) => Box::new(self.exec(&pipe)?),
            StepSpec::Window(window) => Box::new(self.window(window).await?),
            StepSpec::Join(join) => Box::new(self.join(join).await?),
            StepSpec::Wasm(pipe) => Box::new(self.wasm(pipe).await?),
        })
    }

    /// The runtime, created with the default cache on first need.
    fn runtime(&mut self) -> Result<Runtime, LoadError> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.clone()),
            None => {
                let runtime = Runtime::with_default_cache()?;
                self.runtime = Some(runtime.clone());
                Ok(runtime)
            }
        }
    }

    /// A command step's error, naming the step.
    fn command_error(&self, step: &str, source: CommandError) -> PipelineError {
        PipelineError::Command {
            pipeline: self.context.pipeline.to_owned(),
            step: step.to_owned(),
            source,
        }
    }

    /// A WASI command module, started now.
    fn command(&mut self, pipe: &CommandPipe) -> Result<WasiCommandStep, PipelineError> {
        let runtime = self
            .runtime()
            .map_err(|source| load_error(self.context.pipeline, &pipe.name, source))?;
        WasiCommandStep::start(
            &runtime,
            self.context.tenant,
            &pipe.name,
            &pipe.module,
            &pipe.args,
            &pipe.limits,
        )
        .map_err(|source| self.command_error(&pipe.name, source))
    }

    /// A host executable, started now if allowed.
    fn exec(&self, pipe: &ExecPipe) -> Result<ExecStep, PipelineError> {
        let allowed = if !pipe.allow_unsandboxed {
            Err(format!(
                "`{}` would run outside the sandbox; set \"allow_unsandboxed\": true on the step to allow it",
                pipe.path.display()
            ))
        } else if self.context.multi_tenant {
            Err("unsandboxed executables never run in a multi-tenant host".to_owned())
        } else {
            Ok(())
        };
        ExecStep::start(&pipe.name, &pipe.path, &pipe.args, pipe.timeout, allowed)
            .map_err(|source| self.command_error(&pipe.name, source))
    }

    /// A window, its buffers restored from the last checkpoint, and its
    /// trigger component started when it has one.
    async fn window(&mut self, window: Window) -> Result<WindowStep, PipelineError> {
        let context = self.context;
        let step_error = |source| PipelineError::Step {
            pipeline: context.pipeline.to_owned(),
            source,
        };
        let name = window.name().to_owned();
        let has_trigger = window.trigger_spec().is_some();
        let has_aggregate = window.aggregate_spec().is_some();
        let mut step = WindowStep::restore(
            window,
            context.tenant,
            context.pipeline,
            context.state,
            context.dead_letters.cloned(),
            &context.window_options,
        )
        .await
        .map_err(step_error)?;
        if has_trigger {
            let trigger = format!("{name}/trigger");
            let failed = |source| load_error(context.pipeline, &trigger, source);
            let runtime = self.runtime().map_err(failed)?;
            step.start_trigger(&runtime, context.tenant, context.pipeline, context.state)
                .await
                .map_err(failed)?;
        }
        if has_aggregate {
            let aggregate = format!("{name}/aggregate");
            let failed = |source| load_error(context.pipeline, &aggregate, source);
            let runtime = self.runtime().map_err(failed)?;
            step.start_aggregate(&runtime, context.tenant, context.pipeline, context.state)
                .await
                .map_err(failed)?;
        }
        Ok(step)
    }

    /// A join, its buffers restored from the last checkpoint (as windows
    /// restore theirs).
    async fn join(&self, join: Join) -> Result<JoinStep, PipelineError> {
        let context = self.context;
        let options = JoinOptions {
            restore: context.window_options.restore,
            checkpoint_on_close: context.window_options.checkpoint_on_close.clone(),
        };
        JoinStep::restore(
            join,
            context.tenant,
            context.pipeline,
            context.state,
            context.dead_letters.cloned(),
            &options,
        )
        .await
        .map_err(|source| PipelineError::Step {
            pipeline: context.pipeline.to_owned(),
            source,
        })
    }

    /// A WASM pipe: loaded, instantiated with its state, and published
    /// with its swap point.
    async fn wasm(&mut self, pipe: WasmPipe) -> Result<WasmStep, PipelineError> {
        let context = self.context;
        let failed = |source| load_error(context.pipeline, &pipe.name, source);
        let runtime = self.runtime().map_err(failed)?;
        let component = runtime
            .load(&pipe.module, &pipe.capabilities)
            .map_err(failed)?;
        let namespace = Namespace::for_tenant_pipe(context.tenant, context.pipeline, &pipe.name);
        let state = PipeState::new(context.state.clone(), namespace.clone(), context.mode)
            .with_quota(context.lease.and_then(TenantLease::state_quota))
            .with_call_bound(context.pending_bound);
        let settings = Arc::new(InstanceSettings {
            tenant: context.tenant.into(),
            pipe: pipe.name.as_str().into(),
            limits: Arc::new(pipe.limits.clone()),
            capabilities: pipe.capabilities.clone(),
            config_json: pipe.config.to_string(),
            packed: pipe.packed,
        });
        let mut instance = component
            .instantiate(&runtime, settings, state)
            .await
            .map_err(failed)?;
        // The configured module runs; if it declares another state version
        // than the recorded one, it migrates now (into the first checkpoint)
        // or the pipeline does not start.
        if let Some(migration) = instance.reconcile_state_version().await.map_err(failed)? {
            tracing::info!(pipeline = %context.pipeline, pipe = %pipe.name,
                from = %migration.from, to = %migration.to, keys = migration.keys,
                ms = migration.took.as_millis() as u64, "state migrated at start");
        }
        let slot = Arc::new(PipeSlot::new(&instance, context.state.clone(), namespace));
        context.status.add_pipe(slot.clone());
        if let Some(every) = pipe.watch_module {
            let requests = context.checkpoint_requests.clone();
            crate::swap::watch_module(slot.clone(), every, move || requests.notify_one());
        }
        Ok(WasmStep::new(pipe.name.clone(), instance)
            .with_policy(pipe.on_error, context.dead_letters.cloned())
            .with_slot(slot))
    }
}

fn load_error(pipeline: &str, pipe: &str, source: LoadError) -> PipelineError {
    PipelineError::Load {
        pipeline: pipeline.to_owned(),
        pipe: pipe.to_owned(),
        source,
    }
}
