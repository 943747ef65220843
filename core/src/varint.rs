//! The variable-length integer used as a length prefix by the MessagePack hub protocol and the
//! service protocol.
//!
//! Seven bits per byte, least significant group first, high bit set on every byte but the last.
//! At most 5 bytes, and the largest value is `0x7FFF_FFFF` (so the 5th byte is at most 7 and has
//! no continuation bit).

/// The longest encoding: 5 bytes.
pub const MAX_LEN: usize = 5;

/// The largest value a length prefix may carry.
pub const MAX_VALUE: u32 = 0x7FFF_FFFF;

/// Why a length prefix is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarIntError {
    /// The prefix would need more than 5 bytes, or its value is over 2 GB.
    #[error("length prefix is longer than 5 bytes or over 2 GB")]
    TooLarge,
}

/// Decodes a length prefix at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` ends inside the prefix, and `Ok(Some((value, prefix_len)))`
/// otherwise.
///
/// # Errors
/// [`VarIntError::TooLarge`] for a 6-byte prefix or a value over [`MAX_VALUE`].
pub fn decode(buf: &[u8]) -> Result<Option<(u32, usize)>, VarIntError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(MAX_LEN).enumerate() {
        let group = u32::from(byte & 0x7f);
        if i == MAX_LEN - 1 && (byte & 0x80 != 0 || group > 7) {
            return Err(VarIntError::TooLarge);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

/// Appends the encoding of `value` to `out`.
///
/// Values above [`MAX_VALUE`] cannot be framed; callers bound message sizes well below it.
pub fn encode(value: u32, out: &mut Vec<u8>) {
    let mut v = value.min(MAX_VALUE);
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The number of bytes [`encode`] writes for `value`.
pub fn encoded_len(value: u32) -> usize {
    match value {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0x0fff_ffff => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        for (value, bytes) in [
            (0u32, &[0x00][..]),
            (0x35, &[0x35]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (5248, &[0x80, 0x29]),
            (MAX_VALUE, &[0xff, 0xff, 0xff, 0xff, 0x07]),
        ] {
            let mut out = Vec::new();
            encode(value, &mut out);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(encoded_len(value), bytes.len());
            assert_eq!(decode(bytes), Ok(Some((value, bytes.len()))));
        }
    }

    #[test]
    fn partial_prefix_needs_more() {
        assert_eq!(decode(&[]), Ok(None));
        assert_eq!(decode(&[0x80]), Ok(None));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Ok(None));
    }

    #[test]
    fn six_byte_prefix_is_rejected() {
        assert_eq!(
            decode(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(VarIntError::TooLarge)
        );
    }

    #[test]
    fn over_two_gigabytes_is_rejected() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0x08]),
            Err(VarIntError::TooLarge)
        );
    }

    #[test]
    fn every_value_round_trips_at_the_group_edges() {
        for shift in 0..31 {
            for value in [(1u32 << shift) - 1, 1u32 << shift, (1u32 << shift) + 1] {
                let value = value.min(MAX_VALUE);
                let mut out = Vec::new();
                encode(value, &mut out);
                assert_eq!(decode(&out), Ok(Some((value, out.len()))));
            }
        }
    }
}
