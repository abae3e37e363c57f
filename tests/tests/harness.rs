//! The harness itself: each real server answers on its own loopback port
//! while it runs and is gone once dropped (no test leaks a server), and the
//! `plumber` binary is built beside the tests that run it.

use std::net::{Ipv4Addr, TcpStream};

use plumber_tests::{plumber_binary, raw_command, NatsServer, PostgresServer, RedisServer};

/// Whether something accepts connections on the loopback `port`.
fn listening(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[test]
fn a_redis_server_answers_until_it_is_dropped() {
    let server = RedisServer::start();
    let port = server.port();
    assert_eq!(raw_command(port, &[b"PING"]).unwrap(), "+PONG");
    let other = RedisServer::start();
    assert_ne!(other.port(), port, "two servers on one port");
    drop(server);
    assert!(
        !listening(port),
        "redis-server still listens after the drop"
    );
    assert_eq!(raw_command(other.port(), &[b"PING"]).unwrap(), "+PONG");
}

#[tokio::test]
async fn a_nats_server_with_jetstream_answers_until_it_is_dropped() {
    let server = NatsServer::start();
    let port = server.port();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HARNESS".to_owned(),
        subjects: vec!["harness".to_owned()],
        ..Default::default()
    })
    .await
    .expect("JetStream is enabled");
    drop(server);
    assert!(!listening(port), "nats-server still listens after the drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_server_answers_until_it_is_dropped() {
    let server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let port = server.port();
    let pool = sqlx::PgPool::connect(&server.url()).await.expect("connect");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("a query");
    assert_eq!(one, 1);
    pool.close().await;
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(!listening(port), "postgres still listens after the drop");
}

#[test]
fn the_plumber_binary_is_built_in_the_tests_own_profile() {
    let binary = plumber_binary();
    let exe = std::env::current_exe().unwrap();
    // <profile>/deps/<this test> and <profile>/plumber
    assert_eq!(
        binary.parent(),
        exe.parent().and_then(|deps| deps.parent()),
        "{} is not beside {}",
        binary.display(),
        exe.display()
    );
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("plumber "));
    assert_eq!(plumber_binary(), binary, "built once per process");
}
