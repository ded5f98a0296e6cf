"""Child processes of the harness: started in their own session, logged to files, always killed.

Every process the harness starts (backends, proxies, h2load, channel workers) goes through
:class:`Children`. Each child leads its own process group, so stopping it also stops whatever it
forked (sidecar workers); its stdout and stderr go to a log file, never to a pipe that nobody
drains, and "wait for the line that names the port" reads that file. :func:`install_signal_handlers`
turns SIGTERM/SIGHUP into ``SystemExit`` so the same ``finally`` that handles Ctrl-C and
exceptions runs; an ``atexit`` hook is the last net. Only a SIGKILL of the harness escapes; the
backends watch their parent and exit on their own then.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType


class ChildFailed(RuntimeError):
    """A child exited early or never printed what we waited for."""


@dataclass
class Child:
    """One started process and the file holding its output."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll the log until ``pattern`` matches; fail if the child exits or time runs out."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output())
            if match:
                return match
            if not self.alive():
                raise ChildFailed(
                    f"{self.name} exited with {self.popen.returncode} before printing "
                    f"{pattern!r}; last output:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"{self.name} printed no {pattern!r} within {timeout:.0f} s; "
                    f"last output:\n{self.tail()}"
                )
            time.sleep(0.02)


class Children:
    """Starts children and stops all of them (process group: SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._seq = 0
        atexit.register(self.stop_all)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Child:
        self._seq += 1
        log_path = self.log_dir / f"{self._seq:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child, grace: float = 3.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds."""
        if child.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.popen.wait(5.0)
        # Stragglers of the group (workers whose leader already exited).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind the harness like Ctrl-C does, so ``finally`` blocks run.

    SIGINT gets Python's ``KeyboardInterrupt`` handler explicitly: a shell starting the harness
    as a background job hands it SIGINT ignored, and Python then installs no handler.
    """

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
