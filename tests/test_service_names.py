"""Service names derived from what runs: the naming table; real servers and manage.py under the launcher."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from logfire_run.agent.service_names import derive

from conftest import (
    LAUNCHER,
    OtlpReceiver,
    agent_env,
    assert_clean_stderr,
    free_port,
    run_launcher,
    wait_for_port,
)

# (command line as the process sees it, the service name, a word of where it came from)
NAMING_TABLE = [
    (["/venv/bin/gunicorn", "shopapp:app"], "shopapp", "gunicorn"),
    (
        ["/venv/bin/gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "shopapp:create_app()"],
        "shopapp",
        "gunicorn",
    ),
    (["/venv/bin/gunicorn", "--bind=unix:/tmp/s.sock", "-k", "gevent", "mysite.wsgi"], "mysite", "gunicorn"),
    (["/venv/bin/gunicorn", "-c", "conf.py", "billing.web.wsgi:application"], "billing.web", "gunicorn"),
    (["/venv/bin/uvicorn", "--host", "0.0.0.0", "--port", "80", "api.main:app"], "api", "uvicorn"),
    (["/usr/lib/python3/site-packages/uvicorn/__main__.py", "orders:app", "--reload"], "orders", "uvicorn"),
    (["/venv/bin/hypercorn", "-b", "localhost:8000", "chat.asgi:application"], "chat", "hypercorn"),
    (["/venv/bin/waitress-serve", "--listen=*:8080", "shopapp:app"], "shopapp", "waitress"),
    (["/venv/bin/waitress-serve", "--call", "shopapp:create_app"], "shopapp", "waitress"),
    (["uwsgi", "--http", ":8000", "--module", "mysite.wsgi:application"], "mysite", "uwsgi"),
    (["uwsgi", "--http=:8000", "-w", "shopapp:app", "--master"], "shopapp", "uwsgi"),
    (["uwsgi", "--http", ":9090", "--wsgi-file", "/srv/foobar.py"], "foobar", "uwsgi"),
    (["/venv/bin/celery", "-A", "proj", "worker", "-l", "INFO"], "proj", "Celery"),
    (["/venv/bin/celery", "--app=proj.celery:app", "beat"], "proj", "Celery"),
    (["/x/celery/__main__.py", "-Aemails", "worker"], "emails", "Celery"),
    (["/venv/bin/rq", "worker", "high", "default"], "rq:high,default", "queues"),
    (
        ["/venv/bin/rq", "worker", "-u", "redis://r:6379/1", "--with-scheduler", "emails"],
        "rq:emails",
        "queues",
    ),
    (["/venv/bin/rq", "worker", "--burst"], "rq:default", "queues"),
    (["manage.py", "runserver", "--settings", "shop.settings.dev"], "shop", "Django"),
    (["/srv/mysite/manage.py", "migrate"], "mysite", "DJANGO_SETTINGS_MODULE"),
    (["/venv/bin/django-admin", "check", "--settings=blog.settings"], "blog", "Django"),
    (["app.py"], "app", "program"),
    (["/srv/billing_api.py", "--port", "80"], "billing_api", "program"),
    (["/x/shipping/__main__.py"], "shipping", "program"),
    (["/usr/bin/python3", "-X", "dev", "-m", "shipping.cli", "run"], "shipping.cli", "program"),
    (["/venv/bin/gunicorn"], "gunicorn", "program"),
    (["/venv/bin/rq", "info"], "rq", "program"),
]


@pytest.mark.parametrize(
    ("argv", "name", "origin"), NAMING_TABLE, ids=[" ".join(row[0]) for row in NAMING_TABLE]
)
def test_the_naming_table(argv: list[str], name: str, origin: str) -> None:
    environ = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}
    derived, where = derive(argv, environ)
    assert (derived, origin in where) == (name, True), where


def test_a_django_command_without_settings_is_named_after_the_program() -> None:
    assert derive(["manage.py", "runserver"], {}) == ("manage", "the program (manage)")


FLASK_APP = "import flask\napp = flask.Flask(__name__)\n\n@app.get('/hello')\ndef hello():\n    return 'ok'\n"


def _serve_one_request(receiver: OtlpReceiver, command: list[str], cwd: Path, port: int) -> str:
    with open(cwd / "server.stderr", "w") as stderr:
        server = subprocess.Popen(
            [LAUNCHER, *command], cwd=cwd, env=agent_env(receiver), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        wait_for_port(port, process=server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=10) as response:
            assert response.status == 200
        spans = receiver.wait_for(lambda spans: any(span.kind == "SERVER" for span in spans))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return next(span.service for span in spans if span.kind == "SERVER")


@pytest.mark.slow
def test_gunicorn_is_named_after_its_app(receiver: OtlpReceiver, tmp_path: Path) -> None:
    (tmp_path / "shopapp.py").write_text(FLASK_APP)
    port = free_port()
    command = ["gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "shopapp:app"]
    assert _serve_one_request(receiver, command, tmp_path, port) == "shopapp"


@pytest.mark.slow
def test_uvicorn_is_named_after_its_app(receiver: OtlpReceiver, tmp_path: Path) -> None:
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "__init__.py").write_text("")
    (tmp_path / "orders" / "main.py").write_text(
        "import fastapi\napp = fastapi.FastAPI()\n\n@app.get('/hello')\ndef hello():\n    return 'ok'\n"
    )
    port = free_port()
    command = ["uvicorn", "--port", str(port), "--log-level", "warning", "orders.main:app"]
    assert _serve_one_request(receiver, command, tmp_path, port) == "orders"


# manage.py as `django-admin startproject mysite` writes it: the settings module is set in main(),
# after the agent started. The second one starts the SDK first (it asks for a tracer at import).
MANAGE_PY = '''
"""Django's command-line utility for administrative tasks."""
import os
import sys
{early}

def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
'''
SETTINGS = "SECRET_KEY = 'x'\nINSTALLED_APPS = []\nDATABASES = {}\nUSE_TZ = True\n"
IN_SHELL = "import logfire_run\nwith logfire_run.span('in the shell'):\n    print('ok')\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "early",
    ["", "from opentelemetry import trace\ntracer = trace.get_tracer(__name__)"],
    ids=["plain", "sdk-first"],
)
def test_manage_py_is_named_after_its_project(receiver: OtlpReceiver, tmp_path: Path, early: str) -> None:
    (tmp_path / "manage.py").write_text(MANAGE_PY.format(early=early))
    (tmp_path / "mysite").mkdir()
    (tmp_path / "mysite" / "__init__.py").write_text("")
    (tmp_path / "mysite" / "settings.py").write_text(SETTINGS)
    result = run_launcher(
        ["python", "manage.py", "shell", "-c", IN_SHELL], agent_env(receiver), cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("ok\n")
    spans = receiver.wait_count(1)
    assert [span.service for span in spans if span.name == "in the shell"] == ["mysite"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "shopapp"), ({"OTEL_SERVICE_NAME": "storefront"}, "storefront")],
    ids=["derived", "explicit"],
)
def test_info_shows_the_derived_name_and_where_it_came_from(env: dict[str, str], expected: str) -> None:
    result = run_launcher(["--info", "gunicorn", "shopapp:app"], agent_env(**env))
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("service_name"))
    assert line.split()[1] == expected
    if env:
        assert "env OTEL_SERVICE_NAME" in line
    else:
        assert line.rstrip().endswith("derived: the app of gunicorn (shopapp:app)")
    assert_clean_stderr(result.stderr)


def test_pass_through_names_are_unchanged() -> None:
    # The interpreter's own name for a `-c` program: what the default was before derivation.
    assert derive(["/usr/bin/python", "-c", "pass"], {})[0] == "python"
