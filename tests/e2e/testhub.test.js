// The methods of ASP.NET Core's client functional-test hub, through the relay, with the
// official client over WebSockets, in JSON and MessagePack.
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, TRANSPORTS, next, sleep, signalR } = require('./harness');

let stack;
before(async () => { stack = await Stack.start(); });
after(async () => { await stack.stop(); });

for (const [transport, protocols] of TRANSPORTS) for (const msgpack of protocols) {
  describe(`testhub over ${transport}, ${msgpack ? 'MessagePack' : 'JSON'}`, () => {
    let c;
    before(async () => { c = await stack.connect('testhub', { msgpack, transport }); });
    after(async () => { await c.stop(); });

    test('Echo returns its argument', async () => {
      assert.equal(await c.invoke('Echo', 'hello relay'), 'hello relay');
      assert.equal(await c.invoke('echo', 'case-insensitive'), 'case-insensitive');
    });

    test('GetCallerConnectionId is the client\'s own id', async () => {
      const id = await c.invoke('GetCallerConnectionId');
      assert.equal(id, c.connectionId);
      assert.match(id, /^[A-Za-z0-9_-]{22}$/);
    });

    test('ThrowException reaches the caller as an error', async () => {
      await assert.rejects(c.invoke('ThrowException', 'An error occurred.'), (e) => {
        assert.match(e.message, /InvalidOperationException: An error occurred\./);
        return true;
      });
    });

    test('InvokeWithString calls back "Message"', async () => {
      const got = next(c, 'Message');
      await c.invoke('InvokeWithString', 'message from the server');
      assert.deepEqual(await got, ['message from the server']);
    });

    test('SendCustomObject calls back "CustomObject"', async () => {
      const got = next(c, 'CustomObject');
      await c.invoke('SendCustomObject', { Name: 'test', Value: 42 });
      const [obj] = await got;
      assert.equal(obj.Name, 'test');
      assert.equal(obj.Value, 42);
    });

    test('Stream yields a, b, c', async () => {
      const items = await new Promise((resolve, reject) => {
        const got = [];
        c.stream('Stream').subscribe({ next: (i) => got.push(i), complete: () => resolve(got), error: reject });
      });
      assert.deepEqual(items, ['a', 'b', 'c']);
    });

    test('EmptyStream completes with no items', async () => {
      const items = await new Promise((resolve, reject) => {
        const got = [];
        c.stream('EmptyStream').subscribe({ next: (i) => got.push(i), complete: () => resolve(got), error: reject });
      });
      assert.deepEqual(items, []);
    });

    test('StreamThrowException ends the stream with the error', async () => {
      const error = await new Promise((resolve) => {
        c.stream('StreamThrowException', 'stream error').subscribe({ next: () => {}, complete: () => resolve(null), error: resolve });
      });
      assert.ok(error);
      assert.match(error.message, /InvalidOperationException: stream error/);
    });

    test('cancelling InfiniteStream tells the server ("StreamCanceled")', async () => {
      const canceled = next(c, 'StreamCanceled');
      const sub = c.stream('InfiniteStream').subscribe({ next: () => {}, complete: () => {}, error: () => {} });
      await sleep(100);
      sub.dispose();
      await canceled;
    });

    test('a stream cancelled at once is still cancelled on the server, never left running', async () => {
      // The invocation and its cancel go back to back (often in one frame): the method must
      // start first, as in ASP.NET Core, and then be cancelled.
      for (let i = 0; i < 5; i++) {
        const canceled = next(c, 'StreamCanceled');
        c.stream('InfiniteStream').subscribe({ next: () => {}, complete: () => {}, error: () => {} }).dispose();
        await canceled;
      }
    });

    test('an upload the client ends with an error fails the method with that error', async () => {
      const subject = new signalR.Subject();
      const result = c.invoke('StreamingConcat', subject);
      subject.next('Hello ');
      subject.next('world');
      subject.error(new Error('Something bad'));
      await assert.rejects(result, (e) => {
        assert.equal(e.message, "An unexpected error occurred invoking 'StreamingConcat' on the server. HubException: Something bad");
        return true;
      });
    });

    test('StreamingConcat concatenates an uploaded stream', async () => {
      const subject = new signalR.Subject();
      const result = c.invoke('StreamingConcat', subject);
      for (const part of ['a', 'b', 'c', 'def']) {
        subject.next(part);
        await sleep(10);
      }
      subject.complete();
      assert.equal(await result, 'abcdef');
    });

    test(`GetActiveTransportName is ${transport}`, async () => {
      assert.equal(await c.invoke('GetActiveTransportName'), transport);
    });

    test('EchoComplexObject returns the object unchanged', async () => {
      const obj = { String: 'hello world', IntArray: [1, 2, 3], Nested: { Flag: true, Nothing: null } };
      if (msgpack) obj.ByteArray = new Uint8Array([1, 2, 3]);
      const echoed = await c.invoke('EchoComplexObject', obj);
      assert.deepEqual(echoed, obj);
    });

    test('an unknown method is an error, and the connection stays usable', async () => {
      await assert.rejects(c.invoke('NoSuchMethod'), /Unknown hub method/);
      assert.equal(await c.invoke('Echo', 'still here'), 'still here');
    });

    test('arguments of the wrong type are an error', async () => {
      await assert.rejects(c.invoke('Echo', 42), /Failed to bind/);
    });
  });
}

describe('testhub values in both protocols', () => {
  for (const msgpack of [false, true]) {
    test(`SendComplexObject arrives as the functional tests expect (${msgpack ? 'MessagePack' : 'JSON'})`, async () => {
      const c = await stack.connect('testhub', { msgpack });
      const value = await c.invoke('SendComplexObject');
      if (msgpack) value.ByteArray = [...value.ByteArray];
      assert.deepEqual(value, {
        ByteArray: msgpack ? [1, 2, 3] : 'AQID',
        DateTime: msgpack ? new Date(Date.UTC(2000, 0, 1)) : '2000-01-01T00:00:00Z',
        Guid: '00010203-0405-0607-0706-050403020100',
        IntArray: [1, 2, 3],
        String: 'hello world',
      });
      await c.stop();
    });
  }
});
