//! Typed values in and out of the hub protocols: arguments are decoded from the caller's
//! protocol, results encoded into it, and messages for many clients encoded once per
//! protocol.

use std::any::TypeId;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use signalr_relay_core::aspnetcore::{HubProtocol, RawValue};
use signalr_relay_core::framing::{write_binary_frame, RECORD_SEPARATOR};
use signalr_relay_core::service::Payloads;

use super::HubError;

/// Decodes the arguments of an invocation into `A` (a tuple, or `()` for none).
pub(crate) fn decode_args<A: DeserializeOwned + 'static>(
    protocol: HubProtocol,
    args: &[RawValue],
) -> Result<A, HubError> {
    let unit = TypeId::of::<A>() == TypeId::of::<()>();
    let bad = |e: String| HubError::new(format!("Failed to bind the invocation's arguments: {e}"));
    match protocol {
        HubProtocol::Json => {
            if unit {
                return serde_json::from_slice(b"null").map_err(|e| bad(e.to_string()));
            }
            let mut array =
                Vec::with_capacity(2 + args.iter().map(|a| a.as_bytes().len() + 1).sum::<usize>());
            array.push(b'[');
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    array.push(b',');
                }
                array.extend_from_slice(a.as_bytes());
            }
            array.push(b']');
            serde_json::from_slice(&array).map_err(|e| bad(e.to_string()))
        }
        HubProtocol::MessagePack | HubProtocol::BlazorPack => {
            if unit {
                return rmp_serde::from_slice(&[0xc0]).map_err(|e| bad(e.to_string()));
            }
            let mut array = Vec::new();
            let _ = rmp::encode::write_array_len(
                &mut array,
                u32::try_from(args.len()).unwrap_or(u32::MAX),
            );
            for a in args {
                array.extend_from_slice(a.as_bytes());
            }
            rmp_serde::from_slice(&array).map_err(|e| bad(e.to_string()))
        }
    }
}

/// Encodes one value in `protocol`.
pub(crate) fn encode_value<T: Serialize + ?Sized>(
    protocol: HubProtocol,
    value: &T,
) -> Result<RawValue, HubError> {
    let bytes = match protocol {
        HubProtocol::Json => serde_json::to_vec(value).map_err(|e| HubError::new(e.to_string()))?,
        HubProtocol::MessagePack | HubProtocol::BlazorPack => {
            rmp_serde::to_vec_named(value).map_err(|e| HubError::new(e.to_string()))?
        }
    };
    Ok(RawValue::new(bytes))
}

/// An Invocation of `target` with `args` (a tuple), framed, in `protocol`. Non-blocking: no
/// invocation id.
pub(crate) fn invocation_frame<A: Serialize + ?Sized>(
    protocol: HubProtocol,
    target: &str,
    args: &A,
) -> Result<Bytes, HubError> {
    invocation_frame_with_id(protocol, None, target, args)
}

/// An Invocation, framed, in `protocol`; with an invocation id the client must answer with a
/// Completion (a client result).
pub(crate) fn invocation_frame_with_id<A: Serialize + ?Sized>(
    protocol: HubProtocol,
    invocation_id: Option<&str>,
    target: &str,
    args: &A,
) -> Result<Bytes, HubError> {
    let err = |e: String| {
        HubError::new(format!(
            "Failed to serialize the arguments of '{target}': {e}"
        ))
    };
    match protocol {
        HubProtocol::Json => {
            let arguments = serde_json::to_vec(args).map_err(|e| err(e.to_string()))?;
            let mut out = Vec::with_capacity(arguments.len() + target.len() + 40);
            out.extend_from_slice(b"{\"type\":1,");
            if let Some(id) = invocation_id {
                out.extend_from_slice(b"\"invocationId\":");
                let _ = serde_json::to_writer(&mut out, id);
                out.push(b',');
            }
            out.extend_from_slice(b"\"target\":");
            let _ = serde_json::to_writer(&mut out, target);
            out.extend_from_slice(b",\"arguments\":");
            out.extend_from_slice(sequence_or_empty(&arguments, b"null", b"[]"));
            out.extend_from_slice(b"}");
            out.push(RECORD_SEPARATOR);
            Ok(Bytes::from(out))
        }
        HubProtocol::MessagePack | HubProtocol::BlazorPack => {
            let arguments = rmp_serde::to_vec_named(args).map_err(|e| err(e.to_string()))?;
            let mut body = Vec::with_capacity(arguments.len() + target.len() + 8);
            // Six elements, stream ids included, as the .NET server writes them: some clients
            // (Python's signalrcore) index the sixth element unconditionally.
            let _ = rmp::encode::write_array_len(&mut body, 6);
            let _ = rmp::encode::write_uint(&mut body, 1);
            let _ = rmp::encode::write_map_len(&mut body, 0);
            match invocation_id {
                Some(id) => {
                    let _ = rmp::encode::write_str(&mut body, id);
                }
                None => {
                    let _ = rmp::encode::write_nil(&mut body);
                }
            }
            let _ = rmp::encode::write_str(&mut body, target);
            body.extend_from_slice(sequence_or_empty(&arguments, &[0xc0], &[0x90]));
            let _ = rmp::encode::write_array_len(&mut body, 0);
            let mut out = Vec::with_capacity(body.len() + 5);
            write_binary_frame(&body, &mut out).map_err(|e| err(e.to_string()))?;
            Ok(Bytes::from(out))
        }
    }
}

/// `()` serializes as null/nil; a message with no arguments needs an empty array.
fn sequence_or_empty<'a>(encoded: &'a [u8], unit: &[u8], empty: &'a [u8]) -> &'a [u8] {
    if encoded == unit {
        empty
    } else {
        encoded
    }
}

/// The same invocation for every protocol, for fan-out through the relay.
pub(crate) fn invocation_payloads<A: Serialize + ?Sized>(
    target: &str,
    args: &A,
) -> Result<Payloads, HubError> {
    invocation_payloads_with_id(None, target, args)
}

/// The same invocation for every protocol, with an optional invocation id.
pub(crate) fn invocation_payloads_with_id<A: Serialize + ?Sized>(
    invocation_id: Option<&str>,
    target: &str,
    args: &A,
) -> Result<Payloads, HubError> {
    Ok(Payloads(vec![
        (
            "json".to_owned(),
            invocation_frame_with_id(HubProtocol::Json, invocation_id, target, args)?,
        ),
        (
            "messagepack".to_owned(),
            invocation_frame_with_id(HubProtocol::MessagePack, invocation_id, target, args)?,
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalr_relay_core::aspnetcore::HubMessage;

    #[test]
    fn arguments_round_trip_through_both_protocols() {
        for protocol in [HubProtocol::Json, HubProtocol::MessagePack] {
            let frame = invocation_frame(protocol, "Say", &("hi", 42u32, vec![1u8, 2])).unwrap();
            let mut d = signalr_relay_core::aspnetcore::HubDecoder::new(protocol, 1 << 16);
            d.push(&frame);
            let Some(HubMessage::Invocation(inv)) = d.next_message().unwrap() else {
                panic!()
            };
            assert_eq!(inv.target, "Say");
            let (s, n, v): (String, u32, Vec<u8>) = decode_args(protocol, &inv.arguments).unwrap();
            assert_eq!((s.as_str(), n, v), ("hi", 42, vec![1, 2]));
            let none = invocation_frame(protocol, "Ping", &()).unwrap();
            d.push(&none);
            let Some(HubMessage::Invocation(inv)) = d.next_message().unwrap() else {
                panic!()
            };
            assert!(inv.arguments.is_empty());
            let () = decode_args(protocol, &inv.arguments).unwrap();
        }
    }

    #[test]
    fn wrong_arguments_are_a_hub_error() {
        let args = [RawValue::new(b"5".to_vec())];
        let r: Result<(String,), _> = decode_args(HubProtocol::Json, &args);
        assert!(r.unwrap_err().to_string().contains("Failed to bind"));
    }
}
