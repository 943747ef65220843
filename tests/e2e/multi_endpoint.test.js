// Several relays as one service for app servers on the Rust SDK, as the Azure SDK's multiple
// endpoints: two relays, two app servers each connected to both (`--connection-string`
// twice). Clients spread over the relays; broadcasts, groups and users reach clients on both;
// when a relay dies its clients reconnect through negotiate to the other, and the clients on
// the other lose nothing.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { SUFFIX, startProcess, jwt, sleep } = require('./harness');
const { relayClient, relayLoss } = require('./relays');

const key = crypto.randomBytes(16).toString('hex');
const procs = [];
let relays;
let apps;

before(async () => {
  const relay = () => startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--log', 'warn']);
  const r = [relay(), relay()];
  procs.push(...r);
  relays = await Promise.all(r.map((p) => p.ready));
  const args = ['--listen', '127.0.0.1:0', '--log', 'error', '--connections-per-hub', '2'];
  for (const addr of relays) args.push('--connection-string', `Endpoint=http://${addr};AccessKey=${key};Version=1.0;`);
  const a = [startProcess(`sample-app${SUFFIX}`, [...args, '--server-id', 'app-a']), startProcess(`sample-app${SUFFIX}`, [...args, '--server-id', 'app-b'])];
  procs.push(...a);
  apps = await Promise.all(a.map((p) => p.ready));
  // Wait until each app server has a connection to each relay, for each hub used here: the
  // relay refuses a token that requires an app server it has no connection of.
  const deadline = Date.now() + 15000;
  for (const server of ['app-a', 'app-b']) for (const addr of relays) for (const hub of ['chat', 'testhub']) {
    for (;;) {
      const now = Math.floor(Date.now() / 1000);
      const token = jwt({ aud: `http://127.0.0.1/client/?hub=${hub}`, exp: now + 60, 'asrs.s.sn': server, 'asrs.s.ssticky': 'Required' }, key);
      const n = await fetch(`http://${addr}/client/negotiate?hub=${hub}`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
      if (n.status === 200 && !(await n.json()).error) break;
      if (Date.now() > deadline) throw new Error(`${server} never connected to ${addr} for ${hub}`);
      await sleep(50);
    }
  }
});

after(() => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
});

function client(i, hub = 'chat') {
  return relayClient(relays, `http://${apps[i % 2]}/${hub}?user=user-${i}`, `user-${i}`);
}

test("client results through every relay: a client of the other app server, on either relay", async () => {
  // testhub clients until one on each relay is served by app-b; app-a then asks each for a
  // result from outside the hub (/clientresult): app-a does not serve it, so the invocation
  // goes to both relays, one of which says it does not know the client.
  const clients = [];
  const found = new Map();
  try {
    for (let i = 0; found.size < 2 && i < 60; i++) {
      const c = await client(i, 'testhub');
      c.on('Result', () => 10);
      clients.push(c);
      if ((await c.invoke('GetServerId')) === 'app-b' && !found.has(c.http.relay)) found.set(c.http.relay, c);
    }
    assert.equal(found.size, 2, 'a client of app-b on each relay');
    for (const c of found.values()) {
      const r = await fetch(`http://${apps[0]}/clientresult/${c.connectionId}`);
      assert.equal(await r.text(), '10');
    }
    // Nobody has this one: both relays say so, and the answer comes at once.
    const unknown = await (await fetch(`http://${apps[0]}/clientresult/nobody`)).text();
    assert.match(unknown, /Connection not found\./);
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});

test('two relays, two app servers: spread, fan-out to both, and a relay lost mid-run', async () => {
  const clients = await Promise.all(Array.from({ length: 16 }, (_, i) => client(i)));
  try {
    await relayLoss(clients, relays, () => procs[0].child.kill('SIGKILL'));
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});
