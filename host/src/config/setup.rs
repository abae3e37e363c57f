//! `plumber setup CONFIG`: creates on its servers what a pipeline config
//! needs and is not there yet, so that an example (or a new pipeline) runs
//! with nothing but the `plumber` binary:
//!
//! * an SQL sink's table (`to`, `dead_letter`): created with the columns of
//!   its `columns` mapping, the epoch column, and for an upsert a primary
//!   key of its `key_columns`; a table that exists without the epoch
//!   column gets it (see [`SqlSink::create_table`]);
//! * a JetStream source's stream: created with the source's `subjects`
//!   (default: its `filter_subject`);
//! * a JetStream sink's stream: when no stream captures the sink's
//!   `subject`, the stream named by the sink's `stream` is created with
//!   that subject.
//!
//! What exists is left as it is; running it twice changes nothing the
//! second time. State backends, files, core NATS and HTTP need nothing.

use async_nats::jetstream;

use super::{validate::ValidateError, PipelineConfig, SinkConfig, SourceConfig, SqlModeConfig};
use crate::streams::sql::{self, SqlSink, SqlSinkMode, TableSetup};

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
    let failed = |path: String, message: String| ValidateError::Server {
        file: file.to_owned(),
        path,
        message: super::cap_quoted(&message),
    };
    let mut done = Vec::new();
    if let SourceConfig::Jetstream {
        url,
        stream,
        subjects,
        filter_subject,
        ..
    } = &config.from
    {
        let subjects: Vec<String> = if subjects.is_empty() {
            filter_subject.iter().cloned().collect()
        } else {
            subjects.clone()
        };
        let line = source_stream(url, stream, subjects)
            .await
            .map_err(|(field, message)| failed(format!("from.{field}"), message))?;
        done.push(format!("from: {line}"));
    }
    let sinks = std::iter::once(("to", &config.to)).chain(
        config
            .dead_letter
            .as_ref()
            .map(|sink| ("dead_letter", sink)),
    );
    for (at, sink) in sinks {
        let line = match sink {
            SinkConfig::Sql { .. } => sql_table(sink).await,
            SinkConfig::Jetstream {
                url,
                subject,
                stream,
                ..
            } => sink_stream(url, subject, stream.as_deref()).await,
            _ => continue,
        }
        .map_err(|(field, message)| failed(format!("{at}.{field}"), message))?;
        done.push(format!("{at}: {line}"));
    }
    Ok(done)
}

/// The field at fault and why.
type Refusal = (&'static str, String);

async fn jetstream_context(url: &str) -> Result<jetstream::Context, Refusal> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|error| {
            (
                "url",
                format!(
                    "cannot reach the NATS server at {}: {error}",
                    sql::redact_url(url)
                ),
            )
        })?;
    Ok(jetstream::new(client))
}

async fn source_stream(url: &str, stream: &str, subjects: Vec<String>) -> Result<String, Refusal> {
    let context = jetstream_context(url).await?;
    if context.get_stream(stream).await.is_ok() {
        return Ok(format!("stream `{stream}` exists"));
    }
    if subjects.is_empty() {
        return Err((
            "subjects",
            format!(
                "there is no stream `{stream}`, and the source does not say which subjects it \
                 captures: add \"subjects\": [\"…\"] (or a `filter_subject`)"
            ),
        ));
    }
    create_stream(&context, stream, subjects.clone()).await?;
    Ok(format!(
        "created stream `{stream}` capturing {}",
        quoted(&subjects)
    ))
}

async fn sink_stream(url: &str, subject: &str, stream: Option<&str>) -> Result<String, Refusal> {
    let context = jetstream_context(url).await?;
    if let Ok(name) = context.stream_by_subject(subject).await {
        return Ok(format!("stream `{name}` captures `{subject}`"));
    }
    let Some(stream) = stream else {
        return Err((
            "stream",
            format!(
                "no stream captures `{subject}`: name one in the sink's \"stream\" for setup to \
                 create, or create it yourself"
            ),
        ));
    };
    create_stream(&context, stream, vec![subject.to_owned()]).await?;
    Ok(format!("created stream `{stream}` capturing `{subject}`"))
}

async fn create_stream(
    context: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
) -> Result<(), Refusal> {
    context
        .create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|error| ("stream", format!("cannot create stream `{name}`: {error}")))
}

async fn sql_table(sink: &SinkConfig) -> Result<String, Refusal> {
    let SinkConfig::Sql {
        url,
        table,
        mode,
        key_columns,
        columns,
        ..
    } = sink
    else {
        return Ok(String::new());
    };
    let mode = match mode {
        SqlModeConfig::Insert => SqlSinkMode::Insert,
        SqlModeConfig::Upsert => SqlSinkMode::Upsert {
            key_columns: key_columns.clone(),
        },
    };
    let mut connected = SqlSink::connect(url, table, mode)
        .await
        .map_err(|error| ("url", error.to_string()))?
        .epoch_column(sink.sql_epoch_column().map(str::to_owned))
        .map_err(|error| ("epoch_column", error.to_string()))?;
    if let Some(columns) = columns {
        connected = connected
            .mapping(columns.clone().into_iter().collect())
            .map_err(|error| ("columns", error.to_string()))?;
    }
    let at = sql::redact_url(url);
    match connected.create_table().await {
        Ok(TableSetup::Present) => Ok(format!("table `{table}` at {at} has its columns")),
        Ok(TableSetup::Created(statement)) => Ok(format!("{statement} at {at}")),
        Ok(TableSetup::AddedEpochColumn(statement)) => Ok(format!("{statement} at {at}")),
        Err(error) => Err(("table", error.to_string())),
    }
}

/// `` `a`, `b` ``.
fn quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    quoted.join(", ")
}
