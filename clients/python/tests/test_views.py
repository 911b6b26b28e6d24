"""Live views: the client's rows are PostgreSQL's own SELECT, after random writes by psql and
across a server restart."""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import pytest

import pgfeed
from support import PATIENCE, Server, eventually, run

TITLES = ["alpha", "Beta", "gamma", "delta", "Émile", "zeta", "eta"]
STATUSES = ["draft", "active", "closed"]


def random_writes(rng: random.Random, n: int, batch: int) -> str:
    """``n`` statements on studies, each its own commit: inserts, updates and deletes."""
    out = []
    for i in range(n):
        r = rng.random()
        title, status = rng.choice(TITLES), rng.choice(STATUSES)
        if r < 0.45:
            out.append(
                f"insert into studies (label, title, status) values ('r{batch}-{i}', '{title}', '{status}');"
            )
        elif r < 0.85:
            # An update of a random existing study (none, when there is none).
            out.append(
                f"update studies set status = '{status}', title = '{title}' "
                f"where id = (select id from studies order by random() limit 1);"
            )
        else:
            out.append("delete from studies where id = (select id from studies order by random() limit 1);")
    return "".join(out)


def select(server: Server, where: str, order: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    rows = server.psql(
        "set timezone = 'UTC';"
        f"select coalesce(json_agg(t), '[]') from (select * from studies where {where} order by {order} limit {limit}) t"
    )
    count = server.psql(f"select count(*) from studies where {where}")
    return json.loads(rows), int(count)


@pytest.mark.parametrize("seed", [int(os.environ.get("PGFEED_TEST_SEED", "0")) or random.randrange(1 << 30)])
def test_view_rows_equal_postgres_select_after_random_writes_and_a_restart(make_server, seed: int) -> None:
    server: Server = make_server()
    rng = random.Random(seed)
    print(f"seed {seed} (PGFEED_TEST_SEED={seed} repeats this run)")
    server.psql(random_writes(rng, 30, 0))

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            active = await feed.view(
                "studies", filter={"status": "eq.active"}, order="title.asc", limit=10, count=True
            )
            recent = await feed.view("studies", order="updated_at.desc", limit=5)
            changes: list[pgfeed.ViewChange] = []

            async def watch() -> None:
                async for change in active.changes():
                    changes.append(change)

            watcher = asyncio.create_task(watch())

            async def settles(round: str) -> None:
                want_active = select(server, "status = 'active'", 'title collate "C", id', 10)
                want_recent = select(server, "true", "updated_at desc, id", 5)
                await eventually(
                    lambda: (active.rows, active.count) == want_active and recent.rows == want_recent[0],
                    f"{round}: views equal to SELECT (seed {seed}); active={active.rows} want={want_active}",
                )

            await settles("first window")
            await server.apsql(random_writes(rng, 120, 1))
            await settles("after writes")
            await asyncio.to_thread(server.restart)
            await server.apsql(random_writes(rng, 60, 2))
            await settles("after a restart")
            assert feed.connections >= 2
            assert any(c.type == "delta" for c in changes)
            watcher.cancel()

    run(scenario())


def test_a_view_the_server_refuses_raises_its_error(server: Server) -> None:
    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            with pytest.raises(pgfeed.FeedError) as refused:
                await feed.view("studies", filter={"no_such_column": "eq.1"})
            assert refused.value.code == "bad_request"
            assert "no_such_column" in refused.value.message
            v = await asyncio.wait_for(feed.view("studies", limit=1), PATIENCE)
            assert v.loaded

    run(scenario())
