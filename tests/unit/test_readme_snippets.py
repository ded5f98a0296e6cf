"""The README's Python snippets run as written (each in a fresh interpreter)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
#: Snippets that need nothing running (channels connect lazily; OTLP export is off the call
#: path), picked by what they show.
RUNNABLE = [block for block in BLOCKS if "tracer_provider_from_settings" in block]


def test_the_telemetry_snippet_is_found() -> None:
    assert len(RUNNABLE) == 1


@pytest.mark.parametrize("code", RUNNABLE)
def test_snippet_runs(code: str) -> None:
    # closing what the snippet opened keeps the interpreter's exit quick and quiet
    epilogue = "\nprovider.shutdown()\n"
    done = subprocess.run(
        [sys.executable, "-c", code + epilogue],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
