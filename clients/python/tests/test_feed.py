"""Subscriptions on one connection: live events, resume with since, snapshots, ping, refusals,
and a consumer that does not keep up."""

from __future__ import annotations

import pytest

import pgfeed
from support import Server, quiet, run, take


def bodies(items: list[pgfeed.Item]) -> list[str]:
    return [i.data["body"] for i in items if isinstance(i, pgfeed.Event) and i.table == "messages"]


def test_messages_written_by_psql_reach_a_study_subscriber(server: Server) -> None:
    study = server.new_study()

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            await server.apsql(
                f"insert into messages (study_id, author, body) values ({study}, 'ana', 'hi');"
                f"update messages set body = 'hi!' where study_id = {study};"
                f"delete from messages where study_id = {study}"
            )
            items = await take(sub, 3)
            assert [(i.type, i.op) for i in items if isinstance(i, pgfeed.Event)] == [
                ("message_created", "insert"),
                ("message_updated", "update"),
                ("message_deleted", "delete"),
            ]
            first = items[0]
            assert isinstance(first, pgfeed.Event)
            assert first.topic == f"studies:{study}"
            assert first.data["author"] == "ana" and first.data["study_id"] == study
            assert len({i.cursor for i in items if isinstance(i, pgfeed.Event)}) == 3

    run(scenario())


def test_several_subscriptions_share_one_connection_and_each_gets_its_topic(server: Server) -> None:
    a, b = server.new_study(), server.new_study()

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            room_a = await feed.subscribe(f"studies:{a}")
            room_b = await feed.subscribe(f"studies:{b}")
            server.post(a, "for a")
            server.post(b, "for b")
            server.post(a, "for a again")
            assert bodies(await take(room_a, 2)) == ["for a", "for a again"]
            assert bodies(await take(room_b, 1)) == ["for b"]
            assert feed.connections == 1
            with pytest.raises(ValueError):
                feed.subscribe(f"studies:{a}")

    run(scenario())


def test_since_resumes_with_exactly_the_events_missed_meanwhile(server: Server) -> None:
    study = server.new_study()

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            server.post(study, "one")
            (first,) = await take(sub, 1)
            assert isinstance(first, pgfeed.Event)
            cursor = first.cursor
        # Away: two messages are posted.
        server.post(study, "two")
        server.post(study, "three")
        async with pgfeed.connect(server.url) as feed:
            sub = await feed.subscribe(f"studies:{study}", since=cursor)
            server.post(study, "four")
            assert bodies(await take(sub, 3)) == ["two", "three", "four"]
            await quiet(sub)

    run(scenario())


def test_a_snapshot_comes_first_then_only_later_events_and_refresh_sends_another(server: Server) -> None:
    study = server.new_study()
    server.post(study, "before")

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            sub = feed.subscribe(f"studies:{study}", snapshot=True)
            (snap,) = await take(sub, 1)
            assert isinstance(snap, pgfeed.Snapshot)
            assert snap.data["study"]["id"] == study
            assert [m["body"] for m in snap.data["messages"]] == ["before"]
            assert snap.data["files"] == []
            server.post(study, "after")
            assert bodies(await take(sub, 1)) == ["after"]

            await feed.refresh(f"studies:{study}")
            (again,) = await take(sub, 1)
            assert isinstance(again, pgfeed.Snapshot)
            assert [m["body"] for m in again.data["messages"]] == ["before", "after"]
            server.post(study, "last")
            assert bodies(await take(sub, 1)) == ["last"]
            await quiet(sub)

    run(scenario())


def test_ping_is_answered(server: Server) -> None:
    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            rtt = await feed.ping()
            assert rtt >= 0

    run(scenario())


def test_a_refused_subscription_raises_the_servers_error_and_the_others_go_on(server: Server) -> None:
    study = server.new_study()

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            good = await feed.subscribe(f"studies:{study}")
            with pytest.raises(pgfeed.FeedError) as refused:
                await feed.subscribe("no_such_table")
            assert refused.value.code == "unknown_topic"
            server.post(study, "still here")
            assert bodies(await take(good, 1)) == ["still here"]

    run(scenario())


def test_a_consumer_that_does_not_read_pauses_its_topic_and_then_gets_everything_once(server: Server) -> None:
    study = server.new_study()
    other = server.new_study()
    n = 60

    async def scenario() -> None:
        async with pgfeed.connect(server.url, queue_size=8) as feed:
            slow = await feed.subscribe(f"studies:{study}")
            fast = await feed.subscribe(f"studies:{other}")
            # 60 commits, one message each, while nobody reads `slow`.
            await server.apsql(
                "".join(
                    f"insert into messages (study_id, author, body) values ({study}, 'w', 'm{i}');"
                    for i in range(n)
                )
            )
            # The other subscription on the same connection is not held up meanwhile.
            server.post(other, "meanwhile")
            assert bodies(await take(fast, 1)) == ["meanwhile"]
            assert slow._queue.qsize() <= 8
            got = bodies(await take(slow, n))
            assert got == [f"m{i}" for i in range(n)]
            assert slow.pauses >= 1
            await quiet(slow)
            assert feed.connections == 1

    run(scenario())


def test_snapshots_past_the_servers_budget_are_asked_again_until_each_topic_has_one(server: Server) -> None:
    # The server grants 5 snapshots at once per connection, then 1 a second, and refuses the rest
    # with `rate_limited` (README "Security: auth and limits").
    studies = [server.new_study() for _ in range(8)]

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            subs = [feed.subscribe(f"studies:{s}", snapshot=True) for s in studies]
            for s, sub in zip(studies, subs):
                (snap,) = await take(sub, 1)
                assert isinstance(snap, pgfeed.Snapshot) and snap.data["study"]["id"] == s
            server.post(studies[-1], "after the snapshots")
            assert bodies(await take(subs[-1], 1)) == ["after the snapshots"]

    run(scenario())


def test_closing_a_subscription_or_the_feed_ends_its_iteration(server: Server) -> None:
    study = server.new_study()

    async def scenario() -> None:
        async with pgfeed.connect(server.url) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            await sub.close()
            assert [i async for i in sub] == []
            # The topic may be subscribed again.
            again = await feed.subscribe(f"studies:{study}")
            server.post(study, "queued")
            (queued,) = await take(again, 1)
        assert [i async for i in again] == []
        with pytest.raises(pgfeed.ClosedError):
            feed.subscribe("studies")

    run(scenario())
