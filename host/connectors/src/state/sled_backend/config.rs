//! `{"type": "sled", …}`: the sled state backend's config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::validate::directory_to_be;
use crate::config::{Checks, ConnectorSpec, FieldError, StateSpec};
use crate::state::{SharedState, SledState, StateError};

/// `{"type": "sled", "path": …}`: an embedded sled database directory
/// (the default: `<name>.state` beside the config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SledStateConfig {
    /// The directory, created when missing (required; relative: to the
    /// config's directory).
    pub path: PathBuf,
}

#[async_trait]
impl ConnectorSpec for SledStateConfig {
    fn resolve_paths(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
    }

    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        directory_to_be(&self.path, "path")
    }
}

#[async_trait]
impl StateSpec for SledStateConfig {
    async fn open(&self) -> Result<SharedState, StateError> {
        Ok(Arc::new(SledState::open(&self.path)?))
    }

    /// sled locks its directory: pipelines of one process naming the same
    /// one share the open database.
    fn shared_key(&self) -> Option<String> {
        Some(format!("sled:{}", self.path.display()))
    }
}
