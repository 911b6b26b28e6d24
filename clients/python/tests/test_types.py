"""The package is typed (py.typed) and passes mypy --strict, with the example that uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_and_the_example_pass_mypy_strict() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "src/pgfeed", "examples/study_messages.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (ROOT / "src" / "pgfeed" / "py.typed").exists()
