"""Runtime metrics: the process's CPU time, memory, threads and garbage collections, without code.

What it patches:
    Nothing. It registers observable instruments on the global meter provider (the agent's, see
    `agent/export/metrics.py`), read at each collection in the process being measured:
    `process.cpu.time` (seconds, `cpu.mode` user or system), `process.memory.usage` (resident bytes),
    `process.thread.count`, and `cpython.gc.collections`, `cpython.gc.collected_objects`,
    `cpython.gc.uncollectable_objects` (per `cpython.gc.generation`), as OpenTelemetry's semantic
    conventions name them.

When it is enabled:
    Once the SDK is up (its target, `os`, is imported by every program). When OpenTelemetry's
    system-metrics instrumentation is installed and enabled (`system_metrics`, with psutil), that
    one runs instead, with its larger set (system CPU, memory, disk, network; process and runtime);
    this instrumentor then only makes it fork-correct: each forked child measures itself, not the
    process it was forked from (OpenTelemetry's keeps a `psutil.Process` of the pid it started in).

How it refuses:
    Without a meter provider of the agent's (the app set its own tracer or meter provider), its
    instruments record into whatever provider is global, as any library's would. `--disable
    runtime_metrics` turns it off.

Where it stops:
    No machine-wide metrics of its own (that is system-metrics' job), and memory is the resident set
    on Linux (`/proc/self/statm`), the peak resident set elsewhere.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.process import fork
from logfire_run.instrumentors._base import Instrumentor

__all__ = ["RuntimeMetricsInstrumentor"]

_SYSTEM_METRICS = "system_metrics"


class RuntimeMetricsInstrumentor(Instrumentor):
    """CPU, memory, threads and GC of each process, or OpenTelemetry's system metrics made fork-correct."""

    targets = ("os",)
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    _instruments: ClassVar[list[Any]] = []

    def _instrument(self, **kwargs: Any) -> None:
        if _system_metrics_enabled():
            fork.in_child(_measure_this_process)
            report.debug("runtime metrics: OpenTelemetry's system_metrics runs instead")
            return
        from opentelemetry import metrics

        from logfire_run._version import __version__

        meter = metrics.get_meter("logfire_run.runtime_metrics", __version__)
        self._instruments[:] = [
            meter.create_observable_counter(
                "process.cpu.time", [_cpu_time], unit="s", description="CPU seconds used by the process"
            ),
            meter.create_observable_up_down_counter(
                "process.memory.usage", [_memory], unit="By", description="resident memory of the process"
            ),
            meter.create_observable_up_down_counter(
                "process.thread.count", [_threads], unit="{thread}", description="threads of the process"
            ),
            meter.create_observable_counter(
                "cpython.gc.collections", [_gc("collections")], unit="{collection}", description="GC runs"
            ),
            meter.create_observable_counter(
                "cpython.gc.collected_objects",
                [_gc("collected")],
                unit="{object}",
                description="objects collected by the GC",
            ),
            meter.create_observable_counter(
                "cpython.gc.uncollectable_objects",
                [_gc("uncollectable")],
                unit="{object}",
                description="objects the GC found uncollectable",
            ),
        ]

    def _uninstrument(self, **kwargs: Any) -> None:
        # OpenTelemetry's API cannot take an instrument back; without references they only stop here.
        self._instruments.clear()


def _system_metrics_enabled() -> bool:
    """OpenTelemetry's system-metrics instrumentor is installed, with psutil, and not disabled."""
    from importlib.util import find_spec

    from logfire_run.agent.process import state
    from logfire_run.instrumentors import loader

    if state.config().instrumentation_disabled(_SYSTEM_METRICS):
        return False
    try:
        if find_spec("psutil") is None:
            return False
    except (ImportError, ValueError):
        return False
    if not loader.is_installed(_SYSTEM_METRICS):
        return False
    # Its import is the target that runs system_metrics, if nothing imported it yet.
    importlib.import_module("psutil")
    return True


def _measure_this_process() -> None:
    """A forked child: system_metrics' process metrics read this process, not the parent."""
    instrumentor = sys.modules.get("opentelemetry.instrumentation.system_metrics")
    if instrumentor is None:
        return
    singleton = getattr(instrumentor.SystemMetricsInstrumentor, "_instance", None)
    if singleton is not None and hasattr(singleton, "_proc"):
        singleton._proc = importlib.import_module("psutil").Process(os.getpid())


def _observation(value: float, attributes: dict[str, Any] | None = None) -> Any:
    from opentelemetry.metrics import Observation

    return Observation(value, attributes)


def _cpu_time(options: Any) -> Iterator[Any]:
    times = os.times()
    yield _observation(times.user, {"cpu.mode": "user"})
    yield _observation(times.system, {"cpu.mode": "system"})


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _memory(options: Any) -> Iterator[Any]:
    try:
        with open("/proc/self/statm", "rb") as statm:
            yield _observation(int(statm.read().split()[1]) * _PAGE_SIZE)
            return
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        yield _observation(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere
    except (ImportError, OSError):
        return


def _threads(options: Any) -> Iterator[Any]:
    yield _observation(threading.active_count())


def _gc(key: str) -> Any:
    def observe(options: Any) -> Iterator[Any]:
        for generation, stats in enumerate(gc.get_stats()):
            yield _observation(stats.get(key, 0), {"cpython.gc.generation": generation})

    return observe
