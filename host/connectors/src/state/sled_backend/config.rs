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
    /// The most sled's page cache holds, in bytes (default
    /// [`SledState::CACHE_BYTES`], 32 MiB).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

fn default_cache_bytes() -> u64 {
    SledState::CACHE_BYTES
}

/// The smallest page cache accepted: sled needs room for a few pages.
const MIN_CACHE_BYTES: u64 = 1024 * 1024;

#[async_trait]
impl ConnectorSpec for SledStateConfig {
    fn resolve_paths(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
    }

    fn check(&self) -> Result<(), FieldError> {
        if self.cache_bytes < MIN_CACHE_BYTES {
            return Err(FieldError::new(
                "cache_bytes",
                format!(
                    "{} bytes is too small for sled's page cache: at least {MIN_CACHE_BYTES}",
                    self.cache_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        directory_to_be(&self.path, "path")
    }
}

#[async_trait]
impl StateSpec for SledStateConfig {
    async fn open(&self) -> Result<SharedState, StateError> {
        Ok(Arc::new(SledState::open_with_cache(
            &self.path,
            self.cache_bytes,
        )?))
    }

    /// sled locks its directory: pipelines of one process naming the same
    /// one share the open database.
    fn shared_key(&self) -> Option<String> {
        Some(format!("sled:{}", self.path.display()))
    }
}
