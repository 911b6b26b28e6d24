"""A consumer slower than the feed, with a queue too big to pause it: the server cuts the
connection off as a slow consumer (4008), and the client reconnects and resumes from its cursor,
losing nothing and repeating nothing (PROTOCOL §5)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request

import pgfeed
from support import PATIENCE, Server, quiet, run

ROWS = 30_000  # one commit of 30,000 events: far more than the server lets a connection lag (4096)


def slow_consumer_closes(server: Server) -> int:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=PATIENCE) as r:
        text = r.read().decode()
    return sum(int(float(n)) for n in re.findall(r"^pgfeed_slow_consumer_closes_total\S* (\S+)$", text, re.M))


def test_a_client_cut_off_as_a_slow_consumer_resumes_and_gets_every_event_once(make_server) -> None:
    server: Server = make_server()
    study = server.new_study()
    cut = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not cut.is_set():
            if slow_consumer_closes(server) > 0:
                cut.set()
            time.sleep(0.1)

    async def scenario() -> None:
        # A queue that never fills, so the client itself never pauses the topic.
        async with pgfeed.connect(server.url, queue_size=2 * ROWS) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            writer = asyncio.create_task(
                server.apsql(
                    "insert into messages (study_id, author, body) "
                    f"select {study}, 'w', 'm' || i from generate_series(1, {ROWS}) i"
                )
            )
            bodies = []
            deadline = time.monotonic() + 4 * PATIENCE
            async for item in sub:
                assert isinstance(item, pgfeed.Event)
                bodies.append(item.data["body"])
                if not cut.is_set():
                    # Synchronous work that holds the event loop: the socket is read slowly.
                    time.sleep(0.001)
                if len(bodies) == ROWS:
                    break
                assert time.monotonic() < deadline, f"{len(bodies)} events only"
            await writer
            assert cut.is_set(), "the server did not cut the slow consumer off"
            assert bodies == [f"m{i}" for i in range(1, ROWS + 1)]
            await quiet(sub)
            assert feed.connections == 2 and feed.last_close_code == 4008

    threading.Thread(target=watch, daemon=True).start()
    try:
        run(scenario(), timeout=300)
    finally:
        done.set()
