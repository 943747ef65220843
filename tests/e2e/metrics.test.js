// The operator's view (#13): /metrics in the Prometheus text format, with values that match
// what the test did, and /health and /ready.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const { Stack, jwt, sleep, signalR } = require('./harness');

let stack;
before(async () => { stack = await Stack.start(); });
after(async () => { await stack.stop(); });

/// Parses a text exposition strictly: every sample belongs to the family whose HELP and TYPE
/// came last, every value is a number. Returns the samples as `name{k="v",...}` → value.
function parse(text) {
  const samples = new Map();
  let family = null;
  const types = new Map();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = line.match(/^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/);
    if (m) {
      if (m[1] === 'TYPE') {
        assert.ok(['counter', 'gauge'].includes(m[3]), line);
        assert.ok(!types.has(m[2]), `${m[2]} typed twice`);
        types.set(m[2], m[3]);
        family = m[2];
      }
      continue;
    }
    m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/);
    assert.ok(m, `not a sample: ${line}`);
    assert.equal(m[1], family, `${line} is not under its family's TYPE`);
    const value = Number(m[4]);
    assert.ok(Number.isFinite(value), line);
    const labels = [];
    for (const l of (m[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels.push(`${l[1]}="${l[2]}"`);
    const key = labels.length ? `${m[1]}{${labels.join(',')}}` : m[1];
    assert.ok(!samples.has(key), `${key} twice`);
    samples.set(key, value);
  }
  return { samples, types };
}

async function scrape() {
  const r = await fetch(`http://${stack.relayAddr}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  return parse(await r.text());
}

const connect = (transport, msgpack = false) => stack.connect('testhub', { transport, msgpack });

test('the metrics count the clients, app servers, traffic, refusals and closes the test made', async () => {
  assert.equal((await fetch(`http://${stack.relayAddr}/health`)).status, 200);
  assert.equal((await fetch(`http://${stack.relayAddr}/ready`)).status, 200);
  const before = (await scrape()).samples;
  const clients = [
    await connect('WebSockets'), await connect('WebSockets'), await connect('WebSockets', true),
    await connect('ServerSentEvents'), await connect('LongPolling'),
  ];
  for (const c of clients) assert.equal(await c.invoke('Echo', 'x'), 'x');
  // Two negotiates with a forged token.
  for (let i = 0; i < 2; i++) {
    const forged = jwt({ aud: 'http://127.0.0.1/client/?hub=testhub', exp: Math.floor(Date.now() / 1000) + 60 }, 'not the key');
    assert.equal((await stack.relayNegotiate('testhub', forged)).status, 401);
  }
  // The app server's five connections may still be coming (the stack waits for the first).
  let scraped = await scrape();
  for (let i = 0; i < 100 && scraped.samples.get('signalr_relay_server_connections{hub="testhub"}') !== 5; i++) {
    await sleep(50);
    scraped = await scrape();
  }
  const { samples, types } = scraped;
  const get = (key) => samples.get(key);
  const delta = (key) => (samples.get(key) || 0) - (before.get(key) || 0);
  const c = (transport, protocol) => get(`signalr_relay_client_connections{hub="testhub",transport="${transport}",protocol="${protocol}"}`);
  assert.equal(c('websockets', 'json'), 2);
  assert.equal(c('websockets', 'messagepack'), 1);
  assert.equal(c('sse', 'json'), 1);
  assert.equal(c('longpolling', 'json'), 1);
  assert.equal(get('signalr_relay_server_connections{hub="testhub"}'), 5);
  assert.equal(get('signalr_relay_app_servers{hub="testhub"}'), 1);
  assert.equal(delta('signalr_relay_connections_opened_total{kind="client"}'), 5);
  assert.equal(delta('signalr_relay_requests_refused_total{endpoint="negotiate",cause="bad_token"}'), 2);
  // Each client sent its handshake and an invocation, and got a handshake response and a
  // completion (and maybe pings): at least 10 each way.
  assert.ok(delta('signalr_relay_messages_total{direction="to_server"}') >= 10);
  assert.ok(delta('signalr_relay_messages_total{direction="to_client"}') >= 10);
  assert.ok(delta('signalr_relay_bytes_total{direction="to_server"}') > delta('signalr_relay_messages_total{direction="to_server"}'));
  assert.equal(types.get('signalr_relay_messages_total'), 'counter');
  assert.equal(types.get('signalr_relay_client_connections'), 'gauge');
  assert.equal(get('signalr_relay_shutting_down'), 0);
  if (process.platform === 'linux') {
    assert.ok(get('signalr_relay_process_resident_memory_bytes') > 1e6);
    assert.ok(get('signalr_relay_process_open_fds') >= clients.length);
    assert.ok(get('signalr_relay_process_cpu_seconds_total') > 0);
  }

  // A client leaves: one fewer, and one more normal close.
  await clients[0].stop();
  let after;
  for (let i = 0; i < 50; i++) {
    after = (await scrape()).samples;
    if (after.get('signalr_relay_client_connections{hub="testhub",transport="websockets",protocol="json"}') === 1) break;
    await sleep(50);
  }
  assert.equal(after.get('signalr_relay_client_connections{hub="testhub",transport="websockets",protocol="json"}'), 1);
  assert.equal((after.get('signalr_relay_connections_closed_total{kind="client",reason="normal"}') || 0)
    - (samples.get('signalr_relay_connections_closed_total{kind="client",reason="normal"}') || 0), 1);
  await Promise.all(clients.slice(1).map((x) => x.stop()));
});
