"""pgfeed: an asyncio client for a pgfeed server (PostgreSQL as a live change feed).

::

    async with pgfeed.connect("http://127.0.0.1:8080", token=...) as feed:
        async for item in feed.subscribe("studies:42"):
            if isinstance(item, pgfeed.Event):
                print(item.type, item.data)

One WebSocket carries every subscription and view of a feed. Each subscription yields its
topic's events in commit order, each once, with no gap, across reconnects and server restarts
(the feed resumes each topic from its last cursor). See the pgfeed README, "Python client".
"""

from ._client import Feed, Subscription, TokenSource, connect
from ._types import (
    AuthError,
    ClosedError,
    ConnectError,
    Event,
    FeedError,
    Item,
    PgfeedError,
    RefreshNeeded,
    Row,
    Snapshot,
)
from ._view import View, ViewChange

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "ClosedError",
    "ConnectError",
    "Event",
    "Feed",
    "FeedError",
    "Item",
    "PgfeedError",
    "RefreshNeeded",
    "Row",
    "Snapshot",
    "Subscription",
    "TokenSource",
    "View",
    "ViewChange",
    "connect",
]
