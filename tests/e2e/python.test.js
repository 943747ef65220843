// A second, independent client: signalrcore (Python), JSON and MessagePack.
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
