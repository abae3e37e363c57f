//! The host's micro-paths, one divan benchmark each:
//!
//! - a pipe's write set: 1024 `add`s to 256 distinct keys (a batch of a
//!   running count, repeated keys as in text) and 1024 `set`s;
//! - the packed batch encoding: writing 1024 events of 100 bytes with a
//!   key, and reading them back;
//! - a checkpoint's commit of 1000 changed keys, on the memory and the sled
//!   backend, and on Redis (a `redis-server` the harness starts on a free
//!   loopback port).
//!
//! `cargo bench -p plumber-tests --bench micro` (release build).

use std::sync::Arc;

use plumber::checkpoint::{CheckpointRecord, Position};
use plumber::state::{
    KeyHasher, MemoryState, Namespace, PipeState, SharedState, WriteMode, WriteSet,
};

fn main() {
    divan::main();
}

/// A runtime for the async state calls (one per benchmark, outside the
/// measured closure).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const BATCH: usize = 1024;

fn keys(distinct: usize) -> Vec<String> {
    // A skewed draw, as words in text: key i % distinct, scattered.
    (0..BATCH)
        .map(|i| format!("word{}", (i * 7919) % distinct))
        .collect()
}

#[divan::bench_group]
mod write_set {
    use super::*;

    #[divan::bench]
    fn add_1024_to_256_keys(bencher: divan::Bencher) {
        let rt = runtime();
        let keys = keys(256);
        let backend: SharedState = Arc::new(MemoryState::new());
        bencher.bench_local(|| {
            let mut state = PipeState::new(
                backend.clone(),
                Namespace::for_pipe("bench", "count"),
                WriteMode::Checkpointed,
            );
            rt.block_on(async {
                for key in &keys {
                    divan::black_box(state.add(key, 1).await.unwrap());
                }
            });
            state.end_call(true);
            divan::black_box(state.take_writes().len())
        });
    }

    #[divan::bench]
    fn set_1024(bencher: divan::Bencher) {
        let rt = runtime();
        let keys = keys(BATCH);
        let backend: SharedState = Arc::new(MemoryState::new());
        bencher.bench_local(|| {
            let mut state = PipeState::new(
                backend.clone(),
                Namespace::for_pipe("bench", "count"),
                WriteMode::Checkpointed,
            );
            rt.block_on(async {
                for key in &keys {
                    state.set(key, b"12345".to_vec()).await.unwrap();
                }
            });
            state.end_call(true);
            divan::black_box(state.take_writes().len())
        });
    }
}

#[divan::bench_group]
mod packed {
    use plumber_wire::{BatchReader, BatchWriter};

    const VALUE: [u8; 100] = [b'x'; 100];

    fn encoded() -> Vec<u8> {
        let mut buffer = Vec::new();
        let mut writer = BatchWriter::new(&mut buffer, None);
        for i in 0..super::BATCH as u64 {
            writer.push(Some(b"auction-1234"), &VALUE, Some(i), []);
        }
        writer.finish();
        buffer
    }

    #[divan::bench]
    fn encode_1024_events(bencher: divan::Bencher) {
        let mut buffer = Vec::with_capacity(160 * super::BATCH);
        bencher.bench_local(|| {
            let mut writer = BatchWriter::new(&mut buffer, None);
            for i in 0..super::BATCH as u64 {
                writer.push(Some(b"auction-1234"), &VALUE, Some(i), []);
            }
            writer.finish();
            divan::black_box(buffer.len())
        });
    }

    #[divan::bench]
    fn decode_1024_events(bencher: divan::Bencher) {
        let bytes = encoded();
        bencher.bench_local(|| {
            let batch = BatchReader::new(divan::black_box(&bytes)).unwrap();
            let mut total = 0;
            for event in batch.events() {
                total += event.unwrap().value.len();
            }
            divan::black_box(total)
        });
    }
}

/// 1000 changed keys of a checkpoint.
fn write_set() -> WriteSet {
    let mut writes = WriteSet::with_hasher(KeyHasher::default());
    let namespace = Namespace::for_pipe("bench", "count");
    for i in 0..1000 {
        writes.insert(
            namespace.key(&format!("word{i}")),
            Some(i.to_string().into_bytes()),
        );
    }
    writes
}

fn commit_on(bencher: divan::Bencher, rt: &tokio::runtime::Runtime, backend: SharedState) {
    let writes = [write_set()];
    let mut epoch = 0;
    bencher.bench_local(|| {
        epoch += 1;
        let record = CheckpointRecord::new("default/bench", epoch, Position::Offset(epoch));
        rt.block_on(backend.commit(&record, &writes)).unwrap();
    });
}

#[divan::bench_group(sample_count = 50)]
mod commit_1000_keys {
    use super::*;

    #[divan::bench]
    fn memory(bencher: divan::Bencher) {
        commit_on(bencher, &runtime(), Arc::new(MemoryState::new()));
    }

    #[divan::bench]
    fn sled(bencher: divan::Bencher) {
        let dir = tempfile::tempdir().unwrap();
        let backend = plumber::state::SledState::open(dir.path().join("db")).unwrap();
        commit_on(bencher, &runtime(), Arc::new(backend));
    }

    #[divan::bench]
    fn redis(bencher: divan::Bencher) {
        let server = plumber_tests::RedisServer::start();
        let rt = runtime();
        let backend = rt
            .block_on(plumber::state::RedisState::connect(
                &server.url(),
                plumber::state::RedisOptions::default(),
            ))
            .unwrap();
        commit_on(bencher, &rt, Arc::new(backend));
    }
}
