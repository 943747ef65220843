// Clients that point the official client at the relay with their own `accessTokenFactory`,
// one that signs a new token at each call: the client calls it for the negotiate, for a
// WebSocket, and for a stateful reconnect's WebSocket (long polling and event streams keep
// the negotiate's). The connection goes on with any token of the same user; another user's
// token gets 403.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const WebSocket = require('ws');
const { Stack, startClient, collect, until, signalR } = require('./harness');

let stack;
before(async () => { stack = await Stack.start({ clientProxy: true }); });
after(async () => { await stack.stop(); });

/// A factory that signs a new token at each call (a random `jti`), naming `user` if given.
/// `calls` counts the calls.
function minting(user) {
  const f = () => {
    f.calls += 1;
    return stack.clientToken('chat', { jti: crypto.randomBytes(8).toString('hex'), ...(user ? { nameid: user } : {}) });
  };
  f.calls = 0;
  return f;
}

const relayUrl = () => `http://${stack.relayAddr}/client/?hub=chat`;

for (const user of ['ana', null]) {
  test(`a WebSocket with a new token from the factory (${user ? 'a user' : 'anonymous'}) is taken`, async () => {
    const factory = minting(user);
    const c = await startClient(relayUrl(), { transport: signalR.HttpTransportType.WebSockets, accessTokenFactory: factory });
    try {
      assert.equal(factory.calls, 2, 'the negotiate and the WebSocket each signed their own');
      assert.equal(await c.invoke('Echo', 'hi'), 'hi');
      assert.equal(await c.invoke('GetUserId'), user);
    } finally {
      await c.stop();
    }
  });
}

test('a stateful reconnect with a new token from the factory resumes the connection', async () => {
  const factory = minting('ana');
  const c = await startClient(`http://127.0.0.1:${stack.proxy.port}/client/?hub=chat`,
    { transport: signalR.HttpTransportType.WebSockets, accessTokenFactory: factory }, { stateful: true });
  try {
    const id = c.connectionId;
    const got = collect(c, 'echo');
    await c.send('EchoToCaller', 1);
    await until(() => got.length === 1, 'the first echo');
    for (const p of stack.proxy.connections()) { p.client.destroy(); p.upstream.destroy(); }
    await c.send('EchoToCaller', 2);
    await until(() => got.length === 2, 'the echo sent across the cut');
    assert.deepEqual(got.map(([n]) => n), [1, 2]);
    assert.equal(factory.calls, 3, 'the reconnect signed a third token');
    assert.equal(await c.invoke('GetConnectionId'), id, 'the same connection');
  } finally {
    await c.stop();
  }
});

test('another user\'s token cannot use a connection: poll, send, end or take its WebSocket', async () => {
  const mine = stack.clientToken('chat', { nameid: 'ana' });
  const r = await stack.relayNegotiate('chat', mine);
  const { connectionToken } = await r.json();
  const url = `http://${stack.relayAddr}/client/?hub=chat&id=${connectionToken}`;
  const theirs = { Authorization: `Bearer ${stack.clientToken('chat', { nameid: 'eve' })}` };
  const anonymous = { Authorization: `Bearer ${stack.clientToken('chat')}` };
  for (const headers of [theirs, anonymous]) {
    assert.equal((await fetch(url, { headers })).status, 403);
    assert.equal((await fetch(url, { method: 'POST', body: '{}', headers })).status, 403);
    assert.equal((await fetch(url, { method: 'DELETE', headers })).status, 403);
  }
  // A WebSocket under another user's token, through the official client's own transport.
  const ws = new signalR.HubConnectionBuilder()
    .withUrl(`http://${stack.relayAddr}/client/?hub=chat`, {
      transport: signalR.HttpTransportType.WebSockets,
      accessTokenFactory: (() => { let n = 0; return () => (n++ === 0 ? mine : stack.clientToken('chat', { nameid: 'eve' })); })(),
    })
    .configureLogging(signalR.LogLevel.None)
    .build();
  await assert.rejects(ws.start(), /WebSocket failed to connect/);
  // The same upgrade, raw: the relay's answer is 403.
  const status = await new Promise((resolve) => {
    const raw = new WebSocket(`ws://${stack.relayAddr}/client/?hub=chat&id=${connectionToken}`, { headers: theirs });
    raw.on('unexpected-response', (_req, res) => { resolve(res.statusCode); raw.terminate(); });
    raw.on('open', () => { resolve('opened'); raw.terminate(); });
    raw.on('error', () => {});
  });
  assert.equal(status, 403);
  // The connection is still its owner's: a new token of the same user polls it.
  const own = { Authorization: `Bearer ${stack.clientToken('chat', { nameid: 'ana', jti: 'again' })}` };
  assert.equal((await fetch(url, { headers: own })).status, 200, 'its first poll');
});
