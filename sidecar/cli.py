"""Command line entry point of the ``sidecar`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the sidecar command line."""
    parser = argparse.ArgumentParser(prog="sidecar", description="meshkit sidecar")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
