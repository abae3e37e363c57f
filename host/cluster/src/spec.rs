//! A clustered pipeline's config: the `cluster` section, what the
//! JetStream source says about the input, a `repartition` step's two
//! stages, and the config each partition task runs with (derived by editing
//! the config's JSON, then read and checked as any pipeline config is).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plumber_connectors::config::{ClusterConfig, PipelineConfig, ReadStandard, StepConfig};
use plumber_engine::shuffle::ShuffleKey;
use plumber_engine::state::{SharedState, StateError};
use plumber_engine::window::{TimeMode, WindowKind};
use serde_json::Value;

use crate::partition::{fnv1a32, PartitionNames};
use crate::ClusterError;

/// The Redis backend's key prefix when the config sets none.
const DEFAULT_REDIS_PREFIX: &str = "plumber:";

/// A pipeline config with a `cluster` section, read and checked.
#[derive(Debug, Clone)]
pub struct ClusterPipeline {
    /// The config file, as errors name it.
    pub origin: String,
    /// The directory relative paths are resolved against.
    pub base: PathBuf,
    /// The config's JSON, from which partition configs are derived.
    raw: Value,
    /// The whole pipeline config, checked.
    pub config: PipelineConfig,
    /// Its `cluster` section.
    pub cluster: ClusterConfig,
    /// The input stream (the source's `stream`).
    pub stream: String,
    /// The names of the partitions' parts.
    pub names: PartitionNames,
    /// The keyed shuffle between two stages, when the pipeline has a
    /// `repartition` step.
    pub shuffle: Option<Shuffle>,
}

/// A `repartition` step: the pipeline runs as two stages, each of N
/// partitions, joined by a partitioned shuffle stream. Stage 1 reads the
/// input and runs the steps before the step, then publishes each event to
/// `<stream>.<key token>`; the shuffle stream's subject transform files it
/// under its key's partition, which stage 2 reads and runs the steps after
/// the step and the pipeline's sink.
#[derive(Debug, Clone)]
pub struct Shuffle {
    /// The step's index in `pipeline`.
    pub index: usize,
    /// The step's name.
    pub step: String,
    /// What events are shuffled by.
    pub key_by: ShuffleKey,
    /// The shuffle stream; its subjects are `<stream>.<key token>`.
    pub stream: String,
    /// The shuffle stream's partition names (its subjects, transform and
    /// filter subjects).
    pub names: PartitionNames,
    /// Whether an event-time window follows the step: stage 1 then sends
    /// watermark messages through the shuffle stream, and stage 2's
    /// windows take the minimum over the upstream partitions.
    pub watermarks: bool,
    /// How long an upstream partition may send no watermark before stage 2
    /// leaves it out of the minimum (ms).
    pub idle_timeout_ms: u64,
}

impl ClusterPipeline {
    /// Reads the config file at `file` with the standard registry, and
    /// checks it describes a clustered pipeline.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Config`] when it is not a valid pipeline config,
    /// [`ClusterError::Invalid`] (naming the JSON path) when it has no
    /// `cluster`, or its source cannot be partitioned.
    pub fn load(file: &Path) -> Result<Self, ClusterError> {
        let config = PipelineConfig::load(file)?;
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| {
            ClusterError::Config(plumber_connectors::config::ConfigError::Read {
                file: file.to_path_buf(),
                source,
            })
        })?;
        let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::from_parts(config, &text, origin, base)
    }

    /// As [`ClusterPipeline::load`], from config text; `origin` names it in
    /// errors and relative paths are resolved against `base`.
    ///
    /// # Errors
    ///
    /// As [`ClusterPipeline::load`].
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ClusterError> {
        let config = PipelineConfig::parse(text, origin, base)?;
        Self::from_parts(config, text, origin.to_owned(), base.to_path_buf())
    }

    fn from_parts(
        config: PipelineConfig,
        text: &str,
        origin: String,
        base: PathBuf,
    ) -> Result<Self, ClusterError> {
        let invalid = |path: &str, message: String| ClusterError::Invalid {
            file: origin.clone(),
            path: path.to_owned(),
            message,
        };
        let Some(cluster) = config.cluster.clone() else {
            return Err(invalid(
                "cluster",
                "missing field `cluster`: a worker runs a pipeline partitioned over a cluster, \
                 e.g. \"cluster\": {\"url\": [\"nats://127.0.0.1:4222\"], \"partitions\": 64}"
                    .to_owned(),
            ));
        };
        // The config was read from this text: it is JSON.
        let raw: Value = serde_json::from_str(text)
            .map_err(|error| invalid("(top level)", error.to_string()))?;
        let from = raw.get("from").cloned().unwrap_or(Value::Null);
        let text_field = |field: &str| from.get(field).and_then(Value::as_str).map(str::to_owned);
        let stream = text_field("stream")
            .ok_or_else(|| invalid("from.stream", "expected the input stream's name".into()))?;
        let consumer = text_field("consumer").ok_or_else(|| {
            invalid(
                "from.consumer",
                "expected the durable consumer's name".into(),
            )
        })?;
        if from.get("filter_subject").is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                "from.filter_subject",
                "a clustered pipeline's partitions each read their own subjects: remove \
                 `filter_subject`"
                    .into(),
            ));
        }
        let subjects: Vec<&str> = from
            .get("subjects")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let input = match subjects.as_slice() {
            [one] => one
                .strip_suffix(".*")
                .filter(|prefix| !prefix.is_empty() && !prefix.contains(['*', '>'])),
            _ => None,
        };
        let Some(input) = input else {
            return Err(invalid(
                "from.subjects",
                format!(
                    "a clustered pipeline's stream captures one subject `<in>.*`, whose last \
                     token is the key that picks the partition (e.g. [\"orders.*\"]); got {:?}",
                    subjects
                ),
            ));
        };
        if config.state.type_name() == "redis" {
            check_hash_tag_parts(&raw, &config.name)
                .map_err(|(path, message)| invalid(path, message))?;
        }
        let shuffle = config
            .pipeline
            .iter()
            .enumerate()
            .find_map(|(index, step)| match step {
                StepConfig::Repartition(step) => Some((index, step)),
                _ => None,
            })
            .map(|(index, step)| {
                let stream = step
                    .stream
                    .clone()
                    .unwrap_or_else(|| stream_part(&format!("{}-{}", config.name, step.name)));
                let watermarks = config.pipeline[index + 1..].iter().any(|later| {
                    matches!(later, StepConfig::Window(window) if window.build().is_ok_and(|window| {
                        matches!(window.kind(),
                            WindowKind::Tumbling { time: TimeMode::Event(_), .. }
                            | WindowKind::Sliding { time: TimeMode::Event(_), .. }
                            | WindowKind::Session { time: TimeMode::Event(_), .. })
                    }))
                });
                Shuffle {
                    index,
                    watermarks,
                    idle_timeout_ms: step
                        .idle_timeout_ms
                        .unwrap_or(plumber_engine::shuffle::DEFAULT_IDLE_TIMEOUT_MS),
                    step: step.name.clone(),
                    key_by: step.key_by.clone(),
                    names: PartitionNames::new(
                        &config.name,
                        &stream,
                        &consumer,
                        cluster.partitions,
                    ),
                    stream,
                }
            });
        if let Some(shuffle) = &shuffle {
            if shuffle.stream == stream {
                return Err(invalid(
                    &format!("pipeline[{}].stream", shuffle.index),
                    format!(
                        "the shuffle stream must not be the input stream `{stream}`: name another"
                    ),
                ));
            }
        }
        let stages = if shuffle.is_some() { 2 } else { 1 };
        let names = PartitionNames::new(&config.name, input, &consumer, cluster.partitions)
            .with_stages(stages);
        Ok(ClusterPipeline {
            origin,
            base,
            raw,
            config,
            cluster,
            stream,
            names,
            shuffle,
        })
    }

    /// Names the partitions as generation `generation` does (the input
    /// stream's, which `plumber cluster migrate` counts up).
    pub fn set_generation(&mut self, generation: u32) {
        self.names = self.names.clone().with_generation(generation);
        if let Some(shuffle) = &mut self.shuffle {
            shuffle.names = shuffle.names.clone().with_generation(generation);
        }
    }

    /// How long a lease lives without renewal.
    #[must_use]
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.cluster.lease_ttl_ms)
    }

    /// The servers of the cluster, as one comma-separated string.
    #[must_use]
    pub fn servers(&self) -> String {
        self.cluster.url.join(",")
    }

    /// The key-value bucket of the pipeline's leases.
    #[must_use]
    pub fn leases_bucket(&self) -> String {
        format!("plumber_{}_leases", bucket_part(&self.config.name))
    }

    /// The key-value bucket of the pipeline's workers.
    #[must_use]
    pub fn members_bucket(&self) -> String {
        format!("plumber_{}_members", bucket_part(&self.config.name))
    }

    /// The subjects the pipeline's JetStream sinks (`to`, `dead_letter`)
    /// publish to, each with the config field of its sink.
    #[must_use]
    pub fn jetstream_outputs(&self) -> Vec<(&'static str, String)> {
        ["to", "dead_letter"]
            .into_iter()
            .filter_map(|field| {
                let sink = self.raw.get(field)?;
                if sink.get("type").and_then(Value::as_str) != Some("jetstream") {
                    return None;
                }
                let subject = sink.get("subject").and_then(Value::as_str)?;
                Some((field, subject.to_owned()))
            })
            .collect()
    }

    /// The name `cluster init` gives the stream it creates for the output
    /// subject of sink `field` (`to`, `dead_letter`).
    #[must_use]
    pub fn output_stream_name(&self, field: &str) -> String {
        format!("plumber_{}_{field}", bucket_part(&self.config.name))
    }

    /// Whether the state lives where every worker reaches it (Redis); sled
    /// is local to one machine, so a sled pipeline runs on one worker only.
    #[must_use]
    pub fn shared_state(&self) -> bool {
        self.config.state.type_name() == "redis"
    }

    /// The config of the task of `partition`: the pipeline named
    /// `<pipeline>#p<NN>`, its source reading only the partition's
    /// subjects through its own durable consumer, and (with Redis) its
    /// keys under `<prefix>{<pipeline>#p<NN>}:` — one hash tag per
    /// partition, so a Redis Cluster keeps a partition's keys, checkpoint
    /// and fence in one slot, as the atomic commit needs.
    ///
    /// With a `repartition` step, `partition` is a task of either stage
    /// ([`PartitionNames::stage_of`]): a stage-1 task (`<pipeline>.s1#p<NN>`)
    /// keeps the steps before the step and publishes to the shuffle stream
    /// by the step's key; a stage-2 task (`<pipeline>.s2#p<NN>`) reads its
    /// partition of the shuffle stream and keeps the steps after the step
    /// and the pipeline's sink.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Config`] if the derived config does not read (it
    /// would not, only if the original did not).
    pub fn partition_config(&self, partition: u32) -> Result<PipelineConfig, ClusterError> {
        let text = self.partition_json(partition).to_string();
        let origin = format!("{} (partition {partition})", self.origin);
        Ok(PipelineConfig::parse(&text, &origin, &self.base)?)
    }

    /// The stream task `task` reads and the consumer it reads it through.
    #[must_use]
    pub fn task_input(&self, task: u32) -> (String, String) {
        let stream = match (&self.shuffle, self.names.stage_of(task)) {
            (Some(shuffle), (2, _)) => shuffle.stream.clone(),
            _ => self.stream.clone(),
        };
        (stream, self.names.consumer(task))
    }

    /// The JSON of [`ClusterPipeline::partition_config`]; with a shuffle,
    /// task `partition` is of stage 1 or 2 ([`PartitionNames::stage_of`]).
    fn partition_json(&self, partition: u32) -> Value {
        let task = self.names.task(partition);
        let (stage, stage_partition) = self.names.stage_of(partition);
        let mut raw = self.raw.clone();
        if let Value::Object(top) = &mut raw {
            top.remove("cluster");
            top.insert("name".into(), Value::String(task.clone()));
            let url = top.get("from").and_then(|from| from.get("url")).cloned();
            if let Some(Value::Object(from)) = top.get_mut("from") {
                let filter = match (&self.shuffle, stage) {
                    (Some(shuffle), 2) => {
                        from.insert("stream".into(), Value::String(shuffle.stream.clone()));
                        from.remove("subjects");
                        if shuffle.watermarks {
                            // Each stage-1 task is an upstream.
                            from.insert(
                                "watermark_upstreams".into(),
                                Value::from(self.names.partitions),
                            );
                            from.insert(
                                "watermark_idle_timeout_ms".into(),
                                Value::from(shuffle.idle_timeout_ms),
                            );
                        }
                        shuffle.names.filter_subject(stage_partition)
                    }
                    _ => self.names.filter_subject(stage_partition),
                };
                from.insert("filter_subject".into(), Value::String(filter));
                from.insert(
                    "consumer".into(),
                    Value::String(self.names.consumer(partition)),
                );
            }
            if let Some(shuffle) = &self.shuffle {
                if let Some(Value::Array(steps)) = top.get_mut("pipeline") {
                    let after = steps.split_off(shuffle.index.min(steps.len()));
                    if stage == 2 {
                        // Without the repartition step itself.
                        *steps = after.into_iter().skip(1).collect();
                    }
                }
                if stage == 1 {
                    let mut to = serde_json::json!({
                        "type": "jetstream",
                        "subject": shuffle.stream,
                        "subject_key_by": shuffle.key_by,
                    });
                    if let Some(url) = url {
                        to["url"] = url;
                    }
                    if shuffle.watermarks {
                        to["watermark_partitions"] = Value::from(shuffle.names.partitions);
                    }
                    top.insert("to".into(), to);
                }
            }
            if let Some(Value::Object(state)) = top.get_mut("state") {
                if state.get("type").and_then(Value::as_str) == Some("redis") {
                    let prefix = state
                        .get("key_prefix")
                        .and_then(Value::as_str)
                        .unwrap_or(DEFAULT_REDIS_PREFIX)
                        .to_owned();
                    state.insert(
                        "key_prefix".into(),
                        Value::String(format!("{prefix}{{{task}}}:")),
                    );
                }
            }
        }
        raw
    }
}

/// `name` as a stream name (no whitespace, `.`, `*`, `>`, `/` or `\\`):
/// other characters become `_`, and then a hash of the name keeps it
/// unique.
fn stream_part(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if clean == name {
        clean
    } else {
        format!("{clean}_{:08x}", fnv1a32(name.as_bytes()))
    }
}

/// The state backends a process opened for partitions, shared where the
/// backend must be (sled locks its directory: every partition of a worker
/// uses the one open database, as pipelines of one `plumber run` do), a
/// new connection per partition otherwise (Redis).
#[derive(Default)]
pub struct PartitionStates {
    shared: tokio::sync::Mutex<HashMap<String, SharedState>>,
}

impl std::fmt::Debug for PartitionStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStates").finish_non_exhaustive()
    }
}

impl PartitionStates {
    /// The state backend of the partition task `config` describes.
    ///
    /// # Errors
    ///
    /// The backend cannot be opened.
    pub async fn open(&self, config: &PipelineConfig) -> Result<SharedState, StateError> {
        let Some(key) = config.state.shared_key() else {
            return config.open_state().await;
        };
        let mut shared = self.shared.lock().await;
        if let Some(state) = shared.get(&key) {
            return Ok(state.clone());
        }
        let state = config.open_state().await?;
        shared.insert(key, state.clone());
        Ok(state)
    }
}

/// Redis Cluster hashes only the part of a key between its first `{` and
/// the first `}` after it. Each partition's keys start with
/// `<key_prefix>{<name>#p<NN>}:`, so that tag must be the first: a brace
/// in the prefix would make another part (or, with `{}`, the whole key,
/// spreading one partition's keys over slots, which its atomic commit
/// cannot span) decide the slot; a `}` in the name would cut the tag short
/// (every partition in one slot).
fn check_hash_tag_parts(raw: &Value, name: &str) -> Result<(), (&'static str, String)> {
    let prefix = raw
        .get("state")
        .and_then(|state| state.get("key_prefix"))
        .and_then(Value::as_str);
    if let Some(prefix) = prefix.filter(|prefix| prefix.contains(['{', '}'])) {
        return Err((
            "state.key_prefix",
            format!(
                "a clustered pipeline's Redis keys get the hash tag `{{<name>#p<NN>}}` after the \
                 prefix, so that a Redis Cluster keeps each partition's keys in one slot; the \
                 prefix {prefix:?} has a brace, which would change the part Redis hashes: \
                 remove `{{` and `}}` from it"
            ),
        ));
    }
    if name.contains('}') {
        return Err((
            "name",
            format!(
                "a clustered pipeline's name is the hash tag of its partitions' Redis keys \
                 (`{{<name>#p<NN>}}`); {name:?} has a `}}`, which would end the tag early and \
                 put every partition in one slot: remove it"
            ),
        ));
    }
    Ok(())
}

/// `name` as a part of a bucket name (letters, digits, `_` and `-`): other
/// characters become `_`, and then a hash of the name keeps it unique.
fn bucket_part(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == name {
        clean
    } else {
        format!("{clean}_{:08x}", fnv1a32(name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "name": "orders",
        "state": {"type": "redis", "url": "redis://127.0.0.1:1/"},
        "cluster": {"url": ["nats://127.0.0.1:4222"], "partitions": 64},
        "from": {"type": "jetstream", "stream": "IN", "consumer": "count", "subjects": ["in.*"]},
        "to": {"type": "stdout"}
    }"#;

    #[test]
    fn a_partition_gets_its_own_name_subjects_consumer_and_key_prefix() {
        let pipeline = ClusterPipeline::parse(CONFIG, "c.json", Path::new(".")).unwrap();
        assert_eq!(pipeline.stream, "IN");
        let config = pipeline.partition_config(5).unwrap();
        assert_eq!(config.name, "orders#p05");
        assert!(config.cluster.is_none());
        assert_eq!(pipeline.leases_bucket(), "plumber_orders_leases");
        let raw = pipeline.partition_json(5);
        assert_eq!(raw["from"]["filter_subject"], "in-p.5.>");
        assert_eq!(raw["from"]["consumer"], "count-p05");
        assert_eq!(raw["from"]["subjects"][0], "in.*");
        assert_eq!(raw["state"]["key_prefix"], "plumber:{orders#p05}:");
        assert!(raw.get("cluster").is_none());
    }

    #[test]
    fn a_source_that_cannot_be_partitioned_is_refused_with_its_path() {
        let bad = CONFIG.replace(r#"["in.*"]"#, r#"["in.>"]"#);
        let error = ClusterPipeline::parse(&bad, "c.json", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(error.contains("at `from.subjects`"), "{error}");
        let filtered = CONFIG.replace(
            r#""consumer": "count""#,
            r#""consumer": "count", "filter_subject": "in.x""#,
        );
        let error = ClusterPipeline::parse(&filtered, "c.json", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(error.contains("at `from.filter_subject`"), "{error}");
    }

    const TWO_STAGES: &str = r#"{
        "name": "orders",
        "state": {"type": "redis", "url": "redis://127.0.0.1:1/"},
        "cluster": {"url": ["nats://127.0.0.1:4222"], "partitions": 16},
        "from": {"type": "jetstream", "url": "nats://10.0.0.1:4222", "stream": "IN",
                 "consumer": "count", "subjects": ["in.*"], "ack_wait_ms": 5000},
        "pipeline": [
            {"name": "clean", "type": "wasm", "module": "clean.wasm"},
            {"name": "by_user", "type": "repartition", "key_by": {"field": "user"}},
            {"name": "count", "type": "wasm", "module": "count.wasm"}
        ],
        "to": {"type": "stdout"}
    }"#;

    #[test]
    fn publishing_after_the_commit_applies_to_both_stages_tasks() {
        let config = TWO_STAGES.replacen(
            r#""name": "orders","#,
            r#""name": "orders", "publish": "after_commit","#,
            1,
        );
        let pipeline = ClusterPipeline::parse(&config, "c.json", Path::new(".")).unwrap();
        for task in [3, 16 + 3] {
            let config = pipeline.partition_config(task).unwrap();
            assert_eq!(
                config.publish,
                plumber_engine::pipeline::Publish::AfterCommit,
                "{}",
                config.name
            );
        }
    }

    #[test]
    fn a_repartition_step_makes_two_stages_joined_by_the_shuffle_stream() {
        let pipeline = ClusterPipeline::parse(TWO_STAGES, "c.json", Path::new(".")).unwrap();
        let shuffle = pipeline.shuffle.clone().unwrap();
        assert_eq!(shuffle.stream, "orders-by_user");
        assert_eq!(shuffle.index, 1);
        assert_eq!(shuffle.names.captured(), "orders-by_user.*");
        assert_eq!(
            shuffle.names.transform_destination(),
            "orders-by_user-p.{{partition(16,1)}}.{{wildcard(1)}}"
        );
        assert_eq!(pipeline.names.tasks(), 32);

        // Stage 1, partition 3: the input, the steps before, the shuffle.
        let one = pipeline.partition_json(3);
        assert_eq!(one["name"], "orders.s1#p03");
        assert_eq!(one["from"]["stream"], "IN");
        assert_eq!(one["from"]["filter_subject"], "in-p.3.>");
        assert_eq!(one["from"]["consumer"], "count-s1p03");
        let steps: Vec<&str> = one["pipeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| step["name"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["clean"]);
        assert_eq!(
            one["to"],
            serde_json::json!({"type": "jetstream", "url": "nats://10.0.0.1:4222",
                "subject": "orders-by_user", "subject_key_by": {"field": "user"}})
        );
        assert_eq!(one["state"]["key_prefix"], "plumber:{orders.s1#p03}:");
        assert_eq!(pipeline.task_input(3), ("IN".into(), "count-s1p03".into()));

        // Stage 2, partition 3: the shuffle's partition, the steps after,
        // the pipeline's sink.
        let two = pipeline.partition_json(16 + 3);
        assert_eq!(two["name"], "orders.s2#p03");
        assert_eq!(two["from"]["stream"], "orders-by_user");
        assert_eq!(two["from"]["filter_subject"], "orders-by_user-p.3.>");
        assert_eq!(two["from"]["consumer"], "count-s2p03");
        assert_eq!(two["from"]["ack_wait_ms"], 5000);
        assert!(two["from"].get("subjects").is_none());
        let steps: Vec<&str> = two["pipeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| step["name"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["count"]);
        assert_eq!(two["to"], serde_json::json!({"type": "stdout"}));
        assert_eq!(two["state"]["key_prefix"], "plumber:{orders.s2#p03}:");
        assert_eq!(
            pipeline.task_input(19),
            ("orders-by_user".into(), "count-s2p03".into())
        );
        // Both read as ordinary pipeline configs.
        assert_eq!(pipeline.partition_config(3).unwrap().pipeline.len(), 1);
        assert_eq!(pipeline.partition_config(19).unwrap().name, "orders.s2#p03");

        // A named stream; the input stream refused.
        let named = TWO_STAGES.replace(
            r#""key_by": {"field": "user"}"#,
            r#""key_by": "key", "stream": "USERS""#,
        );
        let pipeline = ClusterPipeline::parse(&named, "c.json", Path::new(".")).unwrap();
        assert_eq!(pipeline.shuffle.unwrap().stream, "USERS");
        let input = TWO_STAGES.replace(
            r#""key_by": {"field": "user"}"#,
            r#""key_by": "key", "stream": "IN""#,
        );
        let error = ClusterPipeline::parse(&input, "c.json", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(error.contains("at `pipeline[1].stream`"), "{error}");
    }

    #[test]
    fn an_event_time_window_after_the_shuffle_gets_the_upstreams_watermarks() {
        let windowed = TWO_STAGES
            .replace(
                r#"{"name": "count", "type": "wasm", "module": "count.wasm"}"#,
                r#"{"name": "w", "type": "window", "window": "tumbling", "size_ms": 1000,
                    "time": "event"},
                   {"name": "count", "type": "wasm", "module": "count.wasm"}"#,
            )
            .replace(
                r#""key_by": {"field": "user"}"#,
                r#""key_by": {"field": "user"}, "idle_timeout_ms": 5000"#,
            );
        let pipeline = ClusterPipeline::parse(&windowed, "c.json", Path::new(".")).unwrap();
        let shuffle = pipeline.shuffle.clone().unwrap();
        assert!(shuffle.watermarks);
        let one = pipeline.partition_json(3);
        assert_eq!(one["to"]["watermark_partitions"], 16);
        let two = pipeline.partition_json(16 + 3);
        assert_eq!(two["from"]["watermark_upstreams"], 16);
        assert_eq!(two["from"]["watermark_idle_timeout_ms"], 5000);
        assert_eq!(pipeline.partition_config(3).unwrap().name, "orders.s1#p03");
        assert_eq!(pipeline.partition_config(19).unwrap().name, "orders.s2#p03");

        // The default idle timeout; no watermarks for a processing-time
        // window, nor before the shuffle.
        let default = windowed.replace(r#", "idle_timeout_ms": 5000"#, "");
        let pipeline = ClusterPipeline::parse(&default, "c.json", Path::new(".")).unwrap();
        assert_eq!(
            pipeline.partition_json(16)["from"]["watermark_idle_timeout_ms"],
            60_000
        );
        let processing = windowed.replace(r#""time": "event""#, r#""time": "processing""#);
        let pipeline = ClusterPipeline::parse(&processing, "c.json", Path::new(".")).unwrap();
        assert!(!pipeline.shuffle.clone().unwrap().watermarks);
        assert!(pipeline.partition_json(0)["to"]
            .get("watermark_partitions")
            .is_none());
        assert!(pipeline.partition_json(16)["from"]
            .get("watermark_upstreams")
            .is_none());

        let zero = windowed.replace(r#""idle_timeout_ms": 5000"#, r#""idle_timeout_ms": 0"#);
        let error = ClusterPipeline::parse(&zero, "c.json", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("at `pipeline[1].idle_timeout_ms`"),
            "{error}"
        );
    }

    #[test]
    fn a_later_generation_names_both_stages_and_counts_the_new_upstreams() {
        // After `plumber cluster migrate` to 16: both stages' tasks,
        // consumers and Redis tags are the new generation's, and stage 2
        // waits for the watermarks of the 16 new stage-1 tasks.
        let windowed = TWO_STAGES.replace(
            r#"{"name": "count", "type": "wasm", "module": "count.wasm"}"#,
            r#"{"name": "w", "type": "window", "window": "tumbling", "size_ms": 1000,
                "time": "event"}"#,
        );
        let mut pipeline = ClusterPipeline::parse(&windowed, "c.json", Path::new(".")).unwrap();
        pipeline.set_generation(1);
        let one = pipeline.partition_json(3);
        assert_eq!(one["name"], "orders.s1#g1p03");
        assert_eq!(one["from"]["consumer"], "count-g1s1p03");
        assert_eq!(one["to"]["watermark_partitions"], 16);
        let two = pipeline.partition_json(16 + 3);
        assert_eq!(two["name"], "orders.s2#g1p03");
        assert_eq!(two["from"]["consumer"], "count-g1s2p03");
        assert_eq!(two["from"]["filter_subject"], "orders-by_user-p.3.>");
        assert_eq!(two["from"]["watermark_upstreams"], 16);
        assert_eq!(two["state"]["key_prefix"], "plumber:{orders.s2#g1p03}:");
        assert_eq!(pipeline.shuffle.unwrap().names.generation, 1);
    }

    #[test]
    fn a_pipeline_without_repartition_keeps_one_stage() {
        let pipeline = ClusterPipeline::parse(CONFIG, "c.json", Path::new(".")).unwrap();
        assert!(pipeline.shuffle.is_none());
        assert_eq!(pipeline.names.tasks(), 64);
        assert_eq!(pipeline.task_input(5), ("IN".into(), "count-p05".into()));
    }

    /// Redis Cluster's slot of `key`: CRC16 (XMODEM) of its hash tag —
    /// the part between the first `{` and the next `}` when not empty —
    /// or of the whole key, modulo 16384.
    fn redis_cluster_slot(key: &[u8]) -> u16 {
        let hashed = match key.iter().position(|b| *b == b'{') {
            Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
                Some(len) if len > 0 => &key[open + 1..open + 1 + len],
                _ => key,
            },
            None => key,
        };
        let mut crc: u16 = 0;
        for byte in hashed {
            crc ^= u16::from(*byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn the_slot_function_is_redis_clusters() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        // CRC16/XMODEM's check value.
        assert_eq!(redis_cluster_slot(b"123456789"), 0x31C3);
        assert_eq!(redis_cluster_slot(b"foo"), 12182);
        assert_eq!(
            redis_cluster_slot(b"{user1000}.following"),
            redis_cluster_slot(b"user1000")
        );
        // An empty tag: the whole key is hashed, not `bar`.
        assert_ne!(
            redis_cluster_slot(b"foo{}{bar}"),
            redis_cluster_slot(b"bar")
        );
    }

    #[test]
    fn a_partitions_redis_keys_share_one_cluster_slot_and_partitions_spread() {
        for config in [
            CONFIG.to_owned(),
            CONFIG.replace(
                r#""url": "redis://127.0.0.1:1/"}"#,
                r#""url": "redis://127.0.0.1:1/", "key_prefix": "app:"}"#,
            ),
        ] {
            let pipeline = ClusterPipeline::parse(&config, "c.json", Path::new(".")).unwrap();
            let mut slots = std::collections::BTreeSet::new();
            for partition in 0..64 {
                let raw = pipeline.partition_json(partition);
                let prefix = raw["state"]["key_prefix"].as_str().unwrap().to_owned();
                let task = pipeline.names.task(partition);
                let scope = plumber_engine::state::checkpoint_scope("default", &task);
                // The Redis backend's keys: a state value, the checkpoint
                // record, its epoch and the fence.
                let keys = [
                    format!("{prefix}s:\x00\x07default{task}count:k1"),
                    format!("{prefix}c:{scope}"),
                    format!("{prefix}e:{scope}"),
                    format!("{prefix}f:{scope}"),
                ];
                let slot = redis_cluster_slot(keys[0].as_bytes());
                for key in &keys {
                    assert_eq!(redis_cluster_slot(key.as_bytes()), slot, "{key}");
                }
                assert!(prefix.ends_with(&format!("{{{task}}}:")), "{prefix}");
                slots.insert(slot);
            }
            assert!(
                slots.len() > 56,
                "64 partitions in only {} slots",
                slots.len()
            );
        }
    }

    #[test]
    fn braces_that_would_move_the_hash_tag_are_refused() {
        let braced = CONFIG.replace(
            r#""url": "redis://127.0.0.1:1/"}"#,
            r#""url": "redis://127.0.0.1:1/", "key_prefix": "app{}:"}"#,
        );
        let error = ClusterPipeline::parse(&braced, "c.json", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(error.contains("at `state.key_prefix`"), "{error}");
        assert!(error.contains("hash tag"), "{error}");
        let named = CONFIG.replace(r#""name": "orders""#, r#""name": "ord}ers""#);
        let error = ClusterPipeline::parse(&named, "c.json", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(error.contains("at `name`"), "{error}");
    }

    #[test]
    fn bucket_names_stay_valid_and_distinct() {
        assert_eq!(bucket_part("orders-1"), "orders-1");
        assert_ne!(bucket_part("a.b"), bucket_part("a/b"));
        assert!(bucket_part("a.b").starts_with("a_b_"));
    }
}
