"""The harness: a real pgfeed server (the binary, embedded mode) and psql as the outside writer.

The binary is ``$PGFEED``, else ``target/debug/pgfeed`` of this repository (``cargo test`` or
``cargo build`` makes it). Each server runs its own embedded PostgreSQL on a fresh data dir, with
``--bind 127.0.0.1:0``; its address comes from the ``listening on http://ADDR`` line and the
database's URL (a Unix socket in the data dir) from ``embedded PostgreSQL at …``. A restart stops
the process and starts it again on the same data dir and port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pgfeed

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("PGFEED") or str(REPO / "target" / "debug" / "pgfeed")
# Long enough for a loaded CI box; a test that needs it has failed.
PATIENCE = 30.0
SECRET = "a test secret that is long enough for HS256 tokens"

T = TypeVar("T")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Server:
    """One ``pgfeed serve`` process in embedded mode, and what it logged."""

    def __init__(self, args: list[str] | None = None) -> None:
        self.args = args or []
        self.dir = tempfile.mkdtemp(prefix="pgfeed-py-")
        # The embedded cluster runs as `postgres` when we are root: it must reach the data dir.
        os.chmod(self.dir, 0o755)
        self.data_dir = os.path.join(self.dir, "data")
        self.log: list[str] = []
        self.addr = ""
        self.db_url = ""
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def start(self, port: int = 0) -> Server:
        if not os.path.exists(BIN):
            raise RuntimeError(f"no pgfeed binary at {BIN}: run `cargo build` or set PGFEED")
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PGFEED_")}
        env.update(RUST_LOG="pgfeed=info", NO_COLOR="1")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data-dir", self.data_dir, "--bind", f"127.0.0.1:{port}", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        listening = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = ANSI.sub("", line.rstrip("\n"))
                self.log.append(line)
                m = re.search(r"embedded PostgreSQL at (\S+)", line)
                if m:
                    self.db_url = m.group(1)
                m = re.search(r"listening on http://([0-9.]+:[0-9]+)", line)
                if m:
                    self.addr = m.group(1)
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(60):
            self.kill()
            raise RuntimeError("pgfeed did not start listening; its log:\n" + "\n".join(self.log))
        return self

    def stop(self) -> int:
        """SIGTERM (WebSockets closed with 1001), then the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("pgfeed did not exit after SIGTERM; its log:\n" + "\n".join(self.log))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stops the server and starts it again on the same data dir and port."""
        port = self.port
        assert self.stop() == 0
        self.start(port)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- psql, the outside writer ---------------------------------------------------------

    # The SQL goes in on stdin, not with -c: psql runs a script's statements one by one, each
    # its own transaction, where -c would send them as one query and so one transaction.

    def _psql_args(self) -> list[str]:
        return ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", self.db_url, "-f", "-"]

    def psql(self, sql: str) -> str:
        r = subprocess.run(self._psql_args(), input=sql, capture_output=True, text=True, timeout=PATIENCE)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}\n{sql[:500]}")
        return r.stdout.strip()

    async def apsql(self, sql: str) -> str:
        """psql without blocking the event loop (the client keeps reading meanwhile)."""
        p = await asyncio.create_subprocess_exec(
            *self._psql_args(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await p.communicate(sql.encode())
        if p.returncode != 0:
            raise RuntimeError(f"psql failed: {err.decode()}\n{sql[:500]}")
        return out.decode().strip()

    def new_study(self) -> int:
        """A study of its own for one test: tests share a server, never a study."""
        label = f"t-{uuid.uuid4().hex[:12]}"
        return int(self.psql(f"insert into studies (label, title) values ('{label}', 'Study {label}') returning id"))

    def post(self, study: int, body: str, author: str = "psql") -> None:
        self.psql(f"insert into messages (study_id, author, body) values ({study}, '{author}', '{body}')")


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Runs one test's scenario; a hang fails the test instead of the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def take(sub: pgfeed.Subscription, n: int) -> list[pgfeed.Item]:
    """The next ``n`` items, within PATIENCE."""

    async def go() -> list[pgfeed.Item]:
        items: list[pgfeed.Item] = []
        async for item in sub:
            items.append(item)
            if len(items) == n:
                break
        return items

    try:
        return await asyncio.wait_for(go(), PATIENCE)
    except asyncio.TimeoutError:
        raise AssertionError(f"{sub.topic}: fewer than {n} items within {PATIENCE}s") from None


async def quiet(sub: pgfeed.Subscription, seconds: float = 0.5) -> None:
    """Asserts that nothing more arrives for a while (used only to show nothing is repeated)."""
    try:
        item = await asyncio.wait_for(sub.__anext__(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"{sub.topic}: unexpected {item}")


async def eventually(check: Any, what: str) -> None:
    """Waits until ``check()`` is true, within PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE}s: {what}")
        await asyncio.sleep(0.05)


def token(claims: dict[str, Any], secret: str = SECRET) -> str:
    """An HS256 JWT (README "Security: auth and limits")."""

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"
