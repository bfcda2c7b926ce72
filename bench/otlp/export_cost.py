"""CPU per span of a whole OTLP export, logfire-run's exporters against OpenTelemetry's, HTTP and gRPC.

    .venv/bin/python bench/otlp/export_cost.py [--rounds 5] [--spans 5120]

Each exporter's `export()` is called on the same batches of 512 typical HTTP server spans (15
attributes, from bench/store/spans.py), sent to a receiver on 127.0.0.1 that keeps nothing (raw
bytes in, an empty answer out). The receiver runs in another process, so the CPU time measured is
the exporting process's alone: encoding, compression (none), the transport. Every round runs each
exporter once, in an order that rotates. Reported: the median microseconds of CPU per span, and
logfire-run's as a ratio of OpenTelemetry's for the same transport.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "store"))

from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider  # noqa: E402
from spans import make_server_spans  # noqa: E402

BATCH = 512

RECEIVER = r"""
import sys, threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import grpc

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

http_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=http_server.serve_forever, daemon=True).start()
handler = grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(lambda body, context: b"")},
)
grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
grpc_server.start()
print(http_server.server_address[1], grpc_port, flush=True)
sys.stdin.read()
"""


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def exporters(http_port: int, grpc_port: int) -> dict[str, object]:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as OtelGrpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as OtelHttp

    from logfire_run.agent.export.otlp_grpc import OTLPSpanExporter as OurGrpc
    from logfire_run.agent.export.otlp_http import OTLPSpanExporter as OurHttp

    http = f"http://127.0.0.1:{http_port}/v1/traces"
    grpc_target = f"127.0.0.1:{grpc_port}"
    return {
        "logfire-run http": OurHttp(endpoint=http),
        "opentelemetry http": OtelHttp(endpoint=http),
        "logfire-run grpc": OurGrpc(endpoint=grpc_target, insecure=True),
        "opentelemetry grpc": OtelGrpc(endpoint=grpc_target, insecure=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spans", type=int, default=5120)
    args = parser.parse_args()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    http_port, grpc_port = map(int, receiver.stdout.readline().split())
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(keep)
    make_server_spans(provider.get_tracer("bench"), args.spans)
    batches = [keep.spans[offset : offset + BATCH] for offset in range(0, len(keep.spans), BATCH)]
    chosen = exporters(http_port, grpc_port)
    cpu: dict[str, list[float]] = {name: [] for name in chosen}
    names = list(chosen)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    for round_number in range(args.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            exporter = chosen[name]
            started = time.process_time()
            for batch in batches:
                result = exporter.export(batch)  # type: ignore[attr-defined]
                assert result.name == "SUCCESS", (name, result)
            cpu[name].append((time.process_time() - started) / len(keep.spans) * 1e6)
    receiver.stdin.close()  # type: ignore[union-attr]
    receiver.wait(timeout=10)
    print(f"{len(keep.spans)} spans in batches of {BATCH}, {args.rounds} interleaved rounds, CPU per span")
    for transport in ("http", "grpc"):
        ours = statistics.median(cpu[f"logfire-run {transport}"])
        theirs = statistics.median(cpu[f"opentelemetry {transport}"])
        ratio = ours / theirs
        print(f"  {transport}: logfire-run {ours:.1f} us, OpenTelemetry {theirs:.1f} us, ratio {ratio:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
