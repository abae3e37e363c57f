//! `{"type": "sql", …}`: the configs of the SQL source and sink.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer};

use super::{
    check_sink_names, check_source_names, check_url, redact_url, ColumnSource, SqlSink,
    SqlSinkMode, SqlSource, TableSetup, DEFAULT_EPOCH_COLUMN,
};
use crate::config::{
    Checks, ConnectorSpec, FieldError, OpenContext, OutputGuarantee, SinkSpec, SourceSpec,
};
use crate::streams::{Sink, Source, StreamError};
use plumber_engine::ErrorChain;

/// `{"type": "sql", …}` as a source: rows of a table (SQLite or
/// PostgreSQL), read incrementally by a monotonic integer column (the
/// position).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceConfig {
    /// `sqlite://file.db` or `postgres://user@host/db` (required).
    pub url: String,
    /// The table (required).
    pub table: String,
    /// The monotonic integer column (required).
    pub position_column: String,
    /// The column that becomes the event's value (required).
    pub value_column: String,
    /// The column that becomes the event's key (default: no key).
    #[serde(default)]
    pub key_column: Option<String>,
    /// How often to look for new rows, in ms (default 1000).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
}

impl SqlSourceConfig {
    async fn connect(&self, poll: Duration) -> Result<SqlSource, StreamError> {
        SqlSource::connect(
            &self.url,
            &self.table,
            &self.position_column,
            &self.value_column,
            self.key_column.clone(),
            poll,
        )
        .await
    }
}

#[async_trait]
impl ConnectorSpec for SqlSourceConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url).map_err(|message| FieldError::new("url", message))?;
        check_source_names(
            &self.table,
            &self.position_column,
            &self.value_column,
            self.key_column.as_deref(),
        )
        .map_err(|(field, message)| FieldError::new(field, message))?;
        checks.needs_connect(format!(
            "the table `{}` at {}",
            self.table,
            redact_url(&self.url)
        ));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        self.connect(Duration::from_secs(1))
            .await
            .map(drop)
            .map_err(|error| FieldError::new("table", ErrorChain(&error).to_string()))
    }
}

#[async_trait]
impl SourceSpec for SqlSourceConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
        let poll = Duration::from_millis(self.poll_interval_ms.unwrap_or(1000).max(1));
        let mut source = self.connect(poll).await?;
        if let Some(ms) = self.reconnect_timeout_ms {
            source = source.reconnect_timeout(Duration::from_millis(ms));
        }
        Ok(Box::new(source))
    }
}

/// `mode` of an SQL sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlModeConfig {
    /// Plain inserts.
    #[default]
    Insert,
    /// Insert or update by key.
    Upsert,
}

/// `{"type": "sql", …}` as a sink: rows into a table, one transaction per
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSinkConfig {
    /// `sqlite://file.db` or `postgres://user@host/db` (required).
    pub url: String,
    /// The table (required).
    pub table: String,
    /// `insert` (default; exactly-once through `epoch_column`) or
    /// `upsert` (idempotent by `key_columns`).
    #[serde(default)]
    pub mode: SqlModeConfig,
    /// The upsert's conflict target (required for an upsert, refused for an
    /// insert).
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Column → source (`value`, `key`, `timestamp`, `header:<name>`,
    /// `json:<field>`); default: the value is a JSON object of columns.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, ColumnSource>>,
    /// The insert's epoch column: left out, `plumber_epoch`; `null`:
    /// none, and inserts are at-least-once. An upsert takes none (see
    /// [`SqlSinkConfig::epoch_column`]).
    #[serde(default, deserialize_with = "explicit_null")]
    pub epoch_column: Option<Option<String>>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
}

/// `null` read as `Some(None)`, so that it differs from a field left out.
fn explicit_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl SqlSinkConfig {
    /// The epoch column the sink writes: an insert's configured one
    /// (`plumber_epoch` when left out), none when set to `null`, and none
    /// for an upsert.
    pub fn epoch_column(&self) -> Option<&str> {
        match (self.mode, &self.epoch_column) {
            (SqlModeConfig::Upsert, _) => None,
            (SqlModeConfig::Insert, None) => Some(DEFAULT_EPOCH_COLUMN),
            (SqlModeConfig::Insert, Some(column)) => column.as_deref(),
        }
    }

    fn mode(&self) -> SqlSinkMode {
        match self.mode {
            SqlModeConfig::Insert => SqlSinkMode::Insert,
            SqlModeConfig::Upsert => SqlSinkMode::Upsert {
                key_columns: self.key_columns.clone(),
            },
        }
    }

    /// The sink connected, with its epoch column and mapping, for
    /// `--connect` and `plumber setup`.
    async fn connected(&self) -> Result<SqlSink, FieldError> {
        let mut sink = SqlSink::connect(&self.url, &self.table, self.mode())
            .await
            .map_err(|error| FieldError::new("url", ErrorChain(&error).to_string()))?
            .epoch_column(self.epoch_column().map(str::to_owned))
            .map_err(|error| FieldError::new("epoch_column", ErrorChain(&error).to_string()))?;
        if let Some(columns) = &self.columns {
            sink = sink
                .mapping(columns.clone().into_iter().collect())
                .map_err(|error| FieldError::new("columns", ErrorChain(&error).to_string()))?;
        }
        Ok(sink)
    }
}

#[async_trait]
impl ConnectorSpec for SqlSinkConfig {
    fn check(&self) -> Result<(), FieldError> {
        match self.mode {
            SqlModeConfig::Upsert if self.key_columns.is_empty() => Err(FieldError::new(
                "key_columns",
                "an upsert needs `key_columns`: the columns of its conflict target \
                 (a unique index or the primary key)",
            )),
            SqlModeConfig::Upsert => match &self.epoch_column {
                Some(Some(column)) => Err(FieldError::new(
                    "epoch_column",
                    format!(
                        "an upsert is idempotent by its key and takes no epoch column: \
                         remove `epoch_column` (`{column}`) or set it to null"
                    ),
                )),
                _ => Ok(()),
            },
            SqlModeConfig::Insert if !self.key_columns.is_empty() => Err(FieldError::new(
                "key_columns",
                "`key_columns` applies to \"mode\": \"upsert\" only",
            )),
            SqlModeConfig::Insert => Ok(()),
        }
    }

    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url).map_err(|message| FieldError::new("url", message))?;
        let mapping: Option<Vec<String>> = self
            .columns
            .as_ref()
            .map(|columns| columns.keys().cloned().collect());
        check_sink_names(
            &self.table,
            &self.key_columns,
            mapping.as_deref(),
            self.epoch_column(),
        )
        .map_err(|(field, message)| FieldError::new(field, message))?;
        checks.needs_connect(format!(
            "the table `{}` at {}",
            self.table,
            redact_url(&self.url)
        ));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        self.connected()
            .await?
            .check_table()
            .await
            .map_err(|error| FieldError::new("table", ErrorChain(&error).to_string()))
    }

    async fn setup(&self) -> Result<Option<String>, FieldError> {
        let sink = self.connected().await?;
        let table = &self.table;
        let at = redact_url(&self.url);
        match sink.create_table().await {
            Ok(TableSetup::Present) => Ok(Some(format!("table `{table}` at {at} has its columns"))),
            Ok(TableSetup::Created(statement) | TableSetup::AddedEpochColumn(statement)) => {
                Ok(Some(format!("{statement} at {at}")))
            }
            Err(error) => Err(FieldError::new("table", ErrorChain(&error).to_string())),
        }
    }
}

#[async_trait]
impl SinkSpec for SqlSinkConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        let mut sink = SqlSink::connect(&self.url, &self.table, self.mode()).await?;
        // An upsert is idempotent by key and has no epoch column; `check`
        // refused one named for it. Set before the mapping, which must not
        // name it.
        if let Some(column) = &self.epoch_column {
            sink = sink.epoch_column(column.clone())?;
        }
        if let Some(columns) = &self.columns {
            sink = sink.mapping(columns.clone().into_iter().collect())?;
        }
        if let Some(ms) = self.reconnect_timeout_ms {
            sink = sink.reconnect_timeout(Duration::from_millis(ms));
        }
        Ok(Box::new(sink))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        match (self.mode, self.epoch_column()) {
            (SqlModeConfig::Upsert, _) => OutputGuarantee::ExactlyOnce(
                "exactly-once: state, and the SQL sink (upserts are idempotent by key)",
            ),
            (SqlModeConfig::Insert, Some(_)) => OutputGuarantee::ExactlyOnce(
                "exactly-once: state, and the SQL sink (rows of epochs after the last \
                 checkpoint are deleted on recovery)",
            ),
            (SqlModeConfig::Insert, None) => OutputGuarantee::AtLeastOnce(
                "exactly-once on state, but the SQL sink has no epoch column: replayed inserts \
                 may repeat (at-least-once)",
            ),
        }
    }
}
