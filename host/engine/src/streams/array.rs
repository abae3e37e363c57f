//! A finite source over events held in memory.

pub(super) mod config;

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
        self.next = super::list_index(|| self.describe(), position, self.events.len(), "array")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeks_to_an_index_and_refuses_other_positions() {
        let mut source = ArraySource::from_strings(["a", "b", "c"]);
        source.seek(&Position::Offset(2)).await.unwrap();
        let (events, position) = source.next_batch(10).await.unwrap().unwrap();
        assert_eq!((events.len(), position), (1, Position::Offset(3)));
        let past = source.seek(&Position::Offset(4)).await.unwrap_err();
        assert!(past.to_string().contains("past the end"), "{past}");
        let file = Position::Source {
            kind: "file".into(),
            value: serde_json::json!({"offset": 2}),
        };
        let error = source.seek(&file).await.unwrap_err();
        assert!(
            matches!(error, StreamError::Seek { .. })
                && error.to_string().contains("another kind of source"),
            "{error}"
        );
    }
}
