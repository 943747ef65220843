// Microsoft's own Management SDK end-to-end facts (Azure/azure-signalr,
// test/Microsoft.Azure.SignalR.E2ETests/Management/, HEAD 31686ed7), against a serverless relay,
// in both of the SDK's transports, as the facts' theories run them:
//   - Transient (REST): the test signs and sends the REST calls that RestHubLifetimeManager and
//     RestApiProvider make (2022-06-01; the hub lowercased; `application` in the query;
//     `excluded`, `reason` and `ttl` after signing). It judges each answer as the SDK does: any
//     2xx is success, and a 404 is accepted only with the x-ms-error-code that the operation
//     tolerates.
//   - Persistent: the test opens the Weak server connection that WeakServiceConnectionContainer
//     and ConnectionFactory open (`/server/?hub=<app>_<hub>&cid=…`, one connection, the
//     HandshakeRequest with connection type 2), and writes the service messages that
//     WebSocketsHubLifetimeManager and ServiceLifetimeManagerBase write, each call's exact
//     message (see PersistentHubContext). It judges acks as AckHandler.HandleAckStatus does: Ok is
//     true, NotFound false, anything else an exception. Its payloads are the SDK's default, JSON
//     only (ManagementHubOptionsSetup), so MessagePack clients rely on the service's conversion;
//     one test adds MessagePack as ServiceManagerBuilder.AddHubProtocol does.
// The test mints client tokens as ServiceManager and NegotiateProcessor do, and connects official
// clients (JSON and MessagePack in turn).
//
// The facts' theories run each fact for the application names "appName", "" and null. The
// SDK treats "" and null alike (IsNullOrEmpty), so here each runs with "appName" and without.
//
// Mirrored although Azure's suite skips them (the skip is about their test rig, not the service):
//   SendToConnectionTest, ConnectionJoinLeaveGroupTest ("Not Ready": an in-process test server
//     supplies the connection id; here it is the client's own), RemoveConnectionFromAllGroupsTest
//     ("wait for fixing bug of JWT token", an SDK-side token issue).
// Mirrored for what reaches the service:
//   - ServiceHubContextIndependencyTest (Persistent only): two contexts' own Weak connections;
//     the first closed, the second still reaches clients.
//   - EnableMessageTracingTest (Persistent only): its messages carry a tracing id; the service
//     must accept and ack them alike. The fact's assertion on the SDK's own log is SDK-side.
//   - WithEndpointsTest (Persistent, multi-endpoint): two relays, a Weak connection to each; a
//     send written on one endpoint's connection reaches that endpoint's clients only.
//   - NegotiateProcessorE2EFacts.ColdStartNegotiateTest: the SDK negotiates only to an endpoint
//     whose Weak connection completed its handshake; three fake endpoints refuse, the relay
//     completes it.
//   - The *NonexistentRestApiTest facts are Transient in the suite; their Persistent rows are
//     run too (each must ack Ok or NotFound, never fail).
// Not mirrored:
//   - ServiceHubContextE2EFacts.SendToEmptyReceiversTest: Users([]), Clients([]) and Groups([])
//     send nothing in either transport (REST: zero calls; Persistent: ServiceLifetimeManagerBase
//     returns before writing). Nothing reaches the service.
//   - ServiceHubContextE2EFacts.StopServiceHubContextTest: skipped upstream. It inspects the SDK's
//     in-process connection container.
// At this revision the facts use no Entra ID and none of Azure's 2024 APIs (connection listing,
// :generateToken).
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const os = require('node:os');
const { SUFFIX, startProcess, startClient, jwt, next, sleep, until, signalR } = require('./harness');
const WebSocket = require('ws');
const { frame, frames } = require('./service_wire');

const HUB = 'ManagemnetTestHub'; // sic, as the facts spell it
const METHOD = 'SendMessage';
const MESSAGE = 'Hello client, have a nice day!';
const CLIENT_COUNT = 4;
const GROUP_COUNT = 2;
const APPS = ['appName', null];
const MODES = ['Transient', 'Persistent'];
// The facts' Task.Delay(_timeout) (1 s there).
const settle = () => sleep(300);
const names = (n) => Array.from({ length: n }, () => crypto.randomUUID());

const key = crypto.randomBytes(16).toString('hex');
let relay;
let relayAddr;
// A second service, for the multi-endpoint fact.
let relay2;

const startRelay = () => startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--service-mode', 'serverless', '--log', 'warn']);

before(async () => {
  relay = startRelay();
  relay2 = startRelay();
  relayAddr = await relay.ready;
  relay2.addr = await relay2.ready;
});

after(() => {
  for (const r of [relay, relay2]) if (r.child.exitCode === null) r.child.kill('SIGKILL');
});

// Uri.EscapeDataString: only RFC 3986 unreserved characters stay.
const esc = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
// The SDK signs audiences on `{scheme}://{host}/`, without the port.
const AUDIENCE_BASE = 'http://127.0.0.1/';

function token(aud, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  return jwt({ ...claims, aud, iat: now, nbf: now, exp: now + 3600 }, key);
}

/// What a ServiceManager and ServiceHubContext do for one hub in either transport: client
/// endpoints and tokens, minted locally.
class HubContextBase {
  constructor(hub, app = null, addr = relayAddr) {
    this.hub = hub.toLowerCase();
    this.app = app ? app.toLowerCase() : null;
    this.hubKey = this.app ? `${this.app}_${this.hub}` : this.hub;
    this.addr = addr;
  }

  /// ServiceManager.GetClientEndpoint.
  clientEndpoint() {
    return `http://${this.addr}/client/?hub=${this.hubKey}`;
  }

  /// ServiceManager.GenerateClientAccessToken: the user id as NameIdentifier (`nameid`).
  generateClientAccessToken(user) {
    return token(`${AUDIENCE_BASE}client/?hub=${this.hubKey}`, user ? { nameid: user } : {});
  }

  /// ServiceHubContext.NegotiateAsync: the user id in `asrs.s.uid`, then the diagnostic and
  /// detailed-errors flags (ClaimsUtility.BuildJwtClaims).
  negotiate({ userId, isDiagnosticClient, enableDetailedErrors } = {}) {
    const claims = {};
    if (userId) claims['asrs.s.uid'] = userId;
    if (isDiagnosticClient) claims['asrs.s.dc'] = 'true';
    if (enableDetailedErrors) claims['asrs.s.derror'] = 'True';
    return { url: this.clientEndpoint(), accessToken: token(`${AUDIENCE_BASE}client/?hub=${this.hubKey}`, claims) };
  }
}

/// The Transient ServiceHubContext: REST calls.
class TransientHubContext extends HubContextBase {
  async start() { return this; }
  async dispose() {}

  /// One REST call: the token's audience is the URL up to api-version, with no port.
  /// `extra` ([name, value] pairs) goes after signing. It throws as the SDK would.
  /// A 404 passes only with the `tolerated` x-ms-error-code.
  async rest(method, pathAfterHub, { extra = [], body, tolerated } = {}) {
    const signed = `api/hubs/${esc(this.hub)}${pathAfterHub}?${this.app ? `application=${esc(this.app)}&` : ''}api-version=2022-06-01`;
    const headers = { Authorization: `Bearer ${token(`${AUDIENCE_BASE}${signed}`, { nameid: `${os.hostname()}_${crypto.randomUUID().replace(/-/g, '')}` })}` };
    if (body) headers['Content-Type'] = 'application/json; charset=utf-8';
    const url = `http://${this.addr}/${signed}${extra.map(([k, v]) => `&${k}=${esc(String(v))}`).join('')}`;
    const r = await fetch(url, { method, headers, body: body && JSON.stringify(body) });
    const code = r.headers.get('x-ms-error-code');
    const accepted = r.ok || (r.status === 404 && tolerated !== undefined && code?.toLowerCase() === tolerated.toLowerCase());
    if (!accepted) throw new Error(`${method} ${url} -> ${r.status} ${code ?? ''} ${await r.text()}`);
    return r;
  }

  send(pathAfterHub, method, args, extra) {
    return this.rest('POST', `${pathAfterHub}/:send`, { extra, body: { Target: method, Arguments: args } });
  }

  // Clients.All / AllExcept
  sendAll(method, args, excluded = []) { return this.send('', method, args, excluded.map((c) => ['excluded', c])); }
  // Clients.Client
  sendConnection(connectionId, method, args) { return this.send(`/connections/${esc(connectionId)}`, method, args); }
  // Clients.User
  sendUser(user, method, args) { return this.send(`/users/${esc(user)}`, method, args); }
  // Clients.Users: the REST API has no multi-user send; the SDK makes one call per user.
  sendUsers(users, method, args) { return Promise.all(users.map((u) => this.sendUser(u, method, args))); }
  // Clients.Group / GroupExcept
  sendGroup(group, method, args, excluded = []) { return this.send(`/groups/${esc(group)}`, method, args, excluded.map((c) => ['excluded', c])); }
  // Clients.Groups: the REST API has no multi-group send; the SDK makes one call per group.
  sendGroups(groups, method, args) { return Promise.all(groups.map((g) => this.sendGroup(g, method, args))); }

  // Groups.AddToGroupAsync: an unknown connection is not an error.
  addToGroup(connectionId, group) {
    return this.rest('PUT', `/groups/${esc(group)}/connections/${esc(connectionId)}`, { tolerated: 'Error.Connection.NotExisted' });
  }
  // Groups.RemoveFromGroupAsync: no 404 tolerated.
  removeFromGroup(connectionId, group) { return this.rest('DELETE', `/groups/${esc(group)}/connections/${esc(connectionId)}`); }
  // Groups.RemoveFromAllGroupsAsync
  removeFromAllGroups(connectionId) { return this.rest('DELETE', `/connections/${esc(connectionId)}/groups`); }

  // UserGroups.AddToGroupAsync, with a ttl (whole seconds) if given.
  userAddToGroup(user, group, ttlSeconds) {
    return this.rest('PUT', `/users/${esc(user)}/groups/${esc(group)}`, { extra: ttlSeconds === undefined ? [] : [['ttl', Math.trunc(ttlSeconds)]] });
  }
  // UserGroups.RemoveFromGroupAsync / RemoveFromAllGroupsAsync
  userRemoveFromGroup(user, group) { return this.rest('DELETE', `/users/${esc(user)}/groups/${esc(group)}`); }
  userRemoveFromAllGroups(user) { return this.rest('DELETE', `/users/${esc(user)}/groups`); }
  // UserGroups.IsUserInGroup: GET, true only for 200.
  async isUserInGroup(user, group) {
    return (await this.rest('GET', `/users/${esc(user)}/groups/${esc(group)}`, { tolerated: 'Info.User.NotInGroup' })).status === 200;
  }

  // ClientManager.CloseConnectionAsync
  closeConnection(connectionId, reason) {
    return this.rest('DELETE', `/connections/${esc(connectionId)}`, { extra: reason === undefined ? [] : [['reason', reason]], tolerated: 'Warning.Connection.NotExisted' });
  }
  // ClientManager.ConnectionExistsAsync / UserExistsAsync / GroupExistsAsync: HEAD, true only for 200.
  async connectionExists(id) { return (await this.rest('HEAD', `/connections/${esc(id)}`, { tolerated: 'Warning.Connection.NotExisted' })).status === 200; }
  async userExists(user) { return (await this.rest('HEAD', `/users/${esc(user)}`, { tolerated: 'Warning.User.NotExisted' })).status === 200; }
  async groupExists(group) { return (await this.rest('HEAD', `/groups/${esc(group)}`, { tolerated: 'Warning.Group.NotExisted' })).status === 200; }
}

/// The Persistent ServiceHubContext: one Weak server connection
/// (ServiceManagerOptions.ConnectionCount is 1), and the messages of
/// WebSocketsHubLifetimeManager over it.
class PersistentHubContext extends HubContextBase {
  /// `protocols`: the hub protocols whose payloads each send carries (the SDK's default is
  /// JSON only). `tracing`: ServiceManagerOptions.EnableMessageTracing.
  constructor(hub, app, addr, { protocols = ['json'], tracing = false } = {}) {
    super(hub, app, addr);
    this.protocols = protocols;
    this.tracing = tracing;
    this.acks = new Map();
    this.nextAck = 1;
    this.nextTracing = 1n;
  }

  /// WeakServiceConnectionContainer's one connection: ConnectionFactory's URL, token (audience
  /// without the port, the server name as NameIdentifier) and headers, then the handshake;
  /// resolves once the service answers it without an error.
  start() {
    const serverId = `${os.hostname()}_${crypto.randomUUID().replace(/-/g, '')}`;
    const bearer = token(`${AUDIENCE_BASE}server/?hub=${this.hubKey}`, { nameid: serverId });
    this.ws = new WebSocket(`ws://${this.addr}/server/?hub=${this.hubKey}&cid=${crypto.randomUUID()}`, {
      headers: { Authorization: `Bearer ${bearer}`, 'X-ASRS-Server-Id': serverId, 'Asrs-User-Agent': 'Microsoft.Azure.SignalR.Management/1.34.0' },
    });
    return new Promise((resolve, reject) => {
      this.ws.on('error', reject);
      this.ws.on('open', () => {
        // HandshakeRequest: version 1, ServiceConnectionType.Weak (2), no target, no migration.
        this.ws.send(frame([1, 1, 2, '', 0, {}]));
      });
      this.ws.on('close', (code, why) => {
        reject(new Error(`server connection closed: ${code} ${why}`));
        for (const { fail } of this.acks.values()) fail(new Error('server connection closed'));
      });
      this.ws.on('message', (data) => {
        for (const m of frames(Buffer.from(data))) {
          if (m[0] === 2) {
            // HandshakeResponse: [2, error, ext, connectionId].
            if (m[1]) reject(new Error(`handshake refused: ${m[1]}`));
            else resolve(this);
          } else if (m[0] === 20) {
            // Ack: [20, ackId, status, message, ext].
            const waiter = this.acks.get(m[1]);
            if (waiter) {
              this.acks.delete(m[1]);
              waiter.done(m[2], m[3]);
            }
          }
          // Pings ([3, …]) need no answer from a Weak connection.
        }
      });
    });
  }

  async dispose() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      const closed = new Promise((resolve) => this.ws.once('close', resolve));
      this.ws.close();
      await closed;
    }
  }

  /// The extension members (ExtensibleServiceMessage.WriteExtensionMembers): 1 a tracing id
  /// (when enabled), 2 a ttl.
  ext({ ttl } = {}) {
    const m = new Map();
    if (this.tracing) m.set(1, this.nextTracing++);
    if (ttl !== undefined) m.set(2, ttl);
    return m;
  }

  /// SerializeAllProtocols: the invocation in each hub protocol the context has.
  payloads(method, args) {
    const p = {};
    for (const name of this.protocols) {
      if (name === 'json') {
        p.json = Buffer.from(`${JSON.stringify({ type: 1, target: method, arguments: args })}\x1e`);
      } else if (name === 'messagepack') {
        // The MessagePack hub protocol: a varint length, then [1, headers, invocation id, target, args, stream ids].
        p.messagepack = frame([1, {}, null, method, args, []]);
      }
    }
    return p;
  }

  write(message) {
    this.ws.send(frame(message), { binary: true });
  }

  /// WriteAckableMessageAsync: `build(ackId)` is the message; the ack's status decides.
  ackable(build) {
    const id = this.nextAck++;
    return new Promise((resolve, reject) => {
      this.acks.set(id, {
        done: (status, message) => {
          if (status === 1) resolve(true);
          else if (status === 2) resolve(false);
          else reject(new Error(`ack ${id}: status ${status} ${message ?? ''}`));
        },
        fail: reject,
      });
      this.write(build(id));
    });
  }

  // Clients.All / AllExcept: BroadcastDataMessage.
  async sendAll(method, args, excluded = []) { this.write([10, excluded, this.payloads(method, args), this.ext()]); }
  // Clients.Client: MultiConnectionDataMessage of one.
  async sendConnection(connectionId, method, args) { this.write([7, [connectionId], this.payloads(method, args), this.ext()]); }
  // Clients.User: UserDataMessage.
  async sendUser(user, method, args) { this.write([8, user, this.payloads(method, args), this.ext()]); }
  // Clients.Users: one MultiUserDataMessage (none for an empty list).
  async sendUsers(users, method, args) { if (users.length) this.write([9, users, this.payloads(method, args), this.ext()]); }
  // Clients.Group / GroupExcept: GroupBroadcastDataMessage (no excluded users, no caller).
  async sendGroup(group, method, args, excluded = []) { this.write([13, group, excluded, this.payloads(method, args), this.ext(), [], null]); }
  // Clients.Groups: one MultiGroupBroadcastDataMessage (none for an empty list).
  async sendGroups(groups, method, args) { if (groups.length) this.write([14, groups, this.payloads(method, args), this.ext()]); }

  // Groups.AddToGroupAsync / RemoveFromGroupAsync / RemoveFromAllGroupsAsync: Join/LeaveGroupWithAck
  // (a null group leaves every group).
  addToGroup(connectionId, group) { return this.ackable((id) => [18, connectionId, group, id, this.ext()]); }
  removeFromGroup(connectionId, group) { return this.ackable((id) => [19, connectionId, group, id, this.ext()]); }
  removeFromAllGroups(connectionId) { return this.ackable((id) => [19, connectionId, null, id, this.ext()]); }

  // UserGroups: UserJoinGroupWithAck (the ttl in whole seconds as an extension member) and
  // UserLeaveGroupWithAck (a null group: every group); IsUserInGroup: CheckUserInGroupWithAck.
  userAddToGroup(user, group, ttlSeconds) {
    return this.ackable((id) => [26, user, group, id, this.ext(ttlSeconds === undefined ? {} : { ttl: Math.trunc(ttlSeconds) })]);
  }
  userRemoveFromGroup(user, group) { return this.ackable((id) => [27, user, group, id, this.ext()]); }
  userRemoveFromAllGroups(user) { return this.ackable((id) => [27, user, null, id, this.ext()]); }
  isUserInGroup(user, group) { return this.ackable((id) => [21, user, group, id, this.ext()]); }

  // ClientManager.CloseConnectionAsync: CloseConnectionMessage, the reason as its error, no ack.
  async closeConnection(connectionId, reason) { this.write([5, connectionId, reason ?? null, {}, this.ext()]); }
  // ClientManager.ConnectionExistsAsync / UserExistsAsync / GroupExistsAsync.
  connectionExists(id) { return this.ackable((ack) => [24, id, ack, this.ext()]); }
  userExists(user) { return this.ackable((ack) => [25, user, ack, this.ext()]); }
  groupExists(group) { return this.ackable((ack) => [23, group, ack, this.ext()]); }
}

/// ServiceManager.CreateHubContextAsync in `mode`, started; `fn(ctx)` runs, then the context is
/// disposed.
async function withContext(mode, hub, app, fn, { addr = relayAddr, ...options } = {}) {
  const ctx = mode === 'Persistent' ? new PersistentHubContext(hub, app, addr, options) : new TransientHubContext(hub, app, addr);
  await ctx.start();
  try {
    return await fn(ctx);
  } finally {
    await ctx.dispose();
  }
}

/// The facts' CreateHubConnection: an official client on `url` with `accessToken`, started.
function connect(url, accessToken, { msgpack = false } = {}) {
  const options = { transport: signalR.HttpTransportType.WebSockets, accessTokenFactory: () => accessToken };
  return startClient(url, options, { msgpack });
}

/// RunTestCore: a client per token (JSON and MessagePack in turn), `core` run, then each
/// client's count of METHOD(MESSAGE) checked, and that none was closed meanwhile.
///
/// The facts wait a fixed time before counting; here a marker sent to all by `via` (the
/// context `core` sent on, unless it disposed it) marks the end instead. The relay delivers a
/// connection's messages to each client in order, so when every client has the marker, every
/// message of `core` that reached a client, a duplicate or a stray one included, is counted:
/// a loaded machine cannot make the count early.
async function runTestCore(ctx, tokens, core, expected, via = ctx) {
  const clients = await Promise.all(tokens.map((t, i) => connect(ctx.clientEndpoint(), t, { msgpack: i % 2 === 1 })));
  try {
    const counts = clients.map(() => 0);
    clients.forEach((c, i) => c.on(METHOD, (m) => { if (m === MESSAGE) counts[i] += 1; }));
    await core(clients);
    const marker = crypto.randomUUID();
    const marked = clients.map(() => false);
    clients.forEach((c, i) => c.on('Marker', (m) => { if (m === marker) marked[i] = true; }));
    await via.sendAll('Marker', [marker]);
    await until(() => marked.every(Boolean), `every client has the marker: ${marked}`);
    assert.deepEqual(counts, expected);
    assert.deepEqual(clients.map((c) => c.state), clients.map(() => signalR.HubConnectionState.Connected));
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
}

/// SendToGroupCore: add, send, remove, send, with a pause after each.
async function sendToGroupCore(send, add, remove) {
  for (const step of [add, send, remove, send]) {
    await step();
    await settle();
  }
}

/// GenerateUserGroupDict: user i in group i mod the group count.
const userGroupPairs = (users, groups) => users.map((u, i) => [u, [groups[i % groups.length]]]);
const addUsers = (ctx, pairs, ttl) => Promise.all(pairs.flatMap(([u, gs]) => gs.map((g) => ctx.userAddToGroup(u, g, ttl))));
const removeUsersOneByOne = (ctx, pairs) => Promise.all(pairs.flatMap(([u, gs]) => gs.map((g) => ctx.userRemoveFromGroup(u, g))));

/// InitAsync: random users and each user's client token (GenerateClientAccessToken).
function init(ctx, count = CLIENT_COUNT) {
  const users = names(count);
  return { users, tokens: users.map((u) => ctx.generateClientAccessToken(u)) };
}

const label = (mode, app) => `${mode}, ${app ? `application "${app}"` : 'no application'}`;

/// Three clients negotiated through `ctx` (JSON and MessagePack in turn), each of whose first
/// `method(msg)` is recorded; `send(connections)` runs; the first is excluded, the others hear.
async function exceptTest(ctx, method, msg, prepare, send) {
  const connections = [];
  try {
    for (const i of [0, 1, 2]) {
      const { url, accessToken } = ctx.negotiate();
      const c = await connect(url, accessToken, { msgpack: i % 2 === 1 });
      connections.push(c);
      await prepare(c);
    }
    const got = connections.map(() => false);
    connections.forEach((c, i) => c.on(method, (m) => { if (m === msg) got[i] = true; }));
    await send(connections[0].connectionId);
    await until(() => got[1] && got[2], `the included connections heard ${got}`, 5000);
    await settle();
    assert.deepEqual(got, [false, true, true]);
  } finally {
    await Promise.all(connections.map((c) => c.stop()));
  }
}

for (const mode of MODES) {
  for (const app of APPS) {
    const fact = (name, what, body) => test(`ServiceHubContextE2EFacts.${name} (${label(mode, app)}): ${what}`, () => withContext(mode, HUB, app, body));

    // -------------------------------------------------------------- sends

    fact('BroadcastTest', 'Clients.All reaches every client once', async (ctx) => {
      const { tokens } = init(ctx);
      await runTestCore(ctx, tokens, () => ctx.sendAll(METHOD, [MESSAGE]), [1, 1, 1, 1]);
    });

    fact('BroadcastExceptTest', 'Clients.AllExcept skips the excluded connection', async (ctx) => {
      const msg = crypto.randomUUID();
      await exceptTest(ctx, 'BroadcastExceptTest', msg, async () => {}, (excluded) => ctx.sendAll('BroadcastExceptTest', [msg], [excluded]));
    });

    fact('SendToUserTest', 'Clients.User reaches that user only', async (ctx) => {
      const { users, tokens } = init(ctx);
      await runTestCore(ctx, tokens, () => ctx.sendUser(users[0], METHOD, [MESSAGE]), [1, 0, 0, 0]);
    });

    fact('SendToUsersTest', `Clients.Users (${mode === 'Persistent' ? 'one MultiUserDataMessage' : 'one REST call per user'}) reaches each once`, async (ctx) => {
      const { users, tokens } = init(ctx);
      await runTestCore(ctx, tokens, () => ctx.sendUsers(users, METHOD, [MESSAGE]), [1, 1, 1, 1]);
    });

    fact('SendToConnectionTest', 'Clients.Client reaches that connection only', async (ctx) => {
      const { tokens } = init(ctx);
      await runTestCore(ctx, tokens, (clients) => ctx.sendConnection(clients[0].connectionId, METHOD, [MESSAGE]), [1, 0, 0, 0]);
    });

    // -------------------------------------------------------------- groups

    fact('SendToGroupTest', 'users added to groups hear their group, and stop once removed', async (ctx) => {
      const { users, tokens } = init(ctx);
      const groups = names(GROUP_COUNT);
      const pairs = userGroupPairs(users, groups);
      // Users 0 and 2 are in groups[0]: 4/2 + 4%2 = 2 messages in all, as the fact counts.
      await runTestCore(ctx, tokens, () => sendToGroupCore(
        () => ctx.sendGroup(groups[0], METHOD, [MESSAGE]),
        () => addUsers(ctx, pairs),
        () => removeUsersOneByOne(ctx, pairs),
      ), [1, 0, 1, 0]);
    });

    fact('SendToGroupExceptTest', 'Clients.GroupExcept skips the excluded member', async (ctx) => {
      const group = 'SendToGroupExceptTest';
      const msg = crypto.randomUUID();
      await exceptTest(ctx, 'SendToGroupExceptTest', msg, (c) => ctx.addToGroup(c.connectionId, group),
        (excluded) => ctx.sendGroup(group, 'SendToGroupExceptTest', [msg], [excluded]));
    });

    fact('TestAddUserToGroupWithTtl', "a user's membership with a 10 s ttl serves now, and not the user's later connections", async (ctx) => {
      const { users, tokens } = init(ctx);
      const groups = names(GROUP_COUNT);
      const pairs = userGroupPairs(users, groups);
      const send = () => ctx.sendGroup(groups[0], METHOD, [MESSAGE]);
      const nothing = async () => {};
      let addedAt;
      // Added with ttl 10 s, nothing removed: groups[0]'s two users hear both sends.
      await runTestCore(ctx, tokens, () => sendToGroupCore(send, () => { addedAt = Date.now(); return addUsers(ctx, pairs, 10); }, nothing), [2, 0, 2, 0]);
      // The fact waits 30 s; here, until 2 s past the ttl. The users' new connections are in no group.
      await sleep(Math.max(0, addedAt + 12000 - Date.now()));
      await runTestCore(ctx, tokens, () => sendToGroupCore(send, nothing, nothing), [0, 0, 0, 0]);
    });

    fact('SendToGroupsTest', `Clients.Groups (${mode === 'Persistent' ? 'one MultiGroupBroadcastDataMessage' : 'one REST call per group'}) reaches every member once`, async (ctx) => {
      const { users, tokens } = init(ctx);
      const groups = names(GROUP_COUNT);
      const pairs = userGroupPairs(users, groups);
      await runTestCore(ctx, tokens, () => sendToGroupCore(
        () => ctx.sendGroups(groups, METHOD, [MESSAGE]),
        () => addUsers(ctx, pairs),
        () => removeUsersOneByOne(ctx, pairs),
      ), [1, 1, 1, 1]);
    });

    fact('RemoveUserFromAllGroupsTest', 'a user in both groups hears each, then none once removed from all', async (ctx) => {
      const { users, tokens } = init(ctx);
      const groups = names(GROUP_COUNT);
      const pairs = [[users[0], groups]];
      await runTestCore(ctx, tokens, () => sendToGroupCore(
        () => ctx.sendGroups(groups, METHOD, [MESSAGE]),
        () => addUsers(ctx, pairs),
        () => ctx.userRemoveFromAllGroups(users[0]),
      ), [2, 0, 0, 0]);
    });

    fact('RemoveConnectionFromAllGroupsTest', 'a connection in both groups hears each, then none once removed from all', async (ctx) => {
      const { tokens } = init(ctx);
      const groups = names(GROUP_COUNT);
      await runTestCore(ctx, tokens, (clients) => sendToGroupCore(
        () => ctx.sendGroups(groups, METHOD, [MESSAGE]),
        () => Promise.all(groups.map((g) => ctx.addToGroup(clients[0].connectionId, g))),
        () => ctx.removeFromAllGroups(clients[0].connectionId),
      ), [2, 0, 0, 0]);
    });

    fact('ConnectionJoinLeaveGroupTest', 'a connection hears its group until it leaves', async (ctx) => {
      const { tokens } = init(ctx);
      const group = names(1)[0];
      await runTestCore(ctx, tokens, async (clients) => {
        const id = clients[0].connectionId;
        await ctx.addToGroup(id, group);
        await ctx.sendGroup(group, METHOD, [MESSAGE]);
        await settle();
        await ctx.removeFromGroup(id, group);
        await ctx.sendGroup(group, METHOD, [MESSAGE]);
      }, [1, 0, 0, 0]);
    });

    // -------------------------------------------------------------- close

    fact('CloseConnectionTest', 'the client is closed with the reason given', async (ctx) => {
      const reason = 'This is a test reason.';
      const { url, accessToken } = ctx.negotiate({ enableDetailedErrors: true, isDiagnosticClient: true });
      const conn = await connect(url, accessToken);
      try {
        await ctx.closeConnection(conn.connectionId, reason);
        const error = await conn.closedWith;
        assert.ok(error instanceof Error, 'closed without an error');
        assert.ok(error.message.includes(reason), error.message);
      } finally {
        await conn.stop();
      }
    });
  }

  // ---------------------------------------------------------------- existence checks (no application)

  const fact = (name, what, body, hub = HUB) => test(`ServiceHubContextE2EFacts.${name} (${mode}): ${what}`, () => withContext(mode, hub, null, body));

  fact('CheckUserExistenceInGroupTest', 'IsUserInGroup is true after UserGroups.AddToGroup, false after removal', async (ctx) => {
    const group = 'CheckUserExistenceInGroupTest_group';
    const user = 'CheckUserExistenceInGroupTest_user';
    const conn = await connect(ctx.clientEndpoint(), ctx.generateClientAccessToken(user), { msgpack: true });
    try {
      await settle();
      await ctx.userAddToGroup(user, group);
      await settle();
      assert.equal(await ctx.isUserInGroup(user, group), true);
      await ctx.userRemoveFromGroup(user, group);
      await settle();
      assert.equal(await ctx.isUserInGroup(user, group), false);
    } finally {
      await conn.stop();
    }
  }, 'CheckUserExistenceInGroupTest');

  fact('CheckConnectionExistsTest', 'a connection exists until closed', async (ctx) => {
    const { url, accessToken } = ctx.negotiate();
    const conn = await connect(url, accessToken);
    try {
      const id = conn.connectionId;
      assert.equal(await ctx.connectionExists(id), true);
      await ctx.closeConnection(id);
      await conn.closedWith;
      assert.equal(await ctx.connectionExists(id), false);
    } finally {
      await conn.stop();
    }
  });

  fact('CheckUserExistsTest', 'a user (negotiated with UserId) exists until its connection closes', async (ctx) => {
    const userId = 'TestUser';
    const { url, accessToken } = ctx.negotiate({ userId });
    const conn = await connect(url, accessToken, { msgpack: true });
    try {
      assert.equal(await ctx.userExists(userId), true);
      await ctx.closeConnection(conn.connectionId);
      await conn.closedWith;
      assert.equal(await ctx.userExists(userId), false);
    } finally {
      await conn.stop();
    }
  });

  fact('CheckGroupExistsTest', 'a group exists once it has a connection, and not after that closes', async (ctx) => {
    const groupName = 'TestGroup';
    const { url, accessToken } = ctx.negotiate();
    const conn = await connect(url, accessToken);
    try {
      assert.equal(await ctx.groupExists(groupName), false);
      await ctx.addToGroup(conn.connectionId, groupName);
      assert.equal(await ctx.groupExists(groupName), true);
      await ctx.closeConnection(conn.connectionId);
      await conn.closedWith;
      assert.equal(await ctx.groupExists(groupName), false);
    } finally {
      await conn.stop();
    }
  });

  // ---------------------------------------------------------------- operations on what does not exist
  // Each passes if the SDK's call completes without an exception. (Transient in the suite; the
  // Persistent rows are this project's.)

  fact('AddNonexistentConnectionToGroupRestApiTest', 'Groups.AddToGroupAsync of an unknown connection', async (ctx) => {
    await ctx.addToGroup(crypto.randomUUID(), 'group');
  });

  fact('CloseNonexistentConnectionToGroupRestApiTest', 'ClientManager.CloseConnectionAsync of an unknown connection', async (ctx) => {
    await ctx.closeConnection(crypto.randomUUID());
    // Persistent: no ack to wait for; the connection must still serve what follows.
    assert.equal(await ctx.connectionExists(crypto.randomUUID()), false);
  });

  fact('RemoveNonexistentConnectionFromGroupRestApiTest', 'Groups.RemoveFromGroupAsync of an unknown connection', async (ctx) => {
    await ctx.removeFromGroup(crypto.randomUUID(), 'group');
  });

  fact('RemoveNonexistentConnectionFromAllGroupsRestApiTest', 'Groups.RemoveFromAllGroupsAsync of an unknown connection', async (ctx) => {
    await ctx.removeFromAllGroups(crypto.randomUUID());
  });

  fact('AddNonexistentUserToGroupRestApiTest', 'UserGroups.AddToGroupAsync of a user never seen', async (ctx) => {
    await ctx.userAddToGroup(crypto.randomUUID(), crypto.randomUUID());
  });

  fact('AddNonexistentUserToGroupWithTTLRestApiTest', 'the same with ttl 0 s and 1 s', async (ctx) => {
    await ctx.userAddToGroup(crypto.randomUUID(), crypto.randomUUID(), 0);
    await ctx.userAddToGroup(crypto.randomUUID(), crypto.randomUUID(), 1);
  });

  fact('RemoveNonexistentUserFromGroupRestApiTest', 'UserGroups.RemoveFromGroupAsync of a user never seen', async (ctx) => {
    await ctx.userRemoveFromGroup(crypto.randomUUID(), crypto.randomUUID());
  });

  fact('RemoveNonexistentUserFromAllGroupsRestApiTest', 'UserGroups.RemoveFromAllGroupsAsync of a user never seen', async (ctx) => {
    await ctx.userRemoveFromAllGroups(crypto.randomUUID());
  });
}

// ---------------------------------------------------------------- Persistent only

test('ServiceHubContextE2EFacts.ServiceHubContextIndependencyTest: two contexts on one hub, each with its own Weak connection; the second sends after the first is disposed', async () => {
  const first = await new PersistentHubContext(HUB, null, relayAddr).start();
  const second = await new PersistentHubContext(HUB, null, relayAddr).start();
  try {
    const { tokens } = init(first, 2);
    await runTestCore(first, tokens, async () => {
      await first.sendAll(METHOD, [MESSAGE]);
      await first.dispose();
      await settle();
      await second.sendAll(METHOD, [MESSAGE]);
    }, [2, 2], second);
  } finally {
    await first.dispose();
    await second.dispose();
  }
});

for (const tracing of [true, false]) {
  test(`ServiceHubContextE2EFacts.EnableMessageTracingTest (${tracing}): messages ${tracing ? 'with' : 'without'} a tracing id are acked and delivered alike`, async () => {
    await withContext('Persistent', HUB, null, async (ctx) => {
      const [user, group] = names(2);
      const { url, accessToken } = ctx.negotiate({ userId: user });
      const conn = await connect(url, accessToken);
      try {
        assert.equal(await ctx.userAddToGroup(user, group), true);
        const heard = next(conn, METHOD);
        await ctx.sendGroup(group, METHOD, [MESSAGE]);
        assert.deepEqual(await heard, [MESSAGE]);
      } finally {
        await conn.stop();
      }
    }, { tracing });
  });
}

test('ServiceHubContextE2EFacts (Persistent, ServiceManagerBuilder.AddHubProtocol(MessagePack)): payloads in both protocols reach JSON and MessagePack clients, each its own', async () => {
  await withContext('Persistent', HUB, 'appName', async (ctx) => {
    const { tokens } = init(ctx);
    await runTestCore(ctx, tokens, () => ctx.sendAll(METHOD, [MESSAGE]), [1, 1, 1, 1]);
  }, { protocols: ['json', 'messagepack'] });
});

test('ServiceHubContextE2EFacts.WithEndpointsTest: with two services, a send on the first endpoint\'s connection reaches that endpoint\'s clients only', async () => {
  const contexts = await Promise.all([relayAddr, relay2.addr].map((addr) => new PersistentHubContext(HUB, null, addr).start()));
  const clients = [];
  try {
    for (const ctx of contexts) {
      const { url, accessToken } = ctx.negotiate();
      clients.push(await connect(url, accessToken));
    }
    const received = clients.map(() => false);
    clients.forEach((c, i) => c.on(METHOD, () => { received[i] = true; }));
    // WithEndpoints(endpoints.Take(1)).Clients.All: written on the first endpoint's connection only.
    await contexts[0].sendAll(METHOD, [MESSAGE]);
    await until(() => received[0], 'the first endpoint\'s client heard nothing');
    await settle();
    assert.deepEqual(received, [true, false]);
    assert.deepEqual(clients.map((c) => c.state), clients.map(() => signalR.HubConnectionState.Connected));
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
    await Promise.all(contexts.map((c) => c.dispose()));
  }
});

// ---------------------------------------------------------------- NegotiateProcessorE2EFacts

test('NegotiateProcessorE2EFacts.ColdStartNegotiateTest: of three fake endpoints and the relay, only the relay completes the Weak handshake, so negotiate names it', async () => {
  // FakeEndpointUtils: endpoints where nothing listens. The SDK marks an endpoint online only
  // once its connection's handshake succeeds, and negotiates to online endpoints only.
  const fakes = await Promise.all([0, 1, 2].map(async () => {
    const srv = require('node:net').createServer();
    await new Promise((r) => srv.listen(0, '127.0.0.1', r));
    const { port } = srv.address();
    await new Promise((r) => srv.close(r));
    return `127.0.0.1:${port}`;
  }));
  const online = [];
  await Promise.all([...fakes, relayAddr].map(async (addr) => {
    const ctx = new PersistentHubContext('hub', null, addr);
    try {
      await ctx.start();
      online.push(ctx);
    } catch {
      // offline: not a negotiate target
    }
  }));
  try {
    assert.deepEqual(online.map((c) => c.addr), [relayAddr]);
    for (let i = 0; i < 5; i++) {
      const { url, accessToken } = online[0].negotiate();
      assert.equal(url, `http://${relayAddr}/client/?hub=hub`);
      const c = await connect(url, accessToken);
      await c.stop();
    }
  } finally {
    await Promise.all(online.map((c) => c.dispose()));
  }
});

// ---------------------------------------------------------------- ServiceManagerE2EFacts

test('ServiceManagerE2EFacts.CheckServiceHealthTest: IsServiceHealthy (signed HEAD api/health) is true', async () => {
  const path = 'api/health?api-version=2022-06-01';
  const r = await fetch(`http://${relayAddr}/${path}`, { method: 'HEAD', headers: { Authorization: `Bearer ${token(`${AUDIENCE_BASE}${path}`, { nameid: os.hostname() })}` } });
  // 2xx is healthy; >= 500 unhealthy; anything else makes the SDK throw.
  assert.ok(r.ok, `HEAD /${path} -> ${r.status}`);
});
