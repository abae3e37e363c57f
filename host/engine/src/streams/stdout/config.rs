//! `{"type": "stdout"}` and `{"type": "discard"}`: the configs of the
//! printer and of the sink that drops everything.

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::{ConnectorSpec, OpenContext, OutputGuarantee, SinkSpec};
use crate::streams::{DiscardSink, Sink, StdoutSink, StreamError};

/// `{"type": "stdout"}`: standard output, a line per event. No fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

impl ConnectorSpec for StdoutSinkConfig {}

#[async_trait]
impl SinkSpec for StdoutSinkConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        Ok(Box::new(StdoutSink::new()))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        OutputGuarantee::AtLeastOnce(
            "exactly-once on state, but the stdout sink cannot take output back: after a crash, \
             output since the last checkpoint is printed again (at-least-once output)",
        )
    }
}

/// `{"type": "discard"}`: drops events (for pipelines run for their state,
/// and benchmarks). No fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardSinkConfig {}

impl ConnectorSpec for DiscardSinkConfig {}

#[async_trait]
impl SinkSpec for DiscardSinkConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        Ok(Box::new(DiscardSink::new()))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        OutputGuarantee::ExactlyOnce("exactly-once on state")
    }
}
