"""``python bench/run.py`` is ``python -m bench`` (for running by path)."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.__main__ import main

    sys.exit(main())
