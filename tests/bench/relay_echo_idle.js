// Benchmark (not a test): relay CPU per relayed echo, and relay RSS per idle client.
//
//   node tests/bench/relay_echo_idle.js [clients=1000] [echoes=20000] [transport=WebSockets]
//   E2E_RUNTIME=smol node tests/bench/relay_echo_idle.js ...   (the smol binaries)
//
// Uses the release binaries (cargo build --release --bins). The relay's CPU time and RSS are
// read from /proc, so the load generator's own CPU does not count. Prints JSON and a table.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
process.env.RELAY_BIN_DIR = process.env.RELAY_BIN_DIR || path.resolve(__dirname, '../../target/release');
const { RUNTIME, Stack } = require('../e2e/harness');

const CLIENTS = Number(process.argv[2] || 1000);
const ECHOES = Number(process.argv[3] || 20000);
const TRANSPORT = process.argv[4] || 'WebSockets';
const TICKS = 100; // USER_HZ on Linux

function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS; // utime + stime
}

function rssBytes(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]) * 1024;
}

(async () => {
  const stack = await Stack.start();
  const relayPid = stack.relay.child.pid;
  try {
    // Warm up one connection so that allocator pools exist before the baseline.
    const warm = await stack.connect('chat', { transport: TRANSPORT });
    await warm.invoke('Echo', 'warm');
    const rssBefore = rssBytes(relayPid);
    const clients = [];
    for (let i = 0; i < CLIENTS; i += 50) {
      clients.push(...await Promise.all(Array.from({ length: Math.min(50, CLIENTS - i) }, () => stack.connect('chat', { transport: TRANSPORT }))));
    }
    await new Promise((r) => setTimeout(r, 2000));
    const rssAfter = rssBytes(relayPid);

    // Closed-loop echoes: 100 clients with one invocation in flight each.
    const senders = clients.slice(0, 100);
    const payload = 'x'.repeat(64);
    const cpu0 = cpuSeconds(relayPid);
    const t0 = process.hrtime.bigint();
    let done = 0;
    await Promise.all(senders.map(async (c) => {
      while (done < ECHOES) {
        done++;
        await c.invoke('Echo', payload);
      }
    }));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = cpuSeconds(relayPid) - cpu0;
    const result = {
      date: new Date().toISOString().slice(0, 10),
      runtime: RUNTIME,
      transport: TRANSPORT,
      clients: CLIENTS,
      idle_rss_per_client_bytes: Math.round((rssAfter - rssBefore) / CLIENTS),
      relay_rss_mb: +(rssAfter / 1048576).toFixed(1),
      echoes: done,
      echoes_per_sec: Math.round(done / seconds),
      relay_cpu_us_per_echo: +((cpu * 1e6) / done).toFixed(1),
    };
    console.log(JSON.stringify(result));
    console.log(`| runtime | transport | clients | RSS/idle client | relay CPU per echo | echoes/s |`);
    console.log(`| ${RUNTIME} | ${TRANSPORT} | ${CLIENTS} | ${(result.idle_rss_per_client_bytes / 1024).toFixed(1)} KiB | ${result.relay_cpu_us_per_echo} µs | ${result.echoes_per_sec} |`);
    await Promise.all([warm, ...clients].map((c) => c.stop().catch(() => {})));
  } finally {
    await stack.stop();
  }
})().catch((e) => { console.error(e); process.exit(1); });
