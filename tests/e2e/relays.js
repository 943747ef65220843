// Shared by the tests of several relays for one service (the SDK's multiple endpoints): a
// client that remembers which relay it negotiated with, and the relay-loss scenario.
'use strict';
const assert = require('node:assert/strict');
const { sleep, signalR } = require('./harness');

/// An official client of `url` (the app's negotiate) that records, in `c.http.relay`, which
/// of `relays` it last negotiated with; it reconnects by itself, and collects the numbers it
/// is broadcast in `c.numbers`.
async function relayClient(relays, url, user) {
  class RecordingClient extends signalR.DefaultHttpClient {
    constructor() { super(signalR.NullLogger.instance); this.relay = null; }
    send(request) {
      const host = new URL(request.url).host;
      if (relays.includes(host)) this.relay = host;
      return super.send(request);
    }
  }
  const http = new RecordingClient();
  const c = new signalR.HubConnectionBuilder()
    .withUrl(url, { httpClient: http })
    .withAutomaticReconnect([0, 100, 200, 500, 1000, 1000, 1000, 1000, 1000, 1000])
    .configureLogging(signalR.LogLevel.None)
    .build();
  c.http = http;
  c.user = user;
  c.numbers = [];
  c.on('broadcast', (m) => { if (typeof m === 'number') c.numbers.push(m); });
  c.reconnected = new Promise((resolve) => c.onreconnected(resolve));
  await c.start();
  return c;
}

/// With `clients` spread over `[doomed, survivor]`: a group, a user message and a broadcast
/// reach clients on both relays; then a client on the survivor broadcasts numbers while
/// `kill()` ends the doomed relay. Its clients must come back through the survivor and hear
/// the broadcasts sent after, and the survivor's clients must lose nothing.
async function relayLoss(clients, [doomed, survivor], kill) {
  const on = (relay) => clients.filter((c) => c.http.relay === relay);
  // Negotiate spreads clients over both relays (16 clients, both sides: all but certain).
  assert.ok(on(doomed).length > 0 && on(survivor).length > 0, `spread: ${on(doomed).length}/${on(survivor).length}`);
  assert.equal(on(doomed).length + on(survivor).length, clients.length);

  await Promise.all(clients.map((c) => c.invoke('JoinGroup', 'everyone')));
  const groupSeen = clients.map((c) => new Promise((resolve) => c.on('groupMessage', (g, m) => { if (m === 'to the group') resolve(); })));
  await on(survivor)[0].invoke('SendToGroup', 'everyone', 'to the group');
  await Promise.all(groupSeen);
  const far = on(doomed)[0];
  const direct = new Promise((resolve) => far.on('userMessage', resolve));
  await on(survivor)[0].invoke('SendToUser', far.user, 'across relays');
  assert.equal(await direct, 'across relays');

  const stayers = on(survivor);
  const movers = on(doomed);
  await broadcastAcrossLoss(stayers[0], stayers, movers, kill, async () => {
    for (const c of movers) assert.equal(c.http.relay, survivor);
  });
  const final = clients.map((c) => new Promise((resolve) => c.on('broadcast', (m) => { if (m === 'final') resolve(); })));
  await movers[0].invoke('Broadcast', 'final');
  await Promise.all(final);
}

/// `sender` broadcasts numbers while `kill()` ends what the `movers` were connected to; once
/// they are back (and `back()` has checked them), the sends stop. Nothing lost, nothing twice,
/// in order, for every client that stayed; the movers hear the broadcasts sent after they came
/// back. Each client collects the numbers it hears in `c.numbers`; `settle` is how long the
/// last ones get to arrive.
async function broadcastAcrossLoss(sender, stayers, movers, kill, back, settle = 300) {
  let n = 0;
  let sending = true;
  const pump = (async () => {
    while (sending) {
      n += 1;
      await sender.invoke('Broadcast', n);
      await sleep(10);
    }
  })();
  await sleep(300);
  kill();
  await Promise.all(movers.map((c) => c.reconnected));
  await back();
  await sleep(300);
  sending = false;
  await pump;
  const last = n;
  await sleep(settle);
  const all = Array.from({ length: last }, (_, i) => i + 1);
  for (const c of stayers) assert.deepEqual(c.numbers, all);
  for (const c of movers) assert.equal(c.numbers[c.numbers.length - 1], last);
}

module.exports = { relayClient, relayLoss, broadcastAcrossLoss };
