"""The faults the instrumented libraries' own test suites found under the agent (scripts/library_suites.py).

Each runs a real interpreter through the launcher, uses the library as an app would, and checks that
what the app sees (its exception, its status codes, its output) is what it sees without the agent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, OtlpReceiver, agent_env, assert_clean_stderr, run_launcher

UNPREPARED_SEND = """
import requests

try:
    requests.Session().send(requests.Request(url="http://127.0.0.1:9/"))
except Exception as error:
    print(type(error).__name__, error)
"""

TRUSTED_HOSTS_APP = """
import flask

app = flask.Flask(__name__)
app.config["TRUSTED_HOSTS"] = ["example.test", ".other.test"]


@app.get("/")
def index():
    return "ok"


client = app.test_client()
for host in ("example.test", "a.other.test", "bad.test"):
    try:
        print(host, client.get(base_url=f"http://{host}").status_code)
    except Exception as error:
        print(host, type(error).__name__, error)
"""


FREED_ON_ZERO_REFCOUNT_APP = """
import gc
import weakref

import flask

gc.disable()  # freed by reference counting alone, as Flask's own test_app_freed_on_zero_refcount asks


class Subclassed(flask.Flask):
    def wsgi_app(self, environ, start_response):
        return super().wsgi_app(environ, start_response)


for label, cls in (("Flask", flask.Flask), ("Subclassed", Subclassed)):
    app = cls(__name__)

    @app.get("/")
    def index():
        return "ok " + label

    print(app.test_client().get("/").get_data(as_text=True))
    weak = weakref.ref(app)
    del app, index
    print(label, "freed" if weak() is None else "still alive")
"""


def _run_both(tmp_path: Path, source: str, receiver: OtlpReceiver) -> tuple[str, str]:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    plain = subprocess.run(
        [sys.executable, str(script)], env=agent_env(), capture_output=True, text=True, timeout=60
    )
    assert plain.returncode == 0, plain.stderr
    traced = run_launcher(["python", str(script)], agent_env(receiver), cwd=tmp_path)
    assert traced.returncode == 0, traced.stderr
    assert_clean_stderr(traced.stderr)
    return plain.stdout, traced.stdout


def test_flask_app_freed_on_zero_refcount(tmp_path: Path, receiver: OtlpReceiver) -> None:
    plain, traced = _run_both(tmp_path, FREED_ON_ZERO_REFCOUNT_APP, receiver)
    assert plain.splitlines() == ["ok Flask", "Flask freed", "ok Subclassed", "Subclassed freed"]
    assert traced == plain
    # The apps were instrumented all the same: each request made its server span.
    spans = receiver.wait_for(lambda spans: sum(span.kind == "SERVER" for span in spans) >= 2)
    assert sum(span.kind == "SERVER" for span in spans) == 2, spans


def test_requests_unprepared_send_raises_requests_own_error(tmp_path: Path, receiver: OtlpReceiver) -> None:
    plain, traced = _run_both(tmp_path, UNPREPARED_SEND, receiver)
    assert plain.startswith("ValueError You can only send PreparedRequests"), plain
    assert traced == plain


def test_requests_prepared_send_still_traced(tmp_path: Path, receiver: OtlpReceiver) -> None:
    source = f"""
    import requests

    session = requests.Session()
    response = session.send(requests.Request("POST", "{receiver.endpoint}/v1/traces").prepare())
    print(response.status_code)
    """
    plain, traced = _run_both(tmp_path, source, receiver)
    assert traced == plain
    spans = receiver.wait_for(lambda spans: any(span.kind == "CLIENT" for span in spans))
    assert [span.name for span in spans if span.kind == "CLIENT"] == ["POST"]


def test_flask_untrusted_host_gets_the_apps_own_400(tmp_path: Path, receiver: OtlpReceiver) -> None:
    plain, traced = _run_both(tmp_path, TRUSTED_HOSTS_APP, receiver)
    assert plain.splitlines() == ["example.test 200", "a.other.test 200", "bad.test 400"]
    assert traced == plain
    spans = receiver.wait_for(lambda spans: sum(span.kind == "SERVER" for span in spans) >= 2)
    assert sum(span.kind == "SERVER" for span in spans) >= 2, spans


# Celery's own test helpers make `current_app` raise (and print the attribute asked for): OpenTelemetry's
# publish handlers looked the task up there, and Celery's signal dispatch logged an error per publish.
CELERY_TRAPPED_CURRENT_APP = """
import logging

from celery.contrib.testing.app import TestApp, setup_default_app

logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
app = TestApp(set_as_current=False, broker="memory://", backend="cache+memory://")


@app.task
def add(x, y):
    return x + y


with setup_default_app(app, use_trap=True):
    print("published", bool(add.apply_async((1, 2)).id))
    print("by name", bool(app.send_task("other.task", (1,)).id))
"""


@pytest.mark.slow
def test_celery_publish_handlers_never_raise_into_celery(tmp_path: Path, receiver: OtlpReceiver) -> None:
    script = tmp_path / "app.py"
    script.write_text(CELERY_TRAPPED_CURRENT_APP)
    plain = subprocess.run(
        [sys.executable, str(script)], env=agent_env(), capture_output=True, text=True, timeout=60
    )
    assert plain.stdout == "published True\nby name True\n", plain.stdout + plain.stderr
    traced = run_launcher(
        ["python", str(script)], agent_env(receiver), cwd=tmp_path, expect_stderr=plain.stderr
    )
    assert (traced.returncode, traced.stdout) == (0, plain.stdout)
    spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    assert sorted((span.kind, span.name) for span in spans) == [
        ("PRODUCER", "apply_async/celery.tests.add"),
        ("PRODUCER", "apply_async/other.task"),
    ]


@pytest.mark.slow
def test_the_fast_suites_show_no_unexpected_difference(tmp_path: Path) -> None:
    """Flask's, requests' and httpx's own suites, plain and under LOGFIRE_RUN=1 (scripts/library_suites.py).

    The rest (Starlette, FastAPI, Celery, Django) take longer: `library_suites.py --heavy`.
    """
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "library_suites.py"), "--fast", "--work", str(tmp_path)],
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode == 3:
        pytest.skip(f"the suites could not be set up here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "== 3 of 3 suites as expected" in result.stdout, result.stdout[-3000:]
