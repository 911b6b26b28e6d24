"""Auth (README "Security: auth and limits"): a refused token, a member's limits, and a token that
expires under a live subscription and is refreshed through a function."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import pgfeed
from support import SECRET, Server, eventually, quiet, run, take, token


def later(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


@pytest.fixture(scope="module")
def secured() -> Iterator[Server]:
    s = Server(["--jwt-secret", SECRET]).start()
    yield s
    s.cleanup()


def test_no_token_a_forged_one_and_an_expired_one_are_refused_at_connect(secured: Server) -> None:
    async def scenario() -> None:
        for bad in [
            None,
            token({"role": "admin", "exp": later()}, secret="another secret that is long enough, really"),
            token({"role": "admin", "exp": int(time.time()) - 10}),
        ]:
            with pytest.raises(pgfeed.AuthError):
                async with pgfeed.connect(secured.url, token=bad):
                    pass

    run(scenario())


def test_a_member_may_follow_its_study_and_nothing_else(secured: Server) -> None:
    mine, other = secured.new_study(), secured.new_study()
    member = token({"role": "member", "studies": [mine], "exp": later()})

    async def scenario() -> None:
        async with pgfeed.connect(secured.url, token=member) as feed:
            room = await feed.subscribe(f"studies:{mine}")
            for topic in [f"studies:{other}", "studies", "messages"]:
                with pytest.raises(pgfeed.FeedError) as refused:
                    await feed.subscribe(topic)
                assert refused.value.code == "forbidden"
            with pytest.raises(pgfeed.FeedError) as refused:
                await feed.view("messages", filter={"study_id": f"eq.{other}"})
            assert refused.value.code == "forbidden"
            v = await feed.view("messages", filter={"study_id": f"eq.{mine}"})
            secured.post(other, "not for you")
            secured.post(mine, "for you")
            (event,) = await take(room, 1)
            assert isinstance(event, pgfeed.Event) and event.data["body"] == "for you"
            await eventually(lambda: [r["body"] for r in v.rows] == ["for you"], "the member's view")

    run(scenario())


def test_a_token_function_is_asked_again_when_the_token_expires_or_it_fails_and_nothing_is_lost(secured: Server) -> None:
    study = secured.new_study()
    issued: list[int] = []

    calls = 0

    async def fresh() -> str:
        # The first token lives 2 seconds; the server closes the socket then (4001). The token
        # service then fails once, and the client asks again.
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("token service briefly away")
        exp = later(2) if not issued else later()
        issued.append(exp)
        return token({"role": "member", "studies": [study], "exp": exp})

    async def scenario() -> None:
        async with pgfeed.connect(secured.url, token=fresh) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            secured.post(study, "one")
            got = await take(sub, 1)
            await eventually(lambda: feed.connections >= 2, "a reconnect after the token expired")
            assert feed.last_close_code == 4001
            assert len(issued) >= 2 and calls >= 3
            secured.post(study, "two")
            got += await take(sub, 1)
            assert [i.data["body"] for i in got if isinstance(i, pgfeed.Event)] == ["one", "two"]
            await quiet(sub)

    run(scenario())


def test_a_fixed_token_that_expires_ends_the_feed_with_auth_error(secured: Server) -> None:
    study = secured.new_study()
    short = token({"role": "admin", "exp": later(2)})

    async def scenario() -> None:
        async with pgfeed.connect(secured.url, token=short) as feed:
            sub = await feed.subscribe(f"studies:{study}")
            with pytest.raises(pgfeed.AuthError):
                async for _ in sub:
                    pass
            assert isinstance(feed.error, pgfeed.AuthError)

    run(scenario())
