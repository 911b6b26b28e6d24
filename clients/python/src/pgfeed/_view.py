"""Live views (PROTOCOL §9): a window onto one table whose ``rows`` this module keeps exact.

A ``view`` frame replaces the rows; a ``view_delta`` applies its ops in order (``from`` is a row's
index before an op, ``to`` its index after it). After a reconnect the feed subscribes the view
again with its last cursor as ``since``, and the server answers with the deltas since or a fresh
``view``: either way ``rows`` is what PostgreSQL's SELECT returns as of ``cursor``. A delta that
does not fit the rows (which the contract rules out) makes the view ask for a fresh window rather
than go on wrong, as ``web/client.js`` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ._types import ClosedError, FeedError, PgfeedError, Row, is_after

log = logging.getLogger("pgfeed")


@dataclass(frozen=True, slots=True)
class ViewChange:
    """What changed, told after the view's ``rows`` were updated.

    ``type`` is ``view`` when ``rows`` is a whole new window (the first one, a resume the server
    answered with a fresh window, or changes a slow reader was not told one by one), else
    ``delta``: ``ops`` (``enter``/``exit``/``update`` dicts, PROTOCOL §9) were just applied.
    """

    type: Literal["view", "delta"]
    ops: list[dict[str, Any]] | None
    cursor: str | None
    count: int | None
    next: str | None


class _Sender(Protocol):
    def _send(self, frame: dict[str, Any]) -> None: ...

    def _forget_view(self, view: View) -> None: ...


class View:
    """A live window: the rows matching ``filter``, in ``order``, at most ``limit`` of them.

    Read ``rows`` (a list of row dicts, in order), ``count`` (rows matching across all pages, when
    asked for), ``next`` (the ``after`` token of the next page, or None), ``cursor`` (the last
    frame applied). Open one with :meth:`pgfeed.Feed.view`.
    """

    def __init__(
        self,
        feed: _Sender,
        name: str,
        topic: str,
        *,
        filter: Mapping[str, str] | None,
        order: str | None,
        limit: int | None,
        after: str | None,
        count: bool,
        changes: int,
    ) -> None:
        self._feed = feed
        self.name = name
        self.topic = topic
        self.filter = dict(filter or {})
        self.order = order
        self.limit = limit
        self.after = after
        self.want_count = count
        self.rows: list[Row] = []
        self.count: int | None = None
        self.next: str | None = None
        self.cursor: str | None = None
        self.loaded = False
        self.error: PgfeedError | None = None
        """The server's refusal of the view, or what ended the feed."""
        self.closed = False
        # Until this view's first `view` frame there are no rows a delta could apply to.
        self._awaiting = True
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Changes not yet taken by `changes()`. Bounded: when full they collapse into one "view"
        # change (re-read `rows`), since `rows` is current whatever the reader misses.
        self._changes: deque[ViewChange] = deque()
        self._changes_max = max(1, changes)
        self._changed = asyncio.Event()
        self._retry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<pgfeed.View {self.name} {self.topic} rows={len(self.rows)} cursor={self.cursor}>"

    # ---- what the feed calls --------------------------------------------------------------

    def _subscribe_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "action": "subscribe",
            "id": f"v:{self.name}",
            "view": self.name,
            "topic": self.topic,
        }
        if self.filter:
            frame["filter"] = self.filter
        if self.order is not None:
            frame["order"] = self.order
        if self.limit is not None:
            frame["limit"] = self.limit
        if self.after is not None:
            frame["after"] = self.after
        if self.want_count:
            frame["count"] = True
        if not self._awaiting and self.cursor is not None:
            frame["since"] = self.cursor
        return frame

    def _receive(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        kind = frame.get("type")
        if kind == "view":
            self._replace(frame)
        elif kind == "view_delta":
            self._apply(frame)
        elif kind == "refresh_needed":
            self._expire()

    def _refused(self, code: str, message: str) -> None:
        if code in ("rate_limited", "unavailable"):
            # Budgeted or briefly unavailable: ask again in a moment.
            loop = asyncio.get_running_loop()
            if self._retry is not None:
                self._retry.cancel()
            self._retry = loop.call_later(1.0, self._resend)
            return
        self.error = FeedError(code, message)
        log.warning("pgfeed: view %s refused: %s %s", self.name, code, message)
        if not self._ready.done():
            self._ready.set_exception(self.error)
            self._ready.exception()  # retrieved: nobody may be awaiting it
        self._end()

    def _fail(self, error: PgfeedError) -> None:
        if not isinstance(error, ClosedError):
            self.error = error
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()
        self._end()

    def _end(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._feed._forget_view(self)
        self._changed.set()

    # ---- frames ---------------------------------------------------------------------------

    def _replace(self, frame: dict[str, Any]) -> None:
        rows = frame.get("rows")
        self.rows = list(rows) if isinstance(rows, list) else []
        self.count = frame.get("count")
        self.next = frame.get("next")
        self.cursor = frame.get("cursor")
        self._awaiting = False
        self.loaded = True
        self.error = None
        if not self._ready.done():
            self._ready.set_result(None)
        self._tell(ViewChange("view", None, self.cursor, self.count, self.next))

    def _apply(self, frame: dict[str, Any]) -> None:
        cursor = frame.get("cursor")
        if self._awaiting or not isinstance(cursor, str):
            return
        ops = frame.get("ops")
        if ops == [] and cursor == self.cursor:
            # A count slower than the server waits for comes after the rows, as a delta of no
            # ops at the window's own cursor (README "Live views").
            pass
        elif not is_after(cursor, self.cursor):
            return  # had it: a resume may overlap what came before the disconnect
        if not isinstance(ops, list):
            return self._expire()
        rows = self.rows
        for op in ops:
            if not self._apply_op(rows, op):
                log.warning("pgfeed: view %s out of step at %s (%r)", self.name, cursor, op)
                return self._expire()
        if "count" in frame:
            self.count = frame["count"]
        if "next" in frame:
            self.next = frame["next"]
        self.cursor = cursor
        self._tell(ViewChange("delta", ops, self.cursor, self.count, self.next))

    def _apply_op(self, rows: list[Row], op: Any) -> bool:
        if not isinstance(op, dict):
            return False
        kind = op.get("op")
        if kind in ("exit", "update"):
            i = op.get("from")
            if not isinstance(i, int) or not self._at(rows, i, op.get("key")):
                return False
            del rows[i]
        if kind in ("enter", "update"):
            j = op.get("to")
            row = op.get("row")
            if not isinstance(j, int) or not 0 <= j <= len(rows) or not isinstance(row, dict):
                return False
            rows.insert(j, row)
        return kind in ("exit", "enter", "update")

    @staticmethod
    def _at(rows: list[Row], i: int, key: Any) -> bool:
        """Whether rows[i] exists and is the row with primary key ``key`` (where it shows an id)."""
        if not 0 <= i < len(rows):
            return False
        row = rows[i]
        return key is None or "id" not in row or str(row["id"]) == str(key)

    def _expire(self) -> None:
        """The cursor cannot be resumed from (or the rows are out of step): a fresh window."""
        self._awaiting = True
        self.cursor = None
        self._resend()

    def _resend(self) -> None:
        self._retry = None
        if not self.closed:
            self._feed._send(self._subscribe_frame())

    def _tell(self, change: ViewChange) -> None:
        if len(self._changes) >= self._changes_max:
            self._changes.clear()
            change = ViewChange("view", None, self.cursor, self.count, self.next)
        self._changes.append(change)
        self._changed.set()

    # ---- the application's side -----------------------------------------------------------

    async def wait_loaded(self) -> View:
        """Waits for the first window; raises :class:`FeedError` if the server refused the view."""
        await self._ready
        return self

    async def changes(self) -> AsyncIterator[ViewChange]:
        """Each change after it was applied to ``rows``, in order; ends when the view closes.

        One reader at a time. A reader that falls more than the feed's ``queue_size`` changes
        behind gets one ``view`` change in their place (``rows`` is current either way).
        """
        while True:
            while self._changes:
                yield self._changes.popleft()
            if self.closed:
                if self.error is not None:
                    raise self.error
                return
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        """Unsubscribes; ``rows`` keep their last state."""
        if self.closed:
            return
        self._feed._send({"action": "unsubscribe", "view": self.name})
        if not self._ready.done():
            self._ready.set_exception(ClosedError(f"view {self.name} closed"))
            self._ready.exception()
        self._end()
