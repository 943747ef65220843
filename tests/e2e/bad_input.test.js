// Bad input gets the protocol's proper error, and harms nothing else.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const { Stack, jwt, sleep } = require('./harness');

let stack;
let bystander;
before(async () => {
  stack = await Stack.start();
  bystander = await stack.connect('chat');
});
after(async () => {
  // Nothing below may have hurt an unrelated client.
  assert.equal(await bystander.invoke('Echo', 'unharmed'), 'unharmed');
  await bystander.stop();
  await stack.stop();
});

const now = () => Math.floor(Date.now() / 1000);

test('negotiate without a token, or with a bad one, is 401 with a reason', async () => {
  const cases = [
    [undefined, /no access token/],
    [jwt({ aud: 'http://127.0.0.1/client/?hub=chat', exp: now() + 600 }, 'wrong-key'), /signature/],
    [jwt({ aud: 'http://127.0.0.1/client/?hub=chat', exp: now() - 3600 }, stack.key), /expired/],
    [jwt({ aud: 'http://127.0.0.1/client/?hub=other', exp: now() + 600 }, stack.key), /audience/],
    [jwt({ aud: 'http://127.0.0.1/server/?hub=chat', exp: now() + 600 }, stack.key), /audience/],
    ['not.a.token', /Unauthorized/],
  ];
  for (const [token, reason] of cases) {
    const r = await stack.relayNegotiate('chat', token);
    assert.equal(r.status, 401);
    assert.match(await r.text(), reason);
  }
});

test('a hub with no app server gets a clear error at once', async () => {
  const r = await stack.relayNegotiate('nohub', stack.clientToken('nohub'));
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.match(body.error, /No app server is connected for hub 'nohub'/);
});

async function openClientSocket(hub = 'chat') {
  // One token for both requests: a connection belongs to the token it negotiated with, and
  // two signed a second apart differ.
  const token = stack.clientToken(hub);
  const r = await stack.relayNegotiate(hub, token);
  const { connectionToken } = await r.json();
  const ws = new WebSocket(`ws://${stack.relayAddr}/client/?hub=${hub}&id=${connectionToken}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  const messages = [];
  ws.on('message', (d) => messages.push(d.toString()));
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); });
  return { ws, messages, closed };
}

test('an unknown connection id is 404', async () => {
  const ws = new WebSocket(`ws://${stack.relayAddr}/client/?hub=chat&id=nope`, {
    headers: { Authorization: `Bearer ${stack.clientToken('chat')}` },
  });
  const status = await new Promise((resolve) => ws.on('unexpected-response', (_req, res) => resolve(res.statusCode)));
  assert.equal(status, 404);
});

test('a malformed handshake gets the handshake error, then a close', async () => {
  const { ws, messages, closed } = await openClientSocket();
  ws.send('{"protocol":"xml","version":1}\x1e');
  await closed;
  assert.deepEqual(messages, ['{"error":"The protocol \'xml\' is not supported."}\x1e']);
  const second = await openClientSocket();
  second.ws.send('garbage\x1e');
  await second.closed;
  assert.match(second.messages[0], /"error":"An unexpected error occurred during connection handshake."/);
});

test('an oversized message closes that client with an error', async () => {
  const c = await stack.connect('chat');
  const error = c.closedWith;
  c.send('Echo', 'x'.repeat(64 * 1024)).catch(() => {});
  assert.match(String(await error), /maximum size/);
});

test('a bad server-connection token is refused at upgrade', async () => {
  for (const token of [
    jwt({ aud: 'http://127.0.0.1/server/?hub=chat', exp: now() + 600 }, 'wrong'),
    jwt({ aud: 'http://127.0.0.1/client/?hub=chat', exp: now() + 600 }, stack.key),
  ]) {
    const ws = new WebSocket(`ws://${stack.relayAddr}/server/?hub=chat`, { headers: { Authorization: `Bearer ${token}` } });
    const status = await new Promise((resolve) => ws.on('unexpected-response', (_req, res) => resolve(res.statusCode)));
    assert.equal(status, 401);
  }
});

test('garbage on a server connection closes only that server connection', async () => {
  const token = jwt({ aud: 'http://127.0.0.1/server/?hub=chat', exp: now() + 600, nameid: 'rogue' }, stack.key);
  const ws = new WebSocket(`ws://${stack.relayAddr}/server/?hub=chat`, { headers: { Authorization: `Bearer ${token}` } });
  const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
  await new Promise((resolve) => ws.on('open', resolve));
  ws.send(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
  assert.equal(await closed, 1011);
  // Real clients are untouched.
  const c = await stack.connect('chat');
  assert.equal(await c.invoke('Echo', 'fine'), 'fine');
  await c.stop();
});

test('no handshake within the timeout: handshake error and close', { timeout: 30000 }, async () => {
  const { messages, closed } = await openClientSocket();
  const { code } = await closed;
  assert.equal(code, 1000);
  assert.match(messages[0], /Handshake was canceled/);
});

test('a client that goes away mid-handshake harms nobody', async () => {
  const { ws } = await openClientSocket();
  ws.send('{"protocol":"json"');
  ws.terminate();
  await sleep(100);
});

test('long polling: unknown id, concurrent polls, poll after close, DELETE twice, oversized POST', async () => {
  const token = stack.clientToken('testhub');
  const headers = { Authorization: `Bearer ${token}` };
  const base = `http://${stack.relayAddr}/client/?hub=testhub`;
  assert.equal((await fetch(`${base}&id=nope`, { headers })).status, 404);
  assert.equal((await fetch(base, { headers })).status, 400, 'no id');

  const open = async () => {
    const { connectionToken } = await (await stack.relayNegotiate('testhub', token)).json();
    const url = `${base}&id=${connectionToken}`;
    assert.equal((await fetch(url, { headers })).status, 200, 'first poll');
    const hs = await fetch(url, { method: 'POST', headers, body: '{"protocol":"json","version":1}\x1e' });
    assert.equal(hs.status, 200);
    // testhub sends nothing on connect, and nothing when others leave, so every
    // poll below sees only what this test causes.
    assert.equal(await (await fetch(url, { headers })).text(), '{}\x1e', 'the handshake response, alone');
    return url;
  };

  const url = await open();
  // A second poll supersedes the first, which ends with 204.
  const first = fetch(url, { headers });
  await sleep(100);
  const second = fetch(url, { headers });
  assert.equal((await first).status, 204);
  // DELETE closes: 202; the held poll ends (204); later polls get 204; a second DELETE 404.
  assert.equal((await fetch(url, { method: 'DELETE', headers })).status, 202);
  assert.equal((await second).status, 204);
  assert.equal((await fetch(url, { headers })).status, 204);
  assert.equal((await fetch(url, { method: 'DELETE', headers })).status, 404);

  // An oversized POST is refused and closes that connection; its next poll carries the Close.
  const url2 = await open();
  const big = await fetch(url2, { method: 'POST', headers, body: 'x'.repeat(256 * 1024) });
  assert.equal(big.status, 413);
  const last = await (await fetch(url2, { headers })).text();
  assert.match(last, /"type":7,"error":"The POST body exceeds the maximum message size."/);
});

test('negotiate offers Server-Sent Events for text only: a MessagePack client cannot pick it', async () => {
  const r = await stack.relayNegotiate('chat', stack.clientToken('chat'));
  const { availableTransports } = await r.json();
  assert.deepEqual(availableTransports.find((t) => t.transport === 'ServerSentEvents').transferFormats, ['Text']);
  await assert.rejects(stack.connect('chat', { transport: 'ServerSentEvents', msgpack: true }), /transport/i);
});
