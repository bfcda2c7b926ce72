"""`logfire-run --info`: the resolved configuration, where each value came from, and the instrumentors.

Runs in the launcher, never inside the app, so it may take its time: it rescans the entry points
instead of trusting the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from logfire_run.agent.config import Config
from logfire_run.agent.service_names import derive
from logfire_run.agent.settings import (
    SETTINGS,
    SETTINGS_BY_NAME,
    default_service_name,
    resolve_service_name,
)
from logfire_run.instrumentors.loader import GROUPS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from logfire_run.instrumentors.loader import EntryPointRecord


def print_info(
    config: Config,
    flag_settings: dict[str, str],
    env: Mapping[str, str] | None = None,
    command: Sequence[str] = (),
) -> int:
    """Print the configuration; with a `command` (`--info gunicorn shopapp:app`), the service name that
    command's processes would get, and where it comes from."""
    from logfire_run._version import __version__
    from logfire_run.instrumentors import loader

    environ = os.environ if env is None else env
    out = sys.stdout
    out.write(f"logfire-run {__version__} on Python {sys.version.split()[0]} ({sys.executable})\n\n")
    out.write("configuration:\n")
    for setting in SETTINGS:
        source = config.sources.get(setting.name, "default")
        if setting.env in flag_settings:
            source = f"flag {setting.flag}"
        if setting.per_process and getattr(config, setting.name) == setting.unset:
            shown = f"({setting.default} in each process)"
            if setting.name == "service_name" and command:
                shown, source = _derived_service_name(command, environ)
        else:
            shown = setting.kind.show(config.effective(setting.name, environ))
        if setting.name == "exporters" and source == "default":
            source = _default_exporters_source(environ)
        out.write(f"  {setting.name:<27} {shown:<40} {source}\n")
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        out.write("  OTEL_SDK_DISABLED=true: the agent does nothing\n")
    out.write("\ndestinations (where spans go):\n")
    for name, rows in destination_rows(config, environ):
        for index, (label, value, origin) in enumerate(rows):
            out.write(f"  {name if index == 0 else '':<9} {label:<19} {value:<40} {origin}\n")
    level = SETTINGS_BY_NAME["log_level"].kind.show(config.log_level)
    captured = "none captured" if config.log_level is None else f"{level} and up"
    out.write(f"\nlog records ({captured}; see docs/logs.md):\n")
    for name, label, value, origin in log_destination_rows(config, environ):
        out.write(f"  {name:<9} {label:<19} {value:<40} {origin}\n")
    out.write("\nmetrics (see docs/metrics.md):\n")
    for name, label, value, origin in metric_destination_rows(config, environ):
        out.write(f"  {name:<9} {label:<19} {value:<40} {origin}\n")
    out.write(
        "\ninstrumentors (entry points; each loads when your code first imports its target; the SDK\n"
        "starts at the first of those imports that says so, or when your code first asks for a tracer):\n"
    )
    instrumentors = loader.discover(use_cache=False)
    loader.note_installed(instrumentors)
    disabled_by = _disabled_source(config, flag_settings)
    replaced = loader.superseded(instrumentors, config)
    for instrumentor in sorted(instrumentors, key=lambda item: (item.name, item.group != GROUPS[1])):
        if _library_missing(instrumentor):
            continue  # httpx2, registered by the httpx instrumentation beside httpx: nothing to show
        state, detail = _state(instrumentor, config, disabled_by, replaced)
        out.write(f"  {instrumentor.name:<16} {state:<9} {detail}\n")
    if not instrumentors:
        out.write("  none found: pip install 'logfire-run[http,celery]'\n")
    missing = libraries_without_instrumentor({_normalize(item.dist) for item in instrumentors})
    required = required_by_others()
    recommended = [row for row in missing if _normalize(row[0]) not in required]
    if recommended:
        out.write("\ninstalled libraries without an instrumentor:\n")
        for library, version, package in recommended:
            out.write(f"  {library + ' ' + version:<28} pip install '{package}'\n")
    left_out = [row[0] for row in missing if _normalize(row[0]) in required]
    if left_out:
        # A dependency of another package is that package's business (click of Flask and Celery,
        # grpcio of the gRPC exporter): its instrumentor would trace the tool, not the app.
        because = "; ".join(
            f"{name} by {', '.join(sorted(required[_normalize(name)])[:3])}" for name in left_out
        )
        out.write(f"\nnot recommended, installed as another package's dependency: {because}\n")
    return 0


def _derived_service_name(command: Sequence[str], environ: Mapping[str, str]) -> tuple[str, str]:
    value = resolve_service_name(None, environ)
    if value != default_service_name():  # service.name in OTEL_RESOURCE_ATTRIBUTES
        return str(value), "env OTEL_RESOURCE_ATTRIBUTES"
    name, origin = derive(command, environ)
    return name, f"derived: {origin}"


def _default_exporters_source(environ: Mapping[str, str]) -> str:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if environ.get(variable, "").strip():
            return f"default: otlp, because {variable} is set"
    return "default"


def destination_rows(
    config: Config, environ: Mapping[str, str]
) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(exporter, [(what, value, source)]) for each exporter in effect; header values never shown."""
    from logfire_run.agent import destination

    result: list[tuple[str, list[tuple[str, str, str]]]] = []
    exporters = config.effective("exporters", environ)
    for name in exporters if isinstance(exporters, tuple) else ():
        if name == "otlp":
            where, _ = destination.resolve(
                "traces",
                environ,
                (config.resolved_otlp_protocol(), config.sources.get("otlp_protocol", "default")),
            )
            src = where.sources
            rows = [
                ("endpoint", where.endpoint, src["endpoint"]),
                ("protocol", where.protocol, src["protocol"]),
                ("compression", where.compression, src["compression"]),
                ("timeout", f"{where.timeout_millis} ms", src["timeout_millis"]),
                ("headers", ", ".join(sorted(where.headers)) or "-", src["headers"]),
            ]
            if where.protocol == "grpc":
                rows.append(("tls", "off (plaintext)" if where.insecure else "on", src["insecure"]))
            elif where.endpoint.startswith("https:"):
                rows.append(("tls", "on", "the https scheme"))
            for label, attribute in (
                ("certificate", "certificate"),
                ("client certificate", "client_certificate"),
                ("client key", "client_key"),
            ):
                value = getattr(where, attribute)
                if value:
                    rows.append((label, value, src[attribute]))
            missing = destination.exporter_missing(where.protocol)
            if missing:
                rows.append(("not installed", missing, ""))
            result.append((name, rows))
        elif name == "store":
            result.append(
                (name, [("path", config.resolved_store_path(), config.sources.get("store_path", ""))])
            )
        elif name == "console":
            result.append((name, [("writes to", "stderr", "")]))
        elif name != "none":
            result.append((name, [("entry point", _exporter_entry_point(name), "")]))
    if not result:
        result.append(("none", [("", "spans are not exported", "")]))
    return result


def log_destination_rows(config: Config, environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(exporter, what, value, source) for where captured log records go."""
    from logfire_run.agent.export import logs

    if config.log_level is None:
        return [("none", "", "nothing is captured (the ids are still on every record)", "")]
    rows: list[tuple[str, str, str, str]] = []
    for name in logs.log_exporter_names(config, environ):
        if name == "store":
            rows.append((name, "logs table of", config.resolved_store_path(), "with the spans"))
        elif name == "console":
            rows.append((name, "writes to", "stderr", "env OTEL_LOGS_EXPORTER"))
        else:
            where = logs.otlp_log_destination(config, environ)
            rows.append((name, "endpoint", where.endpoint, where.sources["endpoint"]))
            rows.append(("", "protocol", where.protocol, where.sources["protocol"]))
    if not rows and logs.only_traces_endpoint(environ):
        return [("none", "", "log records are not exported: only the traces endpoint is set", "")]
    return rows or [("none", "", "log records are not exported", "")]


def metric_destination_rows(config: Config, environ: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(exporter, what, value, source) for where metrics go, and how often."""
    from logfire_run.agent.export import metrics

    chosen = environ.get("OTEL_METRICS_EXPORTER", "").strip()
    source = "env OTEL_METRICS_EXPORTER" if chosen else "with the spans"
    rows: list[tuple[str, str, str, str]] = []
    for name in metrics.metric_exporter_names(config, environ):
        if name == "store":
            rows.append((name, "metrics table of", config.resolved_store_path(), source))
        elif name == "console":
            rows.append((name, "writes to", "stderr", source))
        elif name == "otlp":
            where = metrics.otlp_metric_destination(config, environ)
            temporality = environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "").strip()
            rows.append((name, "endpoint", where.endpoint, where.sources["endpoint"]))
            rows.append(("", "protocol", where.protocol, where.sources["protocol"]))
            rows.append(
                (
                    "",
                    "temporality",
                    temporality.lower() or "cumulative",
                    "env OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE" if temporality else "default",
                )
            )
        else:
            rows.append(
                (
                    name,
                    "entry point",
                    _exporter_entry_point(name, metrics.METRIC_EXPORTER_ENTRY_POINT_GROUP),
                    source,
                )
            )
    if not rows:
        return [("none", "", "metrics are not exported", source)]
    interval = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    rows.append(
        (
            "",
            "every",
            f"{int(interval) / 1000:g} s and at exit" if interval.isdigit() else "60 s and at exit",
            "env OTEL_METRIC_EXPORT_INTERVAL" if interval else "default",
        )
    )
    return rows


def _exporter_entry_point(name: str, group: str = "") -> str:
    from importlib.metadata import entry_points

    from logfire_run.agent.settings import EXPORTER_ENTRY_POINT_GROUP

    for entry in entry_points(group=group or EXPORTER_ENTRY_POINT_GROUP):
        if entry.name == name:
            dist = getattr(entry, "dist", None)
            origin = f" ({dist.name} {dist.version})" if dist is not None else ""
            return f"{entry.value}{origin}"
    return "not installed"


def check_destinations(config: Config, env: Mapping[str, str]) -> int:
    """`--info --check`: one test span to each exporter, and one test log record to the OTLP logs
    destination; says, in plain words, whether each was accepted.

    Exit status 0 when every destination accepted it, 1 otherwise.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from logfire_run.agent.destination import explain
    from logfire_run.agent.export import exporters as exporters_module

    os.environ.update(env)  # the exporters read the environment the command would run with
    out = sys.stdout
    service = config.resolved_service_name()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    with provider.get_tracer("logfire-run").start_as_current_span("logfire-run check") as span:
        span.set_attribute("logfire_run.check", True)
    test_span = span
    problems = _ExportLog()
    logger = logging.getLogger("opentelemetry")
    logger.addHandler(problems)
    failed = 0
    try:
        for name in config.resolved_exporters():
            if name == "none":
                continue
            where = _describe(name, config)
            problems.messages.clear()
            try:
                exporter = exporters_module.build_exporter_or_raise(name, config)
                result = exporter.export([test_span])  # type: ignore[list-item]
                exporter.shutdown()
            except Exception as error:
                failed += 1
                out.write(f"{name}: could not send to {where}: {explain(str(error))}\n")
                continue
            if result is SpanExportResult.SUCCESS:
                out.write(f"{name}: {where} accepted a test span (service {service!r})\n")
            else:
                failed += 1
                reason = (
                    "; ".join(explain(message) for message in problems.messages[-2:]) or "no reason given"
                )
                out.write(f"{name}: {where} did not accept the test span: {reason}\n")
        failed += _check_logs(config, provider.resource, test_span, problems)
    finally:
        logger.removeHandler(problems)
    return 1 if failed else 0


def _check_logs(config: Config, resource: object, test_span: object, problems: _ExportLog) -> int:
    """One test log record to the OTLP logs destination, if records go there; 1 when not accepted."""
    import time

    from logfire_run.agent.destination import explain
    from logfire_run.agent.export import logs

    if "otlp" not in logs.log_exporter_names(config):
        return 0
    where = logs.otlp_log_destination(config)
    label = f"{where.endpoint} ({where.protocol})"
    out = sys.stdout
    context = test_span.get_span_context()  # type: ignore[attr-defined]
    record = (time.time_ns(), 20, "INFO", "logfire-run", "logfire-run check", None,
              context.trace_id, context.span_id, 1, ("", 0, "", "MainThread"))  # fmt: skip
    problems.messages.clear()
    try:
        exporter = logs.otlp_log_exporter(config, lambda: resource)
        taken = exporter.export([record])
        exporter.shutdown()
    except Exception as error:
        out.write(f"otlp logs: could not send to {label}: {explain(str(error), 'logs')}\n")
        return 1
    if taken:
        out.write(f"otlp logs: {label} accepted a test log record\n")
        return 0
    reason = "; ".join(explain(message, "logs") for message in problems.messages[-2:]) or "no reason given"
    out.write(f"otlp logs: {label} did not accept the test log record: {reason}\n")
    return 1


def _describe(name: str, config: Config) -> str:
    if name == "otlp":
        from logfire_run.agent.export.exporters import otlp_destination

        where = otlp_destination(config)
        return f"{where.endpoint} ({where.protocol})"
    if name == "store":
        return config.resolved_store_path()
    return name


class _ExportLog(logging.Handler):
    """Collects what the exporters log while the test span is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


def _disabled_source(config: Config, flag_settings: dict[str, str]) -> str:
    if "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS" in flag_settings:
        return "--disable"
    source = config.sources.get("disabled_instrumentations", "")
    return source.removeprefix("env ") or "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


def _state(
    instrumentor: EntryPointRecord, config: Config, disabled_by: str, replaced: dict[str, str]
) -> tuple[str, str]:
    """(state, why) of one instrumentor: enabled, disabled (by which setting), replaced or skipped."""
    from importlib.util import find_spec

    from logfire_run.instrumentors import loader

    origin = f"({instrumentor.dist} {instrumentor.version})"
    if config.instrumentation_disabled(instrumentor.name):
        how = "'*'" if "*" in config.disabled_instrumentations else "its name"
        return "disabled", f"by {disabled_by} ({how})  {origin}"
    replacement = replaced.get(instrumentor.value)
    if replacement is not None:
        # One of ours does the same and more (or corrects it and runs it): both would patch the same.
        return "replaced", f"by logfire-run's {replacement}  {origin}"
    try:
        conflict = loader.version_conflict(instrumentor)
    except Exception as error:
        conflict = f"its requirements could not be checked ({error})"
    if conflict:
        return "skipped", f"{conflict}  {origin}"
    if not instrumentor.modules:
        return "enabled", f"when the SDK starts (no target library)  {origin}"
    targets = []
    for module in instrumentor.modules:
        try:
            installed = find_spec(module) is not None
        except (ImportError, ValueError):
            installed = False
        targets.append(module if installed else f"{module} (not installed)")
    if any(loader.starts_sdk(instrumentor, module) for module in instrumentor.modules):
        when = f"on import of {', '.join(targets)}, which starts the SDK"
    else:
        when = f"once the SDK is up, if {' or '.join(targets)} is imported"
    return "enabled", f"{when}  {origin}"


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _library_missing(instrumentor: EntryPointRecord) -> bool:
    """An OpenTelemetry entry point named after a library that is not installed (`httpx2` of the httpx
    instrumentation, whose other entry point is `httpx`): it can never run here."""
    from importlib import metadata

    if instrumentor.group != GROUPS[0] or not (instrumentor.requires or instrumentor.requires_any):
        return False
    named = [
        text
        for text in (*instrumentor.requires, *instrumentor.requires_any)
        if _requirement_name(text) == _normalize(instrumentor.name)
    ]
    if not named:
        return False
    try:
        metadata.version(instrumentor.name)
    except metadata.PackageNotFoundError:
        return True
    return False


def _requirement_name(text: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return _normalize(Requirement(text).name)
    except InvalidRequirement:
        return ""


def required_by_others() -> dict[str, set[str]]:
    """Normalized distribution name -> the installed distributions that require it.

    Requirements of an extra do not count: which extras were installed is not recorded, and counting
    them all would count nearly everything (a test tool's optional `redis` extra, say)."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    required: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        for line in dist.requires or ():
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            marker = requirement.marker
            if marker is not None and not marker.evaluate({"extra": ""}):
                continue
            required.setdefault(_normalize(requirement.name), set()).add(name)
    return required


#: Libraries OpenTelemetry's list names only beside another one (pydantic for tortoise-orm): having them
#: installed says nothing about needing that instrumentation.
_COMPANIONS = frozenset({"pydantic"})


def libraries_without_instrumentor(installed_instrumentors: set[str]) -> list[tuple[str, str, str]]:
    """(library, installed version, instrumentation requirement) for each installed library that
    OpenTelemetry has an instrumentation for, when that instrumentation is not installed.

    The list of known libraries is the one `opentelemetry-bootstrap` uses (its version pins match the
    installed opentelemetry-instrumentation). An instrumentation installed without an entry point of
    its own (the ASGI and WSGI middlewares, which the framework instrumentors use) counts as installed.
    """
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        from opentelemetry.instrumentation.bootstrap_gen import libraries
    except ImportError:
        return []
    missing: dict[str, tuple[str, str, str]] = {}
    for entry in libraries:
        try:
            library = Requirement(entry["library"])
            instrumentation = Requirement(entry["instrumentation"])
        except (InvalidRequirement, KeyError, TypeError):
            continue
        if _normalize(instrumentation.name) in installed_instrumentors or library.name in _COMPANIONS:
            continue
        try:
            metadata.version(instrumentation.name)
            continue
        except metadata.PackageNotFoundError:
            pass
        try:
            version = metadata.version(library.name)
        except metadata.PackageNotFoundError:
            continue
        if library.specifier and not library.specifier.contains(version, prereleases=True):
            continue
        missing.setdefault(str(instrumentation), (library.name, version, str(instrumentation)))
    return sorted(missing.values())
