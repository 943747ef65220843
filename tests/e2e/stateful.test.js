// Stateful reconnect: a client whose socket is cut mid-stream comes back to the same
// connection, and every message arrives exactly once, in order, both ways.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, collect, sleep } = require('./harness');

let stack;
before(async () => { stack = await Stack.start({ clientProxy: true }); });
after(async () => { await stack.stop(); });

for (const msgpack of [false, true]) {
  test(`a cut socket loses nothing (${msgpack ? 'MessagePack' : 'JSON'})`, async () => {
    const c = await stack.connect('chat', { stateful: true, msgpack });
    const id = c.connectionId;
    let reconnecting = false;
    c.onreconnecting(() => { reconnecting = true; });
    const got = collect(c, 'echo');
    const N = 300;
    const sends = [];
    for (let i = 0; i < N; i++) {
      sends.push(c.send('EchoToCaller', i));
      if (i === N / 2) {
        // Cut every client socket through the proxy, mid-stream.
        for (const p of stack.proxy.connections()) { p.client.destroy(); p.upstream.destroy(); }
      }
      if (i % 25 === 0) await sleep(5);
    }
    await Promise.all(sends);
    const deadline = Date.now() + 10000;
    while (got.length < N && Date.now() < deadline) await sleep(50);
    assert.deepEqual(got.map(([n]) => n), [...Array(N).keys()], 'every message exactly once, in order');
    assert.equal(c.state, 'Connected');
    assert.equal(c.connectionId, id, 'the same logical connection');
    assert.equal(reconnecting, false, 'no full reconnect was needed');
    assert.equal(await c.invoke('GetConnectionId'), id);
    await c.stop();
  });
}

test('without stateful reconnect (--no-stateful-reconnect), the same cut ends the connection', async () => {
  const plain = await Stack.start({ clientProxy: true, relayArgs: ['--no-stateful-reconnect'] });
  try {
    const c = await plain.connect('chat', { stateful: true });
    for (const p of plain.proxy.connections()) { p.client.destroy(); p.upstream.destroy(); }
    const error = await c.closedWith;
    assert.ok(error, 'closed with an error');
    assert.equal(c.state, 'Disconnected');
  } finally {
    await plain.stop();
  }
});
