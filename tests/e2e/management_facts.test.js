// Microsoft's own Management SDK end-to-end facts (Azure/azure-signalr,
// test/Microsoft.Azure.SignalR.E2ETests/Management/, HEAD 31686ed7), in their REST (Transient)
// form, against a serverless relay. The test speaks for the SDK: it signs and sends the
// REST calls that RestHubLifetimeManager and RestApiProvider make (2022-06-01; the hub lowercased;
// `application` in the query; `excluded`, `reason` and `ttl` after signing). It judges each answer
// as the SDK does: any 2xx is success, and a 404 is accepted only with the x-ms-error-code
// that the operation tolerates. The test mints client tokens as ServiceManager and
// NegotiateProcessor do, and connects official clients (JSON and MessagePack in turn).
//
// The facts' theories run each fact for the application names "appName", "" and null. The
// SDK treats "" and null alike (IsNullOrEmpty), so here each runs with "appName" and without.
//
// Mirrored although Azure's suite skips them (the skip is about their test rig, not the service):
//   SendToConnectionTest, ConnectionJoinLeaveGroupTest ("Not Ready": an in-process test server
//     supplies the connection id; here it is the client's own), RemoveConnectionFromAllGroupsTest
//     ("wait for fixing bug of JWT token", an SDK-side token issue).
// Not mirrored:
//   - The Persistent rows of every theory: that is the Weak service-connection form, not REST.
//   - ServiceHubContextE2EFacts.SendToEmptyReceiversTest: in Transient mode, Users([]),
//     Clients([]) and Groups([]) fan out into zero REST calls. Nothing reaches the service.
//   - ServiceHubContextE2EFacts.WithEndpointsTest: Persistent and multi-endpoint. The SDK picks
//     the endpoints in-process, and it needs several services.
//   - ServiceHubContextE2EFacts.StopServiceHubContextTest: skipped upstream. It inspects the SDK's
//     in-process connection container.
//   - ServiceHubContextE2EFacts.ServiceHubContextIndependencyTest: Persistent only (two contexts'
//     own Weak connections). REST calls are stateless, so there is nothing to share.
//   - ServiceHubContextE2EFacts.EnableMessageTracingTest: Persistent only, and it asserts the SDK's
//     own log events.
//   - NegotiateProcessorE2EFacts.ColdStartNegotiateTest: Persistent, three fake endpoints and a
//     real one. It asserts the SDK's in-process choice of a live endpoint.
// At this revision the facts use no Entra ID and none of Azure's 2024 APIs (connection listing,
// :generateToken).
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const os = require('node:os');
const { SUFFIX, startProcess, startClient, jwt, sleep, signalR } = require('./harness');

const HUB = 'ManagemnetTestHub'; // sic, as the facts spell it
const METHOD = 'SendMessage';
const MESSAGE = 'Hello client, have a nice day!';
const CLIENT_COUNT = 4;
const GROUP_COUNT = 2;
const APPS = ['appName', null];
// The facts' Task.Delay(_timeout) (1 s there).
const settle = () => sleep(300);
const names = (n) => Array.from({ length: n }, () => crypto.randomUUID());

const key = crypto.randomBytes(16).toString('hex');
let relay;
let relayAddr;

before(async () => {
  relay = startProcess(`signalr-relay${SUFFIX}`, ['--listen', '127.0.0.1:0', '--access-key', key, '--service-mode', 'serverless', '--log', 'warn']);
  relayAddr = await relay.ready;
});

after(() => {
  if (relay.child.exitCode === null) relay.child.kill('SIGKILL');
});

// Uri.EscapeDataString: only RFC 3986 unreserved characters stay.
const esc = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
// The SDK signs audiences on `{scheme}://{host}/`, without the port.
const AUDIENCE_BASE = 'http://127.0.0.1/';

function token(aud, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  return jwt({ ...claims, aud, iat: now, nbf: now, exp: now + 3600 }, key);
}

/// A ServiceManager and ServiceHubContext for one hub, Transient: client tokens and REST calls.
class HubContext {
  constructor(hub, app = null) {
    this.hub = hub.toLowerCase();
    this.app = app ? app.toLowerCase() : null;
    this.hubKey = this.app ? `${this.app}_${this.hub}` : this.hub;
  }

  /// ServiceManager.GetClientEndpoint.
  clientEndpoint() {
    return `http://${relayAddr}/client/?hub=${this.hubKey}`;
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

  /// One REST call: the token's audience is the URL up to api-version, with no port.
  /// `extra` ([name, value] pairs) goes after signing. It throws as the SDK would.
  /// A 404 passes only with the `tolerated` x-ms-error-code.
  async rest(method, pathAfterHub, { extra = [], body, tolerated } = {}) {
    const signed = `api/hubs/${esc(this.hub)}${pathAfterHub}?${this.app ? `application=${esc(this.app)}&` : ''}api-version=2022-06-01`;
    const headers = { Authorization: `Bearer ${token(`${AUDIENCE_BASE}${signed}`, { nameid: `${os.hostname()}_${crypto.randomUUID().replace(/-/g, '')}` })}` };
    if (body) headers['Content-Type'] = 'application/json; charset=utf-8';
    const url = `http://${relayAddr}/${signed}${extra.map(([k, v]) => `&${k}=${esc(String(v))}`).join('')}`;
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

/// The facts' CreateHubConnection: an official client on `url` with `accessToken`, started.
function connect(url, accessToken, { msgpack = false } = {}) {
  const options = { transport: signalR.HttpTransportType.WebSockets, accessTokenFactory: () => accessToken };
  return startClient(url, options, { msgpack });
}

/// RunTestCore: a client per token (JSON and MessagePack in turn), `core` run, then each
/// client's count of METHOD(MESSAGE) checked, and that none was closed meanwhile.
async function runTestCore(ctx, tokens, core, expected) {
  const clients = await Promise.all(tokens.map((t, i) => connect(ctx.clientEndpoint(), t, { msgpack: i % 2 === 1 })));
  try {
    const counts = clients.map(() => 0);
    clients.forEach((c, i) => c.on(METHOD, (m) => { if (m === MESSAGE) counts[i] += 1; }));
    await core(clients);
    await settle();
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

/// InitAsync: a hub context, random users, and each user's client token (GenerateClientAccessToken).
function init(app, count = CLIENT_COUNT) {
  const ctx = new HubContext(HUB, app);
  const users = names(count);
  return { ctx, users, tokens: users.map((u) => ctx.generateClientAccessToken(u)) };
}

const label = (app) => (app ? `application "${app}"` : 'no application');

// ---------------------------------------------------------------- ServiceHubContextE2EFacts: sends

for (const app of APPS) {
  test(`ServiceHubContextE2EFacts.BroadcastTest (${label(app)}): Clients.All reaches every client once`, async () => {
    const { ctx, tokens } = init(app);
    await runTestCore(ctx, tokens, () => ctx.sendAll(METHOD, [MESSAGE]), [1, 1, 1, 1]);
  });

  test(`ServiceHubContextE2EFacts.BroadcastExceptTest (${label(app)}): Clients.AllExcept skips the excluded connection`, async () => {
    const ctx = new HubContext(HUB, app);
    const method = 'BroadcastExceptTest';
    const msg = crypto.randomUUID();
    const connections = await Promise.all([0, 1, 2].map((i) => {
      const { url, accessToken } = ctx.negotiate();
      return connect(url, accessToken, { msgpack: i % 2 === 1 });
    }));
    try {
      const got = connections.map(() => false);
      const heard = connections.map((c, i) => new Promise((resolve) => c.on(method, (m) => { if (m === msg) { got[i] = true; resolve(); } })));
      await ctx.sendAll(method, [msg], [connections[0].connectionId]);
      await Promise.all(heard.slice(1));
      await settle();
      assert.deepEqual(got, [false, true, true]);
    } finally {
      await Promise.all(connections.map((c) => c.stop()));
    }
  });

  test(`ServiceHubContextE2EFacts.SendToUserTest (${label(app)}): Clients.User reaches that user only`, async () => {
    const { ctx, users, tokens } = init(app);
    await runTestCore(ctx, tokens, () => ctx.sendUser(users[0], METHOD, [MESSAGE]), [1, 0, 0, 0]);
  });

  test(`ServiceHubContextE2EFacts.SendToUsersTest (${label(app)}): Clients.Users (one REST call per user) reaches each once`, async () => {
    const { ctx, users, tokens } = init(app);
    await runTestCore(ctx, tokens, () => ctx.sendUsers(users, METHOD, [MESSAGE]), [1, 1, 1, 1]);
  });

  test(`ServiceHubContextE2EFacts.SendToConnectionTest (${label(app)}): Clients.Client reaches that connection only`, async () => {
    const { ctx, tokens } = init(app);
    await runTestCore(ctx, tokens, (clients) => ctx.sendConnection(clients[0].connectionId, METHOD, [MESSAGE]), [1, 0, 0, 0]);
  });

  // ---------------------------------------------------------------- groups

  test(`ServiceHubContextE2EFacts.SendToGroupTest (${label(app)}): users added to groups hear their group, and stop once removed`, async () => {
    const { ctx, users, tokens } = init(app);
    const groups = names(GROUP_COUNT);
    const pairs = userGroupPairs(users, groups);
    // Users 0 and 2 are in groups[0]: 4/2 + 4%2 = 2 messages in all, as the fact counts.
    await runTestCore(ctx, tokens, () => sendToGroupCore(
      () => ctx.sendGroup(groups[0], METHOD, [MESSAGE]),
      () => addUsers(ctx, pairs),
      () => removeUsersOneByOne(ctx, pairs),
    ), [1, 0, 1, 0]);
  });

  test(`ServiceHubContextE2EFacts.SendToGroupExceptTest (${label(app)}): Clients.GroupExcept skips the excluded member`, async () => {
    const ctx = new HubContext(HUB, app);
    const method = 'SendToGroupExceptTest';
    const group = 'SendToGroupExceptTest';
    const msg = crypto.randomUUID();
    const connections = [];
    try {
      for (const i of [0, 1, 2]) {
        const { url, accessToken } = ctx.negotiate();
        const c = await connect(url, accessToken, { msgpack: i % 2 === 1 });
        connections.push(c);
        await ctx.addToGroup(c.connectionId, group);
      }
      const got = connections.map(() => false);
      const heard = connections.map((c, i) => new Promise((resolve) => c.on(method, (m) => { if (m === msg) { got[i] = true; resolve(); } })));
      await ctx.sendGroup(group, method, [msg], [connections[0].connectionId]);
      await Promise.all(heard.slice(1));
      await settle();
      assert.deepEqual(got, [false, true, true]);
    } finally {
      await Promise.all(connections.map((c) => c.stop()));
    }
  });

  test(`ServiceHubContextE2EFacts.TestAddUserToGroupWithTtl (${label(app)}): a user's membership with a 10 s ttl serves now, and not the user's later connections`, async () => {
    const { ctx, users, tokens } = init(app);
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

  test(`ServiceHubContextE2EFacts.SendToGroupsTest (${label(app)}): Clients.Groups (one REST call per group) reaches every member once`, async () => {
    const { ctx, users, tokens } = init(app);
    const groups = names(GROUP_COUNT);
    const pairs = userGroupPairs(users, groups);
    await runTestCore(ctx, tokens, () => sendToGroupCore(
      () => ctx.sendGroups(groups, METHOD, [MESSAGE]),
      () => addUsers(ctx, pairs),
      () => removeUsersOneByOne(ctx, pairs),
    ), [1, 1, 1, 1]);
  });

  test(`ServiceHubContextE2EFacts.RemoveUserFromAllGroupsTest (${label(app)}): a user in both groups hears each, then none once removed from all`, async () => {
    const { ctx, users, tokens } = init(app);
    const groups = names(GROUP_COUNT);
    const pairs = [[users[0], groups]];
    await runTestCore(ctx, tokens, () => sendToGroupCore(
      () => ctx.sendGroups(groups, METHOD, [MESSAGE]),
      () => addUsers(ctx, pairs),
      () => ctx.userRemoveFromAllGroups(users[0]),
    ), [2, 0, 0, 0]);
  });

  test(`ServiceHubContextE2EFacts.RemoveConnectionFromAllGroupsTest (${label(app)}): a connection in both groups hears each, then none once removed from all`, async () => {
    const { ctx, tokens } = init(app);
    const groups = names(GROUP_COUNT);
    await runTestCore(ctx, tokens, (clients) => sendToGroupCore(
      () => ctx.sendGroups(groups, METHOD, [MESSAGE]),
      () => Promise.all(groups.map((g) => ctx.addToGroup(clients[0].connectionId, g))),
      () => ctx.removeFromAllGroups(clients[0].connectionId),
    ), [2, 0, 0, 0]);
  });

  test(`ServiceHubContextE2EFacts.ConnectionJoinLeaveGroupTest (${label(app)}): a connection hears its group until it leaves`, async () => {
    const { ctx, tokens } = init(app);
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

  // ---------------------------------------------------------------- close

  test(`ServiceHubContextE2EFacts.CloseConnectionTest (${label(app)}): the client is closed with the reason given`, async () => {
    const ctx = new HubContext(HUB, app);
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

// ---------------------------------------------------------------- existence checks

test('ServiceHubContextE2EFacts.CheckUserExistenceInGroupTest: IsUserInGroup is true after UserGroups.AddToGroup, false after removal', async () => {
  const ctx = new HubContext('CheckUserExistenceInGroupTest');
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
});

test('ServiceHubContextE2EFacts.CheckConnectionExistsTest: a connection exists until closed', async () => {
  const ctx = new HubContext(HUB);
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

test('ServiceHubContextE2EFacts.CheckUserExistsTest: a user (negotiated with UserId) exists until its connection closes', async () => {
  const ctx = new HubContext(HUB);
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

test('ServiceHubContextE2EFacts.CheckGroupExistsTest: a group exists once it has a connection, and not after that closes', async () => {
  const ctx = new HubContext(HUB);
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
// Each passes if the SDK's call completes without an exception.

test('ServiceHubContextE2EFacts.AddNonexistentConnectionToGroupRestApiTest: Groups.AddToGroupAsync of an unknown connection', async () => {
  await new HubContext(HUB).addToGroup(crypto.randomUUID(), 'group');
});

test('ServiceHubContextE2EFacts.CloseNonexistentConnectionToGroupRestApiTest: ClientManager.CloseConnectionAsync of an unknown connection', async () => {
  await new HubContext(HUB).closeConnection(crypto.randomUUID());
});

test('ServiceHubContextE2EFacts.RemoveNonexistentConnectionFromGroupRestApiTest: Groups.RemoveFromGroupAsync of an unknown connection', async () => {
  await new HubContext(HUB).removeFromGroup(crypto.randomUUID(), 'group');
});

test('ServiceHubContextE2EFacts.RemoveNonexistentConnectionFromAllGroupsRestApiTest: Groups.RemoveFromAllGroupsAsync of an unknown connection', async () => {
  await new HubContext(HUB).removeFromAllGroups(crypto.randomUUID());
});

test('ServiceHubContextE2EFacts.AddNonexistentUserToGroupRestApiTest: UserGroups.AddToGroupAsync of a user never seen', async () => {
  await new HubContext(HUB).userAddToGroup(crypto.randomUUID(), crypto.randomUUID());
});

test('ServiceHubContextE2EFacts.AddNonexistentUserToGroupWithTTLRestApiTest: the same with ttl 0 s and 1 s', async () => {
  const ctx = new HubContext(HUB);
  await ctx.userAddToGroup(crypto.randomUUID(), crypto.randomUUID(), 0);
  await ctx.userAddToGroup(crypto.randomUUID(), crypto.randomUUID(), 1);
});

test('ServiceHubContextE2EFacts.RemoveNonexistentUserFromGroupRestApiTest: UserGroups.RemoveFromGroupAsync of a user never seen', async () => {
  await new HubContext(HUB).userRemoveFromGroup(crypto.randomUUID(), crypto.randomUUID());
});

test('ServiceHubContextE2EFacts.RemoveNonexistentUserFromAllGroupsRestApiTest: UserGroups.RemoveFromAllGroupsAsync of a user never seen', async () => {
  await new HubContext(HUB).userRemoveFromAllGroups(crypto.randomUUID());
});

// ---------------------------------------------------------------- ServiceManagerE2EFacts

test('ServiceManagerE2EFacts.CheckServiceHealthTest: IsServiceHealthy (signed HEAD api/health) is true', async () => {
  const path = 'api/health?api-version=2022-06-01';
  const r = await fetch(`http://${relayAddr}/${path}`, { method: 'HEAD', headers: { Authorization: `Bearer ${token(`${AUDIENCE_BASE}${path}`, { nameid: os.hostname() })}` } });
  // 2xx is healthy; >= 500 unhealthy; anything else makes the SDK throw.
  assert.ok(r.ok, `HEAD /${path} -> ${r.status}`);
});
