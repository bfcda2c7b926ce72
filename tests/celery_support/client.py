"""`python client.py URL`: one GET with requests; prints the response body. No tracing code."""

from __future__ import annotations

import sys

import requests

response = requests.get(sys.argv[1], timeout=30)
response.raise_for_status()
print(response.text.strip())
