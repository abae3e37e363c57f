//! The Redis backend: state on a Redis server, shared by every process that
//! points at it, with fencing so that only the newest claimant of a pipeline
//! can commit.
//!
//! # Keys
//!
//! Every key starts with [`RedisOptions::key_prefix`] (`plumber:` unless
//! set), so several deployments can share one server:
//!
//! | key                      | holds                                                 |
//! |--------------------------|-------------------------------------------------------|
//! | `<prefix>s:` + state key | a state value (keys and values are binary-safe)       |
//! | `<prefix>c:<pipeline>`   | the last [`CheckpointRecord`] (its JSON bytes)        |
//! | `<prefix>e:<pipeline>`   | that record's epoch, a decimal integer                |
//! | `<prefix>f:<pipeline>`   | the fencing counter [`StateBackend::claim`] increments |
//! | `<prefix>w:<pipeline>`   | a large commit's staged writes, while it commits       |
//!
//! # Commits
//!
//! [`StateBackend::commit`] is one Lua script (`EVALSHA`, after a
//! `SCRIPT LOAD` when a server restart emptied the script cache). Redis runs a
//! script atomically, the way it runs a `MULTI`/`EXEC` block: no other
//! client's command runs while it executes, and replicas and the append-only
//! file receive its writes as one transaction. Unlike `MULTI`/`EXEC`, the
//! script can read before it writes, so the checks happen inside the same
//! atomic step as the writes, with no window for a `claim` to slip in
//! between:
//!
//! 1. If the fencing counter is greater than the record's
//!    [`CheckpointRecord::fence`], a newer process has claimed the pipeline:
//!    the script answers with an error reply and writes nothing
//!    ([`StateError::Fenced`]).
//! 2. If the stored epoch (`<prefix>e:<pipeline>`, kept beside the record so
//!    the script need not parse JSON) is at least the record's epoch, this
//!    epoch was committed already: the script writes nothing and answers
//!    `already`. A commit retried after its reply was lost is therefore a
//!    no-op rather than a second application.
//! 3. Otherwise it applies every `SET` and `DEL` of the write sets (later sets
//!    win on a shared key), then stores the record and its epoch.
//!
//! All checks come before the first write, and `SET`/`DEL` cannot fail on a
//! key's type, so a script that starts writing finishes.
//!
//! A commit of more writes than [`RedisOptions::commit_chunk_keys`] is not
//! one command, which this process would hold encoded whole beside the
//! write sets (the peak memory of a large commit): its writes go in chunks
//! to a staging list (`<prefix>w:<pipeline>`) that no reader looks at, each
//! chunk fenced like the commit, and the commit script, with the last
//! chunk, applies the list and its own writes in the same atomic step as
//! above, after checking that the list holds exactly this commit's writes.
//! Nothing is visible before that step, and a crash or a lost connection
//! before it changes nothing (a retried commit stages anew). Whether a commit
//! survives a crash of the server is up to the server's persistence settings
//! (`appendonly yes` with `appendfsync always` or `everysec`).
//!
//! # Reads
//!
//! Once a pipeline has claimed its fence through a connection
//! ([`StateBackend::claim`]), every read through that connection
//! (`get`, `get_many`) is one script that checks the fencing counter
//! before it reads, in the same atomic step: when a newer process has
//! claimed the pipeline, the read fails with [`StateError::Fenced`]
//! instead of answering. A process that was paused past its lease (a
//! zombie) therefore never computes with state a newer owner committed
//! beyond its own position: what it reads is its own checkpoint's state,
//! so whatever it still produces is what the new owner's replay produces
//! (and the output's message ids de-duplicate), or it stops. Commits were
//! fenced already; this fences what a zombie could *publish* before its
//! commit is refused. A connection through which several pipelines
//! claimed (pipelines of one `plumber run` sharing one backend) reads
//! without the check: no one fence applies to all of them, and one
//! process does not race itself.
//!
//! # Reconnecting
//!
//! The connection is a [`redis::aio::ConnectionManager`], which replaces a
//! dropped connection by itself; its own retries are switched off (one
//! connection attempt per reconnect) so that this backend decides how long
//! to wait. Every operation runs in the connectors' retry loop (the one
//! [`RetryPolicy`](plumber_engine::retry::RetryPolicy); docs/connectors.md, "Retries"): on a
//! connection or I/O error it logs one warning with the server's address,
//! waits with jittered exponential backoff and tries again, until
//! [`RedisOptions::reconnect_timeout`] has passed since the first failure;
//! then it fails with [`StateError::Unavailable`] saying how long it waited.
//! Errors that are not about the connection (a value of the wrong type, a
//! script error, a refused fence) are returned at once.
//!
//! Nothing waits much longer than that: a connection attempt times out after
//! `reconnect_timeout` (at least 1 s, at most 5 s) and a command after
//! `reconnect_timeout` (at least 1 s), and every attempt after a failure is
//! cut off when the time is up, so a server that accepts connections but
//! never answers cannot hold an operation either.
//!
//! Retrying is safe for every operation except that an `add` (`INCRBY`)
//! whose reply was lost with the connection may be applied twice; `add` is
//! only used by write-through pipelines, which promise at-least-once effects.
//! A `claim` retried the same way skips a token, which is harmless: tokens
//! only need to grow.

pub mod config;

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisWrite as _, Script, ServerErrorKind};

use super::{StateBackend, StateError, WriteSet};
use plumber_engine::checkpoint::CheckpointRecord;
use plumber_engine::streams::reconnect::Reconnect;

/// The connection attempt and command timeouts follow `reconnect_timeout`,
/// but are never shorter than this...
const MIN_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// ...and a connection attempt never takes longer than this, so that a
/// server that comes back is found soon.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// What follows the key prefix in the Redis key of a state key.
const STATE_KIND: &[u8] = b"s:";
/// How many keys one `SCAN` step and one `MGET` cover.
const SCAN_BATCH: usize = 1000;

/// The start of the commit and read scripts: integers compared as decimal
/// strings (Lua numbers are doubles, exact only up to 2^53), and the fence
/// check both make (the error reply when the fencing counter at `counter`
/// is greater than `ours`, or is not an integer; nil otherwise).
macro_rules! lua_decimals {
    () => {
        r"
local function decimal(text)
  if not text then return nil end
  return string.match(text, '^0*(%d+)$')
end
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end
local function stage_header(ours, epoch)
  return 'plumber-stage ' .. ours .. ' ' .. epoch
end
local function refused_by_fence(counter, ours, what)
  local fence = redis.call('GET', counter)
  if fence then
    local newer = decimal(fence)
    if not newer then
      return redis.error_reply('ERR plumber ' .. what .. ': the fencing counter is not an integer')
    end
    if greater(newer, ours) then
      return redis.error_reply('PLUMBER_FENCED ' .. newer)
    end
  end
  return nil
end
"
    };
}

/// The error code the commit script answers with when a newer process holds
/// the pipeline; the detail is the fencing counter in force.
const FENCED_CODE: &str = "PLUMBER_FENCED";

/// The commit script. `KEYS[1]` is the fencing counter, `KEYS[2]` the stored
/// epoch, `KEYS[3]` the checkpoint record, `KEYS[4]` the commit's staged
/// writes ([`STAGE_SCRIPT`]), `KEYS[5..]` the state keys; `ARGV[1]` is our
/// fencing token, `ARGV[2]` the epoch, `ARGV[3]` the record, `ARGV[4]` how
/// many elements the stage must hold (`0`: nothing was staged), and
/// `ARGV[i]` for `i >= 5` says what to do with `KEYS[i]`: `s` followed by
/// the value to set, or `d` to delete it. The staged writes are applied
/// first, in the order they were staged, then `KEYS[5..]`.
///
/// Integers are compared as decimal strings: Lua numbers are doubles, exact
/// only up to 2^53.
const COMMIT_SCRIPT: &str = concat!(
    lua_decimals!(),
    r"
local ours = decimal(ARGV[1])
local epoch = decimal(ARGV[2])
if not ours or not epoch then
  return redis.error_reply('ERR plumber commit: fence and epoch must be integers')
end

local refused = refused_by_fence(KEYS[1], ours, 'commit')
if refused then return refused end

local staged = tonumber(ARGV[4])
if not staged then
  return redis.error_reply('ERR plumber commit: the staged count must be an integer')
end

local committed = redis.call('GET', KEYS[2])
if committed then
  local stored = decimal(committed)
  if not stored then
    return redis.error_reply('ERR plumber commit: the stored epoch is not an integer')
  end
  if not greater(epoch, stored) then
    if staged > 0 then redis.call('DEL', KEYS[4]) end
    return 'already'
  end
end

local function apply(key, op)
  if string.sub(op, 1, 1) == 's' then
    redis.call('SET', key, string.sub(op, 2))
  else
    redis.call('DEL', key)
  end
end

if staged > 0 then
  -- The last check: the stage holds this commit's writes, all of them.
  local length = redis.call('LLEN', KEYS[4])
  if redis.call('LINDEX', KEYS[4], 0) ~= stage_header(ours, epoch) or length ~= staged + 1 then
    return redis.error_reply('ERR plumber commit: the staged writes of this commit are incomplete')
  end
  for first = 1, length - 1, 1000 do
    local part = redis.call('LRANGE', KEYS[4], first, math.min(first + 999, length - 1))
    for j = 1, #part, 2 do
      apply(part[j], part[j + 1])
    end
  end
  redis.call('DEL', KEYS[4])
end
for i = 5, #KEYS do
  apply(KEYS[i], ARGV[i])
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('SET', KEYS[2], epoch)
return 'committed'
"
);

/// The script that stages part of a large commit's writes, so that no one
/// command (and no one buffer of this process) holds all of them: a commit
/// of more than [`RedisOptions::commit_chunk_keys`] writes sends them in
/// chunks of that many, each appended by this script to a list that no
/// reader looks at, and the last chunk with [`COMMIT_SCRIPT`], which
/// applies the list and its own writes in the one atomic step that makes
/// any of them visible. A crash or a lost connection before that step
/// leaves the state as it was (the next attempt starts the list anew; the
/// list expires an hour after its last chunk otherwise).
///
/// `KEYS[1]` is the fencing counter, `KEYS[2]` the list; `ARGV[1]` is our
/// fencing token, `ARGV[2]` the epoch, `ARGV[3]` `first` for the first
/// chunk (which empties the list and writes its header) or `more`, and
/// `ARGV[4..]` pairs of a state key and its operation (as in
/// [`COMMIT_SCRIPT`]). Answers the list's length, or the error
/// [`FENCED_CODE`] (writing nothing) when a newer process claimed the
/// pipeline.
const STAGE_SCRIPT: &str = concat!(
    lua_decimals!(),
    r"
local ours = decimal(ARGV[1])
local epoch = decimal(ARGV[2])
if not ours or not epoch then
  return redis.error_reply('ERR plumber commit: fence and epoch must be integers')
end
local refused = refused_by_fence(KEYS[1], ours, 'commit')
if refused then return refused end
if ARGV[3] == 'first' then
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], stage_header(ours, epoch))
elseif redis.call('LINDEX', KEYS[2], 0) ~= stage_header(ours, epoch) then
  return redis.error_reply('ERR plumber commit: the staged writes of this commit are gone')
end
for first = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[2], 3600000)
return redis.call('LLEN', KEYS[2])
"
);

/// The fenced read script. `KEYS[1]` is the fencing counter, `KEYS[2..]`
/// the state keys to read; `ARGV[1]` is our fencing token. Answers the
/// values in order (nil for an absent key), or the error
/// [`FENCED_CODE`] with the counter in force when it is greater than ours.
/// `MGET` takes the keys a thousand at a time: Lua's `unpack` has a limit.
const READ_SCRIPT: &str = concat!(
    lua_decimals!(),
    r"
local ours = decimal(ARGV[1])
if not ours then
  return redis.error_reply('ERR plumber read: the fence must be an integer')
end
local refused = refused_by_fence(KEYS[1], ours, 'read')
if refused then return refused end
if #KEYS == 2 then
  -- One key: GET, which (unlike MGET) refuses a key of another type.
  return { redis.call('GET', KEYS[2]) }
end
local values = {}
for first = 2, #KEYS, 1000 do
  local last = math.min(first + 999, #KEYS)
  local part = redis.call('MGET', unpack(KEYS, first, last))
  for i = 1, #part do
    values[#values + 1] = part[i]
  end
end
return values
"
);

/// The reads whose fence a connection checks (see "Reads" above).
#[derive(Debug, Clone)]
enum ReadFence {
    /// No pipeline claimed through this connection yet.
    Unclaimed,
    /// One pipeline claimed: reads check its fencing counter against our
    /// token (shared, so a read takes it without copying it).
    One(std::sync::Arc<FenceClaim>),
    /// Several pipelines claimed through this connection: no one fence
    /// applies to its reads.
    Several,
}

/// A pipeline's claim through a connection.
#[derive(Debug)]
struct FenceClaim {
    pipeline: String,
    /// The Redis key of its fencing counter.
    counter: Vec<u8>,
    token: u64,
}

/// Settings of a [`RedisState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Put in front of every key this backend uses (default `plumber:`).
    pub key_prefix: String,
    /// How long an operation keeps retrying after the connection failed
    /// before it gives up with [`StateError::Unavailable`] (default 30 s).
    pub reconnect_timeout: Duration,
    /// The most writes one command of a commit carries (default
    /// [`RedisOptions::COMMIT_CHUNK_KEYS`]): a commit of more is sent in
    /// chunks of this many, staged and then applied in one atomic step
    /// ([`STAGE_SCRIPT`]), which bounds what this process holds while it
    /// commits (at least 1).
    pub commit_chunk_keys: usize,
}

impl RedisOptions {
    /// The writes of one chunk of a commit by default: the peak memory of a
    /// commit of 100,000 keys measured with chunks of 10,000 is that of a
    /// commit of 10,000 (docs/benchmarks.md, "Memory against distinct
    /// keys"), at one more round trip per chunk.
    pub const COMMIT_CHUNK_KEYS: usize = 10_000;
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "plumber:".to_owned(),
            reconnect_timeout: plumber_engine::streams::reconnect::DEFAULT_RECONNECT_TIMEOUT,
            commit_chunk_keys: Self::COMMIT_CHUNK_KEYS,
        }
    }
}

/// State on a Redis server.
pub struct RedisState {
    connection: ConnectionManager,
    /// `host:port` (or socket path) for messages; never the URL, which may
    /// hold a password.
    address: String,
    key_prefix: Vec<u8>,
    reconnect_timeout: Duration,
    commit_script: Script,
    stage_script: Script,
    read_script: Script,
    commit_chunk_keys: usize,
    /// What reads check (see "Reads" in the module documentation); set by
    /// `claim`, read once per read call.
    read_fence: std::sync::Mutex<ReadFence>,
    /// What retries call this state in their warnings, made once: the key
    /// prefix tells apart a worker's partitions, each with its own
    /// `{<pipeline>#p<NN>}` in it.
    retry_name: String,
}

/// Why one attempt of an operation failed for good.
enum Failure {
    /// The server answered with an error, or the client refused the request:
    /// not a connection problem, so not retried.
    Redis(RedisError),
    /// The server stayed unreachable for the whole reconnect timeout.
    GaveUp(StateError),
}

impl RedisState {
    /// Connects to the server at `url` (`redis://[:password@]host[:port][/db]`,
    /// `unix:///path/to/socket`) and checks that it answers, waiting for it
    /// up to [`RedisOptions::reconnect_timeout`].
    ///
    /// # Errors
    ///
    /// The URL is malformed ([`StateError::Invalid`]), or the server did not
    /// answer in time or refused the connection (for example a wrong
    /// password) ([`StateError::Unavailable`]).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisState, StateError> {
        // The client's message never repeats the URL, which may hold a password.
        let client = redis::Client::open(url)
            .map_err(|e| StateError::Invalid(format!("redis state: bad URL: {e}")))?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            // One connection attempt per reconnect: the retry loop here waits
            // and retries, bounded by `reconnect_timeout`.
            .set_number_of_retries(0)
            .set_connection_timeout(Some(
                options
                    .reconnect_timeout
                    .clamp(MIN_IO_TIMEOUT, MAX_CONNECT_TIMEOUT),
            ))
            .set_response_timeout(Some(options.reconnect_timeout.max(MIN_IO_TIMEOUT)));
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            StateError::Unavailable {
                backend: "redis",
                address: address.clone(),
                message: format!("cannot set up the connection: {e}"),
            }
        })?;
        let retry_name = format!("redis state (keys `{}…`)", options.key_prefix);
        let state = RedisState {
            connection,
            address,
            key_prefix: options.key_prefix.into_bytes(),
            reconnect_timeout: options.reconnect_timeout,
            commit_script: Script::new(COMMIT_SCRIPT),
            stage_script: Script::new(STAGE_SCRIPT),
            read_script: Script::new(READ_SCRIPT),
            commit_chunk_keys: options.commit_chunk_keys.max(1),
            read_fence: std::sync::Mutex::new(ReadFence::Unclaimed),
            retry_name,
        };
        state
            .run("PING", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await?;
        Ok(state)
    }

    /// The server's address, as messages name it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The Redis key of a state key.
    fn state_key(&self, key: &[u8]) -> Vec<u8> {
        self.prefixed(STATE_KIND, key)
    }

    /// The Redis key of one of a pipeline's own entries (`c`, `e`, `f`).
    fn pipeline_key(&self, kind: &[u8], pipeline: &str) -> Vec<u8> {
        self.prefixed(kind, pipeline.as_bytes())
    }

    fn prefixed(&self, kind: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.key_prefix.len() + kind.len() + rest.len());
        full.extend_from_slice(&self.key_prefix);
        full.extend_from_slice(kind);
        full.extend_from_slice(rest);
        full
    }

    /// Runs `attempt` on the connection, retrying connection errors by the
    /// reconnect policy ([`Reconnect`]) until the reconnect timeout has
    /// passed since the first one.
    async fn attempt<T, F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut retry = Reconnect::new(
            self.retry_name.as_str(),
            format!("the Redis server at {}", self.address),
            operation,
            self.reconnect_timeout,
        );
        loop {
            let retrying = retry.retrying();
            let left = retry.attempt(Duration::MAX);
            let outcome = if retrying {
                tokio::time::timeout(left, attempt(self.connection.clone())).await
            } else {
                // The first attempt is bounded by the connection's own
                // connection and response timeouts.
                Ok(attempt(self.connection.clone()).await)
            };
            let error = match outcome {
                Ok(Ok(value)) => {
                    retry.succeeded();
                    return Ok(value);
                }
                Ok(Err(error)) if is_connection_error(&error) => error.to_string(),
                Ok(Err(error)) => return Err(Failure::Redis(error)),
                Err(_elapsed) => "no answer before the time was up".to_owned(),
            };
            if let Err(gave_up) = retry.wait(&error).await {
                return Err(Failure::GaveUp(
                    self.unavailable(format!("`{operation}` {}", gave_up.message)),
                ));
            }
        }
    }

    /// [`attempt`](Self::attempt) with the usual translation of server errors.
    async fn run<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T, StateError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.attempt(operation, attempt)
            .await
            .map_err(|failure| self.failure(operation, failure))
    }

    fn failure(&self, operation: &str, failure: Failure) -> StateError {
        match failure {
            Failure::GaveUp(error) => error,
            Failure::Redis(error) => self.refused(operation, &error),
        }
    }

    /// A server or client error that is not about the connection.
    fn refused(&self, operation: &str, error: &RedisError) -> StateError {
        if error.code() == Some("WRONGTYPE") {
            return StateError::Invalid(format!(
                "redis state at {}: `{operation}`: {error}",
                self.address
            ));
        }
        self.unavailable(format!("`{operation}` refused: {error}"))
    }

    /// Records that `pipeline` was claimed with `token` through this
    /// connection: later reads check that fence, unless another pipeline
    /// claimed through it too.
    fn claimed(&self, pipeline: &str, token: u64) {
        let mut fence = self
            .read_fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *fence = match &*fence {
            ReadFence::Unclaimed => ReadFence::One(std::sync::Arc::new(FenceClaim {
                pipeline: pipeline.to_owned(),
                counter: self.pipeline_key(b"f:", pipeline),
                token,
            })),
            ReadFence::One(ours) if ours.pipeline == pipeline => {
                ReadFence::One(std::sync::Arc::new(FenceClaim {
                    pipeline: ours.pipeline.clone(),
                    counter: ours.counter.clone(),
                    token,
                }))
            }
            ReadFence::One(_) | ReadFence::Several => ReadFence::Several,
        };
    }

    /// Reads the full keys `full`: through the fenced read script once a
    /// single pipeline claimed through this connection, else with `MGET`.
    async fn read(&self, full: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let fence = self
            .read_fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let ReadFence::One(claim) = fence else {
            if let [key] = full {
                // GET, which (unlike MGET) refuses a key of another type.
                let value = self
                    .run("GET", |mut conn| async move {
                        redis::cmd("GET")
                            .arg(key)
                            .query_async::<Option<Vec<u8>>>(&mut conn)
                            .await
                    })
                    .await?;
                return Ok(vec![value]);
            }
            return self
                .run("MGET", |mut conn| async move {
                    redis::cmd("MGET")
                        .arg(full)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                        .await
                })
                .await;
        };
        let mut invocation = self.read_script.prepare_invoke();
        invocation.key(&claim.counter).arg(claim.token);
        for key in full {
            invocation.key(key);
        }
        let invocation = &invocation;
        let outcome = self
            .attempt("fenced read", |mut conn| async move {
                invocation
                    .invoke_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .await
            })
            .await;
        match outcome {
            Ok(values) => Ok(values),
            Err(Failure::Redis(error)) if error.code() == Some(FENCED_CODE) => {
                match error.detail().and_then(|d| d.trim().parse::<u64>().ok()) {
                    Some(newer) => Err(StateError::Fenced {
                        pipeline: claim.pipeline.clone(),
                        ours: claim.token,
                        newer,
                    }),
                    None => Err(self.refused("fenced read", &error)),
                }
            }
            Err(failure) => Err(self.failure("fenced read", failure)),
        }
    }

    /// The commit script's `EVALSHA` command (its keys and arguments as
    /// the script documents them) for the writes `entries`, after `staged`
    /// elements were staged: written straight into the command's one
    /// buffer, sized first, so that a commit holds its write sets and one
    /// encoded chunk, not a copy of every key with the prefix beside them.
    fn commit_command(
        &self,
        record: &CheckpointRecord,
        record_bytes: &[u8],
        entries: &[Entry<'_>],
        staged: usize,
    ) -> std::io::Result<redis::Cmd> {
        let pipeline_key_len = self.key_prefix.len() + 2 + record.pipeline.len();
        let sha = self.commit_script.get_hash();
        let data_len = self.entries_len(entries)
            + "EVALSHA".len()
            + sha.len()
            + 4 * pipeline_key_len
            + 80
            + record_bytes.len();
        let mut command = redis::Cmd::with_capacity(12 + 2 * entries.len(), data_len);
        command
            .arg("EVALSHA")
            .arg(sha)
            .arg(4 + entries.len())
            .arg(self.pipeline_key(b"f:", &record.pipeline))
            .arg(self.pipeline_key(b"e:", &record.pipeline))
            .arg(self.pipeline_key(b"c:", &record.pipeline))
            .arg(self.pipeline_key(b"w:", &record.pipeline));
        for (key, _) in entries {
            self.write_state_key(&mut command, key)?;
        }
        command
            .arg(record.fence)
            .arg(record.epoch)
            .arg(record_bytes)
            .arg(staged);
        for (_, value) in entries {
            write_operation(&mut command, *value)?;
        }
        Ok(command)
    }

    /// The stage script's `EVALSHA` command for one chunk of a commit
    /// ([`STAGE_SCRIPT`]), written like [`RedisState::commit_command`]'s.
    fn stage_command(
        &self,
        record: &CheckpointRecord,
        entries: &[Entry<'_>],
        first: bool,
    ) -> std::io::Result<redis::Cmd> {
        let sha = self.stage_script.get_hash();
        let data_len = self.entries_len(entries)
            + "EVALSHA".len()
            + sha.len()
            + 2 * (self.key_prefix.len() + 2 + record.pipeline.len())
            + 80;
        let mut command = redis::Cmd::with_capacity(9 + 2 * entries.len(), data_len);
        command
            .arg("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(self.pipeline_key(b"f:", &record.pipeline))
            .arg(self.pipeline_key(b"w:", &record.pipeline))
            .arg(record.fence)
            .arg(record.epoch)
            .arg(if first { "first" } else { "more" });
        for (key, value) in entries {
            self.write_state_key(&mut command, key)?;
            write_operation(&mut command, *value)?;
        }
        Ok(command)
    }

    /// The bytes `entries` take in a command: each state key with the
    /// prefix, and its operation.
    fn entries_len(&self, entries: &[Entry<'_>]) -> usize {
        let state_key_len = self.key_prefix.len() + STATE_KIND.len();
        entries
            .iter()
            .map(|(key, value)| state_key_len + key.len() + 1 + value.map_or(0, <[u8]>::len))
            .sum()
    }

    /// Appends the Redis key of state key `key` as the command's next
    /// argument, without building it apart first.
    fn write_state_key(&self, command: &mut redis::Cmd, key: &[u8]) -> std::io::Result<()> {
        let mut arg = command.writer_for_next_arg();
        arg.write_all(&self.key_prefix)?;
        arg.write_all(STATE_KIND)?;
        arg.write_all(key)
    }

    /// Runs one script command of a commit, loading the script first when
    /// the server lost its script cache (a restart).
    async fn run_script<T: redis::FromRedisValue>(
        conn: &mut ConnectionManager,
        script: &Script,
        command: &redis::Cmd,
    ) -> Result<T, RedisError> {
        match command.query_async::<T>(conn).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(conn).await?;
                command.query_async::<T>(conn).await
            }
            outcome => outcome,
        }
    }

    fn unavailable(&self, message: String) -> StateError {
        StateError::Unavailable {
            backend: "redis",
            address: self.address.clone(),
            message,
        }
    }
}

/// One write of a commit: a state key and its value (`None`: delete it).
type Entry<'a> = (&'a [u8], Option<&'a [u8]>);

/// Appends a write's operation as the command's next argument: `s` and
/// the value, or `d`.
fn write_operation(command: &mut redis::Cmd, value: Option<&[u8]>) -> std::io::Result<()> {
    match value {
        Some(value) => {
            let mut arg = command.writer_for_next_arg();
            arg.write_all(b"s")?;
            arg.write_all(value)
        }
        None => {
            command.arg(&b"d"[..]);
            Ok(())
        }
    }
}

/// Writing into a command's buffer (memory) cannot fail; should it, the
/// commit fails, not retried, rather than send a broken command.
fn encoding_error(error: std::io::Error) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "cannot encode a commit",
        error.to_string(),
    ))
}

/// Whether an error means the server could not be reached (worth waiting
/// for) rather than that it refused the request.
fn is_connection_error(error: &RedisError) -> bool {
    // I/O errors include a refused or dropped connection, a connection
    // attempt that timed out and a command whose answer did not come in time.
    error.is_io_error()
        // A restarted server answers LOADING while it reads its data back.
        || error.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
}

/// `bytes` as a glob pattern matching exactly them (`SCAN ... MATCH`).
fn escape_glob(bytes: &[u8]) -> Vec<u8> {
    let mut escaped = Vec::with_capacity(bytes.len() + 8);
    for &byte in bytes {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            escaped.push(b'\\');
        }
        escaped.push(byte);
    }
    escaped
}

#[async_trait]
impl StateBackend for RedisState {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// Fenced once a pipeline claimed through this connection (module
    /// documentation, "Reads").
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let mut values = self.read(&[self.state_key(key)]).await?;
        Ok(values.pop().flatten())
    }

    fn batches_reads(&self) -> bool {
        true
    }

    /// One round trip for all of them, fenced once a pipeline claimed
    /// through this connection (module documentation, "Reads").
    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<Vec<u8>> = keys.iter().map(|key| self.state_key(key)).collect();
        self.read(&full).await
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let full = &self.state_key(key);
        self.run("SET", |mut conn| async move {
            redis::cmd("SET")
                .arg(full)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        let full = &self.state_key(key);
        self.run("DEL", |mut conn| async move {
            redis::cmd("DEL")
                .arg(full)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn add(&self, key: &[u8], delta: i64) -> Result<i64, StateError> {
        let full = &self.state_key(key);
        let outcome = self
            .attempt("INCRBY", |mut conn| async move {
                redis::cmd("INCRBY")
                    .arg(full)
                    .arg(delta)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match outcome {
            Ok(value) => Ok(value),
            Err(Failure::Redis(error))
                if error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError) =>
            {
                // INCRBY answers "ERR value is not an integer or out of range"
                // or "ERR increment or decrement would overflow".
                let key = String::from_utf8_lossy(key);
                let detail = error.detail().unwrap_or_default();
                Err(StateError::Invalid(if detail.contains("overflow") {
                    format!("adding {delta} to `{key}` overflows")
                } else {
                    format!("value at `{key}` is not an integer")
                }))
            }
            Err(failure) => Err(self.failure("INCRBY", failure)),
        }
    }

    async fn claim(&self, pipeline: &str) -> Result<u64, StateError> {
        let fence = &self.pipeline_key(b"f:", pipeline);
        let outcome = self
            .attempt("INCR", |mut conn| async move {
                redis::cmd("INCR")
                    .arg(fence)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match outcome {
            Ok(token) => {
                let token = u64::try_from(token).map_err(|_| {
                    StateError::Invalid(format!(
                        "redis state at {}: the fencing counter of pipeline `{pipeline}` is negative ({token})",
                        self.address
                    ))
                })?;
                self.claimed(pipeline, token);
                Ok(token)
            }
            Err(Failure::Redis(error))
                if error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError) =>
            {
                Err(StateError::Invalid(format!(
                    "redis state at {}: the fencing counter of pipeline `{pipeline}` \
                     is not an integer: {error}",
                    self.address
                )))
            }
            Err(failure) => Err(self.failure("INCR", failure)),
        }
    }

    /// Runs the commit script (see the module documentation): the fence
    /// check, the epoch check and every write happen in one atomic step of
    /// the server. Committing an epoch that is already stored does nothing
    /// and succeeds, so a retry after a lost reply is harmless.
    ///
    /// # Errors
    ///
    /// [`StateError::Fenced`] when a newer process claimed the pipeline;
    /// [`StateError::Unavailable`] when the server stayed unreachable or
    /// refused the script. In both cases nothing was written.
    async fn commit(
        &self,
        record: &CheckpointRecord,
        writes: &[WriteSet],
    ) -> Result<(), StateError> {
        // Later write sets win on a shared key: entries keep their order.
        let entries: Vec<Entry<'_>> = writes
            .iter()
            .flat_map(|set| set.iter())
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
            .collect();
        let record_bytes = &record.to_bytes();
        let chunk = self.commit_chunk_keys;
        // Whole chunks are staged; the rest (at least one write when there
        // are any) rides with the commit script.
        let staged_entries = entries.len().saturating_sub(1) / chunk * chunk;
        let (staged, last) = entries.split_at(staged_entries);
        let outcome = self
            .attempt("commit", |mut conn| async move {
                // An attempt after a lost connection starts the stage anew.
                for (index, part) in staged.chunks(chunk).enumerate() {
                    let command = self
                        .stage_command(record, part, index == 0)
                        .map_err(encoding_error)?;
                    Self::run_script::<u64>(&mut conn, &self.stage_script, &command).await?;
                }
                let command = self
                    .commit_command(record, record_bytes, last, 2 * staged.len())
                    .map_err(encoding_error)?;
                Self::run_script::<String>(&mut conn, &self.commit_script, &command).await
            })
            .await;
        match outcome {
            Ok(reply) => {
                if reply == "already" {
                    tracing::debug!(
                        pipeline = %record.pipeline,
                        epoch = record.epoch,
                        "redis state: epoch already committed; nothing to do"
                    );
                }
                Ok(())
            }
            Err(Failure::Redis(error)) if error.code() == Some(FENCED_CODE) => {
                match error.detail().and_then(|d| d.trim().parse::<u64>().ok()) {
                    Some(newer) => Err(StateError::Fenced {
                        pipeline: record.pipeline.clone(),
                        ours: record.fence,
                        newer,
                    }),
                    None => Err(self.refused("commit", &error)),
                }
            }
            Err(failure) => Err(self.failure("commit", failure)),
        }
    }

    async fn last_checkpoint(
        &self,
        pipeline: &str,
    ) -> Result<Option<CheckpointRecord>, StateError> {
        let key = &self.pipeline_key(b"c:", pipeline);
        let stored = self
            .run("GET", |mut conn| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        CheckpointRecord::from_bytes(&bytes)
            .map(Some)
            .map_err(|message| StateError::CorruptCheckpoint {
                pipeline: pipeline.to_owned(),
                message,
            })
    }

    /// `SCAN`s for the keys under `prefix` (glob characters in it are
    /// escaped), then reads them with `MGET`. A key deleted between the two
    /// steps is left out.
    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let base = &self.state_key(b"");
        let mut pattern = escape_glob(&self.state_key(prefix));
        pattern.push(b'*');
        let pattern = &pattern;
        // The whole scan is one attempt: after a reconnect it starts over.
        self.run("SCAN", |mut conn| async move {
            // SCAN may return a key more than once; the set also sorts.
            let mut keys = BTreeSet::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query_async::<(u64, Vec<Vec<u8>>)>(&mut conn)
                    .await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let mut entries = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(SCAN_BATCH) {
                let values = redis::cmd("MGET")
                    .arg(chunk)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .await?;
                for (full, value) in chunk.iter().zip(values) {
                    if let (Some(key), Some(value)) = (full.strip_prefix(base.as_slice()), value) {
                        entries.push((key.to_vec(), value));
                    }
                }
            }
            Ok(entries)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(
            escape_glob(b"a*b?c[d]e\\f"),
            b"a\\*b\\?c\\[d\\]e\\\\f".to_vec()
        );
        assert_eq!(escape_glob(b"plain:\x00\xff"), b"plain:\x00\xff".to_vec());
    }
}
