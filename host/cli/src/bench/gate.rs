//! The bench as a regression gate: the targets judged from the run itself,
//! the run saved as JSON (`--save FILE`), and compared with a saved run
//! (`--compare FILE`): a ratio to native that dropped by more than
//! `--tolerance` (a fraction of the saved ratio) fails the command.
//!
//! Ratios, not times: a ratio compares WASM with native in the same process
//! on the same input, so it moves much less with the machine and its load
//! than events/s do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BenchError, Engine, Row};

/// What a target bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// Events/s as a fraction of the native run of the same scenario.
    VsNative,
    /// Input events per second of wall time.
    EventsPerSecond,
    /// Peak resident memory of the run, MiB.
    PeakRssMib,
}

/// A bound on a measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// At least this much.
    AtLeast(f64),
    /// At most this much.
    AtMost(f64),
}

/// A performance target, judged on the run of `scenario` with `engine`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// What the target says, for people.
    pub what: &'static str,
    /// The scenario's row.
    pub scenario: &'static str,
    /// The engine's row.
    pub engine: Engine,
    /// What is bounded.
    pub measure: Measure,
    /// The bound.
    pub bound: Bound,
}

const fn target(
    what: &'static str,
    scenario: &'static str,
    measure: Measure,
    bound: Bound,
) -> Target {
    Target {
        what,
        scenario,
        engine: Engine::Wasm,
        measure,
        bound,
    }
}

/// The project's targets (docs/benchmarks.md, "Targets").
pub const TARGETS: &[Target] = &[
    target(
        "stateless WASM map ≥ 0.8 of native",
        "wordcount map",
        Measure::VsNative,
        Bound::AtLeast(0.8),
    ),
    target(
        "stateful count, memory backend, ≥ 0.6 of native",
        "wordcount count (memory)",
        Measure::VsNative,
        Bound::AtLeast(0.6),
    ),
    target(
        "stateful count, sled backend, ≥ 0.6 of native",
        "wordcount count (sled)",
        Measure::VsNative,
        Bound::AtLeast(0.6),
    ),
    target(
        "stateful count ≥ 2 M lines/s",
        "wordcount count (memory)",
        Measure::EventsPerSecond,
        Bound::AtLeast(2_000_000.0),
    ),
    target(
        "Nexmark q0 ≥ 0.8 of native",
        "nexmark q0",
        Measure::VsNative,
        Bound::AtLeast(0.8),
    ),
    target(
        "Nexmark q1 ≥ 0.8 of native",
        "nexmark q1",
        Measure::VsNative,
        Bound::AtLeast(0.8),
    ),
    target(
        "Nexmark q2 ≥ 0.8 of native",
        "nexmark q2",
        Measure::VsNative,
        Bound::AtLeast(0.8),
    ),
    target(
        "Nexmark q5 ≥ 0.7 of native",
        "nexmark q5",
        Measure::VsNative,
        Bound::AtLeast(0.7),
    ),
    target(
        "Nexmark q7 ≥ 0.7 of native",
        "nexmark q7",
        Measure::VsNative,
        Bound::AtLeast(0.7),
    ),
    target(
        "the count's peak RSS at 5× input < 150 MB",
        "memory count 5x",
        Measure::PeakRssMib,
        Bound::AtMost(150.0 * 1_000_000.0 / 1_048_576.0),
    ),
    // The memory backend holds every key in the process by definition: its
    // bound is the same 150 MB beyond the keys themselves, counted at 150 B
    // a key (docs/benchmarks.md, "Memory against distinct keys").
    target(
        "1M distinct keys counted, memory backend: peak RSS < 150 MB + 150 B a key held",
        super::keys::MEMORY_ROW,
        Measure::PeakRssMib,
        Bound::AtMost((150.0 * 1_000_000.0 + 150.0 * 1_000_000.0) / 1_048_576.0),
    ),
    target(
        "1M distinct keys counted, sled backend: peak RSS < 150 MB",
        super::keys::SLED_ROW,
        Measure::PeakRssMib,
        Bound::AtMost(150.0 * 1_000_000.0 / 1_048_576.0),
    ),
    target(
        "1M distinct keys counted, redb backend: peak RSS < 150 MB",
        super::keys::REDB_ROW,
        Measure::PeakRssMib,
        Bound::AtMost(150.0 * 1_000_000.0 / 1_048_576.0),
    ),
    target(
        "1M distinct keys counted, Redis backend: peak RSS < 150 MB",
        super::keys::REDIS_ROW,
        Measure::PeakRssMib,
        Bound::AtMost(150.0 * 1_000_000.0 / 1_048_576.0),
    ),
];

/// One row as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRow {
    /// The scenario.
    pub scenario: String,
    /// The engine's name as the table shows it.
    pub engine: String,
    /// Events read.
    pub events_in: u64,
    /// Events written.
    pub events_out: u64,
    /// Wall time.
    pub seconds: f64,
    /// CPU time of the run.
    pub cpu_seconds: f64,
    /// Peak resident memory, KiB.
    pub peak_rss_kib: u64,
    /// Input events per second.
    pub events_per_second: f64,
    /// Events/s as a fraction of the native run of the scenario.
    pub vs_native: Option<f64>,
}

/// A whole run as saved by `--save`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    /// The machine and options line the bench printed.
    pub machine: String,
    /// The rows in the order they ran.
    pub rows: Vec<SavedRow>,
}

/// The scenario whose native run `scenario` is measured against: its
/// own, or for a variant of a scenario (`nexmark q5 (aggregate)`: the same
/// query with an aggregating window) the scenario's.
#[must_use]
pub fn baseline_scenario(scenario: &str) -> &str {
    scenario.strip_suffix(" (aggregate)").unwrap_or(scenario)
}

/// The ratio of `row`'s events/s to the native row of its scenario in
/// `rows` ([`baseline_scenario`]).
#[must_use]
pub fn vs_native(rows: &[Row], row: &Row) -> Option<f64> {
    if row.engine == Engine::Native {
        return None;
    }
    let baseline = baseline_scenario(&row.scenario);
    rows.iter()
        .find(|r| r.scenario == baseline && r.engine == Engine::Native)
        .map(|native| row.rate() / native.rate().max(f64::EPSILON))
}

impl SavedRun {
    /// The run of `rows`, printed after `machine`.
    #[must_use]
    pub fn of(machine: &str, rows: &[Row]) -> SavedRun {
        SavedRun {
            machine: machine.to_owned(),
            rows: rows
                .iter()
                .map(|row| SavedRow {
                    scenario: row.scenario.clone(),
                    engine: row.engine.name().to_owned(),
                    events_in: row.events_in,
                    events_out: row.events_out,
                    seconds: row.seconds,
                    cpu_seconds: row.cpu_seconds,
                    peak_rss_kib: row.peak_rss_kib,
                    events_per_second: row.rate(),
                    vs_native: vs_native(rows, row),
                })
                .collect(),
        }
    }

    /// Writes the run to `path` as JSON.
    ///
    /// # Errors
    ///
    /// [`BenchError::Setup`] naming the file when it cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BenchError::Setup(format!("cannot encode the results: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::Setup(format!("--save {}: {e}", path.display())))
    }

    /// Reads a run saved by [`SavedRun::save`].
    ///
    /// # Errors
    ///
    /// [`BenchError::Setup`] naming the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<SavedRun, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Setup(format!("--compare {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            BenchError::Setup(format!(
                "--compare {}: not a run saved by `plumber bench --save`: {e}",
                path.display()
            ))
        })
    }
}

/// A target judged on a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The target.
    pub target: Target,
    /// What the run measured.
    pub measured: f64,
    /// Whether it meets the target.
    pub met: bool,
}

/// The targets whose rows the run has, judged.
#[must_use]
pub fn judge(rows: &[Row], targets: &[Target]) -> Vec<Verdict> {
    targets
        .iter()
        .filter_map(|target| {
            let row = rows
                .iter()
                .find(|r| r.scenario == target.scenario && r.engine == target.engine)?;
            let measured = match target.measure {
                Measure::VsNative => vs_native(rows, row)?,
                Measure::EventsPerSecond => row.rate(),
                Measure::PeakRssMib => row.peak_rss_kib as f64 / 1024.0,
            };
            let met = match target.bound {
                Bound::AtLeast(bound) => measured >= bound,
                Bound::AtMost(bound) => measured <= bound,
            };
            Some(Verdict {
                target: *target,
                measured,
                met,
            })
        })
        .collect()
}

/// The verdicts as a table.
#[must_use]
pub fn render_verdicts(verdicts: &[Verdict]) -> String {
    let mut out = String::from("target | measured | met\n");
    for verdict in verdicts {
        let measured = match verdict.target.measure {
            Measure::VsNative => format!("{:.2}", verdict.measured),
            Measure::EventsPerSecond => format!("{:.0} events/s", verdict.measured),
            Measure::PeakRssMib => format!("{:.1} MiB", verdict.measured),
        };
        let _ = writeln!(
            out,
            "{} | {measured} | {}",
            verdict.target.what,
            if verdict.met { "met" } else { "MISSED" }
        );
    }
    out
}

/// How a run compares with a saved one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// A line per ratio found in both, for people.
    pub lines: Vec<String>,
    /// The ratios that dropped by more than the tolerance.
    pub regressions: Vec<String>,
}

/// Compares the ratios to native of `current` with those of `baseline`:
/// a ratio below `baseline × (1 − tolerance)` is a regression. Rows in
/// only one of the two are listed, not judged.
#[must_use]
pub fn compare(baseline: &SavedRun, current: &SavedRun, tolerance: f64) -> Comparison {
    let ratios = |run: &SavedRun| -> BTreeMap<(String, String), f64> {
        run.rows
            .iter()
            .filter_map(|r| Some(((r.scenario.clone(), r.engine.clone()), r.vs_native?)))
            .collect()
    };
    let before = ratios(baseline);
    let after = ratios(current);
    let mut comparison = Comparison::default();
    for ((scenario, engine), now) in &after {
        let Some(then) = before.get(&(scenario.clone(), engine.clone())) else {
            comparison.lines.push(format!(
                "{scenario} / {engine}: {now:.2} (not in the baseline)"
            ));
            continue;
        };
        let floor = then * (1.0 - tolerance);
        let line = format!(
            "{scenario} / {engine}: {now:.2} against {then:.2} ({:+.0}%)",
            (now / then.max(f64::EPSILON) - 1.0) * 100.0
        );
        if *now < floor {
            comparison.regressions.push(format!(
                "{line}: below {floor:.2}, the baseline less {:.0}%",
                tolerance * 100.0
            ));
            comparison.lines.push(format!("{line} REGRESSED"));
        } else {
            comparison.lines.push(line);
        }
    }
    for (scenario, engine) in before.keys() {
        if !after.contains_key(&(scenario.clone(), engine.clone())) {
            comparison
                .lines
                .push(format!("{scenario} / {engine}: not run (in the baseline)"));
        }
    }
    comparison
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &str, engine: Engine, seconds: f64, rss_mib: u64) -> Row {
        Row {
            scenario: scenario.to_owned(),
            engine,
            events_in: 1_000_000,
            events_out: 1_000_000,
            seconds,
            cpu_seconds: seconds,
            peak_rss_kib: rss_mib * 1024,
            guest_memory_kib: 0,
        }
    }

    #[test]
    fn targets_are_judged_from_the_rows_of_the_run() {
        let rows = [
            row("nexmark q0", Engine::Native, 1.0, 30),
            row("nexmark q0", Engine::Wasm, 1.25, 40),
            row("nexmark q1", Engine::Native, 1.0, 30),
            row("nexmark q1", Engine::Wasm, 2.0, 40),
            row("memory count 5x", Engine::Wasm, 1.0, 200),
        ];
        let verdicts = judge(&rows, TARGETS);
        let by_what: BTreeMap<&str, (f64, bool)> = verdicts
            .iter()
            .map(|v| (v.target.what, (v.measured, v.met)))
            .collect();
        // 1/1.25 = 0.8: met exactly; 0.5: missed; 200 MiB: missed.
        assert_eq!(by_what["Nexmark q0 ≥ 0.8 of native"], (0.8, true));
        assert_eq!(by_what["Nexmark q1 ≥ 0.8 of native"], (0.5, false));
        assert!(!by_what["the count's peak RSS at 5× input < 150 MB"].1);
        // Targets of scenarios not run are not judged.
        assert_eq!(verdicts.len(), 3);
        let table = render_verdicts(&verdicts);
        assert!(
            table.contains("Nexmark q1 ≥ 0.8 of native | 0.50 | MISSED"),
            "{table}"
        );
    }

    #[test]
    fn a_ratio_that_dropped_beyond_the_tolerance_is_a_regression() {
        let baseline = SavedRun::of(
            "m",
            &[
                row("nexmark q0", Engine::Native, 1.0, 30),
                row("nexmark q0", Engine::Wasm, 1.25, 40),
                row("nexmark q1", Engine::Native, 1.0, 30),
                row("nexmark q1", Engine::Wasm, 2.0, 40),
                row("nexmark q2", Engine::Native, 1.0, 30),
                row("nexmark q2", Engine::Wasm, 2.0, 40),
            ],
        );
        // The times all doubled (a slower machine), and q1's WASM run
        // lost a third of its ratio; q2 is not run.
        let current = SavedRun::of(
            "m",
            &[
                row("nexmark q0", Engine::Native, 2.0, 30),
                row("nexmark q0", Engine::Wasm, 2.6, 40),
                row("nexmark q1", Engine::Native, 2.0, 30),
                row("nexmark q1", Engine::Wasm, 6.0, 40),
            ],
        );
        let comparison = compare(&baseline, &current, 0.2);
        assert_eq!(comparison.regressions.len(), 1, "{comparison:?}");
        assert!(comparison.regressions[0].starts_with("nexmark q1 / wasm: 0.33 against 0.50"));
        assert!(comparison
            .lines
            .iter()
            .any(|l| l == "nexmark q2 / wasm: not run (in the baseline)"));
        // A generous tolerance lets it pass.
        assert!(compare(&baseline, &current, 0.5).regressions.is_empty());
    }

    #[test]
    fn a_saved_run_reads_back_and_a_bad_file_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let run = SavedRun::of(
            "machine",
            &[
                row("nexmark q0", Engine::Native, 1.0, 30),
                row("nexmark q0", Engine::Wasm, 1.25, 40),
            ],
        );
        run.save(&path).unwrap();
        assert_eq!(SavedRun::load(&path).unwrap(), run);
        std::fs::write(&path, "{\"rows\": 3}").unwrap();
        let error = SavedRun::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("run.json") && error.contains("plumber bench --save"),
            "{error}"
        );
    }
}
