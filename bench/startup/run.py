"""Start-up cost: wall time and peak RSS of short runs, plain vs logfire-run vs opentelemetry-instrument.

    .venv/bin/python bench/startup/run.py [--rounds 30]

Each round runs every variant once, in a shuffled order, so drift on the machine spreads evenly.
Reported: the median wall time and median peak RSS of each variant, and their ratios to plain Python.
All exporters are off (`none`): this measures the agents, not a backend.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
IMPORTS = "import flask, requests, httpx, fastapi\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def variants(target: list[str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    python = str(BIN / "python")
    otel_off = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    return {
        "plain": ([python, *target], _env()),
        "logfire-run": ([str(BIN / "logfire-run"), "--exporter", "none", python, *target], _env()),
        "env-only (LOGFIRE_RUN=1)": ([python, *target], _env(LOGFIRE_RUN="1", LOGFIRE_EXPORTER="none")),
        "opentelemetry-instrument": (
            [str(BIN / "opentelemetry-instrument"), python, *target],
            _env(**otel_off),
        ),
    }


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command} failed with {process.returncode}")
    return elapsed, usage.ru_maxrss


def measure(name: str, target: list[str], rounds: int) -> None:
    cases = variants(target)
    for command, env in cases.values():  # warm the caches (pyc files, the instrumentor cache)
        run_once(command, env)
        run_once(command, env)
    times: dict[str, list[float]] = {label: [] for label in cases}
    rss: dict[str, list[int]] = {label: [] for label in cases}
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for label in order:
            elapsed, maxrss = run_once(*cases[label])
            times[label].append(elapsed)
            rss[label].append(maxrss)
    plain_time = statistics.median(times["plain"])
    plain_rss = statistics.median(rss["plain"])
    print(f"\n{name}  ({rounds} interleaved rounds, medians)")
    print(f"  {'variant':<28} {'wall ms':>9} {'x plain':>8} {'peak RSS MB':>12} {'x plain':>8}")
    for label in cases:
        wall = statistics.median(times[label])
        peak = statistics.median(rss[label])
        print(
            f"  {label:<28} {wall * 1000:>9.1f} {wall / plain_time:>8.2f}"
            f" {peak / 1024:>12.1f} {peak / plain_rss:>8.2f}"
        )


def compile_package() -> None:
    """Write the package's bytecode, as `pip install` does for a regular install.

    An editable install leaves it to the first import, and PYTHONDONTWRITEBYTECODE (set on some
    machines) would then make every run compile the agent from source.
    """
    import compileall

    import logfire_run

    compileall.compile_dir(os.path.dirname(logfire_run.__file__), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    compile_package()
    print(
        f"python {sys.version.split()[0]} at {BIN / 'python'}; {os.cpu_count()} cpus;"
        f" load {os.getloadavg()[0]:.1f}"
    )
    measure("python -c pass", ["-c", "pass"], args.rounds)
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder, "imports.py")
        script.write_text(IMPORTS)
        measure("script importing flask, requests, httpx, fastapi", [str(script)], args.rounds)


if __name__ == "__main__":
    main()
