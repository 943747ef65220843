// Many clients at once, and a server connection killed mid-traffic.
'use strict';
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, collect, sleep, until, SAMPLE_HUBS } = require('./harness');

const stacks = [];
after(async () => { for (const s of stacks) await s.stop(); });

test('200 concurrent clients, both protocols: echo and one broadcast each', async () => {
  const stack = await Stack.start();
  stacks.push(stack);
  const clients = await Promise.all(
    Array.from({ length: 200 }, (_, i) => stack.connect('chat', { user: `u${i % 20}`, msgpack: i % 2 === 1 })),
  );
  const received = clients.map((c) => collect(c, 'broadcast'));
  const echoes = await Promise.all(clients.map((c, i) => c.invoke('Echo', `m${i}`)));
  assert.deepEqual(echoes, clients.map((_, i) => `m${i}`));
  await Promise.all(clients.slice(0, 5).map((c, i) => c.invoke('Broadcast', `b${i}`)));
  const deadline = Date.now() + 10000;
  while (received.some((r) => r.length < 5) && Date.now() < deadline) await sleep(50);
  for (const r of received) {
    assert.deepEqual(r.map(([m]) => m).sort(), ['b0', 'b1', 'b2', 'b3', 'b4']);
  }
  await Promise.all(clients.map((c) => c.stop()));
});

test('a killed server connection closes only its clients, with a reason; the SDK reconnects', async () => {
  const stack = await Stack.start({ proxy: true });
  stacks.push(stack);
  // 5 server connections for each of the sample app's hubs pass through the proxy.
  const all = 5 * SAMPLE_HUBS.length;
  for (const end = Date.now() + 5000; stack.proxy.connections().length < all && Date.now() < end;) await sleep(50);
  assert.equal(stack.proxy.connections().length, all);
  const clients = await Promise.all(Array.from({ length: 20 }, () => stack.connect('chat')));
  // Keep traffic flowing while the connection dies.
  let stop = false;
  const traffic = Promise.all(clients.map(async (c) => {
    while (!stop && c.state === 'Connected') {
      await c.invoke('Echo', 'x').catch(() => {});
      await sleep(5);
    }
  }));
  await sleep(100);
  // Cut one server connection that carries clients: the busiest one.
  const traffic_of = (p) => p.client.bytesRead + p.upstream.bytesRead;
  const victim = stack.proxy.connections().reduce((a, b) => (traffic_of(b) > traffic_of(a) ? b : a));
  victim.client.destroy();
  victim.upstream.destroy();
  // Until its clients hear (on a loaded machine it may take more than a moment).
  await until(() => clients.some((c) => c.state === 'Disconnected'), 'no client of the cut connection was closed', 10000);
  stop = true;
  await traffic;

  const closed = clients.filter((c) => c.state === 'Disconnected');
  const alive = clients.filter((c) => c.state === 'Connected');
  assert.ok(closed.length >= 1, 'the clients of the killed connection are closed');
  assert.ok(alive.length >= 10, `the others are unaffected (${alive.length} alive)`);
  for (const c of closed) {
    const error = await c.closedWith;
    assert.match(String(error), /ServerOffline/, `closed with a reason: ${error}`);
  }
  for (const c of alive) assert.equal(await c.invoke('Echo', 'still fine'), 'still fine');

  // The SDK reconnects the dropped slot (backoff starts at about 1 s).
  const deadline = Date.now() + 10000;
  while (stack.proxy.connections().length < all && Date.now() < deadline) await sleep(100);
  assert.equal(stack.proxy.connections().length, all, 'the app server reopened its server connection');
  const fresh = await Promise.all(Array.from({ length: 10 }, () => stack.connect('chat')));
  for (const c of fresh) assert.equal(await c.invoke('Echo', 'new'), 'new');
  await Promise.all([...alive, ...fresh].map((c) => c.stop()));
});

test('the relay asks a busy app server for more server connections, and gets them', async () => {
  const stack = await Stack.start({ proxy: true, connectionsPerHub: 1, relayArgs: ['--clients-per-server-connection', '3'] });
  stacks.push(stack);
  const perHub = SAMPLE_HUBS.length;
  for (const end = Date.now() + 5000; stack.proxy.connections().length < perHub && Date.now() < end;) await sleep(50);
  assert.equal(stack.proxy.connections().length, perHub, 'one per hub');
  const clients = [];
  for (let i = 0; i < 3; i++) clients.push(await stack.connect('chat'));
  const deadline = Date.now() + 5000;
  while (stack.proxy.connections().length < perHub + 1 && Date.now() < deadline) await sleep(50);
  assert.equal(stack.proxy.connections().length, perHub + 1, 'an on-demand connection was opened');
  // New clients go to the new, least-loaded connection and work.
  const more = await Promise.all([stack.connect('chat'), stack.connect('chat')]);
  for (const c of [...clients, ...more]) assert.equal(await c.invoke('Echo', 'ok'), 'ok');
  await Promise.all([...clients, ...more].map((c) => c.stop()));
});
