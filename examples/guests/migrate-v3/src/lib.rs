//! Version 3 of the state-migration test pipe (`versioned-pipe`, state
//! version `3`): counts as `migrate-v2` does, but declares another state
//! version and exports no `migrate`, so the host must refuse to swap it in
//! over state of version `1` or `2`.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "versioned-pipe",
    path: "../../../wit",
});

#[path = "../../migrate-v2/src/count.rs"]
mod count;

struct CountV3;

impl Guest for CountV3 {
    fn init(_config: String) -> Result<(), PipeError> {
        Ok(())
    }

    fn process(batch: Batch) -> Result<Vec<Event>, PipeError> {
        count::count(batch)
    }

    fn state_version() -> String {
        "3".to_owned()
    }
}

export!(CountV3);
