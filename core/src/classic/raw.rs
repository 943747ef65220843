//! [`RawJson`], the opaque JSON value, and the JSON plumbing shared by the classic decoders.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::MessageError;

/// One JSON value kept as its exact text, never parsed into a tree.
///
/// Hub arguments, results, state, error data and the messages of a persistent response are
/// forwarded opaquely, so they are held as the text the sender wrote (without surrounding
/// whitespace). Two values are equal when their texts are equal: `[1,2]` and `[1, 2]` differ.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `json` is exactly one JSON value (surrounding whitespace allowed, and
    /// dropped) and wraps it.
    ///
    /// # Errors
    /// [`MessageError::InvalidJson`] if it is not.
    pub fn from_string(json: String) -> Result<Self, MessageError> {
        match RawValue::from_string(json) {
            Ok(value) => Ok(Self(value)),
            Err(e) => Err(MessageError::InvalidJson(e.to_string())),
        }
    }

    /// Serializes `value` to compact JSON.
    ///
    /// # Errors
    /// [`MessageError::WrongType`] if `value`'s `Serialize` implementation fails (for example
    /// a map with non-string keys).
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, MessageError> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(|e| MessageError::WrongType(e.to_string()))
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether the value is the JSON `null`.
    pub fn is_null(&self) -> bool {
        self.as_str() == "null"
    }

    /// Whether the value is a JSON object.
    pub fn is_object(&self) -> bool {
        self.as_str().starts_with('{')
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawJson {}

impl Hash for RawJson {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

/// Serializes `value` to compact JSON.
///
/// Every type passed here is a plain struct of strings, numbers, booleans and [`RawJson`]s
/// serialized into a `Vec`, which cannot fail; should it ever, the output is empty rather than
/// a panic.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// [`to_json`] as a `String`.
pub(crate) fn to_json_string<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The first key that appears twice in one object, anywhere in a JSON text (`None` for a
/// text that is not JSON).
pub(crate) fn duplicate_key(json: &str) -> Option<String> {
    serde_json::from_str::<FirstDuplicate>(json).ok()?.0
}

/// What [`duplicate_key`] finds in one value.
struct FirstDuplicate(Option<String>);

impl<'de> Deserialize<'de> for FirstDuplicate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FirstDuplicateVisitor)
    }
}

struct FirstDuplicateVisitor;

impl<'de> Visitor<'de> for FirstDuplicateVisitor {
    type Value = FirstDuplicate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(FirstDuplicate(inner)) = seq.next_element()? {
            found = found.or(inner);
        }
        Ok(FirstDuplicate(found))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = std::collections::BTreeSet::new();
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if found.is_none() && keys.contains(&key) {
                found = Some(key.clone());
            }
            keys.insert(key);
            let FirstDuplicate(inner) = map.next_value()?;
            found = found.or(inner);
        }
        Ok(FirstDuplicate(found))
    }
}

/// Checks that `bytes` is UTF-8 text whose first non-whitespace character opens an object.
pub(crate) fn object_text(bytes: &[u8]) -> Result<&str, MessageError> {
    let text = std::str::from_utf8(bytes).map_err(|_| MessageError::InvalidUtf8)?;
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .chars()
        .next()
    {
        // Let serde_json report the truncation.
        None | Some('{') => Ok(text),
        Some(_) => Err(MessageError::NotAnObject),
    }
}

/// Deserializes `T` from text already checked by [`object_text`].
pub(crate) fn from_text<T: DeserializeOwned>(text: &str) -> Result<T, MessageError> {
    serde_json::from_str(text).map_err(|e| MessageError::from_json(&e, text))
}

/// Deserializes `T` from bytes that must hold one JSON object.
pub(crate) fn decode_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    from_text(object_text(bytes)?)
}

/// What a quick pass over a JSON object's keys found, before choosing how to decode it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Probe {
    /// Number of members.
    pub(crate) members: usize,
    /// A key `I` is present, whatever its value (jQuery tests `typeof I !== "undefined"`).
    pub(crate) has_i: bool,
    /// A key `P` is present with a value other than `null`.
    pub(crate) has_p: bool,
}

impl Probe {
    /// Probes bytes that must hold one JSON object. Returns the text for the real decode.
    pub(crate) fn run(bytes: &[u8]) -> Result<(Self, &str), MessageError> {
        let text = object_text(bytes)?;
        let probe =
            serde_json::from_str::<Self>(text).map_err(|e| MessageError::from_json(&e, text))?;
        Ok((probe, text))
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl<'de> Visitor<'de> for ProbeVisitor {
    type Value = Probe;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        let mut probe = Probe::default();
        while let Some(key) = map.next_key::<ProbeKey>()? {
            probe.members = probe.members.saturating_add(1);
            match key {
                ProbeKey::I => {
                    probe.has_i = true;
                    map.next_value::<IgnoredAny>()?;
                }
                ProbeKey::P => {
                    let value = map.next_value::<Option<IgnoredAny>>()?;
                    probe.has_p |= value.is_some();
                }
                ProbeKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(probe)
    }
}

/// The keys a [`Probe`] cares about.
enum ProbeKey {
    I,
    P,
    Other,
}

impl<'de> Deserialize<'de> for ProbeKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(ProbeKeyVisitor)
    }
}

struct ProbeKeyVisitor;

impl Visitor<'_> for ProbeKeyVisitor {
    type Value = ProbeKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<ProbeKey, E> {
        Ok(match key {
            "I" => ProbeKey::I,
            "P" => ProbeKey::P,
            _ => ProbeKey::Other,
        })
    }
}

/// A persistent-response flag (`S`, `T`, `D`): the server writes `1`. Any number or boolean is
/// accepted; non-zero numbers and `true` are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flag(pub(crate) bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FlagVisitor)
    }
}

struct FlagVisitor;

impl Visitor<'_> for FlagVisitor {
    type Value = Flag;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a boolean")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
        Ok(Flag(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Flag, E> {
        Ok(Flag(v != 0))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Flag, E> {
        Ok(Flag(v != 0))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Flag, E> {
        Ok(Flag(v != 0.0))
    }
}

/// An invocation id (`I`): a JSON string, or a number turned into its decimal text, as the
/// server's `string Id` property does with jQuery's numeric ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdText(pub(crate) String);

impl<'de> Deserialize<'de> for IdText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdVisitor)
    }
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = IdText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IdText, E> {
        Ok(IdText(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<IdText, E> {
        Ok(IdText(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdText, E> {
        Ok(IdText(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdText, E> {
        Ok(IdText(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<IdText, E> {
        Ok(IdText(v.to_string()))
    }
}

/// For `#[serde(default, deserialize_with = "present")]`: a present key, `null` included,
/// becomes `Some(raw)`; only a missing key is `None`.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawJson>, D::Error> {
    RawJson::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_repeated_key_is_found_at_any_depth_by_the_structure_of_the_text() {
        assert_eq!(duplicate_key(r#"{"a":1,"a":2}"#), Some("a".to_owned()));
        assert_eq!(
            duplicate_key(r#"{"a":[{"b":1},{"c":{"d":1,"d":2}}]}"#),
            Some("d".to_owned())
        );
        // The same key in two objects is no repetition; nor are repeated array values.
        assert_eq!(duplicate_key(r#"[{"a":1},{"a":1}]"#), None);
        assert_eq!(duplicate_key(r#"{"a":"a","b":"a"}"#), None);
        assert_eq!(duplicate_key("not json"), None);
    }

    use super::*;

    #[test]
    fn raw_json_keeps_text_and_compares_by_text() {
        let a = RawJson::from_string(" [1, 2] ".to_owned()).unwrap();
        assert_eq!(a.as_str(), "[1, 2]");
        assert_ne!(a, RawJson::from_string("[1,2]".to_owned()).unwrap());
        assert!(RawJson::null().is_null());
        assert_eq!(
            RawJson::from_serialize(&("a", 1)).unwrap().as_str(),
            r#"["a",1]"#
        );
    }

    #[test]
    fn raw_json_rejects_non_json() {
        assert!(matches!(
            RawJson::from_string("[1,".to_owned()),
            Err(MessageError::InvalidJson(_))
        ));
        assert!(matches!(
            RawJson::from_string("1 2".to_owned()),
            Err(MessageError::InvalidJson(_))
        ));
    }

    #[test]
    fn probe_classifies_keys() {
        let (p, _) = Probe::run(br#"{"I":null,"P":null,"x":[1]}"#).unwrap();
        assert_eq!((p.members, p.has_i, p.has_p), (3, true, false));
        let (p, _) = Probe::run(b" {} ").unwrap();
        assert_eq!(p.members, 0);
        assert_eq!(Probe::run(b"[]").unwrap_err(), MessageError::NotAnObject);
        assert!(matches!(
            Probe::run(b"  "),
            Err(MessageError::InvalidJson(_))
        ));
    }
}
