//! MessagePack reading and writing shared by the hub protocol and the service protocol.
//!
//! Markers come from `rmp`. The reader works on a borrowed slice and never allocates: string
//! and binary payloads are returned as sub-slices, and every announced length is checked
//! against the bytes actually left before anything is done with it. Skipping a value is
//! iterative, so deeply nested input cannot exhaust the stack.

use rmp::Marker;

/// Why a MessagePack body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsgPackError {
    /// The body ends in the middle of a value.
    #[error("unexpected end of MessagePack data")]
    UnexpectedEnd,
    /// A value has a different type than the layout requires.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the layout requires at this position.
        expected: &'static str,
        /// The MessagePack type found instead.
        found: &'static str,
    },
    /// A string is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// An integer does not fit the field it belongs to.
    #[error("integer out of range")]
    IntegerOutOfRange,
    /// An array is shorter than the message type requires.
    #[error("array has {len} elements, at least {min} are required")]
    TooFewElements {
        /// Elements present.
        len: u32,
        /// Elements required.
        min: u32,
    },
    /// The 0xc1 marker, which MessagePack reserves.
    #[error("reserved marker 0xc1")]
    ReservedMarker,
}

fn kind(marker: Marker) -> &'static str {
    match marker {
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "integer",
        Marker::Null => "nil",
        Marker::True | Marker::False => "bool",
        Marker::F32 | Marker::F64 => "float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "string",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "binary",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "map",
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => "extension",
        Marker::Reserved => "reserved marker",
    }
}

/// A cursor over one MessagePack body.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, MsgPackError>;

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(MsgPackError::UnexpectedEnd);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn peek(&self) -> Result<Marker> {
        self.buf
            .get(self.pos)
            .map(|&b| Marker::from_u8(b))
            .ok_or(MsgPackError::UnexpectedEnd)
    }

    fn marker(&mut self) -> Result<Marker> {
        let m = self.peek()?;
        self.pos += 1;
        Ok(m)
    }

    fn len8(&mut self) -> Result<usize> {
        Ok(usize::from(self.take_array::<1>()?[0]))
    }

    fn len16(&mut self) -> Result<usize> {
        Ok(usize::from(u16::from_be_bytes(self.take_array()?)))
    }

    fn len32(&mut self) -> Result<usize> {
        usize::try_from(u32::from_be_bytes(self.take_array()?))
            .map_err(|_| MsgPackError::IntegerOutOfRange)
    }

    /// Whether the next value is nil (without consuming it).
    pub(crate) fn peek_is_nil(&self) -> bool {
        matches!(self.peek(), Ok(Marker::Null))
    }

    /// Reads an array header. The length is checked against the bytes left (every element
    /// takes at least one byte), so it is safe to pre-allocate with.
    pub(crate) fn array_len(&mut self) -> Result<u32> {
        let len = match self.marker()? {
            Marker::FixArray(n) => usize::from(n),
            Marker::Array16 => self.len16()?,
            Marker::Array32 => self.len32()?,
            other => return Err(wrong("array", other)),
        };
        self.check_items(len)
    }

    /// Reads a map header; the length is checked like [`array_len`](Self::array_len).
    pub(crate) fn map_len(&mut self) -> Result<u32> {
        let len = match self.marker()? {
            Marker::FixMap(n) => usize::from(n),
            Marker::Map16 => self.len16()?,
            Marker::Map32 => self.len32()?,
            other => return Err(wrong("map", other)),
        };
        self.check_items(len.saturating_mul(2))?;
        u32::try_from(len).map_err(|_| MsgPackError::IntegerOutOfRange)
    }

    fn check_items(&self, items: usize) -> Result<u32> {
        if items > self.remaining() {
            return Err(MsgPackError::UnexpectedEnd);
        }
        u32::try_from(items).map_err(|_| MsgPackError::IntegerOutOfRange)
    }

    /// Reads a string.
    pub(crate) fn str(&mut self) -> Result<&'a str> {
        let len = match self.marker()? {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.len8()?,
            Marker::Str16 => self.len16()?,
            Marker::Str32 => self.len32()?,
            other => return Err(wrong("string", other)),
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| MsgPackError::InvalidUtf8)
    }

    /// Reads a string or nil.
    pub(crate) fn opt_str(&mut self) -> Result<Option<&'a str>> {
        if self.peek_is_nil() {
            self.pos += 1;
            return Ok(None);
        }
        self.str().map(Some)
    }

    /// Reads binary data.
    pub(crate) fn bin(&mut self) -> Result<&'a [u8]> {
        let len = match self.marker()? {
            Marker::Bin8 => self.len8()?,
            Marker::Bin16 => self.len16()?,
            Marker::Bin32 => self.len32()?,
            other => return Err(wrong("binary", other)),
        };
        self.take(len)
    }

    /// Reads binary data or nil.
    pub(crate) fn opt_bin(&mut self) -> Result<Option<&'a [u8]>> {
        if self.peek_is_nil() {
            self.pos += 1;
            return Ok(None);
        }
        self.bin().map(Some)
    }

    /// Reads a bool.
    pub(crate) fn bool(&mut self) -> Result<bool> {
        match self.marker()? {
            Marker::True => Ok(true),
            Marker::False => Ok(false),
            other => Err(wrong("bool", other)),
        }
    }

    /// Reads any integer as an `i128`, which holds every MessagePack integer.
    fn int(&mut self) -> Result<i128> {
        Ok(match self.marker()? {
            Marker::FixPos(n) => i128::from(n),
            Marker::FixNeg(n) => i128::from(n),
            Marker::U8 => i128::from(u8::from_be_bytes(self.take_array()?)),
            Marker::U16 => i128::from(u16::from_be_bytes(self.take_array()?)),
            Marker::U32 => i128::from(u32::from_be_bytes(self.take_array()?)),
            Marker::U64 => i128::from(u64::from_be_bytes(self.take_array()?)),
            Marker::I8 => i128::from(i8::from_be_bytes(self.take_array()?)),
            Marker::I16 => i128::from(i16::from_be_bytes(self.take_array()?)),
            Marker::I32 => i128::from(i32::from_be_bytes(self.take_array()?)),
            Marker::I64 => i128::from(i64::from_be_bytes(self.take_array()?)),
            other => return Err(wrong("integer", other)),
        })
    }

    /// Reads an integer that must fit `T`.
    pub(crate) fn integer<T: TryFrom<i128>>(&mut self) -> Result<T> {
        T::try_from(self.int()?).map_err(|_| MsgPackError::IntegerOutOfRange)
    }

    /// Skips one value of any type, however deeply nested, without recursion.
    pub(crate) fn skip(&mut self) -> Result<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let data = match self.marker()? {
                Marker::FixPos(_)
                | Marker::FixNeg(_)
                | Marker::Null
                | Marker::True
                | Marker::False => 0,
                Marker::U8 | Marker::I8 => 1,
                Marker::U16 | Marker::I16 => 2,
                Marker::U32 | Marker::I32 | Marker::F32 => 4,
                Marker::U64 | Marker::I64 | Marker::F64 => 8,
                Marker::FixStr(n) => usize::from(n),
                Marker::Str8 | Marker::Bin8 => self.len8()?,
                Marker::Str16 | Marker::Bin16 => self.len16()?,
                Marker::Str32 | Marker::Bin32 => self.len32()?,
                Marker::FixArray(n) => {
                    pending += u64::from(n);
                    0
                }
                Marker::Array16 => {
                    pending += self.len16()? as u64;
                    0
                }
                Marker::Array32 => {
                    pending += self.len32()? as u64;
                    0
                }
                Marker::FixMap(n) => {
                    pending += 2 * u64::from(n);
                    0
                }
                Marker::Map16 => {
                    pending += 2 * self.len16()? as u64;
                    0
                }
                Marker::Map32 => {
                    pending += 2 * self.len32()? as u64;
                    0
                }
                Marker::FixExt1 => 2,
                Marker::FixExt2 => 3,
                Marker::FixExt4 => 5,
                Marker::FixExt8 => 9,
                Marker::FixExt16 => 17,
                Marker::Ext8 => self.len8()? + 1,
                Marker::Ext16 => self.len16()? + 1,
                Marker::Ext32 => self.len32()?.saturating_add(1),
                Marker::Reserved => return Err(MsgPackError::ReservedMarker),
            };
            self.take(data)?;
            // Every pending value needs at least one more byte.
            if pending > self.remaining() as u64 {
                return Err(MsgPackError::UnexpectedEnd);
            }
        }
        Ok(())
    }

    /// Skips one value and returns its raw encoding.
    pub(crate) fn raw(&mut self) -> Result<&'a [u8]> {
        let start = self.pos;
        self.skip()?;
        Ok(&self.buf[start..self.pos])
    }
}

fn wrong(expected: &'static str, found: Marker) -> MsgPackError {
    MsgPackError::WrongType {
        expected,
        found: kind(found),
    }
}

/// Reads the elements of one array in order, handing out defaults for elements that an older
/// peer did not write, and skipping trailing elements that a newer peer added.
#[derive(Debug)]
pub(crate) struct ArrayReader<'r, 'a> {
    pub(crate) r: &'r mut Reader<'a>,
    len: u32,
    left: u32,
}

impl<'r, 'a> ArrayReader<'r, 'a> {
    pub(crate) fn new(r: &'r mut Reader<'a>, len: u32) -> Self {
        Self { r, len, left: len }
    }

    /// Claims the next element, which must be present.
    pub(crate) fn next(&mut self) -> Result<&mut Reader<'a>> {
        if self.left == 0 {
            return Err(MsgPackError::TooFewElements {
                len: self.len,
                min: self.len + 1,
            });
        }
        self.left -= 1;
        Ok(self.r)
    }

    /// Claims the next element if present.
    pub(crate) fn next_opt(&mut self) -> Option<&mut Reader<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.r)
    }

    /// Skips whatever elements are left.
    pub(crate) fn finish(self) -> Result<()> {
        for _ in 0..self.left {
            self.r.skip()?;
        }
        Ok(())
    }
}

/// Appends MessagePack values to a `Vec<u8>`, always in their smallest form (as the .NET
/// MessagePack writers do), unless a method says otherwise.
#[derive(Debug)]
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

// Writing into a `Vec<u8>` cannot fail, so the `io::Result`s of `rmp::encode` are dropped.
impl Writer<'_> {
    pub(crate) fn array_len(&mut self, len: usize) {
        let _ = rmp::encode::write_array_len(self.0, saturate(len));
    }

    pub(crate) fn map_len(&mut self, len: usize) {
        let _ = rmp::encode::write_map_len(self.0, saturate(len));
    }

    pub(crate) fn str(&mut self, s: &str) {
        let _ = rmp::encode::write_str(self.0, s);
    }

    pub(crate) fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.nil(),
        }
    }

    pub(crate) fn bin(&mut self, b: &[u8]) {
        let _ = rmp::encode::write_bin(self.0, b);
    }

    pub(crate) fn nil(&mut self) {
        let _ = rmp::encode::write_nil(self.0);
    }

    pub(crate) fn bool(&mut self, b: bool) {
        let _ = rmp::encode::write_bool(self.0, b);
    }

    pub(crate) fn uint(&mut self, v: u64) {
        let _ = rmp::encode::write_uint(self.0, v);
    }

    pub(crate) fn sint(&mut self, v: i64) {
        let _ = rmp::encode::write_sint(self.0, v);
    }

    /// Always the 5-byte `int32` form (`0xd2`), as ConnectionFlowControl requires.
    pub(crate) fn i32_fixed(&mut self, v: i32) {
        let _ = rmp::encode::write_i32(self.0, v);
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A JSON value as MessagePack, as the .NET MessagePack hub protocol would write the same
    /// object: integers in their smallest form, other numbers as float64. (serde_json's parser
    /// bounds the nesting, and with it this recursion.)
    pub(crate) fn json(&mut self, value: &serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::Null => self.nil(),
            Value::Bool(b) => self.bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.uint(u);
                } else if let Some(i) = n.as_i64() {
                    self.sint(i);
                } else {
                    let _ = rmp::encode::write_f64(self.0, n.as_f64().unwrap_or_default());
                }
            }
            Value::String(s) => self.str(s),
            Value::Array(items) => {
                self.array_len(items.len());
                for item in items {
                    self.json(item);
                }
            }
            Value::Object(map) => {
                self.map_len(map.len());
                for (k, v) in map {
                    self.str(k);
                    self.json(v);
                }
            }
        }
    }

    pub(crate) fn str_array<S: AsRef<str>>(&mut self, items: &[S]) {
        self.array_len(items.len());
        for s in items {
            self.str(s.as_ref());
        }
    }
}

fn saturate(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads an array of strings, accepting nil as empty (some writers send nil for an empty
/// list).
pub(crate) fn read_str_array(r: &mut Reader<'_>) -> Result<Vec<String>> {
    if r.peek_is_nil() {
        r.skip()?;
        return Ok(Vec::new());
    }
    let len = r.array_len()?;
    let mut out = Vec::with_capacity(len as usize);
    for _ in 0..len {
        out.push(r.str()?.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_handles_every_type() {
        let mut buf = Vec::new();
        let mut w = Writer(&mut buf);
        w.array_len(7);
        w.uint(u64::MAX);
        w.sint(-100_000);
        w.str("x");
        w.bin(&[1, 2]);
        w.map_len(1);
        w.str("k");
        w.nil();
        w.bool(true);
        buf.extend_from_slice(&[0xcb, 0, 0, 0, 0, 0, 0, 0, 0]); // f64
        buf.extend_from_slice(&[0xd4, 1, 2]); // fixext1
        let mut r = Reader::new(&buf);
        r.skip().unwrap();
        assert_eq!(r.remaining(), 3);
        r.skip().unwrap();
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn huge_announced_lengths_are_rejected_without_allocating() {
        for bytes in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..], // array32 of 4 billion
            &[0xdf, 0xff, 0xff, 0xff, 0xff],     // map32
            &[0xdb, 0xff, 0xff, 0xff, 0xff],     // str32
            &[0xc6, 0xff, 0xff, 0xff, 0xff],     // bin32
        ] {
            let mut r = Reader::new(bytes);
            assert_eq!(r.skip(), Err(MsgPackError::UnexpectedEnd));
        }
        let mut r = Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.array_len(), Err(MsgPackError::UnexpectedEnd));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut buf = vec![0x91; 1_000_000];
        buf.push(0xc0);
        let mut r = Reader::new(&buf);
        r.skip().unwrap();
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn reserved_marker_is_an_error() {
        assert_eq!(
            Reader::new(&[0xc1]).skip(),
            Err(MsgPackError::ReservedMarker)
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert_eq!(
            Reader::new(&[0xa2, 0xff, 0xfe]).str(),
            Err(MsgPackError::InvalidUtf8)
        );
    }

    #[test]
    fn integers_are_range_checked() {
        let mut r = Reader::new(&[0xcd, 0x01, 0x00]); // 256
        assert_eq!(r.integer::<u8>(), Err(MsgPackError::IntegerOutOfRange));
        let mut r = Reader::new(&[0xd0, 0xff]); // -1
        assert_eq!(r.integer::<u64>(), Err(MsgPackError::IntegerOutOfRange));
        let mut r = Reader::new(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.integer::<u64>(), Ok(u64::MAX));
    }
}
