"""Time to first token: full prefill vs restoring a KV module. Same as `cag bench ttft`; see README.md here."""

from __future__ import annotations

import sys

from cag.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ttft", *sys.argv[1:]]))
