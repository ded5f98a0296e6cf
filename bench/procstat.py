"""CPU time and resident memory of a process tree, read from /proc (Linux).

A proxy may be one process with threads (Envoy) or a parent with worker processes (a sidecar using
SO_REUSEPORT workers), so every figure is summed over the process and its live descendants.
``utime + stime`` of /proc/<pid>/stat covers all threads of a process; the ``cutime`` fields only
count children that have exited and been reaped, so live workers are walked instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def parse_stat(text: str) -> tuple[int, int, int]:
    """``(ppid, utime, stime)`` in clock ticks from a /proc/<pid>/stat line.

    The command name (field 2) is parenthesised and may contain spaces or parentheses, so the
    fields are counted from the last ``)``.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]), int(rest[12])


def parse_vmrss_kib(status_text: str) -> int:
    """VmRSS in KiB from /proc/<pid>/status (0 for kernel threads and zombies)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def descendants(roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        text = _read(f"/proc/{entry}/stat")
        if text is None:
            continue
        ppid = parse_stat(text)[0]
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [pid for pid in roots if os.path.exists(f"/proc/{pid}")]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds consumed so far by the trees under ``roots``."""
    ticks = 0
    for pid in descendants(roots):
        text = _read(f"/proc/{pid}/stat")
        if text is not None:
            _, utime, stime = parse_stat(text)
            ticks += utime + stime
    return ticks / CLOCK_TICKS


def rss_kib(roots: Iterable[int]) -> int:
    """Summed VmRSS (KiB) of the trees under ``roots`` (shared pages counted in each process)."""
    total = 0
    for pid in descendants(roots):
        text = _read(f"/proc/{pid}/status")
        if text is not None:
            total += parse_vmrss_kib(text)
    return total


def parse_comm(stat_text: str) -> str:
    """The command name (field 2, without its parentheses) of a /proc/<pid>/stat line."""
    return stat_text[stat_text.index("(") + 1 : stat_text.rindex(")")]


def rss_by_command(roots: Iterable[int]) -> dict[str, int]:
    """VmRSS (KiB) of the trees under ``roots``, summed per command name (``envoy``,
    ``sidecar``...): what each member of a process tree holds."""
    out: dict[str, int] = {}
    for pid in descendants(roots):
        stat = _read(f"/proc/{pid}/stat")
        status = _read(f"/proc/{pid}/status")
        if stat is not None and status is not None:
            name = parse_comm(stat)
            out[name] = out.get(name, 0) + parse_vmrss_kib(status)
    return out


class RssSampler:
    """Samples the peak summed RSS of some process trees in a thread while a run is going."""

    def __init__(self, roots: list[int], interval_s: float = 0.25) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, rss_kib(self.roots))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssSampler:
        if self.roots:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
