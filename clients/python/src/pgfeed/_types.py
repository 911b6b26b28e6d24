"""What a subscription yields, the errors this package raises, and cursor order.

The shapes are PROTOCOL §4 (events) and §5 (snapshot, refresh_needed, error frames) of the
pgfeed repository, as the README's "Subscribing: WebSocket `/ws`" section shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

Row = dict[str, Any]
"""A row as JSON: exactly the table's columns (README "Writing: any writer, any table")."""


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change (PROTOCOL §4).

    ``type`` is ``<table>_created|_updated|_deleted`` (``message_created`` …), ``op`` is
    ``insert|update|delete``, ``data`` the new row (for a delete, the row as it was).
    ``cursor`` is opaque: keep the last one to pass back as ``since`` in a later session.
    """

    type: str
    topic: str
    cursor: str
    table: str
    op: str
    id: Any
    data: Row
    committed_at: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    """The frame as the server sent it, for keys a later server adds."""

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Event:
        data = frame.get("data")
        return cls(
            type=str(frame.get("type", "")),
            topic=str(frame.get("topic", "")),
            cursor=str(frame.get("cursor", "")),
            table=str(frame.get("table", "")),
            op=str(frame.get("op", "")),
            id=frame.get("id"),
            data=data if isinstance(data, dict) else {},
            committed_at=str(frame.get("committed_at", "")),
            raw=frame,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The topic's whole state at ``cursor``; the events that follow it are those after it.

    ``data`` is the list of rows for a table topic, ``{"study":…,"messages":[…],"files":[…]}``
    for a study's room, the row itself for a row topic (PROTOCOL §5).
    """

    topic: str
    cursor: str
    data: Any
    type: Literal["snapshot"] = "snapshot"


@dataclass(frozen=True, slots=True)
class RefreshNeeded:
    """The server no longer holds the events after this subscription's cursor.

    ``reason`` is ``cursor_expired`` (older than the server's ``--retention``), ``cursor_unknown``
    (a cursor of another database) or ``log_diverged`` (a failover, PROTOCOL §11). Changes in
    between cannot be replayed: a subscription opened with ``snapshot=True`` gets a
    :class:`Snapshot` next; one without goes on with the changes committed from now on.
    """

    topic: str
    reason: str
    type: Literal["refresh_needed"] = "refresh_needed"


Item = Union[Event, Snapshot, RefreshNeeded]
"""What iterating a subscription yields."""


class PgfeedError(Exception):
    """Base class of this package's errors."""


class ConnectError(PgfeedError):
    """The server could not be reached (or answered the upgrade with an unexpected status)."""


class AuthError(PgfeedError):
    """The server refused the token (no token, a bad signature, or an expired one)."""


class FeedError(PgfeedError):
    """The server refused a request with an ``error`` frame (PROTOCOL §5).

    ``code`` is ``bad_request``, ``unknown_topic``, ``forbidden``, ``too_many_subscriptions``,
    ``too_large``, …; ``message`` says why.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ClosedError(PgfeedError):
    """The feed was closed (or failed for good) before the request could be answered."""


def _parse_cursor(cursor: str) -> tuple[str, int, int] | None:
    parts = cursor.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def is_after(cursor: str, known: str | None) -> bool:
    """Whether ``cursor`` comes after ``known`` in the log (True when they cannot be compared).

    Cursors are opaque to applications; this package is released with the server, so it may read
    them (``<epoch>-<seq>-<pos>``, as ``web/client.js`` does) to drop a frame it already has.
    """
    if known is None:
        return True
    a, b = _parse_cursor(cursor), _parse_cursor(known)
    if a is None or b is None or a[0] != b[0]:
        return True
    return (a[1], a[2]) > (b[1], b[2])
