//! The connector registry: which `"type"` of a source, sink or state
//! backend section is read by which config type.
//!
//! Each connector keeps its config type beside its implementation (a
//! struct read by serde) and implements [`SourceSpec`], [`SinkSpec`] or
//! [`StateSpec`] on it: its own checks, what `plumber validate --connect`
//! and `plumber setup` do for it, and how it opens. A [`Registry`] maps
//! type names to those config types, and the pipeline config resolves its
//! `from`, `to`, `dead_letter` and `state` sections through one, so that a
//! connector defined in any crate is one module plus one line:
//!
//! ```ignore
//! registry.source::<FileSourceConfig>("file");
//! ```
//!
//! [`Registry::builtin`] has what the engine always has (array, file,
//! stdout, discard, memory state); `plumber_connectors::register_all` adds
//! the connectors that need servers or libraries (HTTP, NATS, JetStream,
//! SQL, Redis, sled: those its cargo features enable), and
//! `plumber_connectors::config::standard_registry` is both, what the
//! `plumber` binary uses. An embedder may build its own, and register a
//! type under a name that is already taken to replace it.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::strict::{self, Tagged};
use super::validate::Checks;
use super::FieldError;
use crate::state::{SharedState, StateError};
use crate::streams::{Sink, Source, StreamError};

/// What every connector config does, whatever it connects: the checks of
/// its fields, of `plumber validate` and `validate --connect`, and
/// `plumber setup`. Every method has a default that does nothing.
///
/// Errors name the field at fault relative to the section
/// ([`FieldError::field`]: `path`, `subjects[0]`; empty for the section
/// itself); the config adds where the section is (`from`, `to`, …).
#[async_trait]
pub trait ConnectorSpec: fmt::Debug + Send + Sync + Any {
    /// Checks what the fields say together, without touching anything;
    /// run on every read of the config.
    ///
    /// # Errors
    ///
    /// A field's value cannot work, alone or with another field's.
    fn check(&self) -> Result<(), FieldError> {
        Ok(())
    }

    /// Makes relative file paths relative to `base`, the directory of the
    /// config file; run once, when the config is read.
    fn resolve_paths(&mut self, _base: &Path) {}

    /// The checks of `plumber validate` (and of `plumber run` before it
    /// opens anything) that need no server and change nothing: files read
    /// exist, URLs parse, names are valid. What can only be checked on a
    /// server is said with [`Checks::needs_connect`].
    ///
    /// # Errors
    ///
    /// A setting cannot work on this system.
    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        Ok(())
    }

    /// `plumber validate --connect`: reaches the servers the section names,
    /// changing nothing on them.
    ///
    /// # Errors
    ///
    /// A server cannot be reached, or lacks what the section names.
    async fn check_connected(&self) -> Result<(), FieldError> {
        Ok(())
    }

    /// `plumber setup`: creates on its servers what the section needs and
    /// is not there yet, leaving what exists as it is; one line saying what
    /// it did, or `None` when the connector has nothing to set up.
    ///
    /// # Errors
    ///
    /// A server cannot be reached or refuses, or what to create is not said.
    async fn setup(&self) -> Result<Option<String>, FieldError> {
        Ok(None)
    }
}

/// What a source needs to open.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct OpenContext<'a> {
    /// The pipeline's name (a JetStream sink's message ids start with it).
    pub pipeline: &'a str,
}

impl<'a> OpenContext<'a> {
    /// The context of the pipeline called `pipeline`.
    pub fn new(pipeline: &'a str) -> Self {
        OpenContext { pipeline }
    }
}

/// The config of a source (`"from"`).
#[async_trait]
pub trait SourceSpec: ConnectorSpec {
    /// Opens the source (binding or connecting where it has to).
    ///
    /// # Errors
    ///
    /// A bind or a connection failed.
    async fn open(&self, context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError>;
}

/// The config of a sink (`"to"`, `"dead_letter"`).
#[async_trait]
pub trait SinkSpec: ConnectorSpec {
    /// Opens the sink (connecting where it has to).
    ///
    /// # Errors
    ///
    /// A connection failed.
    async fn open(&self, context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError>;

    /// What the sink's output promises when the pipeline runs exactly-once,
    /// as `plumber run` logs it at start.
    fn output_guarantee(&self) -> OutputGuarantee;
}

/// What a sink's output promises under exactly-once delivery, with the
/// line `plumber run` logs about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputGuarantee {
    /// Output is exactly-once with the state (or there is none to speak
    /// of): logged as information.
    ExactlyOnce(&'static str),
    /// Output since the last checkpoint may be repeated after a crash:
    /// logged as a warning.
    AtLeastOnce(&'static str),
}

/// The config of a lookup join's table (`"table"` of a `lookup` step).
#[async_trait]
pub trait LookupSpec: ConnectorSpec {
    /// Opens the table (connecting where it has to).
    ///
    /// # Errors
    ///
    /// A connection failed.
    async fn open(
        &self,
        context: &OpenContext<'_>,
    ) -> Result<Box<dyn crate::join::RemoteTable>, StreamError>;
}

/// The config of a state backend (`"state"`).
#[async_trait]
pub trait StateSpec: ConnectorSpec {
    /// Opens the backend.
    ///
    /// # Errors
    ///
    /// The backend cannot be opened (a directory, a file, a server).
    async fn open(&self) -> Result<SharedState, StateError>;

    /// Pipelines of one process whose state sections give the same key
    /// share one open backend (sled locks its directory); `None`: each opens
    /// its own.
    fn shared_key(&self) -> Option<String> {
        None
    }
}

/// A connector section as configured: its `"type"` and its config.
pub struct Connector<S: ?Sized> {
    type_name: &'static str,
    spec: Arc<S>,
}

/// `"from"`: a source as configured.
pub type SourceConfig = Connector<dyn SourceSpec>;
/// `"to"` or `"dead_letter"`: a sink as configured.
pub type SinkConfig = Connector<dyn SinkSpec>;
/// `"state"`: a state backend as configured.
pub type StateConfig = Connector<dyn StateSpec>;
/// `"table"` of a `lookup` step: a table as configured.
pub type LookupConfig = Connector<dyn LookupSpec>;

impl<S: ?Sized> Connector<S> {
    /// The `"type"` it was configured with.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl<S: ?Sized> Clone for Connector<S> {
    fn clone(&self) -> Self {
        Connector {
            type_name: self.type_name,
            spec: self.spec.clone(),
        }
    }
}

impl<S: ?Sized> std::ops::Deref for Connector<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.spec
    }
}

impl<S: ?Sized + fmt::Debug> fmt::Debug for Connector<S> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Connector")
            .field("type", &self.type_name)
            .field("spec", &&*self.spec)
            .finish()
    }
}

macro_rules! downcast {
    ($($spec:ident),*) => {$(
        impl Connector<dyn $spec> {
            /// The config as its concrete type, when it is a `T`.
            pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
                let spec: &dyn Any = &*self.spec;
                spec.downcast_ref()
            }
        }
    )*};
}
downcast!(SourceSpec, SinkSpec, StateSpec, LookupSpec);

/// Reads a section's fields (its `type` taken out) as a config; the base
/// directory resolves relative paths. Errors: the path inside the section
/// and the message.
type Reader<S> = fn(Tagged, &Path) -> Result<Box<S>, (String, String)>;

fn read<T: ConnectorSpec + DeserializeOwned>(
    section: Tagged,
    base: &Path,
) -> Result<T, (String, String)> {
    let mut spec: T = strict::read_fields(section.fields)?;
    spec.resolve_paths(base);
    Ok(spec)
}

fn read_source<T: SourceSpec + DeserializeOwned>(
    section: Tagged,
    base: &Path,
) -> Result<Box<dyn SourceSpec>, (String, String)> {
    Ok(Box::new(read::<T>(section, base)?))
}

fn read_sink<T: SinkSpec + DeserializeOwned>(
    section: Tagged,
    base: &Path,
) -> Result<Box<dyn SinkSpec>, (String, String)> {
    Ok(Box::new(read::<T>(section, base)?))
}

fn read_lookup<T: LookupSpec + DeserializeOwned>(
    section: Tagged,
    base: &Path,
) -> Result<Box<dyn LookupSpec>, (String, String)> {
    Ok(Box::new(read::<T>(section, base)?))
}

fn read_state<T: StateSpec + DeserializeOwned>(
    section: Tagged,
    base: &Path,
) -> Result<Box<dyn StateSpec>, (String, String)> {
    Ok(Box::new(read::<T>(section, base)?))
}

/// The state a pipeline gets when its config has no `"state"`: its type
/// name, and the config for the pipeline called `name` whose config file
/// is in `base`.
type DefaultState = (&'static str, fn(&str, &Path) -> Box<dyn StateSpec>);

/// Which config type reads each `"type"` of source, sink and state backend.
#[derive(Clone, Default)]
pub struct Registry {
    sources: BTreeMap<&'static str, Reader<dyn SourceSpec>>,
    sinks: BTreeMap<&'static str, Reader<dyn SinkSpec>>,
    states: BTreeMap<&'static str, Reader<dyn StateSpec>>,
    lookups: BTreeMap<&'static str, Reader<dyn LookupSpec>>,
    default_state: Option<DefaultState>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Registry")
            .field("sources", &self.source_types())
            .field("sinks", &self.sink_types())
            .field("states", &self.state_types())
            .field("lookups", &self.lookup_types())
            .field("default_state", &self.default_state.map(|(name, _)| name))
            .finish()
    }
}

impl Registry {
    /// A registry that knows no type.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// What the engine always has: the `array` and `file` sources, the
    /// `stdout`, `file` and `discard` sinks, and the `memory` state
    /// backend. It has no default state: a config read with it names its
    /// `"state"`.
    pub fn builtin() -> Self {
        let mut registry = Registry::empty();
        registry
            .source::<crate::streams::ArraySourceConfig>("array")
            .source::<crate::streams::FileSourceConfig>("file")
            .sink::<crate::streams::StdoutSinkConfig>("stdout")
            .sink::<crate::streams::FileSinkConfig>("file")
            .sink::<crate::streams::DiscardSinkConfig>("discard")
            .state::<crate::state::MemoryStateConfig>("memory");
        registry
    }

    /// Registers `T` as the source of type `name` (replacing any).
    pub fn source<T: SourceSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.sources.insert(name, read_source::<T>);
        self
    }

    /// Registers `T` as the sink of type `name` (replacing any); a sink
    /// type serves as `to` and as `dead_letter`.
    pub fn sink<T: SinkSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.sinks.insert(name, read_sink::<T>);
        self
    }

    /// Registers `T` as the lookup table of type `name` (replacing any).
    pub fn lookup<T: LookupSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.lookups.insert(name, read_lookup::<T>);
        self
    }

    /// Registers `T` as the state backend of type `name` (replacing any).
    pub fn state<T: StateSpec + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.states.insert(name, read_state::<T>);
        self
    }

    /// Sets the state a config without `"state"` gets: the backend of type
    /// `name` as `make` configures it for a pipeline (its name, its config
    /// file's directory).
    pub fn default_state(
        &mut self,
        name: &'static str,
        make: fn(&str, &Path) -> Box<dyn StateSpec>,
    ) -> &mut Self {
        self.default_state = Some((name, make));
        self
    }

    /// The source types it knows, in order.
    pub fn source_types(&self) -> Vec<&'static str> {
        self.sources.keys().copied().collect()
    }

    /// The sink types it knows, in order.
    pub fn sink_types(&self) -> Vec<&'static str> {
        self.sinks.keys().copied().collect()
    }

    /// The lookup table types it knows, in order.
    pub fn lookup_types(&self) -> Vec<&'static str> {
        self.lookups.keys().copied().collect()
    }

    /// The state backend types it knows, in order.
    pub fn state_types(&self) -> Vec<&'static str> {
        self.states.keys().copied().collect()
    }

    /// Reads a source section; `base` resolves its relative paths.
    pub(crate) fn read_source(
        &self,
        section: Tagged,
        base: &Path,
    ) -> Result<SourceConfig, (String, String)> {
        let (type_name, spec) = resolve(&self.sources, "source", section, base)?;
        Ok(Connector {
            type_name,
            spec: Arc::from(spec),
        })
    }

    /// Reads a sink section; `base` resolves its relative paths.
    pub(crate) fn read_sink(
        &self,
        section: Tagged,
        base: &Path,
    ) -> Result<SinkConfig, (String, String)> {
        let (type_name, spec) = resolve(&self.sinks, "sink", section, base)?;
        Ok(Connector {
            type_name,
            spec: Arc::from(spec),
        })
    }

    /// Reads a lookup step's table section; `base` resolves its relative paths.
    pub(crate) fn read_lookup(
        &self,
        section: Tagged,
        base: &Path,
    ) -> Result<LookupConfig, (String, String)> {
        let (type_name, spec) = resolve(&self.lookups, "lookup table", section, base)?;
        Ok(Connector {
            type_name,
            spec: Arc::from(spec),
        })
    }

    /// Reads a state section; `base` resolves its relative paths.
    pub(crate) fn read_state(
        &self,
        section: Tagged,
        base: &Path,
    ) -> Result<StateConfig, (String, String)> {
        let (type_name, spec) = resolve(&self.states, "state backend", section, base)?;
        Ok(Connector {
            type_name,
            spec: Arc::from(spec),
        })
    }

    /// The state of a pipeline called `pipeline` whose config has none.
    pub(crate) fn default_state_for(&self, pipeline: &str, base: &Path) -> Option<StateConfig> {
        self.default_state.map(|(type_name, make)| Connector {
            type_name,
            spec: Arc::from(make(pipeline, base)),
        })
    }
}

/// Looks the section's type up in `readers` and reads it: the type's
/// registered name and its config, or the path inside the section and why.
fn resolve<S: ?Sized>(
    readers: &BTreeMap<&'static str, Reader<S>>,
    what: &str,
    section: Tagged,
    base: &Path,
) -> Result<(&'static str, Box<S>), (String, String)> {
    let Some((&type_name, reader)) = readers.get_key_value(section.kind.as_str()) else {
        let known: Vec<String> = readers.keys().map(|name| format!("`{name}`")).collect();
        let known = if known.is_empty() {
            "it knows none".to_owned()
        } else {
            format!("known: {}", known.join(", "))
        };
        return Err((
            "type".to_owned(),
            strict::cap_quoted(&format!(
                "unknown variant `{}`: not a {what} type of this build of plumber; {known}",
                section.kind
            )),
        ));
    };
    Ok((type_name, reader(section, base)?))
}
