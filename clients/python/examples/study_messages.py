"""A back-office task: print every new message of one study as it is posted, whoever posts it.

    PGFEED_URL=http://127.0.0.1:8080 python3 study_messages.py 42 [--cursor-file study-42.cursor]

It survives server restarts and network drops: the feed reconnects by itself and resumes from the
last event's cursor, so no message is missed or printed twice. With ``--cursor-file`` the task also
resumes where it stopped across its own restarts (run by cron or systemd). ``PGFEED_TOKEN`` is
the JWT when the server has a secret. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import pgfeed


async def follow(study: int, url: str, token: str | None, cursor_file: str | None) -> None:
    since = None
    if cursor_file and os.path.exists(cursor_file):
        with open(cursor_file) as f:
            since = f.read().strip() or None
    async with pgfeed.connect(url, token=token) as feed:
        messages = await feed.subscribe(f"studies:{study}", since=since)
        print(f"following study {study} on {url}", file=sys.stderr, flush=True)
        async for item in messages:
            if isinstance(item, pgfeed.RefreshNeeded):
                print(f"messages were missed ({item.reason}); going on from now", file=sys.stderr, flush=True)
            elif isinstance(item, pgfeed.Event):
                if item.type == "message_created":
                    m = item.data
                    print(f"{m['created_at']}  {m['author']}: {m['body']}", flush=True)
                if cursor_file:
                    with open(cursor_file + ".tmp", "w") as f:
                        f.write(item.cursor)
                    os.replace(cursor_file + ".tmp", cursor_file)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=int)
    p.add_argument("--url", default=os.environ.get("PGFEED_URL", "http://127.0.0.1:8080"))
    p.add_argument("--cursor-file", help="keep the last cursor here, to resume after a restart of this task")
    args = p.parse_args()
    try:
        asyncio.run(follow(args.study, args.url, os.environ.get("PGFEED_TOKEN"), args.cursor_file))
    except KeyboardInterrupt:
        pass
    except pgfeed.PgfeedError as e:
        sys.exit(f"study_messages: {e}")


if __name__ == "__main__":
    main()
