"""Command line of the ``sidecar`` command (also ``python -m sidecar``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import TextIO

import yaml

from sidecar import logs
from sidecar._inject_cli import add_inject_parser, run_inject
from sidecar.config import (
    CONFIG_PATH_VARIABLE,
    ConfigError,
    FieldError,
    SidecarConfig,
    load_config,
    resolve_config_path,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_LEVEL_VARIABLE = "MESHKIT_LOG_LEVEL"

_DESCRIPTION = """\
meshkit sidecar: a gRPC proxy next to your app.

  outbound  your app calls 127.0.0.1:15001; each call is routed by its /package.Service/Method
            path to a cluster (resolver + load balancer + retries) and sent to a healthy endpoint
  inbound   peers call this pod (optionally mTLS + token auth); calls go to your local app
  admin     HTTP /metrics /live /ready /clusters /config
  inject    add the sidecar to Kubernetes workloads (sidecar inject --help)

The config is one YAML file, checked in full before anything starts. Every field, its
default and its meaning: python -m pydoc sidecar.config"""

_EPILOG = f"""\
minimal config:
  outbound: {{listen: 127.0.0.1:15001, routes: [{{prefix: /, cluster: backend}}]}}
  clusters: {{backend: {{target: static:///127.0.0.1:10000}}}}
  admin: {{listen: 127.0.0.1:9901}}

environment:
  {CONFIG_PATH_VARIABLE}=FILE         the config file when --config is not given
  MESHKIT_<PATH>=VALUE        override one field: the path with "__" between levels,
                              case-insensitive, the value parsed as YAML; for example
                              MESHKIT_ADMIN__LISTEN=127.0.0.1:9902
                              MESHKIT_CLUSTERS__BACKEND__RETRY__MAX_ATTEMPTS=4
                              MESHKIT_LOG_LEVEL=debug

exit status:
  0  ok (validate: the config is valid; run: drained and stopped cleanly)
  1  runtime failure (for example a port already in use)
  2  config error or bad command line; one "config error: FIELD: problem" line each

example:
  sidecar validate --config sidecar.yaml
  sidecar run --config sidecar.yaml --log-level debug
  MESHKIT_LOG_FORMAT=json sidecar run --config sidecar.yaml"""


def _version() -> str:
    try:
        return metadata.version("meshkit")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sidecar (meshkit) {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            help=f"YAML config file (default: ${CONFIG_PATH_VARIABLE})",
        )
        return sub

    run = command("run", "run the sidecar until SIGTERM/SIGINT, then drain")
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="override the config's log_level (the same as MESHKIT_LOG_LEVEL, so it also"
        " holds for workers and across config reloads)",
    )
    validate = command("validate", "check a config (with MESHKIT_* overrides) and summarize it")
    validate.add_argument(
        "--skip-file-checks",
        action="store_true",
        help="do not require TLS/token files to exist here (checking a config for another host)",
    )
    validate.add_argument(
        "--print-config",
        action="store_true",
        help="also print the effective config as YAML, secrets redacted",
    )
    demo = commands.add_parser(
        "demo",
        help="show meshkit at work on loopback (about 15 s), then exit",
        description="Round robin, DNS scale-up against grpcio's own resolver, and the sidecar "
        "process, all on 127.0.0.x; prints a report. Needs no config.",
    )
    demo.add_argument("--quick", action="store_true", help="shorter runs (about 7 s)")
    add_inject_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 runtime failure, 2 config)."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from sidecar import demo  # lazily: the other commands never need it

        return demo.main(args)
    if args.command == "inject":
        return run_inject(args)
    if args.command == "run" and args.log_level is not None:
        # Through the environment, not the loaded config: config reloads and worker processes
        # read the config again, and must keep the level asked for here.
        os.environ[LOG_LEVEL_VARIABLE] = args.log_level
    try:
        path = resolve_config_path(args.config)
        config = load_config(path, check_files=not getattr(args, "skip_file_checks", False))
    except ConfigError as exc:
        for error in exc.errors:
            print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings():
        print(f"config warning: {warning}", file=sys.stderr)
    envoy_problems = _envoy_problems(config)
    if config.data_plane == "envoy" and envoy_problems:
        for problem in envoy_problems:
            print(f"config error: {problem} (data_plane: envoy)", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "validate":
        _print_summary(config, path, sys.stdout)
        _print_plane(config, envoy_problems, sys.stdout)
        if args.print_config:
            yaml.safe_dump(config.to_dict(redact=True), sys.stdout, sort_keys=False)
        return EXIT_OK
    return _run(config, path)


def _run(config: SidecarConfig, path: str) -> int:
    logs.configure(config.log_level, config.log_format)
    from sidecar import app  # lazily: validate needs none of the data plane's imports

    try:
        return app.run(config, config_path=path)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _envoy_problems(config: SidecarConfig) -> list[FieldError]:
    """Settings the Envoy plane cannot express (none when the Python plane is pinned)."""
    if config.data_plane == "python":
        return []
    from sidecar.envoy.translate import unsupported

    return unsupported(config)


def _print_plane(config: SidecarConfig, problems: list[FieldError], out: TextIO) -> None:
    """Which data plane ``run`` would pick on this machine, and why."""
    from sidecar.dataplane import StartError, choose

    try:
        choice = choose(config)
    except StartError as exc:
        print(f"  data plane: cannot run here: {exc}", file=out)
        return
    print(f"  data plane {choice.name}: {choice.reason}", file=out)
    if choice.name == "envoy" or config.data_plane is not None:
        return  # on Envoy nothing is left out; a pinned python plane does not care
    for problem in problems:  # the fallback's reason, one line each
        print(f"  not expressible on the Envoy plane: {problem}", file=out)


def _print_summary(config: SidecarConfig, path: str, out: TextIO) -> None:
    print(f"config OK: {path}", file=out)
    print(f"  admin     {config.admin.listen}", file=out)
    if config.outbound is not None:
        print(f"  outbound  {config.outbound.listen}", file=out)
        for route in config.outbound.routes:
            timeout = f" (default deadline {route.timeout})" if route.timeout is not None else ""
            print(f"            {route.prefix} -> {route.cluster}{timeout}", file=out)
    if config.inbound is not None:
        inbound = config.inbound
        extras = []
        if inbound.tls is not None:
            extras.append("mTLS" if inbound.tls.require_client_cert else "TLS")
        if inbound.auth is not None:
            extras.append("token auth")
        if inbound.app_health.enabled:
            extras.append("app health checked")
        suffix = f" ({', '.join(extras)})" if extras else ""
        print(f"  inbound   {inbound.listen} -> app {inbound.app}{suffix}", file=out)
    for name, cluster in config.clusters.items():
        features = [cluster.lb_policy]
        if cluster.retry is not None:
            features.append(f"retry x{cluster.retry.max_attempts}")
        if cluster.health_check is not None:
            features.append("health checked")
        if cluster.outlier_detection is not None:
            features.append("outlier detection")
        if cluster.tls is not None:
            features.append("TLS")
        print(f"  cluster   {name}: {cluster.target} ({', '.join(features)})", file=out)
    print(f"  workers   {config.workers}, log level {config.log_level}", file=out)


if __name__ == "__main__":
    sys.exit(main())
