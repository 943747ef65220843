// The official client in headless Chromium (Debian's package, driven by playwright-core), over
// every transport, cross-origin.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { Stack, TRANSPORTS } = require('./harness');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FILES = {
  '/core.html': path.join(__dirname, 'browser/core.html'),
  '/signalr.js': require.resolve('@microsoft/signalr/dist/browser/signalr.js'),
  '/signalr-protocol-msgpack.js': require.resolve('@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.js'),
};

let stack;
let pages;
let browser;
let profile;
before(async () => {
  stack = await Stack.start();
  // The test page's own origin.
  pages = http.createServer((req, res) => {
    const file = FILES[new URL(req.url, 'http://x').pathname];
    if (!file) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'Content-Type': file.endsWith('.html') ? 'text/html' : 'text/javascript' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => pages.listen(0, '127.0.0.1', resolve));
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-chromium-'));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  if (browser) await browser.close();
  if (pages) pages.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  await stack.stop();
});

for (const [transport, protocols] of TRANSPORTS) for (const msgpack of protocols) {
  test(`Chromium over ${transport}, ${msgpack ? 'MessagePack' : 'JSON'}: echo, broadcast, user, client result`, async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const query = new URLSearchParams({ app: `http://${stack.appAddr}`, transport, msgpack: msgpack ? '1' : '0' });
    await page.goto(`http://127.0.0.1:${pages.address().port}/core.html?${query}`);
    await page.waitForFunction(() => window.__result, null, { timeout: 20000 });
    const result = await page.evaluate(() => window.__result);
    const log = await page.evaluate(() => document.getElementById('log').textContent);
    await page.close();
    assert.equal(result, 'ok', `${result}\n${log}\n${errors.join('\n')}`);
  });
}
