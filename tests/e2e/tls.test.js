// TLS, with a CA made for this run (`testcert`): the relay terminating it itself
// (`--tls-cert`, `--tls-key`), and nginx terminating it in front of a plain relay. The app
// server on the Rust SDK connects over wss, trusting the CA through `--ca`; the official Node
// client connects over https and wss, trusting it through NODE_EXTRA_CA_CERTS.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const tls = require('node:tls');
const { execFileSync, spawn } = require('node:child_process');
const { SUFFIX, BIN_DIR, startProcess, startNginx, until } = require('./harness');

const key = crypto.randomBytes(16).toString('hex');
const procs = [];
let dir;
let ca;
let served;
let relay;
let relayAddr;
let metricsAddr;
let appAddr;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-tls-'));
  execFileSync(path.join(BIN_DIR, 'testcert'), [dir]);
  ca = path.join(dir, 'ca.pem');
  // The relay serves copies, which the renewal test replaces.
  served = { cert: path.join(dir, 'served-cert.pem'), key: path.join(dir, 'served-key.pem') };
  fs.copyFileSync(path.join(dir, 'cert.pem'), served.cert);
  fs.copyFileSync(path.join(dir, 'key.pem'), served.key);
  relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key,
    '--tls-cert', served.cert, '--tls-key', served.key, '--metrics-listen', '127.0.0.1:0', '--log', 'info']);
  relayAddr = await relay.ready;
  metricsAddr = relay.output().match(/metrics: http:\/\/([0-9.]+:\d+)\/metrics/)[1];
  const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', `Endpoint=https://${relayAddr};AccessKey=${key};Version=1.0;`,
    '--ca', ca, '--listen', '127.0.0.1:0', '--log', 'warn', '--connections-per-hub', '2']);
  procs.push(relay, app);
  appAddr = await app.ready;
  await until(async () => (await metric(metricsAddr, 'server_connections', 'hub="chat"')) === 2, 'the app server never connected over wss');
});

after(() => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/// One sample of a `signalr_relay_<name>` family, from the operator listener at `addr`, whose
/// labels include `labels`; 0 when there is none.
async function metric(addr, name, labels = '') {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`signalr_relay_${name}`) && l.includes(labels) && !l.startsWith('#'));
  return line ? Number(line.split(' ').pop()) : 0;
}

/// A GET over https that trusts this run's CA: status and body.
function httpsGet(addr, urlPath) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    require('node:https').get({ host, port, path: urlPath, ca: fs.readFileSync(ca) }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

/// SHA-256 fingerprint of the certificate the TLS listener at `addr` serves now.
function servedFingerprint(addr) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port: Number(port), ca: fs.readFileSync(ca) }, () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(fp);
    });
    socket.on('error', reject);
  });
}

function fileFingerprint(file) {
  return new crypto.X509Certificate(fs.readFileSync(file)).fingerprint256;
}

/// Runs tls_client.js against the sample app at `app`: one result per transport and protocol.
function runClients(app) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'tls_client.js'), app], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: ca },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`tls client exited ${code}: ${err}`));
      resolve(out.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)));
    });
  });
}

/// What the client results must show: every transport and protocol worked, and the ones whose
/// client logs its URL connected to `base` over TLS.
function assertClientsOverTls(results, host) {
  assert.equal(results.length, 5);
  for (const r of results) {
    const what = `${r.transport}${r.msgpack ? ' msgpack' : ''}`;
    assert.equal(r.echo, `over ${r.transport}`, what);
    assert.equal(r.message, 'to myself', what);
    if (r.transport === 'WebSockets') assert.ok(r.connected.some((l) => l.includes(`wss://${host}/client/`)), `${what}: ${r.connected}`);
    if (r.transport === 'ServerSentEvents') assert.ok(r.connected.some((l) => l.includes(`https://${host}/client/`)), `${what}: ${r.connected}`);
  }
}

test('the official Node client reaches the relay over https and wss, on every transport, through the SDK app server on wss', async () => {
  const results = await runClients(appAddr);
  assertClientsOverTls(results, relayAddr);
  assert.equal(await metric(metricsAddr, 'server_connections', 'hub="chat"'), 2);
});

test('a plain http request to the TLS listener is told to use https, and costs its neighbours nothing', async () => {
  const before = await metric(metricsAddr, 'requests_refused_total', 'cause="plain_http"');
  const r = await fetch(`http://${relayAddr}/health`);
  assert.equal(r.status, 400);
  assert.match(await r.text(), /https:\/\//);
  // A handshake of garbage, and one that starts and stalls, beside real clients.
  const garbage = net.connect(Number(relayAddr.split(':')[1]), '127.0.0.1');
  garbage.on('error', () => {});
  garbage.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x20]), crypto.randomBytes(32)]));
  const garbageClosed = new Promise((resolve) => garbage.on('close', resolve));
  const stalled = net.connect(Number(relayAddr.split(':')[1]), '127.0.0.1');
  stalled.on('error', () => {});
  stalled.write(Buffer.from([0x16, 0x03, 0x01]));
  const results = await runClients(appAddr);
  assertClientsOverTls(results, relayAddr);
  await garbageClosed;
  stalled.destroy();
  assert.equal(await metric(metricsAddr, 'requests_refused_total', 'cause="plain_http"'), before + 1);
  assert.ok(await metric(metricsAddr, 'requests_refused_total', 'cause="handshake_failed"') >= 1);
});

test('without the CA the SDK refuses the relay\'s certificate and says why: no silent downgrade to ws', async () => {
  const failedBefore = await metric(metricsAddr, 'requests_refused_total', 'cause="handshake_failed"');
  const plainBefore = await metric(metricsAddr, 'requests_refused_total', 'cause="plain_http"');
  const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', `Endpoint=https://${relayAddr};AccessKey=${key};Version=1.0;`,
    '--listen', '127.0.0.1:0', '--log', 'warn', '--connections-per-hub', '1', '--server-id', 'no-ca']);
  procs.push(app);
  await app.ready;
  await until(() => /certificate/i.test(app.output()), `the app server did not say why: ${app.output()}`);
  assert.match(app.output(), /TLS/);
  assert.ok(await metric(metricsAddr, 'requests_refused_total', 'cause="handshake_failed"') > failedBefore);
  // Its connections never arrived, and it never tried plain ws instead.
  assert.equal(await metric(metricsAddr, 'server_connections', 'hub="chat"'), 2);
  assert.equal(await metric(metricsAddr, 'requests_refused_total', 'cause="plain_http"'), plainBefore);
  app.child.kill('SIGKILL');
});

test('--metrics-listen serves /metrics, /health and /ready, and /metrics is off the public address', async () => {
  assert.equal((await fetch(`http://${metricsAddr}/metrics`)).status, 200);
  assert.equal((await fetch(`http://${metricsAddr}/health`)).status, 200);
  assert.equal((await fetch(`http://${metricsAddr}/ready`)).status, 200);
  assert.equal((await fetch(`http://${metricsAddr}/`)).status, 404);
  assert.equal((await fetch(`http://${metricsAddr}/client/negotiate?hub=chat`, { method: 'POST' })).status, 404);
  assert.equal((await httpsGet(relayAddr, '/metrics')).status, 404);
  assert.equal((await httpsGet(relayAddr, '/health')).status, 200);
  assert.equal((await httpsGet(relayAddr, '/ready')).status, 200);
  assert.equal((await httpsGet(relayAddr, '/')).status, 200);
});

test('a renewed certificate serves without a restart, and the connections already open carry on', async () => {
  assert.equal(await servedFingerprint(relayAddr), fileFingerprint(served.cert));
  const opened = await metric(metricsAddr, 'connections_opened_total', 'kind="server"');
  const next = fileFingerprint(path.join(dir, 'next-cert.pem'));
  assert.notEqual(next, fileFingerprint(served.cert));
  // As a renewal writes them: the key, then the certificate.
  fs.copyFileSync(path.join(dir, 'next-key.pem'), served.key);
  fs.copyFileSync(path.join(dir, 'next-cert.pem'), served.cert);
  await until(async () => (await servedFingerprint(relayAddr)) === next, 'the renewed certificate was never served');
  await until(() => /TLS certificate reloaded/.test(relay.output()), 'no log of the reload');
  // A file that is not a certificate leaves the last good one serving.
  fs.writeFileSync(served.cert, 'not a certificate\n');
  await until(() => /TLS certificate not reloaded/.test(relay.output()), `no warning: ${relay.output()}`);
  assert.equal(await servedFingerprint(relayAddr), next);
  // The app server's connections were never dropped, and new clients still come in.
  assert.equal(await metric(metricsAddr, 'connections_opened_total', 'kind="server"'), opened);
  assertClientsOverTls(await runClients(appAddr), relayAddr);
});

test('nginx terminating TLS in front of a plain relay: the SDK over wss and the clients over https', async () => {
  const plain = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--log', 'warn']);
  procs.push(plain);
  const plainAddr = await plain.ready;
  const nginx = await startNginx(plainAddr, { tls: { cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem'), ca } });
  try {
    const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', `Endpoint=https://${nginx.addr};AccessKey=${key};Version=1.0;`,
      '--ca', ca, '--listen', '127.0.0.1:0', '--log', 'warn', '--connections-per-hub', '2']);
    procs.push(app);
    const addr = await app.ready;
    await until(async () => {
      const text = await (await fetch(`http://${plainAddr}/metrics`)).text();
      return /signalr_relay_server_connections\{hub="chat"\} 2/.test(text);
    }, 'the app server never connected through nginx');
    assertClientsOverTls(await runClients(addr), nginx.addr);
    app.child.kill('SIGKILL');
  } finally {
    nginx.stop();
  }
});
