//! The SQL source and sink against real databases: SQLite in a temporary
//! file, and PostgreSQL started by the harness for each test
//! ([`PostgresServer`]: Debian's `postgresql` package, `initdb` and
//! `postgres` from `/usr/lib/postgresql/*/bin`, on a free loopback port, in
//! a temporary directory, stopped when the test ends). The PostgreSQL tests
//! fail, with a message saying what to install, when the server is missing.
//!
//! Each scenario runs on both databases: `<scenario>::sqlite` and
//! `<scenario>::postgres`.

use plumber::ErrorChain;
use plumber_tests as harness;
use plumber_tests::PostgresServer;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::config::ReadStandard;
use plumber::pipeline::{Pipeline, PipelineBuilder};
use plumber::runtime::Runtime;
use plumber::state::SledState;
use plumber::step::{NativeStep, WasmPipe};
use plumber::streams::sql::{ColumnSource, SqlSink, SqlSinkMode, SqlSource, POSITION_HEADER};
use plumber::streams::{Sink, Source, StreamError};
use plumber::{Batch, Event};
use sqlx::{AssertSqlSafe, Row};

// ---------------------------------------------------------------------------
// A database for one test

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
enum Admin {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A database, its URL, and a connection of the test's own to set it up
/// and look at it.
struct TestDb {
    backend: Backend,
    url: String,
    admin: Admin,
    _dir: tempfile::TempDir,
    // Declared last: the server stops after the pool is gone.
    server: Option<PostgresServer>,
}

impl TestDb {
    async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        match backend {
            Backend::Sqlite => {
                let path = dir.path().join("test.db");
                let admin =
                    sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                        .await
                        .expect("create the SQLite database");
                TestDb {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    admin: Admin::Sqlite(admin),
                    _dir: dir,
                    server: None,
                }
            }
            Backend::Postgres => {
                let server = PostgresServer::start();
                let url = server.url();
                let admin = sqlx::PgPool::connect(&url)
                    .await
                    .expect("connect to postgres");
                TestDb {
                    backend,
                    url,
                    admin: Admin::Postgres(admin),
                    _dir: dir,
                    server: Some(server),
                }
            }
        }
    }

    /// The PostgreSQL server, to stop and restart it.
    fn server(&mut self) -> &mut PostgresServer {
        self.server
            .as_mut()
            .expect("only a PostgreSQL test database has a server")
    }

    /// Runs statements (`;`-separated).
    async fn exec(&self, sql: &str) {
        let result = match &self.admin {
            Admin::Sqlite(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .map(drop),
            Admin::Postgres(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .map(drop),
        };
        if let Err(error) = result {
            panic!("{sql}: {error}");
        }
    }

    /// The rows of a query whose columns are all text (cast them).
    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        macro_rules! fetch {
            ($pool:expr) => {
                sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .fetch_all($pool)
                    .await
                    .map(|rows| {
                        rows.iter()
                            .map(|row| {
                                (0..row.len())
                                    .map(|i| row.try_get::<Option<String>, _>(i))
                                    .collect::<Result<Vec<_>, _>>()
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
            };
        }
        let result = match &self.admin {
            Admin::Sqlite(pool) => fetch!(pool),
            Admin::Postgres(pool) => fetch!(pool),
        };
        match result {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) | Err(error) => panic!("{sql}: {error}"),
        }
    }

    async fn count(&self, table: &str) -> u64 {
        let rows = self
            .rows(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
            .await;
        rows[0][0].as_deref().unwrap_or("0").parse().unwrap()
    }

    fn blob_type(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        }
    }

    fn blob_literal(&self, hex: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("X'{hex}'"),
            Backend::Postgres => format!("decode('{hex}', 'hex')"),
        }
    }
}

/// Text cells, for comparing with [`TestDb::rows`].
fn cells(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

fn row_event(id: i64, value: &str, key: Option<&str>) -> Event {
    Event {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: value.as_bytes().to_vec(),
        timestamp: None,
        headers: vec![(POSITION_HEADER.to_owned(), id.to_string())],
    }
}

fn batch(values: &[&str]) -> Batch {
    Batch::new(values.iter().map(|v| Event::new(*v)).collect())
}

const POLL: Duration = Duration::from_millis(20);

async fn source(db: &TestDb, table: &str, value: &str, key: Option<&str>) -> SqlSource {
    match SqlSource::connect(&db.url, table, "id", value, key.map(str::to_owned), POLL).await {
        Ok(source) => source,
        Err(error) => panic!("connect the source: {error}"),
    }
}

async fn sink(db: &TestDb, table: &str, mode: SqlSinkMode) -> SqlSink {
    match SqlSink::connect(&db.url, table, mode).await {
        Ok(sink) => sink,
        Err(error) => panic!("connect the sink: {error}"),
    }
}

async fn next(source: &mut SqlSource, max: usize) -> (Vec<Event>, Position) {
    match tokio::time::timeout(Duration::from_secs(10), source.next_batch(max)).await {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) => panic!("the SQL source ended"),
        Ok(Err(error)) => panic!("read: {error}"),
        Err(_) => panic!("no batch within 10 s"),
    }
}

/// Runs an async scenario on SQLite and on PostgreSQL, as
/// `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$scenario(super::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$scenario(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both!(
    source_reads_rows_in_position_order_in_batches,
    source_resumes_after_seek,
    source_polls_for_rows_inserted_later,
    source_reads_bytes_numbers_and_nulls,
    connect_checks_names_and_hides_the_password,
    sink_inserts_json_objects,
    sink_inserts_with_a_configured_mapping,
    sink_upsert_replaces_by_key,
    flush_is_one_transaction,
    recover_drops_rows_of_later_epochs,
    pipeline_rerun_after_abort_writes_every_row_exactly_once,
    upsert_sink_runs_from_a_json_config,
    a_missing_epoch_column_says_how_to_add_it_or_do_without,
);

// ---------------------------------------------------------------------------
// Source

async fn create_events(db: &TestDb) {
    db.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, body TEXT, k TEXT);
         INSERT INTO events (id, body, k) VALUES
           (3, 'c', 'k3'), (1, 'a', 'k1'), (5, 'e', NULL), (2, 'b', 'k2'), (4, 'd', 'k4')",
    )
    .await;
}

async fn source_reads_rows_in_position_order_in_batches(backend: Backend) {
    let db = TestDb::new(backend).await;
    create_events(&db).await;
    let mut source = source(&db, "events", "body", Some("k")).await;
    assert!(source.describe().starts_with("sql source `events` at "));
    source.seek(&Position::Start).await.unwrap();
    assert_eq!(
        next(&mut source, 2).await,
        (
            vec![row_event(1, "a", Some("k1")), row_event(2, "b", Some("k2"))],
            Position::Offset(2)
        )
    );
    assert_eq!(
        next(&mut source, 2).await,
        (
            vec![row_event(3, "c", Some("k3")), row_event(4, "d", Some("k4"))],
            Position::Offset(4)
        )
    );
    assert_eq!(
        next(&mut source, 2).await,
        (vec![row_event(5, "e", None)], Position::Offset(5))
    );
    // Without a key column, events have no key.
    let mut unkeyed = self::source(&db, "events", "body", None).await;
    let (events, position) = next(&mut unkeyed, 100).await;
    assert_eq!(position, Position::Offset(5));
    assert_eq!(
        events,
        vec![
            row_event(1, "a", None),
            row_event(2, "b", None),
            row_event(3, "c", None),
            row_event(4, "d", None),
            row_event(5, "e", None),
        ]
    );
}

async fn source_resumes_after_seek(backend: Backend) {
    let db = TestDb::new(backend).await;
    create_events(&db).await;
    let mut source = source(&db, "events", "body", Some("k")).await;
    source.seek(&Position::Offset(3)).await.unwrap();
    assert_eq!(
        next(&mut source, 10).await,
        (
            vec![row_event(4, "d", Some("k4")), row_event(5, "e", None)],
            Position::Offset(5)
        )
    );
    // Back to the start: everything again.
    source.seek(&Position::Start).await.unwrap();
    let (events, position) = next(&mut source, 10).await;
    assert_eq!(events.len(), 5);
    assert_eq!(events[0], row_event(1, "a", Some("k1")));
    assert_eq!(position, Position::Offset(5));
    // At the end it waits for new rows rather than ending.
    source.seek(&Position::Offset(5)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), source.next_batch(10))
            .await
            .is_err(),
        "a source at the end must wait"
    );
    // A position past what a signed 64-bit column holds is refused.
    let error = source.seek(&Position::Offset(u64::MAX)).await.unwrap_err();
    assert!(matches!(error, StreamError::Seek { .. }), "{error}");
    // So is a position of another kind of source (a file's).
    let file = Position::Source {
        kind: "file".into(),
        value: serde_json::json!({"offset": 3}),
    };
    let error = source.seek(&file).await.unwrap_err();
    assert!(
        matches!(error, StreamError::Seek { .. })
            && ErrorChain(&error)
                .to_string()
                .contains("another kind of source"),
        "{error}"
    );
}

async fn source_polls_for_rows_inserted_later(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, body TEXT);
         INSERT INTO events (id, body) VALUES (1, 'a'), (2, 'b')",
    )
    .await;
    let mut source = source(&db, "events", "body", None).await;
    assert_eq!(
        next(&mut source, 10).await,
        (
            vec![row_event(1, "a", None), row_event(2, "b", None)],
            Position::Offset(2)
        )
    );
    let admin = db.admin.clone();
    let started = Instant::now();
    let inserter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sql = "INSERT INTO events (id, body) VALUES (3, 'c'), (4, 'd')";
        match admin {
            Admin::Sqlite(pool) => sqlx::query(sql).execute(&pool).await.map(drop),
            Admin::Postgres(pool) => sqlx::query(sql).execute(&pool).await.map(drop),
        }
    });
    assert_eq!(
        next(&mut source, 10).await,
        (
            vec![row_event(3, "c", None), row_event(4, "d", None)],
            Position::Offset(4)
        )
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    inserter.await.unwrap().unwrap();
}

async fn source_reads_bytes_numbers_and_nulls(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec(&format!(
        "CREATE TABLE blobs (id BIGINT NOT NULL, data {}, n BIGINT);
         INSERT INTO blobs (id, data, n) VALUES (1, {}, 42), (2, NULL, NULL)",
        db.blob_type(),
        db.blob_literal("00ff41")
    ))
    .await;
    let mut source = source(&db, "blobs", "data", Some("n")).await;
    let (events, position) = next(&mut source, 10).await;
    assert_eq!(position, Position::Offset(2));
    assert_eq!(
        events,
        vec![
            Event {
                key: Some(b"42".to_vec()),
                value: vec![0x00, 0xff, 0x41],
                timestamp: None,
                headers: vec![(POSITION_HEADER.to_owned(), "1".to_owned())],
            },
            Event {
                key: None,
                value: Vec::new(),
                timestamp: None,
                headers: vec![(POSITION_HEADER.to_owned(), "2".to_owned())],
            },
        ]
    );
    // A number as the value: its text.
    let mut numbers = self::source(&db, "blobs", "n", None).await;
    let (events, _) = next(&mut numbers, 1).await;
    assert_eq!(events, vec![row_event(1, "42", None)]);
}

async fn connect_checks_names_and_hides_the_password(backend: Backend) {
    let db = TestDb::new(backend).await;
    create_events(&db).await;
    let source_error = |result: Result<SqlSource, StreamError>| match result {
        Ok(_) => panic!("the source connected"),
        Err(error) => ErrorChain(&error).to_string(),
    };
    let sink_error = |result: Result<SqlSink, StreamError>| match result {
        Ok(_) => panic!("the sink connected"),
        Err(error) => ErrorChain(&error).to_string(),
    };
    let message = source_error(
        SqlSource::connect(
            &db.url,
            "events; DROP TABLE events",
            "id",
            "body",
            None,
            POLL,
        )
        .await,
    );
    assert!(
        message.contains("is not a plain SQL identifier"),
        "{message}"
    );
    let message =
        source_error(SqlSource::connect(&db.url, "events", "id", "bo\"dy", None, POLL).await);
    assert!(message.contains("value column `bo\"dy`"), "{message}");
    let message =
        source_error(SqlSource::connect(&db.url, "missing", "id", "body", None, POLL).await);
    assert!(message.contains("sql source `missing`"), "{message}");
    let message =
        source_error(SqlSource::connect(&db.url, "events", "id", "nope", None, POLL).await);
    assert!(message.contains("nope"), "{message}");
    let message = sink_error(
        SqlSink::connect(
            &db.url,
            "events",
            SqlSinkMode::Upsert {
                key_columns: vec!["a b".to_owned()],
            },
        )
        .await,
    );
    assert!(
        message.contains("key column `a b` is not a plain SQL identifier"),
        "{message}"
    );
    let message = sink_error(
        SqlSink::connect(
            &db.url,
            "events",
            SqlSinkMode::Upsert {
                key_columns: vec![],
            },
        )
        .await,
    );
    assert!(message.contains("at least one key column"), "{message}");
    let message = sink_error(SqlSink::connect("mysql://h/db", "events", SqlSinkMode::Insert).await);
    assert!(message.contains("unsupported database URL"), "{message}");
    // A table without the epoch column: no position, and nothing deleted
    // (on SQLite an unqualified "plumber_epoch" would be a string literal).
    let mut no_epoch = sink(&db, "events", SqlSinkMode::Insert).await;
    let message = ErrorChain(&no_epoch.position().await.unwrap_err()).to_string();
    assert!(message.contains("read the largest epoch"), "{message}");
    let message = ErrorChain(&no_epoch.recover(Some(0)).await.unwrap_err()).to_string();
    assert!(message.contains("recover"), "{message}");
    // The table is still there, whole: nothing was interpolated or deleted.
    assert_eq!(db.count("events").await, 5);

    // A server that is not there: the error names the address, not the password.
    let unreachable = match backend {
        Backend::Postgres => format!(
            "postgres://plumber:s3cret@127.0.0.1:{}/db",
            harness::free_port()
        ),
        Backend::Sqlite => "sqlite:///nonexistent-dir-for-plumber/s3cret.db".to_owned(),
    };
    let started = Instant::now();
    let (source_result, sink_result) = tokio::join!(
        SqlSource::connect(&unreachable, "events", "id", "body", None, POLL),
        SqlSink::connect(&unreachable, "t", SqlSinkMode::Insert),
    );
    for message in [source_error(source_result), sink_error(sink_result)] {
        assert!(message.contains(": connect: "), "{message}");
        if backend == Backend::Postgres {
            assert!(
                message.contains(" at postgres://plumber@127.0.0.1:"),
                "{message}"
            );
            assert!(!message.contains("s3cret"), "{message}");
            assert!(message.contains("Connection refused"), "{message}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// Sink

async fn sink_inserts_json_objects(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec(
        "CREATE TABLE people (id BIGINT NOT NULL, name TEXT, score DOUBLE PRECISION,
                              plumber_epoch BIGINT NOT NULL)",
    )
    .await;
    let mut sink = sink(&db, "people", SqlSinkMode::Insert).await;
    assert_eq!(sink.position().await.unwrap(), Some(0));
    sink.write(batch(&[
        r#"{"id": 1, "name": "ada", "score": 1.5}"#,
        r#"{"id": 2, "name": "grace"}"#,
        r#"{"id": 3, "name": "alan", "score": 2.25}"#,
    ]))
    .await
    .unwrap();
    assert_eq!(db.count("people").await, 0, "rows wait for the flush");
    sink.flush().await.unwrap();
    assert_eq!(sink.position().await.unwrap(), Some(1));
    // A flush with nothing buffered does not start an epoch.
    sink.flush().await.unwrap();
    assert_eq!(sink.position().await.unwrap(), Some(1));
    sink.write(batch(&[r#"{"id": 4, "name": "barbara"}"#]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.position().await.unwrap(), Some(2));
    let sql = "SELECT CAST(id AS TEXT), name, CAST(score AS TEXT), CAST(plumber_epoch AS TEXT)
               FROM people ORDER BY id";
    assert_eq!(
        db.rows(sql).await,
        vec![
            cells(&[Some("1"), Some("ada"), Some("1.5"), Some("1")]),
            cells(&[Some("2"), Some("grace"), None, Some("1")]),
            cells(&[Some("3"), Some("alan"), Some("2.25"), Some("1")]),
            cells(&[Some("4"), Some("barbara"), None, Some("2")]),
        ]
    );

    // Events that are not rows are refused at write, naming the event.
    for (value, expected) in [
        ("not json", "event 1 of the batch: the value is not JSON"),
        (
            "[1, 2]",
            "event 1 of the batch: the value is not a JSON object",
        ),
        (
            r#"{"bad-name": 1}"#,
            "field `bad-name` is not a plain SQL identifier",
        ),
        (
            r#"{"id": 5, "plumber_epoch": 9}"#,
            "field `plumber_epoch` is the epoch column",
        ),
    ] {
        let error = ErrorChain(
            &sink
                .write(batch(&[r#"{"id": 5, "name": "ok"}"#, value]))
                .await
                .unwrap_err(),
        )
        .to_string();
        assert!(error.contains(expected), "{error}");
        assert!(error.contains("sql sink `people`"), "{error}");
    }
    // Nothing of a refused batch was buffered.
    sink.flush().await.unwrap();
    assert_eq!(db.count("people").await, 4);
    assert_eq!(sink.position().await.unwrap(), Some(2));
}

async fn sink_inserts_with_a_configured_mapping(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec(
        "CREATE TABLE mapped (body TEXT, k TEXT, ts BIGINT, src BIGINT, n BIGINT, tag TEXT,
                              ep BIGINT NOT NULL)",
    )
    .await;
    let mapping = vec![
        ("body".to_owned(), ColumnSource::Value),
        ("k".to_owned(), ColumnSource::Key),
        ("ts".to_owned(), ColumnSource::Timestamp),
        (
            "src".to_owned(),
            ColumnSource::Header(POSITION_HEADER.to_owned()),
        ),
        ("n".to_owned(), "json:n".parse().unwrap()),
        ("tag".to_owned(), "json:tag".parse().unwrap()),
    ];
    let mut sink = sink(&db, "mapped", SqlSinkMode::Insert)
        .await
        .epoch_column(Some("ep".to_owned()))
        .unwrap()
        .mapping(mapping.clone())
        .unwrap();
    let mut first = Event::new(r#"{"n": 7, "tag": "x"}"#)
        .with_key("k1")
        .with_timestamp(1_800_000_000_000);
    first
        .headers
        .push((POSITION_HEADER.to_owned(), "42".to_owned()));
    let second = Event::new(r#"{"n": 8}"#);
    sink.write(Batch::new(vec![first, second])).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.position().await.unwrap(), Some(1));
    let sql = "SELECT body, k, CAST(ts AS TEXT), CAST(src AS TEXT), CAST(n AS TEXT), tag,
                      CAST(ep AS TEXT)
               FROM mapped ORDER BY n";
    assert_eq!(
        db.rows(sql).await,
        vec![
            cells(&[
                Some(r#"{"n": 7, "tag": "x"}"#),
                Some("k1"),
                Some("1800000000000"),
                Some("42"),
                Some("7"),
                Some("x"),
                Some("1"),
            ]),
            cells(&[
                Some(r#"{"n": 8}"#),
                None,
                None,
                None,
                Some("8"),
                None,
                Some("1")
            ]),
        ]
    );
    // A `json:` source needs a JSON object.
    let error = ErrorChain(&sink.write(batch(&["plain"])).await.unwrap_err()).to_string();
    assert!(error.contains("the value is not JSON"), "{error}");

    // Mappings are checked when configured.
    let configure_error = |result: Result<SqlSink, StreamError>| match result {
        Ok(_) => panic!("the mapping was accepted"),
        Err(error) => ErrorChain(&error).to_string(),
    };
    let message = configure_error(
        self::sink(&db, "mapped", SqlSinkMode::Insert)
            .await
            .mapping(vec![("body; --".to_owned(), ColumnSource::Value)]),
    );
    assert!(message.contains("not a plain SQL identifier"), "{message}");
    let message = configure_error(
        self::sink(&db, "mapped", SqlSinkMode::Insert)
            .await
            .mapping(vec![
                ("body".to_owned(), ColumnSource::Value),
                ("body".to_owned(), ColumnSource::Key),
            ]),
    );
    assert!(message.contains("names column `body` twice"), "{message}");
    let message = configure_error(
        self::sink(&db, "mapped", SqlSinkMode::Insert)
            .await
            .mapping(vec![("plumber_epoch".to_owned(), ColumnSource::Value)]),
    );
    assert!(message.contains("is the epoch column"), "{message}");
    let message = configure_error(
        self::sink(
            &db,
            "mapped",
            SqlSinkMode::Upsert {
                key_columns: vec!["k".to_owned()],
            },
        )
        .await
        .mapping(vec![("body".to_owned(), ColumnSource::Value)]),
    );
    assert!(
        message.contains("no source for key column `k`"),
        "{message}"
    );
    assert!("headers:x".parse::<ColumnSource>().is_err());
}

async fn sink_upsert_replaces_by_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT, n BIGINT)")
        .await;
    let mode = SqlSinkMode::Upsert {
        key_columns: vec!["k".to_owned()],
    };
    let mut sink = sink(&db, "kv", mode.clone()).await;
    assert_eq!(
        sink.position().await.unwrap(),
        None,
        "upserts keep no epoch"
    );
    // The same key twice in one flush: the later row wins.
    sink.write(batch(&[
        r#"{"k": "a", "v": "1", "n": 1}"#,
        r#"{"k": "b", "v": "1", "n": 1}"#,
        r#"{"k": "a", "v": "2", "n": 2}"#,
    ]))
    .await
    .unwrap();
    sink.flush().await.unwrap();
    let sql = "SELECT k, v, CAST(n AS TEXT) FROM kv ORDER BY k";
    assert_eq!(
        db.rows(sql).await,
        vec![
            cells(&[Some("a"), Some("2"), Some("2")]),
            cells(&[Some("b"), Some("1"), Some("1")]),
        ]
    );
    let second = [
        r#"{"k": "b", "v": "3", "n": 3}"#,
        r#"{"k": "c", "v": "1", "n": 1}"#,
    ];
    sink.write(batch(&second)).await.unwrap();
    sink.flush().await.unwrap();
    // A replay of the same events changes nothing.
    sink.write(batch(&second)).await.unwrap();
    sink.flush().await.unwrap();
    // Only the key: an existing row stays as it is.
    sink.write(batch(&[r#"{"k": "c"}"#, r#"{"k": "d"}"#]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        db.rows(sql).await,
        vec![
            cells(&[Some("a"), Some("2"), Some("2")]),
            cells(&[Some("b"), Some("3"), Some("3")]),
            cells(&[Some("c"), Some("1"), Some("1")]),
            cells(&[Some("d"), None, None]),
        ]
    );
    assert_eq!(sink.position().await.unwrap(), None);
    let error = ErrorChain(&sink.write(batch(&[r#"{"v": "x"}"#])).await.unwrap_err()).to_string();
    assert!(error.contains("no field for key column `k`"), "{error}");
    let message = match self::sink(&db, "kv", mode)
        .await
        .epoch_column(Some("e".to_owned()))
    {
        Ok(_) => panic!("an upsert took an epoch column"),
        Err(error) => ErrorChain(&error).to_string(),
    };
    assert!(message.contains("takes no epoch column"), "{message}");
}

async fn flush_is_one_transaction(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec(
        "CREATE TABLE strict (id BIGINT PRIMARY KEY, name TEXT NOT NULL,
                              plumber_epoch BIGINT NOT NULL)",
    )
    .await;
    let ids = "SELECT CAST(id AS TEXT), CAST(plumber_epoch AS TEXT) FROM strict ORDER BY id";
    let mut sink = sink(&db, "strict", SqlSinkMode::Insert).await;
    sink.write(batch(&[
        r#"{"id": 1, "name": "a"}"#,
        r#"{"id": 2, "name": "b"}"#,
    ]))
    .await
    .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.position().await.unwrap(), Some(1));

    // The third row lacks a NOT NULL column; it goes in a statement of its
    // own (other columns), after the one inserting rows 3 and 4.
    sink.write(batch(&[
        r#"{"id": 3, "name": "c"}"#,
        r#"{"id": 4, "name": "d"}"#,
        r#"{"id": 5}"#,
    ]))
    .await
    .unwrap();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(error.contains("sql sink `strict`"), "{error}");
    assert!(error.contains("write rows"), "{error}");
    assert_eq!(
        db.rows(ids).await,
        vec![
            cells(&[Some("1"), Some("1")]),
            cells(&[Some("2"), Some("1")])
        ]
    );
    assert_eq!(
        sink.position().await.unwrap(),
        Some(1),
        "a failed flush keeps the epoch"
    );

    // A duplicate primary key in the same statement as a good row.
    let mut sink = self::sink(&db, "strict", SqlSinkMode::Insert).await;
    sink.write(batch(&[
        r#"{"id": 6, "name": "f"}"#,
        r#"{"id": 1, "name": "again"}"#,
    ]))
    .await
    .unwrap();
    assert!(sink.flush().await.is_err());
    assert_eq!(db.count("strict").await, 2);

    // A new sink continues after the largest epoch in the table.
    let mut sink = self::sink(&db, "strict", SqlSinkMode::Insert).await;
    sink.write(batch(&[r#"{"id": 3, "name": "c"}"#]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        db.rows(ids).await,
        vec![
            cells(&[Some("1"), Some("1")]),
            cells(&[Some("2"), Some("1")]),
            cells(&[Some("3"), Some("2")]),
        ]
    );
}

async fn recover_drops_rows_of_later_epochs(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec("CREATE TABLE log (n BIGINT NOT NULL, plumber_epoch BIGINT NOT NULL)")
        .await;
    let rows = "SELECT CAST(n AS TEXT), CAST(plumber_epoch AS TEXT) FROM log ORDER BY n";
    let mut writer = sink(&db, "log", SqlSinkMode::Insert).await;
    for values in [
        vec![r#"{"n": 1}"#],
        vec![r#"{"n": 2}"#, r#"{"n": 3}"#],
        vec![r#"{"n": 4}"#],
    ] {
        writer.write(batch(&values)).await.unwrap();
        writer.flush().await.unwrap();
    }
    assert_eq!(writer.position().await.unwrap(), Some(3));
    drop(writer);

    // A restart resuming the checkpoint that stored epoch 1.
    let mut sink = sink(&db, "log", SqlSinkMode::Insert).await;
    assert_eq!(sink.position().await.unwrap(), Some(3));
    sink.recover(Some(1)).await.unwrap();
    assert_eq!(sink.position().await.unwrap(), Some(1));
    assert_eq!(db.rows(rows).await, vec![cells(&[Some("1"), Some("1")])]);
    sink.write(batch(&[r#"{"n": 5}"#])).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        db.rows(rows).await,
        vec![
            cells(&[Some("1"), Some("1")]),
            cells(&[Some("5"), Some("2")])
        ]
    );
    // No stored position: nothing to take back.
    sink.recover(None).await.unwrap();
    assert_eq!(db.count("log").await, 2);
    assert_eq!(sink.position().await.unwrap(), Some(2));
    // Back to the start.
    let mut sink = self::sink(&db, "log", SqlSinkMode::Insert).await;
    sink.recover(Some(0)).await.unwrap();
    assert_eq!(db.count("log").await, 0);
    assert_eq!(sink.position().await.unwrap(), Some(0));

    // Without an epoch column the sink has no position and takes nothing back.
    db.exec("INSERT INTO log (n, plumber_epoch) VALUES (9, 9)")
        .await;
    let mut plain = self::sink(&db, "log", SqlSinkMode::Insert)
        .await
        .epoch_column(None)
        .unwrap();
    assert_eq!(plain.position().await.unwrap(), None);
    plain.recover(Some(0)).await.unwrap();
    assert_eq!(db.count("log").await, 1);
}

/// A table without the epoch column: the error says how to add it, or how
/// to turn it off and what that costs.
async fn a_missing_epoch_column_says_how_to_add_it_or_do_without(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec("CREATE TABLE plain (n BIGINT NOT NULL)").await;
    let mut sink = sink(&db, "plain", SqlSinkMode::Insert).await;
    let error = ErrorChain(&sink.position().await.unwrap_err()).to_string();
    for wanted in [
        "no epoch column `plumber_epoch`",
        "ALTER TABLE \"plain\" ADD COLUMN \"plumber_epoch\" BIGINT",
        "\"epoch_column\": null",
        "at-least-once",
    ] {
        assert!(error.contains(wanted), "`{wanted}` not in: {error}");
    }
    let error = ErrorChain(&sink.check_table().await.unwrap_err()).to_string();
    assert!(error.contains("ALTER TABLE"), "{error}");
    // Turned off, the same table takes the rows.
    let mut plain = self::sink(&db, "plain", SqlSinkMode::Insert)
        .await
        .epoch_column(None)
        .unwrap();
    plain.check_table().await.unwrap();
    plain.write(batch(&[r#"{"n": 1}"#])).await.unwrap();
    plain.flush().await.unwrap();
    assert_eq!(db.count("plain").await, 1);
}

/// PostgreSQL's errors for a value a column refuses name neither: the
/// sink's error names the column, its type, the row and the (cut) value,
/// and none carries the server's "at line N".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_errors_name_the_column_and_the_value() {
    let db = TestDb::new(Backend::Postgres).await;
    db.exec(
        "CREATE TABLE typed (id BIGINT PRIMARY KEY, name TEXT NOT NULL, at TIMESTAMPTZ,
                             plumber_epoch BIGINT NOT NULL)",
    )
    .await;
    let mut sink = sink(&db, "typed", SqlSinkMode::Insert).await;
    sink.write(batch(&[
        r#"{"id": 1, "name": "a"}"#,
        r#"{"id": 2, "name": "b"}"#,
        r#"{"id": "abc", "name": "c"}"#,
        r#"{"id": 4, "name": "d"}"#,
    ]))
    .await
    .unwrap();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    for wanted in [
        "column `id` (bigint) refuses the value \"abc\" of row 3 of this flush",
        "invalid input syntax for type bigint",
    ] {
        assert!(error.contains(wanted), "`{wanted}` not in: {error}");
    }
    assert!(!error.contains(" at line "), "{error}");
    assert_eq!(db.count("typed").await, 0);

    // A long value is quoted cut short.
    let long = "9".repeat(5_000);
    let mut sink = self::sink(&db, "typed", SqlSinkMode::Insert).await;
    sink.write(batch(&[&format!(
        r#"{{"id": 1, "name": "x", "at": "{long}"}}"#
    )]))
    .await
    .unwrap();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(
        error.contains("column `at` (timestamp with time zone)"),
        "{error}"
    );
    assert!(error.contains("… (5002 bytes)"), "{error}");
    assert!(error.len() < 2_000, "{} bytes: {error}", error.len());

    // A constraint: the server's detail, without its source line.
    let mut sink = self::sink(&db, "typed", SqlSinkMode::Insert).await;
    sink.write(batch(&[r#"{"id": 1}"#])).await.unwrap();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(
        error.contains("null value in column \"name\"") && error.contains("Failing row contains"),
        "{error}"
    );
    assert!(!error.contains(" at line "), "{error}");
}

// ---------------------------------------------------------------------------
// End to end

/// Runs a pipeline from JSON config text (paths relative to `base`) to its end.
async fn run_config(config: &serde_json::Value, base: &Path) -> plumber::pipeline::RunReport {
    let config = plumber::config::PipelineConfig::parse(&config.to_string(), "test.json", base)
        .unwrap_or_else(|error| panic!("config: {error}"));
    let state = config.open_state().await.expect("open the state");
    let builder = match config.builder(state).await {
        Ok(builder) => builder,
        Err(error) => panic!("open the source and sinks: {error}"),
    };
    let run = builder
        .runtime(Runtime::new(Some(harness::cache_dir())).unwrap())
        .run();
    match run.await {
        Ok(report) => report,
        Err(error) => panic!("run: {error}"),
    }
}

/// `"mode": "upsert"` from JSON, with the epoch column left out and set to
/// `null`: each key's latest count, and a replay from scratch (a new state,
/// the same events) leaves the same rows.
async fn upsert_sink_runs_from_a_json_config(backend: Backend) {
    let db = TestDb::new(backend).await;
    db.exec("CREATE TABLE latest (name TEXT PRIMARY KEY, line TEXT NOT NULL)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = serde_json::json!({
        "type": "sql", "url": db.url, "table": "latest", "mode": "upsert",
        "key_columns": ["name"], "columns": {"name": "key", "line": "value"}
    });
    let mut with_null = sink.clone();
    with_null["epoch_column"] = serde_json::Value::Null;
    let rows = "SELECT name, line FROM latest ORDER BY name";
    for (run, sink) in [sink.clone(), with_null, sink.clone()]
        .into_iter()
        .enumerate()
    {
        let config = serde_json::json!({
            "name": "upsert",
            "state": {"type": "sled", "path": dir.path().join(format!("state-{run}"))},
            "from": {"type": "array", "values": ["ada", "grace", "ada", "alan", "ada"]},
            "pipeline": [{"name": "count", "type": "wasm", "module": harness::guest("count")}],
            "to": sink
        });
        let report = run_config(&config, dir.path()).await;
        assert_eq!(report.events_out, 5, "run {run}");
        assert_eq!(
            db.rows(rows).await,
            vec![
                cells(&[Some("ada"), Some("ada 3")]),
                cells(&[Some("alan"), Some("alan 1")]),
                cells(&[Some("grace"), Some("grace 1")]),
            ],
            "run {run}"
        );
    }
    // An upsert takes no epoch column: naming one is a config error.
    let mut named = sink;
    named["epoch_column"] = serde_json::json!("plumber_epoch");
    let config = serde_json::json!({
        "name": "upsert", "from": {"type": "array", "values": []}, "to": named
    });
    match plumber::config::PipelineConfig::parse(&config.to_string(), "test.json", dir.path()) {
        Err(plumber::config::ConfigError::Invalid { path, message, .. }) => {
            assert_eq!(path, "to.epoch_column", "{message}");
            assert!(message.contains("idempotent by its key"), "{message}");
        }
        other => panic!("an upsert with an epoch column: {other:?}"),
    }
}

/// Opens the sled state, waiting while an aborted run's stages still hold it.
async fn open_sled(path: &Path) -> SledState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match SledState::open(path) {
            Ok(state) => return state,
            Err(error) if Instant::now() > deadline => panic!("open the sled state: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn sql_pipeline(db: &TestDb, state: &Path) -> PipelineBuilder {
    let source = source(db, "names", "name", None).await;
    let sink = sink(db, "shouted", SqlSinkMode::Insert)
        .await
        .mapping(vec![
            (
                "source_id".to_owned(),
                ColumnSource::Header(POSITION_HEADER.to_owned()),
            ),
            ("name".to_owned(), ColumnSource::Value),
        ])
        .unwrap();
    Pipeline::builder("sql")
        .state(Arc::new(open_sled(state).await))
        .runtime(Runtime::new(Some(harness::cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(25)))
        .batch_size(5)
        .channel_capacity(2)
        .from(source)
        .then(WasmPipe::new("upper", harness::guest("upper")))
        // Slows the run down, so that it can be stopped midway.
        .then(NativeStep::batch("slow", |batch| {
            std::thread::sleep(Duration::from_millis(3));
            Ok(batch.events)
        }))
        .to(sink)
}

async fn insert_names(db: &TestDb, ids: std::ops::RangeInclusive<u64>) {
    let values: Vec<String> = ids.map(|id| format!("({id}, 'name-{id}')")).collect();
    db.exec(&format!(
        "INSERT INTO names (id, name) VALUES {}",
        values.join(", ")
    ))
    .await;
}

async fn wait_for_rows(db: &TestDb, at_least: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = db.count("shouted").await;
        if count >= at_least {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {count} rows in the sink after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn pipeline_rerun_after_abort_writes_every_row_exactly_once(backend: Backend) {
    const FIRST: u64 = 600;
    const LATER: u64 = 20;
    // Build the guest before anything runs against the clock.
    let upper = tokio::task::spawn_blocking(|| harness::guest("upper"));
    upper.await.unwrap();
    let db = TestDb::new(backend).await;
    db.exec(
        "CREATE TABLE names (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE shouted (source_id BIGINT NOT NULL, name TEXT NOT NULL,
                               plumber_epoch BIGINT NOT NULL)",
    )
    .await;
    insert_names(&db, 1..=FIRST).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state");

    // First run: stopped uncleanly once some rows have arrived.
    let first = tokio::spawn(sql_pipeline(&db, &state).await.run());
    let seen = wait_for_rows(&db, 100, "first run").await;
    assert!(!first.is_finished(), "the first run must still be going");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert!(
        seen < FIRST,
        "the first run was stopped midway ({seen} rows)"
    );
    // The aborted run's stage tasks end once their channels close (a real
    // crash would end them at once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // As if the sink had flushed an epoch whose checkpoint never committed:
    // copies of rows with a later epoch, which a restart must drop.
    db.exec(
        "INSERT INTO shouted (source_id, name, plumber_epoch)
         SELECT source_id, name, plumber_epoch + 1000 FROM shouted WHERE source_id <= 3",
    )
    .await;

    // Second run on the same state: resumes, and picks up rows added meanwhile.
    let builder = sql_pipeline(&db, &state).await;
    let handle = builder.handle();
    let second = tokio::spawn(builder.run());
    tokio::time::sleep(Duration::from_millis(50)).await;
    insert_names(&db, FIRST + 1..=FIRST + LATER).await;
    wait_for_rows(&db, FIRST + LATER, "second run").await;
    handle.shutdown();
    let report = match second.await.unwrap() {
        Ok(report) => report,
        Err(error) => panic!("second run: {error}"),
    };
    let resumed = report
        .resumed_from
        .expect("the second run resumes a checkpoint");
    let Position::Offset(resumed_at) = resumed.position else {
        panic!("resumed from {:?}", resumed.position);
    };
    assert!(
        resumed_at > 0 && resumed_at < FIRST,
        "resumed at {resumed_at}"
    );
    assert_eq!(report.events_in, FIRST + LATER - resumed_at);

    let rows = db
        .rows("SELECT CAST(source_id AS TEXT) AS sid, name FROM shouted ORDER BY shouted.source_id, name")
        .await;
    let expected: Vec<Vec<Option<String>>> = (1..=FIRST + LATER)
        .map(|id| vec![Some(id.to_string()), Some(format!("NAME-{id}"))])
        .collect();
    assert_eq!(rows.len(), expected.len());
    assert_eq!(rows, expected);
}

/// [`sql_pipeline`] on its own state, reading all of `names`, with a
/// checkpoint every 50 ms, small batches, slowed down so that it runs for a
/// while, and the source and sink retrying for `reconnect_timeout` while
/// the database is unreachable.
async fn reconnecting_pipeline(
    db: &TestDb,
    state: &Path,
    reconnect_timeout: Duration,
) -> PipelineBuilder {
    let source = source(db, "names", "name", None)
        .await
        .reconnect_timeout(reconnect_timeout);
    let sink = sink(db, "shouted", SqlSinkMode::Insert)
        .await
        .reconnect_timeout(reconnect_timeout)
        .mapping(vec![
            (
                "source_id".to_owned(),
                ColumnSource::Header(POSITION_HEADER.to_owned()),
            ),
            ("name".to_owned(), ColumnSource::Value),
        ])
        .unwrap();
    Pipeline::builder("sql-reconnect")
        .state(Arc::new(open_sled(state).await))
        .runtime(Runtime::new(Some(harness::cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(50)))
        .batch_size(5)
        .channel_capacity(2)
        .from(source)
        .then(WasmPipe::new("upper", harness::guest("upper")))
        .then(NativeStep::batch("slow", |batch| {
            std::thread::sleep(Duration::from_millis(10));
            Ok(batch.events)
        }))
        .to(sink)
}

/// The `names` and `shouted` tables, with `rows` names.
async fn create_names_and_shouted(db: &TestDb, rows: u64) {
    db.exec(
        "CREATE TABLE names (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE shouted (source_id BIGINT NOT NULL, name TEXT NOT NULL,
                               plumber_epoch BIGINT NOT NULL)",
    )
    .await;
    insert_names(db, 1..=rows).await;
}

/// PostgreSQL goes away for a second while the pipeline runs: the source
/// and the sink wait for it and carry on, and every row arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_survives_a_postgres_restart() {
    const ROWS: u64 = 400;
    let upper = tokio::task::spawn_blocking(|| harness::guest("upper"));
    upper.await.unwrap();
    let mut db = TestDb::new(Backend::Postgres).await;
    create_names_and_shouted(&db, ROWS).await;
    let state_dir = tempfile::tempdir().unwrap();
    let builder = reconnecting_pipeline(
        &db,
        &state_dir.path().join("state"),
        Duration::from_secs(30),
    )
    .await;
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());

    let seen = wait_for_rows(&db, 50, "before the restart").await;
    assert!(!running.is_finished(), "the pipeline must still be going");
    tokio::task::block_in_place(|| db.server().stop());
    // Longer than one attempt to get a connection back (at most 2 s, while
    // the pool retries by itself), so that the source and the sink see the
    // database fail and retry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !running.is_finished(),
        "the pipeline waits for the database"
    );
    tokio::task::block_in_place(|| db.server().restart());
    assert!(
        seen < ROWS,
        "the database went away midway ({seen} rows before)"
    );

    wait_for_rows(&db, ROWS, "after the restart").await;
    // A little longer, so that anything written twice would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.shutdown();
    let report = match tokio::time::timeout(Duration::from_secs(30), running).await {
        Ok(joined) => match joined.unwrap() {
            Ok(report) => report,
            Err(error) => panic!("run: {error}"),
        },
        Err(_) => panic!("the pipeline did not stop within 30 s of the shutdown"),
    };
    assert_eq!(report.events_in, ROWS);
    let rows = db
        .rows("SELECT CAST(source_id AS TEXT), name FROM shouted ORDER BY shouted.source_id, name")
        .await;
    let expected: Vec<Vec<Option<String>>> = (1..=ROWS)
        .map(|id| vec![Some(id.to_string()), Some(format!("NAME-{id}"))])
        .collect();
    assert_eq!(rows.len(), expected.len(), "every row exactly once");
    assert_eq!(rows, expected);
}

/// PostgreSQL goes away for good: after the reconnect timeout the pipeline
/// stops with an error naming the database, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_gives_up_when_postgres_stays_down() {
    let upper = tokio::task::spawn_blocking(|| harness::guest("upper"));
    upper.await.unwrap();
    let mut db = TestDb::new(Backend::Postgres).await;
    create_names_and_shouted(&db, 400).await;
    let state_dir = tempfile::tempdir().unwrap();
    let running = tokio::spawn(
        reconnecting_pipeline(
            &db,
            &state_dir.path().join("state"),
            Duration::from_millis(500),
        )
        .await
        .run(),
    );
    wait_for_rows(&db, 20, "before the stop").await;
    tokio::task::block_in_place(|| db.server().stop());
    let stopped_at = Instant::now();
    let error = match tokio::time::timeout(Duration::from_secs(30), running).await {
        Ok(joined) => match joined.unwrap() {
            Ok(report) => panic!("the pipeline ended without an error: {report:?}"),
            Err(error) => ErrorChain(&error).to_string(),
        },
        Err(_) => panic!("the pipeline still runs 30 s after the database went away"),
    };
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        stopped_at.elapsed()
    );
    assert!(error.contains(&db.url), "names the database: {error}");
    assert!(
        error.contains("gave up after waiting"),
        "says how long it waited: {error}"
    );
}

/// Runs the `plumber` binary with `args` and then `config`.
fn plumber_cli(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(args)
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plumber")
}

/// Its stdout, after checking that it succeeded.
fn succeeded(output: std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `examples/http-to-postgres.json`: events POSTed over HTTP, counted per
/// name by a stateful WASM pipe, inserted into PostgreSQL; each POST is
/// answered 202 only once its rows are committed. The table is made by
/// `plumber setup`, as docs/connectors.md tells a user.
#[tokio::test]
async fn http_to_postgres_example_inserts_each_count_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let examples = harness::workspace_root().join("examples");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples.join("http-to-postgres.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    config["state"] = serde_json::json!({ "type": "sled", "path": dir.path().join("state") });
    config["from"]["listen"] = serde_json::json!(format!("127.0.0.1:{port}"));
    config["to"]["url"] = serde_json::json!(db.url);
    config["pipeline"][0]["module"] = serde_json::json!(harness::guest("count"));
    let file = dir.path().join("http-to-postgres.json");
    std::fs::write(&file, config.to_string()).unwrap();
    // Before setup the table is missing, and `validate --connect` says so.
    let output = plumber_cli(&["validate", "--connect"], &file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("at `to.table`") && stderr.contains("name_counts"),
        "{stderr}"
    );
    let done = succeeded(plumber_cli(&["setup"], &file), "plumber setup");
    assert!(
        done.contains(r#"to: CREATE TABLE "name_counts" ("line" TEXT, "name" TEXT, "plumber_epoch" BIGINT NOT NULL)"#),
        "{done}"
    );
    let again = succeeded(plumber_cli(&["setup"], &file), "plumber setup, again");
    assert!(
        again.contains("to: table `name_counts`") && again.contains("has its columns"),
        "{again}"
    );
    succeeded(
        plumber_cli(&["validate", "--connect"], &file),
        "validate --connect",
    );
    let config = plumber::config::PipelineConfig::parse(
        &config.to_string(),
        "http-to-postgres.json",
        &examples,
    )
    .expect("config");
    let state = config.open_state().await.unwrap();
    let builder = config
        .builder(state)
        .await
        .expect("bind and connect")
        .runtime(plumber::runtime::Runtime::new(Some(harness::cache_dir())).unwrap());
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/events");
    for body in [
        serde_json::json!([{ "value": "ada" }, { "value": "grace" }]),
        serde_json::json!({ "value": "ada" }),
    ] {
        let answer = client.post(&url).json(&body).send().await.expect("POST");
        assert_eq!(answer.status(), 202);
    }
    // 202 means committed: the rows are there now.
    let rows = db
        .rows("SELECT name, line FROM name_counts ORDER BY line")
        .await;
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
        .collect();
    assert_eq!(
        rows,
        [["ada", "ada 1"], ["ada", "ada 2"], ["grace", "grace 1"]]
    );
    handle.shutdown();
    running.await.unwrap().expect("run");
}
