//! What the window test files share (`window_aggregate.rs`,
//! `window_triggers.rs`; `plumber_test.rs` runs `plumber test` the same
//! way): input lines of events and watermarks, window configs, the lines
//! the `trigger-report` pipe writes per released window, and runs of
//! `plumber test` and of `plumber run` (also SIGKILLed mid-stream) in a
//! temporary directory, checked against a test's reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// One line of input: an event or a watermark.
#[derive(Clone, Debug)]
pub enum Line {
    Event {
        key: String,
        value: String,
        timestamp: u64,
    },
    Watermark(u64),
}

pub fn event(key: &str, value: impl Into<String>, timestamp: u64) -> Line {
    Line::Event {
        key: key.to_owned(),
        value: value.into(),
        timestamp,
    }
}

/// Events `0..n` of `keys` keys (`k<i % keys>`), value `i`, at `i * step` ms.
pub fn numbered(n: u64, keys: u64, step: u64) -> Vec<Line> {
    (0..n)
        .map(|i| event(&format!("k{}", i % keys), i.to_string(), i * step))
        .collect()
}

/// `lines` as `plumber test` input (and, without watermarks, as a JSON
/// file source's).
pub fn input_jsonl(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|line| match line {
            Line::Event {
                key,
                value,
                timestamp,
            } => json!({ "value": value, "key": key, "timestamp": timestamp }).to_string() + "\n",
            Line::Watermark(w) => json!({ "watermark": w }).to_string() + "\n",
        })
        .collect()
}

/// A released window as a test's reference has it.
pub trait Fire {
    /// The window's key (empty for none).
    fn key(&self) -> &str;
    /// The line `trigger-report` writes for it:
    /// `<key>,<start>,<end>,<events>,<first>,<last>`.
    fn line(&self) -> String;
    /// The event the sink gets for it.
    fn expected_event(&self) -> Value;
}

/// Fires per key, in order: the order the engine promises.
pub fn per_key(fires: &[impl Fire]) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for fire in fires {
        keys.entry(fire.key().to_owned())
            .or_default()
            .push(fire.line());
    }
    keys
}

/// The lines of the file sink `out` per key (the first field), in order.
pub fn output_per_key(out: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let key = line.split(',').next().unwrap().to_owned();
        keys.entry(key).or_default().push(line.to_owned());
    }
    keys
}

/// A keyed event-time tumbling window `w` of `size` ms.
pub fn tumbling(size: u64) -> Value {
    json!({ "type": "window", "name": "w", "window": "tumbling", "size_ms": size,
            "time": "event", "key_by": "key" })
}

/// A keyed event-time sliding window `w` of `size` ms every `slide` ms.
pub fn sliding(size: u64, slide: u64) -> Value {
    json!({ "type": "window", "name": "w", "window": "sliding", "size_ms": size,
            "slide_ms": slide, "time": "event", "key_by": "key" })
}

/// The `trigger-report` pipe: a line per batch a window released.
pub fn report() -> Value {
    json!({ "type": "wasm", "name": "report", "module": crate::guest("trigger-report") })
}

/// A temporary directory for a test's configs, input and output.
pub struct Dir(tempfile::TempDir);

impl Dir {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn config(&self, name: &str, config: &Value) -> PathBuf {
        self.write(name, &serde_json::to_string_pretty(config).unwrap())
    }

    /// Pipeline `name` of `steps`, for `plumber test` (which replaces its
    /// source and sink).
    pub fn test_config(&self, name: &str, steps: Vec<Value>) -> PathBuf {
        self.config(
            "test.json",
            &json!({
                "name": name,
                "state": { "type": "memory" },
                "from": { "type": "file", "path": self.path("unused-in.txt") },
                "pipeline": steps,
                "to": { "type": "file", "path": self.path("unused-out.txt") }
            }),
        )
    }
}

/// `plumber test CONFIG --input INPUT --expect EXPECT` with `extra`
/// arguments, logging warnings only.
pub fn plumber_test(config: &Path, input: &Path, expect: &Path, extra: &[&str]) -> Output {
    Command::new(crate::plumber_binary())
        .arg("--cache-dir")
        .arg(crate::cache_dir())
        .arg("test")
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--expect")
        .arg(expect)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs pipeline `name` of `steps` on `lines` through `plumber test` and
/// checks the output against `expected` (per key, in order).
pub fn check(name: &str, steps: Vec<Value>, lines: &[Line], expected: &[impl Fire]) {
    let dir = Dir::new();
    let config = dir.test_config(name, steps);
    let input = dir.write("in.jsonl", &input_jsonl(lines));
    let expect: String = expected
        .iter()
        .map(|fire| fire.expected_event().to_string() + "\n")
        .collect();
    let expect = dir.write("expect.jsonl", &expect);
    let output = plumber_test(&config, &input, &expect, &[]);
    assert!(
        output.status.success(),
        "plumber test: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `plumber test` of pipeline `name` of `steps` on three events, which
/// must refuse the config (exit 2); returns its stderr.
pub fn refused(name: &str, steps: Vec<Value>) -> String {
    let dir = Dir::new();
    let config = dir.test_config(name, steps);
    let input = dir.write("in.jsonl", &input_jsonl(&numbered(3, 1, 1)));
    let expect = dir.write("expect.jsonl", "");
    let output = plumber_test(&config, &input, &expect, &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `plumber test` of pipeline `name` of `steps` on `lines`, which must
/// stop with a failure (exit 1); returns its stderr.
pub fn failing(name: &str, steps: Vec<Value>, lines: &[Line]) -> String {
    let dir = Dir::new();
    let config = dir.test_config(name, steps);
    let input = dir.write("in.jsonl", &input_jsonl(lines));
    let expect = dir.write("expect.jsonl", "");
    let output = plumber_test(&config, &input, &expect, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// A `plumber run` pipeline `name` reading `lines` (JSON events) through
/// `steps` to a file, exactly once on sled: its config and its output.
pub fn run_config(dir: &Dir, name: &str, steps: Vec<Value>, lines: &[Line]) -> (PathBuf, PathBuf) {
    let events: Vec<Line> = lines
        .iter()
        .filter(|line| matches!(line, Line::Event { .. }))
        .cloned()
        .collect();
    let input = dir.write("in.jsonl", &input_jsonl(&events));
    let out = dir.path("out.txt");
    let config = dir.config(
        "run.json",
        &json!({
            "name": name,
            "delivery": "exactly_once",
            "state": { "type": "sled", "path": dir.path("state") },
            "checkpoint": { "interval_ms": 25 },
            "batch_size": 20,
            "from": { "type": "file", "path": input, "format": "json" },
            "pipeline": steps,
            "to": { "type": "file", "path": out }
        }),
    );
    (config, out)
}

/// `plumber run CONFIG` to its end, which must succeed.
pub fn run_to_end(config: &Path) {
    let output = crate::kills::plumber_run(config).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// SIGKILLs `plumber run` of [`run_config`] several times mid-stream,
/// restarts it on the same config and state, then lets it finish: every
/// window must come out exactly once, as in `expected` (what windows keep
/// is saved with each checkpoint, atomically with the source position).
pub fn exact_under_sigkill(
    name: &str,
    steps: Vec<Value>,
    lines: &[Line],
    expected: &[impl Fire],
    seed: u64,
) {
    let dir = Dir::new();
    let (config, out) = run_config(&dir, name, steps, lines);
    let full: u64 = expected.iter().map(|f| f.line().len() as u64 + 1).sum();
    let mut rng = crate::kills::Lcg(seed);
    let mut landed = 0;
    for _ in 0..4 {
        let target = crate::kills::file_len(&out) + full * rng.next_in(5, 20) / 100;
        let extra = std::time::Duration::from_millis(rng.next_in(0, 30));
        if crate::kills::kill_once_grown(
            &mut crate::kills::plumber_run(&config),
            &out,
            target,
            extra,
        ) {
            landed += 1;
        }
    }
    let output = crate::kills::plumber_run(&config).output().unwrap();
    assert!(
        output.status.success(),
        "final run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(landed >= 2, "only {landed} kills hit a running pipeline");
    assert_eq!(output_per_key(&out), per_key(expected));
}

/// The Python guest `examples/guests/<guest>` built by its `build.sh`
/// (componentize-py) into `dir` as `<file>`; `what` names it in a failure.
pub fn build_python_guest(dir: &Dir, guest: &str, file: &str, what: &str) -> PathBuf {
    let out = dir.path(file);
    let script = crate::workspace_root()
        .join("examples")
        .join("guests")
        .join(guest)
        .join("build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "building the Python {what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}
