"""python-socketio 5.x against pgfeed's /socket.io/ (PROTOCOL §10), over long-polling and over
WebSocket, with psql as the writer. Run by tests/it/socketio.rs, which starts the server and a
throwaway database and passes them in: PGFEED_URL, PGFEED_DB (a libpq URL for psql),
PGFEED_JWT_SECRET (tokens are made here).
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import uuid

import pytest
import socketio

URL = os.environ["PGFEED_URL"]
DB = os.environ["PGFEED_DB"]
SECRET = os.environ["PGFEED_JWT_SECRET"].encode()
# Generous: the machine is shared with builds. Nothing asserts a duration.
PATIENCE = 30.0


def sql(q: str) -> str:
    """An external writer: one psql statement, its unaligned output."""
    out = subprocess.run(
        ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", DB, "-c", q],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict) -> str:
    """An HS256 token for the server's secret."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(hmac.new(SECRET, head.encode(), hashlib.sha256).digest())


def admin(seconds: int = 3600) -> str:
    return jwt({"role": "admin", "exp": int(time.time()) + seconds})


def new_study() -> int:
    return int(sql(f"insert into studies(label, title) values ('py-{uuid.uuid4()}', 'Python') returning id"))


def new_message(study: int, body: str) -> int:
    return int(
        sql(f"insert into messages(study_id, author, body) values ({study}, 'ana', '{body}') returning id")
    )


class Recorder:
    """A socketio.Client that records every event it receives, with all its arguments."""

    def __init__(self, transports, token):
        self.sio = socketio.Client(reconnection=False)
        self.seen = []
        self.cond = threading.Condition()
        self.sio.on("*", self._any)
        self.refusal = None
        self.sio.on("connect_error", self._refused)
        self.transports = transports
        self.token = token

    def _any(self, event, *args):
        with self.cond:
            self.seen.append((event, args))
            self.cond.notify_all()

    def _refused(self, data):
        self.refusal = data

    def connect(self):
        self.sio.connect(URL, transports=self.transports, auth={"token": self.token}, wait_timeout=PATIENCE)
        return self

    def call(self, event, data):
        return self.sio.call(event, data, timeout=PATIENCE)

    def wait_for(self, match):
        deadline = time.monotonic() + PATIENCE
        with self.cond:
            while True:
                for event, args in self.seen:
                    if match(event, args):
                        return event, args
                left = deadline - time.monotonic()
                assert left > 0, f"not seen; got {[e for e, _ in self.seen]}"
                self.cond.wait(left)

    def messages(self, study):
        return [
            (event, args)
            for event, args in self.seen
            if event.startswith("message_") and args[0]["data"]["study_id"] == study
        ]

    def close(self):
        self.sio.disconnect()


TRANSPORTS = [["polling"], ["websocket"]]


@pytest.fixture(params=TRANSPORTS, ids=lambda t: t[0])
def transports(request):
    return request.param


def test_subscribe_snapshot_and_live_events(transports):
    study = new_study()
    first = new_message(study, "before")
    c = Recorder(transports, admin()).connect()
    try:
        answer = c.call("subscribe", {"topic": f"studies:{study}", "snapshot": True})
        assert isinstance(answer["cursor"], str), answer
        _, (snap,) = c.wait_for(lambda e, a: e == "snapshot")
        assert snap["data"]["study"]["id"] == study
        assert [m["id"] for m in snap["data"]["messages"]] == [first]
        live = new_message(study, "live")
        sql(f"update messages set body = 'edited' where id = {live}")
        c.wait_for(lambda e, a: e == "message_updated")
        events = c.messages(study)
        assert [(e, a[0]["id"]) for e, a in events] == [("message_created", live), ("message_updated", live)]
        # The event JSON is the one argument, so `def on_message(data)` handlers work unchanged.
        assert all(len(a) == 1 for _, a in events)
        assert events[1][1][0]["data"]["body"] == "edited"
    finally:
        c.close()


def test_errors_are_acks_with_a_code(transports):
    c = Recorder(transports, admin()).connect()
    try:
        assert c.call("subscribe", {"topic": "no_such_table"})["error"]["code"] == "unknown_topic"
        assert c.call("subscribe", {})["error"]["code"] == "bad_request"
        assert c.call("subscribe", {"topic": "studies", "since": "garbage"})["error"]["code"] == "bad_request"
        assert c.call("unsubscribe", {"topic": "studies"}) == {"topic": "studies"}
    finally:
        c.close()


def test_a_refused_connect_says_why(transports):
    for token in ["", "not-a-jwt", jwt({"role": "admin", "exp": int(time.time()) - 10})]:
        c = Recorder(transports, token)
        with pytest.raises(socketio.exceptions.ConnectionError):
            c.connect()
        # The connect_error's message says why.
        message = c.refusal["message"] if isinstance(c.refusal, dict) else c.refusal
        assert "unauthorized" in message, c.refusal


def test_reconnect_with_since_loses_and_repeats_nothing(transports):
    study = new_study()
    c = Recorder(transports, admin()).connect()
    try:
        c.call("subscribe", {"topic": f"studies:{study}"})
        m1 = new_message(study, "one")
        _, (got1,) = c.wait_for(lambda e, a: e == "message_created" and a[0]["id"] == m1)
    finally:
        c.close()
    # Written while no client is connected.
    m2 = new_message(study, "two")
    m3 = new_message(study, "three")
    again = Recorder(transports, admin()).connect()
    try:
        answer = again.call("subscribe", {"topic": f"studies:{study}", "since": got1["cursor"]})
        assert isinstance(answer["cursor"], str), answer
        m4 = new_message(study, "four")
        again.wait_for(lambda e, a: e == "message_created" and a[0]["id"] == m4)
        assert [a[0]["id"] for _, a in again.messages(study)] == [m2, m3, m4]
    finally:
        again.close()


def test_a_member_is_refused_another_study(transports):
    mine, theirs = new_study(), new_study()
    token = jwt({"role": "member", "studies": [mine], "exp": int(time.time()) + 3600})
    c = Recorder(transports, token).connect()
    try:
        assert isinstance(c.call("subscribe", {"topic": f"studies:{mine}"})["cursor"], str)
        assert c.call("subscribe", {"topic": f"studies:{theirs}"})["error"]["code"] == "forbidden"
    finally:
        c.close()


def test_a_view_sends_rows_then_deltas(transports):
    study = new_study()
    m1 = new_message(study, "a")
    c = Recorder(transports, admin()).connect()
    try:
        answer = c.call(
            "subscribe",
            {"topic": "messages", "view": "v", "filter": {"study_id": f"eq.{study}"}, "order": "id.desc"},
        )
        assert answer["view"] == "v", answer
        _, (view,) = c.wait_for(lambda e, a: e == "view")
        assert [r["id"] for r in view["rows"]] == [m1]
        m2 = new_message(study, "b")
        _, (delta,) = c.wait_for(lambda e, a: e == "view_delta")
        assert [(o["op"], int(o["key"]), o["to"]) for o in delta["ops"]] == [("enter", m2, 0)]
    finally:
        c.close()


def test_the_server_disconnects_at_exp_and_since_resumes_exactly(transports):
    study = new_study()
    c = Recorder(transports, admin(seconds=3)).connect()
    try:
        c.call("subscribe", {"topic": f"studies:{study}"})
        m1 = new_message(study, "one")
        _, (got1,) = c.wait_for(lambda e, a: e == "message_created" and a[0]["id"] == m1)
        # At the token's exp: told why, then disconnected by the server.
        _, (closing,) = c.wait_for(lambda e, a: e == "closing")
        assert closing["code"] == 4001
        deadline = time.monotonic() + PATIENCE
        while c.sio.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not c.sio.connected
    finally:
        c.close()
    m2 = new_message(study, "missed")
    again = Recorder(transports, admin()).connect()
    try:
        again.call("subscribe", {"topic": f"studies:{study}", "since": got1["cursor"]})
        m3 = new_message(study, "three")
        again.wait_for(lambda e, a: e == "message_created" and a[0]["id"] == m3)
        assert [a[0]["id"] for _, a in again.messages(study)] == [m2, m3]
    finally:
        again.close()
