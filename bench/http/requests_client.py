"""Per-call cost of `requests.get` to a local HTTP server (a new connection per call, as plain `get` does).

python requests_client.py URL N        prints one JSON line (see measure.py)
"""

from __future__ import annotations

import sys

import requests
from measure import timed


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    for _ in range(50):
        requests.get(url, timeout=10)
    timed(count, lambda: requests.get(url, timeout=10).close())


if __name__ == "__main__":
    main()
