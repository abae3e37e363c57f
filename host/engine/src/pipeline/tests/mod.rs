//! Unit tests of the engine's parts, without WASM or servers: a scripted
//! source, test stages answering barriers, and the memory state backend.

mod driver;
mod graph;
mod outbox;
mod run;
mod stage;
mod steps;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::stage::{BarrierReply, Message, Output};
use crate::checkpoint::Position;
use crate::state::{StateBackend, WriteSet};
use crate::streams::{CommitListener, Source, StreamError};
use crate::Event;

/// What the parts did, in the order they did it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The source was sought to this offset.
    Seek(u64),
    /// A stage received a batch ending before this offset.
    Batch(&'static str, u64),
    /// A stage received a barrier.
    Barrier(&'static str),
    /// A stage received the end of the source.
    End(&'static str),
    /// The source's commit listener was told this offset is committed.
    Committed(u64),
}

/// The shared record of what happened.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }

    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn commits(&self) -> Vec<u64> {
        self.all()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Committed(offset) => Some(offset),
                _ => None,
            })
            .collect()
    }
}

/// What the scripted source does once its batches are handed out.
#[derive(Clone, Copy)]
enum Then {
    /// It ends (a finite source).
    End,
    /// It waits for input that never comes (a quiet live source).
    Wait,
}

/// A source that hands out batches of given sizes, of events numbered from
/// 0 (the value is the number), each batch's position the offset after it;
/// it records seeks and commits in the log.
struct ScriptedSource {
    batches: VecDeque<usize>,
    offset: u64,
    then: Then,
    log: Log,
}

impl ScriptedSource {
    fn new(sizes: &[usize], then: Then, log: &Log) -> Self {
        ScriptedSource {
            batches: sizes.iter().copied().collect(),
            offset: 0,
            then,
            log: log.clone(),
        }
    }
}

#[async_trait]
impl Source for ScriptedSource {
    fn describe(&self) -> String {
        "scripted source".to_owned()
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        let offset = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?;
        self.log.push(Seen::Seek(offset));
        self.offset = offset;
        Ok(())
    }

    async fn next_batch(
        &mut self,
        _max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let Some(size) = self.batches.pop_front() else {
            return match self.then {
                Then::End => Ok(None),
                Then::Wait => std::future::pending().await,
            };
        };
        let events = (self.offset..self.offset + size as u64)
            .map(|n| Event::new(n.to_string()))
            .collect();
        self.offset += size as u64;
        Ok(Some((events, Position::Offset(self.offset))))
    }

    fn commit_listener(&mut self) -> Option<Box<dyn CommitListener>> {
        Some(Box::new(CommitRecorder(self.log.clone())))
    }
}

struct CommitRecorder(Log);

#[async_trait]
impl CommitListener for CommitRecorder {
    async fn committed(&mut self, position: &Position) -> Result<(), StreamError> {
        self.0
            .push(Seen::Committed(position.offset().unwrap_or(u64::MAX)));
        Ok(())
    }
}

/// The offset after the last event of a batch of the scripted source.
fn end_of(events: &[Event]) -> u64 {
    events
        .last()
        .and_then(|event| event.value_lossy().parse::<u64>().ok())
        .map_or(0, |n| n + 1)
}

/// How a test stage treats a barrier.
enum AtBarrier {
    /// It passes it on (or answers it, as the last stage) at once.
    Pass,
    /// It holds the first barrier until told, then passes every one.
    HoldFirst(oneshot::Receiver<()>),
    /// It stops with an error, dropping the barrier and its channels.
    Fail,
}

/// A stage task standing for a step (`next` set) or the sink (`next`
/// unset: it answers barriers). At each barrier it adds a write of its
/// own, `<name>/<n>` for its `n`th barrier, so that a commit shows whose
/// writes it carries.
struct TestStage {
    name: &'static str,
    log: Log,
    next: Option<Output>,
    at_barrier: AtBarrier,
}

impl TestStage {
    fn sink(name: &'static str, log: &Log, at_barrier: AtBarrier) -> Self {
        TestStage {
            name,
            log: log.clone(),
            next: None,
            at_barrier,
        }
    }

    fn step(name: &'static str, log: &Log, next: Output, at_barrier: AtBarrier) -> Self {
        TestStage {
            next: Some(next),
            ..TestStage::sink(name, log, at_barrier)
        }
    }

    /// Runs until its input closes; an error when told to fail.
    async fn run(mut self, mut input: mpsc::Receiver<Message>) -> Result<(), String> {
        let mut barriers = 0;
        while let Some(message) = input.recv().await {
            match message {
                Message::Data(batch, room) => {
                    drop(room);
                    self.log.push(Seen::Batch(self.name, end_of(&batch.events)));
                    if let Some(next) = &self.next {
                        next.send_batch(batch).await.map_err(|e| e.to_string())?;
                    }
                }
                Message::Barrier(mut barrier) => {
                    self.log.push(Seen::Barrier(self.name));
                    barriers += 1;
                    match std::mem::replace(&mut self.at_barrier, AtBarrier::Pass) {
                        AtBarrier::Pass => {}
                        AtBarrier::HoldFirst(gate) => {
                            let _ = gate.await;
                        }
                        AtBarrier::Fail => return Err(format!("{} failed", self.name)),
                    }
                    let mut writes = WriteSet::default();
                    writes.insert(key(self.name, barriers), Some(b"x".to_vec()));
                    barrier.writes.push(writes);
                    match &self.next {
                        Some(next) => next
                            .send(Message::Barrier(barrier))
                            .await
                            .map_err(|e| e.to_string())?,
                        None => {
                            let writes = std::mem::take(&mut barrier.writes);
                            barrier.answer(
                                0,
                                BarrierReply {
                                    writes,
                                    sink_position: None,
                                    dead_letter_position: None,
                                    outbox_events: 0,
                                },
                            );
                        }
                    }
                }
                Message::Watermark(watermark) => {
                    if let Some(next) = &self.next {
                        next.send(Message::Watermark(watermark))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                Message::End => {
                    self.log.push(Seen::End(self.name));
                    if let Some(next) = &self.next {
                        next.send(Message::End).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The key a test stage writes at its `barrier`th barrier.
fn key(stage: &str, barrier: u32) -> Vec<u8> {
    format!("{stage}/{barrier}").into_bytes()
}

/// Whether the state holds the key a test stage writes at its `barrier`th barrier.
async fn written(state: &dyn StateBackend, stage: &str, barrier: u32) -> bool {
    state.get(&key(stage, barrier)).await.unwrap().is_some()
}

/// Lets every task run until it waits (the clock is paused in these
/// tests, so this is not a guess at how long they take).
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}

/// Awaits `task`, failing the test if it has not ended after a minute
/// (of the paused clock, where tests use it: at once when all else waits).
async fn ended<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .expect("the task ended")
        .expect("the task did not panic")
}
