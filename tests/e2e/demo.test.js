// The README's first command: the demo (relay and sample app in one process, on tokio) prints
// what a newcomer needs, and an official client gets an answer through it.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { RUNTIME, freePort, sleep, signalR } = require('./harness');

const BIN_DIR = process.env.RELAY_BIN_DIR || path.resolve(__dirname, '../../target/debug');

// The demo is one binary (tokio): run it once, with the tokio suite.
test('the demo prints the client URL, the connection string and the status page, and serves a client', { skip: RUNTIME !== 'tokio' }, async () => {
  const relayPort = await freePort('127.0.0.1');
  const appPort = await freePort('127.0.0.1');
  const demo = spawn(path.join(BIN_DIR, 'demo'), ['--relay-listen', String(relayPort), '--listen', String(appPort),
    '--log', 'warn', '--exit-after', '60'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  demo.stdout.on('data', (d) => { out += d; });
  demo.stderr.on('data', (d) => { out += d; });
  try {
    for (let i = 0; i < 100 && !out.includes('withUrl'); i++) await sleep(50);
    assert.match(out, new RegExp(`status: +http://127\\.0\\.0\\.1:${relayPort}/`));
    assert.match(out, new RegExp(`attaches with: Endpoint=http://127\\.0\\.0\\.1:${relayPort};AccessKey=\\w+;Version=1\\.0;`));
    assert.match(out, new RegExp(`withUrl\\("http://127\\.0\\.0\\.1:${appPort}/chat\\?user=alice"\\)`));
    // As the README shows it (retrying while the sample app connects to its relay).
    let answer;
    for (let i = 0; i < 100 && answer === undefined; i++) {
      const c = new signalR.HubConnectionBuilder().withUrl(`http://127.0.0.1:${appPort}/chat?user=alice`)
        .configureLogging(signalR.LogLevel.None).build();
      try {
        await c.start();
        answer = await c.invoke('Echo', 'hello');
        await c.stop();
      } catch {
        await sleep(100);
      }
    }
    assert.equal(answer, 'hello');
    // A developer's relay: its status needs no token.
    const status = await fetch(`http://127.0.0.1:${relayPort}/api/status`);
    assert.equal(status.status, 200);
    assert.ok((await status.json()).hubs.some((h) => h.name === 'chat'));
  } finally {
    demo.kill('SIGKILL');
  }
});
