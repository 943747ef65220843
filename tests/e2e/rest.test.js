// The REST data-plane API (#14), called as the Management SDK and Azure Functions call it,
// reaching official clients (JSON and MessagePack) that an app server on the Rust SDK serves:
// every kind of send in both API versions and both body encodings, memberships (a user's
// before it connects), existence checks with Azure's error codes, closes with a reason, and
// tokens refused.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, jwt, next, sleep, signalR } = require('./harness');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const { encode } = require('@msgpack/msgpack');

let stack;
before(async () => { stack = await Stack.start(); });
after(async () => { await stack.stop(); });

const V2 = 'api-version=2022-06-01';

/// A REST call signed as the Management SDK signs it: the audience is the URL with the
/// api-version, and `excluded`, `reason` and `ttl` are added after signing.
function call(method, path, { query = '', signed = '', body, contentType = 'application/json', key = stack.key, aud } = {}) {
  const base = `http://${stack.relayAddr}`;
  const now = Math.floor(Date.now() / 1000);
  const token = jwt({ aud: aud ?? `${base}${path}${signed ? `?${signed}` : ''}`, iat: now, exp: now + 300 }, key);
  const q = [signed, query].filter(Boolean).join('&');
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = contentType;
  return fetch(`${base}${path}${q ? `?${q}` : ''}`, { method, headers, body });
}

const message = (target, ...args) => JSON.stringify({ Target: target, Arguments: args });

test('every kind of send reaches JSON and MessagePack clients, in both API versions and both body encodings', async () => {
  const a = await stack.connect('chat', { user: 'rest-a' });
  const b = await stack.connect('chat', { user: 'rest-b', msgpack: true });
  try {
    // Broadcast (2022-06-01), excluding a.
    let got = next(b, 'news');
    let r = await call('POST', '/api/hubs/chat/:send', { signed: V2, query: `excluded=${a.connectionId}`, body: message('news', 'all', 42, { deep: [true, null] }) });
    assert.equal(r.status, 202);
    assert.deepEqual(await got, ['all', 42, { deep: [true, null] }]);
    // Broadcast (v1) reaches both.
    const both = [next(a, 'news'), next(b, 'news')];
    assert.equal((await call('POST', '/api/v1/hubs/chat', { body: message('news', 'v1') })).status, 202);
    assert.deepEqual(await Promise.all(both), [['v1'], ['v1']]);
    // A user, a connection.
    got = next(a, 'direct');
    assert.equal((await call('POST', '/api/hubs/chat/users/rest-a/:send', { signed: V2, body: message('direct', 'to a user') })).status, 202);
    assert.deepEqual(await got, ['to a user']);
    got = next(b, 'direct');
    assert.equal((await call('POST', `/api/v1/hubs/chat/connections/${b.connectionId}`, { body: message('direct', 'to a connection') })).status, 202);
    assert.deepEqual(await got, ['to a connection']);
    // A group, with a member excluded.
    for (const c of [a, b]) {
      assert.equal((await call('PUT', `/api/hubs/chat/groups/room/connections/${c.connectionId}`, { signed: V2 })).status, 200);
    }
    got = next(a, 'room');
    assert.equal((await call('POST', '/api/hubs/chat/groups/room/:send', { signed: V2, query: `excluded=${b.connectionId}`, body: message('room', 'in the room') })).status, 202);
    assert.deepEqual(await got, ['in the room']);
    // The Management SDK's binary body: a frame per protocol, each delivered as it came.
    const frame = (protocol, text) => {
      const m = protocol.writeMessage({ type: signalR.MessageType.Invocation, target: 'binary', arguments: [text], headers: {} });
      return typeof m === 'string' ? new TextEncoder().encode(m) : new Uint8Array(m);
    };
    const body = encode({ json: frame(new signalR.JsonHubProtocol(), 'json frame'), messagepack: frame(new MessagePackHubProtocol(), 'msgpack frame') });
    const binary = [next(a, 'binary'), next(b, 'binary')];
    r = await call('POST', '/api/hubs/chat/:send', { signed: V2, body, contentType: 'application/octet-stream' });
    assert.equal(r.status, 202);
    assert.deepEqual(await Promise.all(binary), [['json frame'], ['msgpack frame']]);
  } finally {
    await a.stop();
    await b.stop();
  }
});

test('a user added to a group before connecting is in it on arrival; memberships end as asked', async () => {
  assert.equal((await call('PUT', '/api/hubs/chat/users/late/groups/club', { signed: V2, query: 'ttl=600' })).status, 200);
  assert.equal((await call('HEAD', '/api/hubs/chat/users/late/groups/club', { signed: V2 })).status, 200);
  const c = await stack.connect('chat', { user: 'late' });
  try {
    const got = next(c, 'club');
    assert.equal((await call('POST', '/api/v1/hubs/chat/groups/club', { body: message('club', 'welcome') })).status, 202);
    assert.deepEqual(await got, ['welcome']);
    assert.equal((await call('DELETE', '/api/hubs/chat/users/late/groups/club', { signed: V2 })).status, 204);
    const missed = [];
    c.on('club', (x) => missed.push(x));
    await call('POST', '/api/v1/hubs/chat/groups/club', { body: message('club', 'after') });
    const r = await call('GET', '/api/hubs/chat/users/late/groups/club', { signed: V2 });
    assert.equal(r.status, 404);
    assert.equal(r.headers.get('x-ms-error-code'), 'Info.User.NotInGroup');
    await sleep(200);
    assert.deepEqual(missed, []);
  } finally {
    await c.stop();
  }
});

test('existence checks answer 200, or 404 with the code the SDK reads', async () => {
  const c = await stack.connect('chat', { user: 'exists' });
  try {
    const check = async (path, method = 'HEAD') => {
      const r = await call(method, path, { signed: V2 });
      return [r.status, r.headers.get('x-ms-error-code')];
    };
    assert.deepEqual(await check(`/api/hubs/chat/connections/${c.connectionId}`), [200, null]);
    assert.deepEqual(await check('/api/hubs/chat/connections/nope'), [404, 'Warning.Connection.NotExisted']);
    assert.deepEqual(await check('/api/hubs/chat/users/exists'), [200, null]);
    assert.deepEqual(await check('/api/hubs/chat/users/nobody'), [404, 'Warning.User.NotExisted']);
    assert.deepEqual(await check('/api/hubs/chat/groups/empty'), [404, 'Warning.Group.NotExisted']);
    assert.deepEqual(await check(`/api/v1/hubs/chat/connections/${c.connectionId}`, 'GET'), [200, null]);
    const r = await call('PUT', '/api/hubs/chat/groups/g/connections/nope', { signed: V2 });
    assert.deepEqual([r.status, r.headers.get('x-ms-error-code')], [404, 'Error.Connection.NotExisted']);
    assert.equal((await fetch(`http://${stack.relayAddr}/api/health?${V2}`, { method: 'HEAD' })).status, 200);
  } finally {
    await c.stop();
  }
});

test('closing a connection reaches the client with its reason; the others stay', async () => {
  const a = await stack.connect('chat', { user: 'close-a' });
  const b = await stack.connect('chat', { user: 'close-b' });
  try {
    const r = await call('DELETE', `/api/hubs/chat/connections/${a.connectionId}`, { signed: V2, query: 'reason=maintenance%20window' });
    assert.equal(r.status, 200);
    const error = await a.closedWith;
    assert.match(String(error), /maintenance window/);
    assert.equal(await b.invoke('Echo', 'still here'), 'still here');
    const again = await call('DELETE', `/api/hubs/chat/connections/${a.connectionId}`, { signed: V2 });
    assert.deepEqual([again.status, again.headers.get('x-ms-error-code')], [404, 'Warning.Connection.NotExisted']);
    assert.equal((await call('POST', '/api/hubs/chat/users/close-b/:closeConnections', { signed: V2 })).status, 204);
    await b.closedWith;
  } finally {
    await a.stop();
    await b.stop();
  }
});

test('a token with a bad signature, an expired one, or one for another path gets 401; a bystander notices nothing', async () => {
  const c = await stack.connect('chat', { user: 'bystander' });
  try {
    const body = message('news', 'forged');
    const heard = [];
    c.on('news', (x) => heard.push(x));
    const now = Math.floor(Date.now() / 1000);
    const path = '/api/hubs/chat/:send';
    const forged = await call('POST', path, { signed: V2, body, key: 'not-the-key' });
    assert.equal(forged.status, 401);
    const other = await call('POST', path, { signed: V2, body, aud: `http://${stack.relayAddr}/api/hubs/other/:send` });
    assert.equal(other.status, 401);
    const expired = jwt({ aud: `http://${stack.relayAddr}${path}`, iat: now - 900, exp: now - 600 }, stack.key);
    const late = await fetch(`http://${stack.relayAddr}${path}?${V2}`, { method: 'POST', headers: { Authorization: `Bearer ${expired}`, 'Content-Type': 'application/json' }, body });
    assert.equal(late.status, 401);
    const none = await fetch(`http://${stack.relayAddr}${path}?${V2}`, { method: 'POST', body });
    assert.equal(none.status, 401);
    assert.equal(await c.invoke('Echo', 'fine'), 'fine');
    await sleep(100);
    assert.deepEqual(heard, []);
  } finally {
    await c.stop();
  }
});
