// A graceful shutdown (#13): on SIGTERM the relay turns /ready to 503, tells every client to
// reconnect and exits 0 once they are gone; official clients with automatic reconnect come
// back on the next relay process, without an error reaching the app.
'use strict';
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { SUFFIX, startProcess, freePort, jwt, sleep, signalR } = require('./harness');

const key = crypto.randomBytes(16).toString('hex');
const procs = [];
after(() => { for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL'); });

function relay(port) {
  const p = startProcess(`signalr-relay${SUFFIX}`, ['--listen', `127.0.0.1:${port}`, '--access-key', key, '--log', 'info']);
  procs.push(p);
  return p;
}

async function waitForServers(addr, hub) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const now = Math.floor(Date.now() / 1000);
    const token = jwt({ aud: `http://127.0.0.1/client/?hub=${hub}`, exp: now + 60 }, key);
    const r = await fetch(`http://${addr}/client/negotiate?hub=${hub}`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } }).catch(() => null);
    if (r && r.status === 200 && !(await r.json()).error) return;
    if (Date.now() > deadline) throw new Error(`no app server for ${hub} at ${addr}`);
    await sleep(100);
  }
}

test('SIGTERM: /ready turns 503, clients reconnect to the next relay process, exit 0', async () => {
  const port = await freePort('127.0.0.1');
  const first = relay(port);
  const addr = await first.ready;
  const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', `Endpoint=http://${addr};AccessKey=${key};Version=1.0;`,
    '--listen', '127.0.0.1:0', '--log', 'error', '--connections-per-hub', '2']);
  procs.push(app);
  const appAddr = await app.ready;
  await waitForServers(addr, 'testhub');
  assert.equal((await fetch(`http://${addr}/ready`)).status, 200);

  const clients = [];
  for (const transport of ['WebSockets', 'ServerSentEvents', 'LongPolling']) {
    const c = new signalR.HubConnectionBuilder()
      .withUrl(`http://${appAddr}/testhub`, signalR.HttpTransportType[transport])
      .withAutomaticReconnect(Array(60).fill(250))
      .configureLogging(signalR.LogLevel.None)
      .build();
    c.errors = [];
    c.onclose((e) => c.errors.push(`closed: ${e}`));
    // Why it reconnects: the relay's Close message, not a dropped socket.
    c.why = new Promise((resolve) => c.onreconnecting((e) => resolve(e && e.message)));
    c.reconnected = new Promise((resolve) => c.onreconnected(resolve));
    await c.start();
    assert.equal(await c.invoke('Echo', 'before'), 'before');
    c.firstId = c.connectionId;
    clients.push(c);
  }

  // Watch /ready while the relay shuts down.
  const statuses = [];
  let watching = true;
  const watch = (async () => {
    while (watching) {
      const r = await fetch(`http://${addr}/ready`).catch(() => null);
      statuses.push(r ? r.status : 'gone');
      if (!r && statuses.includes(503)) break;
      await sleep(20);
    }
  })();
  const exited = new Promise((resolve) => first.child.once('exit', resolve));
  first.child.kill('SIGTERM');
  assert.equal(await exited, 0, first.output());
  await watch;
  watching = false;
  assert.match(first.output(), /shutting down: clients are told to reconnect/);
  // Ready, then not ready (never ready again), then gone.
  const firstNotReady = statuses.indexOf(503);
  assert.ok(firstNotReady >= 0, `no 503 from /ready: ${statuses.join()}`);
  assert.ok(!statuses.slice(firstNotReady).includes(200), statuses.join());

  // Without a relay, the app server's negotiate says so (503), as the Azure SDK's does,
  // rather than send clients to a relay that is not there.
  let negotiate;
  for (let i = 0; i < 100; i++) {
    negotiate = await fetch(`http://${appAddr}/testhub/negotiate`, { method: 'POST' });
    if (negotiate.status === 503) break;
    await sleep(50);
  }
  assert.equal(negotiate.status, 503);
  assert.match(await negotiate.text(), /not connected to the relay for hub 'testhub'/);

  // The next relay process, on the same address: the app server reconnects, and so does
  // every client, through negotiate, with no error reaching the app.
  for (const c of clients) assert.match(await c.why, /The service is shutting down; reconnect\./);
  relay(port);
  await Promise.all(clients.map((c) => c.reconnected));
  for (const c of clients) {
    assert.equal(await c.invoke('Echo', 'after'), 'after');
    assert.notEqual(c.connectionId, c.firstId);
    assert.deepEqual(c.errors, []);
  }
  await Promise.all(clients.map((c) => c.stop()));
});
