// The official client in headless Chromium (Debian's package, driven by playwright-core), over
// every transport, cross-origin.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Stack, Browser, TRANSPORTS } = require('./harness');

const FILES = {
  '/core.html': path.join(__dirname, 'browser/core.html'),
  '/signalr.js': require.resolve('@microsoft/signalr/dist/browser/signalr.js'),
  '/signalr-protocol-msgpack.js': require.resolve('@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.js'),
};

let stack;
let browser;
before(async () => {
  stack = await Stack.start();
  browser = await Browser.start(FILES);
});
after(async () => {
  if (browser) await browser.close();
  await stack.stop();
});

for (const [transport, protocols] of TRANSPORTS) for (const msgpack of protocols) {
  test(`Chromium over ${transport}, ${msgpack ? 'MessagePack' : 'JSON'}: echo, broadcast, user, client result`, async () => {
    const { page, errors } = await browser.open('/core.html', { app: `http://${stack.appAddr}`, transport, msgpack: msgpack ? '1' : '0' });
    await page.waitForFunction(() => window.__result, null, { timeout: 20000 });
    const result = await page.evaluate(() => window.__result);
    const log = await page.evaluate(() => document.getElementById('log').textContent);
    await page.close();
    assert.equal(result, 'ok', `${result}\n${log}\n${errors.join('\n')}`);
  });
}
