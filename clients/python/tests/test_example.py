"""The README's script (examples/study_messages.py) run as a user runs it: it prints each new
message once, across a server restart and across a restart of its own (with its cursor file)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from support import PATIENCE, Server

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "study_messages.py"


class Script:
    def __init__(self, server: Server, study: int, cursor_file: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(study), "--cursor-file", cursor_file],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PGFEED_URL": server.url},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.started = threading.Event()
        self.errors: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        assert self.started.wait(PATIENCE), f"the script did not start: {self.errors}"

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)
            if line.startswith("following study"):
                self.started.set()

    def bodies(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            try:
                out.append(self.lines.get(timeout=PATIENCE).split(": ", 1)[1])
            except queue.Empty:
                raise AssertionError(f"the script printed {out} only; stderr: {self.errors}") from None
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(PATIENCE)


def test_the_study_messages_script_prints_each_message_once_across_restarts(make_server, tmp_path: Path) -> None:
    server: Server = make_server()
    study = server.new_study()
    cursor_file = str(tmp_path / "cursor")

    script = Script(server, study, cursor_file)
    server.post(study, "one", author="ana")
    server.post(study, "two", author="bo")
    assert script.bodies(2) == ["one", "two"]
    server.restart()
    server.post(study, "three")
    assert script.bodies(1) == ["three"]
    assert script.stop() == 0
    assert script.lines.empty()

    server.post(study, "while the script was stopped")
    script = Script(server, study, cursor_file)
    server.post(study, "five")
    assert script.bodies(2) == ["while the script was stopped", "five"]
    assert script.stop() == 0
    assert script.lines.empty()
