// Upstream (#14): a serverless relay POSTs its clients' events to the backend, as Azure's
// upstream webhooks do for Azure Functions. The backend here is the test: it serves
// negotiate, checks every request's signature as the Functions extension does, answers
// invocations with framed completions as the extension writes them, and can be slow, fail or
// be down; none of that may touch the clients' other traffic.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { SUFFIX, startProcess, startClient, freePort, jwt, next, until, signalR } = require('./harness');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');

const key = crypto.randomBytes(16).toString('hex');
const json = new signalR.JsonHubProtocol();
const msgpack = new MessagePackHubProtocol();
let relay;
let relayAddr;
let backend;
let backendPort;
let dir;
let settingsFile;
const events = [];

function settings(prefix) {
  return JSON.stringify({ UpstreamSettings: { Templates: [
    { UrlTemplate: `http://127.0.0.1:${backendPort}/${prefix}/{hub}/{category}/{event}?code=functions-key`, HubPattern: 'chat', EventPattern: '*' },
  ] } });
}

/// The Functions extension's check: one `sha256=<hex>` per key, split on `,`.
function signed(req) {
  const expected = crypto.createHmac('sha256', key).update(req.headers['x-asrs-connection-id'] || '').digest('hex');
  return (req.headers['x-asrs-signature'] || '').split(',').some((s) => s.toLowerCase() === `sha256=${expected}`);
}

/// A MessagePack message with its varint length prefix, as an ArrayBuffer.
function withLength(body) {
  const prefix = [];
  let n = body.length;
  do {
    prefix.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>= 7;
  } while (n > 0);
  const out = Buffer.concat([Buffer.from(prefix), body]);
  return out.buffer.slice(out.byteOffset, out.byteOffset + out.length);
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-upstream-'));
  settingsFile = path.join(dir, 'settings.json');
  backendPort = await freePort('127.0.0.1');
  fs.writeFileSync(settingsFile, settings('upstream'));
  relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--service-mode', 'serverless',
    '--upstream-config', settingsFile, '--upstream-timeout', '2s', '--log', 'info']);
  relayAddr = await relay.ready;
  backend = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://backend');
    const parts = url.pathname.split('/');
    if (parts[1] === 'chat') {
      // Negotiate, as a Functions app's negotiate answers it.
      const now = Math.floor(Date.now() / 1000);
      const clientUrl = `http://${relayAddr}/client/?hub=chat`;
      const accessToken = jwt({ aud: clientUrl, iat: now, exp: now + 3600, 'asrs.s.uid': url.searchParams.get('user'), role: 'tester' }, key);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ url: clientUrl, accessToken }));
      return;
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const [, prefix, hub, category, event] = parts;
      const e = { prefix, hub, category, event, headers: req.headers, body, signed: signed(req), code: url.searchParams.get('code') };
      events.push(e);
      if (!e.signed) { res.writeHead(401); res.end(); return; }
      if (category !== 'messages') { res.writeHead(200); res.end(); return; }
      const binary = req.headers['content-type'] === 'application/x-msgpack';
      const protocol = binary ? msgpack : json;
      // The relay sends the message without its framing, as Azure does: put it back to parse.
      const framed = binary ? withLength(body) : `${body}\x1e`;
      const [message] = protocol.parseMessages(framed, signalR.NullLogger.instance);
      if (event === 'slow') return; // never answers
      if (event === 'fail') { res.writeHead(500); res.end(); return; }
      if (!message.invocationId) { res.writeHead(200); res.end(); return; }
      const result = event === 'add' ? message.arguments.reduce((a, b) => a + b, 0) : `echo:${message.arguments[0]}`;
      const completion = protocol.writeMessage({ type: signalR.MessageType.Completion, invocationId: message.invocationId, result, headers: {} });
      res.writeHead(200, { 'Content-Type': req.headers['content-type'] });
      res.end(Buffer.from(completion));
    });
  });
  await new Promise((resolve) => backend.listen(backendPort, '127.0.0.1', resolve));
});

after(() => {
  if (relay.child.exitCode === null) relay.child.kill('SIGKILL');
  backend.close();
  backend.closeAllConnections();
  fs.rmSync(dir, { recursive: true, force: true });
});

function client(user, { msgpack = false } = {}) {
  return startClient(`http://127.0.0.1:${backendPort}/chat?user=${user}`, {}, { msgpack });
}

const of = (id, category, event) => events.filter((e) => e.headers['x-asrs-connection-id'] === id && e.category === category && e.event === event);

function rest(method, urlPath, body) {
  const now = Math.floor(Date.now() / 1000);
  const aud = `http://${relayAddr}${urlPath}?api-version=2022-06-01`;
  return fetch(aud, { method, headers: { Authorization: `Bearer ${jwt({ aud, iat: now, exp: now + 300 }, key)}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}

test('connected, invocations and disconnected reach the upstream, signed, and an invoke returns its completion', async () => {
  const c = await client('alice');
  const id = c.connectionId;
  await until(() => of(id, 'connections', 'connected').length === 1, 'no connected event', 5000);
  const [connected] = of(id, 'connections', 'connected');
  assert.ok(connected.signed);
  assert.equal(connected.code, 'functions-key');
  assert.equal(connected.headers['x-asrs-hub'], 'chat');
  assert.equal(connected.headers['x-asrs-user-id'], 'alice');
  assert.match(connected.headers['x-asrs-user-claims'], /role: tester/);
  assert.match(connected.headers['x-asrs-client-query'], /^\?.*hub=chat/);
  assert.equal(connected.headers['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(connected.body), { type: 10 });

  assert.equal(await c.invoke('add', 2, 3), 5);
  const [call] = of(id, 'messages', 'add');
  assert.equal(call.headers['content-type'], 'application/json');
  const sent = JSON.parse(call.body);
  assert.deepEqual([sent.type, sent.target, sent.arguments], [1, 'add', [2, 3]]);
  // A send without an id gets no answer, and needs none.
  await c.send('note', 'for the backend');
  await until(() => of(id, 'messages', 'note').length === 1, 'no note', 5000);
  // An upstream error fails that invocation only.
  await assert.rejects(c.invoke('fail'), /Invocation failed, status code 500/);
  assert.equal(await c.invoke('echo', 'still fine'), 'echo:still fine');

  await c.stop();
  await until(() => of(id, 'connections', 'disconnected').length === 1, 'no disconnected event', 5000);
  assert.equal(JSON.parse(of(id, 'connections', 'disconnected')[0].body).Type, 11);
});

test('a MessagePack client\'s invocations go upstream as MessagePack, and its completion comes back', async () => {
  const c = await client('mp', { msgpack: true });
  try {
    assert.equal(await c.invoke('add', 40, 2), 42);
    const [call] = of(c.connectionId, 'messages', 'add');
    assert.equal(call.headers['content-type'], 'application/x-msgpack');
  } finally {
    await c.stop();
  }
});

test('a slow upstream delays only the invocations waiting on it; the clients\' other traffic flows', async () => {
  const a = await client('slow-a');
  const b = await client('slow-b');
  try {
    const slow = a.invoke('slow');
    // Meanwhile, everything else reaches both clients at once.
    const heard = [next(a, 'news'), next(b, 'news')];
    assert.equal((await rest('POST', '/api/hubs/chat/:send', { target: 'news', arguments: ['during'] })).status, 202);
    assert.deepEqual(await Promise.all(heard), [['during'], ['during']]);
    assert.equal(await b.invoke('echo', 'b'), 'echo:b');
    assert.equal(await a.invoke('echo', 'a'), 'echo:a');
    // The slow one fails at the upstream timeout (2 s here).
    await assert.rejects(slow, /Invocation failed, status code 500/);
  } finally {
    await a.stop();
    await b.stop();
  }
});

test('an upstream that is down fails invocations at once, and REST sends still arrive; a changed settings file is used at once', async () => {
  const c = await client('down');
  try {
    // Point the relay at a port where nothing listens.
    const dead = await freePort('127.0.0.1');
    fs.writeFileSync(settingsFile, JSON.stringify({ UpstreamSettings: { Templates: [{ UrlTemplate: `http://127.0.0.1:${dead}/x/{event}` }] } }));
    // Read at start, and again now.
    await until(() => relay.output().split('upstream settings loaded').length > 2, 'the file was not read again', 5000);
    await assert.rejects(c.invoke('echo', 'x'), /Invocation failed, status code 500/);
    const got = next(c, 'news');
    assert.equal((await rest('POST', '/api/hubs/chat/:send', { target: 'news', arguments: ['still'] })).status, 202);
    assert.deepEqual(await got, ['still']);
    // And back, under another path.
    fs.writeFileSync(settingsFile, settings('moved'));
    await until(() => relay.output().split('upstream settings loaded').length > 3, 'the file was not read again', 5000);
    assert.equal(await c.invoke('echo', 'back'), 'echo:back');
    assert.equal(of(c.connectionId, 'messages', 'echo').at(-1).prefix, 'moved');
  } finally {
    await c.stop();
  }
});
