"""What `flask_app.py` and `requests_client.py` share: the flush and the figures they print.

Besides wall and process CPU per operation, each prints the export's own CPU per operation
(`export_cpu_per_op_us`): the CPU of the SDK's exporting thread (Linux, through
`time.pthread_getcpuclockid`) plus the main thread's during the final flush, which exports what the
thread had not taken yet in the caller's thread. It is read directly, not worked out as the
difference of two noisy process totals, and it is 0 where nothing is exported.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable

from opentelemetry import trace

# The SDK's BatchSpanProcessor names its worker thread so (OtelBatchSpanRecordProcessor in recent
# releases, OtelBatchSpanProcessor in older ones).
_EXPORT_THREAD_PREFIX = "OtelBatchSpan"


def flush() -> None:
    """Export every ended span now, under either agent; plain Python has nothing to flush."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(force_flush):
        force_flush()


def _export_threads_cpu() -> float:
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith(_EXPORT_THREAD_PREFIX) and thread.ident is not None:
            # Not Linux, or the thread has just ended: nothing to add.
            with contextlib.suppress(AttributeError, OSError):
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def timed(count: int, operation: Callable[[], None]) -> None:
    """Run `operation` `count` times, flush, and print the figures as one JSON line."""
    flush()  # the warm-up's spans are exported before the clock starts
    export_start = _export_threads_cpu()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(count):
        operation()
    flush_start = time.thread_time()
    flush()  # and every measured span is exported before it stops
    flushing = time.thread_time() - flush_start
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    export_cpu = _export_threads_cpu() - export_start + flushing
    print(
        json.dumps(
            {
                "per_op_us": elapsed / count * 1e6,
                "cpu_per_op_us": cpu / count * 1e6,
                "export_cpu_per_op_us": export_cpu / count * 1e6,
                "n": count,
            }
        )
    )
