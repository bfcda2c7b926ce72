"""Many processes ending at once, all writing one store: how many of their spans are kept.

    .venv/bin/python bench/store/many_writers.py [--children 50] [--spans 1000] [--busy 2] [--rounds 3]

One app, started through the launcher with every setting at its default, forks `--children`
processes that start together, each make `--spans` spans and leave by `os._exit` (as pool workers and
prefork children do): their exit flushes all fall in the same second, against one store and one
write lock, each within its own exit budget (2 s). `--busy` processes spin meanwhile, as a loaded
machine would. Printed per round: the spans found in the store against the spans made, the spools
left beside it (moved in by the next writer), and the `logfire-run:` lines the processes said.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

LAUNCHER = shutil.which("logfire-run", path=os.path.dirname(sys.executable)) or "logfire-run"

APP = textwrap.dedent(
    """
    import os, sys
    import logfire_run

    with logfire_run.span("parent"):
        pass
    read, write = os.pipe()
    children = []
    for number in range(int(sys.argv[1])):
        pid = os.fork()
        if pid == 0:
            os.close(write)
            os.read(read, 1)
            for index in range(int(sys.argv[2])):
                with logfire_run.span("GET /items/<id>", child=number, index=index, **{
                    "http.request.method": "GET", "url.path": f"/items/{index}",
                    "http.route": "/items/<id>", "http.response.status_code": 200,
                    "server.address": "127.0.0.1", "user_agent.original": "bench",
                }):
                    pass
            os._exit(0)
        children.append(pid)
    os.close(read)
    os.close(write)
    for pid in children:
        os.waitpid(pid, 0)
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--spans", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    expected = 1 + args.children * args.spans
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            app, store = Path(folder) / "app.py", Path(folder) / "traces.db"
            app.write_text(APP)
            env["LOGFIRE_STORE"] = str(store)
            env["XDG_CACHE_HOME"] = str(Path(folder) / "cache")
            spinners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)
            ]
            try:
                started = time.monotonic()
                result = subprocess.run(
                    [LAUNCHER, "python", str(app), str(args.children), str(args.spans)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                wall = time.monotonic() - started
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
            with sqlite3.connect(store) as connection:
                ((kept,),) = connection.execute("SELECT count(*) FROM spans").fetchall()
            spools = [path for path in Path(folder).iterdir() if ".spool-" in path.name]
            lines = [line for line in result.stderr.splitlines() if line.startswith("logfire-run:")]
            print(
                f"round {round_number + 1}: {kept:,} of {expected:,} spans in the store, "
                f"{len(spools)} spools left, {len(lines)} logfire-run lines, {wall:.1f} s, "
                f"load {os.getloadavg()[0]:.1f}"
            )
            for line in sorted(set(lines))[:3]:
                print(f"    {line[:160]}")


if __name__ == "__main__":
    main()
