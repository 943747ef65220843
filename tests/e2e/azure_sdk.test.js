// What an app server on the Azure SDK relies on (#12), seen through the official client and
// asserted from the app server's side (the sample app's testhub reports what it was told):
// Blazor's protocol name, the connect query as the client sent it, the client's headers
// without the service's own, and the client's address.
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const { Stack, next, collect, sleep, until, signalR } = require('./harness');

/// The MessagePack protocol under Blazor's name, as Blazor's own script builds it.
function blazorpack() {
  const protocol = new MessagePackHubProtocol();
  protocol.name = 'blazorpack';
  return protocol;
}

async function connect(stack, hub, { query = '', transport = 'WebSockets', protocol, headers } = {}) {
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(`http://${stack.appAddr}/${hub}${query}`, { transport: signalR.HttpTransportType[transport], headers })
    .configureLogging(signalR.LogLevel.None);
  if (protocol) builder.withHubProtocol(protocol);
  const c = builder.build();
  await c.start();
  return c;
}

describe('the Azure SDK expectations', () => {
  let stack;
  before(async () => { stack = await Stack.start(); });
  after(async () => { await stack.stop(); });

  for (const transport of ['WebSockets', 'LongPolling']) {
    test(`a Blazor-protocol client over ${transport}: echo, broadcast and groups beside JSON and MessagePack clients`, async () => {
      const blazor = await connect(stack, 'chat', { query: '?user=blazor', transport, protocol: blazorpack() });
      const json = await connect(stack, 'chat', { query: '?user=json', transport });
      const msgpack = await connect(stack, 'chat', { query: '?user=mp', transport, protocol: new MessagePackHubProtocol() });
      assert.equal(blazor.connection.transport.constructor.name, { WebSockets: 'WebSocketTransport', LongPolling: 'LongPollingTransport' }[transport]);
      assert.deepEqual(await blazor.invoke('Echo', { text: 'hi', n: [1, 2] }), { text: 'hi', n: [1, 2] });
      assert.equal(await blazor.invoke('GetUserId'), 'blazor');
      const got = [blazor, json, msgpack].map((c) => collect(c, 'broadcast'));
      await json.invoke('Broadcast', 'from json');
      await blazor.invoke('Broadcast', 'from blazor');
      const groupMessages = collect(blazor, 'groupMessage');
      await blazor.invoke('JoinGroup', 'room');
      await json.invoke('SendToGroup', 'room', 'to the room');
      const echo = next(blazor, 'echo');
      await blazor.invoke('EchoToCaller', 'just me');
      assert.deepEqual(await echo, ['just me']);
      await sleep(300);
      for (const g of got) assert.deepEqual(g, [['from json'], ['from blazor']]);
      assert.deepEqual(groupMessages, [['room', 'to the room']]);
      await Promise.all([blazor, json, msgpack].map((c) => c.stop()));
    });
  }

  test('the app server gets the connect query as the client sent it, with its "?" and without the token', async () => {
    for (const transport of ['WebSockets', 'ServerSentEvents', 'LongPolling']) {
      const c = await connect(stack, 'testhub', { query: '?note=a%20b&plus=%2B&numRedirects=0', transport });
      const query = await c.invoke('GetQueryString');
      assert.match(query, /^\?/, `${transport}: ${query}`);
      // The client itself re-encodes its URL's query (a space as "+"); the relay changes nothing.
      assert.match(query, /[?&]note=a(\+|%20)b(&|$)/, `${transport}: ${query}`);
      assert.match(query, /[?&]plus=%2B(&|$)/, `${transport}: ${query}`);
      assert.match(query, /[?&]hub=testhub(&|$)/, `${transport}: ${query}`);
      assert.match(query, /[?&]id=/, `${transport}: the connection token`);
      assert.doesNotMatch(query, /access_token/i, `${transport}: ${query}`);
      assert.equal(await c.invoke('GetNumRedirects'), 0);
      await c.stop();
    }
  });

  test("the client's own headers reach the app server; the service's own (Asrs-*, X-ASRS-*) and its claimed address do not", async () => {
    for (const transport of ['WebSockets', 'ServerSentEvents', 'LongPolling']) {
      const c = await connect(stack, 'testhub', {
        transport,
        headers: {
          'X-Custom': 'yes',
          Cookie: 'flavour=oat; size=big',
          'Asrs-Instance-Id': 'forged',
          'Asrs-Migrate-From': 'elsewhere',
          'X-ASRS-Server-Id': 'app-9',
          'X-Forwarded-For': '6.6.6.6',
        },
      });
      assert.equal(await c.invoke('GetHeader', 'X-Custom'), 'yes', transport);
      assert.equal(await c.invoke('GetCookie', 'size'), 'big', transport);
      assert.notEqual(await c.invoke('GetHeader', 'Asrs-Instance-Id'), 'forged', transport);
      assert.equal(await c.invoke('GetHeader', 'Asrs-Migrate-From'), null, transport);
      assert.equal(await c.invoke('GetHeader', 'X-ASRS-Server-Id'), null, transport);
      // No proxy is trusted: the socket's peer, whatever the client claims.
      assert.equal(await c.invoke('GetClientAddress'), '127.0.0.1', transport);
      await c.stop();
    }
  });
});

describe('refusals in the log', () => {
  let stack;
  before(async () => { stack = await Stack.start({ relayLog: 'info' }); });
  after(async () => { await stack.stop(); });

  test('a refused handshake is logged with its hub, connection id, transport and reason', async () => {
    const protocol = new MessagePackHubProtocol();
    protocol.name = 'nosuchprotocol';
    // Refusals are logged at most once a second (the harness's own probing at start may have
    // taken this second's line): refuse once a second until the line is there.
    const logged = () => stack.relay.output().split('\n').find((l) => l.includes('refused') && l.includes('nosuchprotocol'));
    let line;
    for (let attempt = 0; !(line = logged()); attempt++) {
      if (attempt === 5) assert.fail(`no refusal logged:\n${stack.relay.output()}`);
      await assert.rejects(connect(stack, 'chat', { protocol }));
      await sleep(1100);
    }
    assert.match(line, /at="?handshake/);
    assert.match(line, /hub="?chat/);
    assert.match(line, /connection_id=/);
    assert.match(line, /transport="?WebSockets/);
    assert.match(line, /The protocol 'nosuchprotocol' is not supported/);
  });
});

describe('--dev: the Azure SignalR Emulator\'s local settings', () => {
  let stack;
  before(async () => { stack = await Stack.start({ dev: true }); });
  after(async () => { await stack.stop(); });

  test("the relay prints the Emulator's connection string, and an app server takes it as it is", async () => {
    const [, host, port] = stack.relayAddr.match(/^(.*):(\d+)$/);
    assert.match(stack.relay.output(), new RegExp(`Endpoint=http://${host.replace(/\./g, '\\.')};Port=${port};AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1\\.0;`));
    assert.match(stack.connectionString, /;Port=\d+;/);
    const c = await connect(stack, 'chat', { query: '?user=dev' });
    assert.equal(await c.invoke('Echo', 'emulator settings'), 'emulator settings');
    await c.stop();
  });
});

describe('behind nginx', () => {
  let trusted;
  let untrusted;
  before(async () => {
    // nginx reaches the relay from 127.0.0.3; only that address is trusted.
    trusted = await Stack.start({ nginx: true, relayArgs: ['--trusted-proxy', '127.0.0.3'] });
    untrusted = await Stack.start({ nginx: true });
  });
  after(async () => { await trusted.stop(); await untrusted.stop(); });

  test('the app server sees the address nginx saw, not what the client claims, on every transport', async () => {
    for (const transport of ['WebSockets', 'ServerSentEvents', 'LongPolling']) {
      const c = await connect(trusted, 'testhub', { transport, headers: { 'X-Forwarded-For': '6.6.6.6' } });
      assert.equal(await c.invoke('GetClientAddress'), '127.0.0.1', transport);
      assert.equal(await c.invoke('GetHeader', 'X-Forwarded-For'), '127.0.0.1', transport);
      await c.stop();
    }
  });

  test('without --trusted-proxy the proxy is the client, and its header is not believed', async () => {
    const c = await connect(untrusted, 'testhub', { headers: { 'X-Forwarded-For': '6.6.6.6' } });
    assert.equal(await c.invoke('GetClientAddress'), '127.0.0.3');
    await c.stop();
  });
});

describe('behind a trusted proxy (--trusted-proxy)', () => {
  let stack;
  before(async () => { stack = await Stack.start({ relayArgs: ['--trusted-proxy', '127.0.0.0/8,10.0.0.0/8'] }); });
  after(async () => { await stack.stop(); });

  test('the client is the rightmost forwarded address that is not a trusted proxy', async () => {
    // The peer (127.0.0.1) is trusted, so its X-Forwarded-For is read from the right:
    // 10.1.2.3 is a trusted hop, 203.0.113.5 the client; what it claimed before that is not.
    const c = await connect(stack, 'testhub', { headers: { 'X-Forwarded-For': '6.6.6.6, 203.0.113.5, 10.1.2.3' } });
    assert.equal(await c.invoke('GetClientAddress'), '203.0.113.5');
    assert.equal(await c.invoke('GetHeader', 'X-Forwarded-For'), '203.0.113.5');
    await c.stop();
    // Without the header, the trusted peer itself.
    const d = await connect(stack, 'testhub');
    assert.equal(await d.invoke('GetClientAddress'), '127.0.0.1');
    await d.stop();
  });
});

describe('the token policy (asrs.s.*) an app server writes', () => {
  let stack;
  let sticky;
  before(async () => {
    stack = await Stack.start();
    // A second app server, whose clients must be served by it.
    sticky = await stack.startApp(['--server-id', 'app-b', '--server-sticky', 'required']);
  });
  after(async () => { await stack.stop(); });

  /// Negotiates through an app's negotiate endpoint, retrying while the relay does not know
  /// that app server yet: the redirect.
  async function redirect(appAddr, hub) {
    const deadline = Date.now() + 15000;
    for (;;) {
      const answer = await fetch(`http://${appAddr}/${hub}/negotiate?negotiateVersion=1`, { method: 'POST' });
      // 503 until the app server has its server connections.
      if (answer.status === 503) { await sleep(100); continue; }
      const r = await answer.json();
      const relay = await fetch(`${r.url.replace('/client/?', '/client/negotiate?')}&negotiateVersion=1`,
        { method: 'POST', headers: { Authorization: `Bearer ${r.accessToken}` } });
      if (!(await relay.json()).error) return r;
      if (Date.now() > deadline) throw new Error(`${appAddr} never connected`);
      await sleep(100);
    }
  }

  test('a sticky-Required client lands on the app server that negotiated it, every time, with two connected', async () => {
    await redirect(sticky.addr, 'testhub');
    const servers = [];
    for (let i = 0; i < 20; i++) {
      // Blazor's protocol on the binary transports, as a circuit would connect.
      const transport = ['WebSockets', 'ServerSentEvents', 'LongPolling'][i % 3];
      const protocol = transport === 'ServerSentEvents' ? undefined : blazorpack();
      const c = await connect({ appAddr: sticky.addr }, 'testhub', { transport, protocol });
      servers.push(await c.invoke('GetServerId'));
      await c.stop();
    }
    assert.deepEqual(servers, Array(20).fill('app-b'));
    // The other app server's clients are not sticky: held open, they spread over the
    // least-loaded connections of both app servers.
    const open = [];
    for (let i = 0; i < 10; i++) open.push(await connect(stack, 'testhub'));
    const spread = new Set(await Promise.all(open.map((c) => c.invoke('GetServerId'))));
    assert.equal(spread.size, 2, [...spread].join());
    await Promise.all(open.map((c) => c.stop()));
  });

  test('a sticky-Required client whose app server has gone gets a clear error, and never another server', async () => {
    // The app servers of testhub the relay holds, as its metrics say.
    const appServers = async () => {
      const text = await (await fetch(`http://${stack.relayAddr}/metrics`)).text();
      return Number((text.match(/^signalr_relay_app_servers\{hub="testhub"\} (\d+)$/m) || [])[1] ?? 0);
    };
    const before = await appServers();
    const other = await stack.startApp(['--server-id', 'app-c', '--server-sticky', 'required']);
    await until(async () => (await appServers()) > before, 'app-c never attached');
    const { url, accessToken } = await redirect(other.addr, 'testhub');
    other.app.child.kill('SIGKILL');
    // Until the relay has seen it go (at once, on a machine that is not loaded).
    await until(async () => (await appServers()) === before, 'the relay never saw app-c go');
    const c = new signalR.HubConnectionBuilder()
      .withUrl(url, { accessTokenFactory: () => accessToken })
      .configureLogging(signalR.LogLevel.None)
      .build();
    await assert.rejects(c.start(), /'app-c'.*Negotiate again/);
  });

  test("only the transports the token allows (testhub-nowebsockets: asrs.s.htt = 6)", async () => {
    const c = new signalR.HubConnectionBuilder()
      .withUrl(`http://${stack.appAddr}/testhub-nowebsockets`)
      .configureLogging(signalR.LogLevel.None)
      .build();
    await c.start();
    assert.equal(await c.invoke('GetActiveTransportName'), 'ServerSentEvents');
    await c.stop();
    // Asking for WebSockets only fails: negotiate does not offer it.
    const ws = new signalR.HubConnectionBuilder()
      .withUrl(`http://${stack.appAddr}/testhub-nowebsockets`, signalR.HttpTransportType.WebSockets)
      .configureLogging(signalR.LogLevel.None)
      .build();
    await assert.rejects(ws.start());
  });
});

describe('a rolling restart with client migration', () => {
  let stack;
  before(async () => { stack = await Stack.start({ appArgs: ['--server-id', 'app-a'] }); });
  after(async () => { await stack.stop(); });

  test("a leaving app server's clients move to the other one, keeping their ids and losing no invocation", async () => {
    const clients = [];
    for (let i = 0; i < 6; i++) {
      const transport = ['WebSockets', 'ServerSentEvents', 'LongPolling'][i % 3];
      clients.push(await connect(stack, 'testhub', { transport }));
    }
    for (const c of clients) assert.equal(await c.invoke('GetServerId'), 'app-a');
    const ids = clients.map((c) => c.connectionId);
    const closes = [];
    for (const c of clients) c.onclose((e) => closes.push(String(e)));
    // The second app server comes; the first one leaves (SIGTERM: the sample app's graceful
    // shutdown, migration on) while every client keeps invoking.
    const b = await stack.startApp(['--server-id', 'app-b']);
    for (;;) {
      const r = await fetch(`http://${b.addr}/testhub/negotiate`, { method: 'POST' });
      if (r.status === 503) { await sleep(100); continue; }
      const { url, accessToken } = await r.json();
      const relay = await fetch(url.replace('/client/?', '/client/negotiate?'), { method: 'POST', headers: { Authorization: `Bearer ${accessToken}` } });
      if (relay.status === 200) break;
      await sleep(100);
    }
    await sleep(500); // its five server connections
    let running = true;
    let answered = 0;
    const failures = [];
    const loops = clients.map(async (c, i) => {
      for (let n = 0; running; n++) {
        try {
          const echoed = await c.invoke('Echo', `${i}:${n}`);
          if (echoed !== `${i}:${n}`) failures.push(`${i}:${n} came back as ${echoed}`);
          answered++;
        } catch (e) {
          failures.push(`${i}:${n}: ${e.message}`);
          return;
        }
      }
    });
    await sleep(300);
    const exited = new Promise((resolve) => stack.app.child.once('exit', resolve));
    stack.app.child.kill('SIGTERM');
    assert.equal(await exited, 0, 'the app server left cleanly');
    const before = answered;
    await sleep(500);
    running = false;
    await Promise.all(loops);
    assert.deepEqual(failures, []);
    assert.ok(answered > before, 'invocations went on after it left');
    for (const c of clients) assert.equal(await c.invoke('GetServerId'), 'app-b');
    assert.deepEqual(clients.map((c) => c.connectionId), ids);
    assert.deepEqual(closes, []);
    await Promise.all(clients.map((c) => c.stop()));
  });
});

describe("a Blazor circuit's reconnect after a brief network drop (#18)", () => {
  let stack;
  let sticky;
  before(async () => {
    // Clients reach the relay through a proxy whose sockets the test can cut; two app
    // servers, the second one sticky (as the SDK makes every Blazor hub).
    stack = await Stack.start({ clientProxy: true, appArgs: ['--server-id', 'app-a'] });
    sticky = await stack.startApp(['--server-id', 'app-b', '--server-sticky', 'required']);
    for (;;) {
      const answer = await fetch(`http://${sticky.addr}/testhub/negotiate`, { method: 'POST' });
      if (answer.status === 503) { await sleep(100); continue; }
      const r = await answer.json();
      const relay = await fetch(`http://${stack.relayAddr}/client/negotiate?hub=testhub`,
        { method: 'POST', headers: { Authorization: `Bearer ${r.accessToken}` } });
      if (!(await relay.json()).error) break;
      await sleep(100);
    }
  });
  after(async () => { await stack.stop(); });

  for (const transport of ['WebSockets', 'LongPolling']) {
    test(`over ${transport}: the new connection negotiates again and lands on the circuit's server`, async () => {
      const c = new signalR.HubConnectionBuilder()
        .withUrl(`http://${sticky.addr}/testhub`, signalR.HttpTransportType[transport])
        .withHubProtocol(blazorpack())
        .configureLogging(signalR.LogLevel.None)
        .build();
      for (let round = 0; round < 3; round++) {
        const closed = new Promise((resolve) => c.onclose(resolve));
        await c.start();
        const id = c.connectionId;
        assert.equal(await c.invoke('GetServerId'), 'app-b');
        // The network drops (every client socket through the proxy is cut, until the client
        // notices: a long poll may be between two requests)...
        let noticed = false;
        closed.then(() => { noticed = true; });
        for (let i = 0; i < 50 && !noticed; i++) {
          for (const pair of stack.proxy.connections()) { pair.client.destroy(); pair.upstream.destroy(); }
          await sleep(100);
        }
        assert.ok(noticed && (await closed), 'the client saw the drop as an error');
        // ...and Blazor's reconnect starts the connection again, at once: a new negotiate,
        // a new connection, served by the same app server, never another.
        await c.start();
        assert.notEqual(c.connectionId, id);
        assert.equal(await c.invoke('GetServerId'), 'app-b');
        await c.stop();
      }
    });
  }
});
