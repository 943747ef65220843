// A raw classic ASP.NET SignalR app server on Azure's SDK for classic apps
// (Microsoft.Azure.SignalR.AspNet), in JavaScript, for the e2e tests of issue #16. No .NET runs
// here, so this file does on the wire what an OWIN app with `app.MapAzureSignalR(appName, …)` and
// one hub does. Every behaviour is written from the SDK's source and cites it; the code is our
// own. Sources (paths as in /work/scratch/aspnet-facts.md):
//   AZ   = Azure/azure-signalr @ 31686ed7: ASPNET/ = src/Microsoft.Azure.SignalR.AspNet/,
//          COMMON/ = src/Microsoft.Azure.SignalR.Common/, PROTO/ = src/Microsoft.Azure.SignalR.Protocols/
//   SR   = SignalR/SignalR @ 2.4.1 (the version the SDK pins): SRC/ = src/Microsoft.AspNet.SignalR.Core/
//
// What it does:
//   - Server connections (ASPNET/ServerConnections/ServiceConnectionManager.cs:64-74): one container
//     named after the app (the "app connection", `hub=<app>_<app>`) and one per hub
//     (`hub=<app>_<hub>`), each `connectionsPerHub` WebSockets (the SDK's default is 5,
//     ASPNET/ServiceOptions.cs:43) to `/aspnetserver/?hub=…&cid=<guid>`
//     (ASPNET/EndpointProvider/ServiceEndpointProvider.cs:91-94,114-117; COMMON/ServiceConnections/
//     ConnectionFactory.cs:75-92), HandshakeRequest `[1,1,0,"",0,{}]` (PROTO/ServiceProtocol.cs:314-323).
//     A lost socket is reopened in its slot (COMMON/ServiceConnections/ServiceConnectionContainerBase.cs:
//     343-350,413-431); the SDK waits 1 s (+ jitter) first, this app `reconnectDelayMs` (200 ms).
//   - The classic negotiate (ASPNET/Middleware/NegotiateMiddleware.cs), at `/signalr/negotiate`: the
//     redirect to the relay's `/aspnetclient` with a client token.
//   - Clients (ASPNET/ServerConnections/ServiceConnection.cs, ASPNET/ClientConnections/
//     ClientConnectionManager.cs, ASPNET/Transports/AzureTransport.cs): OpenConnection → classic
//     HubDispatcher authorization and connect → OnConnected; ConnectionData → hub invocations (or
//     `asrs:reconnect` → OnReconnected); CloseConnection → OnDisconnected; a lost server socket →
//     OnDisconnected of every client it carried.
//   - The classic message bus replaced by the SDK's (ASPNET/HubHost/ServiceMessageBus.cs,
//     SignalRMessageParser.cs): each bus key becomes a service message (see `publish`).
'use strict';
const crypto = require('node:crypto');
const http = require('node:http');
const os = require('node:os');
const WebSocket = require('ws');
const { jwt } = require('./harness');
const { frame, frames } = require('./service_wire');

/// The SDK version the client token claims (`asrs.s.vn`, ASPNET/Middleware/NegotiateMiddleware.cs:27,230).
const SDK_VERSION = '1.25.1.0';
/// `Asrs-User-Agent` (ASPNET/ServerConnections/ServiceConnection.cs:24-25; ASPNET/ProductInfo.cs:15-22).
const USER_AGENT = 'Microsoft.Azure.SignalR.AspNet/1.25.1';
/// The OWIN path MapAzureSignalR mounts by default (ASPNET/OwinExtensions.cs:60-63).
const MOUNT = '/signalr';

// Service-protocol message types (PROTO/ServiceProtocolConstants.cs).
const T = {
  HandshakeRequest: 1, HandshakeResponse: 2, Ping: 3, OpenConnection: 4, CloseConnection: 5,
  ConnectionData: 6, UserData: 8, BroadcastData: 10, GroupBroadcastData: 13, ServiceError: 15,
  JoinGroupWithAck: 18, LeaveGroupWithAck: 19, Ack: 20,
};

// Timers of COMMON/ServiceConnections/ServiceConnectionBase.cs.
const HANDSHAKE_TIMEOUT_MS = 15000; // :20
const SERVICE_TIMEOUT_MS = 30000; // :23, checked every 5 s (:597-615)
const KEEP_ALIVE_MS = 5000; // :27-30, a [3] only after something was received (:527-530,617-643)
const STATUS_PING_MS = 10000; // COMMON/ServiceConnections/ServiceConnectionContainerBase.cs:146-152,563-566
const ACK_TIMEOUT_MS = 10000; // COMMON/Utilities/AckHandler.cs:22

// Texts of classic SignalR 2.4.1 (SR SRC/Resources.resx) and of the SDK.
const HUB_NOT_RESOLVED = (name) => `'${name}' Hub could not be resolved.`; // Resources.resx:165-166
const INVOCATION_FAILED = (hub, method) => `There was an error invoking Hub method '${hub}.${method}'.`; // :168-169
const MISSING_TOKEN = 'Protocol error: Missing connection token.'; // :231-232
const DUPLICATE_HUBS = 'Duplicate Hub names found.'; // Error_DuplicateHubNamesInConnectionData, :156-157
const METHOD_NOT_RESOLVED = (method) => `'${method}' method could not be resolved. No method found with that name.`; // :198-199
const NOT_CONNECTED = 'Azure SignalR Service is not connected yet, please try again later.'; // COMMON/Exceptions/AzureSignalRNotConnectedException.cs:15

/// A classic `HubException` (SR SRC/Hubs/HubException.cs): its message and data reach the client.
class HubException extends Error {
  constructor(message, data) {
    super(message);
    this.data = data;
  }
}

/// A .NET exception type by name (NotSupportedException, TimeoutException, …), for the log.
class DotNetError extends Error {
  constructor(type, message) {
    super(message);
    this.type = type;
  }
}

/// The test hub's methods, each `{ params, run(ctx, args) }`. Classic resolves a method by its name,
/// case-insensitively, and its parameter count (SR SRC/Hubs/HubDispatcher.cs:163-175; an IProgress
/// parameter is not counted, :187-201). `ctx` is the hub's view: see `AspNetApp.hubContext`.
const HUB_METHODS = {
  // A result: HubResponse `R` (SR SRC/Hubs/HubResponse.cs).
  echo: { params: 1, run: (ctx, [msg]) => msg },
  // Clients.Caller.Echo(msg): bus key `hc-{Hub}.{connId}` → ConnectionData to the caller.
  echoCaller: { params: 1, run: async (ctx, [msg]) => { await ctx.clients.caller('Echo', msg); } },
  // Clients.Client(id).Direct(msg): `hc-{Hub}.{id}`.
  sendToClient: { params: 2, run: async (ctx, [id, msg]) => { await ctx.clients.client(id, 'Direct', msg); } },
  getConnectionId: { params: 0, run: (ctx) => ctx.connectionId },
  // The `user` query parameter of the client's own requests, as the SDK's E2E TestHub reads it
  // (test/Microsoft.Azure.SignalR.AspNet.E2ETests/TestHub.cs:22): it reached the app in
  // OpenConnection's query string.
  getUser: { params: 0, run: (ctx) => ctx.query.get('user') },
  // Hub state (Clients.Caller.count): read from the invocation's `S`, changes sent back in the
  // response's `S` (SR SRC/Hubs/StateChangeTracker.cs).
  incrementState: {
    params: 0,
    run: (ctx) => {
      ctx.state.count = (Number(ctx.state.count) || 0) + 1;
      return ctx.state.count;
    },
  },
  readState: { params: 1, run: (ctx, [name]) => (ctx.state[name] === undefined ? null : ctx.state[name]) },
  // A HubException with data: `{"I":…,"H":true,"E":msg,"D":data}` (SR SRC/Hubs/HubDispatcher.cs:519-537).
  fail: { params: 1, run: (ctx, [msg]) => { throw new HubException(msg, { code: 1 }); } },
  // Any other exception, detailed errors off (the default): only the generic text (:538-541).
  plainError: { params: 0, run: () => { throw new Error('a secret the client must not see'); } },
  // IProgress<int> through classic's SendProgressUpdate (SR SRC/Hubs/HubDispatcher.cs:495-507):
  // Connection.Send(connectionId, …) publishes to bus key `c-{connId}`
  // (SR SRC/ConnectionExtensions.cs Send → PrefixHelper.GetConnectionId). The SDK's bus
  // (ASPNET/HubHost/ServiceMessageBus.cs Publish, not async) runs SignalRMessageParser.GetMessages
  // eagerly (`.ToList()`), which throws NotSupportedException("Message c-… is not supported.")
  // for that key (ASPNET/HubHost/SignalRMessageParser.cs:163-166). The throw is synchronous, so it
  // escapes HubInvocationProgress.DoReport (SR SRC/Hubs/HubInvocationProgress.cs: the
  // `.Catch(Trace)` there only sees a returned task) into the hub method at its first Report():
  // with the real SDK no progress ever reaches a classic client, and the call fails with the
  // generic error. `ctx.progress` does exactly that (through `publish`), so this method fails the
  // same way.
  countWithProgress: {
    params: 1,
    run: (ctx, [n]) => {
      for (let i = 1; i <= n; i++) ctx.progress(i);
      return n;
    },
  },
  // Groups.Add / Groups.Remove, awaited as a hub method would (SR SRC/GroupManager.cs:85-133).
  joinGroup: { params: 1, run: async (ctx, [g]) => { await ctx.groups.add(g); } },
  leaveGroup: { params: 1, run: async (ctx, [g]) => { await ctx.groups.remove(g); } },
  // Clients.Group(g) / Clients.OthersInGroup(g): `hg-{Hub}.{g}`, the caller excluded for the latter.
  sendToGroup: { params: 2, run: async (ctx, [g, msg]) => { await ctx.clients.group(g, [], 'GroupMessage', g, msg); } },
  othersInGroup: { params: 2, run: async (ctx, [g, msg]) => { await ctx.clients.group(g, [ctx.connectionId], 'GroupMessage', g, msg); } },
  // Clients.All / Clients.Others: `h-{Hub}`, the caller excluded for the latter
  // (SR SRC/Hubs/HubConnectionContextBase.cs:40-43).
  broadcast: { params: 1, run: async (ctx, [msg]) => { await ctx.clients.all([], 'Broadcast', msg); } },
  others: { params: 1, run: async (ctx, [msg]) => { await ctx.clients.all([ctx.connectionId], 'Broadcast', msg); } },
  // Clients.User(user): `hu-{Hub}.{user}`.
  sendToUser: { params: 2, run: async (ctx, [user, msg]) => { await ctx.clients.user(user, 'UserMessage', msg); } },
  // Joins group `note`, where OnConnected/OnReconnected/OnDisconnected write, as the SDK's test
  // ChatHub does (test/Microsoft.Azure.SignalR.AspNet.Tests/TestHubs/ChatHub.cs:14-30).
  watchNotes: { params: 0, run: async (ctx) => { await ctx.groups.add('note'); } },
};

/// The hub's lifecycle events: each writes `Note(event, connectionId)` to group `note`
/// (TestHubs/ChatHub.cs:14-30 writes `echo("Connected")` etc. there, without awaiting it, so a
/// failed write never fails the event: see `fireEvent`).
const HUB_EVENTS = {
  connected: (ctx) => ctx.clients.group('note', [], 'Note', 'Connected', ctx.connectionId),
  reconnected: (ctx) => ctx.clients.group('note', [], 'Note', 'Reconnected', ctx.connectionId),
  disconnected: (ctx) => ctx.clients.group('note', [], 'Note', 'Disconnected', ctx.connectionId),
};

/// Uri.EscapeDataString: RFC 3986, only the unreserved characters stay.
function escapeDataString(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/// WebUtility.UrlEncode: spaces become `+`; letters, digits and `-_.!*()` stay.
function webUtilityUrlEncode(s) {
  return encodeURIComponent(s).replace(/[~']/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).replace(/%20/g, '+');
}

/// The bytes an app payload travels as: a whole framed ConnectionDataMessage with an empty id
/// whose payload is the classic JSON (ASPNET/HubHost/SignalRMessageParser.cs:169-188;
/// ASPNET/ServerConnections/ServiceConnectionExtensions.cs:13-29).
function wrap(json) {
  return frame([T.ConnectionData, '', Buffer.from(json, 'utf8'), {}]);
}

/// A classic PersistentResponse with cursor "0" and one raw message, as the parser writes it
/// (SignalRMessageParser.cs:171; SR SRC/Transports/PersistentResponse.cs:85-136).
function persistentResponse(valueJson) {
  return `{"C":"0","M":[${valueJson}]}`;
}

/// A ClientHubInvocation `{"H","M","A"}` (SR SRC/Hubs/ClientHubInvocation.cs:18-40).
function clientInvocation(hub, method, args) {
  return JSON.stringify({ H: hub, M: method, A: args });
}

/// A HubResponse, its properties in the declared order with nulls left out
/// (SR SRC/Hubs/HubResponse.cs:19-62): S, R, I, P, H, E, T, D.
function hubResponse({ state, result, id, progress, isHubException, error, errorData }) {
  const o = {};
  if (state) o.S = state;
  if (result !== undefined && result !== null) o.R = result;
  o.I = id;
  if (progress) o.P = progress;
  if (isHubException) o.H = true;
  if (error !== undefined && error !== null) o.E = error;
  if (errorData !== undefined && errorData !== null) o.D = errorData;
  return JSON.stringify(o);
}

/// One server connection (a ServiceConnection) in its container's slot: it reopens itself until
/// the app stops.
class Slot {
  constructor(app, container, index) {
    this.app = app;
    this.container = container;
    this.index = index;
    this.connected = false;
    this.clients = new Map(); // the clients this socket carries (ServiceConnection._clientConnections)
    this.failures = 0;
    this.generation = 0;
  }

  get label() { return `${this.container.key}#${this.index}.${this.generation}`; }

  open() {
    if (this.app.stopped) return;
    this.generation += 1;
    const { app, container } = this;
    const cid = crypto.randomUUID();
    const now = Math.floor(Date.now() / 1000);
    // Audience without the port; NameIdentifier (`nameid`) = the server id
    // (ASPNET/EndpointProvider/ServiceEndpointProvider.cs:96-107; COMMON/Auth/ClaimTypeMapping.cs).
    const token = app.serverToken(container.key, now);
    this.cid = cid;
    this.handshaken = false;
    this.lastReceived = Date.now();
    this.lastPing = 0;
    const ws = new WebSocket(`ws://${app.relayAddr}/aspnetserver/?hub=${container.key}&cid=${cid}`, {
      headers: {
        Authorization: `Bearer ${token}`,
        'X-Requested-With': 'XMLHttpRequest', // COMMON/ServiceConnections/Internal/WebSocketsTransport.cs:92
        'Asrs-User-Agent': USER_AGENT,
        'X-ASRS-Server-Id': app.serverId, // ConnectionFactory.cs:40-44
      },
    });
    this.ws = ws;
    ws.on('open', () => ws.send(frame([T.HandshakeRequest, 1, 0, '', 0, {}])));
    ws.on('error', (e) => app.note(`${this.label}: ${e.message}`));
    ws.on('unexpected-response', (_req, res) => {
      app.note(`${this.label}: refused with HTTP ${res.statusCode}`);
      ws.terminate();
    });
    ws.on('message', (data) => {
      if (ws !== this.ws) return;
      this.lastReceived = Date.now();
      this.lastHeard = this.lastReceived; // only ever set by an inbound frame (for the tests)
      // A keep-alive ping only when something came in (ServiceConnectionBase.cs:527-530,617-643).
      if (this.connected && Date.now() - this.lastPing > KEEP_ALIVE_MS) {
        this.lastPing = Date.now();
        this.send([T.Ping]);
      }
      let messages;
      try {
        messages = frames(Buffer.from(data));
      } catch (e) {
        app.note(`${this.label}: undecodable frame: ${e.message}`);
        return;
      }
      for (const m of messages) this.dispatch(m);
    });
    ws.on('close', (code) => { if (ws === this.ws) this.lost(`closed (${code})`); });
    this.handshakeTimer = setTimeout(() => {
      if (!this.handshaken && ws === this.ws) {
        app.note(`${this.label}: no handshake response in 15 s`);
        ws.terminate();
      }
    }, HANDSHAKE_TIMEOUT_MS);
  }

  dispatch(m) {
    const { app } = this;
    if (!this.handshaken) {
      // The first message must be the HandshakeResponse; anything else ends the socket
      // (COMMON/ServiceConnections/ServiceConnectionBase.cs:439-460).
      clearTimeout(this.handshakeTimer);
      this.handshaken = true;
      if (m[0] !== T.HandshakeResponse) {
        app.note(`${this.label}: expected a HandshakeResponse, got type ${m[0]}`);
        this.ws.terminate();
        return;
      }
      if (m[1]) {
        app.note(`${this.label}: handshake refused: ${m[1]}`);
        this.ws.terminate();
        return;
      }
      this.connected = true;
      this.failures = 0;
      app.note(`${this.label}: connected`);
      app.onSlotConnected();
      return;
    }
    switch (m[0]) {
      case T.Ping:
        // ["echo", x] is echoed; other pings only inform (ServiceConnectionBase.cs:300-317).
        if (m[1] === 'echo') this.send(m);
        break;
      case T.OpenConnection: app.onOpenConnection(this, m); break;
      case T.CloseConnection: app.onCloseConnection(this, m); break;
      case T.ConnectionData: app.onConnectionData(this, m); break;
      case T.Ack: this.container.onAck(m); break;
      case T.ServiceError:
        // The SDK stops writing on the socket, which the service then closes (:282-298).
        app.note(`${this.label}: ServiceError ${m[1]}`);
        this.connected = false;
        break;
      default:
        // ServiceEvent and everything else is only logged, or ignored (:564-578).
        app.note(`${this.label}: ignored message type ${m[0]}`);
    }
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new DotNetError('ServiceConnectionNotActiveException', `${this.label} is not connected`);
    this.app.sentLog.push({ socket: this.label, container: this.container.name, message });
    this.ws.send(frame(message), { binary: true });
  }

  /// The socket ended: its clients are disconnected (OnDisconnected, nothing sent;
  /// ServiceConnectionBase.cs:176-182; ServiceConnection.cs:81-85,133-153), then the slot reopens.
  lost(why) {
    clearTimeout(this.handshakeTimer);
    const wasConnected = this.connected;
    this.connected = false;
    this.ws = null;
    if (wasConnected) this.app.note(`${this.label}: ${why}`);
    for (const client of [...this.clients.values()]) this.app.clientLost(client);
    if (this.app.stopped) return;
    this.failures += 1;
    const delay = Math.min(this.app.reconnectDelayMs * 2 ** (this.failures - 1), 5000);
    this.reopenTimer = setTimeout(() => this.open(), delay);
  }

  close() {
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.reopenTimer);
    if (this.ws) this.ws.terminate();
  }
}

/// A ServiceConnectionContainer: the app's, or one hub's. Acks are matched per container
/// (COMMON/ServiceConnections/ServiceConnectionContainerBase.cs:116,209-237).
class Container {
  constructor(app, name, isApp) {
    this.app = app;
    this.name = name;
    this.isApp = isApp;
    this.key = `${app.appName.toLowerCase()}_${name.toLowerCase()}`;
    this.slots = [];
    this.acks = new Map();
    this.nextAck = 1;
  }

  /// WriteToScopedOrRandomAvailableConnection (ServiceConnectionContainerBase.cs:480-553): the
  /// socket of the client whose hub call this is, when it belongs to this container, else any
  /// connected one.
  pick(scope) {
    if (scope && scope.container === this && scope.connected) return scope;
    const live = this.slots.filter((s) => s.connected);
    if (!live.length) throw new DotNetError('ServiceConnectionNotActiveException', `no connected socket in ${this.key}`);
    return live[Math.floor(Math.random() * live.length)];
  }

  write(message, scope) {
    this.pick(scope).send(message);
  }

  /// WriteAckableMessageAsync + AckHandler.HandleAckStatus (COMMON/Utilities/AckHandler.cs:46-55):
  /// Ok → true, NotFound → false, Timeout/InternalServerError → TimeoutException, else an
  /// AzureSignalRException; no ack within 10 s → TimeoutException.
  ackable(build, scope) {
    const id = this.nextAck++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new DotNetError('TimeoutException', `ack ${id} timed out`));
      }, ACK_TIMEOUT_MS);
      this.acks.set(id, (status, message) => {
        clearTimeout(timer);
        if (status === 1) resolve(true);
        else if (status === 2) resolve(false);
        else if (status === 3 || status === 4) reject(new DotNetError('TimeoutException', `ack ${id}: status ${status} ${message || ''}`));
        else reject(new DotNetError('AzureSignalRException', `ack ${id}: status ${status} ${message || ''}`));
      });
      try {
        this.write(build(id), scope);
      } catch (e) {
        clearTimeout(timer);
        this.acks.delete(id);
        reject(e);
      }
    });
  }

  onAck([, id, status, message]) {
    const done = this.acks.get(id);
    this.app.acks.push({ container: this.name, id, status, message });
    if (done) {
      this.acks.delete(id);
      done(status, message);
    } else {
      this.app.note(`${this.key}: ack ${id} matches nothing this container sent`);
    }
  }
}

class AspNetApp {
  constructor({ relayAddr, clientEndpoint, key, app, hubs, connectionsPerHub, reconnectDelayMs }) {
    // ASPNET/ServerConnections/ServiceConnectionManager.cs:35-38 (ordinal, case-sensitive).
    if (hubs.includes(app)) throw new Error('App name should not be the same as hub name.');
    if (!app) throw new Error('applicationName is required'); // ASPNET/OwinExtensions.cs:181-184
    this.relayAddr = relayAddr;
    this.relayHost = relayAddr.replace(/:\d+$/, '');
    // Where clients are sent: the connection string's ClientEndpoint, else its Endpoint
    // (ServiceEndpointProvider.cs:46; COMMON/Endpoints/ServiceEndpoint.cs:45-52). Token audiences
    // always come from the Endpoint, without the port.
    this.clientEndpoint = clientEndpoint || `http://${relayAddr}/`;
    this.key = key;
    this.appName = app;
    this.hubNames = hubs;
    this.reconnectDelayMs = reconnectDelayMs;
    // COMMON/DefaultServerNameProvider.cs:10.
    this.serverId = `${os.hostname()}_${crypto.randomUUID().replace(/-/g, '')}`;
    this.stopped = false;
    // Introspection for the tests.
    this.opened = []; // connection ids of every OpenConnection
    this.openMessages = []; // those messages, whole
    this.connections = new Map(); // connId → { socket, container, user, state, query, claims, headers }
    this.events = []; // { event: 'connected'|'reconnected'|'disconnected', id, why? }
    this.refused = []; // { id, error }: the CloseConnections this app sent
    this.closes = []; // CloseConnections the relay sent: { id, error, socket }
    this.ignored = []; // messages for clients the receiving socket does not carry
    this.acks = []; // every Ack received
    this.sentLog = []; // every message this app sent: { socket, container, message }
    this.logLines = [];
    this.clients = new Map(); // the global ClientConnectionManager (ClientConnectionManager.cs:24)
    this.app = new Container(this, app, true);
    this.hubs = new Map(hubs.map((h) => [h, new Container(this, h, false)]));
    for (const c of this.containers()) {
      for (let i = 0; i < connectionsPerHub; i++) c.slots.push(new Slot(this, c, i));
    }
    this.readyWaiters = [];
  }

  containers() { return [this.app, ...this.hubs.values()]; }

  slots() { return this.containers().flatMap((c) => c.slots); }

  note(line) {
    this.logLines.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
    if (this.logLines.length > 400) this.logLines.shift();
  }

  /// The last lines of this app's log, for failure messages.
  log() { return this.logLines.join('\n'); }

  serverToken(hubKey, now = Math.floor(Date.now() / 1000)) {
    return jwt({ aud: `http://${this.relayHost}/aspnetserver/?hub=${hubKey}`, nameid: this.serverId, iat: now, nbf: now, exp: now + 3600 }, this.key);
  }

  start() {
    for (const s of this.slots()) s.open();
    // The status ping, per container, on one of its sockets.
    this.statusTimer = setInterval(() => {
      for (const c of this.containers()) {
        try { c.write([T.Ping, 'status', '1']); } catch { /* none connected */ }
      }
    }, STATUS_PING_MS);
    // No frame for 30 s: the SDK drops the socket and reconnects (ServiceConnectionBase.cs:597-615).
    this.timeoutTimer = setInterval(() => {
      for (const s of this.slots()) {
        if (s.ws && s.handshaken && Date.now() - s.lastReceived > SERVICE_TIMEOUT_MS) {
          this.note(`${s.label}: service timeout (nothing received for 30 s)`);
          this.timeouts = (this.timeouts || 0) + 1;
          s.ws.terminate();
        }
      }
    }, 5000);
  }

  /// Resolves once every socket of every container completed its handshake.
  ready(ms = 15000) {
    return new Promise((resolve, reject) => {
      const check = () => this.slots().every((s) => s.connected);
      if (check()) { resolve(); return; }
      const t = setTimeout(() => reject(new Error(`the app's server connections did not all connect within ${ms} ms:\n${this.log()}`)), ms);
      this.readyWaiters.push(() => { if (check()) { clearTimeout(t); resolve(); return true; } return false; });
    });
  }

  onSlotConnected() {
    this.readyWaiters = this.readyWaiters.filter((w) => !w());
  }

  // ---- the classic hub dispatcher ----

  hubByName(name) {
    if (typeof name !== 'string') return null;
    for (const h of this.hubNames) if (h.toLowerCase() === name.toLowerCase()) return h;
    return null;
  }

  /// HubDispatcher.AuthorizeRequest (SR SRC/Hubs/HubDispatcher.cs:95-143): the hubs named in
  /// `connectionData`, case-insensitively; an unknown one throws; no `connectionData` is a
  /// connection without hubs.
  resolveHubs(connectionData) {
    if (!connectionData) return [];
    const infos = JSON.parse(connectionData);
    if (!Array.isArray(infos) || !infos.length) return [];
    const seen = new Set();
    const hubs = [];
    for (const info of infos) {
      const name = info && (info.name ?? info.Name);
      if (seen.has(String(name).toLowerCase())) throw new Error(DUPLICATE_HUBS);
      seen.add(String(name).toLowerCase());
      const hub = this.hubByName(name);
      if (!hub) throw new Error(HUB_NOT_RESOLVED(name));
      hubs.push(hub);
    }
    return hubs;
  }

  /// OpenConnection (ASPNET/ServerConnections/ServiceConnection.cs:87-117, then
  /// ClientConnectionManager.CreateConnection and AzureTransport.ProcessRequest).
  onOpenConnection(slot, message) {
    const [, id, claims, headers, queryString] = message;
    this.opened.push(id);
    this.openMessages.push({ socket: slot.label, container: slot.container.name, message });
    if (this.clients.has(id)) {
      // ServiceConnection.cs:109-115.
      this.note(`${slot.label}: duplicate connection ${id}`);
      this.refused.push({ id, error: `Duplicate connection ID ${id}` });
      try { slot.send([T.CloseConnection, id, `Duplicate connection ID ${id}`, {}, {}]); } catch { /* gone */ }
      return;
    }
    // The OWIN request the SDK builds (ClientConnectionManager.cs:77-110): the query without
    // one leading '?'.
    const qs = typeof queryString === 'string' && queryString.startsWith('?') ? queryString.slice(1) : (queryString || '');
    const query = new URLSearchParams(qs);
    const client = {
      id,
      slot,
      query,
      claims: claims || {},
      headers: headers || {},
      hubs: [],
      state: 'opening',
      queue: Promise.resolve(),
    };
    this.clients.set(id, client);
    slot.clients.set(id, client);
    this.connections.set(id, {
      get socket() { return client.slot.label; },
      container: slot.container.name,
      user: query.get('user'),
      get state() { return client.state; },
      query: qs,
      claims: client.claims,
      headers: client.headers,
    });
    this.note(`${slot.label}: OpenConnection ${id} ${queryString}`);
    this.enqueue(client, async () => {
      try {
        // Authorize first (ClientConnectionManager.cs:40), then the connection token
        // (SR SRC/PersistentConnection.cs:219-225); its value is never checked
        // (ClientConnectionManager.cs:124-140).
        client.hubs = this.resolveHubs(query.get('connectionData'));
        if (!query.get('connectionToken')) throw new Error(MISSING_TOKEN);
        for (const hub of client.hubs) this.fireEvent(client, hub, 'connected');
        client.state = 'connected';
        this.events.push({ event: 'connected', id });
      } catch (e) {
        // ServiceConnection.cs:238-254: the connection is dropped and the app says why.
        this.note(`OpenConnection ${id} refused: ${e.message}`);
        this.forget(client);
        client.state = 'refused';
        this.refused.push({ id, error: e.message });
        try { slot.send([T.CloseConnection, id, e.message, {}, {}]); } catch { /* gone */ }
      }
    });
  }

  /// Messages for a client are processed in order, after its connect completed
  /// (ServiceConnection.cs:279-311).
  enqueue(client, work) {
    client.queue = client.queue.then(work).catch((e) => this.note(`client ${client.id}: ${e.stack || e}`));
  }

  /// ConnectionData from the service: looked up among the clients **of this socket** only
  /// (ServiceConnection.cs:166-182); others are silently dropped.
  onConnectionData(slot, [, id, payload]) {
    const client = slot.clients.get(id);
    const text = Buffer.from(payload || []).toString('utf8');
    if (!client) {
      this.ignored.push({ socket: slot.label, type: 'ConnectionData', id, text });
      this.note(`${slot.label}: ConnectionData for ${id}, which this socket does not carry: dropped`);
      return;
    }
    this.enqueue(client, async () => {
      if (client.state !== 'connected') return;
      if (text === 'asrs:reconnect') {
        // ServiceConnection.cs:22,264-267: the transport's Reconnected → OnReconnected.
        this.events.push({ event: 'reconnected', id });
        for (const hub of client.hubs) this.fireEvent(client, hub, 'reconnected');
        return;
      }
      // AzureTransport.OnReceived does not wait for the invocation (AzureTransport.cs:109-117):
      // invocations of one client run side by side.
      this.invoke(client, text).catch((e) => this.note(`invocation on ${id} failed: ${e.stack || e}`));
    });
  }

  /// CloseConnection from the service: after the client's earlier messages, OnDisconnected(true)
  /// (ServiceConnection.cs:119-122,297-302; AzureTransport.cs:83-97). Nothing is sent back.
  onCloseConnection(slot, [, id, error]) {
    const client = slot.clients.get(id);
    this.closes.push({ id, error, socket: slot.label, known: Boolean(client) });
    if (!client) {
      this.ignored.push({ socket: slot.label, type: 'CloseConnection', id });
      return;
    }
    this.enqueue(client, async () => {
      const wasConnected = client.state === 'connected';
      this.forget(client);
      client.state = 'closed';
      if (wasConnected) await this.disconnected(client, 'CloseConnection');
    });
  }

  /// The socket carrying `client` ended (ServiceConnection.CleanupConnectionsAsyncCore).
  clientLost(client) {
    this.forget(client);
    this.enqueue(client, async () => {
      const wasConnected = client.state === 'connected';
      client.state = 'lost';
      if (wasConnected) await this.disconnected(client, 'server connection lost');
    });
  }

  forget(client) {
    if (this.clients.get(client.id) === client) this.clients.delete(client.id);
    if (client.slot.clients.get(client.id) === client) client.slot.clients.delete(client.id);
  }

  async disconnected(client, why) {
    this.events.push({ event: 'disconnected', id: client.id, why });
    for (const hub of client.hubs) this.fireEvent(client, hub, 'disconnected');
  }

  /// Runs a hub's lifecycle event without waiting for its writes, as the test ChatHub does.
  fireEvent(client, hub, name) {
    const failed = (e) => this.note(`On${name} of ${client.id} in ${hub}: ${e.message}`);
    try {
      Promise.resolve(HUB_EVENTS[name](this.hubContext(client, hub))).catch(failed);
    } catch (e) {
      failed(e);
    }
  }

  /// HubDispatcher.OnReceived (SR SRC/Hubs/HubDispatcher.cs:148-182) and ProcessResponse (:509-548).
  async invoke(client, text) {
    const req = JSON.parse(text); // HubRequestParser (SR SRC/Hubs/HubRequestParser.cs:18-46)
    const hub = this.hubByName(req.H);
    if (!hub) {
      // EnsureHub throws before any response: the call gets no answer.
      this.note(`invocation on ${client.id} for unknown hub ${req.H}: no response`);
      return;
    }
    const id = req.I === undefined || req.I === null ? null : String(req.I);
    const args = Array.isArray(req.A) ? req.A : [];
    const initial = req.S && typeof req.S === 'object' ? req.S : {};
    const ctx = this.hubContext(client, hub, { ...initial }, req);
    const method = Object.entries(HUB_METHODS).find(([name, m]) => name.toLowerCase() === String(req.M).toLowerCase() && m.params === args.length);
    let response;
    try {
      // No matching method: NullMethodDescriptor, which throws when invoked (:163-175).
      // (Its text only reaches the client with detailed errors on.)
      if (!method) throw new Error(METHOD_NOT_RESOLVED(req.M));
      const result = await method[1].run(ctx, args);
      response = { result, id };
    } catch (e) {
      if (e instanceof HubException) {
        response = { id, isHubException: true, error: e.message, errorData: e.data };
      } else {
        this.note(`${hub}.${req.M} on ${client.id} threw ${e.type || e.name}: ${e.message}`);
        response = { id, error: INVOCATION_FAILED(req.H, req.M) };
      }
    }
    response.state = stateChanges(initial, ctx.state);
    this.transportSend(client, hubResponse(response));
  }

  /// AzureTransport.Send (AzureTransport.cs:100-107): on the socket that carries the client, if
  /// the client is still there.
  transportSend(client, json) {
    if (this.clients.get(client.id) !== client) {
      this.note(`no service connection for ${client.id}: response dropped`);
      return;
    }
    client.slot.send([T.ConnectionData, client.id, wrap(json), {}]);
  }

  /// What a hub method sees: its connection, query, state, Clients, Groups and progress.
  hubContext(client, hub, state = {}, req = null) {
    const scope = client.slot;
    const send = (key, method, args, excluded = []) => this.publish({ key, value: clientInvocation(hub, method, args), excluded }, scope);
    return {
      connectionId: client.id,
      hub,
      query: client.query,
      state,
      clients: {
        caller: (method, ...args) => send(`hc-${hub}.${client.id}`, method, args),
        client: (id, method, ...args) => send(`hc-${hub}.${id}`, method, args),
        all: (excluded, method, ...args) => send(`h-${hub}`, method, args, excluded),
        group: (g, excluded, method, ...args) => send(`hg-${hub}.${g}`, method, args, excluded),
        user: (user, method, ...args) => send(`hu-${hub}.${user}`, method, args),
      },
      groups: {
        // GroupManager (SR SRC/GroupManager.cs:85-139): a command to `c-{connId}` whose value is
        // `hg-{Hub}.{group}`, awaited until the bus acks it.
        add: (g) => this.publish({ key: `c-${client.id}`, command: 'AddToGroup', value: `hg-${hub}.${g}` }, scope),
        remove: (g) => this.publish({ key: `c-${client.id}`, command: 'RemoveFromGroup', value: `hg-${hub}.${g}` }, scope),
      },
      // SendProgressUpdate (SR SRC/Hubs/HubDispatcher.cs:495-507).
      progress: (value) => {
        const json = hubResponse({ state: stateChanges(req && req.S ? req.S : {}, state), id: `P|${req && req.I}`, progress: { I: String(req && req.I), D: value } });
        return this.publish({ key: `c-${client.id}`, value: json }, scope);
      },
    };
  }

  /// ServiceMessageBus.Publish (ASPNET/HubHost/ServiceMessageBus.cs:33-104) with
  /// SignalRMessageParser.GetMessages (ASPNET/HubHost/SignalRMessageParser.cs:52-167): the key
  /// decides the service message and the container. Unsupported keys throw synchronously, as the
  /// parser's enumeration is forced inside the non-async Publish. Returns a promise otherwise.
  publish({ key, value, excluded = [], command }, scope) {
    const prefixed = (prefix) => (key.length > prefix.length && key.startsWith(prefix) ? key.slice(prefix.length) : null);
    if (command) {
      // AddToGroup / RemoveFromGroup to `c-{connId}` → Join/LeaveGroupWithAck on the app
      // container, the group name as is (:54-91; ServiceMessageBus.cs:68-87).
      const id = prefixed('c-');
      if (id === null) throw new DotNetError('InvalidDataException', `Invalid key ${key}`);
      const type = command === 'AddToGroup' ? T.JoinGroupWithAck : T.LeaveGroupWithAck;
      return this.app.ackable((ackId) => [type, id, value, ackId, {}], scope);
    }
    const payloads = () => ({ json: wrap(persistentResponse(value)) });
    let rest;
    if ((rest = prefixed('h-')) !== null) {
      // Broadcast on the hub's own container, which must exist (case-sensitive dictionary,
      // ServiceConnectionManager.cs:95-103; the throw happens inside the async ProcessMessage).
      const container = this.hubs.get(rest);
      if (!container) return Promise.reject(new DotNetError('KeyNotFoundException', `Service connection with Hub ${rest} does not exist`));
      return this.tryWrite(container, [T.BroadcastData, excluded, payloads(), {}], scope);
    }
    if (prefixed('hc-') !== null) {
      // The connection id is after the last '.' (:111-132); to the client's own socket when this
      // app carries it, else through the app container (ServiceMessageBus.cs:89-99).
      const dot = key.lastIndexOf('.');
      if (dot < 0 || dot === key.length - 1) throw new DotNetError('ArgumentException', `Key must contain '.' in between but it is not: ${key}`);
      const id = key.slice(dot + 1);
      const message = [T.ConnectionData, id, wrap(persistentResponse(value)), {}];
      const target = this.clients.get(id);
      if (target) return this.tryWrite(null, message, target.slot);
      return this.tryWrite(this.app, message, scope);
    }
    if (prefixed('hg-') !== null) {
      // The whole key is the group name; on the app container (:133-146).
      return this.tryWrite(this.app, [T.GroupBroadcastData, key, excluded, payloads(), {}, [], null], scope);
    }
    if ((rest = prefixed('hu-')) !== null) {
      // Every (hub, user) split whose hub exists: hubs containing '.' first, then the first dot
      // (:147-162,190-215).
      const dot = rest.indexOf('.');
      if (dot < 0) throw new DotNetError('InvalidDataException', `Name ${rest} does not contain the required separator .`);
      const writes = [];
      for (const h of this.hubNames) {
        if (h.includes('.') && rest.length > h.length + 1 && rest[h.length] === '.' && rest.startsWith(h)) {
          writes.push(this.tryWrite(this.hubs.get(h), [T.UserData, rest.slice(h.length + 1), payloads(), {}], scope));
        }
      }
      const h = rest.slice(0, dot);
      if (this.hubs.has(h)) writes.push(this.tryWrite(this.hubs.get(h), [T.UserData, rest.slice(dot + 1), payloads(), {}], scope));
      return Promise.all(writes);
    }
    throw new DotNetError('NotSupportedException', `Message ${key} is not supported.`);
  }

  /// A write as a promise (the SDK's writes are async: their failures fault the task).
  tryWrite(container, message, scope) {
    try {
      if (container) container.write(message, scope);
      else scope.send(message);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  // ---- the negotiate endpoint (ASPNET/Middleware/NegotiateMiddleware.cs) ----

  handle(req, res) {
    const url = new URL(req.url, 'http://app');
    const origin = req.headers.origin;
    // The page is on another origin: a classic app allows it with CORS middleware in front of
    // MapAzureSignalR (Microsoft.Owin.Cors); jquery.signalR sends credentials, so the origin is
    // echoed.
    const headers = origin ? { 'Access-Control-Allow-Origin': origin, 'Access-Control-Allow-Credentials': 'true' } : {};
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        ...headers,
        'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
        'Access-Control-Allow-Headers': req.headers['access-control-request-headers'] || '',
        'Access-Control-Max-Age': '600',
      }).end();
      return;
    }
    const end = (status, body, type = 'text/plain') => res.writeHead(status, { ...headers, 'Content-Type': type }).end(body);
    const localPath = url.pathname;
    if (localPath !== MOUNT && !localPath.startsWith(`${MOUNT}/`)) { end(404, 'Not Found'); return; }
    // NegotiateMiddleware.cs:74-90: negotiate by suffix, /hubs and /js to classic (no proxy
    // script is served here), everything else 404 "NotFound".
    if (!localPath.toLowerCase().endsWith('/negotiate')) { end(404, 'NotFound'); return; }
    const query = [...url.searchParams.entries()];
    const param = (name) => url.searchParams.get(name);
    try {
      this.resolveHubs(param('connectionData')); // HubDispatcher.Authorize (:94-124): a throw is a 500
    } catch {
      end(500, '');
      return;
    }
    // No online endpoint (ASPNET/EndpointRouters/DefaultEndpointRouter.cs:31-45).
    if (!this.slots().some((s) => s.connected)) { end(500, NOT_CONNECTED); return; }
    // AuthUtility.GenerateRequestId (COMMON/Auth/AuthUtility.cs:70-73): base64 of a Stopwatch
    // timestamp's 8 bytes.
    const stamp = Buffer.alloc(8);
    stamp.writeBigUInt64LE(process.hrtime.bigint());
    const redirect = redirectUrl(this.clientEndpoint, localPath, query, stamp.toString('base64'));
    if (param('callback')) { end(400, 'JSONP is no longer supported.'); return; }
    // The client token (NegotiateMiddleware.cs:222-236; ServiceEndpointProvider.cs:55-60):
    // audience without port, the app name as configured, the SDK version, the user id if any.
    // The user id provider here reads the `user` query parameter (an IUserIdProvider the app
    // configures; the E2E TestHub's clients send `user=`).
    const now = Math.floor(Date.now() / 1000);
    const user = param('user');
    const claims = { 'asrs.s.apn': this.appName, 'asrs.s.vn': SDK_VERSION, ...(user ? { 'asrs.s.uid': user } : {}) };
    const token = jwt({ ...claims, aud: `http://${this.relayHost}/aspnetclient`, iat: now, nbf: now, exp: now + 3600 }, this.key);
    this.negotiations = (this.negotiations || 0) + 1;
    // NegotiateMiddleware.cs:253-271: exactly these properties, in this order.
    end(200, JSON.stringify({ ProtocolVersion: '2.0', RedirectUrl: redirect, AccessToken: token, TryWebSockets: true }), 'application/json; charset=UTF-8');
  }

  // ---- for the tests ----

  /// Terminates every server socket of the hubs (not the app connection's); each reopens after
  /// `reconnectDelayMs`. Returns the ids of the clients those sockets carried.
  dropHubConnections() {
    const carried = [];
    for (const c of this.hubs.values()) {
      for (const s of c.slots) {
        carried.push(...s.clients.keys());
        if (s.ws) s.ws.terminate();
      }
    }
    this.note(`dropped every hub socket (carrying ${carried.join(', ') || 'no client'})`);
    return carried;
  }

  async stop() {
    this.stopped = true;
    clearInterval(this.statusTimer);
    clearInterval(this.timeoutTimer);
    for (const s of this.slots()) s.close();
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise((resolve) => this.server.close(resolve));
    }
  }
}

/// The RedirectUrl for a negotiate of `localPath` with `query` (its [key, value] pairs, decoded,
/// in order), the client endpoint `clientEndpoint` ending in '/', and request id `requestId`
/// (NegotiateMiddleware.cs:155-180; ServiceEndpointProvider.cs:62-89): the query only for
/// clientProtocol >= 2.1: the original parameters but clientProtocol, connectionToken and
/// connectionData (re-escaped with Uri.EscapeDataString), then asrs_request_id (the whole part
/// only when the id is not null), then asrs.op (WebUtility.UrlEncode of the path before
/// /negotiate, when not empty).
function redirectUrl(clientEndpoint, localPath, query, requestId) {
  let url = `${clientEndpoint}aspnetclient`;
  const protocol = (query.find(([k]) => k === 'clientProtocol') || [])[1];
  if (!protocol || !versionAtLeast(protocol, [2, 1])) return url;
  let qs = '';
  if (requestId !== null && requestId !== undefined) {
    const kept = query.filter(([k]) => !['clientProtocol', 'connectionToken', 'connectionData'].includes(k));
    kept.push(['asrs_request_id', requestId]);
    qs = `?${kept.map(([k, v]) => `${escapeDataString(k)}=${escapeDataString(v)}`).join('&')}`;
  }
  const trimmed = localPath.replace(/\/+$/, '');
  const originalPath = trimmed.endsWith('/negotiate') ? trimmed.slice(0, -'/negotiate'.length) : '';
  if (originalPath) qs += `${qs ? '&' : '?'}asrs.op=${webUtilityUrlEncode(originalPath)}`;
  return url + qs;
}

/// `a.b` ≥ `min` ([major, minor]), as Version.TryParse and >= compare.
function versionAtLeast(text, min) {
  const parts = text.split('.').map((p) => Number(p));
  if (parts.length < 2 || parts.some((p) => !Number.isInteger(p) || p < 0)) return false;
  for (let i = 0; i < min.length; i++) {
    if ((parts[i] || 0) !== min[i]) return (parts[i] || 0) > min[i];
  }
  return true;
}

/// StateChangeTracker.GetChanges: the keys whose value changed, or null.
function stateChanges(initial, current) {
  const changes = {};
  for (const [k, v] of Object.entries(current)) {
    if (JSON.stringify(initial[k]) !== JSON.stringify(v)) changes[k] = v;
  }
  return Object.keys(changes).length ? changes : null;
}

/// Starts the raw classic app: its server connections to the relay at `relayAddr` (signed with
/// `key`) and its negotiate endpoint, which sends clients to `clientEndpoint` (a base URL ending
/// in '/', like the connection string's ClientEndpoint; default the relay). Resolves once every
/// server connection is handshaken.
///
/// Returns the app with:
///   addr                 its HTTP address (`host:port`); the classic clients' URL is `http://${addr}/signalr`
///   stop()               closes everything
///   dropHubConnections() terminates every hub socket; they reopen after ~200 ms; returns the ids
///                        of the clients they carried
///   opened               ids of every OpenConnection received
///   openMessages         those messages whole, with the socket and container they came on
///   connections          Map connId → { socket, container, user, state, query, claims, headers }
///                        (state: opening | connected | refused | closed | lost)
///   events               { event: connected|reconnected|disconnected, id, why }
///   closes, refused, ignored, acks, sentLog, log()   what went over the wire, and the app's log
///   ready()              resolves when every socket is handshaken again
async function startAspNetApp({ relayAddr, clientEndpoint, key, app = 'AzureSignalRTest', hubs = ['Chat'], connectionsPerHub = 2, reconnectDelayMs = 200 }) {
  const a = new AspNetApp({ relayAddr, clientEndpoint, key, app, hubs, connectionsPerHub, reconnectDelayMs });
  a.server = http.createServer((req, res) => {
    try {
      a.handle(req, res);
    } catch (e) {
      a.note(`negotiate failed: ${e.stack}`);
      if (!res.headersSent) res.writeHead(500).end();
    }
  });
  await new Promise((resolve) => a.server.listen(0, '127.0.0.1', resolve));
  a.addr = `127.0.0.1:${a.server.address().port}`;
  a.start();
  try {
    await a.ready();
  } catch (e) {
    await a.stop();
    throw e;
  }
  return a;
}

module.exports = { startAspNetApp, HUB_METHODS, redirectUrl, wrap, persistentResponse, clientInvocation, hubResponse, escapeDataString, webUtilityUrlEncode, SDK_VERSION };
