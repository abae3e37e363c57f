//! `plumber test CONFIG --input events.jsonl --expect out.jsonl`: runs a
//! pipeline's steps on a replay of events (with controlled time) into
//! memory and compares what comes out with what is expected
//! (docs/testing-pipes.md).

use std::path::Path;

use plumber::config::PipelineConfig;
use plumber::runtime::Runtime;
use plumber::state::MemoryState;
use plumber::streams::replay::{read_replay, render_event, ReplayItem, ReplayLines};
use plumber::streams::{MemorySink, ReplaySource};
use plumber::Event;

/// How output and expected lines are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// The lines of each key in the same order; keys may interleave in
    /// any way (what the engine promises: per-key order).
    Key,
    /// Every line in the same order.
    Total,
}

impl Order {
    fn describe(self) -> &'static str {
        match self {
            Order::Key => "per key",
            Order::Total => "in total",
        }
    }
}

/// Why `plumber test` did not pass.
#[derive(Debug, thiserror::Error)]
pub enum TestFailure {
    /// A file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the input or the expected output is bad.
    #[error(transparent)]
    Line(#[from] plumber::streams::replay::ReplayLineError),
    /// The config cannot be replayed (a graph, a repartition step).
    #[error("{file}: {message}")]
    Config {
        /// The config file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The pipeline failed.
    #[error("the pipeline failed: {0}")]
    Run(String),
    /// The output differs from the expected lines (the diff is printed).
    #[error("the output differs from {expected}: {summary}")]
    Mismatch {
        /// The expected file.
        expected: String,
        /// Counts of what differs.
        summary: String,
    },
}

impl TestFailure {
    /// Exit status: 2 for bad input (a line, the config), 1 for a failed
    /// run or a mismatch.
    pub fn status(&self) -> u8 {
        match self {
            TestFailure::Read { .. } | TestFailure::Line(_) | TestFailure::Config { .. } => 2,
            TestFailure::Run(_) | TestFailure::Mismatch { .. } => 1,
        }
    }
}

fn read(path: &Path) -> Result<String, TestFailure> {
    std::fs::read_to_string(path).map_err(|source| TestFailure::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Runs the test: the pipeline of `config` (already read from
/// `config_path`) on the events of `input`, compared with `expect`. On a
/// mismatch prints the diff to stdout.
///
/// # Errors
///
/// See [`TestFailure`].
pub async fn run(
    config_path: &Path,
    config: &PipelineConfig,
    input: &Path,
    expect: &Path,
    order: Order,
    runtime: Runtime,
) -> Result<(), TestFailure> {
    let input_name = input.display().to_string();
    let expect_name = expect.display().to_string();
    let items = read_replay(&read(input)?, &input_name, ReplayLines::EventsAndMarks)?;
    let expected: Vec<(Event, usize)> =
        read_replay(&read(expect)?, &expect_name, ReplayLines::EventsOnly)?
            .into_iter()
            .filter_map(|item| match item {
                ReplayItem::Event { event, line } => Some((event, line)),
                ReplayItem::Watermark(_) => None,
            })
            .collect();
    let sink = MemorySink::new();
    let dead_letters = MemorySink::new();
    let builder = config
        .replay_builder(
            std::sync::Arc::new(MemoryState::new()),
            Box::new(ReplaySource::new(items)),
            Box::new(sink.clone()),
            Box::new(dead_letters.clone()),
        )
        .map_err(|e| TestFailure::Config {
            file: config_path.display().to_string(),
            message: plumber::ErrorChain(&e).to_string(),
        })?
        .runtime(runtime);
    let report = builder.run().await.map_err(|error| match &error {
        // A module that does not load or init is the config's fault.
        plumber::pipeline::PipelineError::Load { pipe, source, .. } => {
            let field = match source {
                plumber::runtime::LoadError::Init { .. } => config.step_field(pipe, "config"),
                _ => config.module_field(pipe),
            }
            .unwrap_or_else(|| "pipeline".to_owned());
            TestFailure::Config {
                file: config_path.display().to_string(),
                message: format!(
                    "at `{field}` (pipe `{pipe}`): {}",
                    plumber::ErrorChain(source)
                ),
            }
        }
        _ => TestFailure::Run(plumber::ErrorChain(&error).to_string()),
    })?;
    let dead = dead_letters.events();
    if !dead.is_empty() {
        eprintln!(
            "note: {} events went to the dead-letter sink (not compared)",
            dead.len()
        );
    }
    let actual = sink.events();
    let diff = compare(&expected, &actual, order, &expect_name);
    match diff {
        None => {
            println!(
                "ok: {} events in, {} out, as in {expect_name} ({})",
                report.events_in,
                actual.len(),
                order.describe()
            );
            Ok(())
        }
        Some(diff) => {
            print!("{}", diff.text);
            Err(TestFailure::Mismatch {
                expected: expect_name,
                summary: diff.summary,
            })
        }
    }
}

/// What differs, as printed.
#[derive(Debug)]
pub struct Diff {
    /// The diff, a line each: `  ` the same, `- ` expected and missing
    /// (with its `file:line`), `+ ` produced and not expected.
    pub text: String,
    /// Counts: expected, produced, missing, unexpected.
    pub summary: String,
}

/// At most this many diff lines are printed.
const MAX_DIFF_LINES: usize = 400;

/// Compares the output with the expected events by `order`; `None` when
/// they match.
pub fn compare(
    expected: &[(Event, usize)],
    actual: &[Event],
    order: Order,
    expect_name: &str,
) -> Option<Diff> {
    let expected_lines: Vec<(Option<&[u8]>, String, usize)> = expected
        .iter()
        .map(|(event, line)| (event.key.as_deref(), render_event(event), *line))
        .collect();
    let actual_lines: Vec<(Option<&[u8]>, String)> = actual
        .iter()
        .map(|event| (event.key.as_deref(), render_event(event)))
        .collect();
    // The groups compared: one per key (in first appearance, expected
    // first), or one of everything.
    let mut groups: Vec<Option<Option<&[u8]>>> = Vec::new();
    match order {
        Order::Total => groups.push(None),
        Order::Key => {
            for key in expected_lines
                .iter()
                .map(|(key, _, _)| *key)
                .chain(actual_lines.iter().map(|(key, _)| *key))
            {
                if !groups.contains(&Some(key)) {
                    groups.push(Some(key));
                }
            }
        }
    }
    let mut text = String::new();
    let (mut missing, mut unexpected, mut printed) = (0usize, 0usize, 0usize);
    for group in groups {
        let wanted: Vec<(&str, usize)> = expected_lines
            .iter()
            .filter(|(key, _, _)| group.is_none_or(|g| g == *key))
            .map(|(_, line, at)| (line.as_str(), *at))
            .collect();
        let got: Vec<&str> = actual_lines
            .iter()
            .filter(|(key, _)| group.is_none_or(|g| g == *key))
            .map(|(_, line)| line.as_str())
            .collect();
        let wanted_text: Vec<&str> = wanted.iter().map(|(line, _)| *line).collect();
        if wanted_text == got {
            continue;
        }
        let heading = match group {
            None => "all output:".to_owned(),
            Some(None) => "events without a key:".to_owned(),
            Some(Some(key)) => match std::str::from_utf8(key) {
                Ok(text) => format!("key {text:?}:"),
                Err(_) => format!("key 0x{}:", hex_of(key)),
            },
        };
        text.push_str(&heading);
        text.push('\n');
        for step in diff_lines(&wanted_text, &got) {
            let line = match step {
                Step::Same(i) => {
                    format!("    {}  {}", origin(expect_name, wanted[i].1), wanted[i].0)
                }
                Step::Missing(i) => {
                    missing += 1;
                    format!("  - {}  {}", origin(expect_name, wanted[i].1), wanted[i].0)
                }
                Step::Unexpected(j) => {
                    unexpected += 1;
                    format!("  + (output)  {}", got[j])
                }
            };
            printed += 1;
            if printed <= MAX_DIFF_LINES {
                text.push_str(&line);
                text.push('\n');
            }
        }
    }
    if missing == 0 && unexpected == 0 {
        return None;
    }
    if printed > MAX_DIFF_LINES {
        text.push_str(&format!("… {} more diff lines\n", printed - MAX_DIFF_LINES));
    }
    let summary = format!(
        "{} expected, {} produced: {missing} missing (-), {unexpected} not expected (+), compared {}",
        expected.len(),
        actual.len(),
        order.describe()
    );
    Some(Diff { text, summary })
}

fn origin(file: &str, line: usize) -> String {
    format!("{file}:{line}")
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of a diff: indexes into the expected or the produced lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Same(usize),
    Missing(usize),
    Unexpected(usize),
}

/// Above this many cells the diff is not minimal: the common head and
/// tail, and everything between as missing and unexpected.
const MAX_LCS_CELLS: usize = 4_000_000;

/// A shortest edit script between `wanted` and `got` (longest common
/// subsequence), or, for very long inputs, the common head and tail with
/// everything between them replaced.
fn diff_lines(wanted: &[&str], got: &[&str]) -> Vec<Step> {
    let head = wanted.iter().zip(got).take_while(|(a, b)| a == b).count();
    let tail = wanted[head..]
        .iter()
        .rev()
        .zip(got[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (w_mid, g_mid) = (
        &wanted[head..wanted.len() - tail],
        &got[head..got.len() - tail],
    );
    let mut steps: Vec<Step> = (0..head).map(Step::Same).collect();
    let (n, m) = (w_mid.len(), g_mid.len());
    if n.saturating_mul(m) > MAX_LCS_CELLS {
        steps.extend((0..n).map(|i| Step::Missing(head + i)));
        steps.extend((0..m).map(|j| Step::Unexpected(head + j)));
    } else {
        // lcs[i][j]: the longest common subsequence of w_mid[i..] and g_mid[j..].
        let width = m + 1;
        let mut lcs = vec![0u32; (n + 1) * width];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * width + j] = if w_mid[i] == g_mid[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && w_mid[i] == g_mid[j] {
                steps.push(Step::Same(head + i));
                i += 1;
                j += 1;
            } else if j < m && (i == n || lcs[i * width + j + 1] > lcs[(i + 1) * width + j]) {
                // (On a tie the missing line goes first, as diffs show it.)
                steps.push(Step::Unexpected(head + j));
                j += 1;
            } else {
                steps.push(Step::Missing(head + i));
                i += 1;
            }
        }
    }
    let w_tail = wanted.len() - tail;
    steps.extend((0..tail).map(|k| Step::Same(w_tail + k)));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(list: &[(&str, &str)]) -> Vec<Event> {
        list.iter()
            .map(|(key, value)| Event::new(*value).with_key(*key))
            .collect()
    }

    fn numbered(list: &[Event]) -> Vec<(Event, usize)> {
        list.iter().cloned().zip(1..).collect()
    }

    #[test]
    fn per_key_order_ignores_interleaving_but_not_order_within_a_key() {
        let expected = events(&[("a", "1"), ("b", "1"), ("a", "2")]);
        let interleaved = events(&[("b", "1"), ("a", "1"), ("a", "2")]);
        assert!(compare(&numbered(&expected), &interleaved, Order::Key, "x").is_none());
        let total = compare(&numbered(&expected), &interleaved, Order::Total, "x").unwrap();
        assert!(
            total
                .summary
                .starts_with("3 expected, 3 produced: 1 missing"),
            "{}",
            total.summary
        );
        let swapped = events(&[("a", "2"), ("b", "1"), ("a", "1")]);
        let diff = compare(&numbered(&expected), &swapped, Order::Key, "x").unwrap();
        assert_eq!(
            diff.text,
            "key \"a\":\n  - x:1  {\"value\":\"1\",\"key\":\"a\"}\n    x:3  {\"value\":\"2\",\"key\":\"a\"}\n  + (output)  {\"value\":\"1\",\"key\":\"a\"}\n"
        );
    }

    #[test]
    fn the_diff_names_missing_lines_by_file_line_and_marks_extra_output() {
        let expected = events(&[("k", "1"), ("k", "2"), ("k", "3")]);
        let actual = events(&[("k", "1"), ("k", "3"), ("k", "4")]);
        let diff = compare(&numbered(&expected), &actual, Order::Total, "out.jsonl").unwrap();
        assert_eq!(
            diff.text,
            "all output:\n    out.jsonl:1  {\"value\":\"1\",\"key\":\"k\"}\n  - out.jsonl:2  {\"value\":\"2\",\"key\":\"k\"}\n    out.jsonl:3  {\"value\":\"3\",\"key\":\"k\"}\n  + (output)  {\"value\":\"4\",\"key\":\"k\"}\n"
        );
        assert_eq!(
            diff.summary,
            "3 expected, 3 produced: 1 missing (-), 1 not expected (+), compared in total"
        );
    }

    #[test]
    fn a_shortest_edit_script_keeps_the_longest_common_part() {
        let wanted = ["a", "b", "c", "d", "e"];
        let got = ["x", "b", "c", "y", "e"];
        let steps = diff_lines(&wanted, &got);
        let same = steps.iter().filter(|s| matches!(s, Step::Same(_))).count();
        assert_eq!(same, 3);
        assert_eq!(steps.len(), 7);
    }
}
