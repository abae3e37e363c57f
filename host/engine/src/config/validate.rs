//! The checks `plumber validate` makes of a pipeline config, and `plumber
//! run` makes before it starts one.
//!
//! * [`offline`]: everything that needs no server and changes nothing:
//!   URLs parse (Redis, NATS, SQL, HTTP), SQL and JetStream names are
//!   valid, files the config reads exist, directories it writes into
//!   exist, a sled path is not a file, a read-only directory is a
//!   directory, an executable exists. A failure is a bad config (exit 2).
//! * [`guests`]: each pipe's component loads (compiled, imports checked
//!   against its grants, exports checked) and its `init` accepts its
//!   `config`, run on an in-memory state that is then dropped; each command
//!   module loads. A failure is a bad config or module (exit 2).
//! * [`connect`] (`plumber validate --connect`): reaches the servers: the
//!   Redis server answers, the SQL tables have the columns the config
//!   names, the JetStream streams exist, the NATS servers answer, the HTTP
//!   source's address can be bound and the HTTP sink's server accepts a
//!   connection. Nothing is written. A failure is not a bad config as such
//!   (exit 1): the servers do not match it, or cannot be reached.
//!
//! What a source, sink or state backend checks is its own: its config type
//! implements [`ConnectorSpec::validate`](super::ConnectorSpec::validate)
//! and [`ConnectorSpec::check_connected`](super::ConnectorSpec::check_connected)
//! beside the connector, with the helpers here ([`file_to_read`],
//! [`file_to_be_written`], [`directory_to_be`]); this module runs them and
//! checks the steps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{cap_quoted, ConfigError, FieldError, PipelineConfig, StepConfig};
use crate::runtime::{InstanceSettings, LoadError, Runtime};
use crate::state::{MemoryState, Namespace, PipeState, WriteMode, DEFAULT_TENANT};

/// How long `--connect` (and `plumber setup`) waits for one server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `url` without its password (in the user info or a `password` query
/// parameter), for descriptions and errors: shared by every connector
/// whose config holds a URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let location = match location.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => location.to_owned(),
    };
    let mut redacted = format!("{scheme}://{location}");
    if let Some(query) = query {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                !name.eq_ignore_ascii_case("password")
            })
            .collect();
        if !kept.is_empty() {
            redacted.push('?');
            redacted.push_str(&kept.join("&"));
        }
    }
    redacted
}

/// A check of `plumber validate` that failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// A field of the config is wrong in itself.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pipe's or a command's module cannot be loaded, or a pipe's `init`
    /// refuses its config.
    #[error("{file}: at `{path}` ({kind} `{name}`)")]
    Module {
        /// The config file.
        file: String,
        /// The JSON path: `pipeline[i].module`, `.config` or `.read_only_dir`.
        path: String,
        /// `pipe` or `command`.
        kind: &'static str,
        /// The step's name.
        name: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// A server could not be reached, or lacks what the config names.
    #[error("{file}: at `{path}`: {message}")]
    Server {
        /// The config file.
        file: String,
        /// The JSON path of the setting that names the server or the table.
        path: String,
        /// What failed.
        message: String,
    },
}

impl ValidateError {
    /// Whether the config (or a module it names) is at fault, rather than
    /// a server: the exit status is 2 then, else 1.
    pub fn is_bad_config(&self) -> bool {
        !matches!(self, ValidateError::Server { .. })
    }
}

/// Runs the checks that need no server and change nothing; on success,
/// says which checks need `--connect` (one phrase each).
///
/// # Errors
///
/// The first bad setting, with its JSON path.
pub fn offline(config: &PipelineConfig, file: &str) -> Result<Vec<String>, ConfigError> {
    let mut checks = Checks::default();
    let invalid = |at: &str, error: FieldError| invalid(file, &error.path_in(at), &error.message);
    config
        .state
        .validate(&mut checks)
        .map_err(|error| invalid("state", error))?;
    for (at, source) in config.sources() {
        source
            .validate(&mut checks)
            .map_err(|error| invalid(&at, error))?;
    }
    for (at, sink) in config.sinks() {
        sink.validate(&mut checks)
            .map_err(|error| invalid(&at, error))?;
    }
    for (index, step) in config.pipeline.iter().enumerate() {
        step_offline(step).map_err(|error| invalid(&format!("pipeline[{index}]"), error))?;
    }
    Ok(checks.needs_connect)
}

/// The state checks of [`offline`] alone (for `plumber state`).
///
/// # Errors
///
/// As [`offline`].
pub fn offline_state(config: &PipelineConfig, file: &str) -> Result<(), ConfigError> {
    config
        .state
        .validate(&mut Checks::default())
        .map_err(|error| invalid(file, &error.path_in("state"), &error.message))
}

fn invalid(file: &str, path: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        path: path.to_owned(),
        message: cap_quoted(message),
    }
}

/// What the offline checks of a connector ([`ConnectorSpec::validate`](super::ConnectorSpec::validate))
/// leave for `--connect`.
#[derive(Debug, Default)]
pub struct Checks {
    needs_connect: Vec<String>,
}

impl Checks {
    /// Notes a check that needs a server, in a phrase such as `the Redis
    /// server at redis://host/` (`plumber validate` lists them).
    pub fn needs_connect(&mut self, what: impl Into<String>) {
        self.needs_connect.push(what.into());
    }

    /// The checks noted so far.
    pub fn needing_connect(&self) -> &[String] {
        &self.needs_connect
    }
}

fn step_offline(step: &StepConfig) -> Result<(), FieldError> {
    match step {
        StepConfig::Wasm(pipe) => {
            if let Some(dir) = &pipe.read_only_dir {
                let at = "read_only_dir.host";
                match std::fs::metadata(&dir.host) {
                    Ok(metadata) if metadata.is_dir() => {}
                    Ok(_) => {
                        return Err(FieldError::new(
                            at,
                            format!("`{}` is not a directory", dir.host.display()),
                        ))
                    }
                    Err(error) if is_missing(&error) => {
                        return Err(FieldError::new(
                            at,
                            format!("there is no directory `{}`", dir.host.display()),
                        ))
                    }
                    // Not the config's fault: the start reports it.
                    Err(_) => {}
                }
            }
            Ok(())
        }
        StepConfig::Exec(exec) => {
            let at = "path";
            if exec.path.components().count() > 1 {
                if !exec.path.is_file() {
                    return Err(FieldError::new(
                        at,
                        format!("there is no program `{}`", exec.path.display()),
                    ));
                }
            } else if find_on_path(&exec.path).is_none() {
                return Err(FieldError::new(
                    at,
                    format!("there is no program `{}` on the PATH", exec.path.display()),
                ));
            }
            Ok(())
        }
        StepConfig::Command(_)
        | StepConfig::Window(_)
        | StepConfig::Join(_)
        | StepConfig::Repartition(_)
        | StepConfig::Route(_)
        | StepConfig::Lookup(_) => Ok(()),
    }
}

/// A directory that is opened or created (sled's) at `field`: it must not
/// be a file, nor lie under one.
///
/// # Errors
///
/// It is a file, or under one.
pub fn directory_to_be(path: &Path, field: &str) -> Result<(), FieldError> {
    for ancestor in path.ancestors() {
        match std::fs::metadata(ancestor) {
            Ok(metadata) if metadata.is_dir() => return Ok(()),
            Ok(_) if ancestor == path => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "`{}` is a file; this needs a directory (created when missing)",
                        path.display()
                    ),
                ))
            }
            Ok(_) => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "`{}` is under `{}`, which is a file, not a directory",
                        path.display(),
                        ancestor.display()
                    ),
                ))
            }
            Err(error) if is_missing(&error) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A file that is written (a sink's, a snapshot) at `field`: not a
/// directory, and in a directory that exists.
///
/// # Errors
///
/// It is a directory, or its directory is missing or not a directory.
pub fn file_to_be_written(path: &Path, field: &str) -> Result<(), FieldError> {
    if path.is_dir() {
        return Err(FieldError::new(
            field,
            format!("`{}` is a directory; this needs a file", path.display()),
        ));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(FieldError::new(
            field,
            format!("`{}` is not a directory", parent.display()),
        )),
        Err(error) if is_missing(&error) => Err(FieldError::new(
            field,
            format!(
                "the directory `{}` does not exist (it is not created)",
                parent.display()
            ),
        )),
        Err(_) => Ok(()),
    }
}

/// A file that is read at `field`: it exists and is not a directory.
///
/// # Errors
///
/// It is missing or a directory.
pub fn file_to_read(path: &Path, field: &str) -> Result<(), FieldError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Err(FieldError::new(
            field,
            format!("`{}` is a directory; this needs a file", path.display()),
        )),
        Ok(_) => Ok(()),
        Err(error) if is_missing(&error) => Err(FieldError::new(
            field,
            format!("there is no file `{}`", path.display()),
        )),
        Err(_) => Ok(()),
    }
}

/// Whether a path is missing: not there, or under something that is not a
/// directory.
fn is_missing(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Where `program` (a bare name) is on the PATH.
fn find_on_path(program: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Loads every pipe's component and runs its `init` with its config on an
/// in-memory state (dropped afterwards), and loads every command module.
///
/// # Errors
///
/// A module cannot be loaded or a pipe's `init` refuses its config; the
/// error names the step and the JSON path.
pub async fn guests(
    config: &PipelineConfig,
    file: &str,
    runtime: &Runtime,
) -> Result<(), ValidateError> {
    let tenant = config.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    for (index, step) in config.pipeline.iter().enumerate() {
        match step {
            StepConfig::Wasm(pipe) => {
                let fail = |field: &str, source: LoadError| ValidateError::Module {
                    file: file.to_owned(),
                    path: format!("pipeline[{index}].{field}"),
                    kind: "pipe",
                    name: pipe.name.clone(),
                    source,
                };
                let capabilities = pipe.capabilities();
                let component = runtime
                    .load(&pipe.module, &capabilities)
                    .map_err(|error| fail("module", error))?;
                let settings = Arc::new(InstanceSettings {
                    tenant: tenant.into(),
                    pipe: pipe.name.as_str().into(),
                    limits: Arc::new(pipe.limits.clone().unwrap_or_default()),
                    capabilities,
                    config_json: pipe.config.to_string(),
                    packed: true,
                });
                // A state of its own, dropped with the instance: `init`
                // changes nothing anywhere.
                let scratch = PipeState::new(
                    Arc::new(MemoryState::new()),
                    Namespace::for_tenant_pipe(tenant, &config.name, &pipe.name),
                    WriteMode::Checkpointed,
                );
                component
                    .instantiate(runtime, settings, scratch)
                    .await
                    .map_err(|error| match error {
                        LoadError::Init { .. } => fail("config", error),
                        LoadError::Capability { .. } => fail("read_only_dir", error),
                        other => fail("module", other),
                    })?;
            }
            StepConfig::Command(command) => {
                runtime
                    .load_module(&command.module)
                    .map_err(|source| ValidateError::Module {
                        file: file.to_owned(),
                        path: format!("pipeline[{index}].module"),
                        kind: "command",
                        name: command.name.clone(),
                        source,
                    })?;
            }
            StepConfig::Window(_)
            | StepConfig::Join(_)
            | StepConfig::Exec(_)
            | StepConfig::Repartition(_)
            | StepConfig::Route(_)
            | StepConfig::Lookup(_) => {}
        }
    }
    Ok(())
}

/// Reaches every server the config names, changing nothing.
///
/// # Errors
///
/// A server cannot be reached, or lacks the table, columns or stream the
/// config names; the error names the setting's JSON path.
pub async fn connect(config: &PipelineConfig, file: &str) -> Result<(), ValidateError> {
    let failed = |at: &str, error: FieldError| ValidateError::Server {
        file: file.to_owned(),
        path: error.path_in(at),
        message: cap_quoted(&error.message),
    };
    config
        .state
        .check_connected()
        .await
        .map_err(|error| failed("state", error))?;
    for (at, source) in config.sources() {
        source
            .check_connected()
            .await
            .map_err(|error| failed(&at, error))?;
    }
    for (at, sink) in config.sinks() {
        sink.check_connected()
            .await
            .map_err(|error| failed(&at, error))?;
    }
    for (index, step) in config.pipeline.iter().enumerate() {
        if let StepConfig::Lookup(lookup) = step {
            if let Some(table) = lookup.table.config() {
                table
                    .check_connected()
                    .await
                    .map_err(|error| failed(&format!("pipeline[{index}].table"), error))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://u:secret@127.0.0.1:5432/db?sslmode=disable&password=x"),
            "postgres://u@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
