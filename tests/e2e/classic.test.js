// The official classic ASP.NET SignalR 2.x client (jquery.signalR 2.4.3 on jQuery 3.7.1) in
// headless Chromium, cross-origin, over every classic transport: hub features, a reconnect after
// the client's sockets are cut, and a classic client next to an ASP.NET Core client.
'use strict';
const { test, before, after, describe } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { CLASSIC_FILES, Stack, Browser, pageVerdict, collect, sleep } = require('./harness');

const CLASSIC_TRANSPORTS = ['webSockets', 'serverSentEvents', 'longPolling'];
const FILES = {
  '/classic.html': path.join(__dirname, 'browser/classic.html'),
  ...CLASSIC_FILES,
};

let browser;
before(async () => { browser = await Browser.start(FILES); });
after(async () => { if (browser) await browser.close(); });

/// Opens classic.html for `stack` in a new tab.
function open(stack, transport, mode) {
  return browser.open('/classic.html', { app: `http://${stack.appAddr}`, transport, mode });
}

/// Waits for the page's verdict, closes the tab and fails the test with the page's log unless 'ok'.
const verdict = (tab, timeout) => pageVerdict(tab, timeout);

/// Waits until `flag` is set on the page, or the page gave up with a result.
async function waitForFlag({ page }, flag, timeout = 20000) {
  await page.waitForFunction((f) => window[f] || window.__result, flag, { timeout });
  const early = await page.evaluate(() => window.__result);
  if (early) throw new Error(`the page ended before ${flag}: ${early}\n${await page.evaluate(() => document.getElementById('log').textContent)}`);
}

describe('classic jQuery client', () => {
  let stack;
  before(async () => { stack = await Stack.start(); });
  after(async () => { if (stack) await stack.stop(); });

  for (const transport of CLASSIC_TRANSPORTS) {
    test(`jQuery over ${transport}: echo, errors, progress, hub state, pushes, groups, broadcast, left`, async () => {
      await verdict(await open(stack, transport, 'full'), 30000);
    });
  }

  test('a classic client and an ASP.NET Core client share a group and broadcasts', async () => {
    const core = await stack.connect('chat', { user: 'core-user' });
    const groupMessages = collect(core, 'groupMessage');
    const broadcasts = collect(core, 'broadcast');
    await core.invoke('JoinGroup', 'mixed');
    const tab = await open(stack, 'webSockets', 'mixed');
    try {
      await waitForFlag(tab, '__mixed_ready');
      await core.invoke('SendToGroup', 'mixed', 'from core');
      await verdict(tab, 20000);
      await sleep(300);
      assert.deepEqual(groupMessages, [['mixed', 'from core'], ['mixed', 'from classic']]);
      assert.deepEqual(broadcasts, [['classic to all']]);
    } finally {
      if (!tab.page.isClosed()) await tab.page.close();
      await core.stop();
    }
  });
});

describe('classic jQuery client, cut sockets', () => {
  let stack;
  // Clients reach the relay through a TCP proxy whose sockets the test can cut.
  before(async () => { stack = await Stack.start({ clientProxy: true }); });
  after(async () => { if (stack) await stack.stop(); });

  for (const transport of CLASSIC_TRANSPORTS) {
    test(`jQuery over ${transport} reconnects after its sockets are cut, with the same id`, async () => {
      const tab = await open(stack, transport, 'cut');
      await waitForFlag(tab, '__cut_ready');
      // Chromium silently retries a request that fails on a reused keep-alive socket before any
      // response (a pending long poll), so cut again until both connections noticed. Stop well
      // before jquery.signalR's reconnect delay (2 s, 3 s for long polling) so the reconnect
      // itself is not cut.
      const end = Date.now() + 1500;
      let cuts = 0;
      while (Date.now() < end) {
        for (const p of stack.proxy.connections()) { p.client.destroy(); p.upstream.destroy(); cuts += 1; }
        await sleep(100);
        if (await tab.page.evaluate(() => window.__lost_all || Boolean(window.__result))) break;
      }
      assert.ok(cuts > 0, 'no client sockets went through the proxy');
      await verdict(tab, 45000);
    });
  }
});
