// Client results: the app server invokes a method on a client and awaits its answer.
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, TRANSPORTS } = require('./harness');

let stack;
// A short client-result timeout, so that the timeout case is quick.
before(async () => { stack = await Stack.start({ appArgs: ['--client-result-timeout', '2'] }); });
after(async () => { await stack.stop(); });

for (const [transport, protocols] of TRANSPORTS) for (const msgpack of protocols) {
  describe(`client results over ${transport}, ${msgpack ? 'MessagePack' : 'JSON'}`, () => {
    test('the client\'s answer reaches the app server', async () => {
      const c = await stack.connect('chat', { transport, msgpack });
      c.on('GetAnswer', (q) => `answer to ${q}`);
      assert.equal(await c.invoke('AskCaller', 'life'), 'answer to life');
      assert.equal(await c.invoke('AskCaller', 'async'), 'answer to async');
      await c.stop();
    });

    test('an error in the client\'s handler reaches the app server as an error', async () => {
      const c = await stack.connect('chat', { transport, msgpack });
      c.on('GetAnswer', () => { throw new Error('no idea'); });
      await assert.rejects(c.invoke('AskCaller', 'q'), /the client returned an error: .*no idea/);
      await c.stop();
    });

    test('a client without a handler answers with an error', async () => {
      const c = await stack.connect('chat', { transport, msgpack });
      await assert.rejects(c.invoke('AskCaller', 'q'), /the client returned an error: Client didn't provide a result/);
      await c.stop();
    });
  });
}

test('a client that never answers times out', async () => {
  const c = await stack.connect('chat');
  c.on('GetAnswer', () => new Promise(() => {}));
  await assert.rejects(c.invoke('AskCaller', 'q'), /did not return a result in time/);
  await c.stop();
});

test('a client that disconnects while asked: the asker gets a disconnect error', async () => {
  const asker = await stack.connect('chat');
  const asked = await stack.connect('chat', { msgpack: true });
  let askedNow;
  const wasAsked = new Promise((r) => { askedNow = r; });
  asked.on('GetAnswer', () => { askedNow(); return new Promise(() => {}); });
  const pending = asker.invoke('AskClient', asked.connectionId, 'q');
  // Gone while the question is with it, not before it came.
  await wasAsked;
  await asked.stop();
  await assert.rejects(pending, /disconnected/);
  // And a client on another connection answers for another.
  const helper = await stack.connect('chat', { transport: 'LongPolling' });
  helper.on('GetAnswer', (q) => `helped with ${q}`);
  assert.equal(await asker.invoke('AskClient', helper.connectionId, 'x'), 'helped with x');
  await Promise.all([asker.stop(), helper.stop()]);
});
