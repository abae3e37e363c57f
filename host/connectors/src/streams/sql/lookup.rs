//! `{"type": "sql", "url": …, "query": …}` as the table of a `lookup` step:
//! the query takes the event's key as its one parameter (`$1` on
//! PostgreSQL, `?` on SQLite, bound as text) and returns the row as its
//! first column (text: a JSON object with `row_to_json(t)::text`, or a
//! single value), or no row. A key that finds several rows takes the first.

use async_trait::async_trait;
use serde::Deserialize;
use sqlx::{AssertSqlSafe, Row};

use super::{check_url, connect_pool, db_error, invalid_input, redact_url, Pool};
use crate::config::{Checks, ConnectorSpec, FieldError, OpenContext};
use crate::streams::StreamError;
use plumber_engine::config::LookupSpec;
use plumber_engine::join::RemoteTable;
use plumber_engine::ErrorChain;

/// `{"type": "sql", …}` as a lookup table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlLookupConfig {
    /// `sqlite://file.db` or `postgres://user@host/db` (required).
    pub url: String,
    /// The query: one parameter, the key; the row in its first column
    /// (required).
    pub query: String,
}

#[async_trait]
impl ConnectorSpec for SqlLookupConfig {
    fn check(&self) -> Result<(), FieldError> {
        if self.query.trim().is_empty() {
            return Err(FieldError::new(
                "query",
                "expected a query taking the key as its parameter, e.g. \
                 `SELECT row_to_json(p)::text FROM prices p WHERE sku = $1`",
            ));
        }
        Ok(())
    }

    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url).map_err(|message| FieldError::new("url", message))?;
        checks.needs_connect(format!("the lookup query at {}", redact_url(&self.url)));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        self.connect()
            .await
            .map(drop)
            .map_err(|error| FieldError::new("url", ErrorChain(&error).to_string()))
    }
}

impl SqlLookupConfig {
    async fn connect(&self) -> Result<SqlLookup, StreamError> {
        let describe = format!("the SQL lookup at {}", redact_url(&self.url));
        let pool = connect_pool(&self.url, &describe).await?;
        Ok(SqlLookup {
            pool,
            query: self.query.clone(),
            describe,
        })
    }
}

#[async_trait]
impl LookupSpec for SqlLookupConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn RemoteTable>, StreamError> {
        Ok(Box::new(self.connect().await?))
    }
}

/// An open SQL lookup: its pool and query.
pub struct SqlLookup {
    pool: Pool,
    query: String,
    describe: String,
}

impl SqlLookup {
    /// The first column of `row`, as text.
    fn first_column<R: Row>(&self, row: &R) -> Result<Vec<u8>, StreamError>
    where
        usize: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        row.try_get::<String, _>(0usize)
            .map(String::into_bytes)
            .map_err(|error| {
                invalid_input(
                    &self.describe,
                    "read a row",
                    format!(
                        "the query's first column must be text (cast it, e.g. \
                         `row_to_json(t)::text`): {error}"
                    ),
                )
            })
    }
}

#[async_trait]
impl RemoteTable for SqlLookup {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn lookup(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StreamError> {
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let key = std::str::from_utf8(key).map_err(|_| {
                invalid_input(
                    &self.describe,
                    "look up",
                    format!("a key that is not UTF-8 text ({} bytes)", key.len()),
                )
            })?;
            let query = sqlx::query(AssertSqlSafe(self.query.as_str())).bind(key);
            let row = match &self.pool {
                Pool::Postgres(pool) => match query.fetch_optional(pool).await {
                    Ok(row) => row.map(|row| self.first_column(&row)).transpose()?,
                    Err(error) => return Err(db_error(&self.describe, "look up", error)),
                },
                Pool::Sqlite(pool) => match sqlx::query(AssertSqlSafe(self.query.as_str()))
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                {
                    Ok(row) => row.map(|row| self.first_column(&row)).transpose()?,
                    Err(error) => return Err(db_error(&self.describe, "look up", error)),
                },
            };
            rows.push(row);
        }
        Ok(rows)
    }
}
