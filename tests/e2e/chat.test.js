// The chat hub: every method, groups, users and exclusions, in both protocols (mixed).
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, TRANSPORTS, next, collect, sleep } = require('./harness');

let stack;
before(async () => { stack = await Stack.start(); });
after(async () => { await stack.stop(); });

for (const [transport, protocols] of TRANSPORTS) describe(`chat over ${transport}`, () => {
const connect = (hub, opts = {}) =>
  stack.connect(hub, { ...opts, transport, msgpack: Boolean(opts.msgpack) && protocols.includes(true) });

test('Echo, EchoToCaller, GetConnectionId, GetUserId', async () => {
  for (const msgpack of [false, true]) {
    const c = await connect('chat', { user: 'alice', msgpack });
    assert.deepEqual(await c.invoke('Echo', { text: 'hi', n: [1, 2] }), { text: 'hi', n: [1, 2] });
    const echo = next(c, 'echo');
    await c.invoke('EchoToCaller', 'just me');
    assert.deepEqual(await echo, ['just me']);
    assert.equal(await c.invoke('GetConnectionId'), c.connectionId);
    assert.equal(await c.invoke('GetUserId'), 'alice');
    await c.stop();
  }
});

test('Broadcast reaches everyone, BroadcastOthers everyone but the caller', async () => {
  const [a, b, m] = [
    await connect('chat', { user: 'a' }),
    await connect('chat', { user: 'b' }),
    await connect('chat', { user: 'm', msgpack: true }),
  ];
  const got = [a, b, m].map((c) => collect(c, 'broadcast'));
  await a.invoke('Broadcast', 'to all');
  await b.invoke('BroadcastOthers', 'not to b');
  await sleep(300);
  assert.deepEqual(got[0], [['to all'], ['not to b']]);
  assert.deepEqual(got[1], [['to all']]);
  assert.deepEqual(got[2], [['to all'], ['not to b']]);
  await Promise.all([a, b, m].map((c) => c.stop()));
});

test('groups: join, send, send except caller, leave', async () => {
  const [a, b, c] = [
    await connect('chat', { user: 'a' }),
    await connect('chat', { user: 'b', msgpack: true }),
    await connect('chat', { user: 'c' }),
  ];
  const got = [a, b, c].map((x) => collect(x, 'groupMessage'));
  await a.invoke('JoinGroup', 'room');
  await b.invoke('JoinGroup', 'room');
  await c.invoke('SendToGroup', 'room', 'hello room');
  await a.invoke('SendToGroupExceptCaller', 'room', 'from a');
  await b.invoke('LeaveGroup', 'room');
  await c.invoke('SendToGroup', 'room', 'after b left');
  await sleep(300);
  assert.deepEqual(got[0], [['room', 'hello room'], ['room', 'after b left']]);
  assert.deepEqual(got[1], [['room', 'hello room'], ['room', 'from a']]);
  assert.deepEqual(got[2], []);
  await Promise.all([a, b, c].map((x) => x.stop()));
});

test('users: SendToUser reaches every connection of that user only', async () => {
  const [u1, u2, other] = [
    await connect('chat', { user: 'carol' }),
    await connect('chat', { user: 'carol', msgpack: true }),
    await connect('chat', { user: 'dave' }),
  ];
  const got = [u1, u2, other].map((x) => collect(x, 'userMessage'));
  await other.invoke('SendToUser', 'carol', 'for carol');
  await sleep(300);
  assert.deepEqual(got[0], [['for carol']]);
  assert.deepEqual(got[1], [['for carol']]);
  assert.deepEqual(got[2], []);
  await Promise.all([u1, u2, other].map((x) => x.stop()));
});

test('SendToConnection reaches exactly that connection', async () => {
  const [a, b, c] = [await connect('chat'), await connect('chat', { msgpack: true }), await connect('chat')];
  const got = [a, b, c].map((x) => collect(x, 'directMessage'));
  await a.invoke('SendToConnection', b.connectionId, 'psst');
  await sleep(300);
  assert.deepEqual(got, [[], [['psst']], []]);
  await Promise.all([a, b, c].map((x) => x.stop()));
});

test('CloseMe: the app server closes the caller, without reconnect', async () => {
  const c = await connect('chat');
  const other = await connect('chat');
  c.invoke('CloseMe').catch(() => {});
  const error = await c.closedWith;
  assert.equal(c.state, 'Disconnected');
  assert.equal(error, undefined, `closed cleanly, not with ${error}`);
  assert.equal(await other.invoke('Echo', 'unaffected'), 'unaffected');
  await other.stop();
});

test('messages to one client arrive in order', async () => {
  const a = await connect('chat');
  const got = collect(a, 'echo');
  for (let i = 0; i < 100; i++) a.send('EchoToCaller', i);
  await a.invoke('Echo', 'barrier');
  await sleep(200);
  assert.deepEqual(got.map(([n]) => n), [...Array(100).keys()]);
  await a.stop();
});
});

test('the app server sees connects and disconnects (welcome, left)', async () => {
  const { signalR } = require('./harness');
  const c = new signalR.HubConnectionBuilder()
    .withUrl(`http://${stack.appAddr}/chat`, signalR.HttpTransportType.WebSockets)
    .configureLogging(signalR.LogLevel.None)
    .build();
  const welcomed = new Promise((resolve) => c.on('welcome', resolve));
  await c.start();
  assert.equal(await welcomed, c.connectionId);
  const id = c.connectionId;
  const watcher = await stack.connect('chat');
  const left = next(watcher, 'left');
  await c.stop();
  assert.deepEqual(await left, [id]);
  await watcher.stop();
});
