//! The host side of the `state` and `log` interfaces, and the store data of
//! every pipe instance.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{WasmList, WasmStr};
use wasmtime::StoreContextMut;

use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::plumber::pipe::log::{self, Level};
use super::bindings::plumber::pipe::state::{self, StateError as WitStateError};
use super::bindings::plumber::pipe::types;
use super::guest_output::LogBudget;
use super::limits::{cap_message, LimitKind, MemoryLimiter, PipeLimits, MAX_MESSAGE_BYTES};
use crate::state::{PipeState, StateError};

/// What a pipe instance's store holds: who it is, its state view, its
/// limits and what it used, and its WASI context.
pub struct HostCtx {
    tenant: Arc<str>,
    pipe: Arc<str>,
    state: PipeState,
    pub(crate) limits: Arc<PipeLimits>,
    pub(crate) limiter: MemoryLimiter,
    /// When the call in progress started (for the time limit).
    pub(crate) call_started: Instant,
    /// The limit the call in progress went past, if any.
    pub(crate) limit_hit: Option<LimitKind>,
    /// The first failure of the state backend itself (unreachable, or the
    /// pipeline claimed by a newer process) in a call: not the event's
    /// fault, so it stops the pipeline whatever the guest did with it.
    pub(crate) backend_failure: Option<StateError>,
    /// The pipe's allowance of log lines (shared with its stdout/stderr).
    log_budget: Arc<LogBudget>,
    /// The keys of the `add-many` call in progress, copied end to end out of
    /// guest memory: one buffer per call (reused), not a `String` per key.
    add_keys: String,
    /// Where each of those keys ends in `add_keys`, with its delta.
    add_ops: Vec<(usize, i64)>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostCtx {
    pub(crate) fn new(
        tenant: Arc<str>,
        pipe: Arc<str>,
        state: PipeState,
        limits: Arc<PipeLimits>,
        log_budget: Arc<LogBudget>,
        wasi: WasiCtx,
    ) -> Self {
        HostCtx {
            tenant,
            pipe,
            state,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            limits,
            call_started: Instant::now(),
            limit_hit: None,
            backend_failure: None,
            log_budget,
            add_keys: String::new(),
            add_ops: Vec::new(),
            wasi,
            table: ResourceTable::new(),
        }
    }

    pub(crate) fn state_mut(&mut self) -> &mut PipeState {
        &mut self.state
    }

    pub(crate) fn state_ref(&self) -> &PipeState {
        &self.state
    }

    fn over(&mut self, kind: LimitKind, message: String) -> WitStateError {
        self.limit_hit = Some(kind);
        WitStateError::Limit(message)
    }

    fn check_key(&mut self, key: &str) -> Result<(), WitStateError> {
        let max = self.limits.max_key_bytes;
        if key.len() as u64 > max {
            return Err(self.over(
                LimitKind::StateKey,
                format!(
                    "state key of {} bytes is longer than the limit of {max}",
                    key.len()
                ),
            ));
        }
        Ok(())
    }

    fn check_value(&mut self, value: &[u8]) -> Result<(), WitStateError> {
        let max = self.limits.max_value_bytes;
        if value.len() as u64 > max {
            return Err(self.over(
                LimitKind::StateValue,
                format!(
                    "state value of {} bytes is longer than the limit of {max}",
                    value.len()
                ),
            ));
        }
        Ok(())
    }

    /// Applies the additions of an `add-many` call: key `i` is
    /// `keys[ops[i-1].0..ops[i].0]` with delta `ops[i].1`.
    async fn add_spans(
        &mut self,
        keys: &str,
        ops: &[(usize, i64)],
    ) -> Result<Vec<i64>, WitStateError> {
        let mut start = 0;
        for &(end, _) in ops {
            self.check_key(keys.get(start..end).unwrap_or_default())?;
            start = end;
        }
        let mut values = Vec::with_capacity(ops.len());
        match self.state.add_many(keys, ops, &mut values).await {
            Ok(()) => Ok(values),
            Err(error) => Err(self.state_error(error)),
        }
    }

    fn state_error(&mut self, error: StateError) -> WitStateError {
        match error {
            StateError::Invalid(message) => WitStateError::Invalid(message),
            quota @ StateError::Quota { .. } => self.over(LimitKind::StateQuota, quota.to_string()),
            pending @ StateError::PendingWrites { .. } => {
                self.over(LimitKind::PendingWrites, pending.to_string())
            }
            other => {
                let message = other.to_string();
                self.backend_failure.get_or_insert(other);
                WitStateError::Backend(message)
            }
        }
    }
}

impl WasiView for HostCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostCtx {}

impl state::Host for HostCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitStateError> {
        self.check_key(&key)?;
        match self.state.get(&key).await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.state_error(error)),
        }
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, WitStateError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in &keys {
            self.check_key(key)?;
            match self.state.get(key).await {
                Ok(value) => values.push(value),
                Err(error) => return Err(self.state_error(error)),
            }
        }
        Ok(values)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), WitStateError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        match self.state.set(&key, value).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.state_error(error)),
        }
    }

    async fn delete(&mut self, key: String) -> Result<(), WitStateError> {
        self.check_key(&key)?;
        match self.state.delete(&key).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.state_error(error)),
        }
    }

    async fn add(&mut self, key: String, delta: i64) -> Result<i64, WitStateError> {
        self.check_key(&key)?;
        match self.state.add(&key, delta).await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.state_error(error)),
        }
    }

    async fn add_many(&mut self, ops: Vec<(String, i64)>) -> Result<Vec<i64>, WitStateError> {
        let mut values = Vec::with_capacity(ops.len());
        for (key, delta) in &ops {
            self.check_key(key)?;
            match self.state.add(key, *delta).await {
                Ok(value) => values.push(value),
                Err(error) => return Err(self.state_error(error)),
            }
        }
        Ok(values)
    }
}

/// What `state.add-many` returns to the guest.
type AddManyReturn = (Result<Vec<i64>, WitStateError>,);

/// `state.add-many`, defined over the one bindgen generates: the keys are
/// read where they lie in guest memory and copied end to end into one
/// reused buffer, instead of being lifted into a `String` each (an
/// allocation per key, the largest cost of a counting pipe's host call).
/// Same contract: additions in order, new values in order.
pub(crate) fn add_many_in_place(
    mut store: StoreContextMut<'_, HostCtx>,
    (ops,): (WasmList<(WasmStr, i64)>,),
) -> Box<dyn Future<Output = wasmtime::Result<AddManyReturn>> + Send + '_> {
    Box::new(async move {
        let mut handles = Vec::with_capacity(ops.len());
        for op in ops.iter(&mut store)? {
            handles.push(op?);
        }
        let mut keys = std::mem::take(&mut store.data_mut().add_keys);
        let mut spans = std::mem::take(&mut store.data_mut().add_ops);
        keys.clear();
        spans.clear();
        for (key, delta) in &handles {
            keys.push_str(&key.to_str(&store)?);
            spans.push((keys.len(), *delta));
        }
        let ctx = store.data_mut();
        let result = ctx.add_spans(&keys, &spans).await;
        ctx.add_keys = keys;
        ctx.add_ops = spans;
        Ok((result,))
    })
}

impl log::Host for HostCtx {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        // Lines nobody would see cost nothing and use none of the budget.
        let enabled = match level {
            tracing::Level::TRACE => {
                tracing::enabled!(target: "plumber::guest", tracing::Level::TRACE)
            }
            tracing::Level::DEBUG => {
                tracing::enabled!(target: "plumber::guest", tracing::Level::DEBUG)
            }
            tracing::Level::INFO => {
                tracing::enabled!(target: "plumber::guest", tracing::Level::INFO)
            }
            tracing::Level::WARN => {
                tracing::enabled!(target: "plumber::guest", tracing::Level::WARN)
            }
            tracing::Level::ERROR => {
                tracing::enabled!(target: "plumber::guest", tracing::Level::ERROR)
            }
        };
        if !enabled {
            return;
        }
        let message = cap_message(&message);
        let fields = FieldList(&fields).to_string();
        let fields = cap_message(&fields);
        if !self.log_budget.admit(message.len() + fields.len()) {
            return;
        }
        let source = match level {
            tracing::Level::TRACE => "trace",
            tracing::Level::DEBUG => "debug",
            tracing::Level::INFO => "info",
            tracing::Level::WARN => "warn",
            tracing::Level::ERROR => "error",
        };
        if fields.is_empty() {
            self.log_budget.record(source, &message);
        } else {
            self.log_budget
                .record(source, &format!("{message} {fields}"));
        }
        let tenant = &*self.tenant;
        let pipe = &*self.pipe;
        let fields = &*fields;
        match level {
            tracing::Level::TRACE => {
                tracing::trace!(target: "plumber::guest", tenant, pipe, fields, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "plumber::guest", tenant, pipe, fields, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "plumber::guest", tenant, pipe, fields, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "plumber::guest", tenant, pipe, fields, "{message}")
            }
            tracing::Level::ERROR => {
                tracing::error!(target: "plumber::guest", tenant, pipe, fields, "{message}")
            }
        }
    }
}

/// Guest fields rendered as `k=v k=v`; the text stops growing a little past
/// [`MAX_MESSAGE_BYTES`], since it is cut there anyway.
struct FieldList<'a>(&'a [(String, String)]);

impl std::fmt::Display for FieldList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut written = 0;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if written > MAX_MESSAGE_BYTES {
                break;
            }
            if i > 0 {
                f.write_str(" ")?;
            }
            let k = cap_message(k);
            let v = cap_message(v);
            write!(f, "{k}={v:?}")?;
            written += k.len() + v.len() + 2;
        }
        Ok(())
    }
}
