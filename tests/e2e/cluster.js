// Several relay nodes as one service (#15): Debian's redis-server and nginx, started on
// loopback for the tests, three nodes on the backplane, and the repository's own nginx
// configuration (deploy/nginx) in front of them.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { SUFFIX, startProcess, runNginx, freePort, jwt, sleep } = require('./harness');

// Every process started here exits by itself after this long.
const SAFETY_EXIT_SECS = 300;

/// A redis-server of its own on 127.0.0.1 (nothing saved to disk). `stop()` ends it;
/// `start()` starts it again on the same port.
async function startRedis() {
  const port = await freePort('127.0.0.1');
  const bin = process.env.REDIS_SERVER || '/usr/bin/redis-server';
  const redis = { url: `redis://127.0.0.1:${port}`, child: null };
  redis.start = async () => {
    const child = spawn('timeout', ['-s', 'KILL', String(SAFETY_EXIT_SECS), bin, '--port', String(port), '--bind', '127.0.0.1',
      '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    redis.child = child;
    const deadline = Date.now() + 10000;
    while (!/Ready to accept connections/.test(out)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server did not start: ${out}`);
      await sleep(20);
    }
  };
  // `timeout` passes SIGTERM on to redis-server, which exits at once (it saves nothing).
  redis.stop = async () => {
    const child = redis.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.on('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  };
  await redis.start();
  return redis;
}

/// A relay node on the backplane at `redisUrl`.
async function startNode(id, redisUrl, key, extra = []) {
  // Refusals and server connections are logged (at info), not each client: a failing test
  // can show what the nodes did (`logTail`).
  const p = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--log', 'info,signalr_relay::clients=warn',
    '--redis', redisUrl, '--node-id', id, ...extra]);
  p.id = id;
  p.addr = await p.ready;
  return p;
}

/// nginx with deploy/nginx/signalr-relay.conf as shipped (only its `listen` moved to
/// loopback), and a nodes.conf for `nodes` (`[{ id, addr }]`) written as the shipped example
/// shows. Listens on 127.0.0.2.
function startClusterNginx(nodes) {
  const shipped = fs.readFileSync(path.resolve(__dirname, '../../deploy/nginx/signalr-relay.conf'), 'utf8');
  if (!/^\s*listen 80 backlog=4096;$/m.test(shipped)) throw new Error('deploy/nginx/signalr-relay.conf: no `listen 80 backlog=4096;` to move');
  const upstreams = [
    `upstream relay_any {\n${nodes.map((n) => `    server ${n.addr} max_fails=1 fail_timeout=5s;`).join('\n')}\n}`,
    ...nodes.map((n) => `upstream relay_node_${n.id} { server ${n.addr}; }`),
  ];
  return runNginx((dir, port) => {
    fs.writeFileSync(path.join(dir, 'signalr-relay.conf'), shipped.replace(/^(\s*)listen 80 backlog=4096;$/m, `$1listen 127.0.0.2:${port} backlog=4096;`));
    fs.writeFileSync(path.join(dir, 'nodes.conf'), `${upstreams.join('\n')}\n`);
    return `  include ${dir}/nodes.conf;\n  include ${dir}/signalr-relay.conf;`;
  }, { workerConnections: 4096 });
}

/// A node's metrics, as name → value (labels kept in the name).
async function metrics(addr) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  const out = {};
  for (const line of text.split('\n')) {
    const m = line.match(/^(signalr_relay_\S+) (\S+)$/);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

/// Waits until `check()` (async) is true, or throws naming `what`.
async function eventually(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

/// Whether `addr` takes negotiates for `hub` (an app server is connected there).
async function serves(addr, hub, key) {
  const now = Math.floor(Date.now() / 1000);
  const token = jwt({ aud: `http://127.0.0.1/client/?hub=${hub}`, exp: now + 60 }, key);
  const r = await fetch(`http://${addr}/client/negotiate?hub=${hub}&negotiateVersion=1`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  return r.status === 200 && !(await r.json()).error;
}

/// The last lines each node logged, for a failure's message.
function logTail(nodes, lines = 40) {
  return nodes.map((n) => `--- ${n.id} (${n.addr}):\n${n.output().trimEnd().split('\n').slice(-lines).join('\n')}`).join('\n');
}

/// Runs `body`; if it throws, the error's message ends with the nodes' last log lines.
async function withLogs(nodes, body) {
  try {
    return await body();
  } catch (e) {
    e.message = `${e.message}\n${logTail(nodes)}`;
    throw e;
  }
}

module.exports = { startRedis, startNode, startClusterNginx, metrics, eventually, serves, withLogs };
