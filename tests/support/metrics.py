"""Reading a service's Prometheus endpoint in tests: the exposition text, and one sample's value in it."""

from __future__ import annotations

import re
import urllib.request


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def sample(text: str, series: str) -> float:
    """The value of `series` (name and labels, as exposed) in the exposition text; 0 when it has none yet."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
