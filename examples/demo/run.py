"""The one-command demo: a small system on 127.0.0.1, every process under `logfire-run`, one trace.

    client --HTTP--> frontend (Flask) --HTTP--> backend (FastAPI) --> process pool
                         |--> thread pool --HTTP--> backend
                         '--> Celery task (when redis-server is installed) --> worker

Each service starts in its own process group; whatever happens (an error, Ctrl-C, SIGTERM), every
group is stopped in `finally`: SIGTERM first (the agent flushes its spans on it), SIGKILL after a
grace period. Spans go to a private store file; at the end the viewer prints the trace the client
started, rebuilt from the store.

    python examples/demo/run.py [--store PATH] [--no-celery] [--html FILE]
                                [--otlp URL [--otlp-protocol http/protobuf|grpc]]

With `--otlp URL` every span also goes to that OTLP endpoint (a Collector, a vendor); the tree is
still printed from the store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"demo: {name} not found; run `bash scripts/setup.sh` first")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


class System:
    """The processes of the demo, each in its own process group, stopped together."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed when the process is)
        process = subprocess.Popen(
            command,
            cwd=HERE,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children too
        )
        log.close()
        self.processes.append((name, process))
        return process

    def wait_for_port(self, name: str, process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.logs / name}.log")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f}s")

    def wait_for_log(self, name: str, process: subprocess.Popen[bytes], text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.logs / name}.log")
            if text in (self.logs / f"{name}.log").read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not ready within {timeout:.0f}s; see {self.logs / name}.log")

    def stop(self, grace: float = 15.0) -> None:
        """Stop every group, newest first (clients of a service stop before it)."""
        for name, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {grace:.0f}s; killing it")
            # Children of the service (pool workers, Celery's prefork children) are in its group too.
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            _wait_group_gone(process.pid, timeout=5)
        self.processes.clear()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no process of the group is left (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def wait_for_trace(store: Path, trace_id: str, timeout: float) -> None:
    """Keep the services up until the trace has settled in the store: no span missing its parent,
    and no new span for half a second. A server span ends just after its response is sent, and each
    process exports in batches: stopping at once could catch a span not yet ended."""
    deadline = time.monotonic() + timeout
    last = (-1, -1)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
            try:
                found = connection.execute(
                    "SELECT count(*), sum(parent_id IS NOT NULL AND parent_id NOT IN"
                    " (SELECT span_id FROM spans WHERE trace_id = ?)) FROM spans WHERE trace_id = ?",
                    (trace_id, trace_id),
                ).fetchone()
            finally:
                connection.close()
        except sqlite3.Error:
            continue
        current = (int(found[0] or 0), int(found[1] or 0))
        if current[0] > 0 and current[1] == 0 and current == last:
            return
        last = current


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the logfire-run demo system and print its trace.")
    parser.add_argument("--store", help="the trace store file (default: a fresh one in a temp folder)")
    parser.add_argument("--no-celery", action="store_true", help="leave Celery out even if redis is there")
    parser.add_argument("--html", metavar="FILE", help="also write the trace as a waterfall page")
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="also send every span over OTLP to this endpoint (a Collector: http://localhost:4318)",
    )
    parser.add_argument(
        "--otlp-protocol",
        choices=("http/protobuf", "grpc"),
        default="http/protobuf",
        help="the OTLP protocol (grpc needs logfire-run[grpc]; its port is usually 4317)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.gettempdir()) / f"logfire-run-demo-{os.getuid()}"
    workdir.mkdir(exist_ok=True)
    store = Path(args.store).resolve() if args.store else workdir / "traces.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="logs-", dir=workdir))

    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        LOGFIRE_STORE=str(store),
        LOGFIRE_EXPORTER="store",
        # Every service here is ours: inbound context is trusted, so the policy does not warn.
        LOGFIRE_DISTRIBUTED_TRACING="true",
        OTEL_BSP_SCHEDULE_DELAY="200",
        PYTHONUNBUFFERED="1",
    )
    if args.otlp:
        # The store stays: the tree printed at the end is read back from it.
        env.update(
            LOGFIRE_EXPORTER="otlp,store",
            OTEL_EXPORTER_OTLP_ENDPOINT=args.otlp,
            OTEL_EXPORTER_OTLP_PROTOCOL=args.otlp_protocol,
        )
    launcher = tool("logfire-run")
    if args.otlp:
        check = subprocess.run([launcher, "--info", "--check"], env=env, capture_output=True, text=True)
        for line in check.stdout.splitlines():
            if line.startswith("otlp:"):
                say(line)
        if check.returncode == 2:
            say(check.stderr.strip())
            return 2
    redis_server = None if args.no_celery else shutil.which("redis-server")
    frontend_port, backend_port = free_port(), free_port()
    env["DEMO_BACKEND_URL"] = f"http://127.0.0.1:{backend_port}"
    env["DEMO_FRONTEND_URL"] = f"http://127.0.0.1:{frontend_port}"

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    system = System(logs, env)
    trace_id = ""
    try:
        if redis_server:
            redis_port = free_port()
            env["DEMO_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            redis = system.start(
                "redis",
                [
                    redis_server,
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
            )
            system.wait_for_port("redis", redis, redis_port, 20)
            worker = system.start(
                "worker",
                [launcher, "--service-name", "worker", "celery", "-A", "tasks", "worker",
                 "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "--without-heartbeat",
                 "--without-gossip", "--without-mingle"],
            )  # fmt: skip
            system.wait_for_log("worker", worker, " ready.", 90)
            say(f"redis on port {redis_port}, Celery worker ready")
        else:
            say("Celery left out (" + ("--no-celery" if args.no_celery else "no redis-server found") + ")")
        backend = system.start(
            "backend",
            [launcher, "--service-name", "backend", "uvicorn", "backend:app", "--host", "127.0.0.1",
             "--port", str(backend_port), "--log-level", "warning"],
        )  # fmt: skip
        frontend = system.start(
            "frontend", [launcher, "--service-name", "frontend", "python", "frontend.py", str(frontend_port)]
        )
        system.wait_for_port("backend", backend, backend_port, 60)
        system.wait_for_port("frontend", frontend, frontend_port, 60)
        say(f"frontend (Flask) on port {frontend_port}, backend (FastAPI) on port {backend_port}")
        client = subprocess.run(
            [launcher, "--service-name", "client", "python", "client.py"],
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        sys.stderr.write(client.stderr)
        if client.returncode != 0:
            raise RuntimeError(f"the client failed with exit status {client.returncode}")
        for line in client.stdout.splitlines():
            if line.startswith("trace_id="):
                trace_id = line.partition("=")[2]
            else:
                say(line)
        if trace_id:
            wait_for_trace(store, trace_id, timeout=15)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        say(f"failed: {error}")
        for log in sorted(logs.glob("*.log")):
            say(
                f"--- {log.name} (last lines)\n"
                + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            )
        return 1
    finally:
        say("stopping the services")
        system.stop()  # every process exits before the store is read: each one flushed its spans

    viewer = tool("logfire-run-view")
    print(flush=True)
    shown = subprocess.run([viewer, "--store", str(store), trace_id or "last"], timeout=60)
    if args.html:
        subprocess.run([viewer, "--store", str(store), "--html", args.html, trace_id or "last"], timeout=60)
    print(f"\nThe spans are in {store}; look again with:\n  {viewer} --store {store}")
    print(f"  {viewer} --store {store} --html trace.html {trace_id or 'last'}")
    print(f"And in your browser, live (Ctrl-C stops it):\n  {viewer} --serve --store {store}")
    shutil.rmtree(logs, ignore_errors=True)
    return shown.returncode


if __name__ == "__main__":
    sys.exit(main())
