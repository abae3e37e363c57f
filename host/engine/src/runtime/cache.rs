//! The on-disk cache of compiled components.
//!
//! A compiled component is only valid for the engine settings it was built
//! with, so entries are keyed by the SHA-256 of the `.wasm` and a hash of
//! the engine's compatibility settings. Entries are written to a temporary
//! file and renamed, so a crash never leaves a half-written entry behind.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::LoadError;

/// Compiled components on disk.
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Loads that had to compile so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// The cache file for these bytes.
    pub fn entry_path(&self, bytes: &[u8]) -> PathBuf {
        let digest = hex::encode(Sha256::digest(bytes));
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
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
            // settings (the file name carries their hash), and are renamed
            // into place whole.
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
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
            .map_err(|e| LoadError::Compile {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        if let Err(error) = self.store(&entry, &compiled) {
            // A cache that cannot be written only costs time on the next start.
            tracing::warn!(dir = %self.dir.display(), "cannot write component cache: {error}");
        }
        // SAFETY: `compiled` was produced just above by this engine.
        unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| LoadError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
    }

    /// As [`ComponentCache::get_or_compile`], for a core module (command pipes).
    pub(crate) fn get_or_compile_module(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<wasmtime::Module, LoadError> {
        let entry = self.entry_path(bytes).with_extension("module.cwasm");
        if entry.exists() {
            // SAFETY: as for components: written only by `store` below from
            // `Engine::precompile_module` output for these engine settings.
            match unsafe { wasmtime::Module::deserialize_file(engine, &entry) } {
                Ok(module) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(module);
                }
                Err(error) => {
                    tracing::warn!(entry = %entry.display(), "unusable cache entry, recompiling: {error:#}");
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let compile_error = |e: wasmtime::Error| LoadError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let compiled = engine.precompile_module(bytes).map_err(compile_error)?;
        if let Err(error) = self.store(&entry, &compiled) {
            tracing::warn!(dir = %self.dir.display(), "cannot write component cache: {error}");
        }
        // SAFETY: `compiled` was produced just above by this engine.
        unsafe { wasmtime::Module::deserialize(engine, &compiled) }.map_err(compile_error)
    }

    fn store(&self, entry: &Path, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, compiled)?;
        std::fs::rename(&tmp, entry)
    }
}
