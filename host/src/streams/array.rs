//! A finite source over events held in memory.

pub mod config;

use async_trait::async_trait;

use super::{Source, StreamError};
use crate::checkpoint::Position;
use crate::Event;

/// Events from a vector, in order. Its position is the index of the next event.
pub struct ArraySource {
    events: Vec<Event>,
    next: usize,
}

impl ArraySource {
    /// A source over `events`.
    pub fn new(events: Vec<Event>) -> Self {
        ArraySource { events, next: 0 }
    }

    /// A source of events whose values are these strings.
    pub fn from_strings<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ArraySource::new(values.into_iter().map(|v| Event::new(v.into())).collect())
    }
}

#[async_trait]
impl Source for ArraySource {
    fn describe(&self) -> String {
        format!("array source ({} events)", self.events.len())
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.next = match position {
            Position::Start => 0,
            Position::Offset(index) => usize::try_from(*index)
                .ok()
                .filter(|i| *i <= self.events.len())
                .ok_or_else(|| StreamError::Seek {
                    stream: self.describe(),
                    position: position.clone(),
                    reason: "past the end of the array".to_owned(),
                })?,
        };
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        if self.next >= self.events.len() {
            return Ok(None);
        }
        let end = (self.next + max.max(1)).min(self.events.len());
        let batch = self.events[self.next..end].to_vec();
        self.next = end;
        Ok(Some((batch, Position::Offset(end as u64))))
    }
}
