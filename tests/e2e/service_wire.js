// The service protocol's framing, as the Azure SDK writes it (Azure/azure-signalr,
// src/Microsoft.Azure.SignalR.Protocols/ServiceProtocol.cs): each message is a MessagePack
// array, preceded by its length as a varint (7 bits a byte, low first).
'use strict';
const { decode } = require('@msgpack/msgpack');

/// MessagePack as the SDK writes it. Beyond what @msgpack/msgpack encodes, a `Map` is a map
/// whose keys keep their types (the extension members are keyed by integers), and a BigInt is a
/// 64-bit unsigned integer (a tracing id).
function encode(value) {
  const out = [];
  const head = (fix, fixMax, small, len) => {
    if (len <= fixMax) out.push(Buffer.from([fix | len]));
    else if (len < 0x10000) out.push(Buffer.from([small, len >> 8, len & 0xff]));
    else { const b = Buffer.alloc(5); b[0] = small + 1; b.writeUInt32BE(len, 1); out.push(b); }
  };
  const put = (v) => {
    if (v === null || v === undefined) out.push(Buffer.from([0xc0]));
    else if (v === true || v === false) out.push(Buffer.from([v ? 0xc3 : 0xc2]));
    else if (typeof v === 'bigint') { const b = Buffer.alloc(9); b[0] = 0xcf; b.writeBigUInt64BE(v, 1); out.push(b); }
    else if (typeof v === 'number' && Number.isInteger(v)) {
      if (v >= 0 && v < 0x80) out.push(Buffer.from([v]));
      else if (v < 0 && v >= -32) out.push(Buffer.from([v & 0xff]));
      else if (v >= 0 && v <= 0xffffffff) { const b = Buffer.alloc(5); b[0] = 0xce; b.writeUInt32BE(v, 1); out.push(b); }
      else { const b = Buffer.alloc(9); b[0] = 0xd3; b.writeBigInt64BE(BigInt(v), 1); out.push(b); }
    } else if (typeof v === 'number') { const b = Buffer.alloc(9); b[0] = 0xcb; b.writeDoubleBE(v, 1); out.push(b); }
    else if (typeof v === 'string') {
      const b = Buffer.from(v, 'utf8');
      if (b.length < 32) out.push(Buffer.from([0xa0 | b.length]));
      else if (b.length < 0x100) out.push(Buffer.from([0xd9, b.length]));
      else head(0, -1, 0xda, b.length);
      out.push(b);
    } else if (v instanceof Uint8Array) {
      if (v.length < 0x100) out.push(Buffer.from([0xc4, v.length]));
      else if (v.length < 0x10000) out.push(Buffer.from([0xc5, v.length >> 8, v.length & 0xff]));
      else { const b = Buffer.alloc(5); b[0] = 0xc6; b.writeUInt32BE(v.length, 1); out.push(b); }
      out.push(Buffer.from(v));
    } else if (Array.isArray(v)) {
      head(0x90, 15, 0xdc, v.length);
      v.forEach(put);
    } else {
      const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
      head(0x80, 15, 0xde, entries.length);
      for (const [k, x] of entries) { put(k); put(x); }
    }
  };
  put(value);
  return Buffer.concat(out);
}

/// One framed message.
function frame(message) {
  const body = encode(message);
  const head = [];
  let n = body.length;
  do {
    let b = n & 0x7f;
    n >>= 7;
    if (n) b |= 0x80;
    head.push(b);
  } while (n);
  return Buffer.concat([Buffer.from(head), Buffer.from(body)]);
}

/// Every message in one WebSocket frame's bytes.
function frames(buf) {
  const out = [];
  let i = 0;
  while (i < buf.length) {
    let len = 0;
    let shift = 0;
    for (;;) {
      const b = buf[i++];
      len |= (b & 0x7f) << shift;
      shift += 7;
      if (!(b & 0x80)) break;
    }
    out.push(decode(buf.subarray(i, i + len)));
    i += len;
  }
  return out;
}

module.exports = { encode, frame, frames };
