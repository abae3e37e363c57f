//! `{"type": "redb", …}`: the redb state backend's config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::validate::directory_to_be;
use crate::config::{Checks, ConnectorSpec, FieldError, StateSpec};
use crate::state::{RedbState, SharedState, StateError};

/// `{"type": "redb", "path": …}`: an embedded redb database file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedbStateConfig {
    /// The database file, created with its directory when missing
    /// (required; relative: to the config's directory).
    pub path: PathBuf,
    /// The most redb's page cache holds, in bytes (default
    /// [`RedbState::CACHE_BYTES`], 32 MiB).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

fn default_cache_bytes() -> u64 {
    RedbState::CACHE_BYTES
}

/// The smallest page cache accepted: a few of redb's 4 KiB pages per level
/// of a tree of millions of keys, with room to spare.
const MIN_CACHE_BYTES: u64 = 1024 * 1024;

#[async_trait]
impl ConnectorSpec for RedbStateConfig {
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
                    "{} bytes is too small for redb's page cache: at least {MIN_CACHE_BYTES}",
                    self.cache_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        if self.path.is_dir() {
            return Err(FieldError::new(
                "path",
                format!(
                    "`{}` is a directory; this needs the database file (created when missing)",
                    self.path.display()
                ),
            ));
        }
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => directory_to_be(parent, "path"),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl StateSpec for RedbStateConfig {
    async fn open(&self) -> Result<SharedState, StateError> {
        Ok(Arc::new(RedbState::open_with_cache(
            &self.path,
            self.cache_bytes,
        )?))
    }

    /// redb locks its file: pipelines of one process naming the same one
    /// share the open database.
    fn shared_key(&self) -> Option<String> {
        Some(format!("redb:{}", self.path.display()))
    }
}
