//! The keyed shuffle between the stages of a clustered pipeline (the
//! `repartition` step): which key an event is shuffled by, and how that key
//! becomes one token of a NATS subject, so that a stream's subject
//! transform can partition by it as the first stage's input is.

use serde::Deserialize;

use crate::Event;

/// What a `repartition` step shuffles events by: `"key"` (the event's key,
/// as the source or a pipe set it) or `{"field": "user"}` (a field of the
/// event's JSON value, which also becomes the event's key downstream).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ShuffleKey {
    /// The event's key.
    Key,
    /// A top-level field of the event's value, read as a JSON object: a
    /// string gives its text, a number or a boolean its JSON text.
    Field(String),
}

impl ShuffleKey {
    /// The key `event` is shuffled by.
    ///
    /// # Errors
    ///
    /// A message saying why the event has none: no key, a value that is not
    /// a JSON object, the field missing, or the field `null`, an array or
    /// an object.
    pub fn key_of(&self, event: &Event) -> Result<Vec<u8>, String> {
        match self {
            ShuffleKey::Key => event.key.clone().ok_or_else(|| {
                "the event has no key to shuffle by (`\"key_by\": \"key\"`): set one in a pipe \
                 before the `repartition` step, or shuffle by a field of the value"
                    .to_owned()
            }),
            ShuffleKey::Field(field) => {
                let value: serde_json::Value = serde_json::from_slice(&event.value)
                    .map_err(|error| {
                        format!("the event's value is not JSON ({error}), so it has no field `{field}` to shuffle by")
                    })?;
                match value.get(field) {
                    Some(serde_json::Value::String(text)) => Ok(text.as_bytes().to_vec()),
                    Some(scalar @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Ok(scalar.to_string().into_bytes())
                    }
                    Some(other) => Err(format!(
                        "the event's field `{field}` is {}, not a string, number or boolean to \
                         shuffle by",
                        crate::streams::json_kind(other)
                    )),
                    None if value.is_object() => Err(format!(
                        "the event's value has no field `{field}` to shuffle by"
                    )),
                    None => Err(format!(
                        "the event's value is {}, not a JSON object with a field `{field}` to \
                         shuffle by",
                        crate::streams::json_kind(&value)
                    )),
                }
            }
        }
    }
}

/// Whether `byte` may stand for itself in a key's subject token.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b':' | b'=' | b'@' | b'+')
}

/// A key as one token of a NATS subject: itself when it is made only of
/// letters, digits, `-`, `_`, `:`, `=`, `@` and `+` (and not empty);
/// otherwise `~` and the key's bytes in lowercase hex (`~` is never plain,
/// so the two forms cannot meet). A key with a `.`, `*`, `>`, whitespace or
/// any other byte thus never splits or widens a subject, and equal keys
/// always give equal tokens, so they land in one partition.
#[must_use]
pub fn subject_token(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|byte| plain(*byte)) {
        // All ASCII.
        String::from_utf8_lossy(key).into_owned()
    } else {
        format!("~{}", hex::encode(key))
    }
}

/// How long, by default, an upstream task that sent no watermark message
/// is waited for before the watermark after a shuffle leaves it out (ms):
/// longer than an upstream task's take-over after a crash (seconds, more on
/// a loaded machine), whose replayed events would otherwise come late.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// The header that marks a **watermark message** in a shuffle stream: its
/// value is the highest event timestamp (ms since the Unix epoch) the
/// upstream task had published, all of it stored, when it sent the message.
/// A watermark message is not an event: a JetStream source that reads one
/// never hands it to the pipeline.
pub const WATERMARK_HEADER: &str = "plumber-watermark";

/// The header of a watermark message that names the upstream task that sent
/// it (its pipeline name, e.g. `orders.s1#p03`).
pub const UPSTREAM_HEADER: &str = "plumber-upstream";

/// FNV-1a, 32 bits: the hash of NATS's `partition()` subject mapping.
#[must_use]
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The partition (0 to `partitions - 1`) of the subject token `token`
/// among `partitions`, as the NATS server's `partition(N, …)` mapping
/// computes it; `partitions` of 0 is taken as 1.
#[must_use]
pub fn partition_of(token: &[u8], partitions: u32) -> u32 {
    fnv1a32(token) % partitions.max(1)
}

/// A subject token that the server files under `partition` of
/// `partitions`: `~w<n>` for the smallest `n` that hashes there. Watermark
/// messages are published to `<stream>.<this token>` to reach one
/// partition each; `~` followed by a non-hex letter is never the token of
/// a key ([`subject_token`]), so they share no subject with events.
#[must_use]
pub fn partition_token(partition: u32, partitions: u32) -> String {
    let partitions = partitions.max(1);
    let target = partition % partitions;
    // About `partitions` tries on average: FNV-1a spreads these tokens
    // evenly (checked for every partition of 1 to 1024 in the tests).
    (0u64..)
        .map(|n| format!("~w{n}"))
        .find(|token| partition_of(token.as_bytes(), partitions) == target)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: &str) -> Event {
        Event::new(value)
    }

    #[test]
    fn keys_come_from_the_event_key_or_a_field() {
        let mut keyed = event("x");
        keyed.key = Some(b"k1".to_vec());
        assert_eq!(ShuffleKey::Key.key_of(&keyed).unwrap(), b"k1");
        assert!(ShuffleKey::Key
            .key_of(&event("x"))
            .unwrap_err()
            .contains("no key"));
        let user = ShuffleKey::Field("user".into());
        assert_eq!(user.key_of(&event(r#"{"user": "ada"}"#)).unwrap(), b"ada");
        assert_eq!(user.key_of(&event(r#"{"user": 42}"#)).unwrap(), b"42");
        assert_eq!(user.key_of(&event(r#"{"user": true}"#)).unwrap(), b"true");
        let missing = user.key_of(&event(r#"{"name": "ada"}"#)).unwrap_err();
        assert!(missing.contains("no field `user`"), "{missing}");
        let null = user.key_of(&event(r#"{"user": null}"#)).unwrap_err();
        assert!(null.contains("is null"), "{null}");
        let text = user.key_of(&event("ada")).unwrap_err();
        assert!(text.contains("not JSON"), "{text}");
        let array = user.key_of(&event("[1]")).unwrap_err();
        assert!(array.contains("an array, not a JSON object"), "{array}");
    }

    #[test]
    fn tokens_are_one_subject_token_and_distinct() {
        assert_eq!(subject_token(b"user-42"), "user-42");
        assert_eq!(subject_token(b"a:b=c@d+e_f"), "a:b=c@d+e_f");
        assert_eq!(subject_token(b"a.b"), "~612e62");
        assert_eq!(subject_token(b""), "~");
        for bad in [
            &b"a b"[..],
            b"*",
            b">",
            b"a.b",
            b"\xff",
            b"~61",
            "é".as_bytes(),
        ] {
            let token = subject_token(bad);
            assert!(token.starts_with('~'), "{token}");
            assert!(
                !token.contains(['.', '*', '>', ' ']),
                "{bad:?} gave {token}"
            );
        }
        // The encoded form of one key is never the plain form of another.
        assert_ne!(subject_token(b"~61"), subject_token(b"a"));
        assert_ne!(subject_token(b"61"), subject_token(b"a"));
    }

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_partition_token_reaches_its_partition_and_is_no_keys_token() {
        for partitions in [1, 2, 3, 7, 16, 64, 1000, 1024] {
            for partition in 0..partitions {
                let token = partition_token(partition, partitions);
                assert_eq!(partition_of(token.as_bytes(), partitions), partition);
                assert!(token.starts_with("~w"), "{token}");
                // A key's escaped token is `~` and hex: `w` is not hex.
                assert_ne!(subject_token(token.as_bytes()), token);
            }
        }
    }
}
