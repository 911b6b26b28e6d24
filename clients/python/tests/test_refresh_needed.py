"""A cursor older than the server's retention: the subscription says so (RefreshNeeded), then
starts over from a snapshot (snapshot=True) or from now."""

from __future__ import annotations

import pgfeed
from support import Server, eventually, quiet, run, take


def test_an_expired_cursor_yields_refresh_needed_then_a_snapshot_or_live_events(make_server) -> None:
    # Retention runs every second with this setting.
    server: Server = make_server(["--retention", "1s"])
    study = server.new_study()

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            server.post(study, "one")
            (first,) = await take(sub, 1)
            assert isinstance(first, pgfeed.Event)
        server.post(study, "two")
        await eventually(lambda: server.psql("select count(*) from pgfeed.commits") == "0", "retention pruned")

        async with pgfeed.connect(server.url) as feed:
            with_snapshot = feed.subscribe(f"studies:{study}", since=first.cursor, snapshot=True)
            refresh, snap = await take(with_snapshot, 2)
            assert isinstance(refresh, pgfeed.RefreshNeeded)
            assert (refresh.topic, refresh.reason) == (f"studies:{study}", "cursor_expired")
            assert isinstance(snap, pgfeed.Snapshot)
            assert [m["body"] for m in snap.data["messages"]] == ["one", "two"]
            server.post(study, "three")
            (three,) = await take(with_snapshot, 1)
            assert isinstance(three, pgfeed.Event) and three.data["body"] == "three"
            await quiet(with_snapshot)

        async with pgfeed.connect(server.url) as feed:
            live = feed.subscribe(f"studies:{study}", since=first.cursor)
            (refresh,) = await take(live, 1)
            assert isinstance(refresh, pgfeed.RefreshNeeded)
            await live  # subscribed again, from now
            server.post(study, "four")
            (four,) = await take(live, 1)
            assert isinstance(four, pgfeed.Event) and four.data["body"] == "four"

    run(scenario())
