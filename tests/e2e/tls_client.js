// The official Node client over https and wss, run by tls.test.js in a process of its own:
// Node trusts the test run's CA only through NODE_EXTRA_CA_CERTS, which it reads at start,
// as a user with a private CA would set it. It connects through the sample app's negotiate
// (`argv[2]`: its address) over each transport and protocol, echoes, sends itself a message,
// and prints one JSON line per connection with what the client logged about its transport.
'use strict';
const signalR = require('@microsoft/signalr');
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');

const app = process.argv[2];
const cases = [
  { transport: 'WebSockets', msgpack: false },
  { transport: 'WebSockets', msgpack: true },
  { transport: 'ServerSentEvents', msgpack: false },
  { transport: 'LongPolling', msgpack: false },
  { transport: 'LongPolling', msgpack: true },
];

async function one({ transport, msgpack }) {
  const logged = [];
  const logger = { log: (level, message) => { if (level >= signalR.LogLevel.Information) logged.push(message); } };
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(`http://${app}/chat?user=tls-user`, signalR.HttpTransportType[transport])
    .configureLogging(logger);
  if (msgpack) builder.withHubProtocol(new MessagePackHubProtocol());
  const c = builder.build();
  const direct = new Promise((resolve) => c.on('directMessage', (m) => resolve(m)));
  await c.start();
  const echo = await c.invoke('Echo', `over ${transport}`);
  const id = await c.invoke('GetConnectionId');
  await c.invoke('SendToConnection', id, 'to myself');
  const message = await direct;
  await c.stop();
  return { transport, msgpack, echo, message, connected: logged.filter((l) => /connected to/i.test(l)) };
}

(async () => {
  for (const c of cases) console.log(JSON.stringify(await one(c)));
})().catch((e) => {
  console.error(`tls client failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
