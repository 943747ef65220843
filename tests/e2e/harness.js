// Starts the real binaries (relay + sample app) on loopback and hands out official clients.
'use strict';
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const net = require('node:net');
const assert = require('node:assert/strict');
const path = require('node:path');
const signalR = require('@microsoft/signalr');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');

const BIN_DIR = process.env.RELAY_BIN_DIR || path.resolve(__dirname, '../../target/debug');
// Which runtime's binaries to run: `tokio` (signalr-relay, sample-app) or `smol`
// (signalr-relay-smol, sample-app-smol).
const RUNTIME = process.env.E2E_RUNTIME || 'tokio';
const SUFFIX = RUNTIME === 'smol' ? '-smol' : '';
// Every process started here exits by itself after this long, whatever happens to the tests.
const SAFETY_EXIT_SECS = 300;
// The hubs the sample app hosts (each gets its own server connections).
const SAMPLE_HUBS = ['authorizedhub', 'bench', 'chat', 'testhub'];

/// Starts one of the project's binaries. With `nofile`, it runs under that descriptor limit
/// (soft and hard).
function startProcess(name, args, { nofile } = {}) {
  const bin = path.join(BIN_DIR, name);
  const argv = [...args, '--exit-after', String(SAFETY_EXIT_SECS)];
  const child = nofile
    ? spawn('sh', ['-c', `ulimit -n ${Number(nofile)} && exec "$0" "$@"`, bin, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const ready = new Promise((resolve, reject) => {
    const onData = (d) => {
      out += d;
      const m = out.match(/listening on https?:\/\/([0-9.]+:\d+)/);
      if (m) resolve(m[1]);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (d) => { out += d; });
    child.on('exit', (code) => reject(new Error(`${name} exited (${code}): ${out}`)));
    setTimeout(() => reject(new Error(`${name} did not start: ${out}`)), 15000);
  });
  return { child, ready, output: () => out };
}

/// A TCP proxy whose connections can be cut one by one: it stands between the app server and
/// the relay, so a test can drop a single server connection.
function startProxy(targetPort) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    sockets.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const close = () => { client.destroy(); upstream.destroy(); sockets.delete(pair); };
    client.on('error', close); upstream.on('error', close);
    client.on('close', close); upstream.on('close', close);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    connections: () => [...sockets],
    /// Cuts every connection through it; how many there were.
    cutAll: () => {
      const all = [...sockets];
      for (const p of all) { p.client.destroy(); p.upstream.destroy(); }
      return all.length;
    },
    close: () => { for (const p of sockets) { p.client.destroy(); p.upstream.destroy(); } server.close(); },
  })));
}

function b64url(data) {
  return Buffer.from(data).toString('base64url');
}

/// An HS256 JWT, as an app server would sign it.
function jwt(claims, key) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', key).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/// A free TCP port on `host` (closed again at once; the caller binds it next).
function freePort(host) {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/// Debian's nginx on 127.0.0.2, run in a directory of its own with `http` as its `http`
/// block's content (written by `http(dir, port)`), ready once it answers (over TLS with `tls`).
/// It exits by itself after SAFETY_EXIT_SECS, like every process the tests start.
async function runNginx(http, { tls, workerConnections = 1024 } = {}) {
  const fs = require('node:fs');
  const os = require('node:os');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-nginx-'));
  const port = await freePort('127.0.0.2');
  const conf = `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections ${workerConnections}; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${http(dir, port)}
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child = spawn('timeout', [String(SAFETY_EXIT_SECS), process.env.NGINX || '/usr/sbin/nginx', '-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  // Ready once it answers.
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      if (tls) {
        // Node's fetch does not take a CA; any TLS answer means nginx is up.
        await new Promise((resolve, reject) => {
          const socket = require('node:tls').connect({ host: '127.0.0.2', port, ca: fs.readFileSync(tls.ca) }, () => { socket.end(); resolve(); });
          socket.on('error', reject);
        });
      } else {
        await fetch(`http://127.0.0.2:${port}/health`);
      }
      break;
    } catch (e) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nginx did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    addr: `127.0.0.2:${port}`,
    stop: () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/// Debian's nginx as a reverse proxy in front of the relay, as the README's deployment has
/// it: it listens on 127.0.0.2, reaches the relay from 127.0.0.3, passes WebSockets through
/// and appends the client's address to X-Forwarded-For. With `tls` (`{ cert, key, ca }`,
/// PEM file paths), it terminates TLS with that certificate, as in front of a relay on plain
/// HTTP.
function startNginx(relayAddr, { tls } = {}) {
  return runNginx((_dir, port) => `
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.2:${port}${tls ? ' ssl' : ''};
${tls ? `    ssl_certificate ${tls.cert};\n    ssl_certificate_key ${tls.key};` : ''}
    location / {
      proxy_pass http://${relayAddr};
      proxy_bind 127.0.0.3;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }`, { tls });
}

class Stack {
  /// Relay + sample app. With `proxy`, the app's server connections go through a TCP proxy;
  /// with `clientProxy`, clients go through one; with `nginx`, clients go through nginx.
  /// With `dev`, the relay runs with `--dev` (the Emulator's key) and the app takes the
  /// connection string the relay printed, in the Emulator's `Port=` form.
  static async start({ proxy = false, clientProxy = false, nginx = false, dev = false, connectionsPerHub = 5, relayArgs = [], appArgs = [], relayNofile, appNofile, relayLog = 'warn' } = {}) {
    const s = new Stack();
    s.key = dev ? 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH' : crypto.randomBytes(16).toString('hex');
    const keyArgs = dev ? ['--dev'] : ['--access-key', s.key];
    s.relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', ...keyArgs, '--log', relayLog, ...relayArgs], { nofile: relayNofile });
    s.relayAddr = await s.relay.ready;
    const relayPort = Number(s.relayAddr.split(':')[1]);
    let endpoint = `http://${s.relayAddr}`;
    let extra = '';
    if (proxy) {
      // The app server's connections go through the proxy; clients go straight to the relay.
      s.proxy = await startProxy(relayPort);
      endpoint = `http://127.0.0.1:${s.proxy.port}`;
      extra = `ClientEndpoint=http://${s.relayAddr};`;
    } else if (nginx) {
      s.nginx = await startNginx(s.relayAddr);
      extra = `ClientEndpoint=http://${s.nginx.addr};`;
    } else if (clientProxy) {
      // Clients go through the proxy (so a test can cut their sockets); app servers do not.
      s.proxy = await startProxy(relayPort);
      extra = `ClientEndpoint=http://127.0.0.1:${s.proxy.port};`;
    }
    let cs = `Endpoint=${endpoint};AccessKey=${s.key};Version=1.0;${extra}`;
    if (dev) {
      const printed = s.relay.output().match(/connect with: (Endpoint=\S+)/);
      if (!printed) throw new Error(`--dev printed no connection string: ${s.relay.output()}`);
      cs = printed[1];
    }
    s.connectionString = cs;
    s.app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', cs, '--listen', '127.0.0.1:0',
      '--connections-per-hub', String(connectionsPerHub), '--log', 'warn', ...appArgs], { nofile: appNofile });
    s.appAddr = await s.app.ready;
    for (const hub of SAMPLE_HUBS) await s.waitForServers(hub);
    return s;
  }

  /// Waits until the relay accepts negotiations for `hub` (its app server is connected).
  async waitForServers(hub) {
    const deadline = Date.now() + 15000;
    for (;;) {
      const r = await this.relayNegotiate(hub, this.clientToken(hub));
      if (r.status === 200 && !(await r.json()).error) return;
      if (Date.now() > deadline) throw new Error(`no app server for ${hub}`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  clientToken(hub, extra = {}) {
    const now = Math.floor(Date.now() / 1000);
    return jwt({ aud: `http://127.0.0.1/client/?hub=${hub}`, iat: now, nbf: now, exp: now + 3600, ...extra }, this.key);
  }

  /// A token for the relay's classic endpoint `/aspnetclient`, for `hub` (the audience names
  /// the hub the app authorized, as the sample app's classic negotiate does).
  classicClientToken(extra = {}, hub = 'chat') {
    const now = Math.floor(Date.now() / 1000);
    return jwt({ aud: `http://127.0.0.1/aspnetclient?hub=${hub}`, iat: now, nbf: now, exp: now + 3600, ...extra }, this.key);
  }

  relayNegotiate(hub, token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    return fetch(`http://${this.relayAddr}/client/negotiate?hub=${hub}&negotiateVersion=1`, { method: 'POST', headers });
  }

  /// An official client connected through the app's negotiate, started.
  async connect(hub, { user, msgpack = false, transport = 'WebSockets', stateful = false, log = signalR.LogLevel.None } = {}) {
    const url = `http://${this.appAddr}/${hub}${user ? `?user=${encodeURIComponent(user)}` : ''}`;
    return startClient(url, signalR.HttpTransportType[transport], { msgpack, stateful, log });
  }

  /// The relay's resident memory (bytes) and open descriptors, from /proc.
  relayResources() {
    const fs = require('node:fs');
    const pid = this.relay.child.pid;
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(status.match(/VmRSS:\s+(\d+) kB/)[1]) * 1024;
    return { rss, fds: fs.readdirSync(`/proc/${pid}/fd`).length };
  }

  /// Another sample app on the same relay, started with `args`: its process and address.
  async startApp(args = []) {
    const app = startProcess(`sample-app${SUFFIX}`, ['--connection-string', this.connectionString,
      '--listen', '127.0.0.1:0', '--log', 'warn', ...args]);
    (this.extraApps ||= []).push(app);
    return { app, addr: await app.ready };
  }

  async stop() {
    for (const p of [...(this.extraApps || []), this.app, this.relay]) {
      if (p && p.child.exitCode === null) p.child.kill('SIGTERM');
    }
    if (this.proxy) this.proxy.close();
    if (this.nginx) this.nginx.stop();
  }
}

/// An official client of `url` (a negotiate to follow), started. `options` are `withUrl`'s (a
/// transport, or `{ transport, accessTokenFactory, … }`); `c.closedWith` resolves with the
/// error it closes with.
async function startClient(url, options = {}, { msgpack = false, stateful = false, log = signalR.LogLevel.None } = {}) {
  const builder = new signalR.HubConnectionBuilder().withUrl(url, options).configureLogging(log);
  if (msgpack) builder.withHubProtocol(new MessagePackHubProtocol());
  if (stateful) builder.withStatefulReconnect();
  const c = builder.build();
  c.closedWith = new Promise((resolve) => c.onclose((e) => resolve(e)));
  await c.start();
  return c;
}

/// Waits until `check()` (sync or async) is true, checking every 50 ms; fails with `what`
/// after `ms`.
async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(what);
    await sleep(50);
  }
}

/// Resolves with the arguments of the next `method` call on `connection`.
function next(connection, method, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { connection.off(method, h); reject(new Error(`no ${method} within ${timeoutMs} ms`)); }, timeoutMs);
    const h = (...args) => { clearTimeout(t); connection.off(method, h); resolve(args); };
    connection.on(method, h);
  });
}

/// Collects every `method` call on `connection`.
function collect(connection, method) {
  const got = [];
  connection.on(method, (...args) => got.push(args));
  return got;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Every transport, and the protocols each can carry.
const TRANSPORTS = [
  ['WebSockets', [false, true]],
  ['ServerSentEvents', [false]],
  ['LongPolling', [false, true]],
];


/// Headless Chromium (Debian's package, driven by playwright-core) plus a tiny server for the
/// test pages, on their own origin so that every page talks to the app and the relay
/// cross-origin. `files` maps URL paths to files.
/// Waits for the page's verdict, closes the tab, fails with the page's log (and `diagnostics()`)
/// unless 'ok'; returns the page's connection ids (`ids`, and `after` for the drop).
async function pageVerdict({ page, errors }, timeout, diagnostics = () => '') {
  let result;
  try {
    await page.waitForFunction(() => window.__result, null, { timeout });
    result = await page.evaluate(() => window.__result);
  } catch (e) {
    result = `no result: ${e.message}`;
  }
  const log = await page.evaluate(() => document.getElementById('log').textContent).catch(() => '');
  const ids = await page.evaluate(() => window.__ids || []).catch(() => []);
  const afterIds = await page.evaluate(() => window.__after || []).catch(() => []);
  await page.close();
  assert.equal(result, 'ok', `${result}\n${log}\n${errors.join('\n')}\n${diagnostics()}`);
  return { ids, after: afterIds };
}

/// What every classic jQuery page needs from `Browser.start`: jQuery, jquery.signalR and the
/// pages' shared helpers (`browser/page.js`).
const CLASSIC_FILES = {
  '/jquery.min.js': require.resolve('jquery/dist/jquery.min.js'),
  '/jquery.signalR.js': require.resolve('signalr/jquery.signalR.js'),
  '/page.js': path.join(__dirname, 'browser/page.js'),
};

class Browser {
  static async start(files) {
    const fs = require('node:fs');
    const http = require('node:http');
    const os = require('node:os');
    const { chromium } = require('playwright-core');
    const b = new Browser();
    b.pages = http.createServer((req, res) => {
      const file = files[new URL(req.url, 'http://x').pathname];
      if (!file) { res.writeHead(404).end(); return; }
      res.writeHead(200, { 'Content-Type': file.endsWith('.html') ? 'text/html' : 'text/javascript' });
      fs.createReadStream(file).pipe(res);
    });
    await new Promise((resolve) => b.pages.listen(0, '127.0.0.1', resolve));
    b.origin = `http://127.0.0.1:${b.pages.address().port}`;
    b.profile = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-chromium-'));
    b.context = await chromium.launchPersistentContext(b.profile, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    return b;
  }

  /// A new tab on `pagePath` (a key of `files`) with `query`; page errors are collected.
  async open(pagePath, query) {
    const page = await this.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${this.origin}${pagePath}?${new URLSearchParams(query)}`);
    return { page, errors };
  }

  async close() {
    await this.context.close();
    this.pages.close();
    require('node:fs').rmSync(this.profile, { recursive: true, force: true });
  }
}

module.exports = { TRANSPORTS, RUNTIME, SUFFIX, SAMPLE_HUBS, BIN_DIR, CLASSIC_FILES, Stack, Browser, pageVerdict, startProcess, startProxy, startClient, startNginx, runNginx, freePort, jwt, next, collect, sleep, until, signalR };
