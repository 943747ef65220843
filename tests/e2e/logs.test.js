// The relay's log (#13): every client connect and disconnect at info with its hub, connection
// id, transport, protocol and reason; JSON lines on request; and never an access key, a JWT or
// a connection token, even at debug.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, jwt, sleep, signalR } = require('./harness');

let stack;
before(async () => { stack = await Stack.start({ relayLog: 'debug', relayArgs: ['--log-format', 'json'] }); });
after(async () => { await stack.stop(); });

test('a full run at debug, in JSON: connects and disconnects logged, no secret anywhere', async () => {
  const secrets = [stack.key];
  const connectionIds = [];
  for (const transport of ['WebSockets', 'ServerSentEvents', 'LongPolling']) {
    // Negotiate by hand, to know the token and the connection token the relay handed out.
    const redirect = await (await fetch(`http://${stack.appAddr}/testhub/negotiate?negotiateVersion=1`, { method: 'POST' })).json();
    secrets.push(redirect.accessToken);
    const negotiated = await (await fetch(`${redirect.url.replace('/client/?', '/client/negotiate?')}&negotiateVersion=1`,
      { method: 'POST', headers: { Authorization: `Bearer ${redirect.accessToken}` } })).json();
    secrets.push(negotiated.connectionToken);
    // The connection tokens the client itself gets (and sends as `id`) are secrets too.
    class Recording extends signalR.DefaultHttpClient {
      async send(request) {
        const response = await super.send(request);
        if (request.url.includes('/negotiate') && typeof response.content === 'string') {
          const { connectionToken } = JSON.parse(response.content);
          if (connectionToken) secrets.push(connectionToken);
        }
        return response;
      }
    }
    const c = new signalR.HubConnectionBuilder()
      .withUrl(redirect.url, {
        transport: signalR.HttpTransportType[transport],
        accessTokenFactory: () => redirect.accessToken,
        httpClient: new Recording(signalR.NullLogger.instance),
      })
      .configureLogging(signalR.LogLevel.None)
      .build();
    await c.start();
    assert.equal(await c.invoke('Echo', 'logged?'), 'logged?');
    connectionIds.push([c.connectionId, transport]);
    await c.stop();
  }
  // Refusals quote no token either: a forged one, and one for another hub.
  const forged = jwt({ aud: 'http://127.0.0.1/client/?hub=testhub', exp: Math.floor(Date.now() / 1000) + 60 }, 'wrong key');
  secrets.push(forged);
  assert.equal((await stack.relayNegotiate('testhub', forged)).status, 401);
  const other = stack.clientToken('chat');
  secrets.push(other);
  assert.equal((await stack.relayNegotiate('testhub', other)).status, 401);
  await sleep(300);

  const lines = stack.relay.output().split('\n').filter((l) => l.startsWith('{'));
  const events = lines.map((l) => JSON.parse(l));
  for (const [id, transport] of connectionIds) {
    const label = { WebSockets: 'websockets', ServerSentEvents: 'sse', LongPolling: 'longpolling' }[transport];
    const connected = events.find((e) => e.fields.message === 'client connected' && e.fields.connection_id === id);
    assert.ok(connected, `no "client connected" for ${id}`);
    assert.equal(connected.level, 'INFO');
    assert.equal(connected.fields.hub, 'testhub');
    assert.equal(connected.fields.transport, label);
    assert.equal(connected.fields.protocol, 'json');
    const gone = events.find((e) => e.fields.message === 'client disconnected' && e.fields.connection_id === id);
    assert.ok(gone, `no "client disconnected" for ${id}`);
    assert.equal(gone.level, 'INFO');
    assert.equal(gone.fields.reason, 'normal');
  }
  assert.ok(events.some((e) => e.fields.message === 'app server connection opened' && e.fields.server_id));
  assert.ok(events.some((e) => e.level === 'DEBUG'), 'the run was logged at debug');

  assert.ok(secrets.length >= 10, `the run handed out tokens: ${secrets.length}`);
  const log = stack.relay.output();
  for (const secret of secrets.filter(Boolean)) assert.ok(!log.includes(secret), `the log holds a secret: ${secret.slice(0, 12)}…`);
  assert.doesNotMatch(log, /eyJ[\w-]+\.[\w-]+\.[\w-]+/, 'the log holds a JWT');
});

test('a wrong access key is explained on both sides, once on the app server', async () => {
  const { startProcess, SUFFIX } = require('./harness');
  const relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', 'the-right-key', '--log', 'info']);
  const addr = await relay.ready;
  const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', `Endpoint=http://${addr};AccessKey=a-wrong-key;Version=1.0;`,
    '--listen', '127.0.0.1:0', '--log', 'warn']);
  await app.ready;
  try {
    for (let i = 0; i < 100 && !/check the connection string's AccessKey/.test(app.output()); i++) await sleep(50);
    assert.match(app.output(), /the relay refused this app server's token \(401 Unauthorized: .*invalid access token signature\): check the connection string's AccessKey/);
    assert.match(relay.output(), /refused: Unauthorized: invalid access token signature at="\/server\/" status=401/);
    // Twenty connections (four hubs, five each) failed alike: the app server said so once.
    await sleep(500);
    assert.equal(app.output().match(/check the connection string's AccessKey/g).length, 1);
    // Its negotiate says it is not connected, rather than send clients on.
    assert.equal((await fetch(`http://${app.output().match(/listening on http:\/\/([0-9.:]+)/)[1]}/chat/negotiate`, { method: 'POST' })).status, 503);
  } finally {
    app.child.kill('SIGKILL');
    relay.child.kill('SIGKILL');
  }
});
