//! A pipe that reads a file from the filesystem: it imports WASI filesystem
//! interfaces, which the host does not grant, so it must fail to load.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct FileReader;

impl Pipe for FileReader {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(FileReader)
    }

    fn process(&mut self, _batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let text =
            std::fs::read_to_string("/etc/passwd").map_err(|e| PipeError::new(e.to_string()))?;
        Ok(vec![Event::new(text)])
    }
}

plumber_guest::export_pipe!(FileReader);
