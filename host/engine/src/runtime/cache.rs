//! The on-disk cache of compiled components, bounded in size.
//!
//! A compiled component is only valid for the wasmtime version and engine
//! settings it was built with, so an entry's name is the SHA-256 of the
//! `.wasm` and a SHA-256 of [`Engine::precompile_compatibility_hash`] (which
//! covers the wasmtime version, the target and every setting that changes
//! the compiled code). Both are digests of bytes, not a `std::hash::Hash`
//! through `DefaultHasher`, whose output may change between Rust releases
//! and would orphan every entry on a toolchain update.
//!
//! Entries are written to a temporary file and renamed, so a crash never
//! leaves a half-written entry behind. After each write the cache is
//! trimmed to its size bound ([`ComponentCache::max_bytes`],
//! `PLUMBER_CACHE_MAX_BYTES`, 1 GiB by default) by deleting the least
//! recently used entries; a hit refreshes its entry's modification time,
//! which is what "recently used" is measured by.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::LoadError;

/// The size bound when none is given: 1 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 1 << 30;

/// The environment variable that sets the size bound, in bytes.
pub const CACHE_MAX_BYTES_VAR: &str = "PLUMBER_CACHE_MAX_BYTES";

/// Temporary files older than this are left over from a crash and removed
/// when the cache is trimmed (a live writer renames its file in seconds).
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// Compiled components on disk.
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// A [`Hasher`] that feeds SHA-256, so that a `Hash` value gives the same
/// digest on every build of the same wasmtime.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Only the full digest is used (see `engine_key`).
        0
    }
}

/// The engine part of every entry name: the first 16 bytes of a SHA-256 of
/// the engine's compatibility hash, in hex.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..16])
}

/// The size bound from [`CACHE_MAX_BYTES_VAR`], else the default.
///
/// # Errors
///
/// The variable is set but is not a whole number of bytes.
pub(crate) fn max_bytes_from_env() -> Result<u64, LoadError> {
    max_bytes_from(std::env::var_os(CACHE_MAX_BYTES_VAR))
}

/// The size bound that `value` of [`CACHE_MAX_BYTES_VAR`] sets.
fn max_bytes_from(value: Option<std::ffi::OsString>) -> Result<u64, LoadError> {
    let Some(value) = value else {
        return Ok(DEFAULT_CACHE_MAX_BYTES);
    };
    value
        .to_str()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| LoadError::CacheSetting {
            variable: CACHE_MAX_BYTES_VAR,
            value: value.to_string_lossy().into_owned(),
        })
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine, max_bytes: u64) -> Self {
        ComponentCache {
            dir,
            engine_key: engine_key(engine),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most bytes of entries the cache keeps.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Loads served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Loads that had to compile so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries this cache deleted to stay within [`ComponentCache::max_bytes`].
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The cache file for these bytes (a component).
    pub fn entry_path(&self, bytes: &[u8]) -> PathBuf {
        let digest = hex::encode(Sha256::digest(bytes));
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The cache file for these bytes compiled as a core module.
    pub fn module_entry_path(&self, bytes: &[u8]) -> PathBuf {
        self.entry_path(bytes).with_extension("module.cwasm")
    }

    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        let entry = self.entry_path(bytes);
        if entry.exists() {
            // SAFETY: entries are only ever written by `store` below, from
            // `Engine::precompile_component` output for the same engine
            // settings (the file name carries their digest), and are renamed
            // into place whole. wasmtime checks the header again and refuses
            // an artifact of other settings.
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(component) => {
                    self.hit(&entry);
                    return Ok(component);
                }
                Err(error) => {
                    tracing::warn!(entry = %entry.display(), "unusable cache entry, recompiling: {error:#}");
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|source| LoadError::Compile {
                path: path.to_path_buf(),
                source,
            })?;
        self.store(&entry, &compiled);
        // SAFETY: `compiled` was produced just above by this engine.
        unsafe { Component::deserialize(engine, &compiled) }.map_err(|source| LoadError::Compile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// As [`ComponentCache::get_or_compile`], for a core module (command pipes).
    pub(crate) fn get_or_compile_module(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<wasmtime::Module, LoadError> {
        let entry = self.module_entry_path(bytes);
        if entry.exists() {
            // SAFETY: as for components: written only by `store` below from
            // `Engine::precompile_module` output for these engine settings.
            match unsafe { wasmtime::Module::deserialize_file(engine, &entry) } {
                Ok(module) => {
                    self.hit(&entry);
                    return Ok(module);
                }
                Err(error) => {
                    tracing::warn!(entry = %entry.display(), "unusable cache entry, recompiling: {error:#}");
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let compile_error = |source: wasmtime::Error| LoadError::Compile {
            path: path.to_path_buf(),
            source,
        };
        let compiled = engine.precompile_module(bytes).map_err(compile_error)?;
        self.store(&entry, &compiled);
        // SAFETY: `compiled` was produced just above by this engine.
        unsafe { wasmtime::Module::deserialize(engine, &compiled) }.map_err(compile_error)
    }

    /// Counts a hit and marks the entry as just used.
    fn hit(&self, entry: &Path) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let touched =
            std::fs::File::open(entry).and_then(|file| file.set_modified(SystemTime::now()));
        if let Err(error) = touched {
            // Only the eviction order suffers: it may go first.
            tracing::debug!(entry = %entry.display(), "cannot mark cache entry as used: {error}");
        }
    }

    /// Writes an entry, then trims the cache. A cache that cannot be
    /// written only costs time on the next start, so failures are logged.
    fn store(&self, entry: &Path, compiled: &[u8]) {
        let written = (|| {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, compiled)?;
            std::fs::rename(&tmp, entry)
        })();
        if let Err(error) = written {
            tracing::warn!(dir = %self.dir.display(), "cannot write component cache: {error}");
            return;
        }
        if let Err(error) = self.trim() {
            tracing::warn!(dir = %self.dir.display(), "cannot trim component cache: {error}");
        }
    }

    /// Deletes the least recently used entries until the cache holds at
    /// most [`ComponentCache::max_bytes`] (the newest entry last, so an
    /// entry larger than the bound does not stay either), and temporary
    /// files a crash left behind.
    fn trim(&self) -> std::io::Result<()> {
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut total: u64 = 0;
        for item in std::fs::read_dir(&self.dir)? {
            let item = item?;
            let metadata = match item.metadata() {
                Ok(metadata) if metadata.is_file() => metadata,
                // Gone meanwhile (another process trimmed), or not ours.
                _ => continue,
            };
            let path = item.path();
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".cwasm") {
                total = total.saturating_add(metadata.len());
                entries.push((modified, metadata.len(), path));
            } else if name.contains(".tmp")
                && now.duration_since(modified).unwrap_or_default() > STALE_TEMPORARY
            {
                remove(&path);
            }
        }
        if total <= self.max_bytes {
            return Ok(());
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if remove(&path) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(entry = %path.display(), bytes = len, "evicted from the component cache");
            }
            // Counted as gone either way: another process removed it.
            total = total.saturating_sub(len);
        }
        Ok(())
    }
}

/// Deletes a cache file; false if it was not there (or could not go).
fn remove(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => {
            tracing::warn!(entry = %path.display(), "cannot delete cache file: {error}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_key_is_a_digest_that_follows_the_settings() {
        let engine = Engine::default();
        let key = engine_key(&engine);
        assert_eq!(key.len(), 32);
        assert_eq!(
            key,
            engine_key(&Engine::default()),
            "same settings, same key"
        );

        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).expect("engine");
        assert_ne!(key, engine_key(&other), "other settings, other key");
    }

    #[test]
    fn the_size_bound_comes_from_the_variable_or_the_default() {
        assert_eq!(max_bytes_from(None).unwrap(), DEFAULT_CACHE_MAX_BYTES);
        assert_eq!(max_bytes_from(Some("2048".into())).unwrap(), 2048);
        let error = max_bytes_from(Some("1GiB".into())).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`PLUMBER_CACHE_MAX_BYTES` is `1GiB`: expected a whole number of bytes, e.g. 1073741824"
        );
    }
}
