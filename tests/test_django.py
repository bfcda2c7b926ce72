"""Django as a single-file app: it configures its own settings, and the agent must not do it first.

OpenTelemetry's Django instrumentor, run when `django` is imported, read the settings at once and
called `settings.configure()` itself when `DJANGO_SETTINGS_MODULE` was unset, so the app's own
`settings.configure()` crashed with `RuntimeError: Settings already configured`. logfire-run's
`django` instrumentor runs it when `django.setup()` returns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import OtlpReceiver, agent_env, child_env, render_tree, run_launcher, run_process

# Serves one real request on 127.0.0.1 through Django's WSGI handler, then prints what it answered.
APP = """
import os
import sys
import threading
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1"],
    MIDDLEWARE=[name for name in os.environ.get("APP_MIDDLEWARE", "").split(",") if name],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path


def hello(request, name):
    print("serving", ascii(name), file=sys.stderr)
    return HttpResponse(f"hello {name}")


urlpatterns = [path("hello/<str:name>", hello)]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=QuietHandler)
url = f"http://127.0.0.1:{server.server_port}" + os.environ.get("APP_PATH", "/hello/world")
answers = []


def ask():
    request = urllib.request.Request(url, headers={"Host": os.environ.get("APP_HOST", "127.0.0.1")})
    try:
        answers.append(urllib.request.urlopen(request).read().decode())
    except urllib.error.HTTPError as error:
        answers.append(f"HTTP {error.code}")


client = threading.Thread(target=ask)
client.start()
server.handle_request()
client.join()
server.server_close()
print(ascii(answers[0]))
"""


@pytest.mark.parametrize("activation", ["launcher", "env"])
def test_a_single_file_app_configuring_its_own_settings_is_traced_and_unchanged(
    receiver: OtlpReceiver, tmp_path: Path, activation: str
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    plain = run_process([sys.executable, str(app)], child_env(), expect_stderr=None)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "'hello world'\n"
    # The app calls itself (urllib.request, instrumented too): that inbound context is its own.
    env = agent_env(receiver, LOGFIRE_DISTRIBUTED_TRACING="true")
    if activation == "launcher":
        traced = run_launcher(["python", str(app)], env, expect_stderr=plain.stderr)
    else:
        env["LOGFIRE_RUN"] = "1"
        traced = run_process([sys.executable, str(app)], env, expect_stderr=plain.stderr)
    assert (traced.returncode, traced.stdout) == (0, plain.stdout)
    spans = receiver.wait_count(2, timeout=10)
    tree = render_tree(spans)
    assert sorted((span.kind, span.name) for span in spans) == [
        ("CLIENT", "GET"),
        ("SERVER", "GET hello/<str:name>"),
    ], tree
    client = next(span for span in spans if span.kind == "CLIENT")
    server = next(span for span in spans if span.kind == "SERVER")
    assert (server.trace_id, server.parent_id) == (client.trace_id, client.span_id), tree
    assert server.attributes.get("http.route") == "hello/<str:name>", server.attributes


@pytest.mark.parametrize("middleware", ["", "django.middleware.common.CommonMiddleware"])
def test_a_host_outside_allowed_hosts_is_answered_as_the_app_answers_it(
    receiver: OtlpReceiver, tmp_path: Path, middleware: str
) -> None:
    # Without middleware nothing checks the host and the app answers; CommonMiddleware refuses it.
    app = tmp_path / "app.py"
    app.write_text(APP)
    extra = {"APP_HOST": "elsewhere.example", "APP_MIDDLEWARE": middleware}
    plain = run_process([sys.executable, str(app)], child_env(**extra), expect_stderr=None)
    assert plain.stdout == ("'HTTP 400'\n" if middleware else "'hello world'\n"), plain.stderr
    traced = run_launcher(["python", str(app)], agent_env(receiver, **extra), expect_stderr=plain.stderr)
    assert (traced.returncode, traced.stdout) == (plain.returncode, plain.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "answer", "status"),
    [
        ("/hello/%E2%99%A5", "'hello \\u2665'", 200),  # outside latin-1: a 500 from the instrumentation
        ("/hello/%C3%A9", "'hello \\xe9'", 200),  # inside latin-1: recorded as /hello/%E9 before
        ("/nowhere/%E2%99%A5", "'HTTP 404'", 404),
    ],
)
def test_a_non_ascii_path_is_answered_as_without_the_agent_and_traced(
    receiver: OtlpReceiver, tmp_path: Path, path: str, answer: str, status: int
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    plain = run_process([sys.executable, str(app)], child_env(APP_PATH=path), expect_stderr=None)
    assert (plain.returncode, plain.stdout) == (0, answer + "\n"), plain.stderr
    env = agent_env(receiver, APP_PATH=path, LOGFIRE_DISTRIBUTED_TRACING="true")
    traced = run_launcher(["python", str(app)], env, expect_stderr=plain.stderr)
    assert (traced.returncode, traced.stdout) == (0, plain.stdout)
    spans = receiver.wait_for(lambda spans: any(span.kind == "SERVER" for span in spans), timeout=10)
    server = next(span for span in spans if span.kind == "SERVER")
    # The URL as the request line had it, percent-encoded, as the semantic conventions ask.
    assert server.attributes["http.url"].endswith(path), server.attributes
    assert server.attributes["http.status_code"] == status


# A project with a settings module: it is imported when the app first reads a setting, not before.
SETTINGS = """
import sys

print("settings module imported", file=sys.stderr)
SECRET_KEY = "test-only"
ROOT_URLCONF = "urls"
ALLOWED_HOSTS = ["testserver"]
"""

URLS = """
from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("hi", lambda request: HttpResponse("hi"))]
"""

PROJECT_APP = """
import sys

import django

print("django imported", file=sys.stderr)
django.setup()
print("django set up", file=sys.stderr)

from django.test import Client

response = Client().get("/hi")
print(response.status_code, response.content.decode())
"""


def test_a_settings_module_is_imported_when_the_app_first_reads_a_setting(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "project_settings.py").write_text(SETTINGS)
    (tmp_path / "urls.py").write_text(URLS)
    app = tmp_path / "app.py"
    app.write_text(PROJECT_APP)
    extra = {"DJANGO_SETTINGS_MODULE": "project_settings", "PYTHONPATH": str(tmp_path)}
    plain = run_process([sys.executable, str(app)], child_env(**extra), expect_stderr=None)
    assert plain.stderr == "django imported\nsettings module imported\ndjango set up\n"
    assert (plain.returncode, plain.stdout) == (0, "200 hi\n")
    traced = run_launcher(["python", str(app)], agent_env(receiver, **extra), expect_stderr=plain.stderr)
    assert (traced.returncode, traced.stdout) == (0, plain.stdout)
    spans = receiver.wait_count(1, timeout=10)
    assert [(span.kind, span.name) for span in spans] == [("SERVER", "GET hi")], render_tree(spans)
