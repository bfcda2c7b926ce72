"""Metrics: OpenTelemetry's MeterProvider, with readers and exporters that belong to one process each.

`start_metrics(config, resource)` builds the SDK's `MeterProvider` with one `ExportingReader` per
metric exporter in effect and sets it as the global meter provider: the instruments of the
instrumentors (HTTP server and client durations, active requests, Celery task run times) and the
runtime metrics (`instrumentors/runtime_metrics.py`) record into it without any code.

Exporters (`metric_exporter_names`): `OTEL_METRICS_EXPORTER`, a comma list of `otlp` (OpenTelemetry's
OTLP metric exporter over HTTP or gRPC, with the endpoint rules of `destination.resolve("metrics")`),
`console` (stderr), `store` (the local store's `metrics` table), `none`, or the name of an installed
`opentelemetry_metrics_exporter` entry point. Unset, metrics go where spans go (`store`, `otlp`).
Temporality and histogram aggregation are OpenTelemetry's variables, read by its OTLP exporter; the
store takes deltas of counters and histograms, with explicit buckets, whatever they say.

One thread ("logfire-run metrics"), started with the SDK, collects every reader every
`OTEL_METRIC_EXPORT_INTERVAL` milliseconds (60000); the exit flushes (`process.exits`) collect once
more, within the exit budget, at interpreter exit, SIGTERM and `os._exit`.

A forked child (a gunicorn worker, a Celery prefork child, a pool worker) is a process of its own
(`after_fork_in_child`): the provider's accumulated data is dropped (each reader gets fresh storage,
so the child reports what it measured since the fork, cumulative or delta), each reader gets a lock
of its own and builds its exporter afresh on its first export (the parent's HTTP session or gRPC
channel is never used, nor closed, in the child), and the thread starts again. The resource's
`service.instance.id` and `process.pid` are the child's (`process.sdk`). A fork waits, a bounded
time, for a collection in flight, as it does for span exports.

Imported with the SDK, never at start-up.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import metrics as metrics_api
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource

from logfire_run.agent import destination, report
from logfire_run.agent.config import Config
from logfire_run.agent.export.delivery import exporting
from logfire_run.agent.export.exporters import ForkGuard
from logfire_run.agent.patching import Patches, applied

__all__ = [
    "METRIC_EXPORTER_ENTRY_POINT_GROUP",
    "ExportingReader",
    "Metrics",
    "StoreMetricExporter",
    "metric_exporter_names",
    "metric_rows",
    "start_metrics",
]

#: Where metric exporters of other packages are found (`prometheus`, ...).
METRIC_EXPORTER_ENTRY_POINT_GROUP = "opentelemetry_metrics_exporter"
_DEFAULT_INTERVAL_MILLIS = 60_000
_DEFAULT_TIMEOUT_MILLIS = 30_000


def _millis(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()  # validated by `otel_env`: a bad value was set aside
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def metric_exporter_names(config: Config, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The metric exporters in effect: OTEL_METRICS_EXPORTER's, else the span exporters' store and otlp.

    Spans sent to an endpoint of their own (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT alone) say nothing of
    where metrics go: OTLP metrics then need OTEL_METRICS_EXPORTER, or an endpoint that is theirs too
    (the general one, or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT), rather than going to localhost.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    if raw:
        names = dict.fromkeys(name.strip() for name in raw.split(",") if name.strip())
        return tuple(name for name in names if name != "none")
    traces_only = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() and not any(
        environ.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )
    kept = ("store",) if traces_only else ("store", "otlp")
    return tuple(name for name in config.resolved_exporters() if name in kept)


def otlp_metric_destination(config: Config, environ: Mapping[str, str] | None = None) -> Any:
    """Where OTLP metrics go: the metrics variables, else the general ones, else the spans' protocol."""
    return destination.signal_destination(
        "metrics",
        os.environ if environ is None else environ,
        (config.resolved_otlp_protocol(), config.sources.get("otlp_protocol", "default")),
    )


# The store's exporter


#: Counters and histograms as deltas (what happened in each interval, which the viewer adds up over
#: a window), up-down counters and gauges as their current value.
STORE_TEMPORALITY: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
}


class StoreMetricExporter(MetricExporter):
    """Writes each collection into the store's `metrics` table, one row per point (`metric_rows`)."""

    def __init__(self, path: str) -> None:
        from logfire_run.agent.export.store import StoreExporter

        super().__init__(
            preferred_temporality=dict(STORE_TEMPORALITY),
            preferred_aggregation={Histogram: ExplicitBucketHistogramAggregation()},
        )
        # The span exporter's connection handling (opening, forks, retries, pruning), shared.
        self._store = StoreExporter(path)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        rows = metric_rows(metrics_data, os.getpid())
        return MetricExportResult.SUCCESS if self._store.export_metrics(rows) else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True  # every export is committed before it returns

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._store.shutdown()


def _encode(value: Any) -> str | None:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False) if value else None


def metric_rows(data: MetricsData, pid: int) -> list[tuple[Any, ...]]:
    """A collection as rows of the store's `metrics` table (`store_format.METRIC_COLUMNS`)."""
    rows: list[tuple[Any, ...]] = []
    for resource_metrics in data.resource_metrics:
        service = str(resource_metrics.resource.attributes.get("service.name", ""))
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope.name if scope_metrics.scope is not None else None
            for metric in scope_metrics.metrics:
                point_data = metric.data
                kind = type(point_data).__name__.lower()  # sum, gauge, histogram, exponentialhistogram
                temporality = getattr(
                    point_data, "aggregation_temporality", AggregationTemporality.CUMULATIVE
                )
                temporality_name = "delta" if temporality == AggregationTemporality.DELTA else "cumulative"
                for point in point_data.data_points:
                    head = (
                        point.time_unix_nano,
                        getattr(point, "start_time_unix_nano", None) or point.time_unix_nano,
                        metric.name,
                        kind,
                        temporality_name,
                        metric.unit or None,
                        scope,
                        service,
                        pid,
                        _encode(dict(point.attributes or {})),
                    )
                    if hasattr(point, "value"):
                        rows.append((*head, point.value, None, None, None, None, None, None))
                    else:
                        bounds = list(getattr(point, "explicit_bounds", None) or ())
                        counts = list(getattr(point, "bucket_counts", None) or ())
                        rows.append(
                            (
                                *head,
                                None,
                                point.count,
                                point.sum,
                                point.min,
                                point.max,
                                _encode(bounds) if counts else None,
                                _encode(counts) if counts else None,
                            )
                        )
    return rows


# Building exporters


def build_metric_exporter(name: str, config: Config) -> MetricExporter | MetricReader:
    """The metric exporter called `name` (an entry point may give a reader instead); raises on failure."""
    if name == "store":
        return StoreMetricExporter(config.resolved_store_path())
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter(out=sys.stderr)
    if name == "otlp":
        return build_otlp_metric_exporter(config)
    return _entry_point_exporter(name)


def build_otlp_metric_exporter(config: Config) -> MetricExporter:
    """OpenTelemetry's own OTLP metric exporter for the metrics destination, every value passed explicitly
    (temporality and histogram aggregation: OpenTelemetry's variables, read by the exporter)."""
    from logfire_run.agent.export.exporters import otlp_exporter_options

    where = otlp_metric_destination(config)
    missing = destination.exporter_missing(where.protocol)
    if missing is not None:
        raise ImportError(missing)
    if where.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        return Grpc(**otlp_exporter_options(where))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http(**otlp_exporter_options(where))


def _entry_point_exporter(name: str) -> MetricExporter | MetricReader:
    from importlib.metadata import entry_points

    for entry in entry_points(group=METRIC_EXPORTER_ENTRY_POINT_GROUP):
        if entry.name == name:
            made = entry.load()()
            if not isinstance(made, (MetricExporter, MetricReader)):
                raise TypeError(f"{entry.value} made neither a MetricExporter nor a MetricReader")
            return made
    raise ImportError(f"no installed package provides the metric exporter {name!r}")


# The readers


#: Exporters a forked child inherited: never used, never shut down there (their connections are the parent's).
_INHERITED: list[MetricExporter] = []


class ExportingReader(MetricReader):
    """Collects into one exporter of this process, one collection at a time; `Metrics` says when.

    The exporter is built again, by `build`, on the first export in a forked child (connections of
    its own). Exports run under a `ForkGuard`: a fork waits for an import in progress, never for the
    network.
    """

    def __init__(self, name: str, build: Callable[[], MetricExporter]) -> None:
        exporter = build()
        super().__init__(
            preferred_temporality=getattr(exporter, "_preferred_temporality", None),
            preferred_aggregation=getattr(exporter, "_preferred_aggregation", None),
        )
        self.name = name
        self._build = build
        self._exporter: MetricExporter | None = exporter
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._guard = ForkGuard()
        #: Collections whose export failed in this process.
        self.refused = 0
        #: A collection is being exported now (counted as unsent if the process exits meanwhile).
        self.in_flight = False

    def exporter(self) -> MetricExporter:
        """This process's exporter, built now in a forked child."""
        if self._pid != os.getpid() or self._exporter is None:
            if self._exporter is not None:
                _INHERITED.append(self._exporter)
            self._exporter = None
            self._pid = os.getpid()
            self._exporter = self._build()
        return self._exporter

    def collect_now(self, timeout_millis: float) -> bool:
        """Collect and export once; False when another collection held on past `timeout_millis`."""
        if not self._lock.acquire(timeout=max(timeout_millis, 1) / 1000):
            return False
        try:
            self.in_flight = True
            self.collect(timeout_millis=timeout_millis)
            return True
        except Exception as error:  # a callback that raised or timed out: the next collection tries again
            report.debug(f"metrics collection for {self.name} failed ({type(error).__name__}: {error})")
            return False
        finally:
            self.in_flight = False
            self._lock.release()

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        exporter = self.exporter()
        # The exporter's HTTP client (requests) is instrumented too: the export must not become spans.
        with suppress_instrumentation(), exporting("metrics", self):
            result = self._guard.run(lambda: exporter.export(metrics_data, timeout_millis=timeout_millis))
        if result is not MetricExportResult.SUCCESS:
            self.refused += 1
            report.debug(f"metrics export to {self.name} failed")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.collect_now(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._exporter is not None and self._pid == os.getpid():
            self._exporter.shutdown(timeout_millis=timeout_millis)

    def before_fork(self) -> None:
        self._guard.before_fork()

    def after_fork_in_parent(self) -> None:
        self._guard.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        self._guard.after_fork_in_child()
        self.in_flight = False
        self.refused = 0
        self._lock = threading.Lock()  # a collection running in the parent's thread holds no lock here


class Metrics:
    """The process's MeterProvider, its readers, and the thread that collects them every interval."""

    def __init__(
        self, provider: MeterProvider, readers: Sequence[ExportingReader], names: Sequence[str]
    ) -> None:
        self.provider = provider
        self.readers = tuple(readers)
        self.names = tuple(names)
        self.interval = _millis("OTEL_METRIC_EXPORT_INTERVAL", _DEFAULT_INTERVAL_MILLIS) / 1000
        self.timeout_millis = _millis("OTEL_METRIC_EXPORT_TIMEOUT", _DEFAULT_TIMEOUT_MILLIS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart = False
        _all.add(self)

    def start(self) -> None:
        """The collecting thread: with the SDK (the caller blocks SIGTERM), and again in a forked child."""
        if not self.readers or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="logfire-run metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.collect(self.timeout_millis)

    def collect(self, timeout_millis: float) -> bool:
        """Collect and export every reader once."""
        return all([reader.collect_now(timeout_millis) for reader in self.readers])

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Collect and export once (the exit flushes' last collection).

        Not in a process that has measured nothing with a synchronous instrument since it started or
        forked (a pool worker that never served a request, one of a program's many short children):
        only runtime gauges would leave, each such exit paying a collection (the system metrics read
        /proc), an exporter and a connection for them. They leave with the periodic collections.
        """
        if not _measured(self.provider):
            return True
        return self.collect(timeout_millis)

    def unsent(self) -> int:
        """Readers whose collection is still being exported."""
        return sum(1 for reader in self.readers if reader.in_flight)

    def refused(self) -> int:
        """Collections whose export failed in this process (every reader)."""
        return sum(reader.refused for reader in self.readers)

    def shutdown(self) -> None:
        self._stop.set()
        self.collect(self.timeout_millis)
        for reader in self.readers:
            reader.shutdown()

    def before_fork(self) -> None:
        for reader in self.readers:
            reader.before_fork()

    def after_fork_in_parent(self) -> None:
        for reader in self.readers:
            reader.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        for reader in self.readers:
            reader.after_fork_in_child()
        _drop_accumulated(self.provider)
        self._stop = threading.Event()
        # The thread is started again in `restart_after_fork`, once `threading` has forgotten the
        # parent's threads (`process.fork`, step 5).
        self._restart, self._thread = self._thread is not None, None

    def restart_after_fork(self) -> None:
        restart, self._restart = self._restart, False
        if restart:
            self.start()


def _drop_accumulated(provider: MeterProvider) -> None:
    """Forget every point the parent measured: each reader's storage starts empty (and its lock free)."""
    consumer = getattr(provider, "_measurement_consumer", None)
    storages = getattr(consumer, "_reader_storages", None)
    try:
        from opentelemetry.sdk.metrics._internal.metric_reader_storage import MetricReaderStorage

        config = consumer._sdk_config  # type: ignore[union-attr]
        consumer._lock = threading.Lock()  # type: ignore[union-attr]
        consumer._reader_storages = {  # type: ignore[union-attr]
            reader: MetricReaderStorage(
                config, reader._instrument_class_temporality, reader._instrument_class_aggregation
            )
            for reader in storages  # type: ignore[union-attr]
        }
    except Exception as error:
        # An OpenTelemetry that keeps them elsewhere: its public way, a reader removed and added again.
        report.fallback(
            "metrics-fork", f"metric storage could not be reset ({type(error).__name__}: {error})"
        )
        for reader in list(getattr(provider, "_all_metric_readers", ())):
            try:
                provider.remove_metric_reader(reader)
                provider.add_metric_reader(reader)
            except Exception as inner:
                report.debug(f"metric reader not reset after fork ({type(inner).__name__}: {inner})")


def _measured(provider: MeterProvider) -> bool:
    """Whether a synchronous instrument recorded anything here since the storage was made (the
    storage of an observable instrument is made at collection)."""
    consumer = getattr(provider, "_measurement_consumer", None)
    storages = getattr(consumer, "_reader_storages", None)
    if not isinstance(storages, Mapping):
        return True  # an OpenTelemetry that keeps it elsewhere: collect, as if it had
    return any(getattr(storage, "_instrument_view_instrument_matches", True) for storage in storages.values())


#: Every Metrics of the process (one, unless the SDK was rebuilt), for the fork functions below.
_all: weakref.WeakSet[Metrics] = weakref.WeakSet()


# Two steps of every measurement in the SDK walk its attribute set recursively, value by value: the
# check that cleans it (`_clean_attribute_value`, when the Measurement is made) and the key that finds
# its aggregation (`_hash_attributes`: a tuple per attribute, sorted, type names included). For the
# sets instrumentors record, flat dicts of strings, numbers and booleans under non-empty string keys
# (three measurements per HTTP request: the duration histogram, the active-requests counter up and
# down), both have a shortcut here with the same outcome: the cleaned set is a copy of the dict, and
# the key is equal for equal sets and different for different ones (each value with its type: True,
# 1 and 1.0 stay apart; order does not count). Any other set takes the SDK's own way. The keys are
# only compared with each other, and both names are looked up by the SDK at each call.

_FLAT_TYPES = frozenset((str, int, float, bool, type(None)))
_patches = Patches("metric attributes")


def _use_fast_attribute_keys() -> None:
    try:
        from opentelemetry.sdk.metrics._internal import _view_instrument_match as matching
        from opentelemetry.sdk.metrics._internal import measurement
    except ImportError:
        return
    original_hash = getattr(matching, "_hash_attributes", None)
    original_clean = getattr(measurement, "_clean_attribute_value", None)
    if original_hash is None or original_clean is None:
        report.fallback("metric-attributes", "OpenTelemetry's metrics SDK has other attribute functions")
        return
    if applied(matching, "_hash_attributes", _patches.instrumentor):
        return
    flat = _FLAT_TYPES

    def hash_attributes(value: Any) -> Any:
        if type(value) is dict and flat.issuperset(map(type, value.values())):
            return frozenset(zip(value.items(), map(type, value.values()), strict=True))
        return original_hash(value)

    def clean_attribute_value(value: Any, max_string_value_length: Any) -> Any:
        if (
            type(value) is dict
            and max_string_value_length is None
            and flat.issuperset(map(type, value.values()))
            and all(type(key) is str and key for key in value)
        ):
            return dict(value)
        return original_clean(value, max_string_value_length)

    _patches.replace(matching, "_hash_attributes", hash_attributes)
    _patches.replace(measurement, "_clean_attribute_value", clean_attribute_value)


def current_meter_provider() -> object | None:
    """The meter provider set globally (ours or the app's), or None while none is."""
    # The API has no public "is one set?"; get_meter_provider() would hand back a proxy instead.
    return getattr(getattr(metrics_api, "_internal", None), "_METER_PROVIDER", None)


def start_metrics(config: Config, resource: Resource) -> Metrics | None:
    """Build the readers and the MeterProvider, set it globally, start collecting; None when the app
    set a meter provider of its own (it is kept) or no metric exporter is in effect (none is set)."""
    existing = current_meter_provider()
    if existing is not None:
        report.debug(f"the app set its own meter provider ({type(existing).__name__}); keeping it")
        return None
    names = metric_exporter_names(config)
    if not names:
        # No provider at all: the instrumentors' instruments stay OpenTelemetry's no-op ones, free.
        report.debug("metric exporters: none")
        return None
    readers: list[Any] = []
    for name in names:
        try:
            readers.append(_reader(name, config))
        except Exception as error:
            # The key of the span exporter's own line: the same cause is said once, not once per signal.
            report.problem(
                f"exporter:{name}",
                f"the {name} metric exporter could not be set up ({type(error).__name__}: {error}); "
                "metrics are not sent there, the app runs on",
            )
    report.debug(f"metric exporters: {', '.join(names) or 'none'}")
    _use_fast_attribute_keys()  # before the first measurement: every key of the provider is made alike
    # Not OpenTelemetry's own atexit shutdown: the exit flushes collect once more, within the budget.
    options: dict[str, Any] = {}
    if set(names) <= {"store"} and not os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip():
        # The store keeps no exemplars: none are sampled (OpenTelemetry's default samples them in
        # every sampled span, for exporters that send them).
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter

        options["exemplar_filter"] = AlwaysOffExemplarFilter()
    provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False, **options)
    metrics_api.set_meter_provider(provider)
    ours = [reader for reader in readers if isinstance(reader, ExportingReader)]
    pipeline = Metrics(provider, ours, names)
    pipeline.start()
    return pipeline


def _reader(name: str, config: Config) -> MetricReader:
    made = build_metric_exporter(name, config)
    if isinstance(made, MetricReader):
        return made  # an entry point's own reader (a pull exporter: Prometheus)
    first: list[MetricExporter] = [made]

    def build() -> MetricExporter:
        if first:
            return first.pop()
        built = build_metric_exporter(name, config)
        if not isinstance(built, MetricExporter):
            raise TypeError(f"the {name} metric exporter became a reader")
        return built

    return ExportingReader(name, build)


# What a fork does to the metrics (`process.fork` calls these, the only caller).


def before_fork() -> None:
    for pipeline in list(_all):
        pipeline.before_fork()


def after_fork_in_parent() -> None:
    for pipeline in list(_all):
        pipeline.after_fork_in_parent()


def after_fork_in_child() -> None:
    for pipeline in list(_all):
        pipeline.after_fork_in_child()


def restart_after_fork() -> None:
    for pipeline in list(_all):
        pipeline.restart_after_fork()
