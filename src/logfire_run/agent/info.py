"""`logfire-run --info`: the resolved configuration, where each value came from, and the instrumentors.

Runs in the launcher, never inside the app, so it may take its time: it rescans the entry points
instead of trusting the cache.
"""

from __future__ import annotations

import os
import sys

from logfire_run.agent.config import Config
from logfire_run.agent.settings import SETTINGS


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return ",".join(value) or "-"
    return str(value)


def print_info(config: Config, flag_settings: dict[str, str]) -> int:
    from logfire_run import __version__
    from logfire_run.instrumentors import loader

    out = sys.stdout
    out.write(f"logfire-run {__version__} on Python {sys.version.split()[0]} ({sys.executable})\n\n")
    out.write("configuration:\n")
    resolved = {
        "service_name": config.resolved_service_name() if config.service_name else None,
        "exporters": config.resolved_exporters(),
        "store_path": config.resolved_store_path(),
    }
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        source = config.sources.get(setting.name, "default")
        if setting.env in flag_settings:
            source = f"flag {setting.flag}"
        shown = _show(resolved.get(setting.name, value)) if value in (None, ()) else _show(value)
        if setting.name == "distributed_tracing" and value is None:
            shown = "warn"
        if setting.name == "service_name" and not config.service_name:
            shown = "(the script or module name of each process)"
        out.write(f"  {setting.name:<27} {shown:<40} {source}\n")
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        out.write("  OTEL_SDK_DISABLED=true: the agent does nothing\n")
    out.write("\ninstrumentors:\n")
    instrumentors = loader.discover(use_cache=False)
    enabled = {item.value for item in instrumentors if not config.instrumentation_disabled(item.name)}
    for instrumentor in sorted(instrumentors, key=lambda item: item.name):
        state = "disabled" if config.instrumentation_disabled(instrumentor.name) else "enabled"
        if state == "enabled" and loader.SUPERSEDED_BY.get(instrumentor.value) in enabled:
            state = "replaced"  # by one of ours that does the same and more (see loader.SUPERSEDED_BY)
        targets = ", ".join(instrumentor.modules)
        out.write(f"  {instrumentor.name:<24} {state:<9} on import of {targets}  ({instrumentor.dist})\n")
    if not instrumentors:
        out.write("  none found: pip install 'logfire-run[http,celery]'\n")
    return 0
