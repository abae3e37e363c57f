//! `{"type": "array", …}`: the array source's config.

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::{ConnectorSpec, OpenContext, SourceSpec};
use crate::streams::{ArraySource, Source, StreamError};

/// `{"type": "array", "values": […]}`: fixed values, one event each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArraySourceConfig {
    /// The events' values, in order (required).
    pub values: Vec<String>,
}

impl ConnectorSpec for ArraySourceConfig {}

#[async_trait]
impl SourceSpec for ArraySourceConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
        Ok(Box::new(ArraySource::from_strings(self.values.clone())))
    }
}
