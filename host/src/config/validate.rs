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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{
    cap_quoted, ConfigError, PipelineConfig, SinkConfig, SourceConfig, SqlModeConfig, StateConfig,
    StepConfig,
};
use crate::runtime::{InstanceSettings, LoadError, Runtime};
use crate::state::{MemoryState, Namespace, PipeState, WriteMode, DEFAULT_TENANT};
use crate::streams::sql::{self, SqlSink, SqlSinkMode, SqlSource};

/// How long `--connect` waits for one server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A check of `plumber validate` that failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// A field of the config is wrong in itself.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pipe's or a command's module cannot be loaded, or a pipe's `init`
    /// refuses its config.
    #[error("{file}: at `{path}` ({kind} `{name}`): {source}")]
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
    let mut checks = Offline {
        file,
        needs_connect: Vec::new(),
    };
    checks.state(config)?;
    checks.source(&config.from)?;
    checks.sink("to", &config.to)?;
    if let Some(sink) = &config.dead_letter {
        checks.sink("dead_letter", sink)?;
    }
    for (index, step) in config.pipeline.iter().enumerate() {
        checks.step(index, step)?;
    }
    Ok(checks.needs_connect)
}

/// The state checks of [`offline`] alone (for `plumber state`).
///
/// # Errors
///
/// As [`offline`].
pub fn offline_state(config: &PipelineConfig, file: &str) -> Result<(), ConfigError> {
    Offline {
        file,
        needs_connect: Vec::new(),
    }
    .state(config)
}

struct Offline<'a> {
    file: &'a str,
    needs_connect: Vec<String>,
}

impl Offline<'_> {
    fn invalid(&self, path: impl Into<String>, message: impl AsRef<str>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            path: path.into(),
            message: cap_quoted(message.as_ref()),
        }
    }

    fn state(&mut self, config: &PipelineConfig) -> Result<(), ConfigError> {
        match &config.state {
            Some(StateConfig::Sled { path }) => self.directory_to_be(path, "state.path"),
            Some(StateConfig::Memory {
                snapshot: Some(path),
            }) => self.file_to_be_written(path, "state.snapshot"),
            Some(StateConfig::Redis { url, .. }) => {
                // Parsing connects to nothing; its message never repeats the URL.
                redis::Client::open(url.as_str()).map_err(|error| {
                    self.invalid(
                        "state.url",
                        format!("`{}` is not a Redis URL: {error}", sql::redact_url(url)),
                    )
                })?;
                self.needs_connect
                    .push(format!("the Redis server at {}", sql::redact_url(url)));
                Ok(())
            }
            Some(StateConfig::Memory { snapshot: None }) | None => Ok(()),
        }
    }

    fn source(&mut self, source: &SourceConfig) -> Result<(), ConfigError> {
        match source {
            SourceConfig::Array { .. } => Ok(()),
            SourceConfig::File { path, .. } => self.file_to_read(path, "from.path"),
            SourceConfig::Http { listen, path, .. } => {
                if !path.starts_with('/') {
                    return Err(self.invalid(
                        "from.path",
                        format!(
                            "expected a path starting with `/`, such as `/events`, not `{path}`"
                        ),
                    ));
                }
                self.needs_connect.push(format!("binding {listen}"));
                Ok(())
            }
            SourceConfig::Sql {
                url,
                table,
                position_column,
                value_column,
                key_column,
                ..
            } => {
                sql::check_url(url).map_err(|message| self.invalid("from.url", message))?;
                sql::check_source_names(
                    table,
                    position_column,
                    value_column,
                    key_column.as_deref(),
                )
                .map_err(|(field, message)| self.invalid(format!("from.{field}"), message))?;
                self.needs_connect
                    .push(format!("the table `{table}` at {}", sql::redact_url(url)));
                Ok(())
            }
            SourceConfig::Nats { url, subject, .. } => {
                self.nats_url(url, "from.url")?;
                self.subject(subject, "from.subject", true)?;
                self.needs_connect
                    .push(format!("the NATS server at {}", sql::redact_url(url)));
                Ok(())
            }
            SourceConfig::Jetstream {
                url,
                stream,
                consumer,
                subjects,
                filter_subject,
                ..
            } => {
                self.nats_url(url, "from.url")?;
                self.jetstream_name(stream, "from.stream")?;
                self.jetstream_name(consumer, "from.consumer")?;
                if let Some(subject) = filter_subject {
                    self.subject(subject, "from.filter_subject", true)?;
                }
                for (index, subject) in subjects.iter().enumerate() {
                    self.subject(subject, &format!("from.subjects[{index}]"), true)?;
                }
                self.needs_connect.push(format!(
                    "the JetStream stream `{stream}` at {}",
                    sql::redact_url(url)
                ));
                Ok(())
            }
        }
    }

    fn sink(&mut self, at: &str, sink: &SinkConfig) -> Result<(), ConfigError> {
        match sink {
            SinkConfig::Stdout {} | SinkConfig::Discard {} => Ok(()),
            SinkConfig::File { path, .. } => self.file_to_be_written(path, &format!("{at}.path")),
            SinkConfig::Http { url, .. } => {
                let parsed = reqwest::Url::parse(url).map_err(|error| {
                    self.invalid(
                        format!("{at}.url"),
                        format!("`{url}` is not a URL: {error}"),
                    )
                })?;
                match parsed.scheme() {
                    "http" => {}
                    "https" => {
                        return Err(self.invalid(
                            format!("{at}.url"),
                            "this build of plumber speaks HTTP without TLS: use an http:// URL",
                        ))
                    }
                    other => {
                        return Err(self.invalid(
                            format!("{at}.url"),
                            format!("expected an http:// URL, not a `{other}` one"),
                        ))
                    }
                }
                self.needs_connect
                    .push(format!("the HTTP server of {}", sql::redact_url(url)));
                Ok(())
            }
            SinkConfig::Sql {
                url,
                table,
                key_columns,
                columns,
                ..
            } => {
                sql::check_url(url)
                    .map_err(|message| self.invalid(format!("{at}.url"), message))?;
                let mapping: Option<Vec<String>> = columns
                    .as_ref()
                    .map(|columns| columns.keys().cloned().collect());
                sql::check_sink_names(
                    table,
                    key_columns,
                    mapping.as_deref(),
                    sink.sql_epoch_column(),
                )
                .map_err(|(field, message)| self.invalid(format!("{at}.{field}"), message))?;
                self.needs_connect
                    .push(format!("the table `{table}` at {}", sql::redact_url(url)));
                Ok(())
            }
            SinkConfig::Nats { url, subject, .. } => {
                self.nats_url(url, &format!("{at}.url"))?;
                self.subject(subject, &format!("{at}.subject"), false)?;
                self.needs_connect
                    .push(format!("the NATS server at {}", sql::redact_url(url)));
                Ok(())
            }
            SinkConfig::Jetstream {
                url,
                subject,
                stream,
                ..
            } => {
                self.nats_url(url, &format!("{at}.url"))?;
                self.subject(subject, &format!("{at}.subject"), false)?;
                if let Some(stream) = stream {
                    self.jetstream_name(stream, &format!("{at}.stream"))?;
                }
                self.needs_connect.push(format!(
                    "a JetStream stream capturing `{subject}` at {}",
                    sql::redact_url(url)
                ));
                Ok(())
            }
        }
    }

    fn step(&mut self, index: usize, step: &StepConfig) -> Result<(), ConfigError> {
        match step {
            StepConfig::Wasm(pipe) => {
                if let Some(dir) = &pipe.read_only_dir {
                    let at = format!("pipeline[{index}].read_only_dir.host");
                    match std::fs::metadata(&dir.host) {
                        Ok(metadata) if metadata.is_dir() => {}
                        Ok(_) => {
                            return Err(self.invalid(
                                at,
                                format!("`{}` is not a directory", dir.host.display()),
                            ))
                        }
                        Err(error) if is_missing(&error) => {
                            return Err(self.invalid(
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
                let at = format!("pipeline[{index}].path");
                if exec.path.components().count() > 1 {
                    if !exec.path.is_file() {
                        return Err(self.invalid(
                            at,
                            format!("there is no program `{}`", exec.path.display()),
                        ));
                    }
                } else if find_on_path(&exec.path).is_none() {
                    return Err(self.invalid(
                        at,
                        format!("there is no program `{}` on the PATH", exec.path.display()),
                    ));
                }
                Ok(())
            }
            StepConfig::Command(_) | StepConfig::Window(_) => Ok(()),
        }
    }

    /// A directory that is opened or created (sled's): it must not be a
    /// file, nor lie under one.
    fn directory_to_be(&self, path: &Path, at: &str) -> Result<(), ConfigError> {
        for ancestor in path.ancestors() {
            match std::fs::metadata(ancestor) {
                Ok(metadata) if metadata.is_dir() => return Ok(()),
                Ok(_) if ancestor == path => {
                    return Err(self.invalid(
                        at,
                        format!(
                            "`{}` is a file; this needs a directory (created when missing)",
                            path.display()
                        ),
                    ))
                }
                Ok(_) => {
                    return Err(self.invalid(
                        at,
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

    /// A file that is written (a sink's, a snapshot): not a directory, and
    /// in a directory that exists.
    fn file_to_be_written(&self, path: &Path, at: &str) -> Result<(), ConfigError> {
        if path.is_dir() {
            return Err(self.invalid(
                at,
                format!("`{}` is a directory; this needs a file", path.display()),
            ));
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        match std::fs::metadata(parent) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(self.invalid(at, format!("`{}` is not a directory", parent.display()))),
            Err(error) if is_missing(&error) => Err(self.invalid(
                at,
                format!(
                    "the directory `{}` does not exist (it is not created)",
                    parent.display()
                ),
            )),
            Err(_) => Ok(()),
        }
    }

    /// A file that is read: it exists and is not a directory.
    fn file_to_read(&self, path: &Path, at: &str) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => Err(self.invalid(
                at,
                format!("`{}` is a directory; this needs a file", path.display()),
            )),
            Ok(_) => Ok(()),
            Err(error) if is_missing(&error) => {
                Err(self.invalid(at, format!("there is no file `{}`", path.display())))
            }
            Err(_) => Ok(()),
        }
    }

    fn nats_url(&self, url: &str, at: &str) -> Result<(), ConfigError> {
        url.parse::<async_nats::ServerAddr>()
            .map(drop)
            .map_err(|error| {
                self.invalid(
                    at,
                    format!("`{}` is not a NATS URL: {error}", sql::redact_url(url)),
                )
            })
    }

    /// A NATS subject: dot-separated tokens, none empty, no whitespace;
    /// wildcards (`*`, a last `>`) only where it is subscribed to.
    fn subject(&self, subject: &str, at: &str, wildcards: bool) -> Result<(), ConfigError> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let last = tokens.len() - 1;
        for (index, token) in tokens.iter().enumerate() {
            let problem = if token.is_empty() {
                Some("has an empty token (`..`, or a `.` at an end)")
            } else if token.chars().any(char::is_whitespace) {
                Some("contains whitespace")
            } else if (*token == "*" || (*token == ">" && index == last)) && !wildcards {
                Some("has a wildcard, but messages are published to it")
            } else if token.len() > 1 && token.contains(['*', '>'])
                || *token == ">" && index != last
            {
                Some("has `*` or `>` inside a token (a wildcard is a whole token, `>` the last)")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(self.invalid(at, format!("subject `{subject}` {problem}")));
            }
        }
        Ok(())
    }

    /// A JetStream stream or consumer name.
    fn jetstream_name(&self, name: &str, at: &str) -> Result<(), ConfigError> {
        if name.is_empty()
            || name.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
            })
        {
            return Err(self.invalid(
                at,
                format!(
                    "`{name}` is not a JetStream name: it needs at least one character, and no \
                     whitespace, `.`, `*`, `>`, `/` or `\\`"
                ),
            ));
        }
        Ok(())
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
            StepConfig::Window(_) | StepConfig::Exec(_) => {}
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
    let failed = |path: &str, message: String| ValidateError::Server {
        file: file.to_owned(),
        path: path.to_owned(),
        message: cap_quoted(&message),
    };
    if let Some(StateConfig::Redis { url, .. }) = &config.state {
        let options = crate::state::RedisOptions {
            reconnect_timeout: CONNECT_TIMEOUT,
            ..crate::state::RedisOptions::default()
        };
        crate::state::RedisState::connect(url, options)
            .await
            .map_err(|error| failed("state.url", error.to_string()))?;
    }
    connect_source(&config.from)
        .await
        .map_err(|(field, message)| failed(&format!("from.{field}"), message))?;
    let sinks = std::iter::once(("to", &config.to)).chain(
        config
            .dead_letter
            .as_ref()
            .map(|sink| ("dead_letter", sink)),
    );
    for (at, sink) in sinks {
        connect_sink(sink)
            .await
            .map_err(|(field, message)| failed(&format!("{at}.{field}"), message))?;
    }
    Ok(())
}

/// The field at fault and why.
type Refusal = (&'static str, String);

async fn connect_source(source: &SourceConfig) -> Result<(), Refusal> {
    match source {
        SourceConfig::Array { .. } | SourceConfig::File { .. } => Ok(()),
        SourceConfig::Http { listen, .. } => tokio::net::TcpListener::bind(listen)
            .await
            .map(drop)
            .map_err(|error| ("listen", format!("cannot listen on {listen}: {error}"))),
        SourceConfig::Sql {
            url,
            table,
            position_column,
            value_column,
            key_column,
            ..
        } => SqlSource::connect(
            url,
            table,
            position_column,
            value_column,
            key_column.clone(),
            Duration::from_secs(1),
        )
        .await
        .map(drop)
        .map_err(|error| ("table", error.to_string())),
        SourceConfig::Nats { url, .. } => nats_client(url).await.map(drop),
        SourceConfig::Jetstream { url, stream, .. } => {
            let jetstream = async_nats::jetstream::new(nats_client(url).await?);
            jetstream
                .get_stream(stream)
                .await
                .map(drop)
                .map_err(|error| {
                    (
                        "stream",
                        format!(
                            "no JetStream stream `{stream}` at {} ({error}): create it, or let \
                         `plumber setup CONFIG` create it with the source's `subjects`",
                            sql::redact_url(url)
                        ),
                    )
                })
        }
    }
}

async fn connect_sink(sink: &SinkConfig) -> Result<(), Refusal> {
    match sink {
        SinkConfig::Stdout {} | SinkConfig::Discard {} | SinkConfig::File { .. } => Ok(()),
        SinkConfig::Http { url, .. } => {
            let parsed = reqwest::Url::parse(url).map_err(|error| ("url", error.to_string()))?;
            let addresses = parsed
                .socket_addrs(|| None)
                .map_err(|error| ("url", format!("cannot resolve {url}: {error}")))?;
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&*addresses))
                    .await;
            match connected {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(("url", format!("cannot connect to {url}: {error}"))),
                Err(_) => Err((
                    "url",
                    format!("no connection to {url} within {CONNECT_TIMEOUT:?}"),
                )),
            }
        }
        SinkConfig::Sql {
            url,
            table,
            mode,
            key_columns,
            columns,
            ..
        } => {
            let mode = match mode {
                SqlModeConfig::Insert => SqlSinkMode::Insert,
                SqlModeConfig::Upsert => SqlSinkMode::Upsert {
                    key_columns: key_columns.clone(),
                },
            };
            let mut connected = SqlSink::connect(url, table, mode)
                .await
                .map_err(|error| ("url", error.to_string()))?;
            connected = connected
                .epoch_column(sink.sql_epoch_column().map(str::to_owned))
                .map_err(|error| ("epoch_column", error.to_string()))?;
            if let Some(columns) = columns {
                connected = connected
                    .mapping(columns.clone().into_iter().collect())
                    .map_err(|error| ("columns", error.to_string()))?;
            }
            connected
                .check_table()
                .await
                .map_err(|error| ("table", error.to_string()))
        }
        SinkConfig::Nats { url, .. } => nats_client(url).await.map(drop),
        SinkConfig::Jetstream { url, subject, .. } => {
            let jetstream = async_nats::jetstream::new(nats_client(url).await?);
            match jetstream.stream_by_subject(subject.as_str()).await {
                Ok(_) => Ok(()),
                Err(error) => Err((
                    "subject",
                    format!(
                        "no JetStream stream at {} captures `{subject}` ({error}): create one, or \
                         name it in the sink's `stream` and let `plumber setup CONFIG` create it",
                        sql::redact_url(url)
                    ),
                )),
            }
        }
    }
}

/// A connection to the NATS server at `url`, within [`CONNECT_TIMEOUT`].
async fn nats_client(url: &str) -> Result<async_nats::Client, Refusal> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(Some(1));
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err((
            "url",
            format!(
                "cannot reach the NATS server at {}: {error}",
                sql::redact_url(url)
            ),
        )),
        Err(_) => Err((
            "url",
            format!(
                "no answer from the NATS server at {} within {CONNECT_TIMEOUT:?}",
                sql::redact_url(url)
            ),
        )),
    }
}
