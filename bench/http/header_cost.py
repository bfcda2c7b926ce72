"""CPU per request with huge and hostile inbound trace headers, with and without the agent, per policy mode.

    .venv/bin/python bench/http/header_cost.py [--rounds 3] [--flask-requests 100] [--uvicorn-requests 300]

Two servers, each run plainly and under `logfire-run --distributed-tracing MODE` for every mode
(`warn`, `true`, `false`, `link`), spans exported nowhere (`--exporter none`: the header work is what
is measured, not the export):

- flask: a Flask handler through the framework's test client (the full WSGI stack, no socket, so no
  server limit on header size), each request carrying a 1 MB hostile header; CPU time of the process
  over the requests, one fresh process per measurement;
- uvicorn: a FastAPI handler under uvicorn (h11, its event size limit raised so that 60 KB headers
  are accepted), requests sent over a keep-alive socket from this process, 60 KB hostile headers;
  the CPU time of the server process (from /proc) over the requests.

The cases (bench/http/header_app.py): no trace headers, a plain `traceparent`, a tracestate of
commas, a tracestate of `a=1,` repeated (duplicates and far more than 32 members), the same two for
baggage, and a `traceparent` followed by a huge tail. Every round runs every variant, in an order
that rotates; reported are the median microseconds of CPU per request and, per mode, the median of
the per-round ratios to plain. The goal (issue 14): at most 1.20 for the hostile cases.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from header_app import CASES, headers  # noqa: E402

BIN = Path(sys.executable).parent
MODES = ("warn", "true", "false", "link")
VARIANTS = ("plain", *MODES)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _command(variant: str, program: list[str]) -> list[str]:
    if variant == "plain":
        return program
    launcher = str(BIN / "logfire-run")
    return [launcher, "--exporter", "none", "--distributed-tracing", variant, *program]


def _flask_once(variant: str, case: str, requests: int, size: int) -> float:
    program = [sys.executable, str(HERE / "header_app.py"), str(requests), case, str(size)]
    result = subprocess.run(
        _command(variant, program), capture_output=True, text=True, env=_environment(), timeout=900
    )
    if result.returncode != 0:
        raise SystemExit(f"{variant} {case} failed:\n{result.stderr}")
    return float(json.loads(result.stdout.splitlines()[-1])["cpu_per_op_us"])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _uvicorn_round(variant: str, cases: list[str], requests: int, size: int) -> dict[str, float]:
    port = _free_port()
    program = [
        str(BIN / "uvicorn"),
        "header_app:asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--h11-max-incomplete-event-size",
        str(4 * size),
    ]
    server = subprocess.Popen(
        _command(variant, program),
        cwd=HERE,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"uvicorn ({variant}) did not start") from None
                time.sleep(0.05)
        results: dict[str, float] = {}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for case in cases:
            sent = headers(case, size)

            def get(sent: dict[str, str] = sent, case: str = case) -> None:
                connection.request("GET", "/hello", headers=sent)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"uvicorn ({variant}) answered {response.status} to {case}")

            for _ in range(20):
                get()
            before = _cpu_seconds(server.pid)
            for _ in range(requests):
                get()
            results[case] = (_cpu_seconds(server.pid) - before) / requests * 1e6
        connection.close()
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


def _report(title: str, samples: dict[str, dict[str, list[float]]], cases: list[str]) -> None:
    print(f"\n{title}: median us of CPU per request; per mode, the median ratio to plain")
    print(f"  {'case':<20} {'plain':>9}" + "".join(f" {mode:>16}" for mode in MODES))
    for case in cases:
        plain = samples[case]["plain"]
        line = f"  {case:<20} {statistics.median(plain):9.0f}"
        for mode in MODES:
            ratios = [agent / base for agent, base in zip(samples[case][mode], plain, strict=True)]
            line += f" {statistics.median(samples[case][mode]):9.0f} {statistics.median(ratios):5.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flask-requests", type=int, default=100)
    parser.add_argument("--flask-size", type=int, default=1_000_000)
    parser.add_argument("--uvicorn-requests", type=int, default=300)
    parser.add_argument("--uvicorn-size", type=int, default=60_000)
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    parser.add_argument("--skip", default="", help="flask and/or uvicorn")
    options = parser.parse_args()
    cases = options.cases.split(",")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    flask: dict[str, dict[str, list[float]]] = {case: {v: [] for v in VARIANTS} for case in cases}
    asgi: dict[str, dict[str, list[float]]] = {case: {v: [] for v in VARIANTS} for case in cases}
    for round_index in range(options.rounds):
        shift = round_index % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        if "flask" not in options.skip:
            for case in cases:
                for variant in order:
                    flask[case][variant].append(
                        _flask_once(variant, case, options.flask_requests, options.flask_size)
                    )
        if "uvicorn" not in options.skip:
            for variant in order:
                for case, value in _uvicorn_round(
                    variant, cases, options.uvicorn_requests, options.uvicorn_size
                ).items():
                    asgi[case][variant].append(value)
        print(f"round {round_index + 1}/{options.rounds} done", file=sys.stderr)
    if "flask" not in options.skip:
        _report(
            f"flask test client, {options.flask_size:,}-byte headers, {options.flask_requests} requests",
            flask,
            cases,
        )
    if "uvicorn" not in options.skip:
        _report(
            f"uvicorn, {options.uvicorn_size:,}-byte headers, {options.uvicorn_requests} requests",
            asgi,
            cases,
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
