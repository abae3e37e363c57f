//! The configuration reference (`docs/config.md`) checked against the
//! config types: every field each type reads is listed, every field listed
//! is read, and every example on the page is accepted by the config reader.
//!
//! What the types read is asked of the reader itself: a section given a
//! field it does not know is refused with serde's list of the fields it
//! does know (`unknown field `__probe__`, expected one of …`), which is
//! the field list serde's derive generates for the struct (the registry
//! reads connector sections through that list too). The sections come from
//! the code where the code can list them: the source, sink and state types
//! from the standard registry, the step kinds and window kinds from the
//! reader's "unknown variant" answer, so a new connector or window kind
//! without its section on the page fails here.
//!
//! The page's format, which this test parses: under `## Pipeline config`
//! and `## Host config`, one `###` heading per section, written as the JSON
//! path in backticks, optionally followed by ``with `"type": "file"` `` for
//! a section chosen by a tag; under it one or more ```` ```json ```` blocks,
//! each a whole example of the section, and a table whose first column is
//! the field name in backticks and which has the columns `type`, `default`
//! and `example` (a JSON value in backticks), or the line `No fields.`.
//! Each row's example must be accepted in place of that field in at least
//! one of the section's example blocks.
//!
//! The windows: `pipeline[]` with `"type": "window"` lists the fields every
//! kind of window has, and each `"window": "<kind>"` section the rest of
//! that kind's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use plumber::config::{standard_registry, ConfigError, HostConfig, PipelineConfig};
use serde_json::{json, Map, Value};

/// The field name no section declares.
const PROBE: &str = "__probe__";

/// Which config file a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Root {
    Pipeline,
    Host,
}

impl Root {
    fn title(self) -> &'static str {
        match self {
            Root::Pipeline => "Pipeline config",
            Root::Host => "Host config",
        }
    }
}

/// A section as the page heads it: its root, JSON path and tag, e.g.
/// (pipeline, `from`, `"type": "file"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SectionKey {
    root: Root,
    path: String,
    tag: Option<(String, String)>,
}

impl SectionKey {
    fn new(root: Root, path: &str, tag: Option<(&str, &str)>) -> Self {
        SectionKey {
            root,
            path: path.to_owned(),
            tag: tag.map(|(key, value)| (key.to_owned(), value.to_owned())),
        }
    }

    /// As the page writes its heading.
    fn heading(&self) -> String {
        let mut heading = format!("{}: ### `{}`", self.root.title(), self.path);
        if let Some((key, value)) = &self.tag {
            heading.push_str(&format!(" with `\"{key}\": \"{value}\"`"));
        }
        heading
    }
}

/// One row of a section's table.
#[derive(Debug)]
struct Row {
    field: String,
    example: String,
    line: usize,
}

/// A section of the page.
#[derive(Debug, Default)]
struct DocSection {
    examples: Vec<(Value, usize)>,
    rows: Vec<Row>,
    no_fields: bool,
    line: usize,
}

/// The page's sections, and what is wrong with its format.
fn parse_page(text: &str) -> (BTreeMap<SectionKey, DocSection>, Vec<String>) {
    let mut sections: BTreeMap<SectionKey, DocSection> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut root: Option<Root> = None;
    let mut current: Option<SectionKey> = None;
    let mut columns: Option<Vec<String>> = None;
    let mut json_block: Option<(String, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some((block, start)) = &mut json_block {
            if line.trim_start().starts_with("```") {
                match (serde_json::from_str::<Value>(block), &current) {
                    (Ok(value), Some(key)) => {
                        if let Some(section) = sections.get_mut(key) {
                            section.examples.push((value, *start));
                        }
                    }
                    (Err(error), Some(_)) => {
                        problems.push(format!("line {start}: example is not JSON: {error}"));
                    }
                    (_, None) => {}
                }
                json_block = None;
            } else {
                block.push_str(line);
                block.push('\n');
            }
            continue;
        }
        if line.trim_start().starts_with("```json") {
            json_block = Some((String::new(), number));
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            root = [Root::Pipeline, Root::Host]
                .into_iter()
                .find(|root| root.title() == title.trim());
            current = None;
            columns = None;
            continue;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            columns = None;
            current = None;
            let Some(root) = root else { continue };
            match parse_heading(heading) {
                Ok((path, tag)) => {
                    let key = SectionKey { root, path, tag };
                    if sections.contains_key(&key) {
                        problems.push(format!("line {number}: {} twice", key.heading()));
                    }
                    sections.insert(
                        key.clone(),
                        DocSection {
                            line: number,
                            ..DocSection::default()
                        },
                    );
                    current = Some(key);
                }
                Err(message) => problems.push(format!("line {number}: {message}: {line}")),
            }
            continue;
        }
        let Some(key) = &current else { continue };
        let Some(section) = sections.get_mut(key) else {
            continue;
        };
        if line.trim() == "No fields." {
            section.no_fields = true;
            continue;
        }
        if !line.starts_with('|') {
            columns = None;
            continue;
        }
        let cells = table_cells(line);
        match &columns {
            None => {
                let names: Vec<String> = cells.iter().map(|cell| cell.to_lowercase()).collect();
                for wanted in ["field", "type", "default", "example"] {
                    if !names.iter().any(|name| name == wanted) {
                        problems.push(format!(
                            "line {number}: the table of {} has no `{wanted}` column",
                            key.heading()
                        ));
                    }
                }
                if names.first().map(String::as_str) != Some("field") {
                    problems.push(format!(
                        "line {number}: the first column of {} is not `field`",
                        key.heading()
                    ));
                }
                columns = Some(names);
            }
            Some(_)
                if cells
                    .iter()
                    .all(|cell| cell.chars().all(|c| "-: ".contains(c))) => {}
            Some(names) => {
                if cells.len() != names.len() {
                    problems.push(format!(
                        "line {number}: {} cells where the header has {}",
                        cells.len(),
                        names.len()
                    ));
                    continue;
                }
                let cell = |name: &str| {
                    names
                        .iter()
                        .position(|column| column == name)
                        .map(|at| cells[at].clone())
                        .unwrap_or_default()
                };
                for (at, name) in names.iter().enumerate() {
                    if cells[at].is_empty() {
                        problems.push(format!("line {number}: empty `{name}` cell"));
                    }
                }
                let Some(field) = code_span(&cell("field")) else {
                    problems.push(format!(
                        "line {number}: the field is not a name in backticks: {}",
                        cell("field")
                    ));
                    continue;
                };
                let Some(example) = code_span(&cell("example")) else {
                    problems.push(format!(
                        "line {number}: the example of `{field}` is not a JSON value in backticks"
                    ));
                    continue;
                };
                section.rows.push(Row {
                    field,
                    example,
                    line: number,
                });
            }
        }
    }
    (sections, problems)
}

/// `` `from` with `"type": "file"` `` → (`from`, (`type`, `file`)).
fn parse_heading(heading: &str) -> Result<(String, Option<(String, String)>), String> {
    let heading = heading.trim();
    let rest = heading
        .strip_prefix('`')
        .ok_or("a section heading starts with its JSON path in backticks")?;
    let (path, rest) = rest
        .split_once('`')
        .ok_or("unclosed backtick in the heading")?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok((path.to_owned(), None));
    }
    let tag = rest
        .strip_prefix("with `")
        .and_then(|tag| tag.strip_suffix('`'))
        .ok_or("after the path, a heading has only ``with `\"key\": \"value\"` ``")?;
    let object: Map<String, Value> = serde_json::from_str(&format!("{{{tag}}}"))
        .map_err(|error| format!("the tag `{tag}` is not `\"key\": \"value\"`: {error}"))?;
    match object.into_iter().next() {
        Some((key, Value::String(value))) => Ok((path.to_owned(), Some((key, value)))),
        _ => Err(format!("the tag `{tag}` is not `\"key\": \"value\"`")),
    }
}

/// The cells of a table row, trimmed, with `\|` read as `|`.
fn table_cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cell.push('|');
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            c => cell.push(c),
        }
    }
    cells.push(cell.trim().to_owned());
    cells
}

/// The text of a cell that is one code span, `` `x` ``.
fn code_span(cell: &str) -> Option<String> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`') && !inner.is_empty()).then(|| inner.to_owned())
}

/// A pipeline config around a section: how a section's object is placed
/// in a whole config.
type Place = fn(Value) -> Value;

/// A section the code has: its key, its fields, and where it goes.
struct CodeSection {
    key: SectionKey,
    fields: BTreeSet<String>,
    place: Place,
}

/// A pipeline config with every required section, and a dead-letter sink
/// (so that examples sending there are accepted).
fn skeleton() -> Value {
    json!({
        "name": "docs",
        "state": {"type": "memory"},
        "from": {"type": "array", "values": ["a"]},
        "to": {"type": "discard"},
        "dead_letter": {"type": "discard"},
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut config = skeleton();
    config[field] = value;
    config
}

fn wasm_step_with(field: &str, value: Value) -> Value {
    let mut step = json!({"type": "wasm", "name": "p", "module": "p.wasm"});
    step[field] = value;
    with("pipeline", json!([step]))
}

/// A graph around one router step `v`: an array source `count` it reads
/// (unless `v` names its own `from`), and a sink reading each of its routes.
fn in_a_graph(mut v: Value) -> Value {
    let name = v["name"].as_str().unwrap_or("r").to_owned();
    if v.get("from").is_none() {
        v["from"] = json!(["count"]);
    }
    let mut routes: Vec<String> = v["routes"]
        .as_object()
        .map(|routes| routes.keys().cloned().collect())
        .unwrap_or_default();
    routes.extend(v["default"].as_str().map(str::to_owned));
    let mut sinks = Map::new();
    for route in routes {
        sinks.insert(
            format!("to_{route}"),
            json!({"type": "discard", "from": [format!("{name}.{route}")]}),
        );
    }
    json!({
        "name": "docs",
        "state": {"type": "memory"},
        "sources": {"count": {"type": "array", "values": ["a"]}},
        "pipeline": [v],
        "sinks": sinks,
    })
}

/// Reads a pipeline or host config as `plumber` does (without touching
/// files or servers): the JSON path and message of its error.
fn read(root: Root, config: &Value) -> Result<(), (String, String)> {
    match root {
        Root::Pipeline => {
            let registry = standard_registry();
            match PipelineConfig::parse_with(
                &registry,
                &config.to_string(),
                "docs/config.md",
                Path::new("/docs-config-test"),
            ) {
                Ok(_) => Ok(()),
                Err(ConfigError::Invalid { path, message, .. }) => Err((path, message)),
                Err(other) => Err((String::new(), other.to_string())),
            }
        }
        Root::Host => serde_json::from_value::<HostConfig>(config.clone())
            .map(drop)
            .map_err(|error| (String::new(), error.to_string())),
    }
}

/// The names in backticks that follow `after` in `message` (up to a `;`,
/// which starts another sentence).
fn listed_after(message: &str, after: &str) -> Option<BTreeSet<String>> {
    let (_, rest) = message.split_once(after)?;
    let rest = rest.split(';').next().unwrap_or(rest);
    let rest = rest.split(" at line ").next().unwrap_or(rest);
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// The fields the reader knows at the section `probe` is placed in.
fn fields_of(root: Root, place: Place, probe: &Value) -> Result<BTreeSet<String>, String> {
    let config = place(probe.clone());
    match read(root, &config) {
        Ok(()) => Err(format!(
            "{config} was accepted: the probe field went unnoticed"
        )),
        Err((path, message)) => listed_after(&message, &format!("unknown field `{PROBE}`"))
            .ok_or_else(|| {
                format!("{config}: expected an unknown-field error, got `{path}`: {message}")
            }),
    }
}

/// The variants the reader knows where `probe` names an unknown one.
fn variants_of(root: Root, config: Value) -> BTreeSet<String> {
    match read(root, &config) {
        Ok(()) => panic!("{config} was accepted"),
        Err((path, message)) => listed_after(&message, &format!("unknown variant `{PROBE}`"))
            .unwrap_or_else(|| {
                panic!("{config}: expected an unknown-variant error, got `{path}`: {message}")
            }),
    }
}

fn object(fields: &[(&str, &str)]) -> Value {
    let mut object = Map::new();
    for (key, value) in fields {
        object.insert((*key).to_owned(), Value::String((*value).to_owned()));
    }
    object.insert(PROBE.to_owned(), Value::Bool(true));
    Value::Object(object)
}

/// Every section the code has, with its fields.
fn code_sections() -> Vec<CodeSection> {
    let mut sections = Vec::new();
    let mut add = |key: SectionKey, place: Place, probe: Value| {
        let fields = fields_of(key.root, place, &probe)
            .unwrap_or_else(|message| panic!("{}: {message}", key.heading()));
        sections.push(CodeSection { key, fields, place });
    };
    let pipeline = Root::Pipeline;
    add(
        SectionKey::new(pipeline, "(top level)", None),
        |v| v,
        object(&[]),
    );
    add(
        SectionKey::new(pipeline, "checkpoint", None),
        |v| with("checkpoint", v),
        object(&[]),
    );
    add(
        SectionKey::new(pipeline, "cluster", None),
        |v| {
            // A clustered pipeline reads a partitioned JetStream stream and
            // keeps its state where the next owner of a partition finds it.
            let mut config = with("cluster", v);
            config["from"] = json!({"type": "jetstream", "stream": "IN", "consumer": "c"});
            config["state"] = json!({"type": "redis", "url": "redis://127.0.0.1:6379"});
            config
        },
        object(&[]),
    );
    let registry = standard_registry();
    let connectors: [(&str, Vec<&str>, Place); 3] = [
        ("state", registry.state_types(), |v| with("state", v)),
        ("from", registry.source_types(), |v| with("from", v)),
        ("to", registry.sink_types(), |v| with("to", v)),
    ];
    for (path, types, place) in connectors {
        for type_name in types {
            add(
                SectionKey::new(pipeline, path, Some(("type", type_name))),
                place,
                object(&[("type", type_name)]),
            );
        }
    }
    let step = |v| with("pipeline", json!([v]));
    let step_kinds = variants_of(pipeline, step(json!({"type": PROBE})));
    assert!(step_kinds.contains("window"), "step kinds: {step_kinds:?}");
    for kind in step_kinds.iter().filter(|kind| *kind != "window") {
        // A router belongs to a graph only: its example is placed in one
        // whose sinks read every route it has.
        if kind == "route" {
            add(
                SectionKey::new(pipeline, "pipeline[]", Some(("type", kind))),
                in_a_graph,
                object(&[("type", kind)]),
            );
            continue;
        }
        // A repartition step belongs to a clustered pipeline only.
        let place: Place = if kind == "repartition" {
            |v| {
                let mut config = with("pipeline", json!([v]));
                config["cluster"] = json!({"url": ["nats://127.0.0.1:4222"], "partitions": 4});
                config["from"] = json!({"type": "jetstream", "stream": "IN", "consumer": "c"});
                config["state"] = json!({"type": "redis", "url": "redis://127.0.0.1:6379"});
                config
            }
        } else {
            step
        };
        add(
            SectionKey::new(pipeline, "pipeline[]", Some(("type", kind))),
            place,
            object(&[("type", kind)]),
        );
    }
    let window_kinds = variants_of(pipeline, step(json!({"type": "window", "window": PROBE})));
    for kind in &window_kinds {
        add(
            SectionKey::new(pipeline, "pipeline[]", Some(("window", kind))),
            step,
            object(&[("type", "window"), ("window", kind)]),
        );
    }
    add(
        SectionKey::new(pipeline, "pipeline[].limits", None),
        |v| wasm_step_with("limits", v),
        object(&[]),
    );
    add(
        SectionKey::new(pipeline, "pipeline[].on_error.retry", None),
        |v| wasm_step_with("on_error", json!({ "retry": v })),
        object(&[]),
    );
    add(
        SectionKey::new(pipeline, "pipeline[].read_only_dir", None),
        |v| wasm_step_with("read_only_dir", v),
        object(&[]),
    );
    for type_name in registry.lookup_types() {
        add(
            SectionKey::new(pipeline, "pipeline[].table", Some(("type", type_name))),
            |v| {
                with(
                    "pipeline",
                    json!([{"type": "lookup", "name": "l", "table": v}]),
                )
            },
            object(&[("type", type_name)]),
        );
    }
    add(
        SectionKey::new(pipeline, "pipeline[].on", None),
        |v| {
            with(
                "pipeline",
                json!([{"type": "window", "window": "signal", "name": "w", "on": v}]),
            )
        },
        object(&[]),
    );
    add(
        SectionKey::new(pipeline, "pipeline[].trigger", None),
        |v| {
            with(
                "pipeline",
                json!([{"type": "window", "window": "tumbling", "name": "w",
                        "size_ms": 1000, "trigger": v}]),
            )
        },
        object(&[]),
    );
    add(
        SectionKey::new(pipeline, "pipeline[].aggregate", None),
        |v| {
            with(
                "pipeline",
                json!([{"type": "window", "window": "tumbling", "name": "w",
                        "size_ms": 1000, "aggregate": v}]),
            )
        },
        object(&[]),
    );
    let host = Root::Host;
    add(
        SectionKey::new(host, "(top level)", None),
        |v| v,
        object(&[]),
    );
    add(
        SectionKey::new(host, "admin", None),
        |v| json!({ "admin": v }),
        object(&[]),
    );
    add(
        SectionKey::new(host, "tenants.<tenant>", None),
        |v| json!({"tenants": {"acme": v}}),
        object(&[]),
    );

    // The fields every window kind has go in one section of their own
    // (`"type": "window"`); each kind's section lists the rest.
    let window_sections: Vec<usize> = (0..sections.len())
        .filter(|&at| matches!(&sections[at].key.tag, Some((key, _)) if key == "window"))
        .collect();
    let common: BTreeSet<String> = window_sections
        .iter()
        .map(|&at| sections[at].fields.clone())
        .reduce(|all, fields| all.intersection(&fields).cloned().collect())
        .unwrap_or_default();
    for &at in &window_sections {
        sections[at].fields.retain(|field| !common.contains(field));
    }
    sections.push(CodeSection {
        key: SectionKey::new(pipeline, "pipeline[]", Some(("type", "window"))),
        fields: common,
        place: step,
    });
    sections
}

/// `example` (a JSON value) in place of `field` in `section`.
fn replaced(section: &Value, field: &str, example: &Value) -> Value {
    let mut section = section.clone();
    section[field] = example.clone();
    section
}

#[test]
fn the_configuration_reference_lists_every_field_of_every_config_type() {
    let page_path = plumber_tests::workspace_root().join("docs/config.md");
    let page = std::fs::read_to_string(&page_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", page_path.display()));
    let (mut documented, mut problems) = parse_page(&page);
    let code = code_sections();

    for section in &code {
        let heading = section.key.heading();
        let Some(doc) = documented.remove(&section.key) else {
            problems.push(format!(
                "missing section {heading}, with the fields {:?}",
                section.fields
            ));
            continue;
        };
        let listed: BTreeSet<String> = doc.rows.iter().map(|row| row.field.clone()).collect();
        for field in section.fields.difference(&listed) {
            problems.push(format!(
                "line {}: {heading} does not list the field `{field}`",
                doc.line
            ));
        }
        for field in listed.difference(&section.fields) {
            problems.push(format!(
                "line {}: {heading} lists `{field}`, which the config does not read there",
                doc.line
            ));
        }
        if doc.rows.len() != listed.len() {
            problems.push(format!("line {}: {heading} lists a field twice", doc.line));
        }
        if section.fields.is_empty() != (doc.rows.is_empty() && doc.no_fields) {
            problems.push(format!(
                "line {}: {heading}: a section without fields says `No fields.` and has no table",
                doc.line
            ));
        }
        if doc.examples.is_empty() {
            problems.push(format!(
                "line {}: {heading} has no ```json example",
                doc.line
            ));
        }
        let root = section.key.root;
        let mut accepted_examples = Vec::new();
        for (example, line) in &doc.examples {
            match read(root, &(section.place)(example.clone())) {
                Ok(()) => accepted_examples.push(example),
                Err((path, message)) => problems.push(format!(
                    "line {line}: the example of {heading} is refused at `{path}`: {message}"
                )),
            }
        }
        for row in &doc.rows {
            let example: Value = match serde_json::from_str(&row.example) {
                Ok(value) => value,
                Err(error) => {
                    problems.push(format!(
                        "line {}: the example of `{}` is not JSON ({error}): {}",
                        row.line, row.field, row.example
                    ));
                    continue;
                }
            };
            let refusals: Vec<String> = accepted_examples
                .iter()
                .filter_map(|whole| {
                    read(
                        root,
                        &(section.place)(replaced(whole, &row.field, &example)),
                    )
                    .err()
                    .map(|(path, message)| format!("`{path}`: {message}"))
                })
                .collect();
            if refusals.len() == accepted_examples.len() && !accepted_examples.is_empty() {
                problems.push(format!(
                    "line {}: {heading}: `\"{}\": {}` is refused in every example of the section: {}",
                    row.line,
                    row.field,
                    row.example,
                    refusals.join(" / ")
                ));
            }
        }
    }
    for (key, doc) in documented {
        problems.push(format!(
            "line {}: {} is not a section of the config (no such path or type)",
            doc.line,
            key.heading()
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/config.md does not match the config types ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The probe reading works: a section's known fields are what serde's
/// derive lists, read through the same error a user sees.
#[test]
fn the_probe_reads_the_field_lists_of_the_config_types() {
    let fields = fields_of(Root::Pipeline, |v| with("checkpoint", v), &object(&[]))
        .expect("checkpoint fields");
    assert!(fields.contains("interval_ms"), "{fields:?}");
    assert!(fields.contains("max_pending_bytes"), "{fields:?}");
    let none = fields_of(
        Root::Pipeline,
        |v| with("to", v),
        &object(&[("type", "stdout")]),
    )
    .expect("stdout fields");
    assert!(none.is_empty(), "{none:?}");
    let kinds = variants_of(
        Root::Pipeline,
        with("pipeline", json!([{"type": "window", "window": PROBE}])),
    );
    assert!(kinds.contains("session"), "{kinds:?}");
}
