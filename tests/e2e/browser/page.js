// What the classic jQuery pages share: a log on the page, and checks that say what failed.
'use strict';
const logEl = document.getElementById('log');
const log = (line) => { logEl.textContent += line + '\n'; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const show = (v) => JSON.stringify(v);
// JSON with object keys sorted, so that comparisons ignore key order.
const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x));

function check(what, got, want) {
  if (canon(got) !== canon(want)) throw new Error(`${what}: got ${show(got)}, want ${show(want)}`);
  log(`ok ${what}`);
}

async function waitFor(what, pred, ms = 10000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
