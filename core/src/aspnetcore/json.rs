//! The JSON hub protocol: one JSON object per `0x1E`-terminated frame.
//!
//! Property order is free (the JS client writes `type` last); unknown properties are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue as JsonRaw;

use super::hub::{
    CancelInvocation, Close, Completion, CompletionResult, HubMessage, Invocation, RawValue,
    StreamItem,
};
use super::HubError;
use crate::framing::RECORD_SEPARATOR;

/// Every property any message type may carry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "type")]
    message_type: Option<i64>,
    invocation_id: Option<String>,
    target: Option<String>,
    #[serde(borrow)]
    arguments: Option<Vec<&'a JsonRaw>>,
    stream_ids: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(default, borrow, deserialize_with = "present")]
    item: Option<&'a JsonRaw>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a JsonRaw>,
    error: Option<String>,
    allow_reconnect: Option<bool>,
    sequence_id: Option<u64>,
}

/// Deserializes a property that is present, even as `null`, to `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de JsonRaw>, D::Error> {
    <&JsonRaw>::deserialize(d).map(Some)
}

fn raw(value: &JsonRaw) -> RawValue {
    RawValue::new(value.get().as_bytes().to_vec())
}

/// Decodes one JSON hub message (the frame without its `0x1E`).
///
/// # Errors
/// [`HubError::InvalidUtf8`], [`HubError::Json`] for syntax errors and wrongly typed
/// properties, [`HubError::MissingField`], [`HubError::UnknownMessageType`], or
/// [`HubError::Invalid`] for a Completion carrying both `result` and `error`.
pub fn parse_message(frame: &[u8]) -> Result<HubMessage, HubError> {
    let text = std::str::from_utf8(frame).map_err(|_| HubError::InvalidUtf8)?;
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| HubError::Json(e.to_string()))?;
    let message_type = wire.message_type.ok_or(HubError::MissingField("type"))?;
    let headers = wire.headers.unwrap_or_default();
    Ok(match message_type {
        1 | 4 => {
            let invocation = Invocation {
                headers,
                invocation_id: wire.invocation_id.filter(|id| !id.is_empty()),
                target: wire.target.ok_or(HubError::MissingField("target"))?,
                arguments: wire
                    .arguments
                    .ok_or(HubError::MissingField("arguments"))?
                    .into_iter()
                    .map(raw)
                    .collect(),
                stream_ids: wire.stream_ids.unwrap_or_default(),
            };
            if message_type == 1 {
                HubMessage::Invocation(invocation)
            } else if invocation.invocation_id.is_none() {
                return Err(HubError::MissingField("invocationId"));
            } else {
                HubMessage::StreamInvocation(invocation)
            }
        }
        2 => HubMessage::StreamItem(StreamItem {
            headers,
            invocation_id: wire
                .invocation_id
                .ok_or(HubError::MissingField("invocationId"))?,
            item: raw(wire.item.ok_or(HubError::MissingField("item"))?),
        }),
        3 => {
            let result = match (wire.result, wire.error) {
                (Some(_), Some(_)) => {
                    return Err(HubError::Invalid(
                        "a completion has both a result and an error",
                    ))
                }
                (Some(value), None) => CompletionResult::Value(raw(value)),
                (None, Some(error)) => CompletionResult::Error(error),
                (None, None) => CompletionResult::Void,
            };
            HubMessage::Completion(Completion {
                headers,
                invocation_id: wire
                    .invocation_id
                    .ok_or(HubError::MissingField("invocationId"))?,
                result,
            })
        }
        5 => HubMessage::CancelInvocation(CancelInvocation {
            headers,
            invocation_id: wire
                .invocation_id
                .ok_or(HubError::MissingField("invocationId"))?,
        }),
        6 => HubMessage::Ping,
        7 => HubMessage::Close(Close {
            error: wire.error,
            allow_reconnect: wire.allow_reconnect.unwrap_or(false),
        }),
        8 => HubMessage::Ack {
            sequence_id: wire
                .sequence_id
                .ok_or(HubError::MissingField("sequenceId"))?,
        },
        9 => HubMessage::Sequence {
            sequence_id: wire
                .sequence_id
                .ok_or(HubError::MissingField("sequenceId"))?,
        },
        other => return Err(HubError::UnknownMessageType(other)),
    })
}

/// Appends `message` as one JSON frame, `0x1E` included.
pub fn write_message(message: &HubMessage, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::new(out, message.message_type());
    match message {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            if let Some(id) = &inv.invocation_id {
                w.string("invocationId", id);
            }
            w.string("target", &inv.target);
            w.key("arguments");
            w.out.push(b'[');
            for (i, arg) in inv.arguments.iter().enumerate() {
                if i > 0 {
                    w.out.push(b',');
                }
                w.out.extend_from_slice(arg.as_bytes());
            }
            w.out.push(b']');
            if !inv.stream_ids.is_empty() {
                w.key("streamIds");
                w.out.push(b'[');
                for (i, id) in inv.stream_ids.iter().enumerate() {
                    if i > 0 {
                        w.out.push(b',');
                    }
                    write_json_string(w.out, id);
                }
                w.out.push(b']');
            }
            w.headers(&inv.headers);
        }
        HubMessage::StreamItem(item) => {
            w.string("invocationId", &item.invocation_id);
            w.raw("item", &item.item);
            w.headers(&item.headers);
        }
        HubMessage::Completion(c) => {
            w.string("invocationId", &c.invocation_id);
            match &c.result {
                CompletionResult::Void => {}
                CompletionResult::Value(v) => w.raw("result", v),
                CompletionResult::Error(e) => w.string("error", e),
            }
            w.headers(&c.headers);
        }
        HubMessage::CancelInvocation(c) => {
            w.string("invocationId", &c.invocation_id);
            w.headers(&c.headers);
        }
        HubMessage::Ping => {}
        HubMessage::Close(c) => {
            if let Some(e) = &c.error {
                w.string("error", e);
            }
            if c.allow_reconnect {
                w.key("allowReconnect");
                w.out.extend_from_slice(b"true");
            }
        }
        HubMessage::Ack { sequence_id } | HubMessage::Sequence { sequence_id } => {
            w.key("sequenceId");
            w.out.extend_from_slice(sequence_id.to_string().as_bytes());
        }
    }
    w.out.push(b'}');
    out.push(RECORD_SEPARATOR);
}

/// Writes the properties of one JSON object, `type` first (as the .NET server does).
struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ObjectWriter<'a> {
    fn new(out: &'a mut Vec<u8>, message_type: u8) -> Self {
        out.extend_from_slice(b"{\"type\":");
        out.extend_from_slice(message_type.to_string().as_bytes());
        Self { out }
    }

    fn key(&mut self, key: &str) {
        self.out.push(b',');
        write_json_string(self.out, key);
        self.out.push(b':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        write_json_string(self.out, value);
    }

    fn raw(&mut self, key: &str, value: &RawValue) {
        self.key(key);
        self.out.extend_from_slice(value.as_bytes());
    }

    fn headers(&mut self, headers: &BTreeMap<String, String>) {
        if headers.is_empty() {
            return;
        }
        self.key("headers");
        self.out.push(b'{');
        for (i, (k, v)) in headers.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_json_string(self.out, k);
            self.out.push(b':');
            write_json_string(self.out, v);
        }
        self.out.push(b'}');
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aspnetcore::Headers;

    fn rv(s: &str) -> RawValue {
        RawValue::new(s.as_bytes().to_vec())
    }

    fn round_trip(m: &HubMessage) {
        let mut out = Vec::new();
        write_message(m, &mut out);
        assert_eq!(out.last(), Some(&RECORD_SEPARATOR));
        let body = &out[..out.len() - 1];
        assert_eq!(
            &parse_message(body).unwrap(),
            m,
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    fn headers() -> Headers {
        [
            ("a".to_owned(), "1".to_owned()),
            ("b\"q".to_owned(), "2\n".to_owned()),
        ]
        .into()
    }

    pub(crate) fn every_message() -> Vec<HubMessage> {
        vec![
            HubMessage::Invocation(Invocation {
                headers: headers(),
                invocation_id: Some("0".into()),
                target: "Echo".into(),
                arguments: vec![rv("\"hello\""), rv("42"), rv("{\"nested\":true}")],
                stream_ids: vec![],
            }),
            HubMessage::Invocation(Invocation {
                headers: Headers::new(),
                invocation_id: None,
                target: "Upload".into(),
                arguments: vec![],
                stream_ids: vec!["1".into(), "2".into()],
            }),
            HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: "1".into(),
                item: rv("null"),
            }),
            HubMessage::Completion(Completion {
                headers: Headers::new(),
                invocation_id: "1".into(),
                result: CompletionResult::Void,
            }),
            HubMessage::Completion(Completion {
                headers: headers(),
                invocation_id: "2".into(),
                result: CompletionResult::Value(rv("null")),
            }),
            HubMessage::Completion(Completion {
                headers: Headers::new(),
                invocation_id: "3".into(),
                result: CompletionResult::Error("boom \u{e9}".into()),
            }),
            HubMessage::StreamInvocation(Invocation {
                headers: Headers::new(),
                invocation_id: Some("4".into()),
                target: "Counter".into(),
                arguments: vec![rv("3")],
                stream_ids: vec![],
            }),
            HubMessage::CancelInvocation(CancelInvocation {
                headers: headers(),
                invocation_id: "4".into(),
            }),
            HubMessage::Ping,
            HubMessage::Close(Close::default()),
            HubMessage::Close(Close {
                error: Some("bye".into()),
                allow_reconnect: true,
            }),
            HubMessage::Ack { sequence_id: 17 },
            HubMessage::Sequence {
                sequence_id: u64::MAX,
            },
        ]
    }

    #[test]
    fn every_message_type_round_trips() {
        for m in every_message() {
            round_trip(&m);
        }
    }

    #[test]
    fn server_writes_type_first() {
        let mut out = Vec::new();
        write_message(&HubMessage::Ping, &mut out);
        assert_eq!(out, b"{\"type\":6}\x1e");
        out.clear();
        write_message(&HubMessage::Close(Close::default()), &mut out);
        assert_eq!(out, b"{\"type\":7}\x1e");
    }

    #[test]
    fn js_client_bytes_decode() {
        // As captured from @microsoft/signalr 10 in Node: `type` comes last.
        let m = parse_message(
            br#"{"arguments":["hello",42,{"nested":true}],"invocationId":"0","target":"Echo","type":1}"#,
        )
        .unwrap();
        let HubMessage::Invocation(inv) = m else {
            panic!("{m:?}")
        };
        assert_eq!(inv.invocation_id.as_deref(), Some("0"));
        assert_eq!(
            inv.arguments,
            vec![rv("\"hello\""), rv("42"), rv("{\"nested\":true}")]
        );
        assert_eq!(
            parse_message(br#"{"type":3,"invocationId":"srv-1","result":"client-answer"}"#)
                .unwrap(),
            HubMessage::Completion(Completion {
                headers: Headers::new(),
                invocation_id: "srv-1".into(),
                result: CompletionResult::Value(rv("\"client-answer\"")),
            })
        );
        assert_eq!(
            parse_message(br#"{"type":7}"#).unwrap(),
            HubMessage::Close(Close::default())
        );
    }

    #[test]
    fn empty_invocation_id_means_non_blocking() {
        let m = parse_message(br#"{"type":1,"invocationId":"","target":"x","arguments":[]}"#);
        let Ok(HubMessage::Invocation(inv)) = m else {
            panic!("{m:?}")
        };
        assert_eq!(inv.invocation_id, None);
    }

    #[test]
    fn bad_input_gives_typed_errors() {
        let cases: Vec<(&[u8], HubError)> = vec![
            (b"\xff\xfe", HubError::InvalidUtf8),
            (
                br#"{"target":"x","arguments":[]}"#,
                HubError::MissingField("type"),
            ),
            (
                br#"{"type":1,"arguments":[]}"#,
                HubError::MissingField("target"),
            ),
            (
                br#"{"type":1,"target":"x"}"#,
                HubError::MissingField("arguments"),
            ),
            (
                br#"{"type":4,"target":"x","arguments":[]}"#,
                HubError::MissingField("invocationId"),
            ),
            (
                br#"{"type":2,"invocationId":"1"}"#,
                HubError::MissingField("item"),
            ),
            (br#"{"type":3}"#, HubError::MissingField("invocationId")),
            (br#"{"type":8}"#, HubError::MissingField("sequenceId")),
            (br#"{"type":42}"#, HubError::UnknownMessageType(42)),
            (
                br#"{"type":3,"invocationId":"1","result":1,"error":"e"}"#,
                HubError::Invalid("a completion has both a result and an error"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_message(input),
                Err(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        for wrong_type in [
            &br#"{"type":"1","target":"x","arguments":[]}"#[..],
            br#"{"type":1,"target":5,"arguments":[]}"#,
            br#"{"type":1,"target":"x","arguments":{}}"#,
            br#"{"type":8,"sequenceId":-1}"#,
            br#"{"type":1,"target":"x","arguments":[],"headers":{"a":1}}"#,
            br#"{"type":6"#,
            br#"[6]"#,
        ] {
            assert!(
                matches!(parse_message(wrong_type), Err(HubError::Json(_))),
                "{}",
                String::from_utf8_lossy(wrong_type)
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut deep = br#"{"type":1,"target":"x","arguments":["#.to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(matches!(parse_message(&deep), Err(HubError::Json(_))));
    }
}
