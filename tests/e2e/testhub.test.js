// The methods of ASP.NET Core's client functional-test hub, through the relay, with the
// official client over WebSockets, in JSON and MessagePack.
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
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

// The sample app's endpoints beside the hub, as ASP.NET Core's functional-test server has them.
describe('the functional-test server endpoints', () => {
  const builder = (path, options = {}) => new signalR.HubConnectionBuilder()
    .withUrl(`http://${stack.appAddr}${path}`, options)
    .configureLogging(signalR.LogLevel.None);
  const get = async (path) => {
    const r = await fetch(`http://${stack.appAddr}${path}`);
    return { status: r.status, body: await r.text() };
  };

  for (const [transport, protocols] of TRANSPORTS) for (const msgpack of protocols) {
    test(`/clientresult asks the client from outside the hub (${transport}, ${msgpack ? 'MessagePack' : 'JSON'})`, async () => {
      const make = () => {
        const b = builder('/testhub', { transport: signalR.HttpTransportType[transport] });
        if (msgpack) b.withHubProtocol(new MessagePackHubProtocol());
        return b.build();
      };
      const answering = make();
      answering.on('Result', () => 10);
      const throwing = make();
      throwing.on('Result', () => { throw new Error('from callback'); });
      const silent = make();
      await Promise.all([answering.start(), throwing.start(), silent.start()]);
      try {
        assert.deepEqual(await get(`/clientresult/${answering.connectionId}`), { status: 200, body: '10' });
        assert.deepEqual(await get(`/clientresult/${throwing.connectionId}`), { status: 200, body: 'Error: from callback' });
        assert.deepEqual(await get(`/clientresult/${silent.connectionId}`), { status: 200, body: "Client didn't provide a result." });
        // Nobody else can answer for a connection, and an unknown one is an error, not a hang.
        const unknown = await get('/clientresult/no-such-connection');
        assert.equal(unknown.status, 200);
        assert.match(unknown.body, /Connection not found\./);
        assert.equal(await answering.invoke('Echo', 'still here'), 'still here');
      } finally {
        await Promise.all([answering.stop(), throwing.stop(), silent.stop()]);
      }
    });
  }

  test('/authorizedhub needs a token from /generateJwtToken', async () => {
    const token = await get('/generateJwtToken');
    assert.equal(token.status, 200);
    assert.match(token.body, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    for (const transport of TRANSPORTS.map(([t]) => t)) {
      const c = builder('/authorizedhub', {
        transport: signalR.HttpTransportType[transport],
        accessTokenFactory: async () => (await get('/generateJwtToken')).body,
      }).build();
      await c.start();
      assert.equal(await c.invoke('Echo', '你好，世界！'), '你好，世界！');
      await c.stop();
    }
    // Without a token, with a forged one, or with another hub's: 401 at negotiate.
    await assert.rejects(builder('/authorizedhub').build().start(),
      (e) => { assert.equal(e.message, "Failed to complete negotiation with the server: Error: Unauthorized: Status code '401'"); return true; });
    const [head, , sig] = token.body.split('.');
    const forged = `${head}.${Buffer.from(JSON.stringify({ nameid: 'admin', exp: 9999999999 })).toString('base64url')}.${sig}`;
    await assert.rejects(builder('/authorizedhub', { accessTokenFactory: () => forged }).build().start(), /Status code '401'/);
    await assert.rejects(builder('/authorizedhub', { accessTokenFactory: () => stack.clientToken('authorizedhub') }).build().start(), /Status code '401'/);
    // No other way in: the hub's name in another case, the classic negotiate, or a relay
    // token the app's negotiate did not issue (the hub closes such a client).
    assert.equal((await fetch(`http://${stack.appAddr}/AuthorizedHub/negotiate?user=admin`, { method: 'POST' })).status, 401);
    const classic = await fetch(`http://${stack.appAddr}/signalr/negotiate?connectionData=${encodeURIComponent('[{"name":"authorizedhub"}]')}&user=admin`);
    assert.match((await classic.json()).Error, /not open to classic clients/);
    // One token for the negotiate and the upgrade.
    const admin = stack.clientToken('authorizedhub', { nameid: 'admin' });
    const direct = new signalR.HubConnectionBuilder()
      .withUrl(`http://${stack.relayAddr}/client/?hub=authorizedhub`, { accessTokenFactory: () => admin })
      .configureLogging(signalR.LogLevel.None)
      .build();
    const closed = new Promise((resolve) => direct.onclose(resolve));
    const started = await direct.start().then(() => true, () => false);
    if (started) {
      const outcome = await Promise.race([closed.then(() => 'closed'), sleep(5000).then(() => 'still open')]);
      assert.equal(outcome, 'closed', 'the hub closes a client its negotiate did not authorize');
    }
    await assert.rejects(direct.invoke('Echo', 'sneaked in'));
  });

  test('/redirect sends the client on to testhub, counting redirects', async () => {
    const base = `http://${stack.appAddr}`;
    const c = builder(`/redirect?numRedirects=0&baseUrl=${base}`).build();
    await c.start();
    const first = await c.invoke('GetNumRedirects');
    assert.ok(first >= 1);
    assert.equal(await c.invoke('GetCallerConnectionId'), c.connectionId);
    await c.stop();
    const again = builder(`/redirect?numRedirects=0&baseUrl=${base}`).build();
    await again.start();
    assert.ok(await again.invoke('GetNumRedirects') > first);
    await again.stop();
  });
});
