"""The start of the chain: one `requests.get` to service A, whose answer is printed as JSON.

    logfire-run python client.py            (A at A_URL, default http://127.0.0.1:8001)
    logfire-run python client.py /boom      (any path of A)

Run it after service B and service A are up (see README.md in this folder).
"""

from __future__ import annotations

import json
import os
import sys

import requests

A_URL = os.environ.get("A_URL", "http://127.0.0.1:8001")

response = requests.get(f"{A_URL}{sys.argv[1] if len(sys.argv) > 1 else '/chain'}", timeout=30)
print(json.dumps({"status": response.status_code, "body": response.json() if response.ok else None}))
