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
    # The token function runs before every connection: holding it keeps the client away while
    # the test commits messages it has not seen (this server has no secret, so no token is sent).
    may_connect = asyncio.Event()

    async def gate() -> None:
        await may_connect.wait()

    async def restart() -> None:
        if how == "sigterm":
            await asyncio.to_thread(server.stop)
        else:
            server.kill()
        await asyncio.to_thread(server.start, port)

    async def scenario() -> None:
        may_connect.set()
        async with pgfeed.connect(server.url, token=gate) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            # A second subscription on the same connection, resumed with its own cursor.
            table = await feed.subscribe("messages")
            # A writer committing one message at a time while the server goes down: some are
            # delivered before, some committed but not delivered, and it fails when the
            # database stops.
            writes = "".join(
                f"insert into messages (study_id, author, body) values ({study}, 'w', 'a{i}');\n" for i in range(300)
            )
            writer = asyncio.create_task(server.apsql(writes))
            got = await take(sub, 5)
            may_connect.clear()
            before = len(got) + sub._queue.qsize()
            await restart()
            try:
                await writer
            except RuntimeError as e:
                # psql lost its database mid-way: what it committed is the truth.
                print(f"the writer stopped: {str(e).splitlines()[0]}")
            # Committed while the client is certainly away.
            for i in range(20):
                await server.apsql(f"insert into messages (study_id, author, body) values ({study}, 'w', 'b{i}')")
            assert not feed.connected
            may_connect.set()
            expected = (await server.apsql(f"select body from messages where study_id = {study} order by id")).split()
            print(f"{len(expected) - 20} of 300 committed by the writer, {before} received before the restart")
            got += await take(sub, len(expected) - len(got))
            assert [i.data["body"] for i in got if isinstance(i, pgfeed.Event)] == expected
            await quiet(sub)
            # The study's messages are all the messages of this server.
            all_messages = await take(table, len(expected))
            assert [i.data["body"] for i in all_messages if isinstance(i, pgfeed.Event)] == expected
            await quiet(table)
            assert feed.connections == 2
            if how == "sigterm":
                assert feed.last_close_code == 1001

    run(scenario())
