"""Added cost per task of thread and process pools: plain vs logfire-run vs opentelemetry-instrument.

    .venv/bin/python bench/executors/run.py [--rounds 5] [--threads 100000] [--processes 10000]

Each round runs `workload.py` once per mode, in a rotating order (interleaved, so a noisy neighbour
or a thermal change hits every mode alike); the report is the median per mode of CPU and wall time
per task, the microseconds each adds to plain Python, and the ratio to plain. CPU time (submitting
process plus worker) is the figure to read on a shared machine; wall time moves with the neighbours.
No span is exported in any mode: the cost measured is context propagation, not export.

Modes:
  plain                      python, no agent
  logfire-run                logfire-run (executors instrumentor)
  logfire-run -executors     logfire-run with the executors instrumentor disabled (the agent's
                             presence alone; OpenTelemetry's threading instrumentor takes over threads)
  otel-instrument            opentelemetry-instrument with its threading instrumentor (ours disabled)
  otel-instrument+executors  opentelemetry-instrument loading ours too (it supersedes theirs)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
WORKLOAD = str(HERE / "workload.py")
OTEL_QUIET = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


def modes() -> dict[str, tuple[list[str], dict[str, str]]]:
    python = sys.executable
    return {
        "plain": ([python, WORKLOAD], {}),
        "logfire-run": ([str(BIN / "logfire-run"), "--exporter", "none", python, WORKLOAD], {}),
        "logfire-run -executors": (
            [str(BIN / "logfire-run"), "--exporter", "none", "--disable", "executors", python, WORKLOAD],
            {},
        ),
        "otel-instrument": (
            [str(BIN / "opentelemetry-instrument"), python, WORKLOAD],
            {**OTEL_QUIET, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "executors"},
        ),
        "otel-instrument+executors": (
            [str(BIN / "opentelemetry-instrument"), python, WORKLOAD],
            {**OTEL_QUIET, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "threading"},
        ),
    }


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=100_000, help="thread pool tasks per run")
    parser.add_argument("--processes", type=int, default=10_000, help="process pool tasks per run")
    options = parser.parse_args()
    table = modes()
    names = list(table)
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in names}
    for round_number in range(options.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            command, extra = table[name]
            result = subprocess.run(
                [*command, str(options.threads), str(options.processes)],
                env=clean_env(extra),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stderr}")
            for pool, (wall, cpu) in json.loads(result.stdout.strip().splitlines()[-1]).items():
                samples[name].setdefault(pool, []).append((wall, cpu))
        print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

    pools = list(samples["plain"])
    print(
        f"median of {options.rounds} interleaved rounds; {options.threads} thread tasks, "
        f"{options.processes} process tasks per run; Python {sys.version.split()[0]}"
    )
    print(
        f"{'pool':<15}{'mode':<27}{'cpu us':>8}{'added':>8}{'ratio':>7}   "
        f"{'wall us':>8}{'added':>8}{'ratio':>7}"
    )
    for pool in pools:
        plain_cpu = statistics.median(cpu for _, cpu in samples["plain"][pool])
        plain_wall = statistics.median(wall for wall, _ in samples["plain"][pool])
        for name in names:
            cpu = statistics.median(cpu for _, cpu in samples[name][pool])
            wall = statistics.median(wall for wall, _ in samples[name][pool])
            print(
                f"{pool:<15}{name:<27}{cpu:>8.2f}{cpu - plain_cpu:>+8.2f}{cpu / plain_cpu:>7.3f}   "
                f"{wall:>8.2f}{wall - plain_wall:>+8.2f}{wall / plain_wall:>7.3f}"
            )


if __name__ == "__main__":
    main()
