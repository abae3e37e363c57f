//! Files: a followed source (growth, partial lines, rotation by rename) and
//! a sink rotated by size, recovered exactly after a crash.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, CheckpointRecord};
use plumber::config::ReadStandard;
use plumber::pipeline::Pipeline;
use plumber::state::{MemoryState, SharedState, SledState};
use plumber::streams::{channel_sink, ArraySource, FilePosition, FileSource, OnMissingFile};
use plumber::ErrorChain;
use plumber::Event;
use tokio::sync::mpsc;

fn append(path: &std::path::Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

async fn take(out: &mut mpsc::Receiver<Event>, n: usize) -> Vec<String> {
    let mut values = Vec::new();
    for _ in 0..n {
        let event = tokio::time::timeout(Duration::from_secs(10), out.recv())
            .await
            .expect("an event within 10 s")
            .expect("the pipeline is running");
        values.push(event.value_lossy().into_owned());
    }
    values
}

#[tokio::test]
async fn a_followed_file_is_read_as_it_grows_and_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "one\ntwo\n");
    let state: SharedState = Arc::new(MemoryState::new());
    let (sink, mut out) = channel_sink(16);
    let builder = Pipeline::builder("follow")
        .state(state.clone())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(20)))
        .from(FileSource::new(&path).follow(Duration::from_millis(10)))
        .to(sink);
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());

    assert_eq!(take(&mut out, 2).await, ["one", "two"]);
    // A line is taken only once its newline is written.
    append(&path, "thr");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(out.try_recv().is_err(), "a partial line was taken");
    append(&path, "ee\n");
    assert_eq!(take(&mut out, 1).await, ["three"]);

    // Rotation by rename: the last lines of the old file, then the new file.
    append(&path, "four\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, "five\nsix\n");
    assert_eq!(take(&mut out, 3).await, ["four", "five", "six"]);

    handle.shutdown();
    let report = running.await.unwrap().expect("run");
    assert_eq!(report.events_out, 6);
    // The committed position is in the new file, after "six".
    let position = report
        .last_checkpoint
        .unwrap()
        .position
        .decode::<FilePosition>()
        .unwrap();
    assert_eq!(position.offset, 9);
    assert_eq!(position.file.inode, Some(inode(&path)));
    assert_eq!(
        position.file.head_bytes, 9,
        "the fingerprint covers the new file's 9 bytes"
    );
}

#[tokio::test]
async fn a_followed_file_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.txt");
    append(&path, "a\nb\n");
    let state: SharedState = Arc::new(MemoryState::new());
    for expected in [vec!["a", "b"], vec!["c"]] {
        let (sink, mut out) = channel_sink(16);
        let builder = Pipeline::builder("resume-follow")
            .state(state.clone())
            .from(FileSource::new(&path).follow(Duration::from_millis(10)))
            .to(sink);
        let handle = builder.handle();
        let running = tokio::spawn(builder.run());
        assert_eq!(take(&mut out, expected.len()).await, expected);
        handle.shutdown();
        running.await.unwrap().expect("run");
        append(&path, "c\n");
    }
}

/// Dead letters written to a file sink are JSON lines with the event and
/// the headers saying why, where and when; a file source with `"format":
/// "json"` reads them back as the same events (a value that is not UTF-8
/// included, through `value_hex`).
#[tokio::test]
async fn dead_letters_in_a_file_are_json_lines_that_read_back_with_their_headers() {
    use plumber::dead_letter::{ERROR_HEADER, REASON_HEADER, STEP_HEADER, TIME_HEADER};
    use plumber::step::{OnError, WasmPipe};
    use plumber::streams::{FileSink, LineFormat};

    let dir = tempfile::tempdir().unwrap();
    let letters = dir.path().join("dead.jsonl");
    let input = vec![
        Event::new("plain"),
        Event {
            headers: vec![("origin".into(), "test".into())],
            ..Event::new("with\nnewline")
                .with_key("k")
                .with_timestamp(1_800_000_000_000)
        },
        Event::new(vec![0xff, 0x00, b'x']).with_key(vec![0xfe]),
    ];
    let (sink, _out) = channel_sink(16);
    let report = Pipeline::builder("dead-file")
        .runtime(plumber::runtime::Runtime::new(Some(plumber_tests::cache_dir())).unwrap())
        .from(plumber::streams::ArraySource::new(input.clone()))
        .dead_letter(FileSink::new(&letters))
        .then(
            WasmPipe::new("failing", plumber_tests::guest("probe"))
                .config(serde_json::json!({"mode": "error", "bytes": 3}))
                .on_error(OnError::DeadLetter),
        )
        .to(sink)
        .run()
        .await
        .expect("dead-lettering keeps the pipeline running");
    assert_eq!(report.events_out, 0);

    let (sink, mut out) = channel_sink(16);
    Pipeline::builder("read-dead")
        .from(FileSource::new(&letters).format(LineFormat::Json))
        .to(sink)
        .run()
        .await
        .expect("the dead letters read back as JSON events");
    let mut read = Vec::new();
    while let Ok(event) = out.try_recv() {
        read.push(event);
    }
    assert_eq!(read.len(), input.len());
    for (letter, original) in read.iter().zip(&input) {
        assert_eq!(letter.value, original.value);
        assert_eq!(letter.key, original.key);
        assert_eq!(letter.timestamp, original.timestamp);
        let header = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} header in {letter:?}"))
        };
        assert_eq!(header(REASON_HEADER), "error");
        assert_eq!(header(STEP_HEADER), "failing");
        assert!(header(ERROR_HEADER).ends_with(": eee"), "{letter:?}");
        assert!(header(TIME_HEADER).parse::<u64>().unwrap() > 1_600_000_000_000);
        for (name, value) in &original.headers {
            assert_eq!(header(name), value);
        }
    }
}

/// Runs a pipeline over `source` into a channel; returns the result and
/// the values read.
async fn read_all(
    source: FileSource,
) -> (
    Result<plumber::pipeline::RunReport, plumber::pipeline::PipelineError>,
    Vec<String>,
) {
    let (sink, mut out) = channel_sink(64);
    let collector = tokio::spawn(async move {
        let mut values = Vec::new();
        while let Some(event) = out.recv().await {
            values.push(event.value_lossy().into_owned());
        }
        values
    });
    let result = Pipeline::builder("capped")
        .batch_size(1)
        .from(source)
        .to(sink)
        .run()
        .await;
    (result, collector.await.unwrap())
}

fn line_too_long(
    result: &Result<plumber::pipeline::RunReport, plumber::pipeline::PipelineError>,
) -> Option<(u64, u64)> {
    match result {
        Err(plumber::pipeline::PipelineError::Stream {
            source: plumber::streams::StreamError::LineTooLong { offset, max, .. },
            ..
        }) => Some((*offset, *max)),
        _ => None,
    }
}

/// One 50 MB line with the default cap (16 MiB): the pipeline stops with
/// an error naming the file, the line's offset and the cap, rather than
/// reading the whole line into memory.
#[tokio::test]
async fn a_line_past_the_default_cap_is_an_error_naming_file_offset_and_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.txt");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        file.write_all(b"first\n").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..50 {
            file.write_all(&chunk).unwrap();
        }
        file.write_all(b"\nlast\n").unwrap();
    }
    let (result, values) = read_all(FileSource::new(&path)).await;
    assert_eq!(line_too_long(&result), Some((6, 16 << 20)), "{result:?}");
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(
        text.contains("huge.txt")
            && text.contains("at byte 6")
            && text.contains("max_line_bytes (16777216 bytes)"),
        "{text}"
    );
    assert_eq!(values, ["first"]);
}

/// With a small configured cap: a line of exactly the cap passes, one byte
/// more is refused (also in follow mode, before its newline is written).
#[tokio::test]
async fn a_configured_line_cap_lets_lines_up_to_it_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.txt");
    append(&path, "abc\n0123456789\nxyz\n");
    let (result, values) = read_all(FileSource::new(&path).max_line_bytes(10)).await;
    result.expect("lines up to the cap pass");
    assert_eq!(values, ["abc", "0123456789", "xyz"]);

    append(&path, "0123456789A\n");
    let (result, values) = read_all(FileSource::new(&path).max_line_bytes(10)).await;
    assert_eq!(line_too_long(&result), Some((19, 10)), "{result:?}");
    assert_eq!(values, ["abc", "0123456789", "xyz"]);

    // Following: a partial line already past the cap is refused at once.
    let followed = dir.path().join("followed.txt");
    append(&followed, "ok\n0123456789AB");
    let (result, values) = tokio::time::timeout(
        Duration::from_secs(10),
        read_all(
            FileSource::new(&followed)
                .max_line_bytes(10)
                .follow(Duration::from_millis(10)),
        ),
    )
    .await
    .expect("the followed source stops on the long line");
    assert_eq!(line_too_long(&result), Some((3, 10)), "{result:?}");
    assert_eq!(values, ["ok"]);

    // From JSON: `max_line_bytes` on the file source, 0 refused.
    let config = |max: u64| {
        format!(
            r#"{{"name": "p", "from": {{"type": "file", "path": "lines.txt", "max_line_bytes": {max}}},
                "to": {{"type": "discard"}}}}"#
        )
    };
    plumber::config::PipelineConfig::parse(&config(10), "p.json", dir.path()).expect("valid");
    let error = plumber::config::PipelineConfig::parse(&config(0), "p.json", dir.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("from.max_line_bytes"), "{error}");
}

/// Runs a followed file source under `name` until `expected` values came
/// out, then stops it cleanly (a final checkpoint); returns everything it
/// wrote, so a value repeated or read past is seen.
async fn follow_until(
    state: &SharedState,
    name: &str,
    source: FileSource,
    expected: usize,
) -> Vec<String> {
    let (sink, mut out) = channel_sink(64);
    let builder = Pipeline::builder(name)
        .state(state.clone())
        .checkpoint(CheckpointPolicy::at_end_only())
        .from(source.follow(Duration::from_millis(10)))
        .to(sink);
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());
    let mut values = take(&mut out, expected).await;
    handle.shutdown();
    running.await.unwrap().expect("run");
    while let Some(event) = out.recv().await {
        values.push(event.value_lossy().into_owned());
    }
    values
}

/// The file is rotated by rename while the pipeline is stopped, after more
/// lines were written to it: the restart reads the rest of the rotated file
/// from the checkpoint's offset, then the new file from its start, nothing
/// lost and nothing repeated.
#[tokio::test]
async fn a_followed_file_rotated_while_stopped_resumes_in_the_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let state: SharedState = Arc::new(MemoryState::new());
    append(&path, "a\nb\nc\n");
    assert_eq!(
        follow_until(&state, "rotated", FileSource::new(&path), 3).await,
        ["a", "b", "c"]
    );

    // While stopped: the writer goes on, rotates, starts a new file longer
    // than the checkpoint's offset (so an offset applied to it would land
    // inside its first line).
    append(&path, "d\ne\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, "new file, line one\nf\n");
    assert_eq!(
        follow_until(&state, "rotated", FileSource::new(&path), 4).await,
        ["d", "e", "new file, line one", "f"]
    );

    // The position is now in the new file: a restart reads only what is new.
    append(&path, "g\n");
    assert_eq!(
        follow_until(&state, "rotated", FileSource::new(&path), 1).await,
        ["g"]
    );
}

/// The same without following: the restart reads the rotated file's rest,
/// then the new file, and ends; a second restart reads nothing.
#[tokio::test]
async fn a_file_rotated_while_stopped_is_finished_before_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.txt");
    let state: SharedState = Arc::new(MemoryState::new());
    let run = || {
        plumber_tests::run_collect(
            Pipeline::builder("rotated-batch")
                .state(state.clone())
                .from(FileSource::new(&path)),
        )
    };
    append(&path, "a\nb\nc\n");
    let (result, values) = run().await;
    result.expect("first run");
    assert_eq!(values, ["a", "b", "c"]);

    append(&path, "d\n");
    std::fs::rename(&path, dir.path().join("batch.txt.1")).unwrap();
    append(&path, "new file, line one\n");
    let (result, values) = run().await;
    result.expect("run after the rotation");
    assert_eq!(values, ["d", "new file, line one"]);

    let (result, values) = run().await;
    result.expect("run with nothing new");
    assert!(values.is_empty(), "read again: {values:?}");
}

/// What a checkpoint's offset belonged to is gone: the file at the path is
/// another one (a copy of the old content at `path.1` does not count, nor a
/// file rewritten in place), and the pipeline refuses to start, naming the
/// path, rather than read the new file from the old offset; told to, it
/// reads the new file from its start instead.
#[tokio::test]
async fn a_replaced_file_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.txt");
    let state: SharedState = Arc::new(MemoryState::new());
    let run_with = |on_missing_file| {
        plumber_tests::run_collect(
            Pipeline::builder("replaced")
                .state(state.clone())
                .from(FileSource::new(&path).on_missing_file(on_missing_file)),
        )
    };
    let run = || run_with(OnMissingFile::Fail);
    append(&path, "a\nb\nc\n");
    let (result, values) = run().await;
    result.expect("first run");
    assert_eq!(values, ["a", "b", "c"]);

    let refused =
        |result: Result<plumber::pipeline::RunReport, plumber::pipeline::PipelineError>| {
            let text = ErrorChain(&result.expect_err("refused")).to_string();
            assert!(
                text.contains(&path.display().to_string())
                    && text.contains("inode")
                    && text.contains("on_missing_file"),
                "{text}"
            );
        };
    // Rewritten in place (same inode): other content, longer than the offset.
    std::fs::write(&path, "rewritten in place\n").unwrap();
    let (result, values) = run().await;
    assert!(values.is_empty(), "{values:?}");
    refused(result);

    // Replaced by another file (renamed over it, as editors save), with a
    // copy of the old content beside it.
    std::fs::write(dir.path().join("input.txt.1"), "a\nb\nc\n").unwrap();
    let replacement = dir.path().join("replacement");
    append(&replacement, "an unrelated file\n");
    std::fs::rename(&replacement, &path).unwrap();
    let (result, values) = run().await;
    assert!(values.is_empty(), "{values:?}");
    refused(result);

    // Told to start over with the file at the path.
    let (result, values) = run_with(OnMissingFile::Start).await;
    result.expect("run reading the new file");
    assert_eq!(values, ["an unrelated file"]);
    // Its position is now the new file's.
    let (result, values) = run().await;
    result.expect("run with nothing new");
    assert!(values.is_empty(), "read again: {values:?}");

    // The option from JSON.
    let config = r#"{"name": "p", "from": {"type": "file", "path": "input.txt", "on_missing_file": "start"},
        "to": {"type": "discard"}}"#;
    plumber::config::PipelineConfig::parse(config, "p.json", dir.path()).expect("valid");
}

/// A followed file truncated in place while the pipeline is stopped holds
/// no longer what the offset counted: refused (while running, a truncation
/// is followed like a rotation, since nothing was missed).
#[tokio::test]
async fn a_followed_file_truncated_while_stopped_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let state: SharedState = Arc::new(MemoryState::new());
    append(&path, "a\nb\nc\n");
    assert_eq!(
        follow_until(&state, "truncated", FileSource::new(&path), 3).await,
        ["a", "b", "c"]
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2)
        .unwrap();
    let (sink, _out) = channel_sink(16);
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        Pipeline::builder("truncated")
            .state(state.clone())
            .from(FileSource::new(&path).follow(Duration::from_millis(10)))
            .to(sink)
            .run(),
    )
    .await
    .expect("refused at start")
    .expect_err("refused");
    let text = ErrorChain(&error).to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("truncated"),
        "{text}"
    );
}

/// A checkpoint record as versions before file identities wrote it (a bare
/// byte offset) is still read, for the sled and the memory-snapshot
/// backends: the offset applies to the file at the path, and the first
/// commit stores the file's identity with it, even when nothing new was
/// read before it.
#[tokio::test]
async fn a_bare_offset_record_is_migrated_at_the_first_commit() {
    for backend in ["sled", "memory snapshot"] {
        let dir = tempfile::tempdir().unwrap();
        let open = || -> SharedState {
            match backend {
                // A sled database dropped a moment ago keeps its lock until
                // its flusher thread ends: open again until it is free.
                "sled" => {
                    let mut opened = None;
                    let _ = plumber_tests::wait::wait_until(Duration::from_secs(10), || {
                        opened = SledState::open(dir.path().join("state")).ok();
                        opened.is_some()
                    });
                    Arc::new(opened.expect("the sled database opens again within 10 s"))
                }
                _ => {
                    Arc::new(MemoryState::with_snapshot(dir.path().join("state.snapshot")).unwrap())
                }
            }
        };
        let path = dir.path().join("in.txt");
        append(&path, "a\nb\nc\n");
        {
            // The offset after "a\n", in the earlier form.
            let earlier = CheckpointRecord::from_bytes(
                br#"{"pipeline":"default/migrate","epoch":4,"position":{"offset":2},"committed_at_ms":1700000000000,"sink_position":null,"fence":0}"#,
            )
            .unwrap();
            open().commit(&earlier, &[]).await.unwrap();
        }

        // Restart: "b" and "c" are past the offset; then a checkpoint.
        let state = open();
        let (sink, mut out) = channel_sink(16);
        let builder = Pipeline::builder("migrate")
            .state(state.clone())
            .checkpoint(CheckpointPolicy::at_end_only())
            .from(FileSource::new(&path).follow(Duration::from_millis(10)))
            .to(sink);
        let handle = builder.handle();
        let running = tokio::spawn(builder.run());
        assert_eq!(take(&mut out, 2).await, ["b", "c"], "{backend}");
        handle.checkpoint_now().await.unwrap();
        handle.shutdown();
        let report = running.await.unwrap().expect("run");
        assert_eq!(report.resumed_from.unwrap().epoch, 4, "{backend}");
        drop(state);

        // Stored in the new form: the offset with the file's identity.
        let record = open()
            .last_checkpoint("default/migrate")
            .await
            .unwrap()
            .unwrap();
        let position = record.position.decode::<FilePosition>().unwrap();
        assert_eq!(position.offset, 6, "{backend}");
        assert_eq!(position.file.inode, Some(inode(&path)), "{backend}");

        // And with nothing read at all: an idle restart from a bare offset
        // at the end commits the new form at its first checkpoint.
        let earlier = CheckpointRecord::from_bytes(
            br#"{"pipeline":"default/idle","epoch":1,"position":{"offset":6},"committed_at_ms":1700000000000,"sink_position":null,"fence":0}"#,
        )
        .unwrap();
        let state = open();
        state.commit(&earlier, &[]).await.unwrap();
        let (sink, _out) = channel_sink(16);
        let builder = Pipeline::builder("idle")
            .state(state.clone())
            .checkpoint(CheckpointPolicy::at_end_only())
            .from(FileSource::new(&path).follow(Duration::from_millis(10)))
            .to(sink);
        let handle = builder.handle();
        let running = tokio::spawn(builder.run());
        handle.checkpoint_now().await.unwrap();
        let record = state
            .last_checkpoint("default/idle")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.epoch, 2, "{backend}");
        let position = record.position.decode::<FilePosition>().unwrap();
        assert_eq!(
            (position.offset, position.file.head_bytes),
            (6, 6),
            "{backend}"
        );
        handle.shutdown();
        running.await.unwrap().expect("run");
    }
}

/// A pipeline whose source was changed under the same name: the file
/// source's checkpoint is refused by an array source (before, its byte
/// offset was taken as a count of events to skip), with the way out.
#[tokio::test]
async fn a_position_of_another_source_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    append(&path, "a\nb\nc\n");
    let state: SharedState = Arc::new(MemoryState::new());
    let (result, values) = plumber_tests::run_collect(
        Pipeline::builder("changed")
            .state(state.clone())
            .from(FileSource::new(&path)),
    )
    .await;
    result.expect("file run");
    assert_eq!(values.len(), 3);

    let (result, values) =
        plumber_tests::run_collect(Pipeline::builder("changed").state(state.clone()).from(
            ArraySource::from_strings(["1", "2", "3", "4", "5", "6", "7", "8"]),
        ))
        .await;
    assert!(values.is_empty(), "{values:?}");
    let text = ErrorChain(&result.expect_err("refused")).to_string();
    assert!(
        text.contains("array source")
            && text.contains("a `file` position")
            && text.contains("another kind of source"),
        "{text}"
    );
}
