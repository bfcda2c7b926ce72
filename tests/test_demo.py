"""The README's first command: the demo system runs, stops cleanly and prints one connected trace."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

VIEWER = shutil.which("logfire-run-view", path=os.path.dirname(sys.executable)) or "logfire-run-view"


def processes_using(store: Path) -> list[int]:
    """Processes whose environment names this store: anything the demo left behind."""
    marker = f"LOGFIRE_STORE={store}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_demo_prints_one_trace_through_flask_and_fastapi(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo" / "run.py"), "--store", str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert processes_using(store) == [], f"the demo left processes behind\n{report}"

    lines = result.stdout.splitlines()
    header = next((line for line in lines if line.startswith("trace ")), "")
    trace_id = header.split()[1]
    assert re.search(r"services: client, frontend, backend", header), report
    printed = "\n".join(lines)
    assert re.search(r"^    GET /checkout  \[frontend\] SERVER .*status=200$", printed, re.M), report
    assert re.search(r"^ +GET /price/\{item\}  \[backend\] SERVER .*status=200$", printed, re.M), report

    # The same trace read back as data: the FastAPI request descends from the Flask request.
    document = json.loads(
        subprocess.run(
            [VIEWER, "--store", str(store), "--json", trace_id], capture_output=True, text=True, timeout=60
        ).stdout
    )
    spans = {span["span_id"]: span for span in document["spans"]}
    assert {span["trace_id"] for span in spans.values()} == {trace_id}
    flask = [s for s in spans.values() if s["service"] == "frontend" and s["kind"] == "SERVER"]
    fastapi = [s for s in spans.values() if s["service"] == "backend" and s["kind"] == "SERVER"]
    assert len(flask) == 1 and fastapi, report
    for span in fastapi:
        ancestors = []
        current = span
        while current["parent_id"] in spans:
            current = spans[current["parent_id"]]
            ancestors.append(current["span_id"])
        assert flask[0]["span_id"] in ancestors, report
