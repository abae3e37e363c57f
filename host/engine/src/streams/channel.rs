//! In-process channels, for library use: feed a pipeline from Rust code and
//! read its output back.
//!
//! A channel cannot replay what it delivered before a restart. Its position
//! is the count of events received; seeking to a stored count makes the
//! count continue from there, and the program that feeds the channel uses
//! the committed count to know where to resume sending.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Sink, Source, StreamError};
use crate::checkpoint::Position;
use crate::{Batch, Event};

/// A source fed through an [`mpsc::Sender`]; it ends when every sender is dropped.
pub struct ChannelSource {
    receiver: mpsc::Receiver<Event>,
    received: u64,
}

/// A channel source and the sender that feeds it (`capacity` events in flight).
pub fn channel_source(capacity: usize) -> (mpsc::Sender<Event>, ChannelSource) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (
        sender,
        ChannelSource {
            receiver,
            received: 0,
        },
    )
}

#[async_trait]
impl Source for ChannelSource {
    fn describe(&self) -> String {
        "channel source".to_owned()
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.received = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?;
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let Some(first) = self.receiver.recv().await else {
            return Ok(None);
        };
        let mut events = Vec::with_capacity(max.clamp(1, 1024));
        events.push(first);
        // Take what is already waiting, without waiting for more.
        while events.len() < max {
            match self.receiver.try_recv() {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        self.received += events.len() as u64;
        Ok(Some((events, Position::Offset(self.received))))
    }
}

/// A sink that sends every event to an [`mpsc::Receiver`].
pub struct ChannelSink {
    sender: mpsc::Sender<Event>,
}

/// A channel sink and the receiver of its events (`capacity` in flight).
pub fn channel_sink(capacity: usize) -> (ChannelSink, mpsc::Receiver<Event>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (ChannelSink { sender }, receiver)
}

#[async_trait]
impl Sink for ChannelSink {
    fn describe(&self) -> String {
        "channel sink".to_owned()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        for event in batch.events {
            self.sender
                .send(event)
                .await
                .map_err(|_| StreamError::Closed {
                    stream: self.describe(),
                })?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

/// A sink that sends whole batches, window bounds included, to an
/// [`mpsc::Receiver`] (for library use after a window, and tests).
pub struct BatchChannelSink {
    sender: mpsc::Sender<Batch>,
}

/// A batch channel sink and the receiver of its batches (`capacity` in flight).
pub fn batch_channel_sink(capacity: usize) -> (BatchChannelSink, mpsc::Receiver<Batch>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (BatchChannelSink { sender }, receiver)
}

#[async_trait]
impl Sink for BatchChannelSink {
    fn describe(&self) -> String {
        "batch channel sink".to_owned()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.sender
            .send(batch)
            .await
            .map_err(|_| StreamError::Closed {
                stream: self.describe(),
            })
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_count_continues_from_a_seek_and_other_positions_are_refused() {
        let (sender, mut source) = channel_source(4);
        source.seek(&Position::Offset(10)).await.unwrap();
        sender.send(Event::new("a")).await.unwrap();
        let (_, position) = source.next_batch(10).await.unwrap().unwrap();
        assert_eq!(position, Position::Offset(11));
        let partitioned =
            Position::Partitions(std::collections::BTreeMap::from([(0, Position::Offset(1))]));
        let error = source.seek(&partitioned).await.unwrap_err();
        assert!(
            matches!(error, StreamError::Seek { .. })
                && error.to_string().contains("another kind of source"),
            "{error}"
        );
    }
}
