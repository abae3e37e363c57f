//! A pipeline fed through a channel, with everything it writes collected:
//! for tests that send events while the pipeline runs (hot swaps,
//! migrations) and wait for their outputs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plumber::pipeline::PipelineBuilder;
use plumber::streams::{channel_sink, channel_source};
use plumber::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A running pipeline: its input, and every output value so far.
pub struct ChannelRun {
    /// Where its input goes.
    pub input: mpsc::Sender<Event>,
    /// Every output value so far, in order (as lossy UTF-8).
    pub output: Arc<Mutex<Vec<String>>>,
    /// How many events were sent ([`ChannelRun::send`] counts them; a test
    /// sending through a clone of `input` adds its own).
    pub sent: usize,
}

impl ChannelRun {
    /// Runs `builder` from a channel source to a channel sink, both of
    /// `capacity`. The task ends with the pipeline.
    ///
    /// # Panics
    ///
    /// The task panics when the pipeline fails.
    pub fn start(builder: PipelineBuilder, capacity: usize) -> (Self, JoinHandle<()>) {
        let (input, source) = channel_source(capacity);
        let (sink, mut receiver) = channel_sink(capacity);
        let output = Arc::new(Mutex::new(Vec::new()));
        let collected = output.clone();
        tokio::spawn(async move {
            while let Some(event) = receiver.recv().await {
                let value = String::from_utf8_lossy(&event.value).into_owned();
                collected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(value);
            }
        });
        let task = tokio::spawn(async move {
            builder
                .from(source)
                .to(sink)
                .run()
                .await
                .expect("pipeline run");
        });
        let run = ChannelRun {
            input,
            output,
            sent: 0,
        };
        (run, task)
    }

    /// Sends one event.
    ///
    /// # Panics
    ///
    /// The pipeline stopped reading.
    pub async fn send(&mut self, event: Event) {
        self.input.send(event).await.expect("send");
        self.sent += 1;
    }

    /// Waits until every event sent has its output.
    ///
    /// # Panics
    ///
    /// Not within `within`.
    pub async fn settle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.output().len() < self.sent {
            assert!(Instant::now() < deadline, "output stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every output value so far.
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
