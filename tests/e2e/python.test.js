// Independent Python clients: signalrcore (ASP.NET Core; JSON and MessagePack) and
// signalr-client-threads (classic ASP.NET SignalR 2.x).
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const { Stack } = require('./harness');

const PYTHON = process.env.E2E_PYTHON || path.resolve(__dirname, '../.venv/bin/python');
let stack;
before(async () => { stack = await Stack.start(); });
after(async () => { await stack.stop(); });

for (const protocol of ['json', 'msgpack']) {
  test(`signalrcore (${protocol}): echo, broadcast, groups`, async () => {
    const out = await new Promise((resolve, reject) => {
      execFile(PYTHON, [path.join(__dirname, 'python/chat_client.py'), `http://${stack.appAddr}`, protocol, `py-${protocol}`],
        { timeout: 60000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout)));
    });
    assert.match(out, /ok echo\nok user\nok broadcast\nok groups\nPASS/);
  });
}

test('signalr-client-threads (classic, webSockets): echo, error, push, groups', async () => {
  // This client does not follow the negotiate redirect: it goes to the relay with the token.
  const out = await new Promise((resolve, reject) => {
    execFile(PYTHON, [path.join(__dirname, 'python/classic_client.py'), `http://${stack.relayAddr}`, stack.classicClientToken()],
      { timeout: 60000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout)));
  });
  assert.match(out, /transport webSockets\nok welcome\nok echo\nok error\nok push\nok groups\nPASS/);
});
