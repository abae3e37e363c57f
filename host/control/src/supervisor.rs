//! The supervisor: many pipelines of many tenants in one process, one
//! WebAssembly runtime, tenant quotas, and the view the admin server and
//! the status line read.
//!
//! Metrics are pulled, not pushed: the engine keeps plain atomic counters
//! and lock-free histograms ([`LiveStatus`], [`StageStats`],
//! [`StepCounters`]), and the supervisor's `prometheus-client` registry
//! holds one collector that reads them at each scrape, so the hot path
//! never touches a registry.
//!
//! [`StageStats`]: plumber_engine::pipeline::StageStats
//! [`StepCounters`]: plumber_engine::step::StepCounters

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::admin::{
    AdminControl, AdminError, CheckpointDone, ModuleUpload, PipeStatus, PipelineStatus, SwapDone,
};
use crate::console::model::{
    LogLineView, PipeView, PipelineDetail, PipelineLive, StageView, StopRequested, TenantView,
};
use crate::metrics::Scrape;
use plumber_engine::pipeline::{
    HandleError, LiveStatus, Phase, PipelineBuilder, PipelineError, PipelineHandle, RunReport,
};
use plumber_engine::runtime::RECENT_LOG_LINES;
use plumber_engine::step::{StepCounters, LIMIT_KINDS};
use plumber_engine::swap::{ModuleSource, SwapError};
use plumber_engine::tenant::Tenants;

/// Why a pipeline could not be added.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Pipelines are addressed by name in the admin API: names are unique.
    #[error("a pipeline named `{0}` is already supervised")]
    Duplicate(String),
}

struct Supervised {
    name: String,
    tenant: String,
    handle: PipelineHandle,
    /// When it was started in this process, for its uptime.
    started: std::time::Instant,
    /// Its events in, sampled for the console's sparklines.
    rates: Mutex<RateSamples>,
}

/// How often the supervisor samples each pipeline's events in.
const RATE_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Samples kept: three minutes of rates.
const RATE_SAMPLES: usize = 91;

/// A pipeline's events in at the last samples, oldest first.
#[derive(Debug, Default)]
struct RateSamples(std::collections::VecDeque<(std::time::Instant, u64)>);

impl RateSamples {
    fn push(&mut self, at: std::time::Instant, events_in: u64) {
        if self.0.len() == RATE_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back((at, events_in));
    }

    /// Events per second between consecutive samples, oldest first.
    fn rates(&self) -> Vec<u64> {
        self.0
            .iter()
            .zip(self.0.iter().skip(1))
            .map(|((then, before), (now, after))| {
                let seconds = now.duration_since(*then).as_secs_f64();
                let events = after.saturating_sub(*before) as f64;
                if seconds > 0.0 {
                    (events / seconds).round() as u64
                } else {
                    0
                }
            })
            .collect()
    }
}

/// Runs pipelines and answers for them.
pub struct Supervisor {
    tenants: Arc<Tenants>,
    pipelines: Mutex<Vec<Supervised>>,
    /// Holds the [`SupervisorCollector`] that reads the engine's counters
    /// at each scrape.
    registry: prometheus_client::registry::Registry,
}

/// Reads every supervised pipeline's counters into a [`Scrape`] when the
/// registry is encoded.
struct SupervisorCollector(Weak<Supervisor>);

impl std::fmt::Debug for SupervisorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SupervisorCollector")
    }
}

impl prometheus_client::collector::Collector for SupervisorCollector {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0.upgrade() {
            Some(supervisor) => supervisor.scrape().encode(encoder),
            None => Ok(()),
        }
    }
}

impl Supervisor {
    /// A supervisor whose pipelines count against `tenants`' quotas.
    pub fn new(tenants: Arc<Tenants>) -> Arc<Self> {
        Arc::new_cyclic(|supervisor| {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(SupervisorCollector(supervisor.clone())));
            // Sparklines from the first paint: the rates of the last
            // minutes, sampled here whether or not a page is open.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let sampled = supervisor.clone();
                runtime.spawn(async move {
                    let mut every = tokio::time::interval(RATE_SAMPLE_EVERY);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        let Some(supervisor) = sampled.upgrade() else {
                            break;
                        };
                        supervisor.sample_rates();
                    }
                });
            }
            Supervisor {
                tenants,
                pipelines: Mutex::new(Vec::new()),
                registry,
            }
        })
    }

    /// Samples every pipeline's events in (for the sparklines).
    fn sample_rates(&self) {
        let now = std::time::Instant::now();
        for pipeline in self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let events_in = pipeline.handle.status().events_in.load(Ordering::Relaxed);
            pipeline
                .rates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now, events_in);
        }
    }

    /// The tenant registry.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.tenants
    }

    /// Starts `builder` (of pipeline `name` for `tenant`) in its own task.
    ///
    /// # Errors
    ///
    /// A pipeline of that name is already supervised.
    pub fn start(
        &self,
        name: &str,
        tenant: &str,
        builder: PipelineBuilder,
    ) -> Result<(PipelineHandle, JoinHandle<Result<RunReport, PipelineError>>), SuperviseError>
    {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if pipelines.iter().any(|p| p.name == name) {
            return Err(SuperviseError::Duplicate(name.to_owned()));
        }
        let builder = builder.tenant(tenant).tenants(self.tenants.clone());
        let handle = builder.handle();
        pipelines.push(Supervised {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            handle: handle.clone(),
            started: std::time::Instant::now(),
            rates: Mutex::default(),
        });
        Ok((handle, tokio::spawn(builder.run())))
    }

    /// Asks every pipeline to stop cleanly.
    pub fn shutdown(&self) {
        for pipeline in self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            pipeline.handle.shutdown();
        }
    }

    /// Forgets pipeline `name` once it stopped (a cluster worker handed
    /// its partition over): its series leave `/metrics` and its name may be
    /// started again. Returns whether it was supervised.
    pub fn remove(&self, name: &str) -> bool {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        let before = pipelines.len();
        pipelines.retain(|p| p.name != name);
        pipelines.len() != before
    }

    /// The status of pipeline `name`, if supervised.
    #[must_use]
    pub fn status_of(&self, name: &str) -> Option<Arc<LiveStatus>> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.handle.status().clone())
    }

    fn handle(&self, name: &str) -> Result<PipelineHandle, AdminError> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.handle.clone())
            .ok_or_else(|| AdminError::UnknownPipeline(name.to_owned()))
    }

    fn find<T>(&self, name: &str, f: impl FnOnce(&Supervised) -> T) -> Option<T> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.name == name)
            .map(f)
    }

    fn each<T>(&self, mut f: impl FnMut(&str, &str, &Arc<LiveStatus>) -> T) -> Vec<T> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| f(&p.name, &p.tenant, p.handle.status()))
            .collect()
    }

    /// One line for people: per pipeline, events in and out, rate since
    /// `previous` (the `events_in` of the last call, by name), lag and the
    /// last checkpoint's age.
    pub fn status_line(&self, previous: &mut HashMap<String, u64>, every: Duration) -> String {
        let parts = self.each(|name, _, status| {
            let events_in = status.events_in.load(Ordering::Relaxed);
            let events_out = status.events_out.load(Ordering::Relaxed);
            let before = previous.insert(name.to_owned(), events_in).unwrap_or(0);
            let rate = events_in.saturating_sub(before) as f64 / every.as_secs_f64().max(0.001);
            let lag = status.source_lag.load(Ordering::Relaxed);
            let lag = if lag < 0 {
                "-".to_owned()
            } else {
                lag.to_string()
            };
            let checkpoint = match status.last_checkpoint() {
                Some((epoch, age)) => format!("checkpoint {epoch} {:.1}s ago", age.as_secs_f64()),
                None => "no checkpoint yet".to_owned(),
            };
            format!(
                "{name} [{}]: in {events_in} ({rate:.0}/s) out {events_out} lag {lag} {checkpoint}",
                status.phase().as_str()
            )
        });
        parts.join(" | ")
    }

    /// Prometheus text for every pipeline, pipe and tenant.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(&self.registry)
    }

    /// What every pipeline, pipe and tenant counted so far (a cluster
    /// worker adds its own series before rendering it).
    #[must_use]
    pub fn scrape(&self) -> Scrape {
        let mut metrics = Scrape::new();
        let mut tenant_in: HashMap<String, u64> = HashMap::new();
        let mut tenant_out: HashMap<String, u64> = HashMap::new();
        let mut tenant_errors: HashMap<String, u64> = HashMap::new();
        self.each(|name, tenant, status| {
            let totals = scrape_pipeline(&mut metrics, name, tenant, status);
            *tenant_in.entry(tenant.to_owned()).or_default() += totals.events_in;
            *tenant_out.entry(tenant.to_owned()).or_default() += totals.events_out;
            *tenant_errors.entry(tenant.to_owned()).or_default() += totals.errors;
        });
        for usage in self.tenants.all() {
            let labels = [("tenant", usage.tenant())];
            metrics.gauge_int(
                "plumber_tenant_pipelines",
                "Pipelines a tenant runs",
                &labels,
                gauge_value(usage.pipelines() as u64),
            );
            metrics.gauge_int(
                "plumber_tenant_state_bytes",
                "Bytes of state charged to a tenant (measured when it has a quota)",
                &labels,
                usage.state_bytes(),
            );
            let tenant = usage.tenant().to_owned();
            for (metric, help, map) in [
                (
                    "plumber_tenant_events_in_total",
                    "Events read by a tenant's pipelines",
                    &tenant_in,
                ),
                (
                    "plumber_tenant_events_out_total",
                    "Events written by a tenant's pipelines",
                    &tenant_out,
                ),
                (
                    "plumber_tenant_errors_total",
                    "Failed calls into a tenant's pipes",
                    &tenant_errors,
                ),
            ] {
                metrics.counter(
                    metric,
                    help,
                    &labels,
                    map.get(&tenant).copied().unwrap_or(0),
                );
            }
        }
        metrics
    }
}

/// What [`scrape_pipeline`] counted for one pipeline, for its tenant's
/// totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineTotals {
    /// Events read from its source.
    pub events_in: u64,
    /// Events written to its sink.
    pub events_out: u64,
    /// Failed calls into its pipes.
    pub errors: u64,
}

/// Adds the series of pipeline `name` (of `tenant`) to `metrics`: its
/// source, sink, checkpoints, steps and pipes. A cluster worker calls it
/// for each partition it runs.
pub fn scrape_pipeline(
    metrics: &mut Scrape,
    name: &str,
    tenant: &str,
    status: &LiveStatus,
) -> PipelineTotals {
    let mut errors_total = 0u64;
    let labels = [("tenant", tenant), ("pipeline", name)];
    metrics.gauge_int(
        "plumber_pipeline_up",
        "1 while the pipeline runs",
        &labels,
        i64::from(status.phase() == Phase::Running),
    );
    let events_in = status.events_in.load(Ordering::Relaxed);
    let events_out = status.events_out.load(Ordering::Relaxed);
    metrics.counter(
        "plumber_source_events_total",
        "Events read from the source",
        &labels,
        events_in,
    );
    metrics.counter(
        "plumber_sink_events_total",
        "Events written to the sink",
        &labels,
        events_out,
    );
    metrics.counter(
        "plumber_checkpoints_total",
        "Checkpoints committed",
        &labels,
        status.checkpoints.load(Ordering::Relaxed),
    );
    metrics.gauge(
        "plumber_checkpoint_duration_seconds",
        "How long the last checkpoint held the source back",
        &labels,
        status.last_checkpoint_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    metrics.histogram(
        "plumber_checkpoint_pause_seconds",
        "How long checkpoints held the source back (barrier sent to commit done)",
        &labels,
        status.checkpoint_pause.snapshot(),
    );
    metrics.histogram(
        "plumber_checkpoint_commit_seconds",
        "How long the state backend's atomic commits took",
        &labels,
        status.commit_time.snapshot(),
    );
    if let Some((epoch, age)) = status.last_checkpoint() {
        metrics.gauge(
            "plumber_checkpoint_age_seconds",
            "Time since the last committed checkpoint",
            &labels,
            age.as_secs_f64(),
        );
        metrics.gauge_int(
            "plumber_checkpoint_epoch",
            "Epoch of the last committed checkpoint",
            &labels,
            i64::try_from(epoch).unwrap_or(i64::MAX),
        );
    }
    metrics.counter(
        "plumber_sink_duplicates_total",
        "Writes the sink's server reported as duplicates and dropped (JetStream: a replay re-sent stored output)",
        &labels,
        status.sink_duplicates.load(Ordering::Relaxed),
    );
    let lag = status.source_lag.load(Ordering::Relaxed);
    if lag >= 0 {
        metrics.gauge_int(
            "plumber_source_lag",
            "What the source says is still waiting (messages or bytes)",
            &labels,
            lag,
        );
    }
    for stage in status.stages() {
        let labels = [
            ("tenant", tenant),
            ("pipeline", name),
            ("step", stage.name.as_str()),
        ];
        metrics.counter(
            "plumber_step_events_in_total",
            "Events into a step",
            &labels,
            stage.events_in.load(Ordering::Relaxed),
        );
        metrics.counter(
            "plumber_step_events_out_total",
            "Events out of a step",
            &labels,
            stage.events_out.load(Ordering::Relaxed),
        );
        let Some(counters) = &stage.counters else {
            metrics.gauge_int(
                "plumber_window_buffered_events",
                "Events held in a window's buffers (sampled at checkpoints)",
                &labels,
                gauge_value(stage.buffered.load(Ordering::Relaxed)),
            );
            continue;
        };
        let mut errors = |kind: &str, value: u64| {
            errors_total += value;
            metrics.counter(
                "plumber_pipe_errors_total",
                "Failed calls into a pipe, by kind",
                &[
                    ("tenant", tenant),
                    ("pipeline", name),
                    ("step", stage.name.as_str()),
                    ("kind", kind),
                ],
                value,
            );
        };
        errors("guest", counters.guest_errors.load(Ordering::Relaxed));
        errors("trap", counters.traps.load(Ordering::Relaxed));
        for (kind, count) in LIMIT_KINDS.iter().zip(&counters.limits) {
            errors(
                &format!("limit_{}", kind.as_str()),
                count.load(Ordering::Relaxed),
            );
        }
        for (metric, help, value) in [
            (
                "plumber_pipe_skipped_total",
                "Events skipped by on_error",
                &counters.skipped,
            ),
            (
                "plumber_pipe_dead_lettered_total",
                "Events dead-lettered by on_error",
                &counters.dead_lettered,
            ),
            (
                "plumber_pipe_retries_total",
                "Retries made by on_error",
                &counters.retries,
            ),
            (
                "plumber_pipe_restarts_total",
                "Instances created again after a trap or limit",
                &counters.restarts,
            ),
            (
                "plumber_pipe_log_dropped_total",
                "Guest log lines dropped for going past the log rate",
                &counters.log_dropped,
            ),
        ] {
            metrics.counter(metric, help, &labels, value.load(Ordering::Relaxed));
        }
        metrics.gauge(
            "plumber_pipe_guest_seconds",
            "Time spent inside the pipe's process calls",
            &labels,
            counters.guest_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        metrics.histogram(
            "plumber_pipe_call_seconds",
            "Time inside the pipe per process call",
            &labels,
            counters.call_time.snapshot(),
        );
        metrics.histogram(
            "plumber_pipe_batch_events",
            "Events per batch into the pipe",
            &labels,
            counters.batch_size.snapshot(),
        );
        metrics.gauge_int(
            "plumber_pipe_memory_bytes",
            "Largest linear memory of the pipe's instance",
            &labels,
            gauge_value(counters.memory_bytes.load(Ordering::Relaxed)),
        );
    }
    for slot in status.pipes() {
        let module = slot.current();
        metrics.gauge_int(
            "plumber_pipe_module_info",
            "The module version a pipe runs (value 1)",
            &[
                ("tenant", tenant),
                ("pipeline", name),
                ("pipe", slot.pipe()),
                ("version", module.version.as_str()),
            ],
            1,
        );
    }
    PipelineTotals {
        events_in,
        events_out,
        errors: errors_total,
    }
}

/// A count as a whole-number gauge value (saturating: gauges are signed).
fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Failed calls into a pipe: guest errors, traps and limits.
fn pipe_errors(counters: &StepCounters) -> u64 {
    counters.guest_errors.load(Ordering::Relaxed)
        + counters.traps.load(Ordering::Relaxed)
        + counters
            .limits
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum::<u64>()
}

fn pipeline_live(pipeline: &Supervised) -> PipelineLive {
    let status = pipeline.handle.status();
    let last = status.last_checkpoint();
    let lag = status.source_lag.load(Ordering::Relaxed);
    let errors = status
        .stages()
        .iter()
        .filter_map(|stage| stage.counters.as_deref())
        .map(pipe_errors)
        .sum();
    PipelineLive {
        name: pipeline.name.clone(),
        tenant: pipeline.tenant.clone(),
        state: status.phase().as_str().to_owned(),
        uptime_ms: Some(u64::try_from(pipeline.started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        events_in: status.events_in.load(Ordering::Relaxed),
        events_out: status.events_out.load(Ordering::Relaxed),
        lag: (lag >= 0).then_some(lag),
        last_checkpoint_epoch: last.map(|(epoch, _)| epoch),
        last_checkpoint_age_ms: last.map(|(_, age)| age.as_millis() as u64),
        last_checkpoint_micros: last.map(|_| status.last_checkpoint_micros.load(Ordering::Relaxed)),
        errors,
        error: status.error(),
        rates_in: pipeline
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rates(),
    }
}

fn pipeline_detail(pipeline: &Supervised) -> PipelineDetail {
    let status = pipeline.handle.status();
    let stages = status
        .stages()
        .iter()
        .map(|stage| {
            let counters = stage.counters.as_deref();
            let count = |f: fn(&StepCounters) -> u64| counters.map_or(0, f);
            StageView {
                name: stage.name.clone(),
                kind: stage.kind.to_owned(),
                inputs: stage.inputs.clone(),
                events_in: stage.events_in.load(Ordering::Relaxed),
                events_out: stage.events_out.load(Ordering::Relaxed),
                buffered: stage.buffered.load(Ordering::Relaxed),
                errors: count(pipe_errors),
                dead_lettered: count(|c| c.dead_lettered.load(Ordering::Relaxed)),
                log_dropped: count(|c| c.log_dropped.load(Ordering::Relaxed)),
            }
        })
        .collect();
    let pipes = status
        .pipes()
        .iter()
        .map(|slot| {
            let module = slot.current();
            PipeView {
                name: slot.pipe().to_owned(),
                module: module.path.display().to_string(),
                version: module.version,
                swaps: slot.swap_history(),
            }
        })
        .collect();
    let mut log: Vec<LogLineView> = status
        .stages()
        .iter()
        .filter_map(|stage| Some((stage.name.as_str(), stage.counters.as_deref()?)))
        .flat_map(|(step, counters)| {
            counters
                .recent_log
                .snapshot()
                .into_iter()
                .map(move |line| LogLineView {
                    step: step.to_owned(),
                    at_ms: line.at_ms,
                    source: line.source.to_owned(),
                    text: line.text,
                })
        })
        .collect();
    // Merged by time (stable: a pipe's own order is kept), the newest
    // RECENT_LOG_LINES of them.
    log.sort_by_key(|line| line.at_ms);
    let log = log.split_off(log.len().saturating_sub(RECENT_LOG_LINES));
    PipelineDetail {
        live: pipeline_live(pipeline),
        stages,
        checkpoints: status.checkpoint_history(),
        pipes,
        dead_letters: status.recent_dead_letters(),
        log,
    }
}

fn pipeline_status(name: &str, tenant: &str, status: &Arc<LiveStatus>) -> PipelineStatus {
    let last = status.last_checkpoint();
    PipelineStatus {
        name: name.to_owned(),
        tenant: tenant.to_owned(),
        state: status.phase().as_str().to_owned(),
        events_in: status.events_in.load(Ordering::Relaxed),
        events_out: status.events_out.load(Ordering::Relaxed),
        last_checkpoint_epoch: last.map(|(epoch, _)| epoch),
        last_checkpoint_age_ms: last.map(|(_, age)| age.as_millis() as u64),
        error: status.error(),
        pipes: status
            .pipes()
            .iter()
            .map(|slot| {
                let module = slot.current();
                PipeStatus {
                    name: slot.pipe().to_owned(),
                    module: module.path.display().to_string(),
                    version: module.version,
                }
            })
            .collect(),
    }
}

fn admin_error(pipeline: &str, error: HandleError) -> AdminError {
    match error {
        HandleError::UnknownPipe(pipe) => AdminError::UnknownPipe {
            pipeline: pipeline.to_owned(),
            pipe,
        },
        HandleError::NotRunning => {
            AdminError::Unavailable(format!("pipeline `{pipeline}` is not running"))
        }
        HandleError::Swap(SwapError::Refused { message, .. }) => AdminError::Refused(message),
        HandleError::Swap(stopped @ SwapError::Stopped { .. }) => {
            AdminError::Unavailable(stopped.to_string())
        }
    }
}

#[async_trait::async_trait]
impl AdminControl for Supervisor {
    fn pipelines(&self) -> Vec<PipelineStatus> {
        self.each(pipeline_status)
    }

    fn overview(&self) -> Vec<PipelineLive> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(pipeline_live)
            .collect()
    }

    fn detail(&self, pipeline: &str) -> Option<PipelineDetail> {
        self.find(pipeline, pipeline_detail)
    }

    fn tenants(&self) -> Vec<TenantView> {
        let overview = self.overview();
        self.tenants
            .all()
            .iter()
            .map(|usage| {
                let own = overview.iter().filter(|p| p.tenant == usage.tenant());
                let (events_in, events_out, errors) = own.fold((0, 0, 0), |(i, o, e), p| {
                    (i + p.events_in, o + p.events_out, e + p.errors)
                });
                TenantView {
                    tenant: usage.tenant().to_owned(),
                    pipelines: usage.pipelines() as u64,
                    max_pipelines: usage.quota().max_pipelines.map(|max| max as u64),
                    state_bytes: usage.state_bytes(),
                    max_state_bytes: usage.quota().max_state_bytes,
                    events_in,
                    events_out,
                    errors,
                }
            })
            .collect()
    }

    async fn stop(&self, pipeline: &str) -> Result<StopRequested, AdminError> {
        let handle = self.handle(pipeline)?;
        handle.shutdown();
        Ok(StopRequested {
            pipeline: pipeline.to_owned(),
            state: handle.status().phase().as_str().to_owned(),
        })
    }

    fn ready(&self) -> bool {
        self.each(|_, _, status| status.phase() != Phase::Starting)
            .into_iter()
            .all(|started| started)
    }

    fn metrics(&self) -> String {
        self.render_metrics()
    }

    async fn checkpoint(&self, pipeline: &str) -> Result<CheckpointDone, AdminError> {
        let handle = self.handle(pipeline)?;
        if handle.status().phase() != Phase::Running {
            return Err(AdminError::Unavailable(format!(
                "pipeline `{pipeline}` is not running"
            )));
        }
        let epoch = handle
            .checkpoint_now()
            .await
            .map_err(|e| admin_error(pipeline, e))?;
        Ok(CheckpointDone {
            pipeline: pipeline.to_owned(),
            epoch,
        })
    }

    async fn swap_module(
        &self,
        pipeline: &str,
        pipe: &str,
        module: ModuleUpload,
    ) -> Result<SwapDone, AdminError> {
        let handle = self.handle(pipeline)?;
        let source = match module {
            ModuleUpload::Path(path) => ModuleSource::Path(path),
            ModuleUpload::Bytes(bytes) => ModuleSource::Bytes(bytes),
        };
        let swapped = handle
            .swap_module(pipe, source)
            .await
            .map_err(|e| admin_error(pipeline, e))?;
        Ok(SwapDone {
            pipeline: pipeline.to_owned(),
            pipe: pipe.to_owned(),
            version: swapped.version,
            previous_version: swapped.previous_version,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rate_samples_give_events_per_second_and_keep_three_minutes() {
        let mut samples = super::RateSamples::default();
        let start = std::time::Instant::now();
        let at = |s: u64| start + std::time::Duration::from_secs(s);
        assert!(samples.rates().is_empty());
        samples.push(at(0), 0);
        samples.push(at(2), 200);
        samples.push(at(4), 200);
        samples.push(at(6), 1_200);
        assert_eq!(samples.rates(), [100, 0, 500]);
        for n in 0..200 {
            samples.push(at(8 + 2 * n), 1_200 + 10 * n);
        }
        assert_eq!(samples.0.len(), super::RATE_SAMPLES);
        assert!(samples.rates().iter().all(|&rate| rate == 5));
    }
}
