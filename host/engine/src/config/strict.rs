//! Strict reading of config JSON: every object refuses unknown fields, a
//! struct must be written as an object (serde alone also reads one from an
//! array of its fields), `{"type": …}` sections keep the JSON path of an
//! error inside them, and what an error quotes of a value is cut short.
//!
//! serde's internally tagged enums (`#[serde(tag = "type")]`) buffer the
//! whole object before they know its variant, and then read the variant
//! from that buffer, out of sight of `serde_path_to_error`: an error inside
//! (`pipeline[0].module`) was reported at the enum (`pipeline[0]`), and
//! `deny_unknown_fields` had to be repeated on the enum to apply at all.
//! Here a tagged section is read as a map, its `type` taken out, and the
//! rest read as the variant of the enum derived *externally* tagged
//! (`{"file": {"path": …}}`), which serde reads without buffering; the
//! path of an error inside is carried up to the outer path in the message
//! (see [`nested`]), and [`super::ConfigError::Invalid`] joins the two.
//!
//! `#[serde(remote = "Self")]` makes serde's derive an inherent
//! `Type::deserialize` (the plain form: a struct from an array too, an enum
//! externally tagged), which the `Deserialize` impls here wrap; read
//! configs through the trait (`serde_json::from_str`, [`parse`]).
//!
//! Connector sections (`from`, `to`, `dead_letter`, `state`) are read as a
//! [`Tagged`] object first; the registry then reads its fields as the
//! config type registered for its `type` with [`read_fields`], which
//! refuses any field the type does not declare (serde's derive lists them,
//! [`struct_fields`]), so that a connector written anywhere refuses
//! unknown fields without relying on its own serde attributes. The path
//! inside the section is joined to the section's with [`join`].

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_path_to_error::{Path, Segment};

/// The most characters of a value (a string, a field name) that an error
/// quotes; a longer one is cut and its length in bytes noted.
pub const MAX_QUOTED_CHARS: usize = 200;

/// The most characters of a whole error message.
const MAX_MESSAGE_CHARS: usize = 2_000;

/// Marks an error message that carries the JSON path, inside a tagged
/// section, of the field at fault: `NESTED path NESTED message`.
const NESTED: char = '\u{1f}';

/// At most [`MAX_QUOTED_CHARS`] characters of `text`, then `… (N bytes)`.
pub fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes)", &text[..cut], text.len())),
    }
}

/// `message` with every quoted span (between backticks or double quotes)
/// longer than [`MAX_QUOTED_CHARS`] cut, and the whole cut at
/// [`MAX_MESSAGE_CHARS`]: serde's messages quote values and field names
/// whole.
pub fn cap_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS + 64));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=open]);
        let body = &rest[open + 1..];
        // Inside double quotes serde escapes quotes with a backslash.
        let mut close = None;
        let mut escaped = false;
        for (index, c) in body.char_indices() {
            match c {
                '\\' if quote == '"' && !escaped => escaped = true,
                c if c == quote && !escaped => {
                    close = Some(index);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(close) = close else {
            out.push_str(&excerpt(body));
            rest = "";
            break;
        };
        out.push_str(&excerpt(&body[..close]));
        out.push(quote);
        rest = &body[close + 1..];
    }
    out.push_str(rest);
    excerpt_whole(out)
}

fn excerpt_whole(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message,
        Some((cut, _)) => format!("{}… ({} bytes)", &message[..cut], message.len()),
    }
}

/// A path as the config's errors write it: `pipeline[0].limits.cpu`.
fn render(segments: &[&Segment]) -> String {
    let mut text = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(&excerpt(key));
            }
            Segment::Unknown => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push('?');
            }
        }
    }
    text
}

/// `outer` and `inner` joined as one path (either may be empty).
pub(crate) fn join(outer: &str, inner: &str) -> String {
    match (outer.is_empty(), inner.is_empty()) {
        (_, true) => outer.to_owned(),
        (true, false) => inner.to_owned(),
        (false, false) if inner.starts_with('[') => format!("{outer}{inner}"),
        (false, false) => format!("{outer}.{inner}"),
    }
}

/// The field a serde "missing field `x`" message names.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
}

/// Splits a message made by [`nested`] into the inner path and the message.
fn split_nested(message: &str) -> Option<(&str, &str)> {
    message
        .strip_prefix(NESTED)
        .and_then(|rest| rest.split_once(NESTED))
}

/// The path of an error and its message, from the path where
/// `serde_path_to_error` saw it (`segments`) and serde's message: a
/// message from inside a tagged section adds its inner path, and a missing
/// field is named in the path. `position` is serde_json's " at line L
/// column C" suffix, dropped when the error comes from inside a tagged
/// section (it then points at the section's end).
fn locate(segments: &[&Segment], message: &str, position: Option<&str>) -> (String, String) {
    let outer = render(segments);
    if let Some((inner, rest)) = split_nested(message) {
        let rest = position
            .and_then(|suffix| rest.strip_suffix(suffix))
            .unwrap_or(rest);
        return (join(&outer, inner), rest.to_owned());
    }
    match missing_field(message) {
        Some(field) => (join(&outer, field), message.to_owned()),
        None => (outer, message.to_owned()),
    }
}

/// The path (empty at the top level) and message of a config error.
pub(crate) fn describe(error: serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let segments: Vec<&Segment> = error.path().iter().collect();
    let inner = error.inner();
    let position =
        (inner.line() > 0).then(|| format!(" at line {} column {}", inner.line(), inner.column()));
    let (path, message) = locate(&segments, &inner.to_string(), position.as_deref());
    (path, cap_quoted(&message))
}

/// An error of a tagged section: `error` happened at `path` of its
/// externally tagged form (`{"<kind>": {…}}`), so the variant segment is
/// dropped and the rest goes in the message for the outer path to join; an
/// unknown kind is the fault of the `tag` field.
fn nested<E: de::Error>(path: &Path, error: &serde_json::Error, tag: &str) -> E {
    let mut segments: Vec<&Segment> = path.iter().collect();
    if matches!(segments.first(), Some(Segment::Enum { .. })) {
        segments.remove(0);
    }
    let message = error.to_string();
    let (mut inner, message) = locate(&segments, &message, None);
    if inner.is_empty() && message.starts_with("unknown variant") {
        inner = tag.to_owned();
    }
    nested_error(&inner, &message)
}

/// An error at `path` inside the section being read, in the form the
/// section's own path is joined to when the error reaches the top.
pub(crate) fn nested_error<E: de::Error>(path: &str, message: &str) -> E {
    E::custom(format!("{NESTED}{path}{NESTED}{message}"))
}

/// A section's `from` (if it has one) and its other fields.
pub(crate) type WithInputs = (Option<Vec<String>>, Map<String, Value>);

/// Reads a JSON object as its optional field `from` (a list of names:
/// the inputs of a graph's step or sink) and the rest of its fields.
///
/// # Errors
///
/// The section is not an object, names a field twice, or its `from` is
/// not a list of strings (the error names the field).
pub(crate) fn take_inputs<'de, D>(deserializer: D) -> Result<WithInputs, D::Error>
where
    D: de::Deserializer<'de>,
{
    let mut object = deserializer.deserialize_map(ObjectFields)?;
    let from = match object.remove("from") {
        None => None,
        Some(value) => {
            let mut track = serde_path_to_error::Track::new();
            let read = Vec::<String>::deserialize(serde_path_to_error::Deserializer::new(
                value, &mut track,
            ));
            match read {
                Ok(inputs) => Some(inputs),
                Err(error) => {
                    let path = track.path();
                    let segments: Vec<&Segment> = path.iter().collect();
                    let (inner, message) = locate(&segments, &error.to_string(), None);
                    return Err(nested_error(&join("from", &inner), &message));
                }
            }
        }
    };
    Ok((from, object))
}

/// Reads `fields` as a `T` for [`take_inputs`]' caller, keeping the path of
/// an error inside them.
pub(crate) fn read_rest<E: de::Error, T: DeserializeOwned>(
    fields: Map<String, Value>,
) -> Result<T, E> {
    T::deserialize(Value::Object(fields)).map_err(|error| E::custom(error.to_string()))
}

/// Reads a JSON object whose kind is the string in its field `tag`
/// (`{"type": "file", …}`): the kind, and the other fields.
///
/// # Errors
///
/// The section is not an object, has no string `tag`, or names a field
/// twice (the error names the field).
pub(crate) fn take_tag<'de, D>(deserializer: D, tag: &str) -> Result<Tagged, D::Error>
where
    D: de::Deserializer<'de>,
{
    let mut object = deserializer.deserialize_map(ObjectFields)?;
    let kind = match object.remove(tag) {
        None => return Err(de::Error::custom(format!("missing field `{tag}`"))),
        Some(Value::String(kind)) => kind,
        Some(other) => {
            let error = match String::deserialize(other) {
                Err(error) => error.to_string(),
                Ok(_) => "expected a string".to_owned(),
            };
            return Err(nested_error(tag, &error));
        }
    };
    Ok(Tagged {
        kind,
        fields: object,
    })
}

/// A section read by [`take_tag`]: its kind and the rest of its fields.
#[derive(Debug, Clone)]
pub(crate) struct Tagged {
    /// The value of the tag field (`"file"` of `{"type": "file"}`).
    pub(crate) kind: String,
    /// The other fields.
    pub(crate) fields: Map<String, Value>,
}

/// A `{"type": …, …}` section whose type is looked up later (in the
/// connector registry).
impl<'de> Deserialize<'de> for Tagged {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        take_tag(deserializer, "type")
    }
}

/// Reads a `{"<tag>": "<kind>", …}` section as `{"<kind>": {…}}`, the form
/// an externally tagged enum reads, with `read`.
///
/// # Errors
///
/// The section is not an object, has no string `tag`, names a field
/// twice, or `read` failed (the error names the path inside the section).
pub(crate) fn tagged<'de, D, T>(
    deserializer: D,
    tag: &str,
    read: impl FnOnce(serde_path_to_error::Deserializer<'_, '_, Value>) -> Result<T, serde_json::Error>,
) -> Result<T, D::Error>
where
    D: de::Deserializer<'de>,
{
    let Tagged {
        kind,
        fields: object,
    } = take_tag(deserializer, tag)?;
    let mut retagged = Map::with_capacity(1);
    retagged.insert(kind, Value::Object(object));
    let mut track = serde_path_to_error::Track::new();
    let result = read(serde_path_to_error::Deserializer::new(
        Value::Object(retagged),
        &mut track,
    ));
    result.map_err(|error| nested(&track.path(), &error, tag))
}

/// Reads an object's fields, refusing a field named twice.
struct ObjectFields;

impl<'de> Visitor<'de> for ObjectFields {
    type Value = Map<String, Value>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{NESTED}{}{NESTED}duplicate field `{key}`",
                    excerpt(&key)
                )));
            }
            let value = map.next_value::<Value>()?;
            object.insert(key, value);
        }
        Ok(object)
    }
}

/// Reads a `T` that must be written as a JSON object.
pub(crate) fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_map(ObjectOf(PhantomData))
}

/// An optional `T` that must be written as a JSON object (or `null`).
pub(crate) fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|Object(value)| value))
}

/// A map whose values are `T`s written as JSON objects.
pub(crate) fn map_of_objects<'de, D, T>(
    deserializer: D,
) -> Result<std::collections::HashMap<String, T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let map = std::collections::HashMap::<String, Object<T>>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(key, Object(value))| (key, value))
        .collect())
}

/// A `T` written as a JSON object.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        object(deserializer).map(Object)
    }
}

struct ObjectOf<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOf<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// Parses config text: a leading UTF-8 byte-order mark is skipped, and
/// nothing but whitespace may follow the JSON value.
///
/// # Errors
///
/// The text is not JSON of `T`'s shape: the JSON path (empty at the top
/// level) and the message.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(describe)?;
    deserializer.end().map_err(|error| {
        (
            String::new(),
            format!("{error} after the config's JSON value: remove what follows it"),
        )
    })?;
    Ok(value)
}

/// Reads the fields of a section (its tag taken out) as a `T`: the JSON
/// path inside the section (empty for the section itself) and the message
/// on error.
///
/// A field `T` does not declare is refused here, whatever `T`'s serde
/// attributes say, so that a connector from anywhere refuses unknown
/// fields by construction (`T` must be a struct without
/// `#[serde(flatten)]`, whose fields serde lists).
///
/// # Errors
///
/// A field is unknown, missing, or of the wrong type or value.
pub(crate) fn read_fields<T: DeserializeOwned>(
    fields: Map<String, Value>,
) -> Result<T, (String, String)> {
    if let Some(known) = struct_fields::<T>() {
        if let Some(unknown) = fields.keys().find(|key| !known.contains(&key.as_str())) {
            let error = <serde_json::Error as de::Error>::unknown_field(unknown, known);
            return Err((
                excerpt(unknown).into_owned(),
                cap_quoted(&error.to_string()),
            ));
        }
    }
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(describe)
}

/// The fields a struct `T` reads, as serde's derive lists them (with their
/// aliases), or `None` when `T` is not read as a plain struct (a map, an
/// enum, a struct with `#[serde(flatten)]`).
pub(crate) fn struct_fields<'de, T: Deserialize<'de>>() -> Option<&'static [&'static str]> {
    let mut fields = None;
    // The capture always stops the read with an error; only `fields` matters.
    let _ = T::deserialize(FieldsOf(&mut fields));
    fields
}

/// A deserializer that records the fields a struct asks for, and reads nothing.
struct FieldsOf<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldsOf<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Implements `Deserialize` for config structs derived with
/// `#[serde(remote = "Self")]`, so that each must be written as a JSON
/// object.
macro_rules! object_only {
    ($($config:ty),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $config {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = $config;
                    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                        formatter.write_str("a JSON object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<$config, A::Error> {
                        <$config>::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
    )*};
}

/// Implements `Deserialize` for `{"type": …}` enums derived externally
/// tagged with `#[serde(remote = "Self")]` (see the module's comment).
macro_rules! tagged_by_type {
    ($($config:ty),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $config {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::config::strict::tagged(deserializer, "type", |variant| <$config>::deserialize(variant))
            }
        }
    )*};
}

pub(crate) use {object_only, tagged_by_type};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_values_are_cut() {
        let long = "y".repeat(500);
        let message = cap_quoted(&format!(
            "unknown field `{long}`, expected `a`; invalid type: string \"{long}\\\"{long}\""
        ));
        assert_eq!(message.matches("… (500 bytes)").count(), 1, "{message}");
        assert_eq!(message.matches("… (1002 bytes)").count(), 1, "{message}");
        assert!(message.contains("expected `a`"), "{message}");
        assert_eq!(cap_quoted("short `x` \"y\""), "short `x` \"y\"");
        let unbalanced = format!("a `{long}");
        assert!(cap_quoted(&unbalanced).ends_with("… (500 bytes)"));
        let many = "`a`".repeat(10_000);
        assert!(cap_quoted(&many).len() < MAX_MESSAGE_CHARS + 100);
        assert_eq!(
            excerpt("é".repeat(201).as_str()).chars().count(),
            200 + " (402 bytes)".len() + 1
        );
    }
}
