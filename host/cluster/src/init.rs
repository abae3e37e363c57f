//! `plumber cluster init`: checks the server version, and creates or
//! checks the partitioned input stream, the streams of the JetStream
//! outputs (a long duplicate window) and the key-value buckets of the
//! members and the leases. Running it again changes nothing; a changed
//! partition count is refused.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ServerAddr};

use crate::partition::PartitionNames;
use crate::version::{self, Verdict};
use crate::{ClusterError, ClusterPipeline};

/// How long connecting to the cluster may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long JetStream keeps message ids to drop duplicate publishes: a
/// producer (or a replayed partition) that publishes again within it is
/// not stored twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// The input stream's metadata entry that holds the partitions'
/// generation: how many times `plumber cluster migrate` changed the
/// partition count (absent: 0).
pub const GENERATION_METADATA: &str = "plumber.generation";

/// The generation a stream's config records ([`GENERATION_METADATA`]).
///
/// # Errors
///
/// [`ClusterError::Mismatch`] when the entry is not a number.
pub fn generation_of(name: &str, config: &stream::Config) -> Result<u32, ClusterError> {
    match config.metadata.get(GENERATION_METADATA) {
        None => Ok(0),
        Some(text) => text.parse().map_err(|_| ClusterError::Mismatch {
            what: format!("stream `{name}`"),
            message: format!("its metadata `{GENERATION_METADATA}` is {text:?}, not a number"),
        }),
    }
}

/// Checks that the pipeline's input stream exists and is partitioned as
/// the config says, and returns the partitions' generation. Workers and
/// `status` run this first, so that a worker whose config has another
/// partition count than the stream never starts.
///
/// # Errors
///
/// [`ClusterError::NotInitialised`] when the stream does not exist,
/// [`ClusterError::PartitionsChanged`] or another error of
/// [`ensure_stream`]'s check when it partitions otherwise,
/// [`ClusterError::JetStream`] when a request fails.
pub async fn input_generation(
    context: &jetstream::Context,
    pipeline: &ClusterPipeline,
) -> Result<u32, ClusterError> {
    let name = &pipeline.stream;
    let wanted = stream::SubjectTransform {
        source: pipeline.names.captured(),
        destination: pipeline.names.transform_destination(),
    };
    let info = initialised_stream(context, pipeline, name).await?;
    let generation = generation_of(name, &info.config)?;
    if let Some(shuffle) = &pipeline.shuffle {
        check_shuffle_stream(context, pipeline, shuffle, generation).await?;
    }
    check_stream(name, &pipeline.names, &wanted, &info.config)?;
    Ok(generation)
}

/// The info of stream `name`, which `plumber cluster init` makes for
/// `pipeline`.
///
/// # Errors
///
/// [`ClusterError::NotInitialised`] when the stream does not exist; a
/// JetStream error when it cannot be looked up or read.
async fn initialised_stream(
    context: &jetstream::Context,
    pipeline: &ClusterPipeline,
    name: &str,
) -> Result<stream::Info, ClusterError> {
    let mut existing = match context.get_stream(name).await {
        Ok(existing) => existing,
        Err(error) if is_not_found(&error) => {
            return Err(ClusterError::NotInitialised {
                stream: name.to_owned(),
                config: pipeline.origin.clone(),
            })
        }
        Err(error) => {
            return Err(ClusterError::jetstream(
                format!("looking up stream `{name}`"),
                error,
            ))
        }
    };
    existing
        .info()
        .await
        .cloned()
        .map_err(|e| ClusterError::jetstream(format!("reading stream `{name}`"), e))
}

/// Checks that a `repartition` step's shuffle stream is in the input
/// stream's generation `generation` and partitioned as the config says: a
/// migration switches the shuffle stream first, and one interrupted before
/// it switched the input stream leaves them apart (workers then refuse, and
/// running the migration again finishes it).
async fn check_shuffle_stream(
    context: &jetstream::Context,
    pipeline: &ClusterPipeline,
    shuffle: &crate::spec::Shuffle,
    generation: u32,
) -> Result<(), ClusterError> {
    let name = &shuffle.stream;
    let info = initialised_stream(context, pipeline, name).await?;
    let found = generation_of(name, &info.config)?;
    if found != generation {
        return Err(ClusterError::Mismatch {
            what: format!("stream `{name}`"),
            message: format!(
                "the shuffle stream is in generation {found} of the partitions and the input \
                 stream `{}` in generation {generation}: a `plumber cluster migrate` stopped \
                 between its two switches; run it again (with the new `cluster.partitions`) to \
                 finish it",
                pipeline.stream
            ),
        });
    }
    let wanted = stream::SubjectTransform {
        source: shuffle.names.captured(),
        destination: shuffle.names.transform_destination(),
    };
    check_stream(name, &shuffle.names, &wanted, &info.config)
}

/// What `init` found and did, a line each.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    /// What was created or found in order.
    pub lines: Vec<String>,
    /// Warnings (an old but working server).
    pub warnings: Vec<String>,
}

/// Connects to the cluster's servers (any one answering is enough).
///
/// # Errors
///
/// [`ClusterError::Connect`] when a URL is not one or no server answers
/// within [`CONNECT_TIMEOUT`].
pub async fn connect(servers: &[String]) -> Result<Client, ClusterError> {
    let joined = servers.join(",");
    let failed = |message: String| ClusterError::Connect {
        servers: joined.clone(),
        message,
    };
    let mut addresses = Vec::with_capacity(servers.len());
    for server in servers {
        addresses.push(
            server
                .parse::<ServerAddr>()
                .map_err(|error| failed(format!("`{server}` is not a NATS URL: {error}")))?,
        );
    }
    let options = plumber_connectors::streams::nats::connect_options(format!(
        "the cluster's connection to {joined}"
    ))
    .connection_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(addresses)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(_) => Err(failed(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// The version gate on the server `client` is connected to.
///
/// # Errors
///
/// As [`version::check`].
pub fn check_version(client: &Client) -> Result<Verdict, ClusterError> {
    let info = client.server_info();
    let server = format!("{}:{}", info.host, info.port);
    version::check(&info.version, &server)
}

/// Replicas for what `init` creates: the config's, else 3 on a NATS
/// cluster and 1 on a single server.
fn replicas(pipeline: &ClusterPipeline, client: &Client) -> usize {
    pipeline.cluster.replicas.unwrap_or_else(|| {
        if client.server_info().cluster.is_some() {
            3
        } else {
            1
        }
    })
}

/// Creates the partitioned input stream `name`, or checks the one there:
/// it must capture `<in>.*` and file it under `<in>-p.<partition>.<key>`
/// with the configured partition count. Reads the config back from the
/// server, which must have kept the transform. Returns what it did.
///
/// # Errors
///
/// [`ClusterError::PartitionsChanged`] when the stream has another count,
/// [`ClusterError::TransformDropped`] when the server does not keep the
/// transform (a stream this call created is deleted again),
/// [`ClusterError::Mismatch`] when the stream captures something else,
/// [`ClusterError::JetStream`] when a request fails.
pub async fn ensure_stream(
    context: &jetstream::Context,
    name: &str,
    names: &PartitionNames,
    replicas: usize,
) -> Result<String, ClusterError> {
    ensure_stream_in_generation(context, name, names, replicas, 0).await
}

/// As [`ensure_stream`]; a stream it creates records `generation`
/// ([`GENERATION_METADATA`]): a shuffle stream created for a pipeline
/// whose input stream was migrated before is in the input's generation.
async fn ensure_stream_in_generation(
    context: &jetstream::Context,
    name: &str,
    names: &PartitionNames,
    replicas: usize,
    generation: u32,
) -> Result<String, ClusterError> {
    let wanted = stream::SubjectTransform {
        source: names.captured(),
        destination: names.transform_destination(),
    };
    match context.get_stream(name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| ClusterError::jetstream(format!("reading stream `{name}`"), e))?;
            check_stream(name, names, &wanted, &info.config)?;
            Ok(format!(
                "stream `{name}` exists: `{}` in {} partitions",
                wanted.source, names.partitions
            ))
        }
        Err(error) if !is_not_found(&error) => Err(ClusterError::jetstream(
            format!("looking up stream `{name}`"),
            error,
        )),
        Err(_) => {
            let config = stream::Config {
                name: name.to_owned(),
                subjects: vec![wanted.source.clone()],
                subject_transform: Some(wanted.clone()),
                num_replicas: replicas,
                duplicate_window: DUPLICATE_WINDOW,
                metadata: if generation == 0 {
                    std::collections::HashMap::new()
                } else {
                    [(GENERATION_METADATA.to_owned(), generation.to_string())].into()
                },
                ..Default::default()
            };
            let mut created = context
                .create_stream(config)
                .await
                .map_err(|e| ClusterError::jetstream(format!("creating stream `{name}`"), e))?;
            // A 2.9 server accepts the stream and drops the transform.
            let read_back = created
                .info()
                .await
                .map_err(|e| ClusterError::jetstream(format!("reading stream `{name}`"), e))?
                .config
                .clone();
            if let Err(error) = check_stream(name, names, &wanted, &read_back) {
                if let Err(delete) = context.delete_stream(name).await {
                    tracing::warn!(stream = name, error = %delete,
                        "cannot delete the stream the server could not partition");
                }
                return Err(error);
            }
            Ok(format!(
                "created stream `{name}`: `{}` → `{}`, {replicas} replica(s), duplicate window {} s",
                wanted.source,
                wanted.destination,
                DUPLICATE_WINDOW.as_secs()
            ))
        }
    }
}

/// Whether a stream's config partitions as `wanted` says.
pub(crate) fn check_stream(
    name: &str,
    names: &PartitionNames,
    wanted: &stream::SubjectTransform,
    config: &stream::Config,
) -> Result<(), ClusterError> {
    let Some(found) = &config.subject_transform else {
        return Err(ClusterError::TransformDropped {
            stream: name.to_owned(),
            found: format!("no transform, subjects {:?}", config.subjects),
        });
    };
    if found.source == wanted.source {
        if let Some(existing) = names.partitions_in(&found.destination) {
            if existing != names.partitions {
                return Err(ClusterError::PartitionsChanged {
                    stream: name.to_owned(),
                    configured: names.partitions,
                    existing,
                });
            }
        }
    }
    if found != wanted || !config.subjects.contains(&wanted.source) {
        return Err(ClusterError::Mismatch {
            what: format!("stream `{name}`"),
            message: format!(
                "captures {:?} transformed `{}` → `{}`, and the config needs `{}` → `{}`",
                config.subjects, found.source, found.destination, wanted.source, wanted.destination
            ),
        });
    }
    Ok(())
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(inner)
        if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Makes sure a stream keeps what a JetStream sink publishes to
/// `subject`, with a duplicate window of at least [`DUPLICATE_WINDOW`]: a
/// partition replayed after a take-over publishes its uncommitted output
/// again with the same message ids, and only the window makes the stream
/// drop them. Creates stream `name` for it when none captures the subject;
/// raises a shorter window of the one there. Returns what it did.
///
/// # Errors
///
/// [`ClusterError::JetStream`] when a request fails.
pub async fn ensure_output_stream(
    context: &jetstream::Context,
    subject: &str,
    name: &str,
    replicas: usize,
) -> Result<String, ClusterError> {
    use jetstream::context::GetStreamByNameErrorKind;
    match context.stream_by_subject(subject).await {
        Ok(existing) => {
            let mut stream = context.get_stream(&existing).await.map_err(|e| {
                ClusterError::jetstream(format!("looking up stream `{existing}`"), e)
            })?;
            let mut config = stream
                .info()
                .await
                .map_err(|e| ClusterError::jetstream(format!("reading stream `{existing}`"), e))?
                .config
                .clone();
            if config.duplicate_window >= DUPLICATE_WINDOW {
                return Ok(format!(
                    "stream `{existing}` keeps the output `{subject}`, duplicate window {} s",
                    config.duplicate_window.as_secs()
                ));
            }
            let before = config.duplicate_window;
            config.duplicate_window = DUPLICATE_WINDOW;
            context.update_stream(&config).await.map_err(|e| {
                ClusterError::jetstream(
                    format!("raising the duplicate window of stream `{existing}`"),
                    e,
                )
            })?;
            Ok(format!(
                "raised the duplicate window of stream `{existing}` (output `{subject}`) from {} s to {} s, so that a replayed partition's output is dropped as duplicates",
                before.as_secs(),
                DUPLICATE_WINDOW.as_secs()
            ))
        }
        Err(error) if error.kind() == GetStreamByNameErrorKind::NotFound => {
            context
                .create_stream(stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subject.to_owned()],
                    num_replicas: replicas,
                    duplicate_window: DUPLICATE_WINDOW,
                    ..Default::default()
                })
                .await
                .map_err(|e| ClusterError::jetstream(format!("creating stream `{name}`"), e))?;
            Ok(format!(
                "created stream `{name}` for the output `{subject}`: {replicas} replica(s), duplicate window {} s",
                DUPLICATE_WINDOW.as_secs()
            ))
        }
        Err(error) => Err(ClusterError::jetstream(
            format!("looking up the stream of the output `{subject}`"),
            error,
        )),
    }
}

/// Creates the key-value bucket `bucket` whose entries expire `ttl` after
/// their last write (one revision kept per key), or checks the one there.
///
/// # Errors
///
/// [`ClusterError::Mismatch`] when it exists with another expiry,
/// [`ClusterError::JetStream`] when a request fails.
pub async fn ensure_bucket(
    context: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<String, ClusterError> {
    if let Ok(store) = context.get_key_value(bucket).await {
        let mut stream = store.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::jetstream(format!("reading bucket `{bucket}`"), e))?;
        if info.config.max_age != ttl {
            return Err(ClusterError::Mismatch {
                what: format!("bucket `{bucket}`"),
                message: format!(
                    "its entries expire after {} ms and the config's `cluster.lease_ttl_ms` is \
                     {}: stop the workers and delete the bucket (`nats kv del {bucket}`), or put \
                     the old value back",
                    info.config.max_age.as_millis(),
                    ttl.as_millis()
                ),
            });
        }
        return Ok(format!("bucket `{bucket}` exists"));
    }
    context
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: ttl,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::jetstream(format!("creating bucket `{bucket}`"), e))?;
    Ok(format!(
        "created bucket `{bucket}`: entries expire {} ms after their last write, {replicas} \
         replica(s)",
        ttl.as_millis()
    ))
}

/// Checks the server version, then creates or checks the partitioned
/// input stream (and the shuffle stream of a `repartition` step,
/// partitioned the same way) and the buckets of members and leases.
///
/// # Errors
///
/// The first of: no server answers, the server is too old, the stream or a
/// bucket is not what the config needs, a request fails.
pub async fn init(pipeline: &ClusterPipeline) -> Result<InitReport, ClusterError> {
    let client = connect(&pipeline.cluster.url).await?;
    let mut report = InitReport::default();
    match check_version(&client)? {
        Verdict::Good(version) => report.lines.push(format!("nats-server {version}")),
        Verdict::Old(version, warning) => {
            report.lines.push(format!("nats-server {version}"));
            report.warnings.push(warning);
        }
    }
    let replicas = replicas(pipeline, &client);
    let context = jetstream::new(client);
    report
        .lines
        .push(ensure_stream(&context, &pipeline.stream, &pipeline.names, replicas).await?);
    for (field, subject) in pipeline.jetstream_outputs() {
        let name = pipeline.output_stream_name(field);
        report
            .lines
            .push(ensure_output_stream(&context, &subject, &name, replicas).await?);
    }
    if let Some(shuffle) = &pipeline.shuffle {
        let mut input = context.get_stream(&pipeline.stream).await.map_err(|e| {
            ClusterError::jetstream(format!("looking up stream `{}`", pipeline.stream), e)
        })?;
        let info = input.info().await.map_err(|e| {
            ClusterError::jetstream(format!("reading stream `{}`", pipeline.stream), e)
        })?;
        let generation = generation_of(&pipeline.stream, &info.config)?;
        report.lines.push(
            ensure_stream_in_generation(
                &context,
                &shuffle.stream,
                &shuffle.names,
                replicas,
                generation,
            )
            .await?,
        );
    }
    for bucket in [pipeline.members_bucket(), pipeline.leases_bucket()] {
        report
            .lines
            .push(ensure_bucket(&context, &bucket, pipeline.lease_ttl(), replicas).await?);
    }
    Ok(report)
}
