// Serverless mode (#14): no app server. A backend (here, the test) serves negotiate with
// `{url, accessToken}` as Azure Functions' negotiate does, minting the client's token itself;
// the official clients connect to the relay over every transport and protocol, and the
// backend reaches them through the REST API. An app server's own connection is refused with
// the reason.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const { SUFFIX, TRANSPORTS, startProcess, startClient, jwt, next, sleep, until, signalR } = require('./harness');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');

const key = crypto.randomBytes(16).toString('hex');
let relay;
let relayAddr;
let backend;
let backendAddr;

before(async () => {
  relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--service-mode', 'serverless', '--log', 'info']);
  relayAddr = await relay.ready;
  // The backend's negotiate: a client token for the hub, the user id in `asrs.s.uid`, as the
  // Management SDK mints it.
  backend = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://backend');
    const hub = url.pathname.split('/')[1];
    const now = Math.floor(Date.now() / 1000);
    const clientUrl = `http://${relayAddr}/client/?hub=${hub}`;
    const accessToken = jwt({ aud: clientUrl, iat: now, exp: now + 3600, 'asrs.s.uid': url.searchParams.get('user') }, key);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' });
    res.end(JSON.stringify({ url: clientUrl, accessToken }));
  });
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  backendAddr = `127.0.0.1:${backend.address().port}`;
});

after(() => {
  if (relay.child.exitCode === null) relay.child.kill('SIGKILL');
  backend.close();
});

function client(user, { transport = 'WebSockets', msgpack = false } = {}) {
  return startClient(`http://${backendAddr}/chat?user=${user}`, signalR.HttpTransportType[transport], { msgpack });
}

/// A REST call as the Management SDK makes it (2022-06-01).
function rest(method, path, { query = '', body } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const aud = `http://${relayAddr}${path}?api-version=2022-06-01`;
  const headers = { Authorization: `Bearer ${jwt({ aud, iat: now, exp: now + 300 }, key)}` };
  if (body) headers['Content-Type'] = 'application/json';
  return fetch(`${aud}${query ? `&${query}` : ''}`, { method, headers, body: body && JSON.stringify(body) });
}

for (const [transport, protocols] of TRANSPORTS) {
  for (const msgpack of protocols) {
    test(`a serverless client over ${transport}${msgpack ? ' (MessagePack)' : ''} hears every kind of REST send`, async () => {
      const user = `u-${transport}-${msgpack}`;
      const c = await client(user, { transport, msgpack });
      const other = await client(`${user}-other`);
      try {
        let got = next(c, 'news');
        assert.equal((await rest('POST', '/api/hubs/chat/:send', { query: `excluded=${other.connectionId}`, body: { target: 'news', arguments: ['hub', 1] } })).status, 202);
        assert.deepEqual(await got, ['hub', 1]);
        got = next(c, 'news');
        assert.equal((await rest('POST', `/api/hubs/chat/users/${user}/:send`, { body: { target: 'news', arguments: ['user'] } })).status, 202);
        assert.deepEqual(await got, ['user']);
        assert.equal((await rest('PUT', `/api/hubs/chat/groups/g/connections/${c.connectionId}`)).status, 200);
        got = next(c, 'news');
        assert.equal((await rest('POST', '/api/hubs/chat/groups/g/:send', { body: { target: 'news', arguments: ['group'] } })).status, 202);
        assert.deepEqual(await got, ['group']);
        got = next(c, 'news');
        assert.equal((await rest('POST', `/api/hubs/chat/connections/${c.connectionId}/:send`, { body: { target: 'news', arguments: ['connection'] } })).status, 202);
        assert.deepEqual(await got, ['connection']);
        assert.equal((await rest('HEAD', `/api/hubs/chat/users/${user}`)).status, 200);
        // A client's own invocation goes upstream; with none configured, it is ignored and
        // the client stays (as Azure does).
        await c.send('hello', 'nobody listens');
        await sleep(100);
        assert.equal(c.state, signalR.HubConnectionState.Connected);
        assert.equal((await rest('DELETE', `/api/hubs/chat/connections/${c.connectionId}`, { query: 'reason=done' })).status, 200);
        assert.match(String(await c.closedWith), /done/);
      } finally {
        await c.stop();
        await other.stop();
      }
    });
  }
}

test('an app server\'s own connection is refused in serverless mode, and says why', async () => {
  const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', `Endpoint=http://${relayAddr};AccessKey=${key};Version=1.0;`,
    '--listen', '127.0.0.1:0', '--log', 'warn', '--connections-per-hub', '1']);
  try {
    await app.ready;
    await until(() => /serverless mode/.test(app.output()), `the app server did not say why: ${app.output()}`, 10000);
    const metrics = await (await fetch(`http://${relayAddr}/metrics`)).text();
    assert.doesNotMatch(metrics, /signalr_relay_server_connections\{hub="chat"\} [1-9]/);
  } finally {
    app.child.kill('SIGKILL');
  }
});

test('serverless clients hear version 1 sends, the binary body, and a group their user joined before connecting', async () => {
  const { encode } = require('@msgpack/msgpack');
  const v1 = (method, urlPath, body, contentType = 'application/json') => {
    const now = Math.floor(Date.now() / 1000);
    const url = `http://${relayAddr}${urlPath}`;
    const headers = { Authorization: `Bearer ${jwt({ aud: url, iat: now, exp: now + 300 }, key)}`, 'Content-Type': contentType };
    return fetch(url, { method, headers, body });
  };
  // The membership comes first; the user connects after.
  assert.equal((await v1('PUT', '/api/v1/hubs/chat/groups/early/users/late-comer')).status, 202);
  const json = await client('late-comer');
  const mp = await client('mp-user', { msgpack: true });
  try {
    let got = next(json, 'early');
    assert.equal((await v1('POST', '/api/v1/hubs/chat/groups/early', JSON.stringify({ Target: 'early', Arguments: ['in'] }))).status, 202);
    assert.deepEqual(await got, ['in']);
    got = next(mp, 'v1');
    assert.equal((await v1('POST', '/api/v1/hubs/chat/users/mp-user', JSON.stringify({ target: 'v1', arguments: [7] }))).status, 202);
    assert.deepEqual(await got, [7]);
    // The Management SDK's binary body: each client gets the frame of its protocol.
    const frame = (protocol, text) => {
      const m = protocol.writeMessage({ type: signalR.MessageType.Invocation, target: 'bin', arguments: [text], headers: {} });
      return typeof m === 'string' ? new TextEncoder().encode(m) : new Uint8Array(m);
    };
    const body = encode({ json: frame(new signalR.JsonHubProtocol(), 'as json'), messagepack: frame(new MessagePackHubProtocol(), 'as msgpack') });
    const both = [next(json, 'bin'), next(mp, 'bin')];
    assert.equal((await v1('POST', '/api/v1/hubs/chat', body, 'application/octet-stream')).status, 202);
    assert.deepEqual(await Promise.all(both), [['as json'], ['as msgpack']]);
  } finally {
    await json.stop();
    await mp.stop();
  }
});
