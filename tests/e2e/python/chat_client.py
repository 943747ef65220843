"""A second, independent ASP.NET Core client: `signalrcore` (Python) through the relay.

usage: python chat_client.py <app base url> <json|msgpack> <user>
Prints one line per check and exits 0 only if every check passed.
"""
import json
import os
import sys
import threading
import urllib.request

from signalrcore.hub_connection_builder import HubConnectionBuilder
from signalrcore.protocol.json_hub_protocol import JsonHubProtocol
from signalrcore.protocol.messagepack_protocol import MessagePackHubProtocol

base, proto, user = sys.argv[1], sys.argv[2], sys.argv[3]
TIMEOUT = 10


def connect():
    builder = HubConnectionBuilder().with_url(f"{base}/chat?user={user}")
    builder = builder.with_hub_protocol(MessagePackHubProtocol() if proto == "msgpack" else JsonHubProtocol())
    conn = builder.build()
    opened = threading.Event()
    conn.on_open(opened.set)
    conn.start()
    if not opened.wait(TIMEOUT):
        raise SystemExit("FAIL: did not connect")
    return conn


def invoke(conn, method, args):
    done, box = threading.Event(), {}

    def on_result(message):
        box["result"] = getattr(message, "result", None)
        box["error"] = getattr(message, "error", None)
        done.set()

    conn.invoke(method, args, on_invocation=on_result)
    if not done.wait(TIMEOUT):
        raise SystemExit(f"FAIL: no completion for {method}")
    if box.get("error"):
        raise SystemExit(f"FAIL: {method} failed: {box['error']}")
    return box.get("result")


def wait_for(event, what):
    if not event.wait(TIMEOUT):
        raise SystemExit(f"FAIL: {what}")


a, b = connect(), connect()
broadcasts, group_messages = [], []
got_broadcast, got_group = threading.Event(), threading.Event()
b.on("broadcast", lambda args: (broadcasts.append(args), got_broadcast.set()))
b.on("groupMessage", lambda args: (group_messages.append(args), got_group.set()))

echoed = invoke(a, "Echo", ["hello from python"])
assert echoed == "hello from python", echoed
print("ok echo")

assert invoke(a, "GetUserId", []) == user
print("ok user")

invoke(a, "Broadcast", [f"broadcast from {proto}"])
wait_for(got_broadcast, "no broadcast")
assert broadcasts[0] == [f"broadcast from {proto}"], broadcasts
print("ok broadcast")

invoke(b, "JoinGroup", ["py-room"])
invoke(a, "SendToGroup", ["py-room", "to the group"])
wait_for(got_group, "no group message")
assert group_messages[0] == ["py-room", "to the group"], group_messages
print("ok groups")

# signalrcore's stop() can block on its receive thread; stop in the background.
for conn in (a, b):
    threading.Thread(target=conn.stop, daemon=True).start()
print("PASS")
sys.stdout.flush()
os._exit(0)
