"""``python -m moenet_core`` is ``moenet-agent``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
