//! SQL databases, SQLite and PostgreSQL: a source that reads a table
//! incrementally by a monotonic integer column, and a sink that inserts or
//! upserts rows, exactly-once for inserts through an epoch column.
//!
//! URLs: `sqlite://path/to/file.db` (or `sqlite:file.db`, `sqlite::memory:`,
//! with sqlx's query parameters such as `?mode=rwc`) and
//! `postgres://user:password@host:port/database` (or `postgresql://…`).
//! Descriptions and errors name the URL without its password.
//!
//! Table and column names from the configuration must be plain SQL
//! identifiers (`[A-Za-z_][A-Za-z0-9_]*`; a table may be `schema.table`).
//! They are always quoted in the statements, so on PostgreSQL they are
//! case-sensitive: `Events` names the table created as `"Events"`, not one
//! created as `CREATE TABLE Events` (which PostgreSQL folds to `events`).
//! Values from events are always bound as parameters, never put in SQL text.
//!
//! # Reconnecting
//!
//! Once connected, the source's query and the sink's flush, position and
//! recover statements are retried when the database is unreachable (an I/O
//! error, a connection pool that timed out or closed, a PostgreSQL error of
//! class 08 or 57P01–57P03, as when the server shuts down): one warning
//! naming the database when it starts failing, the waits of the reconnect
//! policy (docs/connectors.md, "Retries"), and one info line when it works again; after the reconnect
//! timeout (default 30 s, [`SqlSource::reconnect_timeout`],
//! [`SqlSink::reconnect_timeout`]) the operation fails with an error naming
//! the database and how long it waited. Other errors (a constraint
//! violation, bad SQL) fail at once. A failed flush is rolled back, so it
//! is retried whole; a retry first checks whether the failed attempt's
//! commit went through after all (rows of its epoch are in the table), so
//! that an inserting sink with an epoch column never writes a flush twice.

pub mod config;
pub mod lookup;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use super::reconnect::Reconnect;
use super::{Sink, Source, StreamError};
use crate::config::validate::redact_url;
use plumber_engine::checkpoint::Position;
use plumber_engine::{Batch, Event};

/// The header a [`SqlSource`] puts on each event: the row's position
/// column, in decimal.
pub const POSITION_HEADER: &str = "plumber-sql-position";

/// The default name of the epoch column an inserting [`SqlSink`] writes.
pub const DEFAULT_EPOCH_COLUMN: &str = "plumber_epoch";

/// The most bind parameters one SQLite statement gets (SQLite's historical
/// lower limit of `SQLITE_MAX_VARIABLE_NUMBER`).
const SQLITE_MAX_PARAMETERS: usize = 999;

/// The most rows one PostgreSQL statement gets (they travel as one JSON
/// parameter).
const POSTGRES_MAX_ROWS: usize = 1000;

/// How long connecting to SQLite (or getting its connection back) may take,
/// retrying meanwhile, before an operation fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub use super::reconnect::DEFAULT_RECONNECT_TIMEOUT;

/// A PostgreSQL pool's acquire timeout (how long one attempt may spend
/// getting a connection back) follows the reconnect timeout, but is never
/// shorter than this...
const MIN_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// ...nor longer than this, so that a failure is noticed (and logged) soon
/// (the pool retries a refused connection by itself meanwhile).
const MAX_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The shortest poll interval of a source, so that a zero interval does not
/// hammer the database.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// A connection pool of either supported database.
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    /// The placeholder of the `n`th (1-based) bind parameter.
    fn placeholder(&self, n: usize) -> String {
        match self {
            Pool::Sqlite(_) => "?".to_owned(),
            Pool::Postgres(_) => format!("${n}"),
        }
    }
}

/// Connects to `url` with a pool of one connection (a source reads and a
/// sink writes one statement at a time).
async fn connect_pool(url: &str, stream: &str) -> Result<Pool, StreamError> {
    let connect_error = |error: sqlx::Error| db_error(stream, "connect", error);
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url).map_err(connect_error)?;
        // One connection, never closed: an in-memory database lives as long
        // as its connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Pool::Sqlite(pool))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgConnectOptions::from_str(url).map_err(connect_error)?;
        // One attempt now, so that an unreachable server fails at once with
        // the driver's own reason (the pool retries, and then reports only
        // that it timed out).
        let probe = options.connect().await.map_err(connect_error)?;
        if let Err(error) = probe.close().await {
            tracing::debug!(stream, %error, "closing the first connection failed");
        }
        Ok(Pool::Postgres(postgres_pool(
            options,
            DEFAULT_RECONNECT_TIMEOUT,
        )))
    } else {
        Err(invalid_input(
            stream,
            "configure",
            "unsupported database URL: expected `sqlite:…` or `postgres://…`".to_owned(),
        ))
    }
}

/// A lazy PostgreSQL pool of one connection, whose acquire timeout follows
/// `reconnect_timeout`.
fn postgres_pool(options: PgConnectOptions, reconnect_timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(reconnect_timeout.clamp(MIN_ACQUIRE_TIMEOUT, MAX_ACQUIRE_TIMEOUT))
        .connect_lazy_with(options)
}

/// `pool` with attempts that fit `reconnect_timeout`: a PostgreSQL pool is
/// replaced by a new one (its connection is opened again on first use).
fn with_reconnect_timeout(pool: Pool, reconnect_timeout: Duration) -> Pool {
    match pool {
        Pool::Postgres(pool) => Pool::Postgres(postgres_pool(
            pool.connect_options().as_ref().clone(),
            reconnect_timeout,
        )),
        sqlite @ Pool::Sqlite(_) => sqlite,
    }
}

/// Whether `error` says that the database is unreachable (rather than that
/// the statement is wrong), so that the operation is worth retrying.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// An attempt's error: whether it says the database is unreachable, and
/// the stream error it becomes when it does not.
trait AttemptError {
    fn is_unreachable(&self) -> bool;
    fn describe(&self) -> String;
    fn into_stream_error(self, stream: &str, action: &'static str) -> StreamError;
}

impl AttemptError for sqlx::Error {
    fn is_unreachable(&self) -> bool {
        is_unreachable(self)
    }

    fn describe(&self) -> String {
        describe_db_error(self)
    }

    fn into_stream_error(self, stream: &str, action: &'static str) -> StreamError {
        db_error(stream, action, self)
    }
}

/// An error of a statement on the sink's table, which may lack its epoch
/// column.
struct TableError<'a> {
    error: sqlx::Error,
    /// The table, quoted.
    table: &'a str,
    epoch_column: Option<&'a str>,
}

impl AttemptError for TableError<'_> {
    fn is_unreachable(&self) -> bool {
        is_unreachable(&self.error)
    }

    fn describe(&self) -> String {
        describe_db_error(&self.error)
    }

    fn into_stream_error(self, stream: &str, action: &'static str) -> StreamError {
        match self.epoch_column {
            Some(column) if is_missing_column(&self.error, column) => {
                missing_epoch_column(stream, action, self.table, column)
            }
            _ => db_error(stream, action, self.error),
        }
    }
}

/// The retry state of one database operation (see [`Reconnect`]): errors
/// that say the database is unreachable are retried, others fail at once.
struct DbRetry<'a> {
    /// The source or sink, naming the database.
    stream: &'a str,
    action: &'static str,
    reconnect: Reconnect,
}

impl<'a> DbRetry<'a> {
    fn new(stream: &'a str, action: &'static str, timeout: Duration) -> Self {
        DbRetry {
            stream,
            action,
            reconnect: Reconnect::new(stream, "the database", action, timeout),
        }
    }

    /// Whether an attempt has failed already.
    fn retrying(&self) -> bool {
        self.reconnect.retrying()
    }

    /// Runs one attempt: `Some` with its result when it succeeded, `None`
    /// (after waiting) when it should be tried again.
    ///
    /// # Errors
    ///
    /// The attempt failed for another reason than an unreachable database,
    /// or the reconnect timeout has passed.
    async fn attempt<T, E: AttemptError>(
        &mut self,
        attempt: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, StreamError> {
        let retrying = self.reconnect.retrying();
        let left = self.reconnect.attempt(Duration::MAX);
        // The first attempt is bounded by the pool's acquire timeout (a long
        // statement on a working connection is not cut off); later ones
        // also by the time left.
        let outcome = if retrying {
            match tokio::time::timeout(left, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.reconnect
                        .failed("no answer before the reconnect timeout")
                        .await?;
                    return Ok(None);
                }
            }
        } else {
            attempt.await
        };
        match outcome {
            Ok(value) => {
                self.reconnect.succeeded();
                Ok(Some(value))
            }
            Err(error) if error.is_unreachable() => {
                self.reconnect.failed(&error.describe()).await?;
                Ok(None)
            }
            Err(error) => Err(error.into_stream_error(self.stream, self.action)),
        }
    }
}

fn db_error(stream: &str, action: &'static str, error: sqlx::Error) -> StreamError {
    let kind = match &error {
        sqlx::Error::Io(io) => io.kind(),
        _ => std::io::ErrorKind::Other,
    };
    StreamError::Io {
        stream: stream.to_owned(),
        action,
        source: std::io::Error::new(kind, describe_db_error(&error)),
    }
}

/// What went wrong, for a message: a PostgreSQL error is its message, its
/// detail and its hint, without the line of the server's source file that
/// raised it (which sqlx prints as "at line N"); quoted values are cut
/// short.
fn describe_db_error(error: &sqlx::Error) -> String {
    let sqlx::Error::Database(database) = error else {
        return crate::config::cap_quoted(&error.to_string());
    };
    let mut text = database.message().to_owned();
    if let Some(postgres) = database.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        if let Some(detail) = postgres.detail() {
            text.push_str(" (");
            text.push_str(detail.trim_end_matches('.'));
            text.push(')');
        }
        if let Some(hint) = postgres.hint() {
            text.push_str("; hint: ");
            text.push_str(hint);
        }
    }
    crate::config::cap_quoted(&text)
}

/// Whether `error` says that `column` does not exist (PostgreSQL's
/// undefined_column, SQLite's "no such column").
fn is_missing_column(error: &sqlx::Error, column: &str) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    let message = database.message();
    let undefined =
        database.code().as_deref() == Some("42703") || message.contains("no such column");
    // The column's name as a word of the message: `t.c`, `"c"`, `c`.
    undefined
        && message
            .split(|c: char| c.is_whitespace() || matches!(c, '.' | '"' | ':' | ','))
            .any(|word| word == column)
}

/// The error of a table without its sink's epoch column: how to add it, or
/// how to do without.
fn missing_epoch_column(
    stream: &str,
    action: &'static str,
    table: &str,
    column: &str,
) -> StreamError {
    invalid_input(
        stream,
        action,
        format!(
            "the table {table} has no epoch column `{column}`, which the sink writes in every \
             row to delete rows of unfinished checkpoints after a crash: add it with \
             `ALTER TABLE {table} ADD COLUMN \"{column}\" BIGINT` (`plumber setup CONFIG` does), \
             or set \"epoch_column\": null in the sink's config (its inserts are then \
             at-least-once: rows written after the last checkpoint are written again after a crash)"
        ),
    )
}

/// Checks a database URL without connecting: `sqlite:…` or
/// `postgres://…`, readable by sqlx.
///
/// # Errors
///
/// What is wrong with it; the URL is named without its password.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map(drop)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PgConnectOptions::from_str(url).map(drop)
    } else {
        return Err(format!(
            "`{}` is not a database URL: expected `sqlite:…` or `postgres://…`",
            redact_url(url)
        ));
    };
    parsed.map_err(|error| {
        format!(
            "`{}` is not a database URL sqlx can read: {error}",
            redact_url(url)
        )
    })
}

/// Checks the names a [`SqlSource`] is configured with, without
/// connecting: the config field at fault (`table`, `position_column`,
/// `value_column`, `key_column`) and why.
///
/// # Errors
///
/// A name is not a plain SQL identifier.
pub fn check_source_names(
    table: &str,
    position_column: &str,
    value_column: &str,
    key_column: Option<&str>,
) -> Result<(), (&'static str, String)> {
    quote_table(table).map_err(|message| ("table", message))?;
    quote_identifier(position_column, "position column")
        .map_err(|message| ("position_column", message))?;
    quote_identifier(value_column, "value column").map_err(|message| ("value_column", message))?;
    if let Some(key) = key_column {
        quote_identifier(key, "key column").map_err(|message| ("key_column", message))?;
    }
    Ok(())
}

/// Checks the names a [`SqlSink`] is configured with, without connecting:
/// the config field at fault (`table`, `key_columns`, `columns`,
/// `epoch_column`) and why.
///
/// # Errors
///
/// A name is not a plain SQL identifier, the mapping is empty or names the
/// epoch column, or lacks a key column.
pub fn check_sink_names(
    table: &str,
    key_columns: &[String],
    mapping: Option<&[String]>,
    epoch_column: Option<&str>,
) -> Result<(), (&'static str, String)> {
    quote_table(table).map_err(|message| ("table", message))?;
    for key in key_columns {
        quote_identifier(key, "key column").map_err(|message| ("key_columns", message))?;
    }
    if let Some(column) = epoch_column {
        quote_identifier(column, "epoch column").map_err(|message| ("epoch_column", message))?;
    }
    if let Some(columns) = mapping {
        check_mapping(columns, key_columns, epoch_column)
            .map_err(|message| ("columns", message))?;
    }
    Ok(())
}

/// Checks the columns of a mapping against the key and epoch columns.
fn check_mapping(
    columns: &[String],
    key_columns: &[String],
    epoch_column: Option<&str>,
) -> Result<(), String> {
    if columns.is_empty() {
        return Err("the column mapping is empty".to_owned());
    }
    let mut seen = HashSet::new();
    for column in columns {
        quote_identifier(column, "column")?;
        if !seen.insert(column.as_str()) {
            return Err(format!("the mapping names column `{column}` twice"));
        }
        if epoch_column == Some(column.as_str()) {
            return Err(format!(
                "column `{column}` is the epoch column, which the sink writes itself"
            ));
        }
    }
    if let Some(key) = key_columns.iter().find(|k| !seen.contains(k.as_str())) {
        return Err(format!("the mapping has no source for key column `{key}`"));
    }
    Ok(())
}

fn invalid_input(stream: &str, action: &'static str, message: String) -> StreamError {
    StreamError::Io {
        stream: stream.to_owned(),
        action,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    }
}

fn invalid_data(stream: &str, action: &'static str, message: String) -> StreamError {
    StreamError::Io {
        stream: stream.to_owned(),
        action,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
    }
}

/// Whether `name` is a plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name` quoted as an identifier, if it is a plain one.
fn quote_identifier(name: &str, what: &str) -> Result<String, String> {
    if is_plain_identifier(name) {
        Ok(format!("\"{name}\""))
    } else {
        Err(format!(
            "{what} `{name}` is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*)"
        ))
    }
}

/// A table name, `table` or `schema.table`, quoted.
fn quote_table(name: &str) -> Result<String, String> {
    match name.split_once('.') {
        Some((schema, table)) => Ok(format!(
            "{}.{}",
            quote_identifier(schema, "schema")?,
            quote_identifier(table, "table")?
        )),
        None => quote_identifier(name, "table"),
    }
}

/// The names and types (as `format_type` prints them) of a PostgreSQL
/// table's columns; fails when the table does not exist.
async fn postgres_columns(
    pool: &PgPool,
    table: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT CAST(a.attname AS TEXT), format_type(a.atttypid, NULL) \
         FROM pg_attribute a \
         WHERE a.attrelid = CAST($1 AS regclass) AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(table.to_owned())
    .fetch_all(pool)
    .await
}

// ---------------------------------------------------------------------------
// Source

/// Reads a table incrementally, in the order of a monotonic integer column
/// (an auto-increment id, a sequence): each poll runs
/// `SELECT … WHERE position_column > last ORDER BY position_column LIMIT max`.
///
/// Each row becomes an [`Event`] whose value is the value column (text as
/// UTF-8; a BLOB/`bytea` column as its bytes; other types as their text;
/// NULL as an empty value), whose key is the key column when one is
/// configured (NULL: no key), with no timestamp and a header
/// [`POSITION_HEADER`] holding the row's position. The source's position is
/// [`Position::Offset`] of the last row's position column. When there are
/// no new rows it polls every `poll_interval`; it never ends.
///
/// The position column must be unique, not negative, and grow in commit
/// order: a row committed later with a smaller value than one already read
/// is never read (on PostgreSQL, concurrent transactions drawing from one
/// sequence can commit out of order; have a single writer, or read rows
/// only once their writers are done).
pub struct SqlSource {
    pool: Pool,
    description: String,
    /// The select after a position: binds the position, then the limit.
    select_after: Arc<str>,
    /// The select from the start: binds the limit.
    select_all: Arc<str>,
    has_key: bool,
    last: Option<i64>,
    poll_interval: Duration,
    reconnect_timeout: Duration,
}

/// One row as read: position, value, key.
type SourceRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

impl SqlSource {
    /// Connects to the database at `url` and prepares to read `table` in the
    /// order of `position_column`, taking each event's value from
    /// `value_column` and its key from `key_column`. It checks that the
    /// table and the columns exist.
    ///
    /// # Errors
    ///
    /// A name is not a plain SQL identifier, the URL is not a SQLite or
    /// PostgreSQL one, the database cannot be reached, or the table or a
    /// column does not exist. Errors name the URL without its password.
    pub async fn connect(
        url: &str,
        table: &str,
        position_column: &str,
        value_column: &str,
        key_column: Option<String>,
        poll_interval: Duration,
    ) -> Result<Self, StreamError> {
        let description = format!("sql source `{table}` at {}", redact_url(url));
        let configure = |message| invalid_input(&description, "configure", message);
        let quoted_table = quote_table(table).map_err(configure)?;
        // Columns are qualified with the table: SQLite reads an unqualified
        // double-quoted name that matches no column as a string literal.
        let qualified = |column: &str, what: &str| {
            quote_identifier(column, what).map(|quoted| format!("{quoted_table}.{quoted}"))
        };
        let position = qualified(position_column, "position column").map_err(configure)?;
        let value = qualified(value_column, "value column").map_err(configure)?;
        let key = key_column
            .as_deref()
            .map(|key| qualified(key, "key column"))
            .transpose()
            .map_err(configure)?;
        let pool = connect_pool(url, &description).await?;
        let (value_expr, key_expr) = match &pool {
            Pool::Sqlite(_) => (
                format!("CAST({value} AS BLOB)"),
                key.as_ref().map(|key| format!("CAST({key} AS BLOB)")),
            ),
            Pool::Postgres(pg) => {
                let columns = postgres_columns(pg, &quoted_table)
                    .await
                    .map_err(|e| db_error(&description, "read the table's columns", e))?;
                let type_of = |name: &str| {
                    columns
                        .iter()
                        .find(|(column, _)| column == name)
                        .map(|(_, ty)| ty.as_str())
                };
                let mut wanted = vec![position_column, value_column];
                wanted.extend(key_column.as_deref());
                for name in wanted {
                    if type_of(name).is_none() {
                        return Err(invalid_input(
                            &description,
                            "configure",
                            format!("the table has no column `{name}`"),
                        ));
                    }
                }
                // Everything is read as bytes: `bytea` as is, other types as
                // their text in UTF-8.
                let as_bytes = |quoted: &str, name: &str| {
                    if type_of(name) == Some("bytea") {
                        quoted.to_owned()
                    } else {
                        format!("convert_to(CAST({quoted} AS TEXT), 'UTF8')")
                    }
                };
                (
                    as_bytes(&value, value_column),
                    key.as_ref()
                        .zip(key_column.as_deref())
                        .map(|(quoted, name)| as_bytes(quoted, name)),
                )
            }
        };
        let cast = match &pool {
            Pool::Sqlite(_) => "INTEGER",
            Pool::Postgres(_) => "BIGINT",
        };
        let columns = match &key_expr {
            Some(key_expr) => format!("CAST({position} AS {cast}), {value_expr}, {key_expr}"),
            None => format!("CAST({position} AS {cast}), {value_expr}"),
        };
        let select_after = format!(
            "SELECT {columns} FROM {quoted_table} WHERE {position} > {} ORDER BY {position} LIMIT {}",
            pool.placeholder(1),
            pool.placeholder(2)
        );
        let select_all = format!(
            "SELECT {columns} FROM {quoted_table} ORDER BY {position} LIMIT {}",
            pool.placeholder(1)
        );
        let mut source = SqlSource {
            pool,
            description,
            select_after: select_after.into(),
            select_all: select_all.into(),
            has_key: key.is_some(),
            last: None,
            poll_interval: poll_interval.max(MIN_POLL_INTERVAL),
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
        };
        // Runs the query once (with a position, reading no row), so that a
        // missing table or column, or a position column that does not
        // compare with an integer, is reported now.
        source.last = Some(0);
        let probe = source.fetch(0).await;
        source.last = None;
        probe.map_err(|e| db_error(&source.description, "query the table", e))?;
        Ok(source)
    }

    /// How long a poll keeps retrying while the database is unreachable
    /// before it fails (default [`DEFAULT_RECONNECT_TIMEOUT`]).
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self.pool = with_reconnect_timeout(self.pool, timeout);
        self
    }

    /// Reads at most `limit` rows after the current position.
    async fn fetch(&self, limit: i64) -> Result<Vec<SourceRow>, sqlx::Error> {
        let sql = match self.last {
            Some(_) => self.select_after.clone(),
            None => self.select_all.clone(),
        };
        let has_key = self.has_key;
        macro_rules! run {
            ($pool:expr) => {{
                let mut query = sqlx::query(AssertSqlSafe(sql));
                if let Some(last) = self.last {
                    query = query.bind(last);
                }
                let rows = query.bind(limit).fetch_all($pool).await?;
                rows.iter()
                    .map(|row| {
                        let key = if has_key {
                            row.try_get::<Option<Vec<u8>>, _>(2)?
                        } else {
                            None
                        };
                        Ok((row.try_get::<i64, _>(0)?, row.try_get(1)?, key))
                    })
                    .collect()
            }};
        }
        match &self.pool {
            Pool::Sqlite(pool) => run!(pool),
            Pool::Postgres(pool) => run!(pool),
        }
    }
}

#[async_trait]
impl Source for SqlSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        let offset = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?;
        self.last = match position {
            Position::Start => None,
            _ => Some(i64::try_from(offset).map_err(|_| {
                StreamError::seek(
                    self.describe(),
                    position,
                    "the position is past the largest 64-bit signed integer",
                )
            })?),
        };
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        loop {
            let mut reconnect =
                DbRetry::new(&self.description, "query the table", self.reconnect_timeout);
            let rows = loop {
                if let Some(rows) = reconnect.attempt(self.fetch(limit)).await? {
                    break rows;
                }
            };
            if rows.is_empty() {
                tokio::time::sleep(self.poll_interval).await;
                continue;
            }
            let mut events = Vec::with_capacity(rows.len());
            let mut offset = 0;
            for (position, value, key) in rows {
                offset = u64::try_from(position).map_err(|_| {
                    invalid_data(
                        &self.description,
                        "read a row",
                        format!("the position column holds {position}, which is negative"),
                    )
                })?;
                events.push(Event {
                    key,
                    value: value.unwrap_or_default(),
                    timestamp: None,
                    headers: vec![(POSITION_HEADER.to_owned(), position.to_string())],
                });
                self.last = Some(position);
            }
            return Ok(Some((events, Position::Offset(offset))));
        }
    }
}

// ---------------------------------------------------------------------------
// Sink

/// How a [`SqlSink`] writes its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlSinkMode {
    /// `INSERT` every row. Exactly-once through the epoch column (see
    /// [`SqlSink`]).
    Insert,
    /// `INSERT … ON CONFLICT (key_columns) DO UPDATE` the other columns: a
    /// row replaces the one with the same key. Replays write the same rows
    /// again, so the result is idempotent by key; no epoch column is used.
    /// The key columns need a unique index or primary key.
    Upsert {
        /// The columns of the conflict target, each written by every row.
        key_columns: Vec<String>,
    },
}

/// Where a column's value comes from, in a configured mapping of a
/// [`SqlSink`]. Written as text: `value`, `key`, `timestamp`,
/// `header:<name>`, `json:<field>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ColumnSource {
    /// The event's value as text (invalid UTF-8 replaced).
    Value,
    /// The event's key as text; NULL without a key.
    Key,
    /// The event's timestamp, ms since the Unix epoch; NULL without one.
    Timestamp,
    /// The first header of this name; NULL without one.
    Header(String),
    /// A top-level field of the event's value, which must then be a JSON
    /// object; NULL when the field is missing. Strings, numbers and
    /// booleans are written as such; objects and arrays as JSON.
    Json(String),
}

impl FromStr for ColumnSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "value" => Ok(ColumnSource::Value),
            "key" => Ok(ColumnSource::Key),
            "timestamp" => Ok(ColumnSource::Timestamp),
            _ => {
                if let Some(name) = text.strip_prefix("header:").filter(|n| !n.is_empty()) {
                    Ok(ColumnSource::Header(name.to_owned()))
                } else if let Some(field) = text.strip_prefix("json:").filter(|f| !f.is_empty()) {
                    Ok(ColumnSource::Json(field.to_owned()))
                } else {
                    Err(format!(
                        "`{text}` is not a column source: expected `value`, `key`, \
                         `timestamp`, `header:<name>` or `json:<field>`"
                    ))
                }
            }
        }
    }
}

impl TryFrom<String> for ColumnSource {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for ColumnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnSource::Value => f.write_str("value"),
            ColumnSource::Key => f.write_str("key"),
            ColumnSource::Timestamp => f.write_str("timestamp"),
            ColumnSource::Header(name) => write!(f, "header:{name}"),
            ColumnSource::Json(field) => write!(f, "json:{field}"),
        }
    }
}

/// A value for one column of one row.
#[derive(Debug, Clone, PartialEq)]
enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// A JSON object or array.
    Json(serde_json::Value),
}

impl SqlValue {
    fn from_json(value: serde_json::Value) -> SqlValue {
        match value {
            serde_json::Value::Null => SqlValue::Null,
            serde_json::Value::Bool(b) => SqlValue::Bool(b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => SqlValue::Int(i),
                // Integers past i64 keep every digit as text.
                _ if n.is_u64() => SqlValue::Text(n.to_string()),
                (None, Some(f)) => SqlValue::Float(f),
                (None, None) => SqlValue::Text(n.to_string()),
            },
            serde_json::Value::String(s) => SqlValue::Text(s),
            other => SqlValue::Json(other),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            SqlValue::Null => serde_json::Value::Null,
            SqlValue::Bool(b) => serde_json::Value::Bool(*b),
            SqlValue::Int(i) => serde_json::Value::from(*i),
            SqlValue::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            SqlValue::Text(s) => serde_json::Value::String(s.clone()),
            SqlValue::Json(v) => v.clone(),
        }
    }
}

/// A row waiting for the next flush.
struct PendingRow {
    /// Column names (validated identifiers, unquoted), shared by the rows
    /// of a configured mapping.
    columns: Arc<[String]>,
    values: Vec<SqlValue>,
}

/// Writes events as rows of a table; `flush` writes everything buffered in
/// one transaction.
///
/// By default each event's value must be a JSON object whose fields are the
/// columns (field names must be plain identifiers). With
/// [`SqlSink::mapping`] the columns come from the event instead
/// ([`ColumnSource`]).
///
/// **Exactly-once for inserts**: the table has an extra integer column,
/// `plumber_epoch` unless [`SqlSink::epoch_column`] says otherwise. The
/// sink keeps an epoch counter, at start the table's largest epoch (or 0);
/// each flush that writes rows increments it and writes it in every row, in
/// the same transaction. [`Sink::position`] is the counter, stored in every
/// checkpoint; on an exactly-once restart [`Sink::recover`] deletes the rows
/// of epochs after the checkpoint's (written after it, and about to be
/// replayed), so every result is in the table exactly once. One pipeline
/// should write to a table (two would share and delete each other's
/// epochs). Upserts need no epoch: they are idempotent by key.
///
/// On PostgreSQL each value is converted to its column's type by the
/// column's input function (so text `"42"` fills an integer column and a
/// JSON object a `jsonb` one); on SQLite, by the column's type affinity.
pub struct SqlSink {
    pool: Pool,
    description: String,
    /// The table, quoted.
    table: String,
    /// The key columns of an upsert (unquoted), empty for inserts.
    key_columns: Vec<String>,
    mapping: Option<(Arc<[String]>, Vec<ColumnSource>)>,
    /// The epoch column (unquoted), for inserts.
    epoch_column: Option<String>,
    /// The epoch of the last flush, once known.
    epoch: Option<u64>,
    rows: Vec<PendingRow>,
    reconnect_timeout: Duration,
}

impl SqlSink {
    /// Connects to the database at `url` to write rows to `table`. The
    /// table is not checked until the first statement runs.
    ///
    /// # Errors
    ///
    /// The table or a key column is not a plain SQL identifier, an upsert
    /// has no key column, the URL is not a SQLite or PostgreSQL one, or the
    /// database cannot be reached. Errors name the URL without its password.
    pub async fn connect(url: &str, table: &str, mode: SqlSinkMode) -> Result<Self, StreamError> {
        let description = format!("sql sink `{table}` at {}", redact_url(url));
        let configure = |message| invalid_input(&description, "configure", message);
        let quoted_table = quote_table(table).map_err(configure)?;
        let (key_columns, epoch_column) = match mode {
            SqlSinkMode::Insert => (Vec::new(), Some(DEFAULT_EPOCH_COLUMN.to_owned())),
            SqlSinkMode::Upsert { key_columns } => {
                if key_columns.is_empty() {
                    return Err(configure(
                        "an upsert needs at least one key column".to_owned(),
                    ));
                }
                for column in &key_columns {
                    quote_identifier(column, "key column").map_err(configure)?;
                }
                (key_columns, None)
            }
        };
        let pool = connect_pool(url, &description).await?;
        Ok(SqlSink {
            pool,
            description,
            table: quoted_table,
            key_columns,
            mapping: None,
            epoch_column,
            epoch: None,
            rows: Vec::new(),
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
        })
    }

    /// How long a flush (or reading the position, or recovering) keeps
    /// retrying while the database is unreachable before it fails (default
    /// [`DEFAULT_RECONNECT_TIMEOUT`]).
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self.pool = with_reconnect_timeout(self.pool, timeout);
        self
    }

    /// Takes each row's columns from the event as `mapping` says, instead
    /// of from the fields of a JSON value.
    ///
    /// # Errors
    ///
    /// The mapping is empty, names a column twice, names one that is not a
    /// plain SQL identifier or is the epoch column, or (for an upsert) lacks
    /// a key column.
    pub fn mapping(mut self, mapping: Vec<(String, ColumnSource)>) -> Result<Self, StreamError> {
        let (columns, sources): (Vec<String>, Vec<ColumnSource>) = mapping.into_iter().unzip();
        check_mapping(&columns, &self.key_columns, self.epoch_column.as_deref())
            .map_err(|message| invalid_input(&self.description, "configure", message))?;
        self.mapping = Some((columns.into(), sources));
        Ok(self)
    }

    /// Names the epoch column of an inserting sink (default
    /// [`DEFAULT_EPOCH_COLUMN`]); `None` writes no epoch, which makes the
    /// sink at-least-once ([`Sink::position`] is then `None`). An upsert
    /// has none, so `None` changes nothing for it.
    ///
    /// # Errors
    ///
    /// The name is not a plain SQL identifier, is a column of the mapping,
    /// or the sink upserts (upserts take no epoch).
    pub fn epoch_column(mut self, column: Option<String>) -> Result<Self, StreamError> {
        let configure = |message| invalid_input(&self.description, "configure", message);
        if column.is_some() && !self.key_columns.is_empty() {
            return Err(configure(
                "an upsert is idempotent by its key and takes no epoch column".to_owned(),
            ));
        }
        if let Some(column) = &column {
            quote_identifier(column, "epoch column").map_err(configure)?;
            if let Some((columns, _)) = &self.mapping {
                if columns.contains(column) {
                    return Err(configure(format!(
                        "column `{column}` is in the mapping and cannot be the epoch column"
                    )));
                }
            }
        }
        self.epoch_column = column;
        self.epoch = None;
        Ok(self)
    }

    /// One event as a row.
    fn row(&self, event: &Event) -> Result<PendingRow, String> {
        let Some((columns, sources)) = &self.mapping else {
            return self.json_row(event);
        };
        let mut parsed: Option<serde_json::Map<String, serde_json::Value>> = None;
        let mut values = Vec::with_capacity(sources.len());
        for source in sources {
            let value = match source {
                ColumnSource::Value => SqlValue::Text(event.value_lossy().into_owned()),
                ColumnSource::Key => event.key.as_ref().map_or(SqlValue::Null, |key| {
                    SqlValue::Text(String::from_utf8_lossy(key).into_owned())
                }),
                ColumnSource::Timestamp => match event.timestamp {
                    None => SqlValue::Null,
                    Some(ms) => i64::try_from(ms)
                        .map_or_else(|_| SqlValue::Text(ms.to_string()), SqlValue::Int),
                },
                ColumnSource::Header(name) => event
                    .headers
                    .iter()
                    .find(|(header, _)| header == name)
                    .map_or(SqlValue::Null, |(_, value)| SqlValue::Text(value.clone())),
                ColumnSource::Json(field) => {
                    if parsed.is_none() {
                        parsed = Some(json_object(event)?);
                    }
                    parsed
                        .as_mut()
                        .and_then(|object| object.get(field))
                        .cloned()
                        .map_or(SqlValue::Null, SqlValue::from_json)
                }
            };
            values.push(value);
        }
        Ok(PendingRow {
            columns: columns.clone(),
            values,
        })
    }

    /// One event whose value is a JSON object as a row of its fields.
    fn json_row(&self, event: &Event) -> Result<PendingRow, String> {
        let object = json_object(event)?;
        let mut columns = Vec::with_capacity(object.len());
        let mut values = Vec::with_capacity(object.len());
        for (field, value) in object {
            if !is_plain_identifier(&field) {
                return Err(format!(
                    "field `{field}` is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*)"
                ));
            }
            if self.epoch_column.as_deref() == Some(field.as_str()) {
                return Err(format!(
                    "field `{field}` is the epoch column, which the sink writes itself"
                ));
            }
            columns.push(field);
            values.push(SqlValue::from_json(value));
        }
        if columns.is_empty() {
            return Err("the value is an empty JSON object".to_owned());
        }
        if let Some(key) = self.key_columns.iter().find(|k| !columns.contains(k)) {
            return Err(format!("the value has no field for key column `{key}`"));
        }
        Ok(PendingRow {
            columns: columns.into(),
            values,
        })
    }

    /// The epoch of the last flush: loaded from the table the first time.
    async fn current_epoch(&mut self) -> Result<Option<u64>, StreamError> {
        let Some(column) = &self.epoch_column else {
            return Ok(None);
        };
        if let Some(epoch) = self.epoch {
            return Ok(Some(epoch));
        }
        let mut reconnect = DbRetry::new(
            &self.description,
            "read the largest epoch",
            self.reconnect_timeout,
        );
        let max = loop {
            let attempt = async {
                self.max_epoch(column).await.map_err(|error| TableError {
                    error,
                    table: &self.table,
                    epoch_column: Some(column),
                })
            };
            if let Some(max) = reconnect.attempt(attempt).await? {
                break max;
            }
        };
        let epoch = u64::try_from(max).map_err(|_| {
            invalid_data(
                &self.description,
                "read the largest epoch",
                format!("the epoch column `{column}` holds {max}, which is negative"),
            )
        })?;
        self.epoch = Some(epoch);
        Ok(Some(epoch))
    }

    /// Checks, reading no row, that the table exists with the columns the
    /// sink writes: the mapping's (when it has one) and the epoch column.
    ///
    /// # Errors
    ///
    /// The database cannot be reached, or the table or a column is missing
    /// (a missing epoch column: how to add it or do without).
    pub async fn check_table(&self) -> Result<(), StreamError> {
        let mut columns: Vec<&str> = self
            .mapping
            .as_ref()
            .map(|(columns, _)| columns.iter().map(String::as_str).collect())
            .unwrap_or_default();
        columns.extend(self.epoch_column.as_deref());
        let list = if columns.is_empty() {
            "*".to_owned()
        } else {
            // Qualified: SQLite reads an unknown double-quoted name as a string.
            let qualified: Vec<String> = columns
                .iter()
                .map(|column| format!("{}.\"{column}\"", self.table))
                .collect();
            qualified.join(", ")
        };
        let sql = format!("SELECT {list} FROM {} LIMIT 0", self.table);
        let result = match &self.pool {
            Pool::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .map(drop),
            Pool::Postgres(pool) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .map(drop),
        };
        result.map_err(|error| {
            TableError {
                error,
                table: &self.table,
                epoch_column: self.epoch_column.as_deref(),
            }
            .into_stream_error(&self.description, "check the table")
        })
    }

    /// Creates the table when it does not exist, with the mapping's columns
    /// (text, and a 64-bit integer for `timestamp`), the epoch column, and
    /// for an upsert a primary key of its key columns; adds the epoch
    /// column to a table that exists without it. Nothing else of a table
    /// that exists is changed.
    ///
    /// # Errors
    ///
    /// The database cannot be reached or refuses a statement; or the table
    /// is missing and the sink has no mapping (its columns come from each
    /// event's JSON object, so the sink cannot tell which to create); or
    /// the table lacks a column of the mapping.
    pub async fn create_table(&self) -> Result<TableSetup, StreamError> {
        let action = "set up the table";
        let probe = format!("SELECT * FROM {} LIMIT 0", self.table);
        match self.execute(&probe).await {
            Ok(()) => {
                let mut setup = TableSetup::Present;
                if let Some(column) = &self.epoch_column {
                    let epoch = format!(
                        "SELECT {}.\"{column}\" FROM {} LIMIT 0",
                        self.table, self.table
                    );
                    match self.execute(&epoch).await {
                        Ok(()) => {}
                        Err(error) if is_missing_column(&error, column) => {
                            let alter = format!(
                                "ALTER TABLE {} ADD COLUMN \"{column}\" BIGINT",
                                self.table
                            );
                            self.execute(&alter)
                                .await
                                .map_err(|e| db_error(&self.description, action, e))?;
                            setup = TableSetup::AddedEpochColumn(alter);
                        }
                        Err(error) => return Err(db_error(&self.description, action, error)),
                    }
                }
                self.check_table().await?;
                Ok(setup)
            }
            Err(error) if is_missing_table(&error) => {
                let Some((columns, sources)) = &self.mapping else {
                    return Err(invalid_input(
                        &self.description,
                        action,
                        format!(
                            "there is no table {} and the sink takes its columns from the fields \
                             of each event's JSON value, so it cannot tell which to create: create \
                             it{}, or give the sink a `columns` mapping",
                            self.table,
                            self.epoch_column
                                .as_deref()
                                .map(|column| format!(" with a BIGINT column `{column}`"))
                                .unwrap_or_default()
                        ),
                    ));
                };
                let mut definitions: Vec<String> = columns
                    .iter()
                    .zip(sources)
                    .map(|(column, source)| {
                        let kind = match source {
                            ColumnSource::Timestamp => "BIGINT",
                            _ => "TEXT",
                        };
                        let not_null = if self.key_columns.contains(column) {
                            " NOT NULL"
                        } else {
                            ""
                        };
                        format!("\"{column}\" {kind}{not_null}")
                    })
                    .collect();
                if let Some(column) = &self.epoch_column {
                    definitions.push(format!("\"{column}\" BIGINT NOT NULL"));
                }
                if !self.key_columns.is_empty() {
                    let keys: Vec<String> = self
                        .key_columns
                        .iter()
                        .map(|k| format!("\"{k}\""))
                        .collect();
                    definitions.push(format!("PRIMARY KEY ({})", keys.join(", ")));
                }
                let create = format!("CREATE TABLE {} ({})", self.table, definitions.join(", "));
                self.execute(&create)
                    .await
                    .map_err(|e| db_error(&self.description, action, e))?;
                Ok(TableSetup::Created(create))
            }
            Err(error) => Err(db_error(&self.description, action, error)),
        }
    }

    /// Runs one statement on the sink's database.
    async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .map(drop),
            Pool::Postgres(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .map(drop),
        }
    }

    /// The largest epoch in the table, 0 when it is empty.
    async fn max_epoch(&self, column: &str) -> Result<i64, sqlx::Error> {
        let sql = format!(
            "SELECT CAST(COALESCE(MAX({table}.\"{column}\"), 0) AS BIGINT) FROM {table}",
            table = self.table
        );
        match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            }
            Pool::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            }
        }
    }

    /// One attempt of a flush: writes the buffered rows, unless `retrying`
    /// finds that a failed attempt's commit of `epoch` went through after
    /// all (the connection was lost before its answer came).
    async fn flush_attempt(&self, epoch: Option<u64>, retrying: bool) -> Result<(), WriteError> {
        if let (true, Some(column), Some(epoch)) = (retrying, &self.epoch_column, epoch) {
            let max = self.max_epoch(column).await?;
            if u64::try_from(max).is_ok_and(|max| max >= epoch) {
                tracing::info!(sink = %self.description, epoch,
                    "the interrupted flush was committed; not writing it again");
                return Ok(());
            }
        }
        self.write_rows(epoch).await
    }

    /// Splits the buffered rows into statements: consecutive rows with the
    /// same columns, up to the backend's size limit, and (for upserts) no
    /// key twice in one statement.
    fn statements(&self) -> Vec<Range<usize>> {
        let mut ranges = Vec::new();
        let mut start = 0;
        while start < self.rows.len() {
            let columns = &self.rows[start].columns;
            let width = columns.len() + usize::from(self.epoch_column.is_some());
            let max_rows = match self.pool {
                Pool::Sqlite(_) => (SQLITE_MAX_PARAMETERS / width.max(1)).max(1),
                Pool::Postgres(_) => POSTGRES_MAX_ROWS,
            };
            let key_indexes: Vec<usize> = self
                .key_columns
                .iter()
                .filter_map(|key| columns.iter().position(|c| c == key))
                .collect();
            let mut keys = HashSet::new();
            let mut end = start;
            while end < self.rows.len() && end - start < max_rows {
                let row = &self.rows[end];
                if !(Arc::ptr_eq(&row.columns, columns) || row.columns == *columns) {
                    break;
                }
                if !key_indexes.is_empty() {
                    let key: Vec<&SqlValue> = key_indexes.iter().map(|&i| &row.values[i]).collect();
                    if !keys.insert(format!("{key:?}")) {
                        break;
                    }
                }
                end += 1;
            }
            ranges.push(start..end);
            start = end;
        }
        ranges
    }

    /// The statement writing `rows` rows with `columns` (each row's values,
    /// then the epoch): SQLite binds every value, PostgreSQL the rows as one
    /// JSON array.
    fn insert_sql(&self, columns: &[String], rows: usize) -> String {
        let mut all: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        if let Some(epoch) = &self.epoch_column {
            all.push(format!("\"{epoch}\""));
        }
        let list = all.join(", ");
        let mut sql = format!("INSERT INTO {} ({list}) ", self.table);
        match self.pool {
            Pool::Sqlite(_) => {
                let tuple = format!("({})", vec!["?"; all.len()].join(", "));
                sql.push_str("VALUES ");
                sql.push_str(&vec![tuple.as_str(); rows].join(", "));
            }
            Pool::Postgres(_) => {
                sql.push_str(&format!(
                    "SELECT {list} FROM json_populate_recordset(CAST(NULL AS {}), CAST($1 AS json))",
                    self.table
                ));
            }
        }
        if !self.key_columns.is_empty() {
            let keys: Vec<String> = self
                .key_columns
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect();
            sql.push_str(&format!(" ON CONFLICT ({})", keys.join(", ")));
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !self.key_columns.contains(c))
                .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
                .collect();
            if updates.is_empty() {
                sql.push_str(" DO NOTHING");
            } else {
                sql.push_str(&format!(" DO UPDATE SET {}", updates.join(", ")));
            }
        }
        sql
    }

    /// Writes every buffered row, with `epoch` when there is an epoch
    /// column, in one transaction.
    async fn write_rows(&self, epoch: Option<u64>) -> Result<(), WriteError> {
        let epoch = epoch.map(|e| i64::try_from(e).unwrap_or(i64::MAX));
        let statements = self.statements();
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut transaction = pool.begin().await?;
                for range in statements {
                    let rows = &self.rows[range];
                    let sql = self.insert_sql(&rows[0].columns, rows.len());
                    let mut query = sqlx::query(AssertSqlSafe(sql));
                    for row in rows {
                        for value in &row.values {
                            query = match value {
                                SqlValue::Null => query.bind(None::<String>),
                                SqlValue::Bool(b) => query.bind(*b),
                                SqlValue::Int(i) => query.bind(*i),
                                SqlValue::Float(f) => query.bind(*f),
                                SqlValue::Text(s) => query.bind(s.clone()),
                                SqlValue::Json(v) => query.bind(v.to_string()),
                            };
                        }
                        if let Some(epoch) = epoch {
                            query = query.bind(epoch);
                        }
                    }
                    query.execute(&mut *transaction).await?;
                }
                Ok(transaction.commit().await?)
            }
            Pool::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                for range in statements {
                    let rows = &self.rows[range.clone()];
                    let columns = &rows[0].columns;
                    let array: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|row| {
                            let mut object: serde_json::Map<String, serde_json::Value> = columns
                                .iter()
                                .cloned()
                                .zip(row.values.iter().map(SqlValue::to_json))
                                .collect();
                            if let (Some(column), Some(epoch)) = (&self.epoch_column, epoch) {
                                object.insert(column.clone(), epoch.into());
                            }
                            serde_json::Value::Object(object)
                        })
                        .collect();
                    let sql = self.insert_sql(columns, rows.len());
                    let written = sqlx::query(AssertSqlSafe(sql))
                        .bind(serde_json::Value::Array(array).to_string())
                        .execute(&mut *transaction)
                        .await;
                    if let Err(error) = written {
                        if !is_data_error(&error) {
                            return Err(error.into());
                        }
                        // The probes need the connection the aborted
                        // transaction holds.
                        transaction.rollback().await?;
                        let refused = self.find_refused_value(pool, range).await;
                        return Err(WriteError { error, refused });
                    }
                }
                Ok(transaction.commit().await?)
            }
        }
    }

    /// After a PostgreSQL data error in the statement writing `range`: the
    /// first column, and in it the first row, whose value the column does
    /// not take, found by converting each column's values alone (the
    /// server's error names neither). `None` when no probe fails the same
    /// way.
    async fn find_refused_value(&self, pool: &PgPool, range: Range<usize>) -> Option<RefusedValue> {
        let rows = &self.rows[range.clone()];
        let columns = &rows.first()?.columns;
        // Refused: `Some(true)`; taken: `Some(false)`; another error: `None`.
        let refuses = |index: usize, rows: &[PendingRow]| {
            let column = &columns[index];
            let array: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| serde_json::json!({ column.as_str(): row.values[index].to_json() }))
                .collect();
            let sql = format!(
                "SELECT COUNT(r.\"{column}\") FROM \
                 json_populate_recordset(CAST(NULL AS {}), CAST($1 AS json)) AS r",
                self.table
            );
            async move {
                match sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                    .bind(serde_json::Value::Array(array).to_string())
                    .fetch_one(pool)
                    .await
                {
                    Ok(_) => Some(false),
                    Err(error) if is_data_error(&error) => Some(true),
                    Err(_) => None,
                }
            }
        };
        for (index, column) in columns.iter().enumerate() {
            if !refuses(index, rows).await? {
                continue;
            }
            // The refused value is in rows[low..high].
            let (mut low, mut high) = (0, rows.len());
            while high - low > 1 {
                let middle = low + (high - low) / 2;
                if refuses(index, &rows[low..middle]).await? {
                    high = middle;
                } else {
                    low = middle;
                }
            }
            let column_type = postgres_columns(pool, &self.table)
                .await
                .ok()
                .and_then(|types| types.into_iter().find(|(name, _)| name == column))
                .map(|(_, column_type)| column_type);
            return Some(RefusedValue {
                column: column.clone(),
                column_type,
                row: range.start + low,
                value: rows[low].values[index].to_json().to_string(),
            });
        }
        None
    }
}

/// What [`SqlSink::create_table`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSetup {
    /// The table was there with its columns: nothing done.
    Present,
    /// The table was created by this statement.
    Created(String),
    /// The table lacked the epoch column, added by this statement.
    AddedEpochColumn(String),
}

/// Whether `error` says that the table does not exist (PostgreSQL's
/// undefined_table, SQLite's "no such table").
fn is_missing_table(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database)
        if database.code().as_deref() == Some("42P01")
            || database.message().contains("no such table"))
}

/// Whether `error` is PostgreSQL's "data exception" (class 22): a value
/// its column's type does not take.
fn is_data_error(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database)
        if database.code().is_some_and(|code| code.starts_with("22")))
}

/// A value a column refused.
struct RefusedValue {
    column: String,
    /// The column's type, as PostgreSQL names it.
    column_type: Option<String>,
    /// The row's index among the rows of the flush.
    row: usize,
    /// The value, as JSON.
    value: String,
}

/// A failed write of a flush's rows.
struct WriteError {
    error: sqlx::Error,
    /// For a data error: the column and the value it refused.
    refused: Option<RefusedValue>,
}

impl From<sqlx::Error> for WriteError {
    fn from(error: sqlx::Error) -> Self {
        WriteError {
            error,
            refused: None,
        }
    }
}

impl AttemptError for WriteError {
    fn is_unreachable(&self) -> bool {
        is_unreachable(&self.error)
    }

    fn describe(&self) -> String {
        describe_db_error(&self.error)
    }

    fn into_stream_error(self, stream: &str, action: &'static str) -> StreamError {
        let Some(refused) = &self.refused else {
            return db_error(stream, action, self.error);
        };
        let column_type = refused
            .column_type
            .as_deref()
            .map(|name| format!(" ({name})"))
            .unwrap_or_default();
        invalid_data(
            stream,
            action,
            format!(
                "column `{}`{column_type} refuses the value {} of row {} of this flush: {}",
                refused.column,
                crate::config::excerpt(&refused.value),
                refused.row + 1,
                describe_db_error(&self.error)
            ),
        )
    }
}

/// The event's value as a JSON object.
fn json_object(event: &Event) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice(&event.value) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err("the value is not a JSON object".to_owned()),
        Err(error) => Err(format!("the value is not JSON: {error}")),
    }
}

#[async_trait]
impl Sink for SqlSink {
    fn describe(&self) -> String {
        self.description.clone()
    }

    /// Turns each event into a row and buffers it until the next flush.
    ///
    /// # Errors
    ///
    /// An event does not fit the mapping (by default: its value is not a
    /// JSON object of plain-identifier fields; an upsert's key is missing);
    /// nothing of the batch is buffered then.
    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        let mut rows = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.iter().enumerate() {
            let row = self.row(event).map_err(|message| {
                invalid_data(
                    &self.description,
                    "map an event to a row",
                    format!("event {index} of the batch: {message}"),
                )
            })?;
            rows.push(row);
        }
        self.rows.append(&mut rows);
        Ok(())
    }

    /// Writes every buffered row in one transaction (with the next epoch,
    /// when there is an epoch column).
    ///
    /// # Errors
    ///
    /// A statement or the commit failed (a row violates a constraint, a
    /// column does not exist, the database is unreachable): nothing of this
    /// flush is in the table, the epoch is unchanged, and the rows stay
    /// buffered.
    async fn flush(&mut self) -> Result<(), StreamError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let epoch = self.current_epoch().await?.map(|epoch| epoch + 1);
        // A failed attempt was rolled back (or committed whole, which the
        // next attempt finds out), so the whole flush can be tried again.
        let mut reconnect = DbRetry::new(&self.description, "write rows", self.reconnect_timeout);
        while reconnect
            .attempt(self.flush_attempt(epoch, reconnect.retrying()))
            .await?
            .is_none()
        {}
        tracing::debug!(sink = %self.description, rows = self.rows.len(), ?epoch, "rows written");
        self.rows.clear();
        if epoch.is_some() {
            self.epoch = epoch;
        }
        Ok(())
    }

    /// The epoch of the last flush (at start, the table's largest epoch or
    /// 0); `None` without an epoch column.
    ///
    /// # Errors
    ///
    /// The largest epoch cannot be read (no such table or column).
    async fn position(&mut self) -> Result<Option<u64>, StreamError> {
        self.current_epoch().await
    }

    /// Deletes the rows of epochs after `position` and continues from it.
    ///
    /// # Errors
    ///
    /// The delete failed.
    async fn recover(&mut self, position: Option<u64>) -> Result<(), StreamError> {
        let (Some(column), Some(committed)) = (&self.epoch_column, position) else {
            return Ok(());
        };
        let committed_i64 = i64::try_from(committed).map_err(|_| {
            invalid_input(
                &self.description,
                "recover",
                format!("epoch {committed} is past the largest 64-bit signed integer"),
            )
        })?;
        let sql = format!(
            "DELETE FROM {table} WHERE {table}.\"{column}\" > {}",
            self.pool.placeholder(1),
            table = self.table
        );
        let delete = || async {
            match &self.pool {
                Pool::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(committed_i64)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()),
                Pool::Postgres(pool) => sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(committed_i64)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()),
            }
        };
        let mut reconnect = DbRetry::new(&self.description, "recover", self.reconnect_timeout);
        let deleted = loop {
            if let Some(deleted) = reconnect.attempt(delete()).await? {
                break deleted;
            }
        };
        if deleted > 0 {
            tracing::info!(sink = %self.description, committed, deleted,
                "dropping rows written after the last checkpoint");
        }
        self.epoch = Some(committed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert_eq!(quote_table("events").unwrap(), "\"events\"");
        assert_eq!(
            quote_table("public.events").unwrap(),
            "\"public\".\"events\""
        );
        assert_eq!(quote_identifier("_a1", "column").unwrap(), "\"_a1\"");
        for bad in ["", "1a", "a-b", "a b", "a\"b", "x; DROP TABLE y", "é"] {
            assert!(quote_identifier(bad, "column").is_err(), "{bad}");
        }
        assert!(quote_table("a.b.c").is_err());
    }

    #[test]
    fn column_sources_parse_and_print() {
        for text in ["value", "key", "timestamp", "header:h", "json:f"] {
            assert_eq!(text.parse::<ColumnSource>().unwrap().to_string(), text);
        }
        assert!("header:".parse::<ColumnSource>().is_err());
        assert!("other".parse::<ColumnSource>().is_err());
    }
}
