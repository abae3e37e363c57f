//! `plumber setup CONFIG`: creates on its servers what a pipeline config
//! needs and is not there yet, so that an example (or a new pipeline) runs
//! with nothing but the `plumber` binary. Each connector says what it
//! creates ([`ConnectorSpec::setup`](super::ConnectorSpec::setup)); those of this build:
//!
//! * an SQL sink's table (`to`, `dead_letter`): created with the columns of
//!   its `columns` mapping, the epoch column, and for an upsert a primary
//!   key of its `key_columns`; a table that exists without the epoch
//!   column gets it (see [`crate::streams::sql::SqlSink::create_table`]);
//! * a JetStream source's stream: created with the source's `subjects`
//!   (default: its `filter_subject`);
//! * a JetStream sink's stream: when no stream captures the sink's
//!   `subject`, the stream named by the sink's `stream` is created with
//!   that subject.
//!
//! What exists is left as it is; running it twice changes nothing the
//! second time. State backends, files, core NATS and HTTP need nothing.

use super::{validate::ValidateError, FieldError, PipelineConfig};

/// Creates what `config` needs on its servers; returns one line per thing
/// it looked at, saying what it did.
///
/// # Errors
///
/// A server cannot be reached or refuses; or what to create is not said
/// (a JetStream source without `subjects` or `filter_subject`, a sink's
/// subject that no stream captures and no `stream` names, an SQL table
/// whose columns come from the events): the error names the setting's
/// JSON path.
pub async fn prepare(config: &PipelineConfig, file: &str) -> Result<Vec<String>, ValidateError> {
    let failed = |at: &str, error: FieldError| ValidateError::Server {
        file: file.to_owned(),
        path: error.path_in(at),
        message: super::cap_quoted(&error.message),
    };
    let mut done = Vec::new();
    let state = config
        .state
        .setup()
        .await
        .map_err(|error| failed("state", error))?;
    done.extend(state.map(|line| format!("state: {line}")));
    for (at, source) in config.sources() {
        let line = source.setup().await.map_err(|error| failed(&at, error))?;
        done.extend(line.map(|line| format!("{at}: {line}")));
    }
    for (at, sink) in config.sinks() {
        let line = sink.setup().await.map_err(|error| failed(&at, error))?;
        done.extend(line.map(|line| format!("{at}: {line}")));
    }
    Ok(done)
}
