//! `{"type": "memory", …}`: the in-memory state backend's config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::validate::file_to_be_written;
use crate::config::{Checks, ConnectorSpec, FieldError, StateSpec};
use crate::state::{MemoryState, SharedState, StateError};

/// `{"type": "memory"}`: state in the process's memory; durable only with
/// `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryStateConfig {
    /// A snapshot file that each checkpoint replaces atomically with the
    /// whole map (default: none, nothing survives the process;
    /// relative: to the config's directory).
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
}

#[async_trait]
impl ConnectorSpec for MemoryStateConfig {
    fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.snapshot {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        match &self.snapshot {
            Some(path) => file_to_be_written(path, "snapshot"),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl StateSpec for MemoryStateConfig {
    async fn open(&self) -> Result<SharedState, StateError> {
        Ok(match &self.snapshot {
            Some(path) => Arc::new(MemoryState::with_snapshot(path)?),
            None => Arc::new(MemoryState::new()),
        })
    }
}
