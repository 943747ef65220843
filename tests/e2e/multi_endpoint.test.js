// Several relays as one service for app servers on the Rust SDK, as the Azure SDK's multiple
// endpoints: two relays, two app servers each connected to both (`--connection-string`
// twice). Clients spread over the relays; broadcasts, groups and users reach clients on both;
// when a relay dies its clients reconnect through negotiate to the other, and the clients on
// the other lose nothing.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { SUFFIX, startProcess, jwt, sleep, signalR } = require('./harness');

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

/// An HTTP client that remembers which relay the client last negotiated with.
class RecordingClient extends signalR.DefaultHttpClient {
  constructor() { super(signalR.NullLogger.instance); this.relay = null; }
  send(request) {
    const url = new URL(request.url);
    if (relays.includes(url.host)) this.relay = url.host;
    return super.send(request);
  }
}

async function client(i, hub = 'chat') {
  const http = new RecordingClient();
  const c = new signalR.HubConnectionBuilder()
    .withUrl(`http://${apps[i % 2]}/${hub}?user=user-${i}`, { httpClient: http })
    .withAutomaticReconnect([0, 100, 200, 500, 1000, 1000, 1000, 1000, 1000, 1000])
    .configureLogging(signalR.LogLevel.None)
    .build();
  c.http = http;
  c.user = `user-${i}`;
  c.numbers = [];
  c.on('broadcast', (m) => { if (typeof m === 'number') c.numbers.push(m); });
  c.reconnected = new Promise((resolve) => c.onreconnected(resolve));
  await c.start();
  return c;
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
    const [doomed, survivor] = relays;
    const on = (relay) => clients.filter((c) => c.http.relay === relay);
    // Negotiate spreads clients over both relays (16 clients, both sides: all but certain).
    assert.ok(on(doomed).length > 0 && on(survivor).length > 0, `spread: ${on(doomed).length}/${on(survivor).length}`);
    assert.equal(on(doomed).length + on(survivor).length, clients.length);

    // A group, a user and a broadcast reach clients on both relays, from either app server.
    await Promise.all(clients.map((c) => c.invoke('JoinGroup', 'everyone')));
    const groupSeen = clients.map((c) => new Promise((resolve) => c.on('groupMessage', (g, m) => { if (m === 'to the group') resolve(); })));
    await on(survivor)[0].invoke('SendToGroup', 'everyone', 'to the group');
    await Promise.all(groupSeen);
    const far = on(doomed)[0];
    const direct = new Promise((resolve) => far.on('userMessage', resolve));
    await on(survivor)[0].invoke('SendToUser', far.user, 'across relays');
    assert.equal(await direct, 'across relays');

    // A client on the surviving relay broadcasts numbers while the other relay dies.
    const sender = on(survivor)[0];
    const stayers = on(survivor);
    const movers = on(doomed);
    let n = 0;
    let sending = true;
    const pump = (async () => {
      while (sending) {
        n += 1;
        await sender.invoke('Broadcast', n);
        await sleep(10);
      }
    })();
    await sleep(300);
    procs[0].child.kill('SIGKILL');
    // The doomed relay's clients reconnect through negotiate, to the surviving relay.
    await Promise.all(movers.map((c) => c.reconnected));
    for (const c of movers) assert.equal(c.http.relay, survivor);
    await sleep(300);
    sending = false;
    await pump;
    const last = n;
    await sleep(300);
    // Nothing lost, nothing twice, in order, for every client that stayed.
    const all = Array.from({ length: last }, (_, i) => i + 1);
    for (const c of stayers) assert.deepEqual(c.numbers, all);
    // The movers hear the broadcasts sent after they came back.
    for (const c of movers) assert.equal(c.numbers[c.numbers.length - 1], last);
    const final = clients.map((c) => new Promise((resolve) => c.on('broadcast', (m) => { if (m === 'final') resolve(); })));
    await movers[0].invoke('Broadcast', 'final');
    await Promise.all(final);
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});
