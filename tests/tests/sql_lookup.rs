//! The lookup join against SQL (`{"type": "lookup", "table": {"type":
//! "sql", …}}`): `plumber run` on a real PostgreSQL server and on SQLite,
//! each event followed by the row its key finds, checked against the rows
//! the test wrote; and the config's refusals with their JSON paths.

use std::path::Path;
use std::process::Command;

use plumber::config::{standard_registry, ConfigError, PipelineConfig};
use plumber_tests as harness;
use plumber_tests::PostgresServer;
use serde_json::{json, Value};
use sqlx::AssertSqlSafe;

/// Skus with a row: `s<n>` for n below `SKUS`, except multiples of 3.
const SKUS: u64 = 300;
/// Orders name skus up to this (some beyond any row).
const ORDER_SKUS: u64 = 400;
const ORDERS: u64 = 5_000;

fn has_row(n: u64) -> bool {
    n < SKUS && !n.is_multiple_of(3)
}

fn price(n: u64) -> u64 {
    n * 7 + 1
}

/// The table, as statements.
fn table_statements() -> Vec<String> {
    let mut statements =
        vec!["CREATE TABLE prices (sku TEXT PRIMARY KEY, price INTEGER NOT NULL)".to_owned()];
    for n in (0..SKUS).filter(|&n| has_row(n)) {
        statements.push(format!(
            "INSERT INTO prices (sku, price) VALUES ('s{n}', {})",
            price(n)
        ));
    }
    statements
}

/// The orders as JSON lines (keyed by sku), and the output a lookup join
/// `how` gives: each order, then its row when it has one.
fn orders_and_expected(how: &str) -> (String, Vec<String>) {
    let mut input = String::new();
    let mut expected = Vec::new();
    for i in 0..ORDERS {
        // Repeated keys within and across batches: the cache's work.
        let n = (i * 13) % ORDER_SKUS;
        let line = json!({"value": format!("order-{i}"), "key": format!("s{n}")});
        input.push_str(&line.to_string());
        input.push('\n');
        if has_row(n) {
            expected.push(format!("order-{i}"));
            expected.push(format!("{{\"sku\":\"s{n}\",\"price\":{}}}", price(n)));
        } else if how == "left" {
            expected.push(format!("order-{i}"));
        }
    }
    (input, expected)
}

/// Runs the lookup join on `url` with `query` and returns the output lines.
fn run_lookup(url: &str, query: &str, how: &str, dir: &Path) -> Vec<String> {
    let (input, expected) = orders_and_expected(how);
    let orders = dir.join(format!("orders-{how}.jsonl"));
    std::fs::write(&orders, input).unwrap();
    let out = dir.join(format!("out-{how}.txt"));
    let config = json!({
        "name": format!("lookup-{how}"),
        "state": {"type": "memory"},
        "batch_size": 64,
        "from": {"type": "file", "path": orders, "format": "json"},
        "pipeline": [{
            "type": "lookup", "name": "prices",
            "table": {"type": "sql", "url": url, "query": query},
            "how": how, "cache_ttl_ms": 60_000, "cache_max_keys": 50
        }],
        "to": {"type": "file", "path": out}
    });
    let path = dir.join(format!("lookup-{how}.json"));
    std::fs::write(&path, config.to_string()).unwrap();
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(&path)
        .output()
        .expect("run plumber");
    assert!(
        output.status.success(),
        "plumber run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got.len(), expected.len(), "{how}: output lines");
    for (index, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "{how}: line {index}");
    }
    got
}

#[tokio::test]
async fn each_order_gets_its_row_from_postgresql() {
    let server = PostgresServer::start();
    let url = server.url();
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    for statement in table_statements() {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let query = "SELECT row_to_json(p)::text FROM prices p WHERE sku = $1";
    let inner = run_lookup(&url, query, "inner", dir.path());
    let left = run_lookup(&url, query, "left", dir.path());
    assert!(left.len() > inner.len());
}

#[tokio::test]
async fn each_order_gets_its_row_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prices.db");
    let admin = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .unwrap();
    for statement in table_statements() {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let url = format!("sqlite://{}", db.display());
    let query = "SELECT json_object('sku', sku, 'price', price) FROM prices WHERE sku = ?";
    run_lookup(&url, query, "left", dir.path());
}

/// Reads `config` as `plumber run` does: the JSON path and message of its error.
fn refusal(step: Value) -> (String, String) {
    let config = json!({
        "name": "l", "state": {"type": "memory"},
        "from": {"type": "file", "path": "in.txt"},
        "pipeline": [step],
        "to": {"type": "stdout"}
    });
    match PipelineConfig::parse_with(
        &standard_registry(),
        &config.to_string(),
        "lookup.json",
        Path::new("/lookup-test"),
    ) {
        Ok(_) => panic!("accepted: {config}"),
        Err(ConfigError::Invalid { path, message, .. }) => (path, message),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn a_bad_lookup_step_is_refused_with_its_path() {
    let table = json!({"type": "sql", "url": "postgres://u@127.0.0.1/db", "query": "SELECT 'x'"});
    let (path, message) = refusal(json!({"type": "lookup", "name": "p",
        "table": {"type": "redis", "url": "redis://x"}}));
    assert_eq!(path, "pipeline[0].table.type");
    assert!(message.contains("`sql`"), "{message}");
    let (path, message) = refusal(json!({"type": "lookup", "name": "p",
        "table": {"type": "sql", "url": "postgres://u@127.0.0.1/db"}}));
    assert!(path.starts_with("pipeline[0].table"), "{path}");
    assert!(message.contains("query"), "{message}");
    let (path, _) = refusal(json!({"type": "lookup", "name": "p",
        "table": {"type": "sql", "url": "postgres://u@127.0.0.1/db", "query": "SELECT 1", "ttl": 5}}));
    assert_eq!(path, "pipeline[0].table.ttl");
    let (path, _) = refusal(json!({"type": "lookup", "name": "p", "table": table,
        "cache_max_keys": 0}));
    assert_eq!(path, "pipeline[0].cache_max_keys");
    let (path, _) = refusal(json!({"type": "lookup", "name": "p", "table": table,
        "how": "outer"}));
    assert_eq!(path, "pipeline[0].how");
    let (path, _) = refusal(json!({"type": "lookup", "name": "p", "table": table,
        "cache": {}}));
    assert_eq!(path, "pipeline[0].cache");
}
