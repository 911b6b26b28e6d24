"""The connection: one WebSocket to ``/ws`` carrying every subscription and view of a feed.

Delivery (PROTOCOL §4): for each subscription, events in commit order, each exactly once, with no
gap, across disconnects and server restarts. The feed keeps each subscription's cursor (that of
the last item put in its queue) and, after any disconnect, connects again (exponential backoff
with jitter, 0.25 s doubling to 10 s) and subscribes every topic with that cursor as ``since``.
The server sends what came after it, so nothing is lost or repeated; events already queued are
still handed out.

Bounded memory: each subscription queues at most ``queue_size`` items. When a consumer does not
keep up and its queue is full, the feed unsubscribes that one topic (the item that found it full
is dropped, not queued) and subscribes it again with its cursor once the consumer has taken half
of the queue. The server re-reads what was dropped from its log, so a slow consumer loses
nothing; other subscriptions on the connection keep flowing. A view keeps only its rows (at most
``limit``), and its change notices collapse into one when not taken (see ``View.changes``).

Tokens: ``token`` is a JWT string or a function (sync or async) returning one, called before every
connection. When the server closes the socket at the token's ``exp`` (close code 4001), the feed
asks the function for a fresh token and resumes from its cursors. A token the server refuses at
the first connection raises :class:`AuthError` from ``connect``; refused later, a fixed token ends
the feed with that error (a function is asked again, with backoff).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ._types import (
    AuthError,
    ClosedError,
    ConnectError,
    Event,
    FeedError,
    Item,
    PgfeedError,
    RefreshNeeded,
    Snapshot,
    is_after,
)
from ._view import View

log = logging.getLogger("pgfeed")

TokenSource = Union[str, None, Callable[[], Union[str, None, Awaitable[Union[str, None]]]]]
"""A JWT, or a function returning one (or an awaitable of one), called before every connection."""

# Close codes the server uses (PROTOCOL §5).
TOKEN_EXPIRED = 4001
SLOW_CONSUMER = 4008


def _ws_url(url: str) -> str:
    """``http://host:port`` (or ``ws://…``, with or without ``/ws``) → the ``/ws`` endpoint."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"pgfeed: {url!r} is not an http(s):// or ws(s):// URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class _End:
    """Put in a subscription's queue to end its iteration (with ``error`` raised, if set)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


# A subscription's life on the connection.
NEW = "new"  # to be subscribed when the connection is (again) up
SUBSCRIBING = "subscribing"  # subscribe sent; its events are dropped until `subscribed`
LIVE = "live"  # its events are queued
PAUSED = "paused"  # queue full: unsubscribed until the consumer takes half of it
ENDED = "ended"  # closed, refused, or the feed ended


class Subscription:
    """One topic's items, in commit order: iterate it with ``async for``.

    Yields :class:`Event`, :class:`Snapshot` and :class:`RefreshNeeded` (each has ``type``).
    ``await feed.subscribe(…)`` waits until the server confirmed the subscription (raising
    :class:`FeedError` if it refused it) and returns the subscription; iterating a subscription
    that the server refuses raises the same error.
    """

    def __init__(self, feed: Feed, topic: str, since: str | None, snapshot: bool, queue_size: int) -> None:
        self._feed = feed
        self.topic = topic
        self.snapshot = snapshot
        self.cursor: str | None = since
        """The cursor of the last item queued: where a reconnect resumes."""
        self.pauses = 0
        """How often a full queue paused this subscription (it loses nothing by it)."""
        self._need_snapshot = snapshot and since is None
        self._max = max(2, queue_size)
        # Items for the consumer. Unbounded as a type so that the end marker always fits; `_offer`
        # holds it to `_max` items.
        self._queue: asyncio.Queue[Item | _End] = asyncio.Queue()
        self._state = NEW
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._retry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<pgfeed.Subscription {self.topic} {self._state} cursor={self.cursor}>"

    def __await__(self) -> Generator[Any, None, Subscription]:
        yield from asyncio.shield(self._ready).__await__()
        return self

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends too
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        if self._state == PAUSED and self._queue.qsize() <= self._max // 2:
            self._state = NEW
            self._feed._subscribe(self)
        return item

    async def __aenter__(self) -> Subscription:
        return await self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Unsubscribes; iteration ends after the items already queued."""
        if self._state == ENDED:
            return
        if self._state in (SUBSCRIBING, LIVE):
            self._feed._send({"action": "unsubscribe", "topic": self.topic})
        self._end(None if self._ready.done() else ClosedError(f"{self.topic}: closed"))

    # ---- what the feed calls --------------------------------------------------------------

    def _subscribe_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"action": "subscribe", "topic": self.topic, "id": f"s:{self.topic}"}
        if self._need_snapshot:
            frame["snapshot"] = True
        elif self.cursor is not None:
            frame["since"] = self.cursor
        return frame

    def _subscribed(self, cursor: Any) -> None:
        if self._state != SUBSCRIBING:
            return
        self._state = LIVE
        if not self._need_snapshot and self.cursor is None and isinstance(cursor, str):
            # Live from now. (With `since`, the server's cursor may be past the backlog still to
            # come, so the resume point stays the last item queued.)
            self.cursor = cursor
        if not self._ready.done():
            self._ready.set_result(None)

    def _offer(self, item: Item) -> None:
        """Queues ``item``; a full queue pauses the topic instead (see the module's comment)."""
        if self._state != LIVE:
            return
        if isinstance(item, Event) and not is_after(item.cursor, self.cursor):
            return
        if self._queue.qsize() >= self._max:
            self._state = PAUSED
            self.pauses += 1
            self._feed._send({"action": "unsubscribe", "topic": self.topic})
            log.info("pgfeed: %s: consumer %d items behind; paused", self.topic, self._max)
            return
        self._queue.put_nowait(item)
        if isinstance(item, Snapshot):
            self.cursor = item.cursor
            self._need_snapshot = False
        elif isinstance(item, Event):
            self.cursor = item.cursor

    def _refresh_needed(self, reason: str) -> None:
        """The cursor is gone: tell the consumer, then start over (from a snapshot, or now).

        The server answered the subscribe with this instead of subscribing the topic.
        """
        if self._state != SUBSCRIBING:
            return
        if self._queue.qsize() >= self._max:
            # Not subscribed, so nothing to unsubscribe: the same answer comes again when the
            # consumer has caught up and the topic is subscribed from the same cursor.
            self._state = PAUSED
            self.pauses += 1
            return
        self._queue.put_nowait(RefreshNeeded(self.topic, reason))
        self.cursor = None
        self._need_snapshot = self.snapshot
        self._state = NEW
        self._feed._subscribe(self)

    def _refused(self, code: str, message: str) -> None:
        if code in ("rate_limited", "unavailable"):
            # Snapshots are budgeted per connection; the database may be briefly away. Ask again.
            self._state = NEW
            if self._retry is not None:
                self._retry.cancel()
            delay = 1.0 + random.random()
            self._retry = asyncio.get_running_loop().call_later(delay, self._feed._subscribe, self)
            return
        self._end(FeedError(code, message))

    def _disconnected(self) -> None:
        if self._state in (SUBSCRIBING, LIVE):
            self._state = NEW

    def _end(self, error: BaseException | None) -> None:
        if self._state == ENDED:
            return
        self._state = ENDED
        if self._retry is not None:
            self._retry.cancel()
        if not self._ready.done():
            self._ready.set_exception(error or ClosedError(f"{self.topic}: closed"))
            self._ready.exception()  # retrieved: nobody may be awaiting it
        self._queue.put_nowait(_End(error))
        self._feed._forget(self)


class Feed:
    """A connection to a pgfeed server carrying any number of subscriptions and views.

    Use ``async with pgfeed.connect(url, token=…) as feed:``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource = None,
        queue_size: int = 1000,
        backoff_min: float = 0.25,
        backoff_max: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        max_message_size: int | None = None,
    ) -> None:
        self.url = _ws_url(url)
        self._token = token
        self.queue_size = queue_size
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        # Events have no size limit (PROTOCOL §4: a row of megabytes arrives whole).
        self._max_message_size = max_message_size
        self._subs: dict[str, Subscription] = {}
        self._views: dict[str, View] = {}
        self._view_names = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self._pings: dict[str, asyncio.Future[None]] = {}
        self._ws: ClientConnection | None = None
        # Frames for the current connection, written in order by its writer task. None while
        # disconnected: what is subscribed then is subscribed from its state on the next connect.
        self._out: asyncio.Queue[str] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        # Set once the feed has ended (closed, or failed for good).
        self._ended = asyncio.Event()
        self._closed = False
        self.error: BaseException | None = None
        """Why the feed ended, when it ended on its own (a refused fixed token)."""
        self.connections = 0
        """Connections opened so far (1 + reconnects)."""
        self.last_close_code: int | None = None
        """The close code of the last connection that ended (4001, 4008, 1001, …)."""

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Feed:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Opens the first connection; raises :class:`AuthError` or :class:`ConnectError`."""
        if self._runner is not None:
            return
        ws = await self._open()
        self._runner = asyncio.create_task(self._run(ws), name="pgfeed")
        self._runner.add_done_callback(self._run_ended)

    def _run_ended(self, runner: asyncio.Task[None]) -> None:
        """Ends every subscription if the connection loop died of a bug, rather than hang them."""
        if runner.cancelled() or runner.exception() is None:
            return
        e = runner.exception()
        log.error("pgfeed: the connection loop failed: %r", e)
        self.error = PgfeedError(f"pgfeed: the connection loop failed: {e!r}")
        self._closed = True
        self._end_all(self.error)

    async def close(self) -> None:
        """Closes the connection; every subscription's iteration ends after its queued items."""
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        self._end_all(None)

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def wait_connected(self) -> None:
        """Waits until a connection is up (at once when it is)."""
        await self._up.wait()

    # ---- what applications call -----------------------------------------------------------

    def subscribe(self, topic: str, *, since: str | None = None, snapshot: bool = False) -> Subscription:
        """Follows ``topic`` (``studies``, ``studies:42``, ``messages:7``, a tracked table …).

        ``since``: a cursor from an earlier session; the events after it come first.
        ``snapshot``: without ``since``, a :class:`Snapshot` comes first; and a
        :class:`RefreshNeeded` is followed by a new one (without it, by the changes from then on).
        """
        if self._closed:
            raise ClosedError("pgfeed: the feed is closed")
        if topic in self._subs:
            raise ValueError(f"pgfeed: already subscribed to {topic!r} on this feed")
        sub = Subscription(self, topic, since, snapshot, self.queue_size)
        self._subs[topic] = sub
        self._subscribe(sub)
        return sub

    async def view(
        self,
        topic: str,
        *,
        filter: Mapping[str, str] | None = None,
        order: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        count: bool = False,
        name: str | None = None,
    ) -> View:
        """Opens a live view (PROTOCOL §9) and waits for its first window.

        ``filter``: column → ``op.value`` (``{"status": "eq.active"}``); ``order``:
        ``column[.asc|.desc]``, comma-separated; ``limit`` 1–1000; ``after``: a ``next`` token;
        ``count``: keep ``count`` of the matching rows. Raises :class:`FeedError` when refused.
        """
        if self._closed:
            raise ClosedError("pgfeed: the feed is closed")
        if name is None:
            name = f"v{next(self._view_names)}"
            while name in self._views:
                name = f"v{next(self._view_names)}"
        elif name in self._views:
            raise ValueError(f"pgfeed: a view named {name!r} is already open")
        v = View(
            self,
            name,
            topic,
            filter=filter,
            order=order,
            limit=limit,
            after=after,
            count=count,
            changes=self.queue_size,
        )
        self._views[name] = v
        self._send(v._subscribe_frame())
        return await v.wait_loaded()

    async def ping(self, timeout: float = 10.0) -> float:
        """Sends a ping and waits for the pong; returns the round trip in seconds.

        Waits for a connection first when there is none; raises ``TimeoutError`` after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(self._ping(), timeout)
        return loop.time() - start

    async def _ping(self) -> None:
        await self._wait_up()
        ping_id = f"p:{next(self._ping_ids)}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = fut
        self._send({"action": "ping", "id": ping_id})
        try:
            await fut
        finally:
            self._pings.pop(ping_id, None)

    async def refresh(self, topic: str) -> None:
        """Asks for a new :class:`Snapshot` of ``topic``; it comes through the subscription.

        While disconnected, the subscription takes one when it subscribes again.
        """
        sub = self._subs.get(topic)
        if sub is None:
            raise ValueError(f"pgfeed: not subscribed to {topic!r}")
        sub._need_snapshot = True
        if sub._state == LIVE:
            self._send({"action": "refresh", "topic": topic, "id": f"r:{topic}"})

    # ---- the connection -------------------------------------------------------------------

    async def _wait_up(self) -> None:
        while not self._up.is_set():
            if self._closed:
                raise ClosedError("pgfeed: the feed is closed") from self.error
            up = asyncio.ensure_future(self._up.wait())
            ended = asyncio.ensure_future(self._ended.wait())
            await asyncio.wait([up, ended], return_when=asyncio.FIRST_COMPLETED)
            up.cancel()
            ended.cancel()

    async def _token_now(self) -> str | None:
        token = self._token
        if callable(token):
            value = token()
            if inspect.isawaitable(value):
                value = await value
            return value
        return token

    async def _open(self) -> ClientConnection:
        try:
            token = await self._token_now()
        except Exception as e:
            # A token service that is briefly away must not end the feed: a function is asked
            # again, with backoff (see `_run`).
            raise AuthError(f"the token function failed: {e!r}") from e
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            return await ws_connect(
                self.url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                max_size=self._max_message_size,
                compression=None,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode("utf-8", "replace")[:300] if e.response.body else ""
            if status == 401:
                raise AuthError(f"{self.url}: the server refused the token (401) {body}".rstrip()) from e
            raise ConnectError(f"{self.url}: HTTP {status} {body}".rstrip()) from e
        except (OSError, InvalidHandshake, TimeoutError, asyncio.TimeoutError) as e:
            raise ConnectError(f"cannot reach {self.url}: {e}") from e

    async def _run(self, ws: ClientConnection) -> None:
        """Serves connection after connection until the feed is closed or fails for good."""
        failures = 0
        while True:
            code = await self._serve(ws)
            if self._closed:
                return
            log.info("pgfeed: connection closed (%s); reconnecting", code)
            # A connection that worked is retried at once (a restart, 4001, 4008): spread out a
            # little so many clients do not come back in the same millisecond.
            delay = self._backoff_min * random.random()
            while True:
                await asyncio.sleep(delay)
                try:
                    ws = await self._open()
                    failures = 0
                    break
                except AuthError as e:
                    if not callable(self._token):
                        log.error("pgfeed: %s", e)
                        self.error = e
                        self._closed = True
                        self._end_all(e)
                        return
                    log.warning("pgfeed: %s", e)
                except ConnectError as e:
                    log.info("pgfeed: %s", e)
                ceiling = min(self._backoff_max, self._backoff_min * 2 ** min(failures, 16))
                failures += 1
                delay = ceiling / 2 + random.random() * ceiling / 2

    async def _serve(self, ws: ClientConnection) -> int | None:
        """Subscribes everything on ``ws`` and dispatches its frames until it closes."""
        self.connections += 1
        out: asyncio.Queue[str] = asyncio.Queue()
        self._ws, self._out = ws, out
        writer = asyncio.create_task(self._write(ws, out), name="pgfeed-writer")
        try:
            for sub in list(self._subs.values()):
                sub._disconnected()
                self._subscribe(sub)
            for v in list(self._views.values()):
                self._send(v._subscribe_frame())
            self._up.set()
            async for message in ws:
                if isinstance(message, str):
                    try:
                        self._dispatch(message)
                    except Exception:  # a frame this client cannot handle must not end the feed
                        log.exception("pgfeed: could not handle a frame: %.200s", message)
        except ConnectionClosed:
            pass
        finally:
            self._up.clear()
            self._ws = self._out = None
            writer.cancel()
            for sub in self._subs.values():
                sub._disconnected()
            for fut in self._pings.values():
                if not fut.done():
                    fut.set_exception(ConnectError("connection lost before the pong"))
            self._pings.clear()
            await ws.close()
        self.last_close_code = ws.close_code
        return ws.close_code

    async def _write(self, ws: ClientConnection, out: asyncio.Queue[str]) -> None:
        try:
            while True:
                await ws.send(await out.get())
        except ConnectionClosed:
            pass  # the reader sees it too and ends the connection

    def _send(self, frame: dict[str, Any]) -> None:
        """Sends on the current connection; dropped while disconnected (state is resent)."""
        if self._out is not None:
            self._out.put_nowait(json.dumps(frame))

    def _subscribe(self, sub: Subscription) -> None:
        if sub._state != NEW or self._subs.get(sub.topic) is not sub or self._out is None:
            return
        sub._state = SUBSCRIBING
        self._send(sub._subscribe_frame())

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.topic) is sub:
            del self._subs[sub.topic]

    def _forget_view(self, view: View) -> None:
        if self._views.get(view.name) is view:
            del self._views[view.name]

    def _end_all(self, error: PgfeedError | None) -> None:
        for sub in list(self._subs.values()):
            sub._end(error)
        for v in list(self._views.values()):
            v._fail(error or ClosedError("pgfeed: the feed is closed"))
        self._up.clear()
        self._ended.set()

    def _dispatch(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        view = frame.get("view")
        if isinstance(view, str) and kind in ("view", "view_delta", "refresh_needed", "unsubscribed"):
            v = self._views.get(view)
            if v is not None:
                v._receive(frame)
            return
        topic = frame.get("topic")
        sub = self._subs.get(topic) if isinstance(topic, str) else None
        if kind == "pong":
            fut = self._pings.get(str(frame.get("id")))
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "subscribed":
            if sub is not None:
                sub._subscribed(frame.get("cursor"))
        elif kind == "snapshot":
            if sub is not None and isinstance(frame.get("cursor"), str):
                sub._offer(Snapshot(sub.topic, frame["cursor"], frame.get("data")))
        elif kind == "refresh_needed":
            if sub is not None:
                sub._refresh_needed(str(frame.get("reason", "")))
        elif kind == "error":
            self._error_frame(frame)
        elif kind == "unsubscribed":
            pass
        elif sub is not None and "op" in frame and isinstance(frame.get("cursor"), str):
            sub._offer(Event.from_frame(frame))

    def _error_frame(self, frame: dict[str, Any]) -> None:
        code = str(frame.get("code", "error"))
        message = str(frame.get("message", ""))
        ref = frame.get("id")
        kind, _, name = ref.partition(":") if isinstance(ref, str) else ("", "", "")
        if kind == "s" and name in self._subs:
            self._subs[name]._refused(code, message)
        elif kind == "v" and name in self._views:
            self._views[name]._refused(code, message)
        elif kind == "r" and name in self._subs:
            # A refused refresh: the subscription still wants its snapshot.
            if code in ("rate_limited", "unavailable"):
                asyncio.get_running_loop().call_later(1.0 + random.random(), self._refresh_again, name)
            else:
                log.warning("pgfeed: refresh of %s refused: %s %s", name, code, message)
                self._subs[name]._need_snapshot = False
        else:
            log.warning("pgfeed: server error %s: %s", code, message)

    def _refresh_again(self, topic: str) -> None:
        sub = self._subs.get(topic)
        if sub is not None and sub._need_snapshot and sub._state == LIVE:
            self._send({"action": "refresh", "topic": topic, "id": f"r:{topic}"})


def connect(
    url: str = "http://127.0.0.1:8080",
    *,
    token: TokenSource = None,
    queue_size: int = 1000,
    backoff_min: float = 0.25,
    backoff_max: float = 10.0,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    max_message_size: int | None = None,
) -> Feed:
    """A :class:`Feed` for the server at ``url``; use it as ``async with connect(…) as feed``.

    ``queue_size``: items each subscription holds for its consumer (see "Bounded memory" above).
    ``ping_interval``: seconds between WebSocket pings (None: none); a peer that does not answer
    within as long is taken as gone and the feed reconnects. ``max_message_size``: bytes, None for
    no limit (the protocol sets none on rows).
    """
    return Feed(
        url,
        token=token,
        queue_size=queue_size,
        backoff_min=backoff_min,
        backoff_max=backoff_max,
        open_timeout=open_timeout,
        ping_interval=ping_interval,
        max_message_size=max_message_size,
    )


__all__ = ["Feed", "Subscription", "TokenSource", "connect", "PgfeedError"]
