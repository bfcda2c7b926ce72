"""Nothing lost under load: the spans of busy scenarios all arrive while two busy processes load both cores.

    .venv/bin/python bench/load/nothing_lost.py [--runs 20]

Default settings throughout (queue size, batch delay, exit budget): a run that raised them would prove
nothing about what users run. Scenarios, each `--runs` times under `logfire-run`, spans exported over
OTLP/HTTP to a receiver in this process:

- celery: a prefork worker (`-c 2 --max-tasks-per-child 3`, a private redis-server); a producer
  enqueues 10 parent tasks, each enqueues a child, every result is awaited; the worker is then warm
  shut down (SIGTERM). Expected: one run span per task (20) and one publish span per task.
- pool-fork / pool-spawn / pool-forkserver: `ProcessPoolExecutor(4)` left by `with`, 500 tasks each
  making one span. Expected: 500 task spans.
- gunicorn: `gunicorn -w 2`; a client sends requests as fast as it can and the master gets SIGTERM
  mid-load. Expected: one span per request the client got an answer to (a request cut off by the
  shutdown may have a span without an answer: counted as extra, never as lost).

Prints, per scenario, the spans expected and received in each run, and the runs that lost any.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
from conftest import OtlpReceiver, free_port, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent
LAUNCHER = str(BIN / "logfire-run")
BUSY_SECONDS = 3600  # the load processes end by themselves at the latest after this


def environment(receiver: OtlpReceiver, service: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        LOGFIRE_EXPORTER="otlp",
        LOGFIRE_DISTRIBUTED_TRACING="true",
        PYTHONWARNINGS="ignore:You're running the worker with superuser privileges",
        **extra,
    )
    return env


def count(receiver: OtlpReceiver, service: str, expected: int, predicate: object = None) -> int:
    def matching(spans: list[object]) -> int:
        return sum(
            1
            for span in spans
            if getattr(span, "service", None) == service and (predicate is None or predicate(span))  # type: ignore[operator]
        )

    spans = receiver.wait_for(lambda spans: matching(spans) >= expected, timeout=20)
    return matching(spans)


def celery_run(receiver: OtlpReceiver, redis: str) -> tuple[int, int]:
    queue = f"load-{uuid.uuid4().hex[:8]}"
    service = f"celery-{queue}"
    env = environment(receiver, service, BROKER_URL=redis, CELERY_QUEUE=queue)
    worker = subprocess.Popen(
        [LAUNCHER, str(BIN / "celery"), "-A", "load_tasks", "worker", "-c", "2", "--max-tasks-per-child", "3",
         "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "ERROR"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        produced = subprocess.run(
            [LAUNCHER, sys.executable, "load_producer.py", "10"],
            cwd=HERE, env=env, check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        tasks = int(produced.stdout)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    # Run spans (CONSUMER) and publish spans (PRODUCER): one of each per task.
    return tasks * 2, count(receiver, service, tasks * 2, lambda span: span.kind in ("CONSUMER", "PRODUCER"))


def pool_run(receiver: OtlpReceiver, method: str) -> tuple[int, int]:
    service = f"pool-{method}-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [LAUNCHER, sys.executable, "pool_app.py", method, "500"],
        cwd=HERE, env=environment(receiver, service), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return 500, count(receiver, service, 500, lambda span: span.name == "task")


def gunicorn_run(receiver: OtlpReceiver) -> tuple[int, int]:
    service = f"gunicorn-{uuid.uuid4().hex[:8]}"
    port = free_port()
    server = subprocess.Popen(
        [LAUNCHER, str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "wsgi_app:app"],
        cwd=HERE, env=environment(receiver, service), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    answered = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal answered
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/")
                if connection.getresponse().read() == b"ok":
                    answered += 1
                connection.close()
            except OSError:
                if server.poll() is not None:
                    return

    try:
        wait_for_port(port, process=server)
        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        # Mid-load: both workers are up and the clients have had 200 answers (or 30 s went by).
        waited_until = time.monotonic() + 30
        while answered < 200 and time.monotonic() < waited_until:
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        if server.poll() is None:
            server.kill()
    return answered, count(receiver, service, answered, lambda span: span.name == "request")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    busy = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import time\nend = time.time() + {BUSY_SECONDS}\nwhile time.time() < end: pass",
            ]
        )
        for _ in range(2)
    ]
    redis_server = shutil.which("redis-server")
    redis = None
    receiver = OtlpReceiver()
    try:
        scenarios: dict[str, object] = {
            "pool-fork": lambda: pool_run(receiver, "fork"),
            "pool-spawn": lambda: pool_run(receiver, "spawn"),
            "pool-forkserver": lambda: pool_run(receiver, "forkserver"),
            "gunicorn": lambda: gunicorn_run(receiver),
        }
        if redis_server is not None:
            port = free_port()
            redis = subprocess.Popen(
                [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],  # noqa: E501
                stdout=subprocess.DEVNULL, cwd="/tmp",
            )  # fmt: skip
            wait_for_port(port)
            url = f"redis://127.0.0.1:{port}/0"
            scenarios["celery"] = lambda: celery_run(receiver, url)
        else:
            print("redis-server is not installed: the celery scenario is skipped")
        print(
            f"nothing lost under load: {args.runs} runs each, 2 busy processes, "
            f"Python {sys.version.split()[0]}"
        )
        for name, scenario in scenarios.items():
            results = [scenario() for _ in range(args.runs)]  # type: ignore[operator]
            lost = [index for index, (expected, received) in enumerate(results) if received < expected]
            shown = " ".join(f"{received}/{expected}" for expected, received in results)
            print(f"  {name:<16} runs that lost spans: {len(lost)}   received/expected: {shown}", flush=True)
        print(f"load average at the end: {', '.join(f'{value:.1f}' for value in os.getloadavg())}")
    finally:
        for process in busy:
            process.kill()
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)
        receiver.close()


if __name__ == "__main__":
    main()
