//! `plumber cluster migrate`: changes a pipeline's partition count.
//!
//! The count is part of every partition's identity: the stream files each
//! key under `FNV-1a(key) % N`, and each partition keeps its keys' state
//! and its own input position. Changing N therefore moves state between
//! partitions, which only a stopped, drained pipeline allows. The command:
//!
//! 1. refuses while a worker holds a lease or answers pings, and when a
//!    partition's input is not all covered by its last checkpoint
//!    (`plumber cluster status` shows its lag);
//! 2. reads every partition's state and files each key under its partition
//!    of the new count: a window's entries by their event key, a pipe's
//!    keys by the event key that the state-key template (`{key}` unless
//!    given) finds in them. A key that is not in the partition its event
//!    key names under the old count is refused: the template does not
//!    describe the pipe's keys, and moving by it would split a key's state;
//! 3. writes the new partitions' state and checkpoints (each at the
//!    stream's last sequence) under the names of a new *generation*
//!    (`<pipeline>#g<k>p<NN>`), beside the old ones, which stay untouched;
//! 4. switches in one stream update: the new subject transform and the new
//!    generation in the stream's metadata (`plumber.generation`). Workers
//!    read the generation at start; a worker with the old count is
//!    refused;
//! 5. deletes the old generation's consumers and state.
//!
//! Until step 4 nothing the old generation needs has changed: a failed or
//! interrupted migration can be run again. Messages that producers publish
//! during the migration are refused before the switch (the stream's last
//! sequence must not move), and the few that land in the instant between
//! that check and the switch are published again under the new partition
//! count (their message id gets `~g<k>`), so none is lost or read by the
//! wrong partition.
//!
//! With a `repartition` step, both stages change: stage 1's state moves by
//! the input's keys, stage 2's by the shuffle keys' subject tokens (its
//! pipes' template is `--stage2-state-key`), each stage checkpointed at
//! the last sequence of the stream it reads, the shuffle stream drained as
//! the input is. The shuffle stream is switched first and the input stream
//! last: workers go by the input stream's generation and refuse to start
//! while the shuffle stream's differs, so a migration interrupted between
//! the two switches leaves the old generation whole, and running it again
//! finishes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use plumber_engine::checkpoint::{CheckpointRecord, Position};
use plumber_engine::shuffle::subject_token;
use plumber_engine::state::{
    checkpoint_scope, KeyHasher, KeyOwner, Namespace, SharedState, WriteSet, DEFAULT_TENANT,
};
use plumber_engine::window::{merge_saved_meta, saved_entry, SavedEntry};

use crate::init::{check_stream, check_version, connect, generation_of, GENERATION_METADATA};
use crate::lease::Leases;
use crate::membership::{Members, Ping};
use crate::partition::{partition_of, PartitionNames};
use crate::spec::PartitionStates;
use crate::{ClusterError, ClusterPipeline};

/// The state-key template when none is given: a pipe's state key is the
/// event key.
pub const DEFAULT_STATE_KEY: &str = "{key}";

/// How long the ephemeral consumers that count a partition's messages
/// live once unused (they are deleted at once; this bounds a crash).
const COUNTING_CONSUMER_TTL: Duration = Duration::from_secs(30);

/// How a pipe's state keys contain the event key they belong to: a text
/// with one `{key}`, e.g. `k{key}` for keys `k<event key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeyTemplate {
    before: Vec<u8>,
    after: Vec<u8>,
    text: String,
}

impl StateKeyTemplate {
    /// Reads a template.
    ///
    /// # Errors
    ///
    /// The text does not hold `{key}` exactly once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split("{key}");
        let (Some(before), Some(after), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "the state-key template {text:?} must hold `{{key}}` exactly once, where the \
                 event key is (e.g. `k{{key}}`)"
            ));
        };
        Ok(StateKeyTemplate {
            before: before.as_bytes().to_vec(),
            after: after.as_bytes().to_vec(),
            text: text.to_owned(),
        })
    }

    /// The event key in `state_key`, if it has the template's shape.
    #[must_use]
    pub fn event_key<'a>(&self, state_key: &'a [u8]) -> Option<&'a [u8]> {
        state_key
            .strip_prefix(self.before.as_slice())?
            .strip_suffix(self.after.as_slice())
    }
}

impl Default for StateKeyTemplate {
    fn default() -> Self {
        StateKeyTemplate {
            before: Vec::new(),
            after: Vec::new(),
            text: DEFAULT_STATE_KEY.to_owned(),
        }
    }
}

/// What to migrate how.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// How pipes' state keys contain their event keys (stage 1's pipes,
    /// with a `repartition` step).
    pub state_key: StateKeyTemplate,
    /// How stage 2's pipes' state keys contain their event keys (the keys
    /// the `repartition` step shuffled by); `{key}` when not given. Only for
    /// a pipeline with a `repartition` step.
    pub stage2_state_key: Option<StateKeyTemplate>,
}

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct MigrationReport {
    /// The partition count before.
    pub from: u32,
    /// The partition count after.
    pub to: u32,
    /// The generation now running (0: nothing was migrated).
    pub generation: u32,
    /// State keys moved (pipes' keys and windows' entries).
    pub keys_moved: u64,
    /// Messages published again because they arrived during the switch.
    pub republished: u64,
    /// What was done, a line each.
    pub lines: Vec<String>,
}

/// Where a moved key goes, given its new partition's task.
enum Filed<'a> {
    /// A pipe's key.
    Pipe { pipe: &'a str, key: &'a [u8] },
    /// A window's keyed entry.
    Window { window: &'a str, entry: &'a [u8] },
}

impl Filed<'_> {
    /// The full key in partition task `task` of `tenant`.
    fn key_in(&self, tenant: &str, task: &str) -> Vec<u8> {
        let (namespace, rest) = match self {
            Filed::Pipe { pipe, key } => (Namespace::for_tenant_pipe(tenant, task, pipe), key),
            Filed::Window { window, entry } => (Namespace::for_window(tenant, task, window), entry),
        };
        [namespace.prefix(), rest].concat()
    }
}

/// The new partitions' writes, built from the old partitions' state.
struct NewState {
    writes: Vec<WriteSet>,
    /// Each window's meta entries, from every old partition.
    metas: BTreeMap<String, Vec<Vec<u8>>>,
    keys: u64,
}

/// A partitioned stream as the migration found it: the input, or a
/// `repartition` step's shuffle stream.
struct PartitionedStream {
    name: String,
    stream: stream::Stream,
    config: stream::Config,
    /// The last sequence when it was read.
    last: u64,
    /// The partition count its transform has.
    partitions: u32,
    /// Its generation ([`GENERATION_METADATA`]).
    generation: u32,
}

impl PartitionedStream {
    /// Reads stream `name`, partitioned as `names` are named (with any
    /// count).
    async fn read(
        context: &jetstream::Context,
        pipeline: &ClusterPipeline,
        name: &str,
        names: &PartitionNames,
    ) -> Result<Self, ClusterError> {
        let mut stream =
            context
                .get_stream(name)
                .await
                .map_err(|_| ClusterError::NotInitialised {
                    stream: name.to_owned(),
                    config: pipeline.origin.clone(),
                })?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::jetstream(format!("reading stream `{name}`"), e))?
            .clone();
        let config = info.config.clone();
        let Some(transform) = config.subject_transform.clone() else {
            return Err(ClusterError::TransformDropped {
                stream: name.to_owned(),
                found: format!("no transform, subjects {:?}", config.subjects),
            });
        };
        let partitions =
            names
                .partitions_in(&transform.destination)
                .ok_or_else(|| ClusterError::Mismatch {
                    what: format!("stream `{name}`"),
                    message: format!(
                        "its subject transform `{}` → `{}` is not one plumber makes",
                        transform.source, transform.destination
                    ),
                })?;
        let generation = generation_of(name, &config)?;
        Ok(PartitionedStream {
            name: name.to_owned(),
            stream,
            last: info.state.last_sequence,
            config,
            partitions,
            generation,
        })
    }

    /// The stream's last sequence now.
    async fn last_now(&mut self) -> Result<u64, ClusterError> {
        let name = &self.name;
        Ok(self
            .stream
            .info()
            .await
            .map_err(|e| ClusterError::jetstream(format!("reading stream `{name}`"), e))?
            .state
            .last_sequence)
    }

    /// Switches the stream to `names` (their count) and `generation` in
    /// one update; returns its last sequence after the switch.
    async fn switch(
        &mut self,
        context: &jetstream::Context,
        names: &PartitionNames,
        generation: u32,
    ) -> Result<(u64, String), ClusterError> {
        let name = self.name.clone();
        let wanted = stream::SubjectTransform {
            source: names.captured(),
            destination: names.transform_destination(),
        };
        self.config.subject_transform = Some(wanted.clone());
        self.config
            .metadata
            .insert(GENERATION_METADATA.to_owned(), generation.to_string());
        let updated = context
            .update_stream(&self.config)
            .await
            .map_err(|e| ClusterError::jetstream(format!("switching stream `{name}`"), e))?;
        check_stream(&name, names, &wanted, &updated.config)?;
        Ok((
            updated.state.last_sequence,
            format!(
                "switched stream `{name}`: `{}` → `{}`, generation {generation}",
                wanted.source, wanted.destination
            ),
        ))
    }
}

/// One stage's old partitions and where its moved state goes.
struct Stage<'a> {
    /// 1 or 2 (1 for a pipeline of one stage).
    number: u32,
    /// The stream its tasks read.
    input: &'a PartitionedStream,
    /// Its stream's names in the old generation (the filter subjects).
    old_stream_names: PartitionNames,
    /// How its pipes' state keys hold the event key, and the flag that
    /// gives it.
    template: &'a StateKeyTemplate,
    flag: &'static str,
    /// Whether its events' keys reach its stream as [`subject_token`]s
    /// (a shuffle stream), rather than as the subject's token itself.
    tokens: bool,
}

/// Changes `pipeline`'s partition count to its config's
/// `cluster.partitions` (see the module docs). With a `repartition` step,
/// both stages change, each stage's state moved by the keys of the stream
/// it reads, and the shuffle stream is switched before the input stream:
/// the input stream's generation is the one workers go by, so until its
/// switch the old generation is whole, and a migration interrupted between
/// the two switches is finished by running it again (workers refuse to
/// start while the two streams' generations differ).
///
/// # Errors
///
/// [`ClusterError::Migration`] when something stands in the way (workers
/// running, input or shuffle stream not drained, state not keyed by the
/// event key, open keyless windows, an outbox not yet published, producers
/// publishing, streams switched apart by hand), with what to do; the
/// errors of [`connect`] and [`ClusterError::JetStream`] when a request
/// fails. Before the switch an error leaves the old generation as it was.
pub async fn migrate(
    pipeline: &ClusterPipeline,
    options: &MigrateOptions,
) -> Result<MigrationReport, ClusterError> {
    let refuse = |message: String| ClusterError::Migration {
        pipeline: pipeline.config.name.clone(),
        message,
    };
    if pipeline.shuffle.is_none() && options.stage2_state_key.is_some() {
        return Err(refuse(
            "`--stage2-state-key` is for the pipes after a `repartition` step, and the \
             pipeline has none: give its pipes' template with `--state-key`"
                .to_owned(),
        ));
    }
    let client = connect(&pipeline.cluster.url).await?;
    check_version(&client)?;
    let context = jetstream::new(client.clone());
    let mut input =
        PartitionedStream::read(&context, pipeline, &pipeline.stream, &pipeline.names).await?;
    let mut shuffle = match &pipeline.shuffle {
        Some(step) => {
            Some(PartitionedStream::read(&context, pipeline, &step.stream, &step.names).await?)
        }
        None => None,
    };
    let target = pipeline.names.partitions;
    let existing = input.partitions;
    let generation = input.generation;
    let mut report = MigrationReport {
        from: existing,
        to: target,
        generation,
        ..MigrationReport::default()
    };
    // The shuffle stream goes with the input stream, one switch behind.
    let mut resuming = false;
    if let Some(shuffle) = &shuffle {
        if shuffle.generation == generation + 1 {
            resuming = true;
            report.lines.push(format!(
                "stream `{}` was switched to generation {} ({} partitions) by a migration that \
                 stopped before it switched the input stream `{}`: finishing it from generation \
                 {generation}, which is untouched",
                shuffle.name, shuffle.generation, shuffle.partitions, input.name
            ));
        } else if shuffle.generation != generation || shuffle.partitions != existing {
            return Err(refuse(format!(
                "the shuffle stream `{}` is partitioned {} ways in generation {}, and the input \
                 stream `{}` {existing} ways in generation {generation}: `plumber cluster \
                 migrate` never leaves them so. Give the shuffle stream the input stream's \
                 partition count (its subject transform) and generation (its metadata \
                 `{GENERATION_METADATA}`), then migrate",
                shuffle.name, shuffle.partitions, shuffle.generation, input.name
            )));
        }
    }
    if existing == target && !resuming {
        report.lines.push(format!(
            "stream `{}` is partitioned {target} ways already (generation {generation}): \
             nothing to migrate",
            input.name
        ));
        return Ok(report);
    }
    let mut old = pipeline.clone();
    old.names = PartitionNames {
        partitions: existing,
        ..pipeline.names.clone()
    }
    .with_generation(generation);
    if let Some(step) = &mut old.shuffle {
        step.names = PartitionNames {
            partitions: existing,
            ..step.names.clone()
        }
        .with_generation(generation);
    }
    let mut new = pipeline.clone();
    new.set_generation(generation + 1);
    let tenant = pipeline
        .config
        .tenant
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());

    // 1. Nobody runs the pipeline.
    let leases = Leases::open(
        &context,
        &pipeline.leases_bucket(),
        old.names.clone(),
        pipeline.lease_ttl(),
    )
    .await?;
    refuse_held_leases(&leases, &old.names, &refuse).await?;
    let members = Members::open(client.clone(), &pipeline.members_bucket()).await?;
    let mut alive = Vec::new();
    for member in members.list().await? {
        if members.ping(&member.id).await == Ping::Alive {
            alive.push(member.id);
        }
    }
    if !alive.is_empty() {
        return Err(refuse(format!(
            "worker(s) {} are running: stop every worker first (SIGTERM hands its partitions \
             over after a final checkpoint)",
            alive.join(", ")
        )));
    }

    let default_template = StateKeyTemplate::default();
    let mut stages = vec![Stage {
        number: 1,
        input: &input,
        old_stream_names: old.names.clone(),
        template: &options.state_key,
        flag: "--state-key",
        tokens: false,
    }];
    if let (Some(shuffle), Some(step)) = (&shuffle, &old.shuffle) {
        stages.push(Stage {
            number: 2,
            input: shuffle,
            old_stream_names: step.names.clone(),
            template: options
                .stage2_state_key
                .as_ref()
                .unwrap_or(&default_template),
            flag: "--stage2-state-key",
            tokens: true,
        });
    }

    // 2. Every partition's input is covered by its last checkpoint.
    let states = PartitionStates::default();
    let mut old_states: Vec<Vec<(String, SharedState)>> = Vec::with_capacity(stages.len());
    for stage in &stages {
        let mut stage_states = Vec::with_capacity(existing as usize);
        let mut undrained = Vec::new();
        for partition in 0..existing {
            let index = (stage.number - 1) * existing + partition;
            let task = old.names.task(index);
            let state = states
                .open(&old.partition_config(index)?)
                .await
                .map_err(|e| ClusterError::jetstream(format!("opening the state of {task}"), e))?;
            let record = state
                .last_checkpoint(&checkpoint_scope(&tenant, &task))
                .await
                .map_err(|e| {
                    ClusterError::jetstream(format!("reading the checkpoint of {task}"), e)
                })?;
            let committed = match record.as_ref().map(|r| &r.position) {
                None | Some(Position::Start) => 0,
                Some(Position::Offset(sequence)) => *sequence,
                Some(other) => {
                    return Err(refuse(format!(
                        "the checkpoint of {task} holds the position {other:?}, not a stream \
                         sequence"
                    )))
                }
            };
            let subject = stage.old_stream_names.filter_subject(partition);
            let pending = count_after(&stage.input.stream, &subject, committed).await?;
            if pending > 0 {
                undrained.push(format!(
                    "{task}: {pending} message(s) after its checkpoint at sequence {committed}"
                ));
            }
            stage_states.push((task, state));
        }
        if !undrained.is_empty() {
            return Err(refuse(if stage.number == 1 {
                format!(
                    "the input is not drained — {}. Stop the producers, run the workers until \
                     `plumber cluster status` shows lag 0 everywhere, stop them with SIGTERM (a \
                     final checkpoint), then migrate",
                    undrained.join("; ")
                )
            } else {
                format!(
                    "the shuffle stream `{}` is not drained — {}. Stage 1 has published events \
                     that stage 2 has not checkpointed: run the workers until `plumber cluster \
                     status` shows lag 0 for every task of both stages, stop them with SIGTERM \
                     (a final checkpoint), then migrate",
                    stage.input.name,
                    undrained.join("; ")
                )
            }));
        }
        old_states.push(stage_states);
    }

    // 3. The state, filed under the new partitions: every stage's before
    // anything is written.
    let mut filed = Vec::with_capacity(stages.len());
    for (stage, stage_states) in stages.iter().zip(&old_states) {
        let new_tasks: Vec<String> = (0..target)
            .map(|partition| new.names.task((stage.number - 1) * target + partition))
            .collect();
        let moved = read_and_file(stage_states, &tenant, &new_tasks, stage, &refuse).await?;
        report.keys_moved += moved.keys;
        filed.push((new_tasks, moved));
    }

    // 4. Written beside the old generation, each stage checkpointed at its
    // stream's last sequence.
    let mut new_states: Vec<Vec<(String, SharedState)>> = Vec::with_capacity(stages.len());
    for (stage, (new_tasks, moved)) in stages.iter().zip(filed) {
        let mut writes = moved.writes;
        for (window, metas) in &moved.metas {
            let values: Vec<&[u8]> = metas.iter().map(Vec::as_slice).collect();
            for (partition, (write, task)) in writes.iter_mut().zip(&new_tasks).enumerate() {
                // The late count once, in the first partition.
                let merged = merge_saved_meta(&values, partition == 0).map_err(&refuse)?;
                let mut key = Namespace::for_window(&tenant, task, window)
                    .prefix()
                    .to_vec();
                key.extend_from_slice(b"meta");
                write.insert(key, Some(merged));
            }
        }
        let mut stage_states = Vec::with_capacity(target as usize);
        for (partition, (mut write, task)) in (0..target).zip(writes.into_iter().zip(new_tasks)) {
            let index = (stage.number - 1) * target + partition;
            let state = states
                .open(&new.partition_config(index)?)
                .await
                .map_err(|e| ClusterError::jetstream(format!("opening the state of {task}"), e))?;
            // What an interrupted run left there goes.
            let prefix = Namespace::pipeline_prefix(&tenant, &task);
            for (key, _) in state
                .scan_prefix(&prefix)
                .await
                .map_err(|e| ClusterError::jetstream(format!("reading the state of {task}"), e))?
            {
                write.entry(key).or_insert(None);
            }
            commit_at(
                &state,
                &tenant,
                &task,
                Position::Offset(stage.input.last),
                &[write],
            )
            .await?;
            stage_states.push((task, state));
        }
        new_states.push(stage_states);
    }
    for stage in &stages {
        report.lines.push(format!(
            "wrote the state of {target} partitions of {}generation {}, each checkpointed at \
             sequence {} of stream `{}`",
            if stages.len() > 1 {
                format!("stage {} of ", stage.number)
            } else {
                String::new()
            },
            generation + 1,
            stage.input.last,
            stage.input.name
        ));
    }
    report
        .lines
        .push(format!("moved {} state keys", report.keys_moved));
    let lasts: Vec<u64> = stages.iter().map(|stage| stage.input.last).collect();
    drop(stages);

    // 5. Still quiet and still nobody running: switch the shuffle stream,
    // then the input stream.
    let now = input.last_now().await?;
    if now != input.last {
        return Err(refuse(format!(
            "producers are publishing to `{}` (the stream's last sequence moved from {} to \
             {now} during the migration): stop them and run the migration again",
            pipeline.names.captured(),
            input.last
        )));
    }
    if let Some(shuffle) = &mut shuffle {
        let now = shuffle.last_now().await?;
        if now != shuffle.last {
            return Err(refuse(format!(
                "something publishes to the shuffle stream `{}` (its last sequence moved from \
                 {} to {now} during the migration): a stage-1 worker still runs; stop it and \
                 run the migration again",
                shuffle.name, shuffle.last
            )));
        }
    }
    refuse_held_leases(&leases, &old.names, &refuse).await?;
    hold_before_switch().await;
    let mut switched = Vec::new();
    if let (Some(shuffle), Some(old_step), Some(new_step)) =
        (&mut shuffle, &old.shuffle, &new.shuffle)
    {
        let (cut, line) = shuffle
            .switch(&context, &new_step.names, generation + 1)
            .await?;
        report.lines.push(line);
        hold_between_switches().await;
        switched.push((
            shuffle.name.clone(),
            shuffle.stream.clone(),
            old_step.names.clone(),
            cut,
            1,
        ));
    }
    let (cut, line) = input.switch(&context, &new.names, generation + 1).await?;
    report.lines.push(line);
    report.generation = generation + 1;
    switched.insert(
        0,
        (
            input.name.clone(),
            input.stream.clone(),
            old.names.clone(),
            cut,
            0,
        ),
    );

    // Arrived between the check and the switch: filed by the old count.
    for (name, stream, old_names, cut, stage) in &switched {
        let last = lasts.get(*stage).copied().unwrap_or(*cut);
        if *cut <= last {
            continue;
        }
        let republished =
            republish(&context, stream, old_names, last, *cut, generation + 1).await?;
        report.republished += republished;
        for (task, state) in new_states.get(*stage).into_iter().flatten() {
            commit_at(state, &tenant, task, Position::Offset(*cut), &[]).await?;
        }
        report.lines.push(format!(
            "published again {republished} message(s) of `{name}` that arrived during the \
             switch (sequences {}..={cut}); the new partitions start after {cut}",
            last + 1
        ));
    }

    // 6. The old generation goes.
    let mut cleanup = String::new();
    for (stage, (_, stream, _, _, _)) in switched.iter().enumerate() {
        let first = u32::try_from(stage).unwrap_or(u32::MAX) * existing;
        for index in first..first + existing {
            let consumer = old.names.consumer(index);
            if let Err(error) = stream.delete_consumer(&consumer).await {
                let _ = write!(cleanup, " consumer `{consumer}`: {error};");
            }
        }
    }
    for ((task, state), last) in old_states
        .iter()
        .zip(&lasts)
        .flat_map(|(stage, last)| stage.iter().map(move |old| (old, *last)))
    {
        let prefix = Namespace::pipeline_prefix(&tenant, task);
        let deletes: WriteSet = match state.scan_prefix(&prefix).await {
            Ok(keys) => keys.into_iter().map(|(key, _)| (key, None)).collect(),
            Err(error) => {
                let _ = write!(cleanup, " state of {task}: {error};");
                continue;
            }
        };
        if let Err(error) =
            commit_at(state, &tenant, task, Position::Offset(last), &[deletes]).await
        {
            let _ = write!(cleanup, " state of {task}: {error};");
        }
    }
    let consumers = existing * u32::try_from(switched.len()).unwrap_or(1);
    if cleanup.is_empty() {
        report.lines.push(format!(
            "deleted the {consumers} consumers and the state of generation {generation}"
        ));
    } else {
        report.lines.push(format!(
            "the migration is done, but some of generation {generation} is left (delete it by \
             hand):{cleanup}"
        ));
    }
    Ok(report)
}

/// The fault point that holds a migration between its last check of the
/// stream and the switch for `<ms>` (a testing aid: it makes the race with
/// a producer that the switch handles happen on purpose).
pub const HOLD_BEFORE_SWITCH: &str = "PLUMBER_FAULT_HOLD_BEFORE_SWITCH";

/// The fault point that holds a two-stage migration between the switch of
/// the shuffle stream and that of the input stream for `<ms>` (a testing
/// aid: a migration killed there is one interrupted between its switches).
pub const HOLD_BETWEEN_SWITCHES: &str = "PLUMBER_FAULT_HOLD_BETWEEN_SWITCHES";

/// Waits as [`HOLD_BEFORE_SWITCH`] says, if it is set.
async fn hold_before_switch() {
    crate::fault::hold(HOLD_BEFORE_SWITCH, "holding before the switch").await;
}

/// Waits as [`HOLD_BETWEEN_SWITCHES`] says, if it is set.
async fn hold_between_switches() {
    crate::fault::hold(HOLD_BETWEEN_SWITCHES, "holding between the two switches").await;
}

/// Refuses while any of `names`' leases is held.
async fn refuse_held_leases(
    leases: &Leases,
    names: &PartitionNames,
    refuse: &impl Fn(String) -> ClusterError,
) -> Result<(), ClusterError> {
    let held = leases.all().await?;
    if held.is_empty() {
        return Ok(());
    }
    let holders: BTreeSet<&str> = held.values().map(|h| h.owner.as_str()).collect();
    let first = held
        .keys()
        .next()
        .map(|&task| names.task(task))
        .unwrap_or_default();
    Err(refuse(format!(
        "{} partition(s) are held (e.g. {first}) by {}: stop every worker first and let their \
         leases end (at most `cluster.lease_ttl_ms` after a crash)",
        held.len(),
        holders.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// How many messages of `subject` the stream holds after `sequence`,
/// counted by an ephemeral consumer that is deleted again.
async fn count_after(
    input: &stream::Stream,
    subject: &str,
    sequence: u64,
) -> Result<u64, ClusterError> {
    let failed = |e: &dyn std::fmt::Display| {
        ClusterError::jetstream(format!("counting the messages of `{subject}`"), e)
    };
    let counter = input
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: COUNTING_CONSUMER_TTL,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let info = counter.cached_info();
    let pending = info.num_pending;
    let name = info.name.clone();
    if let Err(error) = input.delete_consumer(&name).await {
        tracing::debug!(consumer = name, %error, "the counting consumer ends by its inactivity");
    }
    Ok(pending)
}

/// Reads every old partition's state of `stage` and files each key under
/// its new partition (`new_tasks`, one per partition of the new count).
async fn read_and_file(
    old_states: &[(String, SharedState)],
    tenant: &str,
    new_tasks: &[String],
    stage: &Stage<'_>,
    refuse: &impl Fn(String) -> ClusterError,
) -> Result<NewState, ClusterError> {
    let existing = u32::try_from(old_states.len()).unwrap_or(u32::MAX);
    let target = u32::try_from(new_tasks.len()).unwrap_or(u32::MAX);
    let template = stage.template;
    let mut moved = NewState {
        writes: new_tasks
            .iter()
            .map(|_| WriteSet::with_hasher(KeyHasher::default()))
            .collect(),
        metas: BTreeMap::new(),
        keys: 0,
    };
    let shown = |bytes: &[u8]| String::from_utf8_lossy(bytes).escape_debug().to_string();
    for (partition, (task, state)) in (0..existing).zip(old_states) {
        let prefix = Namespace::pipeline_prefix(tenant, task);
        let keys = state
            .scan_prefix(&prefix)
            .await
            .map_err(|e| ClusterError::jetstream(format!("reading the state of {task}"), e))?;
        for (full, value) in keys {
            // The event key the entry belongs to, and where its new key
            // goes given the new partition's task name.
            let (event_key, filed) = match Namespace::owner_of(tenant, task, &full) {
                Some(KeyOwner::Pipe { pipe, key }) => {
                    let Some(event_key) = template.event_key(key) else {
                        return Err(refuse(format!(
                            "the state key {:?} of pipe `{pipe}` in {task} does not have the \
                             shape of the state-key template {:?}: give the template that \
                             finds the event key in the pipe's keys (`{}`)",
                            shown(key),
                            template.text,
                            stage.flag
                        )));
                    };
                    (event_key, Filed::Pipe { pipe, key })
                }
                Some(KeyOwner::Window { window, entry }) => match saved_entry(entry) {
                    SavedEntry::Meta => {
                        moved
                            .metas
                            .entry(window.to_owned())
                            .or_default()
                            .push(value);
                        continue;
                    }
                    // A key's trigger state and timers, and its pane
                    // accumulators, go where its windows go.
                    SavedEntry::Keyed(event_key)
                    | SavedEntry::TriggerKeyed(event_key)
                    | SavedEntry::PaneKeyed(event_key) => {
                        (event_key, Filed::Window { window, entry })
                    }
                    SavedEntry::Keyless | SavedEntry::TriggerKeyless | SavedEntry::PaneKeyless => {
                        return Err(refuse(format!(
                            "window `{window}` of {task} has keyless events open: a window \
                             without a key cannot be split between partitions; let it fire \
                             first"
                        )))
                    }
                    SavedEntry::Legacy | SavedEntry::Unknown => {
                        return Err(refuse(format!(
                            "window `{window}` of {task} has an entry {:?} this version cannot \
                             move (saved by another version: run the workers of this version \
                             once, so that a checkpoint rewrites it)",
                            shown(entry)
                        )))
                    }
                },
                Some(KeyOwner::Outbox { .. }) => {
                    return Err(refuse(format!(
                        "{task} holds output in its outbox that may not be published yet: \
                             start the workers, let them checkpoint twice, stop them with \
                             SIGTERM, then migrate"
                    )))
                }
                None => {
                    return Err(refuse(format!(
                        "{task} has a state key {:?} that belongs to no pipe, window or \
                             outbox",
                        shown(&full)
                    )))
                }
            };
            // The token its stream files the key by.
            let token = if stage.tokens {
                subject_token(event_key).into_bytes()
            } else {
                event_key.to_vec()
            };
            let was = partition_of(&token, existing);
            if was != partition {
                return Err(refuse(format!(
                    "{task} holds state of event key {:?} (stored as {:?}), which belongs to \
                     partition {was} of {existing}: its pipes' state is not keyed by the event \
                     key as the state-key template {:?} says, and moving it by that key would \
                     split a key's state (give the right `{}`)",
                    shown(event_key),
                    shown(&full),
                    template.text,
                    stage.flag
                )));
            }
            let to = partition_of(&token, target);
            let Some(new_task) = new_tasks.get(to as usize) else {
                continue;
            };
            let new_key = filed.key_in(tenant, new_task);
            if let Some(write) = moved.writes.get_mut(to as usize) {
                write.insert(new_key, Some(value));
            }
            moved.keys += 1;
        }
    }
    Ok(moved)
}

/// Commits `writes` to `task`'s scope as its next checkpoint at
/// `position`, under a fresh claim of the scope (so that no commit of an
/// earlier owner can land after it).
async fn commit_at(
    state: &SharedState,
    tenant: &str,
    task: &str,
    position: Position,
    writes: &[WriteSet],
) -> Result<(), ClusterError> {
    let scope = checkpoint_scope(tenant, task);
    let failed = |e: &dyn std::fmt::Display| {
        ClusterError::jetstream(format!("committing the state of {task}"), e)
    };
    let prior = state
        .last_checkpoint(&scope)
        .await
        .map_err(|e| failed(&e))?;
    let fence = state.claim(&scope).await.map_err(|e| failed(&e))?;
    let mut record = CheckpointRecord::new(&scope, prior.map_or(1, |r| r.epoch + 1), position);
    record.fence = fence;
    state.commit(&record, writes).await.map_err(|e| failed(&e))
}

/// Publishes again the messages of sequences `after+1..=until`, filed by
/// the old partition count, to their original subjects (`<in>.<key>`), so
/// that the new count files them; their message ids get `~g<generation>`.
/// Returns how many.
async fn republish(
    context: &jetstream::Context,
    input: &stream::Stream,
    old: &PartitionNames,
    after: u64,
    until: u64,
    generation: u32,
) -> Result<u64, ClusterError> {
    let mut count = 0;
    for sequence in after + 1..=until {
        let message = match input.get_raw_message(sequence).await {
            Ok(message) => message,
            // Deleted or expired meanwhile: nothing to move.
            Err(_) => continue,
        };
        let subject = message.subject.as_str();
        let Some(key) = subject
            .strip_prefix(&format!("{}.", old.partitioned))
            .and_then(|rest| rest.split_once('.'))
            .map(|(_, key)| key)
        else {
            continue;
        };
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter() {
            for value in values {
                if AsRef::<str>::as_ref(name) == "Nats-Msg-Id" {
                    headers.insert(
                        "Nats-Msg-Id",
                        format!("{}~g{generation}", value.as_str()).as_str(),
                    );
                } else {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let original = format!("{}.{key}", old.input);
        context
            .publish_with_headers(original.clone(), headers, message.payload.clone())
            .await
            .map_err(|e| ClusterError::jetstream(format!("publishing again to `{original}`"), e))?
            .await
            .map_err(|e| ClusterError::jetstream(format!("publishing again to `{original}`"), e))?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_finds_the_event_key_or_says_the_key_has_another_shape() {
        let template = StateKeyTemplate::parse("k{key}").unwrap();
        assert_eq!(template.event_key(b"k42"), Some(&b"42"[..]));
        assert_eq!(template.event_key(b"x42"), None);
        let both = StateKeyTemplate::parse("user:{key}:count").unwrap();
        assert_eq!(both.event_key(b"user:7:count"), Some(&b"7"[..]));
        assert_eq!(both.event_key(b"user:7:sum"), None);
        assert_eq!(
            StateKeyTemplate::default().event_key(b"abc"),
            Some(&b"abc"[..])
        );
        for bad in ["k", "{key}{key}", ""] {
            let error = StateKeyTemplate::parse(bad).unwrap_err();
            assert!(error.contains("exactly once"), "{error}");
        }
    }
}
