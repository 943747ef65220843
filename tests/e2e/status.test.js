// The status page (#13), in headless Chromium: served by the relay at /, self-contained, it
// reads /api/status (with a token unless the relay is in dev mode), shows the hubs, app
// servers and clients the test connected, and updates when a client leaves.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, Browser, jwt, sleep } = require('./harness');

let stack;
let browser;
before(async () => {
  stack = await Stack.start({ appArgs: ['--server-id', 'status-app'] });
  browser = await Browser.start({});
});
after(async () => {
  if (browser) await browser.close();
  await stack.stop();
});

const statusToken = () => jwt({ aud: 'http://127.0.0.1/api/status', exp: Math.floor(Date.now() / 1000) + 600 }, stack.key);

test('/api/status needs an access-key token for its audience, and shows no secret', async () => {
  const url = `http://${stack.relayAddr}/api/status`;
  assert.equal((await fetch(url)).status, 401);
  assert.equal((await fetch(url, { headers: { Authorization: `Bearer ${stack.clientToken('testhub')}` } })).status, 401);
  const r = await fetch(url, { headers: { Authorization: `Bearer ${statusToken()}` } });
  assert.equal(r.status, 200);
  const text = await r.text();
  const status = JSON.parse(text);
  assert.equal(status.serviceMode, 'default');
  assert.equal(status.listen, stack.relayAddr);
  assert.ok(!text.includes(stack.key));
});

test('the page renders the hubs, updates when a client leaves, and asks for a token without one', async () => {
  const clients = [
    await stack.connect('testhub'), await stack.connect('testhub'),
    await stack.connect('testhub', { transport: 'LongPolling', msgpack: true }),
  ];
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('requestfailed', (r) => { if (!r.url().includes('/api/status')) errors.push(`${r.url()} failed`); });
  // The app server's five connections may still be coming (the stack waits for the first).
  for (let i = 0; i < 100; i++) {
    const s = await (await fetch(`http://${stack.relayAddr}/api/status`, { headers: { Authorization: `Bearer ${statusToken()}` } })).json();
    if (s.hubs.find((h) => h.name === 'testhub')?.appServers[0]?.connections === 5) break;
    await sleep(50);
  }
  await page.goto(`http://${stack.relayAddr}/#token=${statusToken()}`);
  const cell = (transport, protocol) => `table.clients[data-hub="testhub"] td[data-transport="${transport}"][data-protocol="${protocol}"]`;
  await page.waitForSelector(cell('websockets', 'json'), { timeout: 10000 });
  assert.equal(await page.textContent(cell('websockets', 'json')), '2');
  assert.equal(await page.textContent(cell('longpolling', 'messagepack')), '1');
  assert.equal(await page.textContent('table.servers[data-hub="testhub"] td[data-server="status-app"][data-what="connections"]'), '5');
  // The token left the address bar (it is kept for the tab only).
  assert.ok(!page.url().includes('token='));

  await clients[0].stop();
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '1', cell('websockets', 'json'), { timeout: 10000 });
  await page.waitForFunction(() => [...document.querySelectorAll('#closes td')].some((td) => td.textContent === 'normal'), null, { timeout: 10000 });
  assert.deepEqual(errors, []);

  // A new tab without the token is told how to get one.
  const bare = await browser.context.newPage();
  await bare.goto(`http://${stack.relayAddr}/`);
  await bare.waitForFunction(() => document.getElementById('problem').textContent.includes('--print-status-token'), null, { timeout: 10000 });
  await bare.close();
  await page.close();
  await Promise.all(clients.slice(1).map((c) => c.stop()));
});
