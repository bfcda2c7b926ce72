"""OpenTelemetry's own variables that the agent's SDK reads, validated with the agent's contract.

OpenTelemetry reads these itself (the batch processor, span limits, the sampler, the propagators); a
value it cannot use makes it raise deep inside set-up, which would turn tracing off. So the agent
checks them first, the way it checks its own settings: the launcher exits 2 naming the variable, the
value and what is accepted; inside a running app the problem is reported once and the variable is
taken out of the process's environment (or rewritten without the entries that are not accepted), so
OpenTelemetry uses its default and the children started afterwards inherit the corrected value.

Stdlib only; the entry-point groups are read only when a value names something not built in.
"""

from __future__ import annotations

from logfire_run.agent.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_BUILTIN_PROPAGATORS = ("tracecontext", "baggage", "none")
_BUILTIN_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def entry_point_names(group: str) -> list[str]:
    """The names installed in an entry-point group (reads every distribution's metadata: not cheap)."""
    from importlib.metadata import entry_points

    try:
        return sorted({entry.name for entry in entry_points(group=group)})
    except Exception:
        return []


def _whole_number(minimum: int) -> Callable[[str], object]:
    def check(raw: str) -> object:
        value = raw.strip()
        if not value.lstrip("-").isdigit() or int(value) < minimum:
            what = "positive" if minimum > 0 else "non-negative"
            raise ConfigError(f"invalid value {raw!r}: use a {what} whole number")
        return int(value)

    return check


def _propagators(raw: str) -> object:
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in _BUILTIN_PROPAGATORS]
    if unknown:
        installed = entry_point_names("opentelemetry_propagator")
        unknown = [name for name in unknown if name not in installed]
        if unknown:
            kept = [name for name in names if name not in unknown]
            raise ConfigError(
                f"unknown propagator {', '.join(map(repr, unknown))}: use a comma-separated list of "
                f"{', '.join(sorted(set(installed) | set(_BUILTIN_PROPAGATORS)))} "
                "(others come from packages that provide an opentelemetry_propagator entry point)",
                usable_raw=",".join(kept) or None,
            )
    return names


def _sampler(raw: str) -> object:
    value = raw.strip().lower()
    if value in _BUILTIN_SAMPLERS:
        return value
    installed = entry_point_names("opentelemetry_traces_sampler")
    if raw.strip() in installed:
        return raw.strip()
    # The SDK registers the built-in samplers as entry points too: name each one once.
    known = list(_BUILTIN_SAMPLERS) + sorted(set(installed) - set(_BUILTIN_SAMPLERS))
    raise ConfigError(f"unknown sampler {raw!r}: use one of {', '.join(known)}")


def _resource_attributes(raw: str) -> object:
    # OpenTelemetry splits on "," then on the first "=", and logs an unprefixed warning for each member
    # it cannot use (no "=", or an empty key). Those members are named here and left out of the rewrite.
    members = raw.split(",")
    bad = [member for member in members if "=" not in member or not member.partition("=")[0].strip()]
    if bad:
        kept = [member for member in members if member not in bad]
        raise ConfigError(
            f"invalid member {', '.join(repr(member) for member in bad)}: use comma-separated key=value "
            "pairs with non-empty keys (percent-encode ',' and '=' in values)",
            usable_raw=",".join(kept) or None,
        )
    return raw


def _sampler_ratio(raw: str) -> object:
    try:
        ratio = float(raw.strip())
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"invalid sampling ratio {raw!r}: use a number from 0 to 1")
    return ratio


def _exporters(signal: str, builtin: tuple[str, ...], group: str) -> Callable[[str], object]:
    """OTEL_{signal}_EXPORTER: a comma list of built-in names and installed entry points' names."""

    def check(raw: str) -> object:
        names = list(dict.fromkeys(name.strip().lower() for name in raw.split(",") if name.strip()))
        unknown = [name for name in names if name not in builtin]
        if unknown and group:
            installed = entry_point_names(group)
            unknown = [name for name in unknown if name not in installed]
        if unknown:
            kept = [name for name in names if name not in unknown]
            others = f", or the name of an installed exporter ({group} entry point)" if group else ""
            raise ConfigError(
                f"unknown {signal} exporter {', '.join(map(repr, unknown))}: use a comma-separated list "
                f"of {', '.join(builtin)}{others}",
                usable_raw=",".join(kept) or None,
            )
        if "none" in names and len(names) > 1:
            raise ConfigError(f"{signal} exporter 'none' cannot be combined with others", usable_raw="none")
        return names

    return check


def _one_of(what: str, accepted: tuple[str, ...], *, fold: bool) -> Callable[[str], object]:
    def check(raw: str) -> object:
        value = raw.strip().lower() if fold else raw.strip()
        if value not in accepted:
            raise ConfigError(f"invalid {what} {raw!r}: use one of {', '.join(accepted)}")
        return value

    return check


_NON_NEGATIVE = _whole_number(0)
_POSITIVE = _whole_number(1)

#: variable -> its check (returns the parsed value, raises ConfigError).
CHECKS: dict[str, Callable[[str], object]] = {
    "OTEL_BSP_MAX_QUEUE_SIZE": _POSITIVE,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": _POSITIVE,
    "OTEL_BSP_SCHEDULE_DELAY": _POSITIVE,
    "OTEL_BSP_EXPORT_TIMEOUT": _POSITIVE,
    "OTEL_ATTRIBUTE_COUNT_LIMIT": _NON_NEGATIVE,
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": _NON_NEGATIVE,
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": _NON_NEGATIVE,
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": _NON_NEGATIVE,
    "OTEL_SPAN_EVENT_COUNT_LIMIT": _NON_NEGATIVE,
    "OTEL_SPAN_LINK_COUNT_LIMIT": _NON_NEGATIVE,
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": _NON_NEGATIVE,
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": _NON_NEGATIVE,
    "OTEL_PROPAGATORS": _propagators,
    "OTEL_TRACES_SAMPLER": _sampler,
    "OTEL_RESOURCE_ATTRIBUTES": _resource_attributes,
    # Metrics and logs (docs/metrics.md, docs/logs.md).
    "OTEL_METRICS_EXPORTER": _exporters(
        "metric", ("store", "otlp", "console", "none"), "opentelemetry_metrics_exporter"
    ),
    "OTEL_LOGS_EXPORTER": _exporters("log", ("otlp", "console", "none"), ""),
    "OTEL_METRIC_EXPORT_INTERVAL": _POSITIVE,
    "OTEL_METRIC_EXPORT_TIMEOUT": _POSITIVE,
    # OpenTelemetry's exporter upper-cases the temporality, and compares the aggregation as given.
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": _one_of(
        "temporality preference", ("cumulative", "delta", "lowmemory"), fold=True
    ),
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": _one_of(
        "histogram aggregation",
        ("explicit_bucket_histogram", "base2_exponential_bucket_histogram"),
        fold=False,
    ),
    "OTEL_METRICS_EXEMPLAR_FILTER": _one_of(
        "exemplar filter", ("always_on", "always_off", "trace_based"), fold=True
    ),
}

_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


def validate(environ: Mapping[str, str]) -> list[ConfigError]:
    """One error per variable of `CHECKS` (and the sampler argument) whose value is not accepted."""
    errors: list[ConfigError] = []
    values: dict[str, object] = {}
    for variable, check in CHECKS.items():
        raw = environ.get(variable)
        if raw is None or not raw.strip():
            continue
        try:
            values[variable] = check(raw)
        except ConfigError as error:
            errors.append(ConfigError(f"{variable}: {error}", variable=variable, usable_raw=error.usable_raw))
    queue = values.get("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    batch = values.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
    if isinstance(batch, int) and isinstance(queue, int) and batch > queue:
        errors.append(
            ConfigError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: {batch} is larger than the queue "
                f"(OTEL_BSP_MAX_QUEUE_SIZE={queue}): use at most {queue}",
                variable="OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            )
        )
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "")
    if argument.strip() and values.get("OTEL_TRACES_SAMPLER") in _RATIO_SAMPLERS:
        try:
            _sampler_ratio(argument)
        except ConfigError as error:
            errors.append(
                ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {error}", variable="OTEL_TRACES_SAMPLER_ARG")
            )
    return errors
