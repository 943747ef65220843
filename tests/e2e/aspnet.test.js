// Issue #16: classic ASP.NET app servers on Azure's SDK for classic apps
// (Microsoft.Azure.SignalR.AspNet) behind the relay. No .NET runs here: the app server is a raw
// one written from the SDK's source (aspnet_app.js, which cites it), and the client is the
// official classic jQuery client (jquery.signalR 2.4.3 on jQuery 3.7.1) in headless Chromium,
// cross-origin (browser/aspnet.html): it negotiates at the app, which redirects it to the relay's
// /aspnetclient with a token naming the app (`asrs.s.apn`), and from there on it talks to the
// relay, which hands its frames to the app's server connections and the app's writes back.
//
// Sources cited (see /work/scratch/aspnet-facts.md): AZ = Azure/azure-signalr @ 31686ed7
// (ASPNET/ = src/Microsoft.Azure.SignalR.AspNet/, PROTO/ = src/Microsoft.Azure.SignalR.Protocols/,
// T/ = test/Microsoft.Azure.SignalR.AspNet.Tests/), SR = SignalR/SignalR @ 2.4.1.
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const WebSocket = require('ws');
const { SUFFIX, CLASSIC_FILES, Browser, pageVerdict, startProcess, startProxy, jwt, sleep, until } = require('./harness');
const { frame, frames } = require('./service_wire');
const { startAspNetApp, redirectUrl, wrap, persistentResponse, clientInvocation, hubResponse } = require('./aspnet_app');

const TRANSPORTS = ['webSockets', 'serverSentEvents', 'longPolling'];
const FILES = {
  '/aspnet.html': path.join(__dirname, 'browser/aspnet.html'),
  ...CLASSIC_FILES,
};
const APP = 'AzureSignalRTest';
const HUB = 'Chat';
// The SDK's container names: lower-cased, `<app>_<hub>` (ASPNET/EndpointProvider/ServiceEndpointProvider.cs:114-117).
const HUB_KEY = `${APP.toLowerCase()}_${HUB.toLowerCase()}`;
const APP_KEY = `${APP.toLowerCase()}_${APP.toLowerCase()}`;

const hex = (b) => Buffer.from(b).toString('hex');
/// A decoded message with its byte strings as hex, for comparisons.
const plain = (v) => (v instanceof Uint8Array ? { hex: hex(v) }
  : Array.isArray(v) ? v.map(plain)
    : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)])) : v);

// ---------------------------------------------------------------------------------------------
// Golden vectors: the exact frames of the fact sheet's §6.1, which it derives from the SDK's
// writers (PROTO/ServiceProtocol.cs) and from the data of the SDK's AspNet tests. Each is built
// with our encoder (service_wire.js) and the raw app's own writers (aspnet_app.js: wrap,
// persistentResponse, clientInvocation, hubResponse), and must match the hex byte for byte; the
// hex is also decoded back with @msgpack/msgpack (service_wire.frames) into the same message.
// ---------------------------------------------------------------------------------------------

const WRAPPED_HELLO = '1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d80';
const WRAPPED_CONNECTED = '3f9406a0c4397b2243223a2230222c224d223a5b7b2248223a2263686174222c224d223a226563686f222c2241223a5b22436f6e6e6563746564225d7d5d7d80';
const WRAPPED_RESULT = '0f9406a0c4097b2249223a2231227d80';
// The bus value "hello" (T/ServiceMessageBusTests.cs:45), as SignalRMessageParser wraps it.
const hello = () => wrap(persistentResponse('"hello"'));
// What the SDK's test ChatHub's OnConnected writes to group `note` (T/TestHubs/ChatHub.cs:14-18).
const connectedNote = () => wrap(persistentResponse(clientInvocation('chat', 'echo', ['Connected'])));
// The query of the SDK's OpenConnection test (T/ServiceConnectionTests.cs:97).
const OPEN_QUERY = '?transport=webSockets&connectionToken=conn1&connectionData=%5B%7B%22name%22%3A%22chat%22%7D%5D';

const GOLDEN = [
  // Handshakes (PROTO/ServiceProtocol.cs:314-332; ASPNET/ServerConnections/ServiceConnection.cs:50-58).
  ['HandshakeRequest, default connection', () => frame([1, 1, 0, '', 0, {}]), '0796010100a00080'],
  ['HandshakeRequest, on-demand with target', () => frame([1, 1, 1, 'abc', 0, {}]), '0a96010101a36162630080'],
  ['HandshakeResponse OK (T/TestClasses/TestServiceConnectionProxy.cs:51)', () => frame([2, '', {}, null]), '059402a080c0'],
  ['HandshakeResponse with an error', () => frame([2, 'bad', {}, null]), '089402a362616480c0'],
  // Pings (PROTO/ServiceProtocol.cs:354-362; COMMON/ServiceConnections/ServiceConnectionContainerBase.cs:563-566).
  ['keep-alive Ping', () => frame([3]), '029103'],
  ['status Ping', () => frame([3, 'status', '1']), '0b9303a6737461747573a131'],
  // The payloads the app wraps (ASPNET/HubHost/SignalRMessageParser.cs:169-188).
  ['wrapped bus value "hello"', hello, WRAPPED_HELLO],
  ['wrapped ChatHub "Connected" note', connectedNote, WRAPPED_CONNECTED],
  ['wrapped hub result {"I":"1"} (SR Hubs/HubResponse.cs)', () => wrap(hubResponse({ id: '1' })), WRAPPED_RESULT],
  // The app's data messages (PROTO/ServiceProtocol.cs:443-494,552-562).
  ['BroadcastData for h-chat', () => frame([10, [], { json: hello() }, {}]), `2a940a9081a46a736f6ec41e${WRAPPED_HELLO}80`],
  ['GroupBroadcastData for hg-chat.note', () => frame([13, 'hg-chat.note', [], { json: connectedNote() }, {}, [], null]),
    `5b970dac68672d636861742e6e6f74659081a46a736f6ec440${WRAPPED_CONNECTED}8090c0`],
  ['UserData for user1', () => frame([8, 'user1', { json: hello() }, {}]), `2f9408a5757365723181a46a736f6ec41e${WRAPPED_HELLO}80`],
  ['ConnectionData push for hc-hub1.c1', () => frame([6, 'c1', hello(), {}]), `269406a26331c41e${WRAPPED_HELLO}80`],
  ['ConnectionData hub result to conn1', () => frame([6, 'conn1', wrap(hubResponse({ id: '1' })), {}]), `1b9406a5636f6e6e31c410${WRAPPED_RESULT}80`],
  // Group operations and acks (PROTO/ServiceProtocol.cs:591-609,648-656).
  ['JoinGroupWithAck', () => frame([18, 'conn1', 'hg-chat.group1', 1, {}]), '199512a5636f6e6e31ae68672d636861742e67726f7570310180'],
  ['LeaveGroupWithAck', () => frame([19, 'conn1', 'hg-chat.group1', 2, {}]), '199513a5636f6e6e31ae68672d636861742e67726f7570310280'],
  ['Ack Ok', () => frame([20, 1, 1, '', {}]), '0695140101a080'],
  ['Ack NotFound', () => frame([20, 1, 2, '', {}]), '0695140102a080'],
  // The client's life as the service tells it (PROTO/ServiceProtocol.cs:364-397).
  ['OpenConnection of T/ServiceConnectionTests.cs:97', () => frame([4, 'conn1', {}, {}, OPEN_QUERY, {}]),
    '6b9604a5636f6e6e318080d95e3f7472616e73706f72743d776562536f636b65747326636f6e6e656374696f6e546f6b656e3d636f6e6e3126636f6e6e656374696f6e446174613d2535422537422532326e616d652532322533412532326368617425323225374425354480'],
  ['ConnectionData, the client frame of T/ServiceConnectionTests.cs:114',
    () => frame([6, 'conn1', Buffer.from('{"H":"chat","M":"JoinGroup","A":["user1","group1"],"I":1}'), {}]),
    '449406a5636f6e6e31c4397b2248223a2263686174222c224d223a224a6f696e47726f7570222c2241223a5b227573657231222c2267726f757031225d2c2249223a317d80'],
  ['ConnectionData asrs:reconnect (ASPNET/ServerConnections/ServiceConnection.cs:22)',
    () => frame([6, 'conn1', Buffer.from('asrs:reconnect'), {}]), '199406a5636f6e6e31c40e617372733a7265636f6e6e65637480'],
  ['CloseConnection from the service', () => frame([5, 'conn1', '', {}, {}]), '0b9505a5636f6e6e31a08080'],
  // ServiceError (PROTO/ServiceProtocol.cs:573-578), which the SDK reads (ServiceConnectionBase.cs:282-298);
  // not in the fact sheet, derived by hand: length 6, fixarray 2, 15, fixstr "bad".
  ['ServiceError', () => frame([15, 'bad']), '06920fa3626164'],
  ['CloseConnection of a duplicate id (ServiceConnection.cs:113-114)', () => frame([5, 'conn1', 'Duplicate connection ID conn1', {}, {}]),
    '289505a5636f6e6e31bd4475706c696361746520636f6e6e656374696f6e20494420636f6e6e318080'],
];

test('golden vectors: our service-protocol frames and the raw app\'s payloads match the SDK\'s layouts byte for byte', () => {
  for (const [name, build, want] of GOLDEN) {
    const got = build();
    assert.equal(hex(got), want, name);
    // And the other way: a second decoder reads the hex back as the same message.
    const decoded = frames(Buffer.from(want, 'hex'));
    assert.equal(decoded.length, 1, name);
    assert.deepEqual(plain(decoded[0]), plain(frames(got)[0]), name);
  }
  // The double wrapping, unwrapped as the relay must (fact sheet §8.2): json → frame → [6, "", bin, {}] → JSON.
  const [, , payloads] = frames(Buffer.from(GOLDEN.find(([n]) => n.startsWith('BroadcastData'))[2], 'hex'))[0];
  const [inner] = frames(Buffer.from(payloads.json));
  assert.deepEqual(inner.slice(0, 2), [6, '']);
  assert.deepEqual(JSON.parse(Buffer.from(inner[2]).toString()), { C: '0', M: ['hello'] });
});

test('golden vectors: the app\'s RedirectUrl is the SDK\'s for each negotiate of T/RunAzureSignalRTests.cs:506-536', () => {
  // (path + query, request id) → RedirectUrl, endpoint http://localhost.
  const rows = [
    ['/user/path/negotiate', '', 'http://localhost/aspnetclient'],
    ['/user/path/negotiate?clientProtocol=1.89', 'a', 'http://localhost/aspnetclient'],
    ['/user/path/negotiate?clientProtocol=1.0', 'a', 'http://localhost/aspnetclient'],
    ['/user/path/negotiate?clientProtocol=2.1', 'a', 'http://localhost/aspnetclient?asrs_request_id=a&asrs.op=%2Fuser%2Fpath'],
    ['/negotiate?%3DKey=%3Fa%3Dc&clientProtocol=2.1', '?a=c', 'http://localhost/aspnetclient?%3DKey=%3Fa%3Dc&asrs_request_id=%3Fa%3Dc'],
    ['/user/negotiate?clientProtocol=2.2&customKey=customeValue', '&', 'http://localhost/aspnetclient?customKey=customeValue&asrs_request_id=%26&asrs.op=%2Fuser'],
  ];
  for (const [pathAndQuery, id, want] of rows) {
    const u = new URL(pathAndQuery, 'http://localhost');
    assert.equal(redirectUrl('http://localhost/', u.pathname, [...u.searchParams.entries()], id), want, pathAndQuery);
  }
});


/// Waits until `flag` is set on the page, or the page gave up with a result.
async function pageFlag({ page }, flag, timeout = 30000, diagnostics = () => '') {
  await page.waitForFunction((f) => window[f] || window.__result, flag, { timeout });
  const early = await page.evaluate(() => window.__result);
  if (early) throw new Error(`the page ended before ${flag}: ${early}\n${await page.evaluate(() => document.getElementById('log').textContent)}\n${diagnostics()}`);
}

const tail = (text, n = 40) => text.split('\n').slice(-n).join('\n');


// ---------------------------------------------------------------------------------------------
// Against the relay.
// ---------------------------------------------------------------------------------------------

describe('a classic ASP.NET app server on the Azure SDK (raw, from its source) behind the relay', () => {
  let relay;
  let relayAddr;
  let key;
  let app;
  let browser;

  before(async () => {
    key = crypto.randomBytes(16).toString('hex');
    relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--log', 'warn']);
    relayAddr = await relay.ready;
    // One app, hub `Chat` (mixed case: the descriptor name the bus keys and `H` carry), two
    // sockets per container.
    app = await startAspNetApp({ relayAddr, key, app: APP, hubs: [HUB], connectionsPerHub: 2 });
    browser = await Browser.start(FILES);
  });
  after(async () => {
    if (browser) await browser.close();
    if (app) await app.stop();
    if (relay && relay.child.exitCode === null) relay.child.kill('SIGTERM');
  });

  const diagnostics = () => `--- app log ---\n${tail(app.log())}\n--- relay ---\n${tail(relay.output())}`;

  /// Opens aspnet.html in `mode` over `transport`, once every server connection of the app is up.
  async function open(transport, mode) {
    await app.ready();
    return browser.open('/aspnet.html', { app: `http://${app.addr}`, transport, mode });
  }

  const verdict = (tab, timeout) => pageVerdict(tab, timeout, diagnostics);
  const waitForFlag = (tab, flag, timeout) => pageFlag(tab, flag, timeout, diagnostics);

  /// What every scenario must leave true: the app refused no client, and every message for a
  /// client came on the socket that carried its OpenConnection (the SDK looks clients up per
  /// socket and drops anything else silently: ASPNET/ServerConnections/ServiceConnection.cs:166-182).
  function sdkContract(ids, since) {
    const refused = app.refused.slice(since.refused).filter((r) => ids.includes(r.id));
    assert.deepEqual(refused, [], `the app refused clients: ${JSON.stringify(refused)}\n${diagnostics()}`);
    const stray = app.ignored.slice(since.ignored).filter((m) => m.type === 'ConnectionData');
    assert.deepEqual(stray, [], `ConnectionData arrived on a socket that does not carry the client\n${diagnostics()}`);
  }
  const mark = () => ({ refused: app.refused.length, ignored: app.ignored.length, sent: app.sentLog.length, acks: app.acks.length, events: app.events.length });

  /// The OpenConnection the app got for `id`.
  function openOf(id) {
    const o = app.openMessages.filter((x) => x.message[1] === id).at(-1);
    assert.ok(o, `the app got no OpenConnection for ${id}\n${diagnostics()}`);
    return o;
  }

  test('the app\'s negotiate redirects to the relay\'s /aspnetclient with the SDK\'s token, which the relay accepts', async () => {
    await app.ready();
    const connectionData = encodeURIComponent(JSON.stringify([{ name: 'chat' }]));
    const r = await fetch(`http://${app.addr}/signalr/negotiate?clientProtocol=2.1&user=u1&connectionData=${connectionData}`);
    assert.equal(r.status, 200);
    const text = await r.text();
    // Exactly these properties, in this order (ASPNET/Middleware/NegotiateMiddleware.cs:253-271).
    assert.deepEqual(Object.keys(JSON.parse(text)), ['ProtocolVersion', 'RedirectUrl', 'AccessToken', 'TryWebSockets']);
    const body = JSON.parse(text);
    assert.equal(body.ProtocolVersion, '2.0');
    assert.match(body.RedirectUrl, new RegExp(`^http://${relayAddr.replace(/\./g, '\\.')}/aspnetclient\\?user=u1&asrs_request_id=[^&]+&asrs\\.op=%2Fsignalr$`));
    const claims = JSON.parse(Buffer.from(body.AccessToken.split('.')[1], 'base64url'));
    assert.equal(claims.aud, 'http://127.0.0.1/aspnetclient');
    assert.equal(claims['asrs.s.apn'], APP);
    assert.equal(claims['asrs.s.uid'], 'u1');
    // The classic client then negotiates at the RedirectUrl with the token as a bearer
    // (SR jquery.signalR.core.js: redirectQs replaces its own query; Authorization on AJAX).
    const [base, qs] = body.RedirectUrl.split('?');
    const url = `${base}/negotiate?clientProtocol=2.1&${qs}&connectionData=${connectionData}`;
    const ok = await fetch(url, { headers: { Authorization: `Bearer ${body.AccessToken}` } });
    const okText = await ok.text();
    assert.equal(ok.status, 200, `${okText}\n${diagnostics()}`);
    const negotiated = JSON.parse(okText);
    assert.equal(typeof negotiated.ConnectionToken, 'string');
    assert.ok(negotiated.ConnectionToken.length > 0);
    assert.equal(typeof negotiated.ConnectionId, 'string');
    // Without the token, or with one signed with another key, the relay does not negotiate.
    for (const [why, headers] of [
      ['no token', {}],
      ['another key', { Authorization: `Bearer ${jwt({ ...claims }, 'not-the-key')}` }],
    ]) {
      const refused = await fetch(url, { headers });
      const refusedText = await refused.text();
      assert.ok(!(refused.status === 200 && /ConnectionToken/.test(refusedText)), `${why}: ${refused.status} ${refusedText}`);
    }
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: a hub result, Clients.Caller and Clients.Client pushes, the user's query and the stop reach through the relay`, async () => {
      const since = mark();
      const { ids: [id] } = await verdict(await open(transport, 'echo'), 30000);
      sdkContract([id], since);
      // The OpenConnection the relay sent (ASPNET/ClientConnections/ClientConnectionManager.cs:77-110
      // reads its claims, headers and query): the 6-element form, a query with a non-empty
      // connectionToken (SR PersistentConnection.cs:219-225) and connectionData naming the hub.
      const { message, container } = openOf(id);
      assert.equal(message.length, 6);
      assert.equal(typeof message[3], 'object');
      const query = new URLSearchParams(message[4].replace(/^\?/, ''));
      assert.ok(query.get('connectionToken'), `no connectionToken in ${message[4]}`);
      assert.deepEqual(JSON.parse(query.get('connectionData')).map((h) => h.name.toLowerCase()), ['chat']);
      assert.equal(query.get('transport'), transport);
      assert.equal(query.get('user'), 'alice');
      assert.equal(container, HUB, `the relay opened the client on a socket of ${container}, not of its hub ${HUB_KEY}`);
      // The page stopped: the relay tells the app with a CloseConnection on the same socket,
      // and the app runs OnDisconnected (ServiceConnection.cs:119-122).
      await until(() => app.connections.get(id).state === 'closed', `the app never heard that ${id} stopped (state ${app.connections.get(id).state})\n${diagnostics()}`, 15000);
    });

    test(`${transport}: hub state travels with an invocation and the app's changes come back`, async () => {
      const since = mark();
      const { ids } = await verdict(await open(transport, 'state'), 30000);
      sdkContract(ids, since);
    });

    test(`${transport}: a HubException reaches the client with its data, a plain exception only as the generic error`, async () => {
      const since = mark();
      const { ids } = await verdict(await open(transport, 'errors'), 30000);
      sdkContract(ids, since);
    });

    test(`${transport}: a method reporting progress fails as it does on the real SDK (its bus rejects c- keys), and the connection goes on`, async () => {
      const since = mark();
      const { ids: [id] } = await verdict(await open(transport, 'progress'), 30000);
      sdkContract([id], since);
      // The failure is the SDK's: NotSupportedException for bus key c-{id}
      // (ASPNET/HubHost/SignalRMessageParser.cs:163-166).
      const quoted = id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      assert.match(app.log(), new RegExp(`countWithProgress on ${quoted} threw NotSupportedException: Message c-${quoted} is not supported\\.`));
    });

    test(`${transport}: group join and leave are acked on the app connection, group sends reach members only`, async () => {
      const since = mark();
      const { ids } = await verdict(await open(transport, 'groups'), 45000);
      sdkContract(ids, since);
      // Joins and leaves went on the app connection with the whole bus key as the group name
      // (ASPNET/HubHost/SignalRMessageParser.cs:59-91), and were acked Ok there; leaving a group
      // never joined was acked Ok or NotFound (COMMON/Utilities/AckHandler.cs:46-55).
      const ops = app.sentLog.slice(since.sent).filter((s) => s.message[0] === 18 || s.message[0] === 19);
      assert.ok(ops.length >= 4, `group operations sent: ${ops.length}`);
      for (const op of ops) {
        assert.equal(op.container, APP);
        assert.match(op.message[2], /^hg-Chat\./);
      }
      const acks = app.acks.slice(since.acks);
      assert.ok(acks.every((a) => a.container === APP), `acks on other containers: ${JSON.stringify(acks)}`);
      const statusOf = (type, group) => {
        const op = ops.find((o) => o.message[0] === type && o.message[2] === group);
        return (acks.find((a) => a.id === op.message[3]) || {}).status;
      };
      assert.equal(statusOf(18, 'hg-Chat.g1'), 1);
      assert.equal(statusOf(19, 'hg-Chat.g1'), 1);
      assert.ok([1, 2].includes(statusOf(19, 'hg-Chat.never-joined')));
    });

    test(`${transport}: a broadcast reaches both connections, Clients.Others all but the caller`, async () => {
      const since = mark();
      const { ids } = await verdict(await open(transport, 'broadcast'), 30000);
      sdkContract(ids, since);
    });

    test(`${transport}: a user send reaches every connection of that user and no other`, async () => {
      const since = mark();
      const { ids } = await verdict(await open(transport, 'user'), 45000);
      sdkContract(ids, since);
    });

    test(`${transport}: a client's start and stop reach the app as OnConnected and OnDisconnected`, async () => {
      const since = mark();
      const { ids: [, b] } = await verdict(await open(transport, 'lifecycle'), 30000);
      sdkContract([b], since);
      const close = app.closes.filter((c) => c.id === b);
      assert.equal(close.length, 1, `CloseConnections for ${b}: ${JSON.stringify(close)}`);
      assert.equal(close[0].socket, openOf(b).socket, 'the CloseConnection came on another socket than the OpenConnection');
    });

    test(`${transport}: when the app's hub connections drop, the client notices, comes back and works`, { timeout: 150000 }, async () => {
      const since = mark();
      const tab = await open(transport, 'drop');
      await waitForFlag(tab, '__ready');
      const before = await tab.page.evaluate(() => window.__ids);
      // The SDK reopens each lost socket; the clients those sockets carried are gone for the app
      // (OnDisconnected, ServiceConnection.cs:81-85,133-153) and nothing is sent for them.
      const carried = app.dropHubConnections();
      for (const id of before) assert.ok(carried.includes(id), `${id} was not on a hub connection (carried: ${carried})`);
      const { after: now } = await verdict(tab, 120000);
      sdkContract([...before, ...now], since);
      for (const id of before) {
        assert.ok(app.events.slice(since.events).some((e) => e.event === 'disconnected' && e.id === id && e.why === 'server connection lost'), `no OnDisconnected for ${id}`);
      }
      // Working again means the app knows the connection again: a new OpenConnection after the
      // drop, for a new id or the same one (a reconnect).
      for (const id of now) {
        assert.ok(app.events.slice(since.events).filter((e) => e.id === id && e.event === 'connected').length >= (before.includes(id) ? 2 : 1), `no OpenConnection for ${id} after the drop`);
      }
      await app.ready();
    });
  }

  test('a server connection to /aspnetserver/ with a wrong audience or key is refused, and the app\'s client keeps working', async () => {
    const tab = await open('webSockets', 'bystander');
    await waitForFlag(tab, '__ready');
    const now = Math.floor(Date.now() / 1000);
    const token = (aud, signingKey = key) => jwt({ aud, nameid: 'intruder', iat: now, nbf: now, exp: now + 600 }, signingKey);
    const good = `http://127.0.0.1/aspnetserver/?hub=${HUB_KEY}`;
    // A server connection as the SDK opens it (ASPNET/EndpointProvider/ServiceEndpointProvider.cs:91-107),
    // with `bearer`: how it ended.
    const attempt = (bearer) => new Promise((resolve) => {
      const ws = new WebSocket(`ws://${relayAddr}/aspnetserver/?hub=${HUB_KEY}&cid=${crypto.randomUUID()}`, {
        headers: { Authorization: `Bearer ${bearer}`, 'X-ASRS-Server-Id': 'intruder', 'Asrs-User-Agent': 'Microsoft.Azure.SignalR.AspNet/1.25.1' },
      });
      const done = (outcome) => { clearTimeout(timer); ws.terminate(); resolve(outcome); };
      const timer = setTimeout(() => done('no answer within 10 s'), 10000);
      ws.on('unexpected-response', (_req, res) => done(`refused: HTTP ${res.statusCode}`));
      ws.on('error', () => {});
      ws.on('open', () => ws.send(frame([1, 1, 0, '', 0, {}])));
      ws.on('message', (data) => {
        const [m] = frames(Buffer.from(data));
        if (m[0] === 2 && !m[1]) done('accepted');
        else if (m[0] === 2) done(`refused: handshake error ${m[1]}`);
      });
      ws.on('close', () => done('refused: closed'));
    });
    for (const [why, bearer] of [
      ['the ASP.NET Core /server/ audience', token(`http://127.0.0.1/server/?hub=${HUB_KEY}`)],
      ['another hub\'s audience', token(`http://127.0.0.1/aspnetserver/?hub=${APP_KEY}`)],
      ['the client audience', token('http://127.0.0.1/aspnetclient')],
      ['another key', token(good, 'not-the-key')],
    ]) {
      const outcome = await attempt(bearer);
      assert.match(outcome, /^refused/, `${why}: ${outcome}`);
    }
    // The same connection with the right audience and key is accepted (so the refusals above
    // are about the token).
    assert.equal(await attempt(token(good)), 'accepted');
    await tab.page.evaluate(() => { window.__go = true; });
    await verdict(tab, 30000);
    assert.ok(app.slots().every((s) => s.connected), `the app lost server connections:\n${app.log()}`);
  });

  test('the relay keeps the classic app\'s server connections alive (the SDK drops one silent for 30 s)', async () => {
    await app.ready();
    // Every socket must hear from the relay: the SDK's only liveness check is that something
    // arrives (COMMON/ServiceConnections/ServiceConnectionBase.cs:23,597-615).
    const start = Date.now();
    const heard = (s) => s.lastHeard > start;
    await until(() => app.slots().every(heard), `sockets the relay stayed silent on: ${app.slots().filter((s) => !heard(s)).map((s) => s.label)}`, 20000);
    assert.equal(app.timeouts || 0, 0, `the app timed out server connections:\n${app.log()}`);
  });
});

describe('a classic client of the raw SDK app whose own sockets are cut', () => {
  let relay;
  let proxy;
  let app;
  let browser;

  before(async () => {
    const key = crypto.randomBytes(16).toString('hex');
    relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--log', 'warn']);
    const relayAddr = await relay.ready;
    // Clients reach the relay through the proxy (the connection string's ClientEndpoint); the
    // app's server connections go straight to it.
    proxy = await startProxy(Number(relayAddr.split(':')[1]));
    app = await startAspNetApp({ relayAddr, clientEndpoint: `http://127.0.0.1:${proxy.port}/`, key, app: APP, hubs: [HUB] });
    browser = await Browser.start(FILES);
  });
  after(async () => {
    if (browser) await browser.close();
    if (proxy) proxy.close();
    if (app) await app.stop();
    if (relay && relay.child.exitCode === null) relay.child.kill('SIGTERM');
  });

  const diagnostics = () => `--- app log ---\n${tail(app.log())}\n--- relay ---\n${tail(relay.output())}`;

  for (const transport of TRANSPORTS) {
    test(`${transport}: after its sockets are cut the client reconnects with its id, the app hears asrs:reconnect (OnReconnected), groups hold`, { timeout: 120000 }, async () => {
      await app.ready();
      const since = app.events.length;
      const tab = await browser.open('/aspnet.html', { app: `http://${app.addr}`, transport, mode: 'cut' });
      await pageFlag(tab, '__ready', 30000, diagnostics);
      // As classic.test.js: Chromium retries a request that fails on a reused keep-alive socket,
      // so cut again until both connections noticed, and stop well before jquery.signalR's
      // reconnect delay (2 s, 3 s for long polling) so the reconnect itself is not cut.
      const end = Date.now() + 1500;
      let cuts = 0;
      while (Date.now() < end) {
        cuts += proxy.cutAll();
        await sleep(100);
        if (await tab.page.evaluate(() => window.__lost_all || Boolean(window.__result))) break;
      }
      assert.ok(cuts > 0, 'no client sockets went through the proxy');
      const { ids } = await pageVerdict(tab, 60000, diagnostics);
      // The logical connections lived on in the app: no second OpenConnection, no OnDisconnected
      // before the page's stop, and the relay's `asrs:reconnect` ran OnReconnected
      // (ASPNET/ServerConnections/ServiceConnection.cs:22,264-267).
      const events = app.events.slice(since);
      for (const id of ids) {
        const mine = events.filter((e) => e.id === id).map((e) => e.event);
        assert.deepEqual(mine.slice(0, 2), ['connected', 'reconnected'], `${id}: ${mine}`);
        assert.equal(app.opened.filter((x) => x === id).length, 1, `${id} was opened again`);
      }
      assert.deepEqual(app.ignored.filter((m) => m.type === 'ConnectionData'), []);
    });
  }
});
