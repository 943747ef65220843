//! The MessagePack hub protocol: one MessagePack array per varint-length-prefixed frame.
//!
//! Layouts (after the type number):
//!
//! | type | elements |
//! |---|---|
//! | 1, 4 | headers, invocation id (nil or str), target, arguments, stream ids (optional) |
//! | 2 | headers, invocation id, item |
//! | 3 | headers, invocation id, result kind (1 error, 2 void, 3 value), result (not for void) |
//! | 5 | headers, invocation id |
//! | 6 | (none) |
//! | 7 | error (nil or str), allow reconnect (optional) |
//! | 8, 9 | sequence id |
//!
//! The reader accepts the shorter forms other writers send (a 5-element Invocation from the JS
//! client, a 2-element Close) and skips trailing elements it does not know. The writer always
//! emits the stream ids, as the .NET server does (Python's `signalrcore` indexes the sixth
//! element unconditionally), and always a 3-element Close (the JS client rejects `[7]`).

use super::hub::{
    CancelInvocation, Close, Completion, CompletionResult, Headers, HubMessage, Invocation,
    RawValue, StreamItem,
};
use super::HubError;
use crate::framing::write_binary_frame;
use crate::msgpack::{ArrayReader, MsgPackError, Reader, Writer};

const RESULT_ERROR: u8 = 1;
const RESULT_VOID: u8 = 2;
const RESULT_VALUE: u8 = 3;

/// Decodes one MessagePack hub message (the frame body, without its length prefix).
///
/// # Errors
/// [`HubError::MsgPack`] for malformed MessagePack, wrong element types or too few elements,
/// [`HubError::UnknownMessageType`], or [`HubError::Invalid`] for an unknown result kind.
pub fn parse_message(frame: &[u8]) -> Result<HubMessage, HubError> {
    let mut r = Reader::new(frame);
    let len = r.array_len()?;
    if len == 0 {
        return Err(MsgPackError::TooFewElements { len, min: 1 }.into());
    }
    let mut a = ArrayReader::new(&mut r, len);
    let message_type: i64 = a.next()?.integer()?;
    let need = |min: u32| {
        if len < min {
            Err(HubError::MsgPack(MsgPackError::TooFewElements { len, min }))
        } else {
            Ok(())
        }
    };
    let message = match message_type {
        1 | 4 => {
            need(5)?;
            let headers = read_headers(a.next()?)?;
            let invocation_id = a
                .next()?
                .opt_str()?
                .filter(|id| !id.is_empty())
                .map(str::to_owned);
            let target = a.next()?.str()?.to_owned();
            let arguments = read_values(a.next()?)?;
            let stream_ids = match a.next_opt() {
                Some(r) => crate::msgpack::read_str_array(r)?,
                None => Vec::new(),
            };
            let inv = Invocation {
                headers,
                invocation_id,
                target,
                arguments,
                stream_ids,
            };
            if message_type == 1 {
                HubMessage::Invocation(inv)
            } else if inv.invocation_id.is_none() {
                return Err(HubError::MissingField("invocationId"));
            } else {
                HubMessage::StreamInvocation(inv)
            }
        }
        2 => {
            need(4)?;
            HubMessage::StreamItem(StreamItem {
                headers: read_headers(a.next()?)?,
                invocation_id: a.next()?.str()?.to_owned(),
                item: RawValue::new(a.next()?.raw()?.to_vec()),
            })
        }
        3 => {
            need(4)?;
            let headers = read_headers(a.next()?)?;
            let invocation_id = a.next()?.str()?.to_owned();
            let result = match a.next()?.integer::<u8>()? {
                RESULT_ERROR => {
                    need(5)?;
                    CompletionResult::Error(a.next()?.str()?.to_owned())
                }
                RESULT_VOID => CompletionResult::Void,
                RESULT_VALUE => {
                    need(5)?;
                    CompletionResult::Value(RawValue::new(a.next()?.raw()?.to_vec()))
                }
                _ => return Err(HubError::Invalid("unknown completion result kind")),
            };
            HubMessage::Completion(Completion {
                headers,
                invocation_id,
                result,
            })
        }
        5 => {
            need(3)?;
            HubMessage::CancelInvocation(CancelInvocation {
                headers: read_headers(a.next()?)?,
                invocation_id: a.next()?.str()?.to_owned(),
            })
        }
        6 => HubMessage::Ping,
        7 => {
            need(2)?;
            let error = a.next()?.opt_str()?.map(str::to_owned);
            let allow_reconnect = match a.next_opt() {
                Some(r) => r.bool()?,
                None => false,
            };
            HubMessage::Close(Close {
                error,
                allow_reconnect,
            })
        }
        8 | 9 => {
            need(2)?;
            let sequence_id = a.next()?.integer()?;
            if message_type == 8 {
                HubMessage::Ack { sequence_id }
            } else {
                HubMessage::Sequence { sequence_id }
            }
        }
        other => return Err(HubError::UnknownMessageType(other)),
    };
    a.finish()?;
    Ok(message)
}

fn read_headers(r: &mut Reader<'_>) -> Result<Headers, MsgPackError> {
    let len = r.map_len()?;
    let mut headers = Headers::new();
    for _ in 0..len {
        let key = r.str()?.to_owned();
        let value = r.str()?.to_owned();
        headers.insert(key, value);
    }
    Ok(headers)
}

fn read_values(r: &mut Reader<'_>) -> Result<Vec<RawValue>, MsgPackError> {
    let len = r.array_len()?;
    let mut values = Vec::with_capacity(len as usize);
    for _ in 0..len {
        values.push(RawValue::new(r.raw()?.to_vec()));
    }
    Ok(values)
}

/// Encodes `message` as a MessagePack body, without the length prefix.
pub fn write_body(message: &HubMessage, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    match message {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            w.array_len(6);
            w.uint(u64::from(message.message_type()));
            write_headers(&mut w, &inv.headers);
            w.opt_str(inv.invocation_id.as_deref());
            w.str(&inv.target);
            w.array_len(inv.arguments.len());
            for arg in &inv.arguments {
                w.raw(arg.as_bytes());
            }
            w.str_array(&inv.stream_ids);
        }
        HubMessage::StreamItem(item) => {
            w.array_len(4);
            w.uint(2);
            write_headers(&mut w, &item.headers);
            w.str(&item.invocation_id);
            w.raw(item.item.as_bytes());
        }
        HubMessage::Completion(c) => {
            w.array_len(if c.result == CompletionResult::Void {
                4
            } else {
                5
            });
            w.uint(3);
            write_headers(&mut w, &c.headers);
            w.str(&c.invocation_id);
            match &c.result {
                CompletionResult::Error(e) => {
                    w.uint(RESULT_ERROR.into());
                    w.str(e);
                }
                CompletionResult::Void => w.uint(RESULT_VOID.into()),
                CompletionResult::Value(v) => {
                    w.uint(RESULT_VALUE.into());
                    w.raw(v.as_bytes());
                }
            }
        }
        HubMessage::CancelInvocation(c) => {
            w.array_len(3);
            w.uint(5);
            write_headers(&mut w, &c.headers);
            w.str(&c.invocation_id);
        }
        HubMessage::Ping => {
            w.array_len(1);
            w.uint(6);
        }
        HubMessage::Close(c) => {
            w.array_len(3);
            w.uint(7);
            w.opt_str(c.error.as_deref());
            w.bool(c.allow_reconnect);
        }
        HubMessage::Ack { sequence_id } | HubMessage::Sequence { sequence_id } => {
            w.array_len(2);
            w.uint(u64::from(message.message_type()));
            w.uint(*sequence_id);
        }
    }
}

fn write_headers(w: &mut Writer<'_>, headers: &Headers) {
    w.map_len(headers.len());
    for (k, v) in headers {
        w.str(k);
        w.str(v);
    }
}

/// Appends `message` as one length-prefixed frame.
///
/// # Errors
/// [`HubError::Frame`] if the encoded message is over 2 GB.
pub fn write_message(message: &HubMessage, out: &mut Vec<u8>) -> Result<(), HubError> {
    let mut body = Vec::new();
    write_body(message, &mut body);
    write_binary_frame(&body, out)?;
    Ok(())
}

/// JSON hub-protocol frames (each ending in `0x1E`) re-encoded as MessagePack frames, for
/// invocations only: what the service does for a MessagePack client when an app server or a
/// management connection wrote a message's JSON payload alone. `None` when a frame is not an
/// invocation, is not valid, or the last one is unterminated.
pub fn invocations_from_json(json: &[u8]) -> Option<Vec<u8>> {
    let (last, frames) = json.split_last()?;
    if *last != crate::framing::RECORD_SEPARATOR {
        return None;
    }
    let mut out = Vec::with_capacity(json.len());
    for frame in frames.split(|&b| b == crate::framing::RECORD_SEPARATOR) {
        let HubMessage::Invocation(mut invocation) = super::json::parse_message(frame).ok()? else {
            return None;
        };
        for argument in &mut invocation.arguments {
            let value: serde_json::Value = serde_json::from_slice(argument.as_bytes()).ok()?;
            let mut encoded = Vec::new();
            Writer(&mut encoded).json(&value);
            *argument = RawValue::new(encoded);
        }
        write_message(&HubMessage::Invocation(invocation), &mut out).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::BinaryFrameDecoder;

    fn rv(b: &[u8]) -> RawValue {
        RawValue::new(b.to_vec())
    }

    #[test]
    fn json_invocations_become_messagepack_frames() {
        // What the Management SDK's persistent mode writes by default: JSON alone.
        let json = b"{\"type\":1,\"target\":\"SendMessage\",\"arguments\":[\"hi\",42,-1,1.5,null,true,[1],{\"a\":\"b\"}]}\x1e\
                     {\"type\":1,\"target\":\"t\",\"arguments\":[]}\x1e";
        let out = invocations_from_json(json).unwrap();
        let mut frames = BinaryFrameDecoder::new(1 << 20);
        frames.push(&out);
        let HubMessage::Invocation(first) =
            parse_message(&frames.next_frame().unwrap().unwrap()).unwrap()
        else {
            panic!("not an invocation");
        };
        assert_eq!(first.target, "SendMessage");
        assert!(first.invocation_id.is_none());
        let mut want: Vec<Vec<u8>> = Vec::new();
        for v in [
            serde_json::json!("hi"),
            serde_json::json!(42),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::Value::Null,
            serde_json::json!(true),
            serde_json::json!([1]),
            serde_json::json!({"a": "b"}),
        ] {
            let mut b = Vec::new();
            Writer(&mut b).json(&v);
            want.push(b);
        }
        let got: Vec<Vec<u8>> = first
            .arguments
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        assert_eq!(got, want);
        // Small integers in their smallest form, as MessagePack-CSharp writes them.
        assert_eq!(got[1], [42]);
        assert_eq!(got[2], [0xff]);
        let HubMessage::Invocation(second) =
            parse_message(&frames.next_frame().unwrap().unwrap()).unwrap()
        else {
            panic!("not an invocation");
        };
        assert_eq!(second.target, "t");
        assert!(second.arguments.is_empty());
        assert!(frames.next_frame().unwrap().is_none());
        // Anything else is left alone: another message type, broken JSON, no terminator.
        assert!(invocations_from_json(b"{\"type\":6}\x1e").is_none());
        assert!(
            invocations_from_json(b"{\"type\":1,\"target\":\"t\",\"arguments\":[}\x1e").is_none()
        );
        assert!(invocations_from_json(b"{\"type\":1,\"target\":\"t\",\"arguments\":[]}").is_none());
        assert!(invocations_from_json(b"").is_none());
    }

    fn body(framed: &[u8]) -> Vec<u8> {
        let mut d = BinaryFrameDecoder::new(1 << 20);
        d.push(framed);
        let frame = d.next_frame().unwrap().unwrap();
        assert_eq!(d.buffered(), 0);
        frame.to_vec()
    }

    pub(crate) fn every_message() -> Vec<HubMessage> {
        let h: Headers = [("k".to_owned(), "v".to_owned())].into();
        vec![
            HubMessage::Invocation(Invocation {
                headers: Headers::new(),
                invocation_id: Some("0".into()),
                target: "Echo".into(),
                arguments: vec![rv(b"\xa5hello"), rv(b"\x2a"), rv(b"\x81\xa6nested\xc3")],
                stream_ids: vec![],
            }),
            HubMessage::Invocation(Invocation {
                headers: h.clone(),
                invocation_id: None,
                target: "Upload".into(),
                arguments: vec![rv(b"\xc0")],
                stream_ids: vec!["2".into()],
            }),
            HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: "1".into(),
                item: rv(b"\x01"),
            }),
            HubMessage::Completion(Completion {
                headers: Headers::new(),
                invocation_id: "1".into(),
                result: CompletionResult::Void,
            }),
            HubMessage::Completion(Completion {
                headers: h.clone(),
                invocation_id: "2".into(),
                result: CompletionResult::Value(rv(b"\xc4\x02\x01\x02")),
            }),
            HubMessage::Completion(Completion {
                headers: Headers::new(),
                invocation_id: "3".into(),
                result: CompletionResult::Error("boom".into()),
            }),
            HubMessage::StreamInvocation(Invocation {
                headers: Headers::new(),
                invocation_id: Some("1".into()),
                target: "Counter".into(),
                arguments: vec![rv(b"\x03")],
                stream_ids: vec![],
            }),
            HubMessage::CancelInvocation(CancelInvocation {
                headers: h,
                invocation_id: "1".into(),
            }),
            HubMessage::Ping,
            HubMessage::Close(Close::default()),
            HubMessage::Close(Close {
                error: Some("bye".into()),
                allow_reconnect: true,
            }),
            HubMessage::Ack { sequence_id: 300 },
            HubMessage::Sequence { sequence_id: 1 },
        ]
    }

    #[test]
    fn every_message_type_round_trips() {
        for m in every_message() {
            let mut out = Vec::new();
            write_message(&m, &mut out).unwrap();
            assert_eq!(parse_message(&body(&out)).unwrap(), m);
        }
    }

    /// Frames exactly as the JS client and an ASP.NET Core server put them on the wire.
    #[test]
    fn real_client_frames_decode_and_re_encode_byte_for_byte() {
        let frames: [&[u8]; 7] = [
            b"\x02\x91\x06",
            b"\x1b\x95\x01\x80\xa10\xa4Echo\x93\xa5hello*\x81\xa6nested\xc3",
            b"\x1f\x95\x01\x80\xc0\xa9Broadcast\x91\xaffire-and-forget",
            b"\x0f\x95\x04\x80\xa11\xa7Counter\x91\x03",
            b"\x06\x94\x02\x80\xa11\x00",
            b"\x06\x94\x03\x80\xa11\x02",
            b"\x18\x95\x03\x80\xa5srv-1\x03\xadclient-answer",
        ];
        for framed in frames {
            let m = parse_message(&body(framed)).unwrap();
            let mut out = Vec::new();
            write_message(&m, &mut out).unwrap();
            if matches!(
                m,
                HubMessage::Invocation(_) | HubMessage::StreamInvocation(_)
            ) {
                // The JS client writes 5 elements; the writer adds the empty stream ids, as
                // the .NET server does: one more element (0x95 -> 0x96), one more byte.
                let mut expected = body(framed);
                expected[0] = 0x96;
                expected.push(0x90);
                let mut reframed = Vec::new();
                write_binary_frame(&expected, &mut reframed).unwrap();
                assert_eq!(out, reframed, "{m:?}");
            } else {
                assert_eq!(out, framed, "{m:?}");
            }
        }
        // The JS client writes Close as [7, nil].
        assert_eq!(
            parse_message(b"\x92\x07\xc0").unwrap(),
            HubMessage::Close(Close::default())
        );
        // An upload invocation with stream ids.
        let m = parse_message(b"\x96\x01\x80\xc0\xa6Upload\x91\xaaupload-arg\x91\xa12").unwrap();
        let HubMessage::Invocation(inv) = m else {
            panic!()
        };
        assert_eq!(inv.stream_ids, vec!["2".to_owned()]);
    }

    #[test]
    fn trailing_elements_are_skipped() {
        assert_eq!(
            parse_message(b"\x93\x06\xa1x\x90").unwrap(),
            HubMessage::Ping
        );
    }

    #[test]
    fn bad_input_gives_typed_errors() {
        let cases: Vec<(&[u8], HubError)> = vec![
            (b"", MsgPackError::UnexpectedEnd.into()),
            (
                b"\x90",
                MsgPackError::TooFewElements { len: 0, min: 1 }.into(),
            ),
            (b"\x91\x2a", HubError::UnknownMessageType(42)),
            (
                b"\x92\x06\xc1",
                HubError::MsgPack(MsgPackError::ReservedMarker),
            ),
            (
                b"\x93\x01\x80\xc0",
                MsgPackError::TooFewElements { len: 3, min: 5 }.into(),
            ),
            (
                b"\x95\x01\x80\xc0\x05\x90",
                MsgPackError::WrongType {
                    expected: "string",
                    found: "integer",
                }
                .into(),
            ),
            (
                b"\x95\x01\x80\xc0\xa1x\x90\xff"[..6].as_ref(),
                MsgPackError::UnexpectedEnd.into(),
            ),
            (
                b"\x95\x01\x80\xc0\xa2\xff\xfe\x90",
                MsgPackError::InvalidUtf8.into(),
            ),
            (
                b"\x95\x04\x80\xc0\xa1x\x90",
                HubError::MissingField("invocationId"),
            ),
            (
                b"\x94\x03\x80\xa11\x09",
                HubError::Invalid("unknown completion result kind"),
            ),
            (
                b"\x94\x03\x80\xa11\x03",
                MsgPackError::TooFewElements { len: 4, min: 5 }.into(),
            ),
            (b"\x92\x08\xff", MsgPackError::IntegerOutOfRange.into()),
            (
                b"\x91\x07",
                MsgPackError::TooFewElements { len: 1, min: 2 }.into(),
            ),
            (
                b"\x93\x07\xc0\x01",
                MsgPackError::WrongType {
                    expected: "bool",
                    found: "integer",
                }
                .into(),
            ),
            (
                b"\x81\x01\x02",
                MsgPackError::WrongType {
                    expected: "array",
                    found: "map",
                }
                .into(),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_message(input), Err(expected), "{input:02x?}");
        }
    }
}
