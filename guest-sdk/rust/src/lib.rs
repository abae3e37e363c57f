//! Write plumber pipes in Rust.
//!
//! A pipe is a type that implements [`Pipe`]; [`export_pipe!`] turns it into
//! the exports of the `plumber:pipe` world. The same type runs natively in a
//! unit test against [`State::in_memory`], with no WebAssembly build.
//!
//! ```
//! use plumber_guest::{Batch, Event, Pipe, PipeError, State};
//!
//! #[derive(Default)]
//! struct Upper;
//!
//! impl Pipe for Upper {
//!     fn init(_config: &str) -> Result<Self, PipeError> {
//!         Ok(Upper)
//!     }
//!
//!     fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
//!         Ok(batch
//!             .events
//!             .into_iter()
//!             .map(|mut event| {
//!                 event.value.make_ascii_uppercase();
//!                 event
//!             })
//!             .collect())
//!     }
//! }
//!
//! // In the guest crate: plumber_guest::export_pipe!(Upper);
//!
//! let mut pipe = Upper::init("{}").unwrap();
//! let out = pipe
//!     .process(Batch::new(vec![Event::new("ada")]), &mut State::in_memory())
//!     .unwrap();
//! assert_eq!(out[0].value, b"ADA");
//! ```

// Every public item is documented, and nothing is `pub` that a user of the
// crate cannot reach (warnings here; CI's clippy denies them).
#![warn(missing_docs, unreachable_pub)]

mod state;

/// The packed batch encoding ([`BatchReader`], [`BatchWriter`] and their errors).
pub use plumber_wire as wire;
pub use plumber_wire::{BatchReader, BatchWriter, EventRef, WindowRef};
pub use state::State;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated canonical-ABI glue
pub mod bindings {
    wit_bindgen::generate!({
        world: "packed-pipe",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__plumber_export_world",
        default_bindings_module: "plumber_guest::bindings",
        additional_derives: [PartialEq],
        // Imports take borrowed strings: no copy of a key to call the host.
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

pub use bindings::plumber::pipe::log::Level;
pub use bindings::plumber::pipe::state::StateError;
pub use bindings::plumber::pipe::types::{Batch, Event, PipeError, WindowInfo};

/// The logic of one pipe.
///
/// The host calls [`Pipe::init`] once per instance with the pipe's `config`
/// object from the pipeline config (JSON text, `{}` when absent), then
/// [`Pipe::process`] once per batch.
pub trait Pipe: Sized + 'static {
    /// Builds the pipe from its config.
    ///
    /// # Errors
    ///
    /// A config the pipe cannot use; the host refuses to start the pipeline.
    fn init(config: &str) -> Result<Self, PipeError>;

    /// Processes one batch and returns the events to pass on.
    ///
    /// # Errors
    ///
    /// A failure the host handles by the pipe's error policy.
    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError>;

    /// Processes one batch in its packed form (see [`BatchReader`]) and
    /// writes the events to pass on into `out` with a [`BatchWriter`].
    ///
    /// The host calls this instead of [`Pipe::process`] (one buffer crosses
    /// each way instead of every event's fields). The default decodes the
    /// batch, calls [`Pipe::process`] and encodes its answer; override it to
    /// work on the bytes in place (see `examples/guests/upper`). Both must
    /// give the same events.
    ///
    /// # Errors
    ///
    /// As [`Pipe::process`].
    fn process_packed(
        &mut self,
        batch: BatchReader<'_>,
        out: &mut Vec<u8>,
        state: &mut State,
    ) -> Result<(), PipeError> {
        let events = self.process(unpack(&batch)?, state)?;
        let mut writer = BatchWriter::new(out, None);
        for event in &events {
            writer.push(
                event.key.as_deref(),
                &event.value,
                event.timestamp,
                event.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
        writer.finish();
        Ok(())
    }
}

/// Decodes a packed batch into an owned [`Batch`].
///
/// # Errors
///
/// The bytes are not a packed batch (a host bug; reported, not trapped).
pub fn unpack(batch: &BatchReader<'_>) -> Result<Batch, PipeError> {
    let malformed = |e: plumber_wire::DecodeError| PipeError::new(e.to_string());
    let mut events = Vec::with_capacity(batch.len());
    for event in batch.events() {
        let event = event.map_err(malformed)?;
        let headers = event
            .headers()
            .map(|h| h.map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        events.push(Event {
            key: event.key.map(<[u8]>::to_vec),
            value: event.value.to_vec(),
            timestamp: event.timestamp,
            headers,
        });
    }
    Ok(Batch {
        events,
        window: batch.window.map(|w| WindowInfo {
            start: w.start,
            end: w.end,
            key: w.key.map(<[u8]>::to_vec),
        }),
    })
}

/// Parses a pipe's JSON config into `T`.
///
/// # Errors
///
/// The config is not valid JSON for `T`; the message says why.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, PipeError> {
    serde_json::from_str(config).map_err(|e| PipeError::new(format!("invalid pipe config: {e}")))
}

impl Event {
    /// An event with this value and nothing else.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Event {
            key: None,
            value: value.into(),
            timestamp: None,
            headers: Vec::new(),
        }
    }

    /// The same event with a key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same event with a timestamp (ms since the Unix epoch).
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// The value as text, when it is UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The key as text, when there is one and it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Batch {
    /// A batch of events outside any window.
    pub fn new(events: Vec<Event>) -> Self {
        Batch {
            events,
            window: None,
        }
    }
}

impl PipeError {
    /// An error that processing the same input again would not cure.
    pub fn new(message: impl Into<String>) -> Self {
        PipeError {
            message: message.into(),
            retryable: false,
            event_index: None,
        }
    }

    /// An error that may pass when the input is processed again.
    pub fn retryable(message: impl Into<String>) -> Self {
        PipeError {
            retryable: true,
            ..PipeError::new(message)
        }
    }

    /// The same error, pointing at the event at `index` in the batch.
    #[must_use]
    pub fn at_event(mut self, index: usize) -> Self {
        self.event_index = u32::try_from(index).ok();
        self
    }
}

impl From<StateError> for PipeError {
    fn from(error: StateError) -> Self {
        let retryable = matches!(error, StateError::Backend(_));
        let message = match &error {
            StateError::Backend(m) => format!("state backend: {m}"),
            StateError::Invalid(m) => format!("invalid state operation: {m}"),
            StateError::Limit(m) => format!("state limit: {m}"),
        };
        PipeError {
            message,
            retryable,
            event_index: None,
        }
    }
}

/// Writes a structured log line through the host (a no-op in native tests).
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        bindings::plumber::pipe::log::log(level, message, fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (level, message, fields);
    }
}

/// Exports a [`Pipe`] type as this component's `init` and `process`.
///
/// Use it once, in the guest crate's `lib.rs` (crate type `cdylib`).
#[macro_export]
macro_rules! export_pipe {
    ($pipe:ty) => {
        const _: () = {
            struct PlumberExport;

            ::std::thread_local! {
                static PIPE: ::std::cell::RefCell<::std::option::Option<$pipe>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            impl $crate::bindings::Guest for PlumberExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), $crate::PipeError> {
                    let pipe = <$pipe as $crate::Pipe>::init(&config)?;
                    PIPE.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(pipe));
                    ::std::result::Result::Ok(())
                }

                fn process(
                    batch: $crate::Batch,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Event>, $crate::PipeError>
                {
                    PIPE.with(|slot| {
                        let mut slot = slot.borrow_mut();
                        let pipe = slot
                            .as_mut()
                            .ok_or_else(|| $crate::PipeError::new("process called before init"))?;
                        <$pipe as $crate::Pipe>::process(pipe, batch, &mut $crate::State::host())
                    })
                }

                fn process_packed(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::PipeError> {
                    PIPE.with(|slot| {
                        let mut slot = slot.borrow_mut();
                        let pipe = slot
                            .as_mut()
                            .ok_or_else(|| $crate::PipeError::new("process called before init"))?;
                        let reader = $crate::BatchReader::new(&batch)
                            .map_err(|e| $crate::PipeError::new(e.to_string()))?;
                        // Room for an answer as large as the input without regrowing.
                        let mut out = ::std::vec::Vec::with_capacity(batch.len());
                        <$pipe as $crate::Pipe>::process_packed(
                            pipe,
                            reader,
                            &mut out,
                            &mut $crate::State::host(),
                        )?;
                        ::std::result::Result::Ok(out)
                    })
                }
            }

    $crate::bindings::__plumber_export_world!(PlumberExport with_types_in $crate::bindings);
        };
    };
}
