//! A pipe that reaches for the filesystem and the network: it imports WASI
//! filesystem and sockets interfaces, which a host that does not grant them
//! must refuse to load.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct WasiReach;

impl Pipe for WasiReach {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(WasiReach)
    }

    fn process(&mut self, _batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let file = match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => text,
            Err(e) => format!("error: {e}"),
        };
        let net = match std::net::TcpStream::connect("127.0.0.1:1") {
            Ok(_) => "connected".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        Ok(vec![Event::new(file), Event::new(net)])
    }
}

plumber_guest::export_pipe!(WasiReach);
