"""The README's first command: the demo system runs, stops cleanly and prints one connected trace."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT, VIEWER, child_env, run_process


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
    result = run_process(
        [sys.executable, str(ROOT / "examples" / "demo" / "run.py"), "--store", str(store)],
        child_env(TMPDIR=str(tmp_path)),  # the demo's own work folder (logs) goes there
        timeout=300,
        # The demo's own progress lines, and nothing else: the client's stderr is passed on to it.
        expect_stderr=re.compile(r"(demo: [^\n]*\n)*"),
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert processes_using(store) == [], f"the demo left processes behind\n{report}"

    lines = result.stdout.splitlines()
    # It ends with the command that opens the live UI on the same store.
    assert re.fullmatch(rf"  \S*logfire-run-view --serve --store {re.escape(str(store))}", lines[-1]), report
    header = next((line for line in lines if line.startswith("trace ")), "")
    trace_id = header.split()[1]
    assert re.search(r"services: client, frontend, backend", header), report
    printed = "\n".join(lines)
    assert re.search(r"^    GET /checkout  \[frontend\] SERVER .*status=200$", printed, re.M), report
    assert re.search(r"^ +GET /price/\{item\}  \[backend\] SERVER .*status=200$", printed, re.M), report

    # The same trace read back as data: the FastAPI request descends from the Flask request.
    document = json.loads(
        run_process([VIEWER, "--store", str(store), "--json", trace_id], child_env()).stdout
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
