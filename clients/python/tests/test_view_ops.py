"""How a view applies frames (PROTOCOL §9), without a server: ops in order, overlap after a
resume, a delta that does not fit, and a reader that falls behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pgfeed
from support import run


class Sent:
    """Stands in for the feed: records the frames a view sends."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.forgotten = False

    def _send(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def _forget_view(self, view: pgfeed.View) -> None:
        self.forgotten = True


def row(i: int) -> dict[str, Any]:
    return {"id": i, "title": f"t{i}"}


def new_view(sent: Sent, changes: int = 100) -> pgfeed.View:
    return pgfeed.View(
        sent, "v1", "studies", filter={"status": "eq.active"}, order="title", limit=3, after=None, count=True,
        changes=changes,
    )


def window(cursor: str, ids: list[int]) -> dict[str, Any]:
    return {"type": "view", "view": "v1", "cursor": cursor, "rows": [row(i) for i in ids], "count": len(ids), "next": None}


def test_ops_apply_in_order_with_from_before_and_to_after_each_op() -> None:
    async def scenario() -> None:
        sent = Sent()
        v = new_view(sent)
        v._receive(window("e-1-1", [1, 2, 3]))
        v._receive({"type": "view_delta", "view": "v1", "cursor": "e-2-1", "count": 4, "next": "tok", "ops": [
            {"op": "exit", "key": "3", "from": 2, "why": "overflow"},
            {"op": "enter", "key": "9", "to": 0, "row": row(9), "why": "insert"},
            {"op": "update", "key": "2", "from": 2, "to": 1, "row": {"id": 2, "title": "new"}},
        ]})
        assert [r["id"] for r in v.rows] == [9, 2, 1]
        assert v.rows[1]["title"] == "new"
        assert (v.count, v.next, v.cursor) == (4, "tok", "e-2-1")
        # A resume that overlaps: a delta already applied is dropped.
        v._receive({"type": "view_delta", "view": "v1", "cursor": "e-2-1", "ops": [
            {"op": "exit", "key": "9", "from": 0, "why": "delete"}]})
        assert [r["id"] for r in v.rows] == [9, 2, 1]
        kinds = []
        async for change in v.changes():
            kinds.append(change.type)
            if len(kinds) == 2:
                break
        assert kinds == ["view", "delta"]
        # Resubscribing (after a reconnect) resumes from the cursor.
        assert v._subscribe_frame()["since"] == "e-2-1"

    run(scenario())


def test_a_delta_that_does_not_fit_asks_for_a_fresh_window() -> None:
    async def scenario() -> None:
        sent = Sent()
        v = new_view(sent)
        v._receive(window("e-1-1", [1, 2, 3]))
        v._receive({"type": "view_delta", "view": "v1", "cursor": "e-2-1", "ops": [
            {"op": "exit", "key": "7", "from": 0, "why": "delete"}]})
        assert sent.frames[-1]["action"] == "subscribe" and "since" not in sent.frames[-1]
        # Deltas are ignored until the fresh window arrives.
        v._receive({"type": "view_delta", "view": "v1", "cursor": "e-3-1", "ops": [
            {"op": "exit", "key": "1", "from": 0, "why": "delete"}]})
        v._receive(window("e-3-1", [2, 3]))
        assert [r["id"] for r in v.rows] == [2, 3]
        assert v.cursor == "e-3-1"

    run(scenario())


def test_a_reader_that_falls_behind_gets_one_whole_window_change_instead() -> None:
    async def scenario() -> None:
        sent = Sent()
        v = new_view(sent, changes=4)
        v._receive(window("e-1-1", []))
        for i in range(10):
            v._receive({"type": "view_delta", "view": "v1", "cursor": f"e-{i + 2}-1", "ops": [
                {"op": "enter", "key": str(i), "to": 0, "row": row(i), "why": "insert"}]})
        assert len(v._changes) <= 4
        first = await asyncio.wait_for(v.changes().__anext__(), 1)
        assert first.type == "view"
        assert [r["id"] for r in v.rows] == list(reversed(range(10)))

    run(scenario())


def test_a_refused_view_raises_from_its_first_window() -> None:
    async def scenario() -> None:
        sent = Sent()
        v = new_view(sent)
        v._refused("bad_request", "unknown column nope")
        try:
            await v.wait_loaded()
        except pgfeed.FeedError as e:
            assert e.code == "bad_request"
        else:
            raise AssertionError("no error")
        assert sent.forgotten and v.closed

    run(scenario())


def test_a_count_that_comes_after_the_rows_is_taken_from_a_delta_of_no_ops_at_the_same_cursor() -> None:
    async def scenario() -> None:
        sent = Sent()
        v = new_view(sent)
        first = window("e-5-1", [1, 2])
        first["count"] = None
        v._receive(first)
        assert v.count is None
        v._receive({"type": "view_delta", "view": "v1", "cursor": "e-5-1", "ops": [], "count": 1234})
        assert (v.count, v.cursor, [r["id"] for r in v.rows]) == (1234, "e-5-1", [1, 2])
        # An older delta with ops is still dropped.
        v._receive({"type": "view_delta", "view": "v1", "cursor": "e-4-1", "ops": [
            {"op": "exit", "key": "1", "from": 0, "why": "delete"}]})
        assert [r["id"] for r in v.rows] == [1, 2]

    run(scenario())
