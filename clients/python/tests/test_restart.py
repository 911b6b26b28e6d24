"""A server restart under a live subscription: the client reconnects by itself and resumes from
its cursor, with no event lost or repeated."""

from __future__ import annotations

import asyncio

import pytest

import pgfeed
from support import Server, quiet, run, take


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_after_a_server_restart_every_committed_message_arrives_once_in_order(make_server, how: str) -> None:
    server: Server = make_server()
    study = server.new_study()
    port = server.port

    async def restart() -> None:
        if how == "sigterm":
            await asyncio.to_thread(server.stop)
        else:
            server.kill()
        await asyncio.to_thread(server.start, port)

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            # A writer committing one message at a time while the server goes down: some are
            # delivered before, some committed but not yet delivered, and it fails when the
            # database stops.
            writes = "".join(
                f"insert into messages (study_id, author, body) values ({study}, 'w', 'a{i}');" for i in range(300)
            )
            writer = asyncio.create_task(server.apsql(writes))
            got = await take(sub, 5)
            await restart()
            try:
                await writer
            except RuntimeError:
                pass  # psql lost its database mid-way: what it committed is the truth
            for i in range(20):
                await server.apsql(f"insert into messages (study_id, author, body) values ({study}, 'w', 'b{i}')")
            expected = (await server.apsql(f"select body from messages where study_id = {study} order by id")).split()
            got += await take(sub, len(expected) - len(got))
            assert [i.data["body"] for i in got if isinstance(i, pgfeed.Event)] == expected
            await quiet(sub)
            assert feed.connections >= 2
            if how == "sigterm":
                assert feed.last_close_code == 1001

    run(scenario())
