"""What the load is sent to: the backends directly, Envoy with 1 or 2 workers, the meshkit sidecar
on either data plane (the Python relay, or Envoy driven by the sidecar over xDS).

A target is started once per benchmark and reused across all runs; it exposes the addresses h2load
targets and the process ids whose CPU and memory are the proxy's cost (none for ``direct``): the
root of a process tree, every live descendant counted (sidecar workers, the sidecar's Envoy).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import envoy, procstat, sidecar
from bench.backend import Backend
from bench.procs import Child, ChildFailed, Children


class TargetUnavailable(RuntimeError):
    """The target cannot run here (missing binary, unmerged feature); reported, not fatal."""


@dataclass
class Target:
    """Base: a named set of endpoints and the proxy processes behind them."""

    name: str
    description: str = ""
    endpoints: list[str] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    rss_idle_kib: int | None = None
    #: Idle RSS per command name of the tree (``sidecar``, ``envoy``), KiB.
    rss_idle_parts: dict[str, int] = field(default_factory=dict)

    @property
    def proxy_pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def start(self, procs: Children, workdir: Path, backends: list[Backend]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Release what the target holds besides its processes (those ``Children`` stops)."""

    def check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise ChildFailed(f"{child.name} died; last output:\n{child.tail()}")

    def _settle_idle_rss(self) -> None:
        time.sleep(0.3)
        if self.children:
            self.rss_idle_parts = procstat.rss_by_command(self.proxy_pids)
            self.rss_idle_kib = sum(self.rss_idle_parts.values())


class Direct(Target):
    """No proxy: the limit. Both backends, each with its own h2load (see ``proxy.split_load``)."""

    def start(self, procs: Children, workdir: Path, backends: list[Backend]) -> None:
        self.description = "h2load straight at the backends (one h2load per backend)"
        self.endpoints = [b.address for b in backends]


class Envoy(Target):
    def __init__(self, name: str, concurrency: int, binary: str | None) -> None:
        super().__init__(name)
        self.concurrency = concurrency
        self.binary = binary
        self.admin = ""

    def start(self, procs: Children, workdir: Path, backends: list[Backend]) -> None:
        if self.binary is None:
            raise TargetUnavailable(envoy.INSTALL_HINT)
        self.description = f"Envoy {envoy.version(self.binary)} --concurrency {self.concurrency}"
        cfg = workdir / f"{self.name}.json"
        cfg.write_text(json.dumps(envoy.config([(b.host, b.port) for b in backends]), indent=1))
        admin_path = workdir / f"{self.name}.admin"
        child = procs.spawn(self.name, envoy.argv(self.binary, cfg, admin_path, self.concurrency))
        self.children = [child]
        try:
            self.admin, port = envoy.wait_for_listener(admin_path, 30.0, child.alive)
        except RuntimeError as exc:
            raise ChildFailed(f"{exc}; last output:\n{child.tail()}") from exc
        self.endpoints = [f"127.0.0.1:{port}"]
        self._settle_idle_rss()


class Meshkit(Target):
    """``sidecar run``; with ``workers > 1`` on a reserved port (see :mod:`bench.sidecar`).

    ``data_plane``: ``python`` (the grpc.aio relay; ``workers`` processes) or ``envoy`` (one
    Envoy child with ``--concurrency workers``). The config always names it, and a sidecar
    that reports another plane than asked is unavailable rather than measured as the wrong one.
    """

    def __init__(
        self,
        name: str,
        workers: int,
        extra_args: list[str],
        env: dict[str, str],
        cwd: str,
        *,
        kinds: bool = False,
        data_plane: str = "python",
    ) -> None:
        super().__init__(name)
        self.workers = workers
        self.kinds = kinds
        self.data_plane = data_plane
        self.extra_args = extra_args
        self.env = env
        self.cwd = cwd
        self._reserved: list[socket.socket] = []

    def start(self, procs: Children, workdir: Path, backends: list[Backend]) -> None:
        reason = sidecar.unavailable_reason(self.cwd)
        if reason:
            raise TargetUnavailable(reason)
        self.description = (
            f"meshkit sidecar, data_plane: {self.data_plane}, workers: {self.workers}"
        )
        if self.kinds:
            self.description += ", routes with RPC-kind hints"
        if self.extra_args:
            self.description += " " + " ".join(self.extra_args)
        ports = {"outbound_port": 0, "admin_port": 0}
        if self.workers > 1:
            self._reserved = [sidecar.reserve_port(), sidecar.reserve_port(shared=False)]
            ports = {
                "outbound_port": self._reserved[0].getsockname()[1],
                "admin_port": self._reserved[1].getsockname()[1],
            }
        cfg = workdir / f"{self.name}.yaml"
        doc = sidecar.config(
            [(b.host, b.port) for b in backends],
            workers=self.workers,
            kinds=self.kinds,
            data_plane=self.data_plane,
            **ports,
        )
        sidecar.write_config(cfg, doc)
        problem = sidecar.validate_error(cfg, self.cwd)
        if problem:
            raise TargetUnavailable(problem)
        child = procs.spawn(
            self.name,
            sidecar.argv(cfg, self.extra_args),
            env=sidecar.environment(self.env),
            cwd=self.cwd,
        )
        self.children = [child]
        deadline = time.monotonic() + 30.0
        while True:
            found = sidecar.parse_listening(child.output())
            if found:
                self.endpoints = [f"{found[0]}:{found[1]}"]
                break
            if ports["outbound_port"] and sidecar.accepts(ports["outbound_port"]):
                self.endpoints = [f"127.0.0.1:{ports['outbound_port']}"]
                break
            if not child.alive():
                last = child.tail(3).replace("\n", " | ")
                raise TargetUnavailable(f"sidecar exited {child.popen.returncode}: {last}")
            if time.monotonic() > deadline:
                raise ChildFailed(f"sidecar bound nothing within 30 s:\n{child.tail()}")
            time.sleep(0.05)
        self._check_plane(child)
        self._settle_idle_rss()

    def _check_plane(self, child: Child) -> None:
        plane = sidecar.parse_data_plane(child.output())
        if plane is None:  # printed before the listening lines; a reserved port may beat it
            child.wait_for(sidecar.DATA_PLANE.pattern, 10.0)
            plane = sidecar.parse_data_plane(child.output())
        if plane != self.data_plane:
            raise TargetUnavailable(f"asked for data_plane: {self.data_plane}, runs {plane}")
        if plane == "envoy":
            envoy_pids = [
                pid for pid in procstat.descendants(self.proxy_pids) if pid not in self.proxy_pids
            ]
            if not envoy_pids:
                raise ChildFailed(f"data_plane: envoy but no child process:\n{child.tail()}")

    def stop(self) -> None:
        for sock in self._reserved:
            sock.close()
        self._reserved = []
