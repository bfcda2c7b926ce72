"""Celery under no agent, `logfire-run` and `opentelemetry-instrument`, interleaved round by round.

    .venv/bin/python bench/celery/run.py [--rounds 3] [--tasks 200] [--recycled 20]

Starts a real Redis (redis-server on a free port) and, per round and per variant, a prefork worker
(`--concurrency 2`) and a producer, both under the variant, exporting over OTLP/HTTP to a receiver in
this process. Two figures per variant:

- delivery: `--max-tasks-per-child 3`, `--recycled` tasks, default batch settings (5 s delay), warm
  shutdown: how many task-run spans arrive (children leave through os._exit);
- throughput: no recycling, `--tasks` tasks enqueued then awaited by the producer: seconds per task
  (median over rounds) and the ratio to the run without an agent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
from conftest import OtlpReceiver, free_port, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent
VARIANTS = {
    "plain": [],
    "logfire-run": [str(BIN / "logfire-run")],
    "opentelemetry-instrument": [str(BIN / "opentelemetry-instrument")],
}


def environment(receiver: OtlpReceiver, redis: str, queue: str, service: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        BROKER_URL=redis,
        CELERY_QUEUE=queue,
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        # logfire-run's own spelling; and silence Celery's warning about running as root.
        LOGFIRE_DISTRIBUTED_TRACING="true",
        PYTHONWARNINGS="ignore:You're running the worker with superuser privileges",
    )
    return env


def one_run(variant: str, receiver: OtlpReceiver, redis: str, tasks: int, recycle: bool) -> tuple[float, int]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    service = f"{variant}-{queue}"
    env = environment(receiver, redis, queue, service)
    extra = ["--max-tasks-per-child", "3"] if recycle else []
    worker = subprocess.Popen(
        [*VARIANTS[variant], str(BIN / "celery"), "-A", "bench_tasks", "worker", "--concurrency", "2",
         "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "ERROR",
         *extra],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Warm the worker up (imports, the pool's first forks) before timing.
        subprocess.run(
            [*VARIANTS[variant], sys.executable, "bench_producer.py", "4"],
            cwd=HERE, env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        produced = subprocess.run(
            [*VARIANTS[variant], sys.executable, "bench_producer.py", str(tasks)],
            cwd=HERE, env=env, check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        seconds = json.loads(produced.stdout)["seconds"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    if variant == "plain":
        return seconds, 0
    # Every run span of this worker: the 4 warm-up tasks and the timed ones.
    expected = tasks + 4
    spans = receiver.wait_for(
        lambda spans: sum(1 for s in spans if s.service == service and s.kind == "CONSUMER") >= expected,
        timeout=10,
    )
    return seconds, sum(1 for span in spans if span.service == service and span.kind == "CONSUMER")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--recycled", type=int, default=20)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    redis = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, cwd="/tmp",
    )  # fmt: skip
    receiver = OtlpReceiver()
    try:
        wait_for_port(port)
        url = f"redis://127.0.0.1:{port}/0"
        throughput: dict[str, list[float]] = {name: [] for name in VARIANTS}
        delivered: dict[str, list[int]] = {name: [] for name in VARIANTS}
        recycled: dict[str, list[int]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                seconds, spans = one_run(variant, receiver, url, args.tasks, recycle=False)
                throughput[variant].append(seconds / args.tasks)
                delivered[variant].append(spans)
                _seconds, spans = one_run(variant, receiver, url, args.recycled, recycle=True)
                recycled[variant].append(spans)
        base = statistics.median(throughput["plain"])
        print(f"celery prefork -c 2, {args.rounds} rounds interleaved, Python {sys.version.split()[0]}")
        print("run spans delivered: of tasks + 4 warm-up tasks, per round")
        for variant in VARIANTS:
            per_task = statistics.median(throughput[variant])
            line = f"  {variant:<25} {per_task * 1e3:7.2f} ms/task  x{per_task / base:4.2f}"
            if variant != "plain":
                line += (
                    f"   spans: {delivered[variant]} of {args.tasks + 4};"
                    f" --max-tasks-per-child 3: {recycled[variant]} of {args.recycled + 4}"
                )
            print(line)
    finally:
        receiver.close()
        redis.terminate()
        redis.wait(timeout=10)


if __name__ == "__main__":
    main()
