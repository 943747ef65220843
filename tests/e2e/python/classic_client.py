"""A classic ASP.NET SignalR 2.x client in Python: `signalr-client-threads` (module `signalr`).

It does not follow the negotiate redirect, so it goes straight to the relay's classic endpoint
with the token in an Authorization header on its requests Session.

usage: python classic_client.py <relay base url> <token>
Prints one line per check and exits 0 only if every check passed.
"""
import os
import sys
import threading
import time

from requests import Session
from signalr import Connection

base, token = sys.argv[1], sys.argv[2]
TIMEOUT = 10


def fail(what):
    print(f"FAIL: {what}")
    sys.stdout.flush()
    os._exit(1)


class Client:
    """One connection to the `chat` hub. Hub results are matched to invocations by `I`."""

    def __init__(self, name):
        self.name = name
        self.cond = threading.Condition()
        self.results = {}
        self.pushes = {"welcome": [], "echo": [], "groupMessage": []}
        self.next_id = 0
        session = Session()
        session.headers["Authorization"] = f"Bearer {token}"
        self.conn = Connection(f"{base}/aspnetclient", session)
        self.conn.qs = {"hub": "chat"}
        hub = self.conn.register_hub("chat")
        for method in self.pushes:
            hub.client.on(method, lambda *args, m=method: self._record(m, list(args)))
        self.server = hub.server
        self.conn.received += self._on_received
        self.conn.exception += lambda *exc: print(f"{name}: listener error {exc[1]!r}", file=sys.stderr)
        self.conn.start()

    def _record(self, method, args):
        with self.cond:
            self.pushes[method].append(args)
            self.cond.notify_all()

    def _on_received(self, **message):
        # Completions carry `I`; progress messages (`P`) are not used here.
        if "I" in message and "P" not in message:
            with self.cond:
                self.results[str(message["I"])] = message
                self.cond.notify_all()

    def wait(self, what, predicate):
        with self.cond:
            if not self.cond.wait_for(predicate, TIMEOUT):
                fail(f"{self.name}: {what}")

    def invoke(self, method, *args):
        """Sends the invocation and waits for its completion message."""
        call_id = str(self.next_id)
        self.next_id += 1
        self.server.invoke(method, *args)
        self.wait(f"no completion for {method}", lambda: call_id in self.results)
        return self.results[call_id]

    def transport(self):
        # The library picks the transport itself (webSockets when TryWebSockets is true).
        auto = getattr(self.conn, "_Connection__transport", None)
        inner = getattr(auto, "_AutoTransport__transport", None)
        return inner._get_name() if inner else "?"


a, b = Client("a"), Client("b")
print(f"transport {a.transport()}")

for c in (a, b):
    c.wait("no welcome", lambda c=c: len(c.pushes["welcome"]) > 0)
    if c.pushes["welcome"][0] != [c.conn.id]:
        fail(f"welcome {c.pushes['welcome']} for connection {c.conn.id}")
print("ok welcome")

done = a.invoke("Echo", "hello from classic python")
if done.get("R") != "hello from classic python" or "E" in done:
    fail(f"Echo completed with {done}")
print("ok echo")

done = a.invoke("Fail", "python boom")
if "python boom" not in str(done.get("E", "")):
    fail(f"Fail completed with {done}")
print("ok error")

a.invoke("EchoToCaller", "only a")
a.wait("no echo push", lambda: len(a.pushes["echo"]) > 0)
if a.pushes["echo"] != [["only a"]]:
    fail(f"echo pushes {a.pushes['echo']}")
print("ok push")

a.invoke("JoinGroup", "py-classic")
b.invoke("SendToGroup", "py-classic", "to the classic group")
a.wait("no group message", lambda: len(a.pushes["groupMessage"]) > 0)
time.sleep(0.3)
if a.pushes["groupMessage"] != [["py-classic", "to the classic group"]]:
    fail(f"group messages at a {a.pushes['groupMessage']}")
if b.pushes["groupMessage"] or b.pushes["echo"]:
    fail(f"b got {b.pushes}")
print("ok groups")

# close() joins a listener thread that waits for the next message; do not wait for it.
for c in (a, b):
    threading.Thread(target=c.conn.close, daemon=True).start()
print("PASS")
sys.stdout.flush()
os._exit(0)
