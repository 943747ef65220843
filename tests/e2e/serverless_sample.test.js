// The serverless sample (`sample-app --serverless`, on the SDK's management client) behind a
// serverless relay: the official clients negotiate at it, their invocations reach it as
// signed upstream requests, and it answers through the REST API, as a Functions app would.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { SUFFIX, startProcess, startClient, freePort, next } = require('./harness');

const key = crypto.randomBytes(16).toString('hex');
const procs = [];
let appAddr;
let dir;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-serverless-sample-'));
  const appPort = await freePort('127.0.0.1');
  const settings = path.join(dir, 'settings.json');
  fs.writeFileSync(settings, JSON.stringify({ UpstreamSettings: { Templates: [
    { UrlTemplate: `http://127.0.0.1:${appPort}/upstream/{hub}/{category}/{event}`, HubPattern: '*' },
  ] } }));
  const relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--service-mode', 'serverless', '--upstream-config', settings, '--log', 'warn']);
  procs.push(relay);
  const relayAddr = await relay.ready;
  const app = startProcess(`sample-app${SUFFIX}`, ['--serverless', '--connection-string', `Endpoint=http://${relayAddr};AccessKey=${key};Version=1.0;`,
    '--listen', `127.0.0.1:${appPort}`, '--log', 'warn']);
  procs.push(app);
  appAddr = await app.ready;
});

after(() => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

function client(user, msgpack = false) {
  return startClient(`http://${appAddr}/chat?user=${user}`, {}, { msgpack });
}

test('echo, broadcast, groups and presence, through upstream and the REST API, in JSON and MessagePack', async () => {
  const a = await client('alice');
  const joined = [];
  a.on('joined', (id) => joined.push(id));
  const b = await client('bob', true);
  try {
    assert.ok(b.connectionId, 'bob has a connection id');
    for (let i = 0; i < 100 && !joined.includes(b.connectionId); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(joined.includes(b.connectionId), `joined: ${joined}`);
    assert.equal(await a.invoke('echo', 'hello'), 'hello');
    assert.equal(await b.invoke('echo', 'binary'), 'binary');
    const heard = next(b, 'newMessage');
    await a.invoke('broadcast', 'hi all');
    assert.deepEqual(await heard, ['alice', 'hi all']);
    await b.invoke('joinGroup', 'room');
    const inRoom = next(b, 'groupMessage');
    await a.invoke('sendToGroup', 'room', 'psst');
    assert.deepEqual(await inRoom, ['room', 'psst']);
    await assert.rejects(a.invoke('nope'), /Unknown method 'nope'/);
    const left = next(a, 'left');
    const bob = b.connectionId; // the client forgets it when it stops
    await b.stop();
    assert.deepEqual(await left, [bob]);
  } finally {
    await a.stop();
    await b.stop();
  }
});

test('the backend refuses an upstream request that is not signed with the access key', async () => {
  const forged = await fetch(`http://${appAddr}/upstream/chat/messages/broadcast`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-ASRS-Connection-Id': 'c1', 'X-ASRS-Signature': 'sha256=00' },
    body: JSON.stringify({ type: 1, target: 'broadcast', arguments: ['forged'] }),
  });
  assert.equal(forged.status, 401);
});
