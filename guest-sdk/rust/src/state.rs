//! The pipe's view of its key/value state.

use std::collections::BTreeMap;

use crate::StateError;

/// Key/value state in the pipe's own namespace.
///
/// Inside a component every call goes to the host; [`State::in_memory`] gives
/// the same API over a map, for native unit tests.
pub struct State {
    backend: Backend,
}

enum Backend {
    Host,
    Memory(BTreeMap<String, Vec<u8>>),
}

impl State {
    /// The host's state, for use inside a component.
    #[doc(hidden)]
    pub fn host() -> Self {
        State {
            backend: Backend::Host,
        }
    }

    /// An empty in-memory state, for native tests.
    pub fn in_memory() -> Self {
        State {
            backend: Backend::Memory(BTreeMap::new()),
        }
    }

    /// The entries of an in-memory state, in key order (empty for the host's).
    pub fn entries(&self) -> Vec<(&str, &[u8])> {
        match &self.backend {
            Backend::Host => Vec::new(),
            Backend::Memory(map) => map
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect(),
        }
    }

    /// Reads a key.
    ///
    /// # Errors
    ///
    /// The host's backend failed.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match &mut self.backend {
            Backend::Host => host::get(key),
            Backend::Memory(map) => Ok(map.get(key).cloned()),
        }
    }

    /// Reads many keys in one host call.
    ///
    /// # Errors
    ///
    /// The host's backend failed.
    pub fn get_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        match &mut self.backend {
            Backend::Host => host::get_many(keys),
            Backend::Memory(map) => Ok(keys.iter().map(|k| map.get(k).cloned()).collect()),
        }
    }

    /// Writes a key.
    ///
    /// # Errors
    ///
    /// The host's backend failed or a size limit was exceeded.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        match &mut self.backend {
            Backend::Host => host::set(key, value),
            Backend::Memory(map) => {
                map.insert(key.to_owned(), value.to_vec());
                Ok(())
            }
        }
    }

    /// Removes a key.
    ///
    /// # Errors
    ///
    /// The host's backend failed.
    pub fn delete(&mut self, key: &str) -> Result<(), StateError> {
        match &mut self.backend {
            Backend::Host => host::delete(key),
            Backend::Memory(map) => {
                map.remove(key);
                Ok(())
            }
        }
    }

    /// Adds `delta` to the integer at `key` (absent is 0) and returns the new value.
    ///
    /// # Errors
    ///
    /// The stored value is not a decimal integer, or the backend failed.
    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64, StateError> {
        match &mut self.backend {
            Backend::Host => host::add(key, delta),
            Backend::Memory(map) => {
                let current = match map.get(key) {
                    Some(bytes) => parse_integer(key, bytes)?,
                    None => 0,
                };
                let next = current.checked_add(delta).ok_or_else(|| {
                    StateError::Invalid(format!("adding {delta} to `{key}` overflows"))
                })?;
                map.insert(key.to_owned(), next.to_string().into_bytes());
                Ok(next)
            }
        }
    }

    /// Applies each `(key, delta)` in order, as that many [`State::add`]
    /// calls would, in one host call; returns the new values in order.
    ///
    /// # Errors
    ///
    /// A stored value is not a decimal integer, or the backend failed; then
    /// none of the additions count (the host undoes the whole call).
    pub fn add_many(&mut self, ops: &[(&str, i64)]) -> Result<Vec<i64>, StateError> {
        match &mut self.backend {
            Backend::Host => host::add_many(ops),
            Backend::Memory(_) => ops
                .iter()
                .map(|(key, delta)| self.add(key, *delta))
                .collect(),
        }
    }

    /// Reads a UTF-8 string.
    ///
    /// # Errors
    ///
    /// The value is not UTF-8, or the backend failed.
    pub fn get_string(&mut self, key: &str) -> Result<Option<String>, StateError> {
        self.get(key)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| StateError::Invalid(format!("value at `{key}` is not UTF-8")))
            })
            .transpose()
    }

    /// Writes a string.
    ///
    /// # Errors
    ///
    /// The backend failed.
    pub fn set_string(&mut self, key: &str, value: &str) -> Result<(), StateError> {
        self.set(key, value.as_bytes())
    }

    /// Reads an integer written by [`State::add`] or [`State::set_i64`].
    ///
    /// # Errors
    ///
    /// The value is not a decimal integer, or the backend failed.
    pub fn get_i64(&mut self, key: &str) -> Result<Option<i64>, StateError> {
        self.get(key)?
            .map(|bytes| parse_integer(key, &bytes))
            .transpose()
    }

    /// Writes an integer (as decimal text, the encoding `add` uses).
    ///
    /// # Errors
    ///
    /// The backend failed.
    pub fn set_i64(&mut self, key: &str, value: i64) -> Result<(), StateError> {
        self.set(key, value.to_string().as_bytes())
    }

    /// Reads a JSON value into `T`.
    ///
    /// # Errors
    ///
    /// The value is not JSON for `T`, or the backend failed.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, StateError> {
        self.get(key)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    StateError::Invalid(format!("value at `{key}` is not the JSON expected: {e}"))
                })
            })
            .transpose()
    }

    /// Writes `value` as JSON.
    ///
    /// # Errors
    ///
    /// `value` cannot be serialised, or the backend failed.
    pub fn set_json<T: serde::Serialize>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StateError::Invalid(format!("cannot serialise value for `{key}`: {e}")))?;
        self.set(key, &bytes)
    }
}

fn parse_integer(key: &str, bytes: &[u8]) -> Result<i64, StateError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| StateError::Invalid(format!("value at `{key}` is not an integer")))
}

/// Calls into the host. Natively (unit tests) there is no host: only
/// [`State::in_memory`] is usable there, and a host state reports that.
#[cfg(target_arch = "wasm32")]
mod host {
    use crate::bindings::plumber::pipe::state;
    use crate::StateError;

    pub(super) fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        state::get(key)
    }
    pub(super) fn get_many(keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        state::get_many(&keys)
    }
    pub(super) fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        state::set(key, value)
    }
    pub(super) fn delete(key: &str) -> Result<(), StateError> {
        state::delete(key)
    }
    pub(super) fn add(key: &str, delta: i64) -> Result<i64, StateError> {
        state::add(key, delta)
    }
    pub(super) fn add_many(ops: &[(&str, i64)]) -> Result<Vec<i64>, StateError> {
        state::add_many(ops)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    use crate::StateError;

    fn no_host() -> StateError {
        StateError::Backend("no plumber host outside WebAssembly: use State::in_memory()".into())
    }
    pub(super) fn get(_: &str) -> Result<Option<Vec<u8>>, StateError> {
        Err(no_host())
    }
    pub(super) fn get_many(_: &[String]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        Err(no_host())
    }
    pub(super) fn set(_: &str, _: &[u8]) -> Result<(), StateError> {
        Err(no_host())
    }
    pub(super) fn delete(_: &str) -> Result<(), StateError> {
        Err(no_host())
    }
    pub(super) fn add(_: &str, _: i64) -> Result<i64, StateError> {
        Err(no_host())
    }
    pub(super) fn add_many(_: &[(&str, i64)]) -> Result<Vec<i64>, StateError> {
        Err(no_host())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_many_is_adds_in_order() {
        let mut state = State::in_memory();
        let ops = [("a", 1), ("b", 5), ("a", 2)];
        assert_eq!(state.add_many(&ops).unwrap(), [1, 5, 3]);
        assert_eq!(state.get_i64("a").unwrap(), Some(3));
    }

    #[test]
    fn typed_helpers_round_trip_in_memory() {
        let mut state = State::in_memory();
        state.set_string("name", "ada").unwrap();
        assert_eq!(state.get_string("name").unwrap().as_deref(), Some("ada"));
        state.set_i64("n", 40).unwrap();
        assert_eq!(state.add("n", 2).unwrap(), 42);
        assert_eq!(state.get_i64("n").unwrap(), Some(42));
        state.set_json("point", &(1, "x")).unwrap();
        assert_eq!(
            state.get_json::<(i32, String)>("point").unwrap(),
            Some((1, "x".to_owned()))
        );
        assert_eq!(
            state
                .get_many(&["name".to_owned(), "absent".to_owned()])
                .unwrap(),
            vec![Some(b"ada".to_vec()), None]
        );
        state.delete("name").unwrap();
        assert_eq!(state.get("name").unwrap(), None);
    }

    #[test]
    fn type_mismatches_are_errors_not_panics() {
        let mut state = State::in_memory();
        state.set("text", b"not a number").unwrap();
        assert!(matches!(state.add("text", 1), Err(StateError::Invalid(_))));
        assert!(matches!(state.get_i64("text"), Err(StateError::Invalid(_))));
        state.set("bytes", &[0xff, 0xfe]).unwrap();
        assert!(matches!(
            state.get_string("bytes"),
            Err(StateError::Invalid(_))
        ));
        state.set_i64("max", i64::MAX).unwrap();
        assert!(matches!(state.add("max", 1), Err(StateError::Invalid(_))));
    }

    #[test]
    fn a_host_state_outside_wasm_says_so() {
        let mut state = State::host();
        assert!(matches!(state.get("k"), Err(StateError::Backend(m)) if m.contains("in_memory")));
    }
}
