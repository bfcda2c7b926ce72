"""Instrumentor loading as a user meets it: version checks, disabling by name and `*`, a broken
instrumentor reported once while the others run, and what `logfire-run --info` says about all that.

Test instrumentors are real distributions: a `.dist-info` folder and a module in a directory put on
PYTHONPATH, found through their `opentelemetry_instrumentor` entry points like any installed package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import DEBUG_LINES, OtlpReceiver, agent_env, run_launcher

INSTRUMENTOR = """
import sys
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor


class {cls}(BaseInstrumentor):
    def instrumentation_dependencies(self):
        return []

    def _instrument(self, **kwargs):
        {body}

    def _uninstrument(self, **kwargs):
        pass
"""

APP = """
import sys
import requests

for _ in range(3):
    requests.get(sys.argv[1], timeout=10)
print("done")
"""


def _distribution(site: Path, name: str, version: str, requires: str = "", entry_point: str = "") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires:
        metadata += f"Requires-Dist: {requires}\n"
    (info / "METADATA").write_text(metadata)
    if entry_point:
        (info / "entry_points.txt").write_text(f"[opentelemetry_instrumentor]\n{entry_point}\n")


def _instrumentor(site: Path, module: str, cls: str, body: str, requires: str) -> None:
    (site / f"{module}.py").write_text(INSTRUMENTOR.format(cls=cls, body=body))
    entry = module.removesuffix("_instrumentor")
    _distribution(site, f"{module.replace('_', '-')}", "0.1", requires, f"{entry} = {module}:{cls}")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "site"
    directory.mkdir()
    (tmp_path / "app.py").write_text(APP)
    return directory


def _env(receiver: OtlpReceiver | None, tmp_path: Path, site: Path, **extra: str) -> dict[str, str]:
    # The test's own (so far empty) instrumentor cache comes with agent_env().
    return agent_env(receiver, PYTHONPATH=str(site), **extra)


def test_a_broken_instrumentor_is_reported_once_and_the_others_run(
    receiver: OtlpReceiver, tmp_path: Path, site: Path
) -> None:
    _instrumentor(
        site,
        "broken_instrumentor",
        "BrokenInstrumentor",
        "raise RuntimeError('deliberately broken')",
        "requests ; extra == 'instruments'",
    )
    result = run_launcher(
        ["python", str(tmp_path / "app.py"), receiver.endpoint],
        _env(receiver, tmp_path, site),
        expect_stderr=(
            "logfire-run: instrumentor broken (broken_instrumentor:BrokenInstrumentor) failed: "
            "RuntimeError: deliberately broken; the app runs on without it\n"
        ),
    )
    assert result.returncode == 0 and result.stdout == "done\n"
    spans = receiver.wait_count(3)
    assert [span.kind for span in spans] == ["CLIENT"] * 3  # the requests instrumentor ran


@pytest.mark.slow
def test_an_unsupported_library_version_is_skipped_with_one_debug_line(
    receiver: OtlpReceiver, tmp_path: Path, site: Path
) -> None:
    _instrumentor(
        site,
        "old_instrumentor",
        "OldInstrumentor",
        "print('OLD RAN', file=sys.stderr)",
        "requests<1 ; extra == 'instruments'",
    )
    app = ["python", str(tmp_path / "app.py"), receiver.endpoint]
    quiet = run_launcher(app, _env(receiver, tmp_path, site))
    assert quiet.returncode == 0, quiet.stderr
    debug = run_launcher(app, _env(receiver, tmp_path, site, LOGFIRE_DEBUG="1"), expect_stderr=DEBUG_LINES)
    skipped = [line for line in debug.stderr.splitlines() if "instrumentor old " in line]
    assert len(skipped) == 1, debug.stderr
    assert "instrumentor old skipped: it supports requests<1, installed: requests 2." in skipped[0]
    assert "OLD RAN" not in debug.stderr
    assert [span.kind for span in receiver.wait_count(6)] == ["CLIENT"] * 6


@pytest.mark.parametrize(
    ("flags", "env", "client_spans"),
    [
        (["--disable", "requests"], {}, 0),
        pytest.param(["--disable", "*"], {}, 0, marks=pytest.mark.slow),
        pytest.param(
            [], {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "flask, requests"}, 0, marks=pytest.mark.slow
        ),
        pytest.param(["--disable", "flask,httpx"], {}, 3, marks=pytest.mark.slow),
    ],
)
def test_disabling_by_entry_point_name_and_star(
    receiver: OtlpReceiver,
    tmp_path: Path,
    site: Path,
    flags: list[str],
    env: dict[str, str],
    client_spans: int,
) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP + "import logfire_run\nlogfire_run.info('finished')\n")
    result = run_launcher(
        [*flags, "python", str(script), receiver.endpoint], _env(receiver, tmp_path, site, **env)
    )
    assert result.returncode == 0 and result.stdout == "done\n"
    spans = receiver.wait_count(client_spans + 1)
    assert sorted(span.kind for span in spans) == ["CLIENT"] * client_spans + ["INTERNAL"]


def test_info_lists_enabled_disabled_skipped_and_missing_instrumentors(tmp_path: Path, site: Path) -> None:
    _instrumentor(site, "old_instrumentor", "OldInstrumentor", "pass", "requests<1 ; extra == 'instruments'")
    _distribution(site, "aiohttp", "3.9.0")  # installed (metadata only), with no instrumentor installed
    result = run_launcher(["--disable", "flask", "--info"], _env(None, tmp_path, site))
    assert result.returncode == 0, result.stderr
    lines = {
        line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ") and line.split()
    }
    # logfire-run's requests instrumentor is enabled; OpenTelemetry's, of the same name, shows as replaced.
    requests_lines = [line for line in result.stdout.splitlines() if line.split()[:1] == ["requests"]]
    assert any("enabled   on import of requests" in line for line in requests_lines), requests_lines
    assert "disabled  by --disable (its name)" in lines["flask"]
    assert "skipped   it supports requests<1, installed: requests" in lines["old"]
    aiohttp = [line for line in result.stdout.splitlines() if line.startswith("  aiohttp 3.9.0 ")]
    assert [line.split("pip install ")[1].split("==")[0] for line in aiohttp] == [
        "'opentelemetry-instrumentation-aiohttp-client",
        "'opentelemetry-instrumentation-aiohttp-server",
    ]
    starred = run_launcher(["--info"], _env(None, tmp_path, site, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="*"))
    assert "disabled  by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS ('*')" in starred.stdout


def test_info_recommends_only_what_the_app_itself_installed(tmp_path: Path, site: Path) -> None:
    # tornado installed only because a tool needs it; aiohttp on its own (what the app uses).
    _distribution(site, "tornado", "6.4")
    _distribution(site, "notebook-tool", "1.0", "tornado>=6")
    _distribution(site, "aiohttp", "3.9.0")
    result = run_launcher(["--info"], _env(None, tmp_path, site))
    listed = result.stdout.partition("installed libraries without an instrumentor:")[2]
    recommended = [line.split()[0] for line in listed.splitlines() if line.startswith("  ")]
    assert "aiohttp" in recommended
    # Dependencies of other packages: click (of Flask, Celery), grpcio (of the gRPC exporter), tornado.
    for library in ("tornado", "click", "grpcio"):
        assert library not in recommended, listed
        assert re.search(rf"dependency: .*\b{library} by ", result.stdout), result.stdout
    assert "tornado by notebook-tool" in result.stdout
    # httpx2: an entry point of the httpx instrumentation, for a library that is not installed here.
    assert not [line for line in result.stdout.splitlines() if line.split()[:1] == ["httpx2"]], result.stdout
