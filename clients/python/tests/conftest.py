"""Fixtures: servers (see support.py for the harness)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from support import Server


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A server the tests that neither restart it nor need flags share."""
    s = Server().start()
    yield s
    s.cleanup()


@pytest.fixture
def make_server() -> Iterator[Any]:
    """A factory of servers of the test's own (``make_server(["--retention", "1s"])``)."""
    made: list[Server] = []

    def make(args: list[str] | None = None) -> Server:
        s = Server(args).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()
