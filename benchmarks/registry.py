"""The registry at scale: ResolveRoute latency and invalidation propagation. Same as `cag bench registry`."""

from __future__ import annotations

import sys

from cag.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "registry", *sys.argv[1:]]))
