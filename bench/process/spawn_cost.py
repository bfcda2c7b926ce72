"""Added cost per `subprocess.run(["/bin/true"])`: plain vs logfire-run vs opentelemetry-instrument.

    .venv/bin/python bench/process/spawn_cost.py [--rounds 7] [--spawns 400]

Each round runs the workload below once per mode, in a rotating order (interleaved: a noisy
neighbour hits every mode alike). The workload times `--spawns` runs of `/bin/true` outside any span,
then as many inside one span (an OpenTelemetry API span: a no-op without an SDK, a real span under
either agent). Reported per spawn: the parent's CPU time (what the agent adds is all in the parent:
reading the context, copying the environment, the longer environment the child is given) and wall
time, as the median over rounds, with the added cost as the median of per-round differences to
plain, and the ratio to plain. No span is exported (exporters off in every mode). The end-to-end
figures move by tens of microseconds with the neighbours; the last line, the agent's own work per
child timed in one process, is the steadier figure for the 50 us budget.

Modes:
  plain                       python, no agent
  logfire-run                 logfire-run (the subprocess instrumentor: TRACEPARENT into each child)
  logfire-run -subprocess     logfire-run with it disabled (the agent's presence alone)
  otel-instrument             opentelemetry-instrument (no Python agent it loads propagates into children)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

WORKLOAD = """
import json, subprocess, sys, time
from opentelemetry import trace

spawns = int(sys.argv[1])
tracer = trace.get_tracer("bench")

def measure():
    for _ in range(20):
        subprocess.run(["/bin/true"])
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(spawns):
        subprocess.run(["/bin/true"])
    return (time.process_time() - cpu) / spawns * 1e6, (time.perf_counter() - wall) / spawns * 1e6

result = {"outside a span": measure()}
with tracer.start_as_current_span("spawns"):
    result["inside a span"] = measure()
print(json.dumps(result))
"""

#: The agent's own work per child, in one process under logfire-run. First what the `_fork_exec`
#: wrapper computes before the real fork_exec (inherit: env=None; given: a caller's env= of the same
#: size), then `subprocess.run(["/bin/true"])` inside a span with subprocess's `_fork_exec` switched
#: between the agent's and the real one, round by round (the median of per-round differences): the
#: same process, the same memory, so only the wrapper differs. Python 3.11+ (3.10 patches Popen).
MICRO = """
import os, statistics, subprocess, sys, time
import _posixsubprocess
from opentelemetry import trace
from logfire_run.instrumentors import subprocess as carriers

def per_call(function, argument, calls=20000):
    for _ in range(1000):
        function(argument)
    start = time.process_time()
    for _ in range(calls):
        function(argument)
    return (time.process_time() - start) / calls * 1e6

def per_run(spawns=150):
    start = time.process_time()
    for _ in range(spawns):
        subprocess.run(["/bin/true"])
    return (time.process_time() - start) / spawns * 1e6

given = [key + b"=" + value for key, value in os.environ._data.items()]
row = {"computed outside a span": per_call(carriers._env_list_for_child, None)}
with trace.get_tracer("bench").start_as_current_span("spawns"):
    row["computed, inherit"] = per_call(carriers._env_list_for_child, None)
    row["computed, env= given"] = per_call(carriers._env_list_for_child, given)
    ours, real, added = subprocess._fork_exec, _posixsubprocess.fork_exec, []
    for _ in range(int(sys.argv[1])):
        subprocess._fork_exec = ours
        with_agent = per_run()
        subprocess._fork_exec = real
        added.append(with_agent - per_run())
    subprocess._fork_exec = ours
    row["subprocess.run, A/B"] = statistics.median(added)
print(len(os.environ), ", ".join(f"{k}: {v:+.1f} us" for k, v in row.items()))
"""

OTEL_QUIET = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}


def modes() -> dict[str, tuple[list[str], dict[str, str]]]:
    python = sys.executable
    launcher = str(BIN / "logfire-run")
    return {
        "plain": ([python, "-c", WORKLOAD], {}),
        "logfire-run": ([launcher, "--exporter", "none", python, "-c", WORKLOAD], {}),
        "logfire-run -subprocess": (
            [launcher, "--exporter", "none", "--disable", "subprocess", python, "-c", WORKLOAD],
            {},
        ),
        "otel-instrument": ([str(BIN / "opentelemetry-instrument"), python, "-c", WORKLOAD], OTEL_QUIET),
    }


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGFIRE_", "OTEL_"))}
    for name in ("PYTHONPATH", "TRACEPARENT", "TRACESTATE", "BAGGAGE"):
        env.pop(name, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--spawns", type=int, default=400, help="spawns per case per run")
    options = parser.parse_args()
    table = modes()
    names = list(table)
    # samples[mode][case] = [(cpu us, wall us) per round]
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in names}
    load_before = os.getloadavg()
    for round_number in range(options.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            command, extra = table[name]
            result = subprocess.run(
                [*command, str(options.spawns)],
                env=clean_env(extra),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stderr}")
            for case, (cpu, wall) in json.loads(result.stdout.strip().splitlines()[-1]).items():
                samples[name].setdefault(case, []).append((cpu, wall))
        print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

    print(
        f"median of {options.rounds} interleaved rounds, {options.spawns} spawns of /bin/true per case "
        f"per run; Python {sys.version.split()[0]}; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(
        f"{'case':<16}{'mode':<26}{'cpu us':>8}{'added':>8}{'ratio':>7}   "
        f"{'wall us':>8}{'added':>8}{'ratio':>7}"
    )
    for case in samples["plain"]:
        plain = samples["plain"][case]
        for name in names:
            runs = samples[name][case]
            cpu = statistics.median(item[0] for item in runs)
            wall = statistics.median(item[1] for item in runs)
            added_cpu = statistics.median(ours[0] - base[0] for ours, base in zip(runs, plain, strict=True))
            added_wall = statistics.median(ours[1] - base[1] for ours, base in zip(runs, plain, strict=True))
            plain_cpu = statistics.median(item[0] for item in plain)
            plain_wall = statistics.median(item[1] for item in plain)
            print(
                f"{case:<16}{name:<26}{cpu:>8.1f}{added_cpu:>+8.1f}{cpu / plain_cpu:>7.3f}   "
                f"{wall:>8.1f}{added_wall:>+8.1f}{wall / plain_wall:>7.3f}"
            )

    micro = subprocess.run(
        [str(BIN / "logfire-run"), "--exporter", "none", sys.executable, "-c", MICRO, str(options.rounds)],
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    variables, _, figures = micro.stdout.strip().partition(" ")
    print(
        f"\nin one process, inside a span unless said ({variables} environment variables), CPU per child: "
        f"{figures or micro.stderr}"
    )


if __name__ == "__main__":
    main()
