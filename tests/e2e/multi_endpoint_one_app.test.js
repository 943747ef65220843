// Two relays and one app server on both (the Azure SDK's multiple endpoints, #18): the
// app's negotiate spreads its clients over the relays, its broadcasts, groups and users reach
// them on both, and when a relay dies its clients come back through the other while the
// clients on the other lose nothing.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { SUFFIX, startProcess, jwt, sleep } = require('./harness');
const { relayClient, relayLoss } = require('./relays');

const key = crypto.randomBytes(16).toString('hex');
const procs = [];
let relays;
let app;

before(async () => {
  const relay = () => startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--log', 'warn']);
  const r = [relay(), relay()];
  procs.push(...r);
  relays = await Promise.all(r.map((p) => p.ready));
  const args = ['--listen', '127.0.0.1:0', '--log', 'error', '--connections-per-hub', '2', '--server-id', 'the-app'];
  for (const addr of relays) args.push('--connection-string', `Endpoint=http://${addr};AccessKey=${key};Version=1.0;`);
  const a = startProcess(`sample-app${SUFFIX}`, args);
  procs.push(a);
  app = await a.ready;
  // Until the app server is on both relays.
  const deadline = Date.now() + 15000;
  for (const addr of relays) {
    for (;;) {
      const now = Math.floor(Date.now() / 1000);
      const token = jwt({ aud: 'http://127.0.0.1/client/?hub=chat', exp: now + 60 }, key);
      const n = await fetch(`http://${addr}/client/negotiate?hub=chat`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
      if (n.status === 200 && !(await n.json()).error) break;
      if (Date.now() > deadline) throw new Error(`the app server never connected to ${addr}`);
      await sleep(50);
    }
  }
});

after(() => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
});

test('two relays, one app server: spread, fan-out to both, and a relay lost mid-run', async () => {
  const clients = await Promise.all(Array.from({ length: 16 }, (_, i) => relayClient(relays, `http://${app}/chat?user=one-app-${i}`, `one-app-${i}`)));
  try {
    await relayLoss(clients, relays, () => procs[0].child.kill('SIGKILL'));
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});
