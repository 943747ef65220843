// Configuration (#13): a TOML file whose keys are the long flag names, the environment
// (SIGNALR_RELAY_<FLAG>) over it and flags over both; unknown keys and bad values refused with
// a message naming them; --print-config masks the access keys.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { SUFFIX } = require('./harness');

const BIN = path.join(process.env.RELAY_BIN_DIR || path.resolve(__dirname, '../../target/debug'), `signalr-relay${SUFFIX}`);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-config-'));
const file = (name, text) => { const p = path.join(dir, name); fs.writeFileSync(p, text); return p; };
const run = (args, env = {}) => {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SIGNALR_RELAY_')));
  return spawnSync(BIN, args, { env: { ...clean, ...env }, encoding: 'utf8', timeout: 10000 });
};

test('flag over env over file over default, every setting shown with its source', () => {
  const config = file('relay.toml', [
    'listen = "127.0.0.1:9999"', 'max-message-size = 65536', 'client-timeout = 10', 'keep-alive = 7',
    'access-key = ["secret-key-one", "secret-key-two"]', 'no-stateful-reconnect = true', 'trusted-proxy = ["10.0.0.0/8"]',
  ].join('\n'));
  const r = run(['--config', config, '--listen', '127.0.0.1:7777', '--print-config'], { SIGNALR_RELAY_CLIENT_TIMEOUT: '45', SIGNALR_RELAY_KEEP_ALIVE: '3' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^# access-key = <2 key\(s\), masked>  # file$/m);
  const lines = Object.fromEntries(r.stdout.trim().split('\n').filter((l) => !l.startsWith('#')).map((l) => {
    const m = l.match(/^([\w-]+) = (.*)  # (\w+)$/);
    assert.ok(m, l);
    return [m[1], [m[2], m[3]]];
  }));
  assert.deepEqual(lines.listen, ['"127.0.0.1:7777"', 'flag']);
  assert.deepEqual(lines['client-timeout'], ['45', 'env']);
  assert.deepEqual(lines['keep-alive'], ['3', 'env']);
  assert.deepEqual(lines['max-message-size'], ['65536', 'file']);
  assert.deepEqual(lines['no-stateful-reconnect'], ['true', 'file']);
  assert.deepEqual(lines['trusted-proxy'], ['["10.0.0.0/8"]', 'file']);
  assert.deepEqual(lines['handshake-timeout'], ['"15s"', 'default']);
  assert.ok(!r.stdout.includes('secret-key-one') && !r.stdout.includes('secret-key-two'), r.stdout);
  // What it prints is a file it takes, to the same settings (the keys, masked, are a comment).
  const again = file('printed.toml', r.stdout);
  const reread = run(['--config', again, '--print-config']);
  assert.equal(reread.status, 0, reread.stderr);
  const values = (text) => text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.replace(/  # \w+$/, ''));
  assert.deepEqual(values(reread.stdout), values(r.stdout));
});

test('an unknown key, a bad value or a missing file is refused, naming it', () => {
  const typo = file('typo.toml', 'max-mesage-size = 1\n');
  let r = run(['--config', typo]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown key `max-mesage-size` in .*typo\.toml/);
  const bad = file('bad.toml', 'max-message-size = "lots"\n');
  r = run(['--config', bad]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /max-message-size/);
  assert.match(r.stderr, /settings from .*bad\.toml/);
  r = run(['--config', path.join(dir, 'nowhere.toml')]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /cannot read .*nowhere\.toml/);
  r = run(['--max-message-size', 'lots']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /max-message-size/);
  r = run(['--log', 'verbose']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /invalid --log filter "verbose"/);
});
