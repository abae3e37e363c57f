//! The host side of the `state` and `log` interfaces, and the store data of
//! every pipe instance.

use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::plumber::pipe::log::{self, Level};
use super::bindings::plumber::pipe::state::{self, StateError as WitStateError};
use super::bindings::plumber::pipe::types;
use crate::state::{PipeState, StateError};

/// What a pipe instance's store holds: its name, its state view and an
/// empty WASI context.
pub struct HostCtx {
    pipe: String,
    state: PipeState,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostCtx {
    pub(crate) fn new(pipe: &str, state: PipeState, wasi: WasiCtx, table: ResourceTable) -> Self {
        HostCtx {
            pipe: pipe.to_owned(),
            state,
            wasi,
            table,
        }
    }

    pub(crate) fn state_mut(&mut self) -> &mut PipeState {
        &mut self.state
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

fn to_wit(error: StateError) -> WitStateError {
    match error {
        StateError::Invalid(message) => WitStateError::Invalid(message),
        other => WitStateError::Backend(other.to_string()),
    }
}

impl types::Host for HostCtx {}

impl state::Host for HostCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitStateError> {
        self.state.get(&key).await.map_err(to_wit)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, WitStateError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in &keys {
            values.push(self.state.get(key).await.map_err(to_wit)?);
        }
        Ok(values)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), WitStateError> {
        self.state.set(&key, value).await.map_err(to_wit)
    }

    async fn delete(&mut self, key: String) -> Result<(), WitStateError> {
        self.state.delete(&key).await.map_err(to_wit)
    }

    async fn add(&mut self, key: String, delta: i64) -> Result<i64, WitStateError> {
        self.state.add(&key, delta).await.map_err(to_wit)
    }
}

impl log::Host for HostCtx {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let pipe = self.pipe.as_str();
        let fields = FieldList(&fields);
        match level {
            Level::Trace => tracing::trace!(target: "plumber::guest", pipe, %fields, "{message}"),
            Level::Debug => tracing::debug!(target: "plumber::guest", pipe, %fields, "{message}"),
            Level::Info => tracing::info!(target: "plumber::guest", pipe, %fields, "{message}"),
            Level::Warn => tracing::warn!(target: "plumber::guest", pipe, %fields, "{message}"),
            Level::Error => tracing::error!(target: "plumber::guest", pipe, %fields, "{message}"),
        }
    }
}

/// Guest fields rendered as `k=v k=v`.
struct FieldList<'a>(&'a [(String, String)]);

impl std::fmt::Display for FieldList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        Ok(())
    }
}
