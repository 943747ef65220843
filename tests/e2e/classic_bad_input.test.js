// Classic ASP.NET SignalR bad input, against the real relay: each case gets the classic
// protocol's error, and a classic client connected beside them is unharmed.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, jwt } = require('./harness');

let stack;
let token;
let base;
const chat = encodeURIComponent(JSON.stringify([{ name: 'chat' }]));
const headers = () => ({ Authorization: `Bearer ${token}` });

// One classic long-polling connection, driven by hand: negotiate, connect, start.
async function connect() {
  const n = await fetch(`${base}/negotiate?clientProtocol=2.1&hub=chat&connectionData=${chat}`, { headers: headers() });
  assert.equal(n.status, 200);
  const { ConnectionToken, ConnectionId } = await n.json();
  const q = `transport=longPolling&clientProtocol=2.1&hub=chat&connectionData=${chat}&connectionToken=${encodeURIComponent(ConnectionToken)}`;
  const init = await fetch(`${base}/connect?${q}`, { method: 'POST', headers: headers() });
  assert.deepEqual(await init.json(), { C: '0', S: 1, M: [] });
  assert.deepEqual(await (await fetch(`${base}/start?${q}`, { headers: headers() })).json(), { Response: 'started' });
  return { q, id: ConnectionId };
}

const form = (fields) => ({
  method: 'POST',
  headers: { ...headers(), 'Content-Type': 'application/x-www-form-urlencoded; charset=UTF-8' },
  body: new URLSearchParams(fields).toString(),
});

let bystander;
before(async () => {
  stack = await Stack.start();
  token = stack.classicClientToken({ nameid: 'alice' });
  base = `http://${stack.relayAddr}/aspnetclient`;
  bystander = await connect();
});
after(async () => {
  // Nothing below hurt the bystander: its send still gets its result.
  const r = await fetch(`${base}/send?${bystander.q}`, form({ data: JSON.stringify({ H: 'chat', M: 'Echo', A: ['unharmed'], I: 0 }) }));
  assert.deepEqual(await r.json(), { I: '0', R: 'unharmed' });
  await stack.stop();
});

test('classic negotiate: missing, wrong-audience or expired tokens are 401; hub lists are checked', async () => {
  const now = Math.floor(Date.now() / 1000);
  const url = `${base}/negotiate?clientProtocol=2.1&connectionData=${chat}`;
  assert.equal((await fetch(url)).status, 401);
  const core = stack.clientToken('chat');
  assert.equal((await fetch(url, { headers: { Authorization: `Bearer ${core}` } })).status, 401);
  const expired = jwt({ aud: 'http://127.0.0.1/aspnetclient', exp: now - 3600 }, stack.key);
  const r = await fetch(url, { headers: { Authorization: `Bearer ${expired}` } });
  assert.equal(r.status, 401);
  assert.match(await r.text(), /expired/);
  // No hub, two hubs, or a hub with no app server.
  assert.equal((await fetch(`${base}/negotiate?clientProtocol=2.1`, { headers: headers() })).status, 400);
  const two = encodeURIComponent(JSON.stringify([{ name: 'chat' }, { name: 'testhub' }]));
  assert.equal((await fetch(`${base}/negotiate?connectionData=${two}`, { headers: headers() })).status, 400);
  const nohub = encodeURIComponent(JSON.stringify([{ name: 'nohub' }]));
  const nohubToken = { Authorization: `Bearer ${stack.classicClientToken({}, 'nohub')}` };
  const none = await fetch(`${base}/negotiate?clientProtocol=2.1&connectionData=${nohub}`, { headers: nohubToken });
  assert.equal(none.status, 200);
  assert.match((await none.json()).Error, /No app server is connected for hub 'nohub'/);
  // A classic token is bound to the hub the app authorized: a token for chat cannot
  // negotiate testhub, nor can one that names no hub.
  const testhub = encodeURIComponent(JSON.stringify([{ name: 'testhub' }]));
  const other = await fetch(`${base}/negotiate?clientProtocol=2.1&connectionData=${testhub}`, { headers: headers() });
  assert.equal(other.status, 401);
  assert.match(await other.text(), /audience/);
  const unbound = jwt({ aud: 'http://127.0.0.1/aspnetclient', exp: now + 3600 }, stack.key);
  assert.equal((await fetch(url, { headers: { Authorization: `Bearer ${unbound}` } })).status, 401);
  // The app server's classic negotiate refuses an unknown hub in the classic error form.
  const app = await fetch(`http://${stack.appAddr}/signalr/negotiate?clientProtocol=2.1&connectionData=${nohub}`);
  assert.deepEqual(await app.json(), { ProtocolVersion: '2.0', Error: "Unknown hub 'nohub'." });
});

test('classic requests: forged tokens, unknown or refused transports, another user', async () => {
  const q = `clientProtocol=2.1&connectionData=${chat}`;
  const forged = await fetch(`${base}/connect?transport=longPolling&${q}&connectionToken=forged`, { method: 'POST', headers: headers() });
  assert.equal(forged.status, 400);
  assert.match(await forged.text(), /unknown or has expired/);
  assert.equal((await fetch(`${base}/connect?${q}&connectionToken=x`, { method: 'POST', headers: headers() })).status, 400);
  const pigeon = await fetch(`${base}/connect?transport=carrierPigeon&${q}&connectionToken=x`, { headers: headers() });
  assert.equal(pigeon.status, 400);
  assert.match(await pigeon.text(), /Unknown transport/);
  const frame = await fetch(`${base}/connect?transport=foreverFrame&${q}&connectionToken=x`, { headers: headers() });
  assert.equal(frame.status, 400);
  assert.match(await frame.text(), /foreverFrame/);
  // A live connection's token under someone else's JWT.
  const mallory = stack.classicClientToken({ nameid: 'mallory' });
  const stolen = await fetch(`${base}/poll?${bystander.q}`, { method: 'POST', headers: { Authorization: `Bearer ${mallory}` } });
  assert.equal(stolen.status, 403);
});

test('classic hub errors are HubExceptions (H), with their data (D) when the app gives it', async () => {
  // A classic server marks a HubException's result with H:true and its ErrorData as D; the
  // classic .NET client then throws HubException, and jQuery says error.source "HubException".
  const c = await connect();
  const send = async (data) => (await fetch(`${base}/send?${c.q}`, form({ data: JSON.stringify(data) }))).json();
  assert.deepEqual(await send({ H: 'chat', M: 'Fail', A: ['plain'], I: 1 }), { I: '1', E: 'plain', H: true });
  assert.deepEqual(await send({ H: 'chat', M: 'FailWithData', A: ['with data', { code: 42, list: [1, 'x'] }], I: 2 }),
    { I: '2', E: 'with data', H: true, D: { code: 42, list: [1, 'x'] } });
  // The relay's own refusals are not the hub's errors: no H.
  assert.deepEqual(await send({ H: 'testhub', M: 'Echo', A: [], I: 3 }), { I: '3', E: "'testhub' is not a hub of this connection." });
  await fetch(`${base}/abort?${c.q}`, { method: 'POST', headers: headers() });
});

test('classic sends: malformed data is 400, oversized 413, another hub an error result', async () => {
  const c = await connect();
  const bad = await fetch(`${base}/send?${c.q}`, form({ data: '{"H":' }));
  assert.equal(bad.status, 400);
  assert.match(await bad.text(), /not a hub invocation/);
  assert.equal((await fetch(`${base}/send?${c.q}`, form({}))).status, 400);
  const big = await fetch(`${base}/send?${c.q}`, form({ data: JSON.stringify({ H: 'chat', M: 'Echo', A: ['x'.repeat(64 * 1024)], I: 1 }) }));
  assert.equal(big.status, 413);
  const other = await fetch(`${base}/send?${c.q}`, form({ data: JSON.stringify({ H: 'testhub', M: 'Echo', A: [], I: 2 }) }));
  assert.deepEqual(await other.json(), { I: '2', E: "'testhub' is not a hub of this connection." });
  // The connection still works.
  const ok = await fetch(`${base}/send?${c.q}`, form({ data: JSON.stringify({ H: 'chat', M: 'Echo', A: [5], I: 3 }) }));
  assert.deepEqual(await ok.json(), { I: '3', R: 5 });
  // After abort, a poll gets a global error (the client stops), a send a 400.
  assert.equal((await fetch(`${base}/abort?${c.q}`, { method: 'POST', headers: headers() })).status, 200);
  const poll = await fetch(`${base}/poll?${c.q}`, form({ messageId: '0' }));
  assert.equal(poll.status, 200);
  assert.match((await poll.json()).E, /closed/);
  const send = await fetch(`${base}/send?${c.q}`, form({ data: JSON.stringify({ H: 'chat', M: 'Echo', A: [], I: 4 }) }));
  assert.equal(send.status, 400);
  // The relay can tell its own ended tokens from forged ones: /reconnect on the ended
  // connection is 404, anything under another user's token 403, and a made-up or altered
  // token 400 on every endpoint.
  const reconnect = await fetch(`${base}/reconnect?${c.q}`, form({ messageId: '0' }));
  assert.equal(reconnect.status, 404);
  const mallory = { Authorization: `Bearer ${stack.classicClientToken({ nameid: 'mallory' })}` };
  assert.equal((await fetch(`${base}/poll?${c.q}`, { method: 'POST', headers: mallory })).status, 403);
  const genuine = new URLSearchParams(c.q).get('connectionToken');
  const altered = genuine.slice(0, 10) + (genuine[10] === 'A' ? 'B' : 'A') + genuine.slice(11);
  for (const [kind, method] of [['poll', 'POST'], ['reconnect', 'POST'], ['abort', 'POST'], ['send', 'POST'], ['start', 'GET']]) {
    for (const t of ['made-up', altered]) {
      const q = c.q.replace(/connectionToken=[^&]*/, `connectionToken=${encodeURIComponent(t)}`);
      const r = await fetch(`${base}/${kind}?${q}`, { method, headers: headers() });
      assert.equal(r.status, 400, `${kind} with ${t}`);
    }
  }
});

test('classic ping needs no connection', async () => {
  assert.deepEqual(await (await fetch(`${base}/ping`)).json(), { Response: 'pong' });
  assert.deepEqual(await (await fetch(`http://${stack.appAddr}/signalr/ping`)).json(), { Response: 'pong' });
});

test('a client that stops over long polling ends its own pending poll cleanly, without an error', async () => {
  // What a classic server does: the .NET client raises its Error event on a poll that ends
  // with "E" (#18). A forged token still gets a 4xx (above).
  const c = await connect();
  // The chat hub's welcome first; then a poll that waits.
  const first = await (await fetch(`${base}/poll?${c.q}`, form({ messageId: '0' }))).json();
  const pending = fetch(`${base}/poll?${c.q}`, form({ messageId: first.C }));
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal((await fetch(`${base}/abort?${c.q}`, { method: 'POST', headers: headers() })).status, 200);
  const r = await pending;
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.equal(body.E, undefined, JSON.stringify(body));
  assert.deepEqual(body.M, []);
});
