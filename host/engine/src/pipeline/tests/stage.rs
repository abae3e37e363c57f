//! The stage runner on its own: a test channel in, the next channel out.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::run::WritingStep;
use super::{end_of, ended, key};
use crate::checkpoint::CheckpointPolicy;
use crate::pipeline::stage::{Barrier, Message, Output, StageLink, StageRunner};
use crate::pipeline::status::StageStats;
use crate::{Batch, Event};

fn batch(values: &[u64]) -> Batch {
    Batch::new(values.iter().map(|n| Event::new(n.to_string())).collect())
}

/// What came out of a stage, in order: batches by their end, barriers by
/// the keys of their writes.
fn drain(output: &mut mpsc::Receiver<Message>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(message) = output.try_recv() {
        seen.push(match message {
            Message::Data(batch, _) => format!("batch to {}", end_of(&batch.events)),
            Message::Barrier(barrier) => {
                let mut keys: Vec<String> = barrier
                    .writes
                    .iter()
                    .flat_map(|writes| writes.keys())
                    .map(|key| String::from_utf8_lossy(key).into_owned())
                    .collect();
                keys.sort();
                format!("barrier with {}", keys.join(" "))
            }
            Message::Watermark(watermark) => format!("watermark {watermark}"),
            Message::End => "end".to_owned(),
        });
    }
    seen
}

/// A step's pending writes past the bound ask for one checkpoint per
/// epoch, however many batches follow before the barrier; the barrier
/// carries the writes of the stages before it and then the step's own.
#[tokio::test(start_paused = true)]
async fn a_step_past_its_write_bound_asks_once_per_epoch() {
    let requests = Arc::new(Notify::new());
    let policy = CheckpointPolicy {
        max_pending_keys: Some(2),
        ..CheckpointPolicy::at_end_only()
    };
    let link = StageLink::new(requests.clone(), &policy);
    let stats = Arc::new(StageStats::new("writer", None));
    let (input, receiver) = Output::channel(8, 4);
    let (output, mut out) = Output::channel(8, 4);
    let step = Box::new(WritingStep::default());
    let runner = StageRunner::new("staged".to_owned(), step, output, stats.clone(), link);
    let running = tokio::spawn(runner.run(receiver));
    let asked = || stats.write_set_checkpoints.load(Ordering::Relaxed);

    for values in [&[0][..], &[1], &[2, 3]] {
        input.send_batch(batch(values)).await.unwrap();
    }
    super::settle().await;
    assert_eq!(asked(), 1, "once in the first epoch");
    assert_eq!(stats.pending_keys_peak.load(Ordering::Relaxed), 4);
    // The request is waiting for the driver.
    tokio::time::timeout(std::time::Duration::from_secs(1), requests.notified())
        .await
        .expect("a checkpoint was asked for");

    let (mut barrier, _reply) = Barrier::new(1);
    let mut before = crate::state::WriteSet::default();
    before.insert(key("before", 1), None);
    barrier.writes.push(before);
    input.send(Message::Barrier(barrier)).await.unwrap();
    input.send_batch(batch(&[4])).await.unwrap();
    super::settle().await;
    assert_eq!(asked(), 1, "one key in the new epoch: under the bound");
    input.send_batch(batch(&[5])).await.unwrap();
    input.send(Message::End).await.unwrap();
    drop(input);
    ended(running).await.expect("the input ended");
    assert_eq!(asked(), 2, "again in the second epoch");

    assert_eq!(
        drain(&mut out),
        [
            "batch to 1",
            "batch to 2",
            "batch to 4",
            "barrier with before/1 written/0 written/1 written/2 written/3",
            "batch to 5",
            "batch to 6",
            "end",
        ]
    );
    assert_eq!(stats.events_in.load(Ordering::Relaxed), 6);
    assert_eq!(stats.events_out.load(Ordering::Relaxed), 6);
}
